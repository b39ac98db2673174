package bgp

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Test speakers live on 127.0.0.x, which every root namespace has on lo:
// the only traffic is loopback, allowed by the safety rules, and nothing
// in the kernel changes.

// skipUnderRace skips the graceful-restart tests under -race. GoBGP
// v3.37.0 itself races there: AdjRib.StaleAll marks paths stale on its
// Serve goroutine while ListPath converts the same paths (IsStale, and the
// source PeerInfo that a reconnecting FSM rewrites) on the caller's
// goroutine (osrg/gobgp#2705; fixed upstream by #3658, "make the stale
// flag atomic", and an atomic peerInfo). Nothing in tabby can order those
// accesses; the rest of the package is race-clean.
func skipUnderRace(t *testing.T) {
	if raceDetector {
		t.Skip("GoBGP v3.37.0 has known data races in graceful restart (osrg/gobgp#2705)")
	}
}

// parallel runs the test in parallel with the others, except under -race:
// GoBGP's StartBgp writes package globals (table.SelectionOptions and
// table.UseMultiplePaths), so two servers starting at once in one process
// race. The daemon has one Speaker per process, so only tests see it.
func parallel(t *testing.T) {
	if !raceDetector {
		t.Parallel()
	}
}

// freePort returns a TCP port that is free on addr right now.
func freePort(t *testing.T, addr string) int32 {
	t.Helper()
	l, err := net.Listen("tcp4", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("find a free port on %s: %v", addr, err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("TABBY_BGP_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testWriter sends log lines to t.Log while the test runs and drops them
// after (GoBGP goroutines may log late).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	defer func() { _ = recover() }() // t.Log after the test ended panics
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// node is a test speaker with the address its peers use.
type node struct {
	*Speaker
	addr string
	port int32
	rec  *recorder
}

func (n node) peer(kind string) Peer {
	return Peer{Address: n.addr, Port: n.port, Kind: kind}
}

// meshPeer is remote as local's mesh peer, passive by MeshPassive.
func meshPeer(local, remote node) Peer {
	p := remote.peer("mesh")
	p.Passive = MeshPassive(local.addr, remote.addr)
	return p
}

func baseConfig(t *testing.T, addr string, port int32) Config {
	return Config{
		RouterID:            addr,
		ListenAddrs:         []string{addr},
		ListenPort:          port,
		GracefulRestartTime: 30 * time.Second,
		ConnectRetry:        time.Second,
		Coalesce:            20 * time.Millisecond,
		InitialSyncTimeout:  5 * time.Second,
		Logger:              testLogger(t),
	}
}

// startNode starts a speaker on addr, stopped at test end, with a
// recorder draining its Routes channel.
func startNode(t *testing.T, cfg Config) node {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.RouterID, err)
	}
	t.Cleanup(s.Stop)
	return node{Speaker: s, addr: cfg.RouterID, port: cfg.ListenPort, rec: record(s)}
}

func newNode(t *testing.T, addr string) node {
	t.Helper()
	return startNode(t, baseConfig(t, addr, freePort(t, addr)))
}

// recorder keeps every route set a Speaker publishes.
type recorder struct {
	mu   sync.Mutex
	sets [][]Route
	done chan struct{}
}

func record(s *Speaker) *recorder {
	r := &recorder{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for set := range s.Routes() {
			r.mu.Lock()
			r.sets = append(r.sets, set)
			r.mu.Unlock()
		}
	}()
	return r
}

// latest returns the last published set and whether there was one.
func (r *recorder) latest() ([]Route, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return nil, false
	}
	return r.sets[len(r.sets)-1], true
}

func (r *recorder) all() [][]Route {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]Route(nil), r.sets...)
}

// describe renders a route set as "prefix via nexthop" lines, sorted as
// published, for comparisons and messages.
func describe(set []Route) string {
	var b strings.Builder
	for _, r := range set {
		stale := ""
		if r.Stale {
			stale = " stale"
		}
		fmt.Fprintf(&b, "%s via %s from %s%s; ", r.Prefix, r.NextHop, r.Peer, stale)
	}
	return b.String()
}

// want renders the expected set the way describe does.
func want(lines ...string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l + "; ")
	}
	return b.String()
}

// eventually polls cond every 20 ms until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %v; last: %s", what, within, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRoutes waits until n's latest published set renders as exp.
func waitRoutes(t *testing.T, n node, within time.Duration, exp string) {
	t.Helper()
	eventually(t, within, n.addr+" routes", func() (bool, string) {
		set, ok := n.rec.latest()
		if !ok {
			return false, "(nothing published)"
		}
		got := describe(set)
		return got == exp, got
	})
}

func peerState(s *Speaker, addr string) (PeerStatus, bool) {
	for _, p := range s.Peers() {
		if p.Address == addr {
			return p, true
		}
	}
	return PeerStatus{}, false
}

func waitEstablished(t *testing.T, s *Speaker, addr string, within time.Duration) {
	t.Helper()
	eventually(t, within, "session to "+addr, func() (bool, string) {
		p, ok := peerState(s, addr)
		return ok && p.Established(), fmt.Sprintf("%+v", p)
	})
}

func cidr(t *testing.T, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
