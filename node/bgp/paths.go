package bgp

import (
	"errors"
	"fmt"
	"net"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"google.golang.org/protobuf/types/known/anypb"
)

// advert is one locally originated prefix as given to GoBGP.
type advert struct {
	prefix *net.IPNet
	uuid   []byte // from AddPath, for DeletePath
}

// Advertise makes prefixes the complete set of locally originated
// prefixes (this host's blocks and borrowed /32s): it adds the missing
// ones and withdraws the others. IPv4 prefixes carry Config.NextHop in the
// NEXT_HOP attribute; IPv6 prefixes go in MP_REACH_NLRI with
// Config.NextHop6 (by default the IPv4-mapped IPv4 next hop). On restart,
// call Advertise before SetPeers so the first UPDATEs after the OPEN
// already hold our prefixes. On error the prefixes that could be applied
// are; calling again retries the rest.
func (s *Speaker) Advertise(prefixes []*net.IPNet) error {
	want := make(map[string]*net.IPNet, len(prefixes))
	for _, p := range prefixes {
		if p == nil {
			return errors.New("nil prefix")
		}
		n := canonical(p)
		if n == nil {
			return fmt.Errorf("prefix %v is neither IPv4 nor IPv6", p)
		}
		want[n.String()] = n
	}
	return s.call(func() error { return s.advertise(want) })
}

// canonical masks the address and uses the 4-byte form for IPv4.
func canonical(p *net.IPNet) *net.IPNet {
	ones, bits := p.Mask.Size()
	switch ip := p.IP; {
	case ip.To4() != nil && (bits == 32 || bits == 128 && ones >= 96):
		if bits == 128 {
			ones -= 96
		}
		m := net.CIDRMask(ones, 32)
		return &net.IPNet{IP: ip.To4().Mask(m), Mask: m}
	case ip.To4() == nil && len(ip) == net.IPv6len && bits == 128:
		m := net.CIDRMask(ones, 128)
		return &net.IPNet{IP: ip.Mask(m), Mask: m}
	}
	return nil
}

// advertise runs on the run goroutine.
func (s *Speaker) advertise(want map[string]*net.IPNet) error {
	st := s.st
	var errs []error
	changed := false
	for key, a := range st.adverts {
		if _, ok := want[key]; ok {
			continue
		}
		changed = true
		if err := s.withdraw(a); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(st.adverts, key)
	}
	for key, p := range want {
		if _, ok := st.adverts[key]; ok {
			continue
		}
		changed = true
		a, err := s.originate(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st.adverts[key] = a
	}
	// Our own path may now win (or stop winning) over a learned one. The
	// daemon calls Advertise on every pass, mostly with the same set:
	// that wakes nothing.
	if changed {
		s.poke()
	}
	return errors.Join(errs...)
}

func (s *Speaker) originate(p *net.IPNet) (advert, error) {
	path, err := localPath(p, s.cfg.NextHop, s.cfg.NextHop6)
	if err != nil {
		return advert{}, err
	}
	ctx, cancel := apiCtx()
	defer cancel()
	resp, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path})
	if err != nil {
		return advert{}, fmt.Errorf("advertise %s: %w", p, err)
	}
	return advert{prefix: p, uuid: resp.Uuid}, nil
}

func (s *Speaker) withdraw(a advert) error {
	ctx, cancel := apiCtx()
	defer cancel()
	err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Uuid: a.uuid})
	if err != nil {
		return fmt.Errorf("withdraw %s: %w", a.prefix, err)
	}
	return nil
}

// localPath builds the GoBGP path for a prefix we originate: ORIGIN IGP
// and the next hop; GoBGP adds LOCAL_PREF and an empty AS_PATH for iBGP.
func localPath(p *net.IPNet, nextHop4, nextHop6 string) (*api.Path, error) {
	ones, _ := p.Mask.Size()
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: p.IP.String(), PrefixLen: uint32(ones)})
	if err != nil {
		return nil, fmt.Errorf("encode prefix %s: %w", p, err)
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		return nil, fmt.Errorf("encode origin: %w", err)
	}
	family := familyV4
	var nh *anypb.Any
	if p.IP.To4() != nil {
		nh, err = anypb.New(&api.NextHopAttribute{NextHop: nextHop4})
	} else {
		family = familyV6
		nh, err = anypb.New(&api.MpReachNLRIAttribute{
			Family:   familyV6,
			NextHops: []string{nextHop6},
			Nlris:    []*anypb.Any{nlri},
		})
	}
	if err != nil {
		return nil, fmt.Errorf("encode next hop for %s: %w", p, err)
	}
	return &api.Path{Family: family, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}, nil
}

