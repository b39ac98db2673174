package bgp

import (
	"net"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestChangedSet: what GoBGP's events leave for the next listing. A best
// path change names its prefix; an UPDATE that left the best path alone
// (an event with no path) asks for nothing; a session event, an
// End-of-RIB or too many prefixes ask for the whole RIB.
func TestChangedSet(t *testing.T) {
	best := func(prefixes ...string) *api.WatchEventResponse {
		var paths []*api.Path
		for _, p := range prefixes {
			ip, n, err := net.ParseCIDR(p)
			if err != nil {
				t.Fatal(err)
			}
			ones, _ := n.Mask.Size()
			nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: ip.String(), PrefixLen: uint32(ones)})
			if err != nil {
				t.Fatal(err)
			}
			paths = append(paths, &api.Path{Nlri: nlri})
		}
		return &api.WatchEventResponse{Event: &api.WatchEventResponse_Table{Table: &api.WatchEventResponse_TableEvent{Paths: paths}}}
	}
	var c changedSet
	if c.note(best()) {
		t.Error("an UPDATE that changed no best path woke the speaker")
	}
	if all, p := c.take(); all || len(p) != 0 {
		t.Errorf("after an empty event: all %v, prefixes %v", all, p)
	}
	if !c.note(best("10.1.3.0/26", "fd00:1::/122")) || !c.note(best("10.1.4.0/26")) {
		t.Error("a best path change did not wake the speaker")
	}
	all, p := c.take()
	if all || len(p) != 3 || p["10.1.3.0/26"] || !p["fd00:1::/122"] || p["10.1.4.0/26"] {
		t.Errorf("after three changes: all %v, prefixes %v", all, p)
	}
	if all, p := c.take(); all || p != nil {
		t.Errorf("take did not empty the set: all %v, prefixes %v", all, p)
	}

	eor := &api.WatchEventResponse{Event: &api.WatchEventResponse_Table{Table: &api.WatchEventResponse_TableEvent{
		Paths: []*api.Path{{Family: familyV4}}}}}
	peer := &api.WatchEventResponse{Event: &api.WatchEventResponse_Peer{Peer: &api.WatchEventResponse_PeerEvent{}}}
	var many []string
	for i := range maxChanged + 1 {
		many = append(many, net.IPv4(10, 2, byte(i), 0).String()+"/26")
	}
	for name, ev := range map[string]*api.WatchEventResponse{"End-of-RIB": eor, "session": peer, "many": best(many...)} {
		c.note(best("10.1.3.0/26"))
		if !c.note(ev) {
			t.Errorf("%s: did not wake the speaker", name)
		}
		if all, p := c.take(); !all || p != nil {
			t.Errorf("%s: all %v, prefixes %v", name, all, p)
		}
	}
}

// TestMerge: the listed routes of the changed prefixes replace theirs in
// the published set (gone when the listing has none), the rest stay, in
// order, in a new slice.
func TestMerge(t *testing.T) {
	r := func(p, nh string) Route {
		_, n, _ := net.ParseCIDR(p)
		return Route{Prefix: n, NextHop: net.ParseIP(nh)}
	}
	published := []Route{r("10.1.1.0/26", "198.19.0.1"), r("10.1.2.0/26", "198.19.0.2"), r("10.1.3.0/26", "198.19.0.3")}
	fresh := []Route{r("10.1.0.0/26", "198.19.0.9"), r("10.1.2.0/26", "198.19.0.7")}
	changed := map[string]bool{"10.1.0.0/26": false, "10.1.2.0/26": false, "10.1.3.0/26": false}
	got := merge(published, fresh, changed)
	var s []string
	for _, x := range got {
		s = append(s, x.Prefix.String()+" via "+x.NextHop.String())
	}
	if w := "10.1.0.0/26 via 198.19.0.9, 10.1.1.0/26 via 198.19.0.1, 10.1.2.0/26 via 198.19.0.7"; strings.Join(s, ", ") != w {
		t.Errorf("merged: %s\nwant %s", strings.Join(s, ", "), w)
	}
	if published[1].NextHop.String() != "198.19.0.2" || len(published) != 3 {
		t.Error("merge changed the published slice")
	}
}

// TestLookupAfterFirstSet: once the first set is out, changes are looked
// up by prefix; what B publishes still follows A's adds and withdrawals of
// both families exactly, among routes that stay.
func TestLookupAfterFirstSet(t *testing.T) {
	parallel(t)
	a := newNode(t, "127.0.0.1")
	b := newNode(t, "127.0.0.2")
	mustAdvertise(t, a, "10.0.1.0/26", "10.0.2.0/26")
	mustSetPeers(t, a, b.peer("mesh"))
	mustSetPeers(t, b, a.peer("mesh"))
	waitRoutes(t, b, 10*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1", "10.0.2.0/26 via 127.0.0.1 from 127.0.0.1"))
	mustAdvertise(t, a, "10.0.1.0/26", "10.0.3.0/26", "fd00:3::/122")
	waitRoutes(t, b, 5*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1", "10.0.3.0/26 via 127.0.0.1 from 127.0.0.1",
		"fd00:3::/122 via 127.0.0.1 from 127.0.0.1"))
	mustAdvertise(t, a, "10.0.1.0/26")
	waitRoutes(t, b, 5*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1"))
}
