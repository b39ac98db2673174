package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/node/internal/nstest"
	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/node/policy"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/testutil"
)

// syncBuffer is a log sink the status server's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testAgent is an agent with what the packet filter and nat-outgoing need
// and no etcd: backends detected with the current PATH.
func testAgent(t *testing.T) (*Agent, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	a := &Agent{cfg: Config{StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(logs, nil)), ready: newReadiness(),
		sets: new(iptables.Sets)}
	if err := a.detectIPTables(); err != nil {
		t.Fatal(err)
	}
	return a, logs
}

// ip6tablesPath makes a PATH with the host's iptables (IPv4) and ipset
// binaries and, for IPv6, either nothing (broken false) or binaries that
// fail the way ip6tables does on a kernel without IPv6 tables.
func ip6tablesPath(t *testing.T, broken bool) string {
	t.Helper()
	dir := t.TempDir()
	for _, sbin := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		ents, _ := os.ReadDir(sbin)
		for _, e := range ents {
			n := e.Name()
			if !strings.HasPrefix(n, "iptables") && !strings.HasPrefix(n, "xtables") && !strings.HasPrefix(n, "ipset") {
				continue
			}
			if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
				continue
			}
			if err := os.Symlink(filepath.Join(sbin, n), filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "iptables-restore")); err != nil {
		testutil.Missing(t, "iptables not found (make deps installs it)")
	}
	if broken {
		fail := "#!/bin/sh\necho \"ip6tables v1.8.9: can't initialize ip6tables table 'filter': Address family not supported by protocol\" >&2\nexit 3\n"
		for _, n := range []string{"ip6tables", "ip6tables-save", "ip6tables-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore",
			"ip6tables-nft-save", "ip6tables-nft-restore"} {
			if err := os.WriteFile(filepath.Join(dir, n), []byte(fail), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func policyFixture() ([]model.Endpoint, policy.Output) {
	eps := []model.Endpoint{
		{HostInterface: "tby0000000004", ContainerID: "c4", IPv4Nets: []string{"10.0.0.4/32"}, Profiles: []string{"P"}},
		{HostInterface: "tby0000000006", ContainerID: "c6", IPv4Nets: []string{"10.0.0.6/32"}, IPv6Nets: []string{"fd00::6/128"}, Profiles: []string{"P"}},
	}
	out := policy.Render(policy.Input{Endpoints: eps, Profiles: map[string]model.Profile{"P": model.DefaultProfile("P")},
		Tags: map[string][]string{"P": {"10.0.0.4/32", "10.0.0.6/32", "fd00::6/128"}}})
	return eps, out
}

// With ip6tables unusable, an endpoint with an IPv6 address is never
// reported ready, and the wait the CNI plugin does ends at once with an
// error that names the cause; IPv4-only endpoints are ready as before. The
// status says so, and it is logged once, not at every pass.
func TestIPv6PolicyFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		broken bool
		cause  string
	}{
		{"ip6tables missing", false, "ip6tables unusable on this host: no ip6tables-restore"},
		{"ip6tables failing", true, "Address family not supported by protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", ip6tablesPath(t, tc.broken))
			nstest.Run(t, func() {
				a, logs := testAgent(t)
				eps, out := policyFixture()
				for _, full := range []bool{true, false, true} {
					applied, refused, err := a.applyPolicy(out, eps, a.pass(full))
					if err != nil {
						t.Fatalf("IPv4 must still be served: %v", err)
					}
					a.ready.set(applied, refused)
				}
				stop, err := a.serveStatus()
				if err != nil {
					t.Fatal(err)
				}
				defer stop()
				ctx := context.Background()
				if err := nodestatus.WaitReady(ctx, a.cfg.StateDir, "tby0000000004", "c4", 5*time.Second); err != nil {
					t.Fatalf("IPv4-only endpoint: %v", err)
				}
				start := time.Now()
				err = nodestatus.WaitReady(ctx, a.cfg.StateDir, "tby0000000006", "c6", 5*time.Second)
				if err == nil {
					t.Fatal("the dual-stack endpoint was reported ready without IPv6 rules")
				}
				for _, want := range []string{tc.cause, "IPv6 endpoint rules cannot be enforced", "tby0000000006"} {
					if !strings.Contains(err.Error(), want) {
						t.Fatalf("the plugin's error %q does not say %q", err, want)
					}
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("the wait ran into its timeout (%v) instead of ending with the cause", d)
				}
				st, err := nodestatus.Get(ctx, a.cfg.StateDir)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(st.IPv6PolicyError, tc.cause) {
					t.Fatalf("status IPv6PolicyError = %q", st.IPv6PolicyError)
				}
				if n := strings.Count(logs.String(), "IPv6 packet filter not in force"); n != 1 {
					t.Fatalf("logged %d times, want once:\n%s", n, logs)
				}
			})
		})
	}
}

