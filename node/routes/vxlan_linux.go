package routes

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureVXLAN creates or repairs the VXLAN device and returns its index.
// A device with the wrong VNI, port, local address, underlay or learning
// is re-created (its routes go with it and are re-added by the same Sync);
// MTU, MAC, up state and addresses are fixed in place.
func (m *Manager) ensureVXLAN() (int, error) {
	name := m.opts.VXLANDevice
	if m.opts.NodeIP == nil {
		return 0, fmt.Errorf("vxlan device %s: no node IP to use as the local address", name)
	}
	underlay, err := m.underlay()
	if err != nil {
		return 0, fmt.Errorf("vxlan device %s: %w", name, err)
	}
	mtu := m.opts.MTU
	if mtu == 0 {
		mtu = underlay.Attrs().MTU
	}
	want := BuildVXLANLink(m.opts, underlay.Attrs().Index, mtu-VXLANOverhead)

	l, err := m.h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		l = nil
	case err != nil:
		return 0, fmt.Errorf("vxlan device %s: %w", name, err)
	}
	if have, ok := l.(*netlink.Vxlan); l != nil && (!ok || !sameVXLAN(want, have)) {
		if err := m.change(m.h.LinkDel(l)); err != nil {
			return 0, fmt.Errorf("vxlan device %s: delete mismatched device: %w", name, err)
		}
		l = nil
	}
	if l == nil {
		if err := m.change(m.h.LinkAdd(want)); err != nil {
			return 0, fmt.Errorf("vxlan device %s: create (VNI %d, port %d, local %s, dev %s): %w",
				name, want.VxlanId, want.Port, want.SrcAddr, underlay.Attrs().Name, err)
		}
		if l, err = m.h.LinkByName(name); err != nil {
			return 0, fmt.Errorf("vxlan device %s: after create: %w", name, err)
		}
	}
	if err := m.tuneLink(l, want.MTU, m.opts.VXLANMAC); err != nil {
		return 0, fmt.Errorf("vxlan device %s: %w", name, err)
	}
	if err := m.syncAddrs(l, m.opts.VXLANTunnelAddr, m.opts.VXLANTunnelAddr6); err != nil {
		return 0, fmt.Errorf("vxlan device %s: %w", name, err)
	}
	return l.Attrs().Index, nil
}

func sameVXLAN(want, have *netlink.Vxlan) bool {
	return have.VxlanId == want.VxlanId && have.Port == want.Port &&
		have.SrcAddr.Equal(want.SrcAddr) && have.VtepDevIndex == want.VtepDevIndex &&
		!have.Learning
}

// underlay is the device that carries encapsulated traffic.
func (m *Manager) underlay() (netlink.Link, error) {
	if m.opts.UnderlayDevice != "" {
		l, err := m.h.LinkByName(m.opts.UnderlayDevice)
		if err != nil {
			return nil, fmt.Errorf("underlay device %s: %w", m.opts.UnderlayDevice, err)
		}
		return l, nil
	}
	addrs, err := listRetry(func() ([]netlink.Addr, error) { return m.h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses to find the underlay: %w", err)
	}
	for _, a := range addrs {
		if a.IP.Equal(m.opts.NodeIP) {
			l, err := m.h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("underlay device (index %d, holds %s): %w", a.LinkIndex, m.opts.NodeIP, err)
			}
			return l, nil
		}
	}
	return nil, fmt.Errorf("no device holds the node IP %s", m.opts.NodeIP)
}

