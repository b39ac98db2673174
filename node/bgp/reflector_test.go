package bgp

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
)

// birdConf is a BIRD 2 route reflector on 127.0.0.3 for two clients. It
// has no kernel protocol, so it never writes a route anywhere; the device
// protocol only reads the interface list, which the static IGP routes
// (used to resolve the clients' next hops, BIRD's "gateway recursive")
// need for "via lo".
const birdConf = `
router id 127.0.0.3;
protocol device { }
protocol static { ipv4; route 127.0.0.0/8 via "lo"; }
protocol static { ipv6; route fd00:ffff::/64 via "lo"; }
template bgp rrc {
	local 127.0.0.3 port %d as 64512;
	rr client;
	graceful restart on;
	connect retry time 1;
	ipv4 { import all; export all; };
	ipv6 { import all; export all; };
}
protocol bgp a from rrc { neighbor 127.0.0.1 port %d as 64512; }
protocol bgp b from rrc { neighbor 127.0.0.2 port %d as 64512; }
`

// startBIRD runs a BIRD reflector on 127.0.0.3 for clients 127.0.0.1
// and 127.0.0.2 (at portA, portB) and returns its port.
func startBIRD(t *testing.T, portA, portB int32) int32 {
	t.Helper()
	bird := testutil.Tool(t, "bird") // Debian package bird2
	rrPort := freePort(t, "127.0.0.3")
	dir := t.TempDir()
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, birdConf, rrPort, portA, portB), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bird, "-f", "-c", conf, "-s", filepath.Join(dir, "bird.ctl"), "-P", filepath.Join(dir, "bird.pid"))
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start bird: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // only the bird this test started, by pid
		_ = cmd.Wait()
	})
	return rrPort
}

// TestBIRDReflector: A and B peer only with a BIRD route reflector; B
// learns A's prefixes with A's next hops (a reflector does not change
// them), and a withdrawal goes through too.
func TestBIRDReflector(t *testing.T) {
	parallel(t)
	testutil.Tool(t, "bird") // Debian package bird2
	cfgA := baseConfig(t, "127.0.0.1", freePort(t, "127.0.0.1"))
	cfgA.NextHop6 = "fd00:ffff::1"
	a := startNode(t, cfgA)
	b := newNode(t, "127.0.0.2")
	rr := Peer{Address: "127.0.0.3", Port: startBIRD(t, a.port, b.port), Kind: "global"}

	mustAdvertise(t, a, "10.0.1.0/26", "fd00::/122")
	mustSetPeers(t, a, rr)
	mustSetPeers(t, b, rr)
	waitRoutes(t, b, 15*time.Second, want(
		"10.0.1.0/26 via 127.0.0.1 from 127.0.0.3",
		"fd00::/122 via fd00:ffff::1 from 127.0.0.3"))
	// A's own routes come back from the reflector with ORIGINATOR_ID = A
	// and are dropped; A publishes nothing.
	waitRoutes(t, a, 5*time.Second, "")

	mustAdvertise(t, a, "10.0.1.0/26")
	waitRoutes(t, b, 5*time.Second, want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.3"))
}

// TestBIRDCrashRestart: A, a client of a BIRD reflector, is SIGKILLed and
// restarted (Restarting, so its OPEN has the R and F bits BIRD checks). B,
// the other client, never sees A's route go away: BIRD keeps it as stale
// and keeps it when the new session comes up until A's End-of-RIB.
func TestBIRDCrashRestart(t *testing.T) {
	parallel(t)
	testutil.Tool(t, "bird") // Debian package bird2
	portA := freePort(t, "127.0.0.1")
	b := newNode(t, "127.0.0.2")
	rrPort := startBIRD(t, portA, b.port)
	mustSetPeers(t, b, Peer{Address: "127.0.0.3", Port: rrPort})
	spec := func(restarting bool, prefixes string) string {
		return fmt.Sprintf("127.0.0.1 %d 127.0.0.3 %d %v %s", portA, rrPort, restarting, prefixes)
	}
	child := startHelper(t, spec(false, "10.0.1.0/26"))
	fresh := want("10.0.1.0/26 via 127.0.0.1 from 127.0.0.3")
	waitRoutes(t, b, 15*time.Second, fresh)
	n := len(b.rec.all())

	killed := time.Now()
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	time.Sleep(2 * time.Second)
	// The restarted A also has a new block, which shows its new session.
	startHelper(t, spec(true, "10.0.1.0/26 10.0.1.64/26"))
	waitRoutes(t, b, 15*time.Second, want(
		"10.0.1.0/26 via 127.0.0.1 from 127.0.0.3",
		"10.0.1.64/26 via 127.0.0.1 from 127.0.0.3"))
	t.Logf("crash behind BIRD: new session's routes %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	// BIRD keeps A's routes as stale internally without re-announcing
	// them, so B sees 10.0.1.0/26 unchanged all along.
	for i, set := range b.rec.all()[n:] {
		if got := describe(set); !strings.HasPrefix(got, fresh) {
			t.Errorf("set %d published during the crash lacks A's route: %q", i, got)
		}
	}
}