// The control: with a working ip6tables the same endpoints are all ready,
// and a status that said IPv6 was broken is cleared.
func TestIPv6PolicyInForce(t *testing.T) {
	nstest.Run(t, func() {
		a, logs := testAgent(t)
		if a.ipt6 == nil {
			testutil.Missing(t, "no usable ip6tables: %v (make deps installs it)", a.ip6tablesErr)
		}
		a.status.IPv6PolicyError = "from an earlier pass"
		eps, out := policyFixture()
		applied, refused, err := a.applyPolicy(out, eps, a.pass(false))
		if err != nil {
			t.Fatal(err)
		}
		if applied["tby0000000006"] != "c6" || applied["tby0000000004"] != "c4" || len(refused) != 0 {
			t.Fatalf("applied %v refused %v", applied, refused)
		}
		if a.status.IPv6PolicyError != "" || !strings.Contains(logs.String(), "IPv6 packet filter in force again") {
			t.Fatalf("status %q, logs:\n%s", a.status.IPv6PolicyError, logs)
		}
	})
}

// nat-outgoing follows the event/periodic split: an event-driven pass
// trusts what tabby last applied and reads nothing back (so it does not
// see tampering), the periodic pass reads the kernel and repairs it.
// IPv6 nat-outgoing that cannot be put in force shows in the status.
func TestSyncNATEventAndPeriodic(t *testing.T) {
	nstest.Run(t, func() {
		a, _ := testAgent(t)
		ipt := "iptables"
		if a.ipt4.Mode != "default" {
			ipt += "-" + a.ipt4.Mode
		}
		v := &view{pools: []model.Pool{
			{CIDR: "10.0.0.0/16", NATOutgoing: true},
			{CIDR: "10.1.0.0/16"},
			{CIDR: "fd00::/64", NATOutgoing: true},
		}}
		rules := func() string {
			out, _ := exec.Command(ipt+"-save", "-t", "nat").CombinedOutput()
			return string(out)
		}
		const masq = "-A TABBY-POSTROUTING -m set --match-set tabby-nat-pools src -m set ! --match-set tabby-pools dst -j MASQUERADE"
		if err := a.syncNAT(v, a.pass(true)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rules(), masq) {
			t.Fatalf("no masquerade rule:\n%s", rules())
		}
		out, err := exec.Command(ipt, "-t", "nat", "-F", "TABBY-POSTROUTING").CombinedOutput()
		if err != nil {
			t.Fatalf("%s", out)
		}
		if out, err := exec.Command("ipset", "flush", "tabby-nat-pools").CombinedOutput(); err != nil {
			t.Fatalf("%s", out)
		}
		changes := a.ipt4.Changes
		if err := a.syncNAT(v, a.pass(false)); err != nil {
			t.Fatal(err)
		}
		if a.ipt4.Changes != changes || strings.Contains(rules(), masq) {
			t.Fatal("the event path read the kernel back (it repaired the tampering)")
		}
		if err := a.syncNAT(v, a.pass(true)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rules(), masq) {
			t.Fatalf("the periodic pass did not repair the rule:\n%s", rules())
		}
		if out, _ := exec.Command("ipset", "list", "tabby-nat-pools").CombinedOutput(); !strings.Contains(string(out), "10.0.0.0/16") {
			t.Fatalf("the periodic pass did not refill the set:\n%s", out)
		}
		// Without ip6tables, the IPv6 pool's nat-outgoing is not in force,
		// and the status says why; IPv4 is still served.
		a.ipt6, a.ip6tablesErr = nil, errIP6Test
		if err := a.syncNAT(v, a.pass(false)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(a.Status().IPv6NATError, errIP6Test.Error()) {
			t.Fatalf("status IPv6NATError = %q", a.Status().IPv6NATError)
		}
	})
}

var errIP6Test = errors.New("ip6tables unusable on this host: a test says so")
