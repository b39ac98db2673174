package agent

import (
	"net"
	"testing"

	"github.com/tabby-net/tabby/node/bgp"
	"github.com/tabby-net/tabby/node/routes"
	"github.com/tabby-net/tabby/pkg/model"
)

func cidr(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }

func testView() *view {
	return &view{
		me:   "h1",
		self: model.Host{Name: "h1", IPv4: "198.19.0.1/24"},
		pools: []model.Pool{
			{CIDR: "10.0.0.0/16", IPIPMode: "never", VXLANMode: "never", NATOutgoing: true},
			{CIDR: "10.1.0.0/16", IPIPMode: "never", VXLANMode: "cross-subnet"},
			{CIDR: "10.2.0.0/16", IPIPMode: "always", VXLANMode: "never"},
			{CIDR: "fd00::/64", IPIPMode: "never", VXLANMode: "never", NATOutgoing: true},
		},
		nodes: map[string]*model.Host{
			"h1": {Name: "h1", IPv4: "198.19.0.1/24"},
			"h2": {Name: "h2", IPv4: "198.19.0.2/24", VXLANTunnelAddr: "10.1.9.1", VXLANMAC: "02:00:00:00:00:02"},
			"h3": {Name: "h3", IPv4: "198.19.1.3/24", VXLANTunnelAddr: "10.1.9.3", VXLANMAC: "02:00:00:00:00:03", BGPPort: 1179},
		},
		bgp:       model.DefaultBGPConfig(),
		global:    []model.BGPPeer{{IP: "198.19.0.100", ASNumber: 65000}},
		hostPeers: []model.BGPPeer{{IP: "198.19.0.101", ASNumber: 65001, Host: "h1"}},
		blocks:    []*net.IPNet{cidr("10.0.0.0/26")},
		endpoints: []model.Endpoint{
			{IPv4Nets: []string{"10.0.0.5/32"}},   // in our block
			{IPv4Nets: []string{"10.0.7.9/32"}},   // borrowed from another host's block
			{IPv4Nets: []string{"172.16.0.1/32"}}, // host-local IPAM, no pool: not ours to advertise
		},
	}
}

func TestPeersMeshAndExplicit(t *testing.T) {
	v := testView()
	ps := v.peers()
	want := map[string]string{"198.19.0.2": "mesh", "198.19.1.3": "mesh", "198.19.0.101": "node", "198.19.0.100": "global"}
	if len(ps) != len(want) {
		t.Fatalf("peers %+v", ps)
	}
	for _, p := range ps {
		if want[p.Address] != p.Kind {
			t.Fatalf("peer %+v", p)
		}
		if p.Address == "198.19.1.3" && (p.Port != 1179 || p.ASN != model.DefaultASNumber) {
			t.Fatalf("mesh peer port/AS: %+v", p)
		}
	}
	v.bgp.Mesh = false
	if ps := v.peers(); len(ps) != 2 {
		t.Fatalf("mesh off: %+v", ps)
	}
}

func TestAdvertisedBlocksAndBorrowed(t *testing.T) {
	got := map[string]bool{}
	for _, n := range testView().advertised() {
		got[n.String()] = true
	}
	if len(got) != 2 || !got["10.0.0.0/26"] || !got["10.0.7.9/32"] {
		t.Fatalf("advertised %v", got)
	}
}

func TestRemotesEncapPerPool(t *testing.T) {
	v := testView()
	learned := []bgp.Route{
		{Prefix: cidr("10.0.1.0/26"), NextHop: net.ParseIP("198.19.0.2")},       // never: direct
		{Prefix: cidr("10.1.1.0/26"), NextHop: net.ParseIP("198.19.0.2")},       // cross-subnet, same subnet: direct
		{Prefix: cidr("10.1.2.0/26"), NextHop: net.ParseIP("198.19.1.3")},       // cross-subnet, other subnet: vxlan
		{Prefix: cidr("10.2.1.0/26"), NextHop: net.ParseIP("198.19.0.2")},       // ipip
		{Prefix: cidr("192.168.50.0/24"), NextHop: net.ParseIP("198.19.0.100")}, // a route from a foreign speaker
		{Prefix: cidr("fd00::40/122"), NextHop: net.ParseIP("198.19.0.2")},      // v6 via a v4 next hop: needs a tunnel
	}
	rem, unserved := v.remotes(learned, false)
	enc := map[string]routes.Encap{}
	for _, r := range rem {
		enc[r.Prefix.String()] = r.Encap
	}
	if enc["10.0.1.0/26"] != routes.None || enc["10.1.1.0/26"] != routes.None || enc["10.1.2.0/26"] != routes.VXLAN || enc["192.168.50.0/24"] != routes.None {
		t.Fatalf("encaps %v", enc)
	}
	if _, ok := enc["10.2.1.0/26"]; ok {
		t.Fatal("IPIP route programmed without kernel IPIP")
	}
	if len(unserved) != 2 {
		t.Fatalf("unserved %v", unserved)
	}
	for _, r := range rem {
		if r.Encap == routes.VXLAN && (r.TunnelAddr.String() != "10.1.9.3" || r.VTEPMAC.String() != "02:00:00:00:00:03" || r.Gateway.String() != "198.19.1.3") {
			t.Fatalf("vxlan remote %+v", r)
		}
	}
	rem, _ = v.remotes(learned, true)
	for _, r := range rem {
		if r.Prefix.String() == "10.2.1.0/26" && r.Encap != routes.IPIP {
			t.Fatalf("ipip: %+v", r)
		}
	}
}

func TestNATSets(t *testing.T) {
	all4, nat4, all6, nat6 := testView().natSets()
	if len(all4) != 3 || len(nat4) != 1 || len(all6) != 1 || len(nat6) != 1 {
		t.Fatalf("%v %v %v %v", all4, nat4, all6, nat6)
	}
}

func TestVXLANMACStable(t *testing.T) {
	a, b := vxlanMAC("h1"), vxlanMAC("h1")
	if a.String() != b.String() || a.String() == vxlanMAC("h2").String() || a[0]&0x02 == 0 || a[0]&0x01 != 0 {
		t.Fatalf("%s", a)
	}
}
