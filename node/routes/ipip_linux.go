package routes

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ensureIPIP sets up tunl0 (creating it loads the ipip module, whose init
// makes tunl0 in every namespace, hence EEXIST is success) and returns
// its index.
func (m *Manager) ensureIPIP() (int, error) {
	mtu := m.opts.MTU
	if mtu == 0 {
		mtu = 1500
		if m.opts.NodeIP != nil {
			if u, err := m.underlay(); err == nil {
				mtu = u.Attrs().MTU
			}
		}
	}
	mtu -= IPIPOverhead

	l, err := m.h.LinkByName(IPIPDevice)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		if err := m.change(m.h.LinkAdd(BuildIPIPLink(mtu))); err != nil && !errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("create %s (does the kernel have ipip? see IPIPSupported): %w", IPIPDevice, err)
		}
		l, err = m.h.LinkByName(IPIPDevice)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", IPIPDevice, err)
	}
	if _, ok := l.(*netlink.Iptun); !ok {
		return 0, fmt.Errorf("%s exists but is a %s device, not ipip", IPIPDevice, l.Type())
	}
	if err := m.tuneLink(l, mtu, nil); err != nil {
		return 0, fmt.Errorf("%s: %w", IPIPDevice, err)
	}
	if err := m.syncAddrs(l, m.opts.IPIPTunnelAddr); err != nil {
		return 0, fmt.Errorf("%s: %w", IPIPDevice, err)
	}
	return l.Attrs().Index, nil
}

// IPIPSupported reports whether this kernel can make IPIP tunnels. It
// creates a throwaway ipip device in a fresh, unnamed network namespace
// that disappears when the probe ends, so the host's namespaces are never
// touched; the attempt loads the ipip module if it is a module (the same
// thing creating tunl0 would do). Looking for /proc/net/ip_tunnel or
// /sys/module/ipip instead would say "no" on a kernel where the module
// exists but is not loaded yet. Needs CAP_SYS_ADMIN (to make the
// namespace) and CAP_NET_ADMIN; without them it reports false.
func IPIPSupported() bool {
	ok, _ := probeIPIP()
	return ok
}

// probeIPIP does the work of IPIPSupported and says why it failed.
func probeIPIP() (bool, error) {
	type result struct {
		ok  bool
		err error
	}
	res := make(chan result, 1)
	// A fresh goroutine on a locked thread: only that thread enters the
	// new namespace, and the caller's thread is never moved.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res <- result{false, fmt.Errorf("open own netns: %w", err)}
			return
		}
		defer orig.Close()
		scratch, err := netns.New() // unshare(CLONE_NEWNET): this thread is now in it
		if err != nil {
			runtime.UnlockOSThread()
			res <- result{false, fmt.Errorf("new netns: %w", err)}
			return
		}
		ok, perr := tryIPIP()
		scratch.Close()
		if err := netns.Set(orig); err != nil {
			// Keep the thread locked: the runtime ends it with this goroutine
			// rather than reuse a thread in the wrong namespace.
			res <- result{false, fmt.Errorf("return from scratch netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		res <- result{ok, perr}
	}()
	r := <-res
	return r.ok, r.err
}

// tryIPIP runs inside the scratch namespace.
func tryIPIP() (bool, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("netlink socket: %w", err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "tabbyprobe0"}}); err != nil {
		// EEXIST: the namespace already has tunl0 (the ipip module makes it
		// in every namespace, this one included when the attempt itself
		// loads the module), and an ipip device without local and remote
		// clashes with it. Only a kernel with ipip answers that.
		if errors.Is(err, unix.EEXIST) {
			return true, nil
		}
		return false, fmt.Errorf("create ipip device: %w", err)
	}
	return true, nil
}
