package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/pkg/dataplane"
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
	return dataplane.ConfigureHostSide(h, link, addrs)
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
