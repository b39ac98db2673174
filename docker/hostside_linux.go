package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/cni-plugin/dataplane"
)

// setupVeth makes the host side of a Docker endpoint: a veth pair in this
// (the host's) namespace, the host end hostVeth (MAC ee:ee:ee:ee:ee:ee, up,
// proxy ARP, forwarding) with a /32 (/128) route per address, the other end
// peer (MAC mac) left for libnetwork to move into the container and
// configure. This is the host half of what the CNI plugin's dataplane.Setup
// does; libnetwork does the container half itself. On error nothing is left.
func setupVeth(hostVeth, peer string, mac net.HardwareAddr, mtu int, addrs []net.IPNet) (err error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostVeth
	attrs.HardwareAddr = dataplane.HostVethMAC
	attrs.MTU = mtu // the peer's too
	attrs.Flags = net.FlagUp
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: peer, PeerHardwareAddr: mac}
	if err := h.LinkAdd(veth); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create veth %s (peer %s): %w", hostVeth, peer, err)
		}
		// The same endpoint's earlier pair (a Join retried after a failure):
		// replace it.
		for _, n := range []string{hostVeth, peer} {
			if l, lerr := h.LinkByName(n); lerr == nil {
				if l.Type() != "veth" {
					return fmt.Errorf("create veth: %s exists and is a %s", n, l.Type())
				}
				if derr := h.LinkDel(l); derr != nil {
					return fmt.Errorf("delete stale %s: %w", n, derr)
				}
			}
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s (peer %s): %w", hostVeth, peer, err)
		}
	}
	defer func() {
		if err != nil {
			_ = h.LinkDel(veth)
		}
	}()
	link, err := h.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", hostVeth, err)
	}
	has4, has6 := false, false
	for _, a := range addrs {
		if a.IP.To4() != nil {
			has4 = true
		} else {
			has6 = true
		}
	}
	if has4 {
		if err := ensureSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		for _, s := range [][2]string{
			{"net/ipv4/conf/" + hostVeth + "/proxy_arp", "1"},
			{"net/ipv4/neigh/" + hostVeth + "/proxy_delay", "0"},
			{"net/ipv4/conf/" + hostVeth + "/forwarding", "1"},
		} {
			if err := writeSysctl(s[0], s[1]); err != nil {
				return err
			}
		}
	}
	if has6 {
		if err := ensureSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
		for _, s := range [][2]string{
			{"net/ipv6/conf/" + hostVeth + "/accept_ra", "0"},
			{"net/ipv6/conf/" + hostVeth + "/forwarding", "1"},
			{"net/ipv6/conf/" + hostVeth + "/addr_gen_mode", "1"},
		} {
			if err := writeSysctl(s[0], s[1]); err != nil {
				return err
			}
		}
		ll := &netlink.Addr{IPNet: &net.IPNet{IP: dataplane.GatewayIPv6, Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD, Scope: unix.RT_SCOPE_LINK}
		if err := h.AddrAdd(link, ll); err != nil {
			return fmt.Errorf("add %s to %s: %w", dataplane.GatewayIPv6, hostVeth, err)
		}
	}
	for i := range addrs {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &addrs[i], Protocol: dataplane.DefaultRouteProtocol}
		if addrs[i].IP.To4() != nil {
			r.Scope = netlink.SCOPE_LINK
		}
		if err := h.RouteAdd(r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%w: %s (is the address used by another workload on this host?)", dataplane.ErrAddressRouted, addrs[i].String())
			}
			return fmt.Errorf("add route %s dev %s: %w", addrs[i].String(), hostVeth, err)
		}
	}
	return nil
}

// deleteVeth removes a host veth (and with it its peer and routes); a
// missing one is fine.
func deleteVeth(name string) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return err
	}
	if l.Type() != "veth" {
		return fmt.Errorf("%s is a %s, not tabby's veth", name, l.Type())
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// Sysctls of this process's network namespace (the host's).
func writeSysctl(key, value string) error {
	if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

func ensureSysctl(key, value string) error {
	b, err := os.ReadFile("/proc/sys/" + key)
	if err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	return writeSysctl(key, value)
}
