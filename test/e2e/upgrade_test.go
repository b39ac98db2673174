package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// flow pings one address every 10 ms until stopped.
type flow struct {
	p        *lab.Proc
	from, to string
	started  time.Time
}

func (e *env) startFlow(from, to string) *flow {
	return &flow{p: e.l.Start(from, "", "ping", "-n", "-i", "0.01", "-W", "1", to), from: from, to: to, started: time.Now()}
}

var echoSeq = regexp.MustCompile(`bytes from .* icmp_seq=(\d+)`)

// stop ends the flow and returns how many echoes were answered and which
// sequence numbers below the last answered one never were. The last few
// echoes in flight when it stops are not counted either way.
func (f *flow) stop(t *testing.T) (answered int, lost []int) {
	t.Helper()
	if err := f.p.Kill(syscall.SIGINT); err != nil {
		t.Fatalf("stop ping %s -> %s: %v", f.from, f.to, err)
	}
	_ = f.p.WaitTimeout(5 * time.Second)
	b, err := os.ReadFile(f.p.Log)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	last := 0
	for _, m := range echoSeq.FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(m[1])
		got[n] = true
		last = max(last, n)
	}
	for i := 1; i <= last; i++ {
		if !got[i] {
			lost = append(lost, i)
		}
	}
	return len(got), lost
}

func checkFlows(t *testing.T, fs []*flow, what string) {
	t.Helper()
	for _, f := range fs {
		ok, lost := f.stop(t)
		d := time.Since(f.started)
		t.Logf("%s: %s -> %s: %d echoes answered over %v, %d lost", what, f.from, f.to, ok, d.Round(100*time.Millisecond), len(lost))
		if len(lost) > 0 {
			if len(lost) > 20 {
				lost = lost[:20]
			}
			t.Errorf("%s: %s -> %s lost echoes %v", what, f.from, f.to, lost)
		}
		// ping's 10 ms is a minimum: on a busy machine ~50 echoes a second
		// go out. Fewer than 20 a second means the flow did not run.
		if want := int(d / (50 * time.Millisecond)); ok < want {
			t.Errorf("%s: %s -> %s only %d echoes answered in %v", what, f.from, f.to, ok, d)
		}
	}
}

// settled waits until h's tabby-node is ready, has settled with peers
// sessions Established, and reports no error.
func (e *env) settled(h *lab.Host, p *lab.Proc, peers int) {
	e.t.Helper()
	e.WaitPeers(h, peers, nmSessionWait, p)
	e.Eventually(30*time.Second, func() error {
		st, err := e.status(h)
		if err != nil {
			return err
		}
		if !st.Ready || len(st.Errors) > 0 {
			return fmt.Errorf("tabby-node on %s: ready %v, errors %v", h.Name, st.Ready, st.Errors)
		}
		return nil
	})
}

// TestUpgradeRollingRestart: three hosts run the tabby-node, plugins and
// tabbyctl of the commit that wrote fixture-v1 (built from git); a
// container on each host pings one on the next host, directly routed and
// over VXLAN, every 10 ms. Then, host by host, the old daemon is stopped
// and today's started, each waiting for the last to settle: no echo is
// lost, and meanwhile (mixed versions) today's plugin adds a container on
// an upgraded host that an old host's container reaches, and the old
// plugin adds one on a host not yet upgraded. Then a rolling restart of
// today's daemons, again without a lost echo.
func TestUpgradeRollingRestart(t *testing.T) {
	old := binSet{dir: binariesAt(t, fixtureCommit(t))}
	e := newEnv(t, lab.Options{Hosts: 3})
	old.e = e
	cur := binSet{e: e, dir: filepath.Dir(testutil.Bin(t, "tabby-node"))}
	hosts := e.l.Hosts
	old.mustCtl(hosts[0], "pool", "add", "10.0.0.0/16")
	old.mustCtl(hosts[0], "pool", "add", "10.1.0.0/16", "--vxlan")
	old.mustCtl(hosts[0], "profile", "add", "all")
	procs := map[*lab.Host]*lab.Proc{}
	for _, h := range hosts {
		procs[h] = old.node(h)
	}
	for _, h := range hosts {
		e.settled(h, procs[h], 2)
	}
	conf := func(h *lab.Host, pool string) []byte {
		return e.conf(h, "", `,"profiles":["all"]`, fmt.Sprintf(`,"ipv4_pools":[%q]`, pool))
	}
	type ctr struct{ ns, ip string }
	var direct, vx []ctr
	for i, h := range hosts {
		name := fmt.Sprintf("d%d", i)
		ns, ip := old.add(h, name, "TABBY_WORKLOAD="+name, conf(h, "10.0.0.0/16"))
		direct = append(direct, ctr{ns, ip})
		name = fmt.Sprintf("v%d", i)
		ns, ip = old.add(h, name, "TABBY_WORKLOAD="+name, conf(h, "10.1.0.0/16"))
		vx = append(vx, ctr{ns, ip})
	}
	startFlows := func() []*flow {
		var fs []*flow
		for i := range hosts {
			j := (i + 1) % len(hosts)
			for _, cs := range [][]ctr{direct, vx} {
				e.pingEventually(cs[i].ns, cs[j].ip, 5*time.Second)
				fs = append(fs, e.startFlow(cs[i].ns, cs[j].ip))
			}
		}
		return fs
	}
	roll := func(to binSet, what string, during func(i int)) {
		fs := startFlows()
		time.Sleep(time.Second)
		for i, h := range hosts {
			start := time.Now()
			if err := procs[h].Stop(10 * time.Second); err != nil {
				t.Fatalf("stop tabby-node on %s: %v", h.Name, err)
			}
			procs[h] = to.node(h)
			for _, o := range hosts {
				e.settled(o, procs[o], 2)
			}
			t.Logf("%s: %s back and every host settled in %v", what, h.Name, time.Since(start).Round(time.Millisecond))
			if during != nil {
				during(i)
			}
		}
		time.Sleep(time.Second)
		checkFlows(t, fs, what)
	}
	roll(cur, "upgrade to today's tabby-node", func(i int) {
		if i != 0 {
			return
		}
		// host1 runs today's daemon, host2 and host3 the old one.
		_, ipNew := cur.add(hosts[0], "new1", "TABBY_WORKLOAD=new1", conf(hosts[0], "10.0.0.0/16"))
		_, ipOld := old.add(hosts[2], "old3", "TABBY_WORKLOAD=old3", conf(hosts[2], "10.0.0.0/16"))
		e.pingEventually(direct[2].ns, ipNew, 5*time.Second)
		e.pingEventually(direct[0].ns, ipOld, 5*time.Second)
		st, _ := e.status(hosts[0])
		t.Logf("mixed: today's tabby-node on host1 (%s) with old ones on host2 and host3; ADDs on both kinds reach each other", st.Version)
	})
	// Today's binaries wrote the schema record that the old ones never did.
	s, ok, err := model.ReadSchema(context.Background(), e.kv)
	if err != nil || !ok || s != model.CurrentSchema() {
		t.Fatalf("schema after the upgrade: %+v %v %v", s, ok, err)
	}
	roll(cur, "rolling restart of today's tabby-node", nil)
	if out, err := cur.ctl(hosts[0], "ipam", "check"); err != nil {
		t.Fatalf("ipam check after the upgrade: %v\n%s", err, out)
	}
}

