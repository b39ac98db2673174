package agent

import (
	"net"
	"net/netip"
	"strings"

	"github.com/tabby-net/tabby/node/bgp"
	"github.com/tabby-net/tabby/node/routes"
	"github.com/tabby-net/tabby/pkg/model"
)

// view is what the node knows from etcd at one moment; everything the
// reconciler decides is a pure function of a view plus the BGP routes.
type view struct {
	me        string
	self      model.Host
	pools     []model.Pool
	nodes     map[string]*model.Host // by name; shared with the watch cache: read-only
	hosts     *hostIndex             // of nodes; nil: derived when needed
	bgp       model.BGPConfig
	global    []model.BGPPeer
	hostPeers []model.BGPPeer
	blocks    []*net.IPNet // this host's affine blocks
	endpoints []model.Endpoint
	epRevs    map[string]int64 // endpoint key -> the revision read
}

// peers is the desired BGP peer set: tabby hosts by the peering rule, plus
// global and per-host peers.
//
// The rule: with the full mesh on, every host peers with every other, and
// a reflector already treats the others as its clients. With the mesh off
// and at least one reflector registered, every ordinary host peers with
// every reflector and nothing else, and reflectors peer with each other as
// a mesh and treat the ordinary hosts as route reflector clients: one
// session per reflector on a client, n-1 on a reflector. With the mesh off
// and no reflector, only the configured peers.
func (v *view) peers() []bgp.Peer {
	var out []bgp.Peer
	seen := map[string]bool{}
	add := func(p bgp.Peer) {
		if p.Address == "" || seen[p.Address] {
			return
		}
		seen[p.Address] = true
		out = append(out, p)
	}
	own := map[string]bool{addrOf(v.self.IPv4): true, addrOf(v.self.IPv6): true}
	ownAddr := map[netip.Addr]bool{}
	for _, s := range []string{v.self.IPv4, v.self.IPv6} {
		if a, ok := hostAddr(s); ok {
			ownAddr[a] = true
		}
	}
	x := v.index()
	useReflectors := !v.bgp.Mesh && len(x.reflectors) > 0
	// The hosts that can be peers under the rule: with the mesh off, an
	// ordinary host looks at the reflectors only, and with no reflector at
	// no host, so a pass at 10,000 hosts does not walk them all.
	var names []string
	switch {
	case v.bgp.Mesh, useReflectors && v.self.IsReflector():
		names = x.names
	case useReflectors:
		names = x.reflectors
	}
	for _, n := range names {
		h := v.nodes[n]
		a, ok := hostAddr(h.IPv4)
		if n == v.me || !ok || ownAddr[a] {
			continue
		}
		// One side of each tabby pair only listens: after a session drops,
		// two sides dialling each other keep colliding.
		p := bgp.Peer{Address: addrOf(h.IPv4), ASN: asOf(h, v.bgp), Port: int32(h.BGPPort), Kind: "mesh",
			Passive: bgp.MeshPassive(addrOf(v.self.IPv4), addrOf(h.IPv4))}
		sameAS := p.ASN == asOf(&v.self, v.bgp)
		reflectTo := v.self.IsReflector() && !h.IsReflector() && sameAS
		// Reflectors give each other only their own blocks: each has every
		// client's routes from the client itself, and copies passed between
		// GoBGP reflectors outlive their withdrawal (bgp.Peer.OwnRoutesOnly).
		p.OwnRoutesOnly = v.self.IsReflector() && h.IsReflector() && sameAS
		if reflectTo {
			p.ReflectorClient = true
			// A cluster ID written by hand that GoBGP would refuse must not
			// stop every session: the router ID stands in for it.
			if model.ValidClusterID(v.self.RouteReflectorClusterID) == nil {
				p.ClusterID = v.self.RouteReflectorClusterID
			}
		}
		switch {
		case v.bgp.Mesh:
			// A reflector reflects inside the mesh too (the clients then
			// hold each route directly and through it, same next hop), so
			// that turning the mesh off later only removes sessions whose
			// routes every host already has another way: no route leaves
			// a kernel on the switch.
		case !useReflectors || !sameAS:
			// No reflectors in use; or another AS, where reflection (iBGP
			// only) would not keep next hops: explicit peers are the way.
			continue
		case h.IsReflector():
			p.Kind = "reflector"
		case reflectTo:
			p.Kind = "rr-client"
		default:
			continue // two clients: the reflectors carry their routes
		}
		add(p)
	}
	for _, p := range v.hostPeers {
		if !own[p.IP] {
			add(bgp.Peer{Address: p.IP, ASN: p.ASNumber, Kind: "node"})
		}
	}
	for _, p := range v.global {
		if !own[p.IP] {
			add(bgp.Peer{Address: p.IP, ASN: p.ASNumber, Kind: "global"})
		}
	}
	return out
}

func asOf(h *model.Host, c model.BGPConfig) uint32 {
	if h.ASNumber != 0 {
		return h.ASNumber
	}
	return c.ASNumber
}

func addrOf(cidr string) string {
	if cidr == "" {
		return ""
	}
	if ip, _, err := net.ParseCIDR(cidr); err == nil {
		return ip.String()
	}
	if ip := net.ParseIP(cidr); ip != nil {
		return ip.String()
	}
	return ""
}

