package routes

import (
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/pkg/ifaddr"
)

// The Build functions make the netlink objects Sync installs. They touch no
// kernel, so they can be unit-tested anywhere (IPIP included, which this
// test machine's kernel lacks). Routes all go to the main table with
// Protocol; the caller has validated the Remote (see checkRemote).

// BuildBlackholeRoute is the route that drops traffic to unused addresses
// of a local block.
func BuildBlackholeRoute(block *net.IPNet) *netlink.Route {
	return &netlink.Route{
		Dst:      block,
		Type:     unix.RTN_BLACKHOLE,
		Protocol: Protocol,
		Table:    unix.RT_TABLE_MAIN,
		Family:   family(block.IP),
	}
}

// BuildDirectRoute is "Prefix via Gateway": the remote host is on the
// same layer-2 segment (no encapsulation). The kernel picks the device.
func BuildDirectRoute(r Remote) *netlink.Route {
	return &netlink.Route{
		Dst:      r.Prefix,
		Gw:       r.Gateway,
		Protocol: Protocol,
		Table:    unix.RT_TABLE_MAIN,
		Family:   family(r.Prefix.IP),
	}
}

// BuildIPIPLink is tunl0, the IPIP fallback device. It carries no local or
// remote address: the kernel refuses to change them on the fallback
// device, and without them it both sends to any gateway given by a route
// and accepts IPIP from any host. (The node's tunnel address goes on it
// separately, see BuildTunnelAddr.)
func BuildIPIPLink(mtu int) *netlink.Iptun {
	return &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: IPIPDevice, MTU: mtu}}
}

// BuildIPIPRoute is "Prefix via Gateway dev tunl0 onlink": the remote host's
// underlay address becomes the outer destination. onlink because the
// gateway is not on tunl0's (non-existent) subnet.
func BuildIPIPRoute(r Remote, tunl0Index int) *netlink.Route {
	return &netlink.Route{
		Dst:       r.Prefix,
		Gw:        r.Gateway,
		LinkIndex: tunl0Index,
		Flags:     int(netlink.FLAG_ONLINK),
		Protocol:  Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Family:    unix.AF_INET,
	}
}

// BuildVXLANLink is the VXLAN device: learning off (the FDB is programmed,
// never learned from traffic), local = the node IP, bound to the underlay
// device. o must have its defaults applied.
func BuildVXLANLink(o Options, underlayIndex, mtu int) *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: o.VXLANDevice, MTU: mtu, HardwareAddr: o.VXLANMAC},
		VxlanId:      o.VNI,
		VtepDevIndex: underlayIndex,
		SrcAddr:      o.NodeIP.To4(),
		Port:         o.VXLANPort,
		Learning:     false,
	}
}

// BuildVXLANRoute is "Prefix via TunnelAddr dev vxlan onlink"; the neighbour
// entry then gives TunnelAddr's MAC and the FDB the MAC's host.
func BuildVXLANRoute(r Remote, vxlanIndex int) *netlink.Route {
	return &netlink.Route{
		Dst:       r.Prefix,
		Gw:        r.TunnelAddr,
		LinkIndex: vxlanIndex,
		Flags:     int(netlink.FLAG_ONLINK),
		Protocol:  Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Family:    family(r.Prefix.IP),
	}
}

// BuildVXLANNeigh is the permanent neighbour entry TunnelAddr -> VTEPMAC, so
// the kernel never ARPs across the tunnel.
func BuildVXLANNeigh(r Remote, vxlanIndex int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    vxlanIndex,
		Family:       family(r.TunnelAddr),
		State:        netlink.NUD_PERMANENT,
		IP:           r.TunnelAddr,
		HardwareAddr: r.VTEPMAC,
	}
}

// BuildVXLANFDB is the forwarding entry VTEPMAC -> Gateway on the VXLAN
// device itself (NTF_SELF: the device's own FDB, not a bridge's).
func BuildVXLANFDB(r Remote, vxlanIndex int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    vxlanIndex,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           r.Gateway,
		HardwareAddr: r.VTEPMAC,
	}
}

// BuildTunnelAddr is a tunnel device's host address: /32 or /128.
func BuildTunnelAddr(ip net.IP) *netlink.Addr {
	bits := 128
	if v4 := ip.To4(); v4 != nil {
		ip, bits = v4, 32
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}}
	if bits == 128 {
		a.Flags = unix.IFA_F_NODAD // usable at once, no duplicate detection on a tunnel
	}
	return a
}

// DeriveVTEPMAC makes a stable VTEP MAC from a seed such as the node name:
// locally administered and unicast, so it never clashes with a NIC's. A
// stable MAC lets the VXLAN device be re-created without other hosts'
// neighbour entries going stale.
func DeriveVTEPMAC(seed string) net.HardwareAddr { return ifaddr.DeriveMAC("tabby-vtep:" + seed) }

func family(ip net.IP) int {
	if ip.To4() != nil {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
