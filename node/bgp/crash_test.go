package bgp

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary run one Speaker as a separate process
// (TestHelperSpeaker), so a test can kill it with SIGKILL: a real crash,
// where the kernel closes the TCP session and no NOTIFICATION is sent.
const helperEnv = "TABBY_BGP_HELPER"

// TestHelperSpeaker is not a test: it is the body of the helper process.
// Its config comes from $TABBY_BGP_HELPER as
// "addr port peerAddr peerPort restarting prefix...". It prints "ready"
// and runs until killed or until its stdin closes (the parent is gone).
func TestHelperSpeaker(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process body, run by TestCrashRestart")
	}
	f := strings.Fields(spec)
	port, _ := strconv.Atoi(f[1])
	peerPort, _ := strconv.Atoi(f[3])
	cfg := baseConfig(t, f[0], int32(port))
	cfg.Restarting = f[4] == "true"
	s, err := New(cfg)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	var prefixes []*net.IPNet
	for _, p := range f[5:] {
		prefixes = append(prefixes, cidr(t, p))
	}
	if err := s.Advertise(prefixes); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	peer := Peer{Address: f[2], Port: int32(peerPort), Passive: MeshPassive(f[0], f[2])}
	if err := s.SetPeers([]Peer{peer}); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// startHelper runs a Speaker in a child process and waits for "ready".
func startHelper(t *testing.T, spec string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSpeaker$")
	cmd.Env = append(os.Environ(), helperEnv+"="+spec)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper speaker: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill() // only this child, by its pid
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("helper speaker: %q %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return cmd
}

// TestCrashRestart: the higher-addressed (passive) side is SIGKILLed; the
// observer keeps its routes as stale, then the restarted process takes
// over the session and the routes are fresh again, with no set in between
// that lacked them.
func TestCrashRestart(t *testing.T) {
	parallel(t)
	skipUnderRace(t)
	obs := newNode(t, "127.0.0.1")
	addr, port := "127.0.0.2", freePort(t, "127.0.0.2")
	spec := func(restarting bool) string {
		return fmt.Sprintf("%s %d %s %d %v 10.0.2.0/26 fd00:2::/122", addr, port, obs.addr, obs.port, restarting)
	}
	crashed := node{addr: addr, port: port}
	mustSetPeers(t, obs, meshPeer(obs, crashed))

	child := startHelper(t, spec(false))
	fresh := want("10.0.2.0/26 via 127.0.0.2 from 127.0.0.2", "fd00:2::/122 via 127.0.0.2 from 127.0.0.2")
	stale := want("10.0.2.0/26 via 127.0.0.2 from 127.0.0.2 stale", "fd00:2::/122 via 127.0.0.2 from 127.0.0.2 stale")
	waitRoutes(t, obs, 15*time.Second, fresh)
	n := len(obs.rec.all())

	killed := time.Now()
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	waitRoutes(t, obs, 5*time.Second, stale)
	time.Sleep(time.Second)

	startHelper(t, spec(true))
	waitRoutes(t, obs, 20*time.Second, fresh)
	t.Logf("crash: routes fresh again %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	// Each family turns fresh at its own End-of-RIB (RFC 4724 marks the
	// end per address family), so a set may hold one family's routes fresh
	// and the other's still stale; none may lack a route.
	for i, set := range obs.rec.all()[n:] {
		if got := describe(set); describe(withoutStale(set)) != fresh {
			t.Errorf("set %d published during the crash lost the routes: %s", i, got)
		}
	}
}

func withoutStale(set []Route) []Route {
	out := append([]Route(nil), set...)
	for i := range out {
		out[i].Stale = false
	}
	return out
}
