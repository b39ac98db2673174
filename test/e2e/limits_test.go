package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	wl "github.com/tabby-net/tabby/pkg/workload"
	"github.com/tabby-net/tabby/test/lab"
)

// The limits tests measure each limit at two sizes and log the figures and
// their ratio (timings here are noisy: the machine is shared, so they are
// reported, not asserted). make test runs the smaller pair; with
// TABBY_LIMITS_FULL=1 the endpoint test runs 10,000 and 100,000.

// putAll writes ops in transactions of 100 (etcd's limit is 128 a txn).
func putAll(t *testing.T, kv store.KV, ops []store.Op) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for i := 0; i < len(ops); i += 100 {
		if _, err := kv.Txn(ctx, nil, ops[i:min(i+100, len(ops))]); err != nil {
			t.Fatalf("load: %v", err)
		}
	}
	return time.Since(start)
}

func deletePrefix(t *testing.T, kv store.KV, prefix string) {
	t.Helper()
	if _, err := kv.Txn(context.Background(), nil, []store.Op{{Kind: store.OpDelete, Key: prefix, Prefix: true}}); err != nil {
		t.Fatal(err)
	}
}

// rssMB is a process's resident memory.
func rssMB(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// ctlMeasured runs tabbyctl on h and returns its output, wall time and
// peak resident memory.
func (e *env) ctlMeasured(h *lab.Host, args ...string) (string, time.Duration, float64) {
	e.t.Helper()
	cmd := e.l.Command(h.NS, append([]string{testutil.Bin(e.t, "tabbyctl"), "--etcd-endpoints", e.l.EtcdURL}, args...)...)
	var out strings.Builder
	cmd.Stdout = &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("tabbyctl %s: %v", strings.Join(args, " "), err)
	}
	took := time.Since(start)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return out.String(), took, float64(ru.Maxrss) / 1024
}

// nodeFigures starts tabby-node on h and returns how long it took until it
// had loaded etcd (ready) and until the packet filter held want members in
// its policy group sets, the last full reconcile's duration and the
// daemon's resident memory then.
type nodeFigures struct {
	ready, programmed time.Duration
	reconcileMs       float64
	rss               float64
}

func (e *env) measureNode(h *lab.Host, wantMembers int) (*lab.Proc, nodeFigures) {
	e.t.Helper()
	start := time.Now()
	p := e.startNode(h)
	var f nodeFigures
	e.Eventually(5*time.Minute, func() error {
		if p.Exited() {
			return lab.GiveUp(fmt.Errorf("tabby-node exited: %v", p.Wait()))
		}
		st, err := e.status(h)
		if err != nil || !st.Ready {
			return fmt.Errorf("not ready (%v)", err)
		}
		if f.ready == 0 {
			f.ready = time.Since(start)
		}
		return nil
	})
	e.Eventually(5*time.Minute, func() error {
		n := e.groupMembers(h)
		if n < wantMembers {
			return fmt.Errorf("%d of %d endpoints in the policy group sets", n, wantMembers)
		}
		return nil
	})
	f.programmed = time.Since(start)
	st, err := e.status(h)
	if err != nil {
		e.t.Fatal(err)
	}
	f.reconcileMs = st.ReconcileMillis
	f.rss = rssMB(e.t, p.PID)
	return p, f
}

// groupMembers counts the (address, interface) members of h's policy group
// sets: one per programmed endpoint address.
func (e *env) groupMembers(h *lab.Host) int {
	out, err := e.l.Exec(h.NS, "ipset", "save")
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "add tabby-") && strings.Contains(l, ",tby") {
			n++
		}
	}
	return n
}

// syntheticEndpoints are n endpoint records of host (with their tag and
// member index entries, as the CNI plugin writes them) for workloads that
// have no interface: what a loader puts in etcd to see how tabby-node and
// tabbyctl cope with a host of n endpoints.
func syntheticEndpoints(host string, n int, profiles ...string) []store.Op {
	var ops []store.Op
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("w%06d", i)
		ep := &model.Endpoint{Host: host, Orchestrator: model.OrchestratorCNI, Workload: name, Name: "eth0",
			ContainerID: "ctr-" + name, Network: "tabby-net", Netns: "/run/netns/none-" + name, IfName: "eth0",
			HostInterface: fmt.Sprintf("tby%011x", i), MAC: "ee:ee:ee:ee:ee:ee",
			IPv4Nets: []string{fmt.Sprintf("10.%d.%d.%d/32", 100+i>>16, i>>8&0xff, i&0xff)},
			Profiles: profiles, Labels: map[string]string{"app": "load", "i": strconv.Itoa(i % 100)}}
		ops = append(ops, wl.Ops(nil, ep)...)
	}
	return ops
}

// TestLimitsEndpointsOnOneHost: n endpoint records under one host, written
// straight into etcd (no veths), at two sizes: tabby-node's start until
// ready and until every endpoint is in its policy group set, its full
// reconcile and memory, and `tabbyctl container show --host`'s time and
// memory. Every endpoint is programmed and listed at both sizes.
func TestLimitsEndpointsOnOneHost(t *testing.T) {
	sizes := []int{1000, 10000}
	if os.Getenv("TABBY_LIMITS_FULL") != "" {
		sizes = []int{10000, 100000}
	}
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.ctl(h, "profile", "add", "load")
	type row struct {
		n                 int
		load              time.Duration
		node              nodeFigures
		show              time.Duration
		showRSS, showSize float64
	}
	var rows []row
	for _, n := range sizes {
		ops := syntheticEndpoints(h.Name, n, "load")
		r := row{n: n, load: putAll(t, e.kv, ops)}
		p, f := e.measureNode(h, n)
		r.node = f
		out, took, rss := e.ctlMeasured(h, "container", "show", "--host", h.Name)
		if lines := strings.Count(out, "\n"); lines != n+1 {
			t.Fatalf("container show --host lists %d lines for %d endpoints", lines, n)
		}
		r.show, r.showRSS, r.showSize = took, rss, float64(len(out))/1e6
		rows = append(rows, r)
		t.Logf("%d endpoints on one host: loaded in %v; tabby-node ready %v, all in its sets %v, reconcile %.0f ms, RSS %.0f MB; container show --host %v, peak RSS %.0f MB, %.1f MB of output",
			n, r.load.Round(time.Millisecond), f.ready.Round(time.Millisecond), f.programmed.Round(time.Millisecond), f.reconcileMs, f.rss,
			took.Round(time.Millisecond), rss, r.showSize)
		if err := p.Stop(30 * time.Second); err != nil {
			t.Fatalf("stop tabby-node: %v", err)
		}
		deletePrefix(t, e.kv, model.HostWorkloadPrefix(h.Name))
		deletePrefix(t, e.kv, model.TagPrefix)
		deletePrefix(t, e.kv, model.MemberPrefix)
	}
	a, b := rows[0], rows[1]
	k := float64(b.n) / float64(a.n)
	t.Logf("x%.0f endpoints: tabby-node ready x%.1f, programmed x%.1f, reconcile x%.1f, RSS x%.1f; container show time x%.1f, RSS x%.1f (linear: x%.0f)",
		k, ratio(b.node.ready, a.node.ready), ratio(b.node.programmed, a.node.programmed), b.node.reconcileMs/a.node.reconcileMs,
		b.node.rss/a.node.rss, ratio(b.show, a.show), b.showRSS/a.showRSS, k)
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }
