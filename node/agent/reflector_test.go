package agent

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/node/bgp"
	"github.com/tabby-net/tabby/pkg/model"
)

// rrView is six hosts, r1 and r2 reflectors (r2 with its own BGP port),
// one global and one per-host peer, seen from host me.
func rrView(me string, mesh bool) *view {
	v := &view{me: me, nodes: map[string]*model.Host{}, bgp: model.BGPConfig{ASNumber: model.DefaultASNumber, Mesh: mesh},
		global:    []model.BGPPeer{{IP: "198.19.0.100", ASNumber: 65000}},
		hostPeers: []model.BGPPeer{{IP: "198.19.0.101", ASNumber: 65001, Host: me}},
	}
	for i := 1; i <= 4; i++ {
		n := fmt.Sprintf("h%d", i)
		v.nodes[n] = &model.Host{Name: n, IPv4: fmt.Sprintf("198.19.0.%d/24", i)}
	}
	v.nodes["r1"] = &model.Host{Name: "r1", IPv4: "198.19.0.11/24", RouteReflectorClusterID: "244.0.0.1"}
	v.nodes["r2"] = &model.Host{Name: "r2", IPv4: "198.19.0.12/24", RouteReflectorClusterID: "244.0.0.2", BGPPort: 1179}
	v.self = *v.nodes[me]
	return v
}

// render is "address kind[ client CLUSTER][ passive]" per peer, sorted.
func render(ps []bgp.Peer) string {
	var out []string
	for _, p := range ps {
		s := p.Address + " " + p.Kind
		if p.ReflectorClient {
			s += " client " + p.ClusterID
		}
		if p.OwnRoutesOnly {
			s += " own-only"
		}
		if p.Port != 0 {
			s += fmt.Sprintf(" port %d", p.Port)
		}
		if p.Passive {
			s += " passive"
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func TestPeersReflectors(t *testing.T) {
	explicit := []string{"198.19.0.100 global", "198.19.0.101 node"}
	for _, c := range []struct {
		name, me string
		mesh     bool
		want     []string
	}{
		// The mesh on: every pair, and a reflector already reflects to
		// the ordinary hosts (so turning the mesh off drops no route).
		{"mesh on, client", "h1", true, []string{"198.19.0.11 mesh", "198.19.0.12 mesh port 1179", "198.19.0.2 mesh",
			"198.19.0.3 mesh", "198.19.0.4 mesh"}},
		{"mesh on, reflector", "r1", true, []string{"198.19.0.1 mesh client 244.0.0.1 passive", "198.19.0.12 mesh own-only port 1179",
			"198.19.0.2 mesh client 244.0.0.1 passive", "198.19.0.3 mesh client 244.0.0.1 passive", "198.19.0.4 mesh client 244.0.0.1 passive"}},
		// The mesh off: a client has exactly one session per reflector.
		{"mesh off, client", "h3", false, []string{"198.19.0.11 reflector", "198.19.0.12 reflector port 1179"}},
		// A reflector: the other reflector as a non-client, every other
		// host as a client with its cluster ID.
		{"mesh off, reflector", "r2", false, []string{"198.19.0.1 rr-client client 244.0.0.2 passive",
			"198.19.0.11 reflector own-only passive", "198.19.0.2 rr-client client 244.0.0.2 passive",
			"198.19.0.3 rr-client client 244.0.0.2 passive", "198.19.0.4 rr-client client 244.0.0.2 passive"}},
	} {
		got := render(rrView(c.me, c.mesh).peers())
		if want := strings.Join(append(c.want, explicit...), "; "); got != sortJoin(want) {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, sortJoin(want))
		}
	}

	// The mesh off and no reflector: configured peers only.
	v := rrView("h1", false)
	delete(v.nodes, "r1")
	delete(v.nodes, "r2")
	if got := render(v.peers()); got != sortJoin(strings.Join(explicit, "; ")) {
		t.Errorf("mesh off, no reflector: %s", got)
	}

	// A configured peer at a reflector's address does not add a second
	// session to it.
	v = rrView("h1", false)
	v.global = append(v.global, model.BGPPeer{IP: "198.19.0.11", ASNumber: model.DefaultASNumber})
	if got := render(v.peers()); strings.Count(got, "198.19.0.11 ") != 1 {
		t.Errorf("duplicate session to a reflector: %s", got)
	}

	// A host in an AS of its own gets no reflector sessions, either way.
	v = rrView("h2", false)
	odd := *v.nodes["h4"]
	odd.ASNumber = 65099
	v.nodes["h4"] = &odd
	if got := render(v.peers()); strings.Contains(got, "198.19.0.4 ") {
		t.Errorf("client with another AS: %s", got)
	}
	v.me, v.self = "r1", *v.nodes["r1"]
	if got := render(v.peers()); strings.Contains(got, "198.19.0.4 ") {
		t.Errorf("reflector peers a host of another AS: %s", got)
	}
	v.me, v.self = "h4", *v.nodes["h4"]
	if got := render(v.peers()); got != sortJoin(strings.Join(explicit, "; ")) {
		t.Errorf("host of another AS: %s", got)
	}

	// A hand-written cluster ID GoBGP would refuse: the reflector still
	// serves its clients (with its router ID as the cluster ID).
	v = rrView("r1", false)
	bad := *v.nodes["r1"]
	bad.RouteReflectorClusterID = "cluster-one"
	v.nodes["r1"], v.self = &bad, bad
	for _, p := range v.peers() {
		if p.Kind == "rr-client" && p.ClusterID != "" {
			t.Errorf("invalid cluster ID passed on: %+v", p)
		}
	}
}

func sortJoin(s string) string {
	parts := strings.Split(s, "; ")
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}
