package routes

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Manager programs routes to other hosts' blocks, blackholes for local
// blocks, and the VXLAN and IPIP devices, in one network namespace.
type Manager struct {
	opts Options
	h    *netlink.Handle

	mu      sync.Mutex    // one Sync at a time
	changes atomic.Uint64 // mutating netlink requests sent, for tests and metrics
	// known is what the last Sync or SyncKnown installed when it met no
	// error, nil otherwise; under mu.
	known *known
}

// New opens a netlink socket in the namespace of opts.NetNSPath (or the
// calling thread's) and returns a Manager. It changes nothing: routes a
// previous run installed are adopted by the first Sync, never flushed.
func New(opts Options) (*Manager, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("route manager options: %w", err)
	}
	var h *netlink.Handle
	if opts.NetNSPath == "" {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(opts.NetNSPath)
		if err != nil {
			return nil, fmt.Errorf("open netns %s: %w", opts.NetNSPath, err)
		}
		// The socket keeps its namespace after the handle to it is closed.
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	// A wedged kernel request must not hang the daemon forever.
	if err := h.SetSocketTimeout(10 * time.Second); err != nil {
		h.Close()
		return nil, fmt.Errorf("set netlink socket timeout: %w", err)
	}
	return &Manager{opts: opts, h: h}, nil
}

// Close releases the netlink socket. The kernel state stays.
func (m *Manager) Close() { m.h.Close() }

// Changes is the number of mutating netlink requests (adds, replaces,
// deletes, link settings) the Manager has sent. A Sync that finds the
// kernel already right sends none.
func (m *Manager) Changes() uint64 { return m.changes.Load() }

// change counts one mutating request and passes its error through.
func (m *Manager) change(err error) error {
	m.changes.Add(1)
	return err
}

// Installed returns the routes the Manager regards as its own: what a
// previous run left (a restart) or what the last Sync made. A non-empty
// result at start is the sign that forwarding state survived a restart
// (see bgp.Config.Restarting).
func (m *Manager) Installed() ([]netlink.Route, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	all, err := m.listMain()
	if err != nil {
		return nil, err
	}
	tun := m.tunnelIndexes()
	var out []netlink.Route
	for _, r := range all {
		if owned(r, tun) {
			out = append(out, r)
		}
	}
	return out, nil
}

// Sync makes the kernel match local and remotes, touching only what it
// owns (see owned). It applies everything it can and returns every
// problem joined: a bad or conflicting remote, or a missing tunnel
// device, costs only the routes that depend on it.
//
// Order: tunnel devices, then VXLAN neighbour and FDB entries, then routes
// (added or replaced, stale ones deleted), then stale VXLAN entries, so
// no route ever points at a tunnel address without its MAC.
func (m *Manager) Sync(local Local, remotes []Remote) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sync(local, remotes)
}

func (m *Manager) sync(local Local, remotes []Remote) error {
	m.known = nil
	var errs []error

	good := make([]Remote, 0, len(remotes))
	needVXLAN, needIPIP := m.opts.VXLANTunnelAddr != nil, m.opts.IPIPTunnelAddr != nil
	for _, r := range remotes {
		if err := checkRemote(r); err != nil {
			errs = append(errs, err)
			continue
		}
		good = append(good, r)
		needVXLAN = needVXLAN || r.Encap == VXLAN
		needIPIP = needIPIP || r.Encap == IPIP
	}

	dev := devices{}
	if needVXLAN {
		idx, err := m.ensureVXLAN()
		if err != nil {
			errs = append(errs, err)
		}
		dev.vxlan = idx
	}
	if needIPIP {
		idx, err := m.ensureIPIP()
		if err != nil {
			errs = append(errs, err)
		}
		dev.ipip = idx
	}

	want, vx, err := plan(local, good, dev)
	errs = append(errs, err)

	// A VXLAN device left from earlier config still has its entries
	// reconciled (to none) even when nothing needs it now.
	vxIdx := dev.vxlan
	if vxIdx == 0 {
		vxIdx = m.tunnelIndexes().vxlan
	}
	if vxIdx != 0 {
		errs = append(errs, m.addVXLANEntries(vxIdx, vx))
	}
	errs = append(errs, m.syncRoutes(want))
	if vxIdx != 0 {
		errs = append(errs, m.removeStaleVXLANEntries(vxIdx, vx))
	}
	err = errors.Join(errs...)
	if err == nil {
		m.known = &known{routes: want, vx: vx, dev: dev, vxIdx: vxIdx, needVXLAN: needVXLAN, needIPIP: needIPIP}
	}
	return err
}

// devices holds the tunnel devices' indexes (0 = absent or not usable).
type devices struct{ vxlan, ipip int }

// tunnelIndexes finds the tunnel devices whether or not this Sync needs
// them: routes through them are ours even after their remotes are gone.
func (m *Manager) tunnelIndexes() devices {
	var d devices
	if l, err := m.h.LinkByName(m.opts.VXLANDevice); err == nil {
		d.vxlan = l.Attrs().Index
	}
	if l, err := m.h.LinkByName(IPIPDevice); err == nil {
		d.ipip = l.Attrs().Index
	}
	return d
}
