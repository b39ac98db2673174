package agent

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// defaultRouteAddr is the IPv4 address (with prefix) of the interface that
// holds the default route: what --ip autodetect picks, as Calico's
// first-found/can-reach methods usually end up doing on a single-homed host.
func defaultRouteAddr() (string, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", err
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			continue
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.IP.IsGlobalUnicast() {
				return a.IPNet.String(), nil
			}
		}
	}
	return "", fmt.Errorf("no interface with a default route has an IPv4 address")
}

// prefixOf finds the local interface address equal to ip and returns it
// with its prefix length (for cross-subnet decisions).
func prefixOf(ip string) (string, error) {
	want := net.ParseIP(ip)
	if want == nil {
		return "", fmt.Errorf("not an IP address")
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if a.IP.Equal(want) {
			return a.IPNet.String(), nil
		}
	}
	return "", fmt.Errorf("no local interface has address %s", ip)
}

// linkMTUOf is the MTU of the interface that holds the address (CIDR form).
func linkMTUOf(cidr string) (int, error) {
	ip, _, err := net.ParseCIDR(cidr)
	if err != nil {
		return 0, err
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, err
	}
	for _, a := range addrs {
		if a.IP.Equal(ip) {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, err
			}
			return l.Attrs().MTU, nil
		}
	}
	return 0, fmt.Errorf("no interface holds %s", ip)
}
