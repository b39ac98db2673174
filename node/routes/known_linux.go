package routes

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// known is what an error-free Sync left in the kernel: the routes by
// destination, the VXLAN entries, and the tunnel devices as they were.
type known struct {
	routes              map[string]*netlink.Route
	vx                  vxlanEntries
	dev                 devices
	vxIdx               int
	needVXLAN, needIPIP bool
}

// SyncKnown is Sync for a change of inputs between periodic Syncs: it
// compares them with what the last error-free Sync (or SyncKnown)
// installed and sends only the difference, without reading the kernel's
// tables back. A daemon calls it for every BGP change, which on a large
// cluster is every host for every change anywhere: dumping the routing
// table and the VXLAN entries each time costs every host O(routes) per
// change. It is a full Sync when there is no such earlier Sync, when the
// tunnel devices needed change, when an input is bad (Sync reports it) or
// when the kernel refuses a change (someone else's route on a new prefix:
// Sync reports it, and repairs what the kernel really holds). What others
// change in between is left to the next Sync: call Sync periodically.
func (m *Manager) SyncKnown(local Local, remotes []Remote) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.known
	if k == nil {
		return m.sync(local, remotes)
	}
	needVXLAN, needIPIP := m.opts.VXLANTunnelAddr != nil, m.opts.IPIPTunnelAddr != nil
	for _, r := range remotes {
		if checkRemote(r) != nil {
			return m.sync(local, remotes)
		}
		needVXLAN = needVXLAN || r.Encap == VXLAN
		needIPIP = needIPIP || r.Encap == IPIP
	}
	if needVXLAN != k.needVXLAN || needIPIP != k.needIPIP {
		return m.sync(local, remotes)
	}
	want, vx, err := plan(local, remotes, k.dev)
	if err != nil {
		return m.sync(local, remotes)
	}
	if err := m.applyKnown(k, want, vx); err != nil {
		if serr := m.sync(local, remotes); serr != nil {
			return fmt.Errorf("%w (after: %v)", serr, err)
		}
		return nil
	}
	k.routes, k.vx = want, vx
	return nil
}

// applyKnown sends the difference between k and the wanted state, in
// Sync's order: VXLAN entries, routes, stale VXLAN entries. It stops at
// the first error: the caller then falls back to a Sync.
func (m *Manager) applyKnown(k *known, want map[string]*netlink.Route, vx vxlanEntries) error {
	if k.vxIdx != 0 {
		for key, n := range vx.neighs {
			if o, ok := k.vx.neighs[key]; ok && o.HardwareAddr.String() == n.HardwareAddr.String() {
				continue
			}
			if err := m.change(m.h.NeighSet(n)); err != nil {
				return fmt.Errorf("neighbour %s lladdr %s: %w", n.IP, n.HardwareAddr, err)
			}
		}
		for key, f := range vx.fdbs {
			if o, ok := k.vx.fdbs[key]; ok && o.IP.Equal(f.IP) {
				continue
			}
			if err := m.change(m.h.NeighSet(f)); err != nil {
				return fmt.Errorf("fdb %s dst %s: %w", f.HardwareAddr, f.IP, err)
			}
		}
	}
	for key, w := range want {
		o, ours := k.routes[key]
		if ours && sameWanted(o, w) {
			continue
		}
		// A new prefix is added, not replaced: a route someone else put
		// there since the last Sync must be reported, not overwritten.
		op := m.h.RouteAdd
		if ours {
			op = m.h.RouteReplace
		}
		if err := m.change(op(w)); err != nil {
			return fmt.Errorf("route %s: %w", describeRoute(w), err)
		}
	}
	for key, o := range k.routes {
		if _, ok := want[key]; ok {
			continue
		}
		if err := m.change(m.h.RouteDel(o)); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete stale route %s: %w", describeRoute(o), err)
		}
	}
	if k.vxIdx != 0 {
		for key, n := range k.vx.neighs {
			if _, ok := vx.neighs[key]; ok {
				continue
			}
			if err := m.change(m.h.NeighDel(n)); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete neighbour %s: %w", n.IP, err)
			}
		}
		for key, f := range k.vx.fdbs {
			if _, ok := vx.fdbs[key]; ok {
				continue
			}
			if err := m.change(m.h.NeighDel(f)); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete fdb %s dst %s: %w", f.HardwareAddr, f.IP, err)
			}
		}
	}
	return nil
}

// sameWanted compares two routes as plan builds them.
func sameWanted(a, b *netlink.Route) bool {
	return a.Type == b.Type && a.Gw.Equal(b.Gw) && a.LinkIndex == b.LinkIndex && a.Flags == b.Flags &&
		a.Priority == b.Priority && a.Dst.String() == b.Dst.String()
}
