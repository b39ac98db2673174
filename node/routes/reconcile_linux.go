package routes

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// owned says whether a main-table route is the Manager's. The protocol
// alone is not enough: the CNI plugin marks its per-workload routes
// ("<ip>/32 dev tbyXXX scope link") with the same number 80. The Manager's
// routes are exactly the proto-80 ones that are blackholes, have a
// gateway, or go through its tunnel devices; the CNI plugin's have none of
// these, so they are never touched here.
func owned(r netlink.Route, tun devices) bool {
	if r.Protocol != Protocol {
		return false
	}
	return r.Type == unix.RTN_BLACKHOLE || r.Gw != nil ||
		(tun.vxlan != 0 && r.LinkIndex == tun.vxlan) ||
		(tun.ipip != 0 && r.LinkIndex == tun.ipip)
}

// listMain lists the main routing table, both families.
func (m *Manager) listMain() ([]netlink.Route, error) {
	var all []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := listRetry(func() ([]netlink.Route, error) {
			return m.h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes (family %d): %w", fam, err)
		}
		all = append(all, rs...)
	}
	return all, nil
}

// listRetry repeats a dump the kernel interrupted (the table changed
// during it), which would otherwise give a partial list: deleting "stale"
// routes from a partial view would be wrong.
func listRetry[T any](f func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		out, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

// syncRoutes installs want (keyed by destination) and deletes the owned
// routes that are not wanted.
func (m *Manager) syncRoutes(want map[string]*netlink.Route) error {
	all, err := m.listMain()
	if err != nil {
		return err
	}
	tun := m.tunnelIndexes()
	mine := map[string][]netlink.Route{}
	foreign := map[string]netlink.Route{}
	for _, r := range all {
		if r.Dst == nil {
			continue // default routes: never ours
		}
		key := canonical(r.Dst).String()
		if owned(r, tun) {
			mine[key] = append(mine[key], r)
		} else {
			foreign[key] = r
		}
	}

	var errs []error
	for key, w := range want {
		keep := false
		for _, have := range mine[key] {
			keep = keep || sameRoute(w, have)
		}
		if keep {
			continue
		}
		if f, ok := foreign[key]; ok {
			// Someone else routes this prefix (a workload, the admin, another
			// daemon): leave it alone and say so.
			errs = append(errs, fmt.Errorf("route %s: not replacing the existing route (protocol %d, dev index %d)", key, f.Protocol, f.LinkIndex))
			continue
		}
		if err := m.change(m.h.RouteReplace(w)); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", describeRoute(w), err))
		}
	}
	for key, rs := range mine {
		w := want[key]
		for _, have := range rs {
			// RouteReplace above replaced a route of the same priority in
			// place; only extra ones at other priorities are left over.
			if w != nil && priority(have) == priority(*w) {
				continue
			}
			if err := m.change(m.h.RouteDel(&have)); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete stale route %s: %w", describeRoute(&have), err))
			}
		}
	}
	return errors.Join(errs...)
}

// sameRoute compares what Sync sets; a device the kernel chose (LinkIndex
// 0 in w) matches any.
func sameRoute(w *netlink.Route, have netlink.Route) bool {
	typ := w.Type
	if typ == 0 {
		typ = unix.RTN_UNICAST
	}
	return have.Type == typ &&
		w.Gw.Equal(have.Gw) &&
		(w.LinkIndex == 0 || w.LinkIndex == have.LinkIndex) &&
		w.Flags&int(netlink.FLAG_ONLINK) == have.Flags&int(netlink.FLAG_ONLINK) &&
		have.Scope == netlink.SCOPE_UNIVERSE &&
		have.Protocol == Protocol &&
		have.Tos == 0 &&
		priority(have) == priority(*w)
}

// priority is the metric the kernel gives a route: IPv6 routes added with
// 0 get 1024.
func priority(r netlink.Route) int {
	if r.Priority == 0 && r.Dst != nil && r.Dst.IP.To4() == nil {
		return 1024
	}
	return r.Priority
}

func describeRoute(r *netlink.Route) string {
	switch {
	case r.Type == unix.RTN_BLACKHOLE:
		return fmt.Sprintf("blackhole %s", r.Dst)
	case r.LinkIndex != 0:
		return fmt.Sprintf("%s via %s dev index %d", r.Dst, r.Gw, r.LinkIndex)
	}
	return fmt.Sprintf("%s via %s", r.Dst, r.Gw)
}
