package bgp

import (
	"testing"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// TestLearnedRouteBinary: the listing's wire-format paths decode to the
// prefix and next hop the protobuf form gave, for the next-hop shapes
// peers send (BIRD's IPv6 with a link-local second next hop included).
func TestLearnedRouteBinary(t *testing.T) {
	ser := func(a bgp.PathAttributeInterface) []byte {
		b, err := a.Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	nlri := func(n bgp.AddrPrefixInterface) []byte {
		b, err := n.Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	origin := ser(bgp.NewPathAttributeOrigin(0))
	v4 := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	v6 := &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
	pfx6 := bgp.NewIPv6AddrPrefix(122, "fd00:1::")
	linkLocal := bgp.NewPathAttributeMpReachNLRI("fd00:ffff::1", []bgp.AddrPrefixInterface{pfx6})
	linkLocal.LinkLocalNexthop = []byte{0xfe, 0x80, 15: 1}
	own := map[string]bool{"198.19.0.1": true}
	for _, c := range []struct {
		name string
		path *api.Path
		want string // "" = not a learned route
	}{
		{"IPv4", &api.Path{Family: v4, NeighborIp: "198.19.0.2", NlriBinary: nlri(bgp.NewIPAddrPrefix(26, "10.1.7.64")),
			PattrsBinary: [][]byte{origin, ser(bgp.NewPathAttributeNextHop("198.19.0.7"))}}, "10.1.7.64/26 via 198.19.0.7"},
		{"IPv6 via IPv6", &api.Path{Family: v6, NeighborIp: "198.19.0.2", NlriBinary: nlri(pfx6),
			PattrsBinary: [][]byte{origin, ser(bgp.NewPathAttributeMpReachNLRI("fd00:ffff::1", []bgp.AddrPrefixInterface{pfx6}))}},
			"fd00:1::/122 via fd00:ffff::1"},
		{"IPv6 via IPv6 and link-local", &api.Path{Family: v6, NeighborIp: "198.19.0.2", NlriBinary: nlri(pfx6),
			PattrsBinary: [][]byte{origin, ser(linkLocal)}}, "fd00:1::/122 via fd00:ffff::1"},
		{"IPv6 via mapped IPv4", &api.Path{Family: v6, NeighborIp: "198.19.0.2", NlriBinary: nlri(pfx6),
			PattrsBinary: [][]byte{ser(bgp.NewPathAttributeMpReachNLRI("::ffff:198.19.0.7", []bgp.AddrPrefixInterface{pfx6}))}},
			"fd00:1::/122 via 198.19.0.7"},
		{"local path", &api.Path{Family: v4, NeighborIp: "<nil>", NlriBinary: nlri(bgp.NewIPAddrPrefix(26, "10.1.7.64")),
			PattrsBinary: [][]byte{ser(bgp.NewPathAttributeNextHop("198.19.0.1"))}}, ""},
		{"back at us", &api.Path{Family: v4, NeighborIp: "198.19.0.2", NlriBinary: nlri(bgp.NewIPAddrPrefix(26, "10.1.7.64")),
			PattrsBinary: [][]byte{ser(bgp.NewPathAttributeNextHop("198.19.0.1"))}}, ""},
		{"withdrawn", &api.Path{Family: v4, NeighborIp: "198.19.0.2", IsWithdraw: true, NlriBinary: nlri(bgp.NewIPAddrPrefix(26, "10.1.7.64"))}, ""},
	} {
		r, ok, err := learnedRoute(c.path, own)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		got := ""
		if ok {
			got = r.Prefix.String() + " via " + r.NextHop.String()
			if r.Peer != "198.19.0.2" {
				t.Errorf("%s: peer %q", c.name, r.Peer)
			}
		}
		if got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
	if _, _, err := learnedRoute(&api.Path{Family: v4, NeighborIp: "198.19.0.2", NlriBinary: nlri(bgp.NewIPAddrPrefix(26, "10.1.7.64")),
		PattrsBinary: [][]byte{origin}}, own); err == nil {
		t.Error("a path without a next hop: no error")
	}
}
