package dataplane

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// UplinkMTU returns the MTU of the interface that carries the current
// namespace's default route (the lowest, if IPv4 and IPv6 or a multipath
// route use several). Without a default route it returns the lowest MTU
// among the up, non-loopback interfaces that could be an uplink: tabby's own
// veths, tunnels and dummies are skipped. The caller subtracts encapsulation
// overhead to get the workload MTU.
func UplinkMTU() (int, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return 0, fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()

	idxs := map[int]bool{}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteListFiltered(family, &netlink.Route{}, netlink.RT_FILTER_DST)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return 0, fmt.Errorf("list default routes: %w", err)
		}
		for _, r := range routes {
			if r.LinkIndex > 0 {
				idxs[r.LinkIndex] = true
			}
			for _, nh := range r.MultiPath {
				if nh.LinkIndex > 0 {
					idxs[nh.LinkIndex] = true
				}
			}
		}
	}

	links, err := h.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return 0, fmt.Errorf("list links: %w", err)
	}
	lowest := func(ok func(netlink.Link) bool) int {
		mtu := 0
		for _, l := range links {
			if a := l.Attrs(); ok(l) && a.MTU > 0 && (mtu == 0 || a.MTU < mtu) {
				mtu = a.MTU
			}
		}
		return mtu
	}
	if len(idxs) > 0 {
		if mtu := lowest(func(l netlink.Link) bool { return idxs[l.Attrs().Index] }); mtu > 0 {
			return mtu, nil
		}
	}
	if mtu := lowest(isUplinkCandidate); mtu > 0 {
		return mtu, nil
	}
	return 0, errors.New("no default route and no up non-loopback interface to take the MTU from")
}

// notUplinkTypes are link kinds that carry overlay or local traffic, whose
// MTU says nothing about the physical network.
var notUplinkTypes = map[string]bool{
	"dummy": true, "ipip": true, "ip6tnl": true, "sit": true, "gre": true,
	"gretap": true, "ip6gre": true, "ip6gretap": true, "vxlan": true,
	"geneve": true, "wireguard": true, "vti": true, "vti6": true, "tuntap": true,
}

func isUplinkCandidate(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagUp != 0 &&
		a.Flags&net.FlagLoopback == 0 &&
		!strings.HasPrefix(a.Name, HostVethPrefix) &&
		!notUplinkTypes[l.Type()]
}