// TestUpgradeFixtureV1: today's binaries run on the datastore that the
// binaries of fixture-v1's commit wrote (loaded into the lab's etcd as
// is): tabbyctl shows every kind of record and finds no IPAM problem;
// today's tabby-node serves both hosts with no error; a new container on
// each host (in the hosts' v1 blocks, with v1 profiles) reaches the other;
// a v1 workload is deleted cleanly. Then mixed versions: records in their
// oldest form (no encapsulation modes in a pool, an endpoint without
// labels, namespace, ports or handle) still work, and a datastore whose
// schema needs a newer binary makes today's writers refuse with a clear
// error while read-only commands still answer.
func TestUpgradeFixtureV1(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 2})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	loadRecords(t, e.kv, readFixture(t))
	ctx := context.Background()
	if _, ok, _ := model.ReadSchema(ctx, e.kv); ok {
		t.Fatal("the v1 fixture has a schema record")
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"pool", "show"}, []string{"10.0.0.0/16", "10.1.0.0/16", "fd00:10::/64", "10.9.0.0/24"}},
		{[]string{"profile", "show"}, []string{"web", "db", "k8s_ns.team-a"}},
		{[]string{"profile", "web", "rule", "show"}, []string{"192.0.2.0/24", "53:60"}},
		{[]string{"container", "show", "--labels"}, []string{"c1", "c2", "borrow", "team-a/web-0", "app=web"}},
		{[]string{"policy", "show", "--all-namespaces"}, []string{"web-ingress", "team-a-egress", "knp.default-deny"}},
		{[]string{"bgp", "peer", "show"}, []string{"198.19.0.200", "198.19.0.201"}},
		{[]string{"node", "show"}, []string{"host1", "host2"}},
		{[]string{"ipam", "show"}, []string{"10.0.190.128/26"}},
		{[]string{"ipam", "check"}, nil},
	} {
		out := e.ctl(h1, c.args...)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("tabbyctl %s on the v1 store: no %q in\n%s", strings.Join(c.args, " "), w, out)
			}
		}
	}
	procs := e.StartNodes()
	for _, h := range e.l.Hosts {
		st, err := e.status(h)
		if err != nil || len(st.Errors) > 0 {
			t.Fatalf("today's tabby-node on %s on the v1 store: %v %v", h.Name, st.Errors, err)
		}
	}
	// web's v1 rules let members reach each other.
	web := func(h *lab.Host) []byte { return e.conf(h, "", `,"profiles":["web"]`, `,"ipv4_pools":["10.0.0.0/16"]`) }
	n1, ip1 := e.containerConf(h1, "n1", web(h1))
	n2, ip2 := e.containerConf(h2, "n2", web(h2))
	if !strings.HasPrefix(ip1, "10.0.190.") {
		t.Errorf("the new container on host1 got %s, not an address of host1's v1 block 10.0.190.128/26", ip1)
	}
	e.pingEventually(n1, ip2, 5*time.Second)
	e.pingEventually(n2, ip1, 5*time.Second)
	// A v1 workload whose container is gone: DEL releases it all.
	if o := e.plugin(h1, "DEL", "ctr-c1", "", "eth0", "TABBY_WORKLOAD=c1", e.conf(h1, "", "", "")); o.ExitCode != 0 {
		t.Fatalf("DEL of v1 workload c1: %s", o.Stdout)
	}
	if k := e.keys(model.HostWorkloadPrefix(h1.Name) + "cni/c1/"); len(k) != 0 {
		t.Fatalf("v1 endpoint of c1 left after DEL: %v", k)
	}
	if out, err := e.ctlErr(h1, "ipam", "check"); err != nil {
		t.Fatalf("ipam check after the DEL: %v\n%s", err, out)
	}

	// Records in their oldest form still work: a pool without modes, an
	// endpoint without labels, namespace, ports and handle (today's host2
	// daemon restarted on them still lets n1 and n2 talk).
	strip := func(key string, fields ...string) {
		r, err := e.kv.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(r.Value, &m); err != nil {
			t.Fatal(err)
		}
		for _, f := range fields {
			delete(m, f)
		}
		b, _ := json.Marshal(m)
		if _, err := e.kv.Txn(ctx, nil, []store.Op{store.Put(key, b)}); err != nil {
			t.Fatal(err)
		}
	}
	strip(model.PoolKey("10.0.0.0/16"), "ipipMode", "vxlanMode")
	ep2 := e.endpoint(h2, "cni", "n2")
	strip(ep2.Key(), "labels", "namespace", "ports", "handle")
	if err := procs[h2].Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	procs[h2] = e.startNode(h2)
	e.settled(h2, procs[h2], 1)
	e.pingEventually(n1, ip2, 5*time.Second)
	e.pingEventually(n2, ip1, 5*time.Second)
	if out := e.ctl(h1, "container", "show"); !strings.Contains(out, ip2) {
		t.Fatalf("container show lists no %s:\n%s", ip2, out)
	}

	// A datastore that needs a newer binary: writers refuse and say why,
	// readers answer, tabby-node does not start.
	newer := `{"version":2,"minReader":2}`
	if _, err := e.kv.Txn(ctx, nil, []store.Op{store.Put(model.SchemaKey, []byte(newer))}); err != nil {
		t.Fatal(err)
	}
	out, err := e.ctlErr(h1, "profile", "add", "after")
	if err == nil || !strings.Contains(out+err.Error(), "upgrade") {
		t.Fatalf("tabbyctl profile add on a schema-2 store: %v\n%s", err, out)
	}
	if k := e.keys(model.ProfileKey("after")); len(k) != 0 {
		t.Fatal("a refused tabbyctl wrote its profile")
	}
	_, s2 := e.l.AddContainer(h1, "s2")
	if o := e.plugin(h1, "ADD", "ctr-s2", s2, "eth0", "TABBY_WORKLOAD=s2", web(h1)); o.ErrCode != 120 || !strings.Contains(o.ErrMsg, "upgrade") {
		t.Fatalf("CNI ADD on a schema-2 store: exit %d, code %d %q", o.ExitCode, o.ErrCode, o.ErrMsg)
	}
	if k := e.keys(model.HandleKey("tabby-net", "ctr-s2")); len(k) != 0 {
		t.Fatal("a refused ADD wrote its handle")
	}
	if out := e.ctl(h1, "profile", "show"); !strings.Contains(out, "web") {
		t.Fatalf("profile show on a schema-2 store:\n%s", out)
	}
	if err := procs[h1].Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	p := e.startNode(h1)
	_ = p.WaitTimeout(20 * time.Second)
	if !p.Exited() {
		t.Fatal("tabby-node runs on a schema-2 store")
	}
	if p.Wait() == nil {
		t.Fatal("tabby-node refused a schema-2 store with exit status 0")
	}
	if log := lab.Tail(p.Log, 5); !strings.Contains(log, "upgrade") {
		t.Fatalf("tabby-node's log does not say to upgrade:\n%s", log)
	}
	// Its kernel state stays: n2 still reaches n1 on host1.
	e.pingEventually(n2, ip1, 5*time.Second)
	if _, err := e.kv.Txn(ctx, nil, []store.Op{store.Put(model.SchemaKey, []byte(model.CurrentSchema().JSON()))}); err != nil {
		t.Fatal(err)
	}
	procs[h1] = e.startNode(h1)
	e.settled(h1, procs[h1], 1)
	keys := e.keys(model.Prefix)
	sort.Strings(keys)
	t.Logf("%d keys in the upgraded store", len(keys))
}

// containerConf adds a container on h with conf and returns its namespace
// name and address.
func (e *env) containerConf(h *lab.Host, name string, conf []byte) (string, string) {
	e.t.Helper()
	nsName, nsPath := e.l.AddContainer(h, name)
	return nsName, addrOf(e.t, e.plugin(h, "ADD", "ctr-"+name, nsPath, "eth0", "TABBY_WORKLOAD="+name, conf))
}
