package routes

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// checkRemote rejects a Remote the kernel could not route.
func checkRemote(r Remote) error {
	if r.Prefix == nil {
		return errors.New("remote with no prefix")
	}
	if r.Gateway == nil {
		return fmt.Errorf("route %s: no gateway", r.Prefix)
	}
	v4 := r.Prefix.IP.To4() != nil
	switch r.Encap {
	case None:
		// Linux routes IPv4 via an IPv6 gateway but not the reverse.
		if (r.Gateway.To4() != nil) != v4 {
			return fmt.Errorf("route %s via %s: gateway of the other family", r.Prefix, r.Gateway)
		}
	case IPIP:
		if !v4 || r.Gateway.To4() == nil {
			return fmt.Errorf("route %s via %s: IPIP carries IPv4 only", r.Prefix, r.Gateway)
		}
	case VXLAN:
		if r.TunnelAddr == nil || (r.TunnelAddr.To4() != nil) != v4 {
			return fmt.Errorf("route %s: VXLAN needs a tunnel address of the prefix's family, have %v", r.Prefix, r.TunnelAddr)
		}
		if len(r.VTEPMAC) != 6 {
			return fmt.Errorf("route %s: VXLAN needs the remote VTEP MAC, have %q", r.Prefix, r.VTEPMAC)
		}
		// The VXLAN device's local address is the node's IPv4 address.
		if r.Gateway.To4() == nil {
			return fmt.Errorf("route %s: VXLAN underlay gateway %s is not IPv4", r.Prefix, r.Gateway)
		}
	default:
		return fmt.Errorf("route %s: unknown encapsulation %v", r.Prefix, r.Encap)
	}
	return nil
}

// vxlanEntries are the neighbour and FDB entries the VXLAN device should
// hold, by tunnel address and by MAC.
type vxlanEntries struct {
	neighs map[string]*netlink.Neigh
	fdbs   map[string]*netlink.Neigh
}

// plan turns the inputs into the desired routes, keyed by destination, and
// the VXLAN entries. Conflicts are reported and the later input skipped:
// a local block wins over a remote with the same prefix, the first remote
// wins over a later one, and a tunnel address or VTEP MAC cannot point two
// ways.
func plan(local Local, remotes []Remote, dev devices) (map[string]*netlink.Route, vxlanEntries, error) {
	want := map[string]*netlink.Route{}
	vx := vxlanEntries{neighs: map[string]*netlink.Neigh{}, fdbs: map[string]*netlink.Neigh{}}
	var errs []error
	for _, b := range local.Blocks {
		if b == nil {
			continue
		}
		b = canonical(b)
		want[b.String()] = BuildBlackholeRoute(b)
	}
	for _, r := range remotes {
		r.Prefix = canonical(r.Prefix)
		key := r.Prefix.String()
		if _, dup := want[key]; dup {
			errs = append(errs, fmt.Errorf("route %s via %s: prefix already routed (local block or earlier remote)", key, r.Gateway))
			continue
		}
		switch r.Encap {
		case None:
			want[key] = BuildDirectRoute(r)
		case IPIP:
			if dev.ipip == 0 {
				errs = append(errs, fmt.Errorf("route %s via %s: no %s device", key, r.Gateway, IPIPDevice))
				continue
			}
			want[key] = BuildIPIPRoute(r, dev.ipip)
		case VXLAN:
			if dev.vxlan == 0 {
				errs = append(errs, fmt.Errorf("route %s via %s: no VXLAN device", key, r.TunnelAddr))
				continue
			}
			if err := vx.add(r, dev.vxlan); err != nil {
				errs = append(errs, err)
				continue
			}
			want[key] = BuildVXLANRoute(r, dev.vxlan)
		}
	}
	return want, vx, errors.Join(errs...)
}

func (vx vxlanEntries) add(r Remote, idx int) error {
	n, f := BuildVXLANNeigh(r, idx), BuildVXLANFDB(r, idx)
	if old, ok := vx.neighs[n.IP.String()]; ok && old.HardwareAddr.String() != n.HardwareAddr.String() {
		return fmt.Errorf("route %s: tunnel address %s already maps to %s, not %s", r.Prefix, n.IP, old.HardwareAddr, n.HardwareAddr)
	}
	if old, ok := vx.fdbs[f.HardwareAddr.String()]; ok && !old.IP.Equal(f.IP) {
		return fmt.Errorf("route %s: VTEP %s already maps to host %s, not %s", r.Prefix, f.HardwareAddr, old.IP, f.IP)
	}
	vx.neighs[n.IP.String()] = n
	vx.fdbs[f.HardwareAddr.String()] = f
	return nil
}

// canonical masks host bits and uses the 4-byte form for IPv4, so keys
// and kernel comparisons are stable.
func canonical(p *net.IPNet) *net.IPNet {
	ones, bits := p.Mask.Size()
	if v4 := p.IP.To4(); v4 != nil {
		if bits == 128 {
			ones -= 96
		}
		m := net.CIDRMask(ones, 32)
		return &net.IPNet{IP: v4.Mask(m), Mask: m}
	}
	m := net.CIDRMask(ones, 128)
	return &net.IPNet{IP: p.IP.Mask(m), Mask: m}
}
