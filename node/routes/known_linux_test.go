package routes

import (
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestSyncKnown: after a Sync, SyncKnown sends only the difference (one
// request per changed route, none for an unchanged input), follows adds,
// next-hop changes and removals of both families, reports someone else's
// route on a new prefix instead of replacing it, and leaves repairs of
// what others changed to the next Sync.
func TestSyncKnown(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	m := newManager(t, p.a, Options{NodeIP: net.ParseIP("198.19.0.1")})
	nh := p.a.handle(t)
	known := func(local Local, remotes []Remote) uint64 {
		t.Helper()
		before := m.Changes()
		if err := m.SyncKnown(local, remotes); err != nil {
			t.Fatalf("SyncKnown: %v", err)
		}
		return m.Changes() - before
	}
	gw := func(dst string) string {
		t.Helper()
		var s []string
		for _, r := range routeTo(t, nh, dst) {
			s = append(s, r.Gw.String())
		}
		return strings.Join(s, ",")
	}
	local := localBlocks(t, "1")
	remotes := directRemotes(t, true)
	if c := known(local, remotes); c != 4 { // no earlier Sync: a full one
		t.Errorf("first SyncKnown: %d changes, want 4", c)
	}
	if c := known(local, remotes); c != 0 {
		t.Errorf("unchanged input: %d changes", c)
	}

	more := append(append([]Remote{}, remotes...),
		Remote{Prefix: cidr(t, "10.0.3.0/26"), Gateway: net.ParseIP("198.19.0.2")},
		Remote{Prefix: cidr(t, "fd00:3::/122"), Gateway: net.ParseIP("fd19::2")})
	if c := known(local, more); c != 2 {
		t.Errorf("two new remotes: %d changes, want 2", c)
	}
	if g := gw("10.0.3.0/26"); g != "198.19.0.2" {
		t.Errorf("new route 10.0.3.0/26 via %q", g)
	}
	more[2].Gateway = net.ParseIP("198.19.0.3")
	if c := known(local, more); c != 1 {
		t.Errorf("a next hop changed: %d changes, want 1", c)
	}
	if g := gw("10.0.3.0/26"); g != "198.19.0.3" {
		t.Errorf("changed route 10.0.3.0/26 via %q", g)
	}
	if c := known(local, remotes); c != 2 {
		t.Errorf("two remotes gone: %d changes, want 2", c)
	}
	if g := gw("10.0.3.0/26") + gw("fd00:3::/122"); g != "" {
		t.Errorf("removed routes still there: %q", g)
	}

	// Someone else's route on a prefix that becomes a remote: reported,
	// not replaced, as Sync does.
	p.a.ip(t, "route", "add", "10.0.4.0/26", "dev", "lo")
	clash := append(append([]Remote{}, remotes...), Remote{Prefix: cidr(t, "10.0.4.0/26"), Gateway: net.ParseIP("198.19.0.2")})
	if err := m.SyncKnown(local, clash); err == nil || !strings.Contains(err.Error(), "not replacing") {
		t.Errorf("SyncKnown over a foreign route: %v", err)
	}
	if rs := routeTo(t, nh, "10.0.4.0/26"); len(rs) != 1 || rs[0].Protocol == Protocol {
		t.Errorf("foreign route: %+v", rs)
	}
	p.a.ip(t, "route", "del", "10.0.4.0/26", "dev", "lo")

	// A route deleted behind tabby's back: SyncKnown trusts what it
	// installed; the periodic Sync repairs it.
	syncOK(t, m, local, remotes)
	if err := nh.RouteDel(&netlink.Route{Dst: cidr(t, "10.0.2.0/26"), Gw: net.ParseIP("198.19.0.2"), Protocol: Protocol}); err != nil {
		t.Fatal(err)
	}
	if c := known(local, remotes); c != 0 {
		t.Errorf("SyncKnown after a tamper: %d changes", c)
	}
	if c := syncOK(t, m, local, remotes); c != 1 {
		t.Errorf("Sync after a tamper: %d changes, want 1", c)
	}
	if g := gw("10.0.2.0/26"); g != "198.19.0.2" {
		t.Errorf("repaired route via %q", g)
	}
}

// TestSyncKnownVXLAN: a VXLAN remote added and removed by SyncKnown gets
// and loses its route, neighbour and FDB entries, traffic flowing between.
func TestSyncKnownVXLAN(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	mA := newManager(t, p.a, vxlanOptions(t, "1", macA))
	mB := newManager(t, p.b, vxlanOptions(t, "2", macB))
	syncOK(t, mA, localBlocks(t, "1"), nil)
	syncOK(t, mB, localBlocks(t, "2"), vxlanRemotes(t, "1", macA))
	if err := mA.SyncKnown(localBlocks(t, "1"), vxlanRemotes(t, "2", macB)); err != nil {
		t.Fatal(err)
	}
	ping(t, p.a, "10.0.1.5", "10.0.2.5")
	ping(t, p.a, "fd00:1::5", "fd00:2::5")
	nh := p.a.handle(t)
	l, err := nh.LinkByName("vxlan.tabby")
	if err != nil {
		t.Fatal(err)
	}
	neighs, fdbs, err := mA.listVXLANEntries(l.Attrs().Index)
	if err != nil {
		t.Fatal(err)
	}
	if len(neighs) != 2 || len(fdbs) != 1 {
		t.Errorf("after the add: neighbours %v, fdb %v", neighs, fdbs)
	}
	if err := mA.SyncKnown(localBlocks(t, "1"), nil); err != nil {
		t.Fatal(err)
	}
	neighs, fdbs, err = mA.listVXLANEntries(l.Attrs().Index)
	if err != nil {
		t.Fatal(err)
	}
	if len(neighs) != 0 || len(fdbs) != 0 || len(routeTo(t, nh, "10.0.2.0/26")) != 0 {
		t.Errorf("after the removal: neighbours %v, fdb %v, routes %v", neighs, fdbs, routeTo(t, nh, "10.0.2.0/26"))
	}
	noPing(t, p.a, "10.0.1.5", "10.0.2.5")
}
