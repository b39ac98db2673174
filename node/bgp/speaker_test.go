package bgp

import (
	"net"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{RouterID: "198.19.0.1"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.ASN != DefaultASN || c.ListenPort != 179 || c.NextHop != "198.19.0.1" ||
		c.NextHop6 != "::ffff:198.19.0.1" || c.GracefulRestartTime != 120*time.Second {
		t.Errorf("defaults: %+v", c)
	}
	for _, bad := range []Config{
		{},
		{RouterID: "fd00::1"},
		{RouterID: "198.19.0.1", NextHop6: "198.19.0.1"},
		{RouterID: "198.19.0.1", GracefulRestartTime: 2 * time.Hour},
		{RouterID: "198.19.0.1", ListenAddrs: []string{"nope"}},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestCanonical(t *testing.T) {
	for in, out := range map[string]string{
		"10.0.1.5/26":  "10.0.1.0/26",
		"fd00::17/122": "fd00::/122",
	} {
		_, n, _ := net.ParseCIDR(in)
		n.IP, _, _ = net.ParseCIDR(in) // keep host bits, as a careless caller might
		if got := canonical(n).String(); got != out {
			t.Errorf("canonical(%s) = %s, want %s", in, got, out)
		}
	}
	mapped := &net.IPNet{IP: net.ParseIP("10.0.1.0"), Mask: net.CIDRMask(122, 128)}
	if got := canonical(mapped); got == nil || got.String() != "10.0.1.0/26" || len(got.IP) != 4 {
		t.Errorf("canonical(16-byte IPv4 with /122 mask) = %v", got)
	}
}

// TestAdvertiseWithdraw: A originates an IPv4 and an IPv6 block, B learns
// both with A's next hops, then A withdraws them one at a time.
func TestAdvertiseWithdraw(t *testing.T) {
	parallel(t)
	cfgA := baseConfig(t, "127.0.0.1", freePort(t, "127.0.0.1"))
	cfgA.NextHop6 = "fd00:ffff::1"
	a := startNode(t, cfgA)
	b := newNode(t, "127.0.0.2")

	start := time.Now()
	if err := a.Advertise([]*net.IPNet{cidr(t, "10.0.1.0/26"), cidr(t, "fd00::/122")}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPeers([]Peer{b.peer("mesh")}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers([]Peer{a.peer("mesh")}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, b, 10*time.Second, want(
		"10.0.1.0/26 via 127.0.0.1 from 127.0.0.1",
		"fd00::/122 via fd00:ffff::1 from 127.0.0.1"))
	t.Logf("routes learned %v after start", time.Since(start).Round(time.Millisecond))

	// A never publishes its own prefixes; B has nothing to give it.
	waitRoutes(t, a, 5*time.Second, "")

	ps, ok := peerState(b.Speaker, "127.0.0.1")
	if !ok || !ps.Established() || ps.State != "Established" || ps.Received != 2 || ps.Kind != "mesh" || ps.Since.IsZero() {
		t.Errorf("B's view of A: %+v", ps)
	}

	if err := a.Advertise([]*net.IPNet{cidr(t, "10.0.1.0/26")}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, b, 5*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1"))
	eventually(t, 5*time.Second, "received count", func() (bool, string) {
		ps, _ := peerState(b.Speaker, "127.0.0.1")
		return ps.Received == 1, ps.State
	})

	if err := a.Advertise(nil); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, b, 5*time.Second, "")
}

// TestMappedNextHop6: without NextHop6 an IPv6 prefix carries the
// IPv4-mapped next hop, which the receiver reports as the IPv4 address.
func TestMappedNextHop6(t *testing.T) {
	parallel(t)
	a := newNode(t, "127.0.0.1")
	b := newNode(t, "127.0.0.2")
	if err := a.Advertise([]*net.IPNet{cidr(t, "fd00:1::/122")}); err != nil {
		t.Fatal(err)
	}
	mustSetPeers(t, a, b.peer("mesh"))
	mustSetPeers(t, b, a.peer("mesh"))
	waitRoutes(t, b, 10*time.Second, want("fd00:1::/122 via 127.0.0.1 from 127.0.0.1"))
	set, _ := b.rec.latest()
	if len(set[0].NextHop) != net.IPv4len {
		t.Errorf("next hop %v is not in 4-byte form", set[0].NextHop)
	}
}

// TestSetPeersRemovesPeer: B hears A and C; dropping C from B's peers
// removes C's routes and only them; a Kind change alone keeps the session.
func TestSetPeersRemovesPeer(t *testing.T) {
	parallel(t)
	a := newNode(t, "127.0.0.1")
	b := newNode(t, "127.0.0.2")
	c := newNode(t, "127.0.0.3")
	mustAdvertise(t, a, "10.0.1.0/26")
	mustAdvertise(t, c, "10.0.3.0/26")
	mustSetPeers(t, a, b.peer("mesh"), c.peer("mesh"))
	mustSetPeers(t, c, a.peer("mesh"), b.peer("mesh"))
	mustSetPeers(t, b, a.peer("mesh"), c.peer("global"), Peer{Address: "127.0.0.2", Port: 1}) // itself: skipped
	waitRoutes(t, b, 10*time.Second, want(
		"10.0.1.0/26 via 127.0.0.1 from 127.0.0.1",
		"10.0.3.0/26 via 127.0.0.3 from 127.0.0.3"))
	if got := len(b.Peers()); got != 2 {
		t.Errorf("B has %d peers, want 2 (itself skipped)", got)
	}

	before, _ := peerState(b.Speaker, "127.0.0.1")
	mustSetPeers(t, b, a.peer("node"))
	waitRoutes(t, b, 5*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1"))
	ps := b.Peers()
	if len(ps) != 1 || ps[0].Kind != "node" || !ps[0].Established() || !ps[0].Since.Equal(before.Since) {
		t.Errorf("after SetPeers([A as node]): %+v (before %+v)", ps, before)
	}

	// A changed ASN needs a new session: eBGP now, and A still
	// expects AS 64512, so the session cannot come up and A's route goes.
	mustSetPeers(t, b, Peer{Address: a.addr, Port: a.port, ASN: 65000})
	waitRoutes(t, b, 5*time.Second, "")
}

// TestInitialSync: the first route set waits for every peer's End-of-RIB,
// and is published at once (empty) when there are no peers.
func TestInitialSync(t *testing.T) {
	parallel(t)
	alone := newNode(t, "127.0.0.3")
	mustSetPeers(t, alone)
	waitRoutes(t, alone, 2*time.Second, "")

	a := newNode(t, "127.0.0.1")
	cfgB := baseConfig(t, "127.0.0.2", freePort(t, "127.0.0.2"))
	cfgB.InitialSyncTimeout = time.Hour
	b := startNode(t, cfgB)
	mustAdvertise(t, a, "10.0.1.0/26")
	mustSetPeers(t, a, b.peer("mesh"))
	// 127.0.0.4 has no speaker: its session never comes up.
	dead := Peer{Address: "127.0.0.4", Port: freePort(t, "127.0.0.4")}
	mustSetPeers(t, b, a.peer("mesh"), dead)
	waitEstablished(t, b.Speaker, a.addr, 10*time.Second)
	time.Sleep(500 * time.Millisecond) // give a wrong early publish time to show
	if set, ok := b.rec.latest(); ok {
		t.Fatalf("published before the initial sync: %s", describe(set))
	}
	mustSetPeers(t, b, a.peer("mesh"))
	waitRoutes(t, b, 5*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1"))
	if n := len(b.rec.all()); n != 1 {
		t.Errorf("%d sets published, want exactly 1", n)
	}
}

// TestStopDropsRoutes: a plain Stop hard-resets the sessions, so peers
// drop our routes at once instead of keeping them for the restart time.
func TestStopDropsRoutes(t *testing.T) {
	parallel(t)
	a := newNode(t, "127.0.0.1")
	b := newNode(t, "127.0.0.2")
	mustAdvertise(t, a, "10.0.1.0/26")
	mustSetPeers(t, a, b.peer("mesh"))
	mustSetPeers(t, b, a.peer("mesh"))
	waitRoutes(t, b, 10*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1"))
	start := time.Now()
	a.Stop()
	waitRoutes(t, b, 3*time.Second, "")
	t.Logf("routes dropped %v after Stop", time.Since(start).Round(time.Millisecond))
	if err := a.SetPeers(nil); err != ErrStopped {
		t.Errorf("SetPeers after Stop: %v, want ErrStopped", err)
	}
	if _, open := <-a.Routes(); open {
		t.Error("Routes channel still open after Stop")
	}
}

func mustSetPeers(t *testing.T, n node, peers ...Peer) {
	t.Helper()
	if err := n.SetPeers(peers); err != nil {
		t.Fatalf("%s SetPeers: %v", n.addr, err)
	}
}

func mustAdvertise(t *testing.T, n node, prefixes ...string) {
	t.Helper()
	var ps []*net.IPNet
	for _, p := range prefixes {
		ps = append(ps, cidr(t, p))
	}
	if err := n.Advertise(ps); err != nil {
		t.Fatalf("%s Advertise: %v", n.addr, err)
	}
}
