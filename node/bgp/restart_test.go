package bgp

import (
	"strings"
	"testing"
	"time"
)

// TestGracefulRestart: A stops for a restart; B keeps A's routes, marked
// stale, and never publishes a set without them; A comes back (Restarting)
// on the same address and port and the routes are fresh again.
func TestGracefulRestart(t *testing.T) {
	parallel(t)
	skipUnderRace(t)
	cfgA := baseConfig(t, "127.0.0.1", freePort(t, "127.0.0.1"))
	a := startNode(t, cfgA)
	b := newNode(t, "127.0.0.2")
	mustAdvertise(t, a, "10.0.1.0/26", "fd00::/122")
	mustSetPeers(t, a, meshPeer(a, b))
	mustSetPeers(t, b, meshPeer(b, a))
	fresh := want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1", "fd00::/122 via 127.0.0.1 from 127.0.0.1")
	stale := want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1 stale", "fd00::/122 via 127.0.0.1 from 127.0.0.1 stale")
	waitRoutes(t, b, 10*time.Second, fresh)
	nBefore := len(b.rec.all())

	stopped := time.Now()
	a.StopForRestart()
	waitRoutes(t, b, 3*time.Second, stale)
	eventually(t, 3*time.Second, "B sees A down", func() (bool, string) {
		p, _ := peerState(b.Speaker, a.addr)
		return !p.Established(), p.State
	})
	time.Sleep(time.Second) // the routes must survive a while, not just the first moment

	cfgA.Restarting = true
	a2 := startNode(t, cfgA)
	mustAdvertise(t, a2, "10.0.1.0/26", "fd00::/122")
	mustSetPeers(t, a2, meshPeer(a2, b))
	waitRoutes(t, b, 15*time.Second, fresh)
	t.Logf("restart: routes fresh again %v after StopForRestart", time.Since(stopped).Round(time.Millisecond))

	for i, set := range b.rec.all()[nBefore:] { // per-family End-of-RIB: see TestCrashRestart
		if got := describe(set); describe(withoutStale(set)) != fresh {
			t.Errorf("set %d published during the restart lost A's routes: %s", i, got)
		}
	}
	// The restarted A learned nothing from B, and publishes that.
	waitRoutes(t, a2, 5*time.Second, "")
}

// TestGracefulRestartExpires: when A does not come back within its restart
// time, B drops the stale routes then, and not before.
func TestGracefulRestartExpires(t *testing.T) {
	parallel(t)
	skipUnderRace(t)
	cfgA := baseConfig(t, "127.0.0.1", freePort(t, "127.0.0.1"))
	cfgA.GracefulRestartTime = 2 * time.Second
	a := startNode(t, cfgA)
	b := newNode(t, "127.0.0.2")
	mustAdvertise(t, a, "10.0.1.0/26")
	mustSetPeers(t, a, meshPeer(a, b))
	mustSetPeers(t, b, meshPeer(b, a))
	waitRoutes(t, b, 10*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1"))

	stopped := time.Now()
	a.StopForRestart()
	waitRoutes(t, b, 3*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.1 stale"))
	waitRoutes(t, b, 6*time.Second, "")
	gone := time.Since(stopped)
	t.Logf("stale routes dropped %v after StopForRestart (restart time 2s)", gone.Round(time.Millisecond))
	if gone < 1500*time.Millisecond {
		t.Errorf("stale routes dropped after %v, before the 2 s restart time", gone)
	}
	for _, set := range b.rec.all() {
		if strings.Contains(describe(set), "10.0.1.0/26") {
			continue
		}
		if len(set) != 0 {
			t.Errorf("unexpected set %s", describe(set))
		}
	}
}
