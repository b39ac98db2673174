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
		t.Logf("%d endpoints on one host: loaded in %v; tabby-node ready %v, all in its sets %v, last pass %.0f ms, RSS %.0f MB; container show --host %v, peak RSS %.0f MB, %.1f MB of output",
			n, r.load.Round(time.Millisecond), f.ready.Round(time.Millisecond), f.programmed.Round(time.Millisecond), f.reconcileMs, f.rss,
			took.Round(time.Millisecond), rss, r.showSize)
		stopping := time.Now()
		if err := p.Stop(90 * time.Second); err != nil {
			t.Errorf("tabby-node with %d endpoints did not stop on SIGTERM within 90 s (systemd's default): %v", n, err)
		}
		t.Logf("%d endpoints: tabby-node stopped %v after SIGTERM", n, time.Since(stopping).Round(time.Millisecond))
		deletePrefix(t, e.kv, model.HostWorkloadPrefix(h.Name))
		deletePrefix(t, e.kv, model.TagPrefix)
		deletePrefix(t, e.kv, model.MemberPrefix)
	}
	a, b := rows[0], rows[1]
	k := float64(b.n) / float64(a.n)
	t.Logf("x%.0f endpoints: tabby-node ready x%.1f, programmed x%.1f, RSS x%.1f; container show time x%.1f, RSS x%.1f (linear: x%.0f)",
		k, ratio(b.node.ready, a.node.ready), ratio(b.node.programmed, a.node.programmed),
		b.node.rss/a.node.rss, ratio(b.show, a.show), b.showRSS/a.showRSS, k)
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// TestLimitsProfiles: 1,000 and then 10,000 profiles in etcd, of which the
// host's two endpoints use two: tabby-node's start until ready, its full
// reconcile and memory at both sizes. Its packet filter holds chains of the
// profiles its endpoints use only: the same rules at both sizes; it follows
// only those profiles, so neither its memory nor its CPU grows with the
// others.
func TestLimitsProfiles(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	e.ctl(h, "profile", "add", "lp-00001")
	e.ctl(h, "profile", "add", "lp-00002")
	node := e.startNode(h)
	e.waitNodeReady(h, node)
	a, ipA := e.containerConf(h, "a", e.conf(h, "", `,"profiles":["lp-00001"]`, ""))
	b, ipB := e.containerConf(h, "b", e.conf(h, "", `,"profiles":["lp-00001","lp-00002"]`, ""))
	e.pingEventually(a, ipB, 5*time.Second)
	e.pingEventually(b, ipA, 5*time.Second)
	if err := node.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	rules := func() string {
		out, err := e.l.Exec(h.NS, "iptables-save", "-t", "filter")
		if err != nil {
			t.Fatal(err)
		}
		var keep []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "TABBY") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	var base string
	type row struct {
		n    int
		node nodeFigures
		cpu  float64
	}
	var rows []row
	loaded := 2
	for _, n := range []int{1000, 10000} {
		var ops []store.Op
		for i := loaded + 1; i <= n; i++ {
			p := model.DefaultProfile(fmt.Sprintf("lp-%05d", i))
			// Rules naming other profiles' tags: a node following every
			// profile's tags would watch them all.
			p.Inbound = append(p.Inbound, model.Rule{Action: model.ActionAllow, Protocol: "tcp", SrcTag: fmt.Sprintf("lp-%05d", i-1), DstPorts: "80"})
			ops = append(ops, store.Put(model.ProfileKey(p.Name), store.MustJSON(p)))
		}
		loaded = n
		putAll(t, e.kv, ops)
		p, f := e.measureNode(h, 2)
		rows = append(rows, row{n: n, node: f})
		e.pingEventually(a, ipB, 5*time.Second)
		// Rules differ in set and chain names only by what the endpoints
		// use, which did not change.
		r := rules()
		if base == "" {
			base = r
		} else if r != base {
			t.Errorf("tabby-node's rules changed with %d unused profiles in etcd:\n%s\nwas:\n%s", n, r, base)
		}
		tags, _ := e.l.Exec(h.NS, "ipset", "list", "-name")
		cpu := e.cpuPerChange(h, p, func(i int) {
			q := model.DefaultProfile("lp-00500")
			q.Outbound = append(q.Outbound, model.Rule{Action: model.ActionDeny, Protocol: "udp", DstPorts: strconv.Itoa(1000 + i)})
			if err := store.PutJSON(context.Background(), e.kv, model.ProfileKey(q.Name), q); err != nil {
				t.Fatal(err)
			}
		})
		rows[len(rows)-1].cpu = cpu
		t.Logf("%d profiles in etcd, 2 used on the host: tabby-node ready %v, last pass %.0f ms, RSS %.0f MB, CPU per change of an unused profile %.1f ms; %d TABBY rules, %d sets",
			n, f.ready.Round(time.Millisecond), f.reconcileMs, f.rss, cpu, strings.Count(r, "\n")+1, strings.Count(tags, "tabby-"))
		if err := p.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	x, y := rows[0].node, rows[1].node
	t.Logf("x10 profiles: ready x%.1f, RSS x%.1f, CPU per change of an unused profile %.1f vs %.1f ms", ratio(y.ready, x.ready), y.rss/x.rss, rows[1].cpu, rows[0].cpu)
	// A node follows the profiles its endpoints name, one key each: the
	// others cost it neither memory nor a pass (it used to keep them all,
	// +23 MB and 10.5 ms of CPU per unrelated change at 10,000).
	if y.rss > x.rss*1.2 {
		t.Errorf("RSS %.0f MB with 10,000 profiles in etcd vs %.0f MB with 1,000: the node holds profiles its endpoints do not use", y.rss, x.rss)
	}
	if rows[1].cpu > 3 {
		t.Errorf("tabby-node spent %.1f ms of CPU per change of a profile no endpoint on its host uses", rows[1].cpu)
	}
}

// TestLimitsRulesInOneProfile: one profile with 100 and then 1,000 inbound
// rules (all but the last deny one TCP port each, the last allows its
// members), written as one record: tabby-node programs it, a ping between
// members walks every rule and passes, a TCP port denied half-way down is
// dropped while one past the denied range connects; the time from the
// write until every rule is in the kernel, and the reconcile. Then the
// limit: a profile at MaxProfileRules gets no more through tabbyctl, with
// an error that says so.
func TestLimitsRulesInOneProfile(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	e.ctl(h, "profile", "add", "big")
	node := e.startNode(h)
	e.waitNodeReady(h, node)
	conf := e.conf(h, "", `,"profiles":["big"]`, "")
	a, _ := e.containerConf(h, "a", conf)
	b, ipB := e.containerConf(h, "b", conf)
	e.pingEventually(a, ipB, 5*time.Second)
	srv := e.l.ServeTCP(b, 40000)
	defer srv.Close()
	profile := func(n int) model.Profile {
		p := model.DefaultProfile("big")
		p.Inbound = nil
		for i := 0; i < n-1; i++ {
			p.Inbound = append(p.Inbound, model.Rule{Action: model.ActionDeny, Protocol: "tcp", SrcTag: "big", DstPorts: strconv.Itoa(20000 + i)})
		}
		p.Inbound = append(p.Inbound, model.Rule{Action: model.ActionAllow, SrcTag: "big"})
		return p
	}
	var took []time.Duration
	for _, n := range []int{100, 1000} {
		p := profile(n)
		last := fmt.Sprintf("--dport %d ", 20000+n-2)
		start := time.Now()
		if err := store.PutJSON(context.Background(), e.kv, model.ProfileKey("big"), p); err != nil {
			t.Fatal(err)
		}
		e.Eventually(30*time.Second, func() error {
			out, err := e.l.Exec(h.NS, "iptables-save", "-t", "filter")
			if err != nil {
				return err
			}
			if !strings.Contains(out, last) {
				return fmt.Errorf("rule %d of %d not in the kernel yet", n-1, n)
			}
			return nil
		})
		took = append(took, time.Since(start))
		st, err := e.status(h)
		if err != nil {
			t.Fatal(err)
		}
		e.pingEventually(a, ipB, 5*time.Second)
		if err := e.l.TCPConnect(a, ipB, 40000); err != nil {
			t.Fatalf("%d rules: TCP past the denied ports: %v", n, err)
		}
		t.Logf("%d rules in one profile: in the kernel %v after the write, last pass %.0f ms; ping and TCP :40000 pass", n,
			took[len(took)-1].Round(time.Millisecond), st.ReconcileMillis)
	}
	// Port 20000+500 is denied by rule 501 of 1,000.
	srv2 := e.l.ServeTCP(b, 20500)
	defer srv2.Close()
	if err := e.l.TCPConnect(a, ipB, 20500); err == nil {
		t.Fatal("TCP to port 20500 passed rule 501 (deny) of 1,000")
	}
	t.Logf("x10 rules: in the kernel x%.1f (100 ms polling)", ratio(took[1], took[0]))

	full := profile(model.MaxProfileRules - 1)
	full.Outbound = []model.Rule{{Action: model.ActionAllow}}
	if err := store.PutJSON(context.Background(), e.kv, model.ProfileKey("big"), full); err != nil {
		t.Fatal(err)
	}
	out, err := e.ctlErr(h, "profile", "big", "rule", "add", "outbound", "allow", "udp")
	if err == nil || !strings.Contains(out+err.Error(), fmt.Sprintf("at most %d", model.MaxProfileRules)) {
		t.Fatalf("rule %d added: %v\n%s", model.MaxProfileRules+1, err, out)
	}
	var got model.Profile
	if _, err := store.GetJSON(context.Background(), e.kv, model.ProfileKey("big"), &got); err != nil || len(got.Inbound)+len(got.Outbound) != model.MaxProfileRules {
		t.Fatalf("profile after the refused rule: %d rules, %v", len(got.Inbound)+len(got.Outbound), err)
	}
}

// TestLimitsNameLengths: names at their longest are accepted end to end
// and enforced: a 253-character profile (tabbyctl, the CNI plugin), a
// 253-character workload name, a label key of a 253-character prefix and
// a 63-character name with a 63-character value; a member of the long
// profile reaches another, a workload without it does not. One character
// more is refused by tabbyctl and by the CNI plugin (code 7), naming the
// limit, and leaves nothing behind.
func TestLimitsNameLengths(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	long := func(c byte, n int) string { return strings.Repeat(string(c), n) }
	prof := long('p', 253)
	wl1 := long('w', 253)
	prefix := strings.Join([]string{long('a', 63), long('b', 63), long('c', 63), long('d', 61)}, ".") // 253
	key := prefix + "/" + long('k', 63)
	val := long('v', 63)
	e.ctl(h, "profile", "add", prof)
	e.ctl(h, "profile", "add", "other")
	if out, err := e.ctlErr(h, "profile", "add", prof+"p"); err == nil || !strings.Contains(out+err.Error(), "253") {
		t.Fatalf("tabbyctl profile add of 254 characters: %v\n%s", err, out)
	}
	node := e.startNode(h)
	e.waitNodeReady(h, node)
	add := func(cid, args string) (string, string, int, string) {
		ns, nsPath := e.l.AddContainer(h, cid)
		o := e.plugin(h, "ADD", cid, nsPath, "eth0", args, e.conf(h, "", "", ""))
		if o.ExitCode != 0 {
			return ns, "", o.ErrCode, o.ErrMsg
		}
		return ns, addrOf(t, o), 0, ""
	}
	n1, ip1, code, msg := add("l1", fmt.Sprintf("TABBY_WORKLOAD=%s;TABBY_PROFILES=%s;TABBY_LABELS=%s=%s", wl1, prof, key, val))
	if code != 0 {
		t.Fatalf("ADD with names at their longest: %d %s", code, msg)
	}
	n2, ip2, code, msg := add("l2", fmt.Sprintf("TABBY_WORKLOAD=%s;TABBY_PROFILES=%s", long('x', 253), prof))
	if code != 0 {
		t.Fatalf("ADD: %d %s", code, msg)
	}
	n3, _, code, msg := add("l3", "TABBY_WORKLOAD=l3;TABBY_PROFILES=other")
	if code != 0 {
		t.Fatalf("ADD: %d %s", code, msg)
	}
	e.pingEventually(n1, ip2, 5*time.Second)
	e.pingEventually(n2, ip1, 5*time.Second)
	if err := e.quickPing(n3, ip1); err == nil {
		t.Fatalf("a workload without the 253-character profile reached its member")
	}
	if out := e.ctl(h, "container", "show", "--labels"); !strings.Contains(out, wl1) || !strings.Contains(out, key+"="+val) {
		t.Fatalf("container show does not list the long names:\n%s", out)
	}
	// The policy side: a selector on the longest key and value.
	pol := fmt.Sprintf(`{"name":%q,"selector":"%s=%s","types":["ingress"],"ingress":[{"peers":[{"selector":"%s=%s"}]}]}`, long('n', 253), key, val, key, val)
	path := e.dir + "/long-policy.json"
	if err := os.WriteFile(path, []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctl(h, "policy", "add", "-f", path)
	e.pingEventually(n1, ip1, 5*time.Second) // itself: selected, and a peer of itself
	before := len(e.keys(model.Prefix))
	for _, c := range []struct{ what, args, want string }{
		{"workload name of 254", "TABBY_WORKLOAD=" + long('w', 254), "253"},
		{"profile name of 254", "TABBY_WORKLOAD=y;TABBY_PROFILES=" + prof + "p", "253"},
		{"label value of 64", "TABBY_WORKLOAD=y;TABBY_LABELS=k=" + long('v', 64), "63"},
		{"label key name of 64", "TABBY_WORKLOAD=y;TABBY_LABELS=" + prefix + "/" + long('k', 64) + "=v", "63"},
		{"label key prefix of 254", "TABBY_WORKLOAD=y;TABBY_LABELS=" + prefix + "d/k=v", "253"},
	} {
		_, _, code, msg := add("bad", c.args)
		if code != 7 || !strings.Contains(msg, c.want) {
			t.Errorf("ADD with a %s: code %d %q, want 7 naming %s", c.what, code, msg, c.want)
		}
		if err := e.l.RemoveContainer(e.l.ID + "-" + h.Name + "-bad"); err != nil {
			t.Fatal(err)
		}
	}
	if after := len(e.keys(model.Prefix)); after != before {
		t.Fatalf("refused ADDs left %d keys", after-before)
	}
}

// cpuTicks is a process's user and system CPU time so far.
func cpuTicks(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) in ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return time.Duration(u+s) * 10 * time.Millisecond // USER_HZ 100
}

// cpuPerChange makes 20 changes with change, 100 ms apart, waits until h's
// tabby-node has done with them (its CPU time stands still for 300 ms),
// and returns its CPU time per change in milliseconds.
func (e *env) cpuPerChange(h *lab.Host, p *lab.Proc, change func(i int)) float64 {
	e.t.Helper()
	const n = 20
	before := cpuTicks(e.t, p.PID)
	for i := range n {
		change(i)
		time.Sleep(100 * time.Millisecond)
	}
	last := cpuTicks(e.t, p.PID)
	e.Eventually(10*time.Second, func() error {
		time.Sleep(200 * time.Millisecond) // with Eventually's 100 ms: one reading per 300 ms
		now := cpuTicks(e.t, p.PID)
		if now != last {
			last = now
			return fmt.Errorf("tabby-node still busy")
		}
		return nil
	})
	return float64(last-before) / float64(time.Millisecond) / n
}