// learnedRoute turns a best path, listed with EnableOnlyBinary, into a
// Route; ok is false for paths we originate ourselves, withdrawals, and
// paths that point back at us. Binary, because GoBGP otherwise marshals
// every attribute of every path (both reflectors' copies) into protobuf
// for each listing, most of the listing's cost, and every host lists its
// RIB after every change anywhere in the cluster.
func learnedRoute(p *api.Path, own map[string]bool) (Route, bool, error) {
	if p.GetIsWithdraw() {
		return Route{}, false, nil
	}
	peer := net.ParseIP(p.GetNeighborIp()) // "<nil>" for local paths
	if peer == nil {
		return Route{}, false, nil
	}
	ipnet, err := prefixOf(p)
	if err != nil {
		return Route{}, false, fmt.Errorf("decode NLRI from %s: %w", peer, err)
	}
	nh, err := nextHop(p)
	if err != nil {
		return Route{}, false, fmt.Errorf("prefix %s from %s: %w", ipnet, peer, err)
	}
	if nh == nil {
		return Route{}, false, fmt.Errorf("prefix %s from %s has no next hop", ipnet, peer)
	}
	if nh.IsUnspecified() || own[nh.String()] {
		return Route{}, false, nil
	}
	return Route{Prefix: ipnet, NextHop: nh, Peer: peer.String(), Stale: p.GetStale()}, true, nil
}

// prefixOf decodes a path's binary NLRI (IPv4 or IPv6 unicast).
func prefixOf(p *api.Path) (*net.IPNet, error) {
	f := p.GetFamily()
	n, err := bgp.NewPrefixFromRouteFamily(uint16(f.GetAfi()), uint8(f.GetSafi()))
	if err != nil {
		return nil, err
	}
	if err := n.DecodeFromBytes(p.GetNlriBinary()); err != nil {
		return nil, err
	}
	var ip net.IP
	var ones uint8
	switch n := n.(type) {
	case *bgp.IPAddrPrefix:
		ip, ones = n.Prefix, n.Length
	case *bgp.IPv6AddrPrefix:
		ip, ones = n.Prefix, n.Length
	default:
		return nil, fmt.Errorf("family %v/%v is not unicast", f.GetAfi(), f.GetSafi())
	}
	bits := 8 * net.IPv6len
	if v4 := ip.To4(); v4 != nil && f.GetAfi() == api.Family_AFI_IP {
		ip, bits = v4, 8*net.IPv4len
	}
	if int(ones) > bits {
		return nil, fmt.Errorf("prefix length %d of %s", ones, ip)
	}
	m := net.CIDRMask(int(ones), bits)
	return &net.IPNet{IP: ip.Mask(m), Mask: m}, nil
}

// nextHop reads NEXT_HOP, or the first next hop of MP_REACH_NLRI (an IPv6
// path may add a link-local second one, which we cannot route via), from
// the binary attributes; the others are not decoded.
func nextHop(p *api.Path) (net.IP, error) {
	for _, b := range p.GetPattrsBinary() {
		if len(b) < 2 {
			continue
		}
		switch bgp.BGPAttrType(b[1]) {
		case bgp.BGP_ATTR_TYPE_NEXT_HOP:
			var a bgp.PathAttributeNextHop
			if err := a.DecodeFromBytes(b); err != nil {
				return nil, fmt.Errorf("decode NEXT_HOP: %w", err)
			}
			return normalizeIP(a.Value), nil
		case bgp.BGP_ATTR_TYPE_MP_REACH_NLRI:
			var a bgp.PathAttributeMpReachNLRI
			if err := a.DecodeFromBytes(b); err != nil {
				return nil, fmt.Errorf("decode MP_REACH_NLRI: %w", err)
			}
			if a.Nexthop != nil {
				return normalizeIP(a.Nexthop), nil
			}
		}
	}
	return nil, nil
}

// normalizeIP gives IPv4 (and IPv4-mapped) addresses their 4-byte form.
func normalizeIP(ip net.IP) net.IP {
	if v4 := ip.To4(); v4 != nil {
		return v4
	}
	return ip
}