// advertised is what this host originates: its blocks, plus a /32 (/128) for
// every local workload address that sits in another host's block (borrowed).
func (v *view) advertised() []*net.IPNet {
	out := append([]*net.IPNet{}, v.blocks...)
	for _, e := range v.endpoints {
		for _, n := range e.Nets() {
			ip, host, err := net.ParseCIDR(n)
			if err != nil || v.inOwnBlock(ip) || v.poolOf(ip) == nil {
				continue
			}
			out = append(out, host)
		}
	}
	return out
}

func (v *view) inOwnBlock(ip net.IP) bool {
	for _, b := range v.blocks {
		if b.Contains(ip) {
			return true
		}
	}
	return false
}

func (v *view) poolOf(ip net.IP) *model.Pool {
	for i := range v.pools {
		if v.pools[i].IPNet().Contains(ip) {
			return &v.pools[i]
		}
	}
	return nil
}

// index is the host index of v's nodes.
func (v *view) index() *hostIndex {
	if v.hosts != nil {
		return v.hosts
	}
	return newHostIndex(v.nodes)
}

// nodeByAddr finds the host whose underlay address is ip. It is asked once
// per learned route: a lookup, not a walk of the host list.
func (v *view) nodeByAddr(x *hostIndex, ip net.IP) *model.Host {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return nil
	}
	return x.byAddr[a.Unmap()]
}

func sameSubnet(a, b string) bool {
	_, na, err1 := net.ParseCIDR(a)
	ipb, _, err2 := net.ParseCIDR(b)
	return err1 == nil && err2 == nil && na.Contains(ipb)
}

// encapFor decides how to reach a prefix learned from host h.
func (v *view) encapFor(prefix *net.IPNet, h *model.Host) routes.Encap {
	p := v.poolOf(prefix.IP)
	if p == nil || h == nil {
		return routes.None
	}
	mode, enc := model.EncapNever, routes.None
	switch {
	case p.VXLANMode.On():
		mode, enc = p.VXLANMode, routes.VXLAN
	case p.IPIPMode.On():
		mode, enc = p.IPIPMode, routes.IPIP
	}
	if !mode.On() || mode == model.EncapCrossSubnet && sameSubnet(v.self.IPv4, h.IPv4) {
		return routes.None
	}
	return enc
}

// remotes turns BGP best routes into kernel routes. Our own prefixes never
// come back (the speaker filters them); a route whose encapsulation cannot be
// served here (IPIP without kernel support) is skipped and reported.
func (v *view) remotes(learned []bgp.Route, ipipOK bool) (out []routes.Remote, unserved []string) {
	x := v.index()
	for _, r := range learned {
		if r.Prefix == nil || r.NextHop == nil {
			continue
		}
		h := v.nodeByAddr(x, r.NextHop)
		enc := v.encapFor(r.Prefix, h)
		rem := routes.Remote{Prefix: r.Prefix, Gateway: r.NextHop, Encap: enc}
		switch enc {
		case routes.IPIP:
			if !ipipOK {
				unserved = append(unserved, r.Prefix.String())
				continue
			}
		case routes.VXLAN:
			if h.VXLANTunnelAddr == "" || h.VXLANMAC == "" {
				unserved = append(unserved, r.Prefix.String())
				continue
			}
			rem.TunnelAddr = net.ParseIP(addrOf(h.VXLANTunnelAddr))
			rem.VTEPMAC, _ = net.ParseMAC(h.VXLANMAC)
			if v4 := net.ParseIP(addrOf(h.IPv4)); v4 != nil {
				rem.Gateway = v4
			}
		case routes.None:
			// An IPv6 prefix advertised with an IPv4 next hop cannot be
			// routed without a tunnel.
			if (r.Prefix.IP.To4() == nil) != (r.NextHop.To4() == nil) {
				unserved = append(unserved, r.Prefix.String())
				continue
			}
		}
		out = append(out, rem)
	}
	return out, unserved
}

// natSets are the pool sets nat-outgoing matches on, per family.
func (v *view) natSets() (all4, nat4, all6, nat6 []string) {
	for _, p := range v.pools {
		if p.IsV6() {
			all6 = append(all6, p.CIDR)
			if p.NATOutgoing && !p.Disabled {
				nat6 = append(nat6, p.CIDR)
			}
			continue
		}
		all4 = append(all4, p.CIDR)
		if p.NATOutgoing && !p.Disabled {
			nat4 = append(nat4, p.CIDR)
		}
	}
	return
}

// needsEncap reports which tunnel devices this host needs, from its pools.
func (v *view) needsEncap() (ipip, vxlan bool) {
	for _, p := range v.pools {
		if p.Disabled {
			continue
		}
		if p.IPIPMode.On() {
			ipip = true
		}
		if p.VXLANMode.On() && !p.IsV6() {
			vxlan = true
		}
	}
	return
}

// isEndpointKey is a key match for this host's endpoint records.
func isEndpointKey(k string) bool { return strings.Contains(k, "/endpoint/") }
