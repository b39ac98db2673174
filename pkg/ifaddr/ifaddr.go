// Package ifaddr holds the addresses and link-layer identities tabby gives a
// workload's interfaces: host-length prefixes, the link-local gateway, the
// fixed host-side MAC and MACs derived from stable identities. It imports
// only the standard library, so both plugins, tabby-docker and tabby-node
// can share it without growing the plugins' start-up.
package ifaddr

import (
	"crypto/sha256"
	"net"
)

var (
	// HostVethMAC is the MAC of every host-side veth (Calico's choice): the
	// container's gateway neighbour entries can then be fixed in advance.
	HostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

	// GatewayIPv4 is the container's IPv4 next hop. Nothing owns it; the
	// container reaches it through a permanent neighbour entry and the host
	// veth answers by proxy ARP.
	GatewayIPv4 = net.IPv4(169, 254, 1, 1).To4()

	// GatewayIPv6 is the EUI-64 link-local address of HostVethMAC, held by
	// every host veth.
	GatewayIPv6 = net.ParseIP("fe80::ecee:eeff:feee:eeee")
)

// Gateway is the container's next hop for ip's family.
func Gateway(ip net.IP) net.IP {
	if ip.To4() != nil {
		return GatewayIPv4
	}
	return GatewayIPv6
}

// Host is ip as a host-length prefix: /32 (in 4-byte form) or /128.
func Host(ip net.IP) net.IPNet {
	if v4 := ip.To4(); v4 != nil {
		return net.IPNet{IP: v4, Mask: net.CIDRMask(32, 32)}
	}
	return net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}
}

// Hosts maps Host over ips.
func Hosts(ips []net.IP) []net.IPNet {
	out := make([]net.IPNet, 0, len(ips))
	for _, ip := range ips {
		out = append(out, Host(ip))
	}
	return out
}

// Split renders host prefixes as strings by family, as endpoint records
// keep them.
func Split(nets []net.IPNet) (v4, v6 []string) {
	for _, n := range nets {
		if n.IP.To4() != nil {
			v4 = append(v4, n.String())
		} else {
			v6 = append(v6, n.String())
		}
	}
	return v4, v6
}

// DeriveMAC is a stable MAC for a seed (a container ID and interface, a
// Docker endpoint, a node name): locally administered and unicast, so it
// never clashes with a NIC's. Being derived, it is known before the
// interface exists (the endpoint record can be written first) and survives
// the interface being re-created (other hosts' neighbour entries stay good).
func DeriveMAC(seed string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(seed))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}