// tuneLink sets MTU and MAC (when given) and brings the link up.
func (m *Manager) tuneLink(l netlink.Link, mtu int, mac net.HardwareAddr) error {
	a := l.Attrs()
	if mtu > 0 && a.MTU != mtu {
		if err := m.change(m.h.LinkSetMTU(l, mtu)); err != nil {
			return fmt.Errorf("set MTU %d: %w", mtu, err)
		}
	}
	if mac != nil && a.HardwareAddr.String() != mac.String() {
		if err := m.change(m.h.LinkSetHardwareAddr(l, mac)); err != nil {
			return fmt.Errorf("set MAC %s: %w", mac, err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := m.change(m.h.LinkSetUp(l)); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
	}
	return nil
}

// syncAddrs makes the link's global addresses exactly ips (nil ones
// skipped), as host routes. Link-local addresses are the kernel's and stay.
func (m *Manager) syncAddrs(l netlink.Link, ips ...net.IP) error {
	have, err := listRetry(func() ([]netlink.Addr, error) { return m.h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	want := map[string]*netlink.Addr{}
	for _, ip := range ips {
		if ip != nil {
			a := BuildTunnelAddr(ip)
			want[a.IPNet.String()] = a
		}
	}
	var errs []error
	for _, a := range have {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if _, ok := want[a.IPNet.String()]; ok {
			delete(want, a.IPNet.String())
			continue
		}
		if err := m.change(m.h.AddrDel(l, &a)); err != nil {
			errs = append(errs, fmt.Errorf("remove address %s: %w", a.IPNet, err))
		}
	}
	for _, a := range want {
		if err := m.change(m.h.AddrAdd(l, a)); err != nil {
			errs = append(errs, fmt.Errorf("add address %s: %w", a.IPNet, err))
		}
	}
	return errors.Join(errs...)
}

// addVXLANEntries adds or corrects the wanted neighbour and FDB entries.
func (m *Manager) addVXLANEntries(idx int, vx vxlanEntries) error {
	neighs, fdbs, err := m.listVXLANEntries(idx)
	if err != nil {
		return err
	}
	var errs []error
	for key, n := range vx.neighs {
		if have, ok := neighs[key]; ok && have.HardwareAddr.String() == n.HardwareAddr.String() {
			continue
		}
		if err := m.change(m.h.NeighSet(n)); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s lladdr %s: %w", n.IP, n.HardwareAddr, err))
		}
	}
	for key, f := range vx.fdbs {
		if have, ok := fdbs[key]; ok && have.IP.Equal(f.IP) {
			continue
		}
		if err := m.change(m.h.NeighSet(f)); err != nil {
			errs = append(errs, fmt.Errorf("fdb %s dst %s: %w", f.HardwareAddr, f.IP, err))
		}
	}
	return errors.Join(errs...)
}

// removeStaleVXLANEntries deletes the permanent entries nothing wants. The
// device is tabby's, so every permanent entry on it is too.
func (m *Manager) removeStaleVXLANEntries(idx int, vx vxlanEntries) error {
	neighs, fdbs, err := m.listVXLANEntries(idx)
	if err != nil {
		return err
	}
	var errs []error
	for key, n := range neighs {
		if _, ok := vx.neighs[key]; ok {
			continue
		}
		if err := m.change(m.h.NeighDel(&n)); err != nil {
			errs = append(errs, fmt.Errorf("delete neighbour %s: %w", n.IP, err))
		}
	}
	for key, f := range fdbs {
		if _, ok := vx.fdbs[key]; ok {
			continue
		}
		if err := m.change(m.h.NeighDel(&f)); err != nil {
			errs = append(errs, fmt.Errorf("delete fdb %s dst %s: %w", f.HardwareAddr, f.IP, err))
		}
	}
	return errors.Join(errs...)
}

// listVXLANEntries returns the device's permanent neighbour entries by IP
// and FDB entries by MAC. Others (kernel-made, failed) expire on their own.
func (m *Manager) listVXLANEntries(idx int) (neighs, fdbs map[string]netlink.Neigh, err error) {
	neighs, fdbs = map[string]netlink.Neigh{}, map[string]netlink.Neigh{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6, unix.AF_BRIDGE} {
		list, err := listRetry(func() ([]netlink.Neigh, error) { return m.h.NeighList(idx, fam) })
		if err != nil {
			return nil, nil, fmt.Errorf("list vxlan neighbours (family %d): %w", fam, err)
		}
		for _, n := range list {
			if n.LinkIndex != idx || n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			if fam == unix.AF_BRIDGE {
				fdbs[n.HardwareAddr.String()] = n
			} else {
				neighs[n.IP.String()] = n
			}
		}
	}
	return neighs, fdbs, nil
}
