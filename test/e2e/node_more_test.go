package e2e

// More tabby-node end-to-end tests: BIRD interop, daemon and etcd restarts
// under traffic (and a daemon restart during an etcd outage, a watch lost to
// compaction), nat-outgoing, IPIP honesty on a kernel without IPIP, metrics,
// and the status following BGP sessions; plus one IPAM case found on the
// way. Helpers here are prefixed "nm" so they never clash with those of the
// other test files of the package.

import (
	"context"
	"fmt"
	"net"
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

// nmProfile is given to every container of these tests: members reach each
// other and send anywhere (the default rules of `tabbyctl profile add`), so
// the packet filter never hides what routing does.
const nmProfile = "nm-all"

// nmSessionWait bounds waits for Established sessions in the status. It is
// longer than the daemon's 30 s periodic reconcile: before 6532436 the
// status refreshed only on a reconcile (TestNodeMoreStatusFollowsSessions),
// so a session that came up with no route change showed up to 30 s late.
const nmSessionWait = 45 * time.Second

// nmNewEnv is newEnv that also returns the lab's etcd process (to stop and
// restart it) and creates nmProfile.
func nmNewEnv(t *testing.T, opts lab.Options) (*env, *lab.Proc) {
	t.Helper()
	e := newEnv(t, opts)
	e.ctl(e.l.Hosts[0], "profile", "add", nmProfile)
	return e, e.Etcd
}

// nmCtr adds a container on h (with nmProfile; pool restricts the IPAM pool
// when not empty; args is CNI_ARGS) and returns its namespace and address.
func (e *env) nmCtr(h *lab.Host, name, pool, args string) (string, string) {
	e.t.Helper()
	nsName, nsPath := e.l.AddContainer(h, name)
	ipamExtra := ""
	if pool != "" {
		ipamExtra = fmt.Sprintf(`,"ipv4_pools":[%q]`, pool)
	}
	o := e.plugin(h, "ADD", name, nsPath, "eth0", args, e.conf(h, "", fmt.Sprintf(`,"profiles":[%q]`, nmProfile), ipamExtra))
	return nsName, addrOf(e.t, o)
}

// nmStartNodes starts tabby-node on every host given and waits until each
// has peers Established BGP sessions and has settled.
func (e *env) nmStartNodes(hosts []*lab.Host, peers int, extra ...string) map[string]*lab.Proc {
	e.t.Helper()
	procs := map[string]*lab.Proc{}
	for _, h := range hosts {
		procs[h.Name] = e.startNode(h, extra...)
	}
	for _, h := range hosts {
		e.waitEstablished(h, peers, nmSessionWait)
	}
	return procs
}

// nmBlocks lists the blocks affine to host (from etcd).
func (e *env) nmBlocks(host string) []string {
	e.t.Helper()
	kvs, _, err := e.kv.List(context.Background(), model.AffinityHostPrefix(host), false)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, kv := range kvs {
		var a model.Affinity
		if err := store.DecodeJSON(kv.Value, &a); err != nil {
			e.t.Fatalf("%s: %v", kv.Key, err)
		}
		out = append(out, a.Block)
	}
	sort.Strings(out)
	return out
}

// nmRoutes returns host h's tabby routes (proto 80) other than the CNI
// plugin's per-workload routes, keyed by destination. A destination that
// shows up twice (another metric, a multipath route) has two entries.
func (e *env) nmRoutes(h *lab.Host) (map[string][]string, error) {
	out, err := e.l.Exec(h.NS, "ip", "-4", "route", "show", "proto", "80")
	if err != nil {
		return nil, err
	}
	m := map[string][]string{}
	var last string
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' { // "nexthop via ..." of a multipath route
			m[last] = append(m[last], strings.TrimSpace(line))
			continue
		}
		if strings.Contains(line, " dev tby") {
			continue
		}
		f := strings.Fields(line)
		dst := f[0]
		if (dst == "blackhole" || dst == "unreachable") && len(f) > 1 {
			dst = f[1]
		}
		last = dst
		m[dst] = append(m[dst], line)
	}
	return m, nil
}

// nmWantRoutes is what host h should have: a blackhole for each of its
// blocks, one route for every other host's block (via the owner, or for a
// VXLAN pool via the owner's tunnel address on vxlan.tabby), plus extra
// (destination -> text the route must contain).
func (e *env) nmWantRoutes(h *lab.Host, tabbyHosts []*lab.Host, extra map[string]string) map[string]string {
	e.t.Helper()
	kvs, _, err := e.kv.List(context.Background(), model.PoolPrefix, false)
	if err != nil {
		e.t.Fatal(err)
	}
	var vxlanPools []*net.IPNet
	for _, kv := range kvs {
		var p model.Pool
		if err := store.DecodeJSON(kv.Value, &p); err != nil {
			e.t.Fatal(err)
		}
		if p.VXLANMode != "" && p.VXLANMode != model.EncapNever {
			vxlanPools = append(vxlanPools, p.IPNet())
		}
	}
	inVXLAN := func(block string) bool {
		ip, _, _ := net.ParseCIDR(block)
		for _, p := range vxlanPools {
			if p.Contains(ip) {
				return true
			}
		}
		return false
	}
	want := map[string]string{}
	for _, o := range tabbyHosts {
		var rec model.Host
		if _, err := store.GetJSON(context.Background(), e.kv, model.NodeKey(o.Name), &rec); err != nil {
			e.t.Fatal(err)
		}
		tun, _, _ := strings.Cut(rec.VXLANTunnelAddr, "/")
		for _, b := range e.nmBlocks(o.Name) {
			switch {
			case o == h:
				want[b] = "blackhole"
			case inVXLAN(b):
				want[b] = "via " + tun + " dev vxlan.tabby onlink"
			default:
				want[b] = "via " + o.IP + " dev eth0"
			}
		}
	}
	for k, v := range extra {
		want[k] = v
	}
	return want
}

// nmCheckRoutes compares h's routes with want: every destination exactly
// once and as wanted, nothing else (no stale route, no duplicate).
func (e *env) nmCheckRoutes(h *lab.Host, want map[string]string) error {
	got, err := e.nmRoutes(h)
	if err != nil {
		return err
	}
	var bad []string
	for dst, text := range want {
		switch r := got[dst]; {
		case len(r) == 0:
			bad = append(bad, "missing "+dst+" ("+strings.TrimSpace(text)+")")
		case len(r) > 1:
			bad = append(bad, fmt.Sprintf("duplicate %s: %q", dst, r))
		case !strings.Contains(r[0]+" ", text):
			bad = append(bad, fmt.Sprintf("%s is %q, want %q", dst, r[0], strings.TrimSpace(text)))
		}
	}
	for dst, r := range got {
		if _, ok := want[dst]; !ok {
			bad = append(bad, fmt.Sprintf("stale or unexpected %q", r))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("%s routes: %s", h.Name, strings.Join(bad, "; "))
	}
	return nil
}

// nmFlood is a ping every 10 ms from a container, running in the background.
type nmFlood struct {
	from, to string
	count    int
	done     chan struct{}
	out      string
	err      error
	started  time.Time
}

func (e *env) nmStartFlood(fromNS, ip string, count int) *nmFlood {
	f := &nmFlood{from: fromNS, to: ip, count: count, done: make(chan struct{}), started: time.Now()}
	go func() {
		defer close(f.done)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count)*30*time.Millisecond+30*time.Second)
		defer cancel()
		// -O names every echo without a reply before the next one goes out.
		f.out, f.err = e.l.ExecContext(ctx, fromNS, "ping", "-n", "-O", "-i", "0.01", "-W", "1", "-c", strconv.Itoa(count), ip)
	}()
	return f
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// wait returns how many echoes went out and came back, and the sequence
// numbers ping reported as unanswered.
func (f *nmFlood) wait(t *testing.T) (sent, recv int, missed []string) {
	t.Helper()
	<-f.done
	m := pingSummary.FindStringSubmatch(f.out)
	if m == nil {
		t.Fatalf("ping %s from %s: no summary (err %v):\n%s", f.to, f.from, f.err, f.out)
	}
	sent, _ = strconv.Atoi(m[1])
	recv, _ = strconv.Atoi(m[2])
	for _, line := range strings.Split(f.out, "\n") {
		if strings.HasPrefix(line, "no answer yet") {
			missed = append(missed, strings.TrimPrefix(line, "no answer yet for "))
		}
	}
	return sent, recv, missed
}

// nmCheckFlood fails the test if any echo of the flood was lost.
func nmCheckFlood(t *testing.T, f *nmFlood, what string) {
	t.Helper()
	sent, recv, missed := f.wait(t)
	t.Logf("%s: %d echoes every 10 ms from %s to %s over %v: %d answered", what, sent, f.from, f.to,
		time.Since(f.started).Round(100*time.Millisecond), recv)
	if sent < f.count*9/10 || recv != sent {
		if len(missed) > 20 {
			missed = append(missed[:20], "...")
		}
		t.Errorf("%s: %d of %d echoes lost (unanswered: %v)", what, sent-recv, sent, missed)
	}
}

// nmPeersSince maps each peer of h to when its session came up.
func (e *env) nmPeersSince(h *lab.Host) map[string]time.Time {
	e.t.Helper()
	st, err := e.status(h)
	if err != nil {
		e.t.Fatal(err)
	}
	m := map[string]time.Time{}
	for _, p := range st.Peers {
		if p.State == "Established" {
			m[p.Address] = p.Since
		}
	}
	return m
}

// nmReachIn probes ip from ns with short echo waits until it answers and
// returns how long that took, so the probe's own wait does not hide how
// fast a route arrives.
func (e *env) nmReachIn(ns, ip string, d time.Duration) time.Duration {
	e.t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < d {
		if _, err = e.l.Exec(ns, "ping", "-c1", "-W0.1", "-n", "-q", ip); err == nil {
			return time.Since(start)
		}
	}
	e.t.Fatalf("%s unreachable from %s after %v: %v", ip, ns, d, err)
	return 0
}

// nmUnreachable checks that ip stays unreachable from ns for d.
func (e *env) nmUnreachable(ns, ip string, d time.Duration) error {
	for end := time.Now().Add(d); time.Now().Before(end); {
		if _, err := e.l.Exec(ns, "ping", "-c1", "-W0.3", "-n", "-q", ip); err == nil {
			return fmt.Errorf("%s answers from %s", ip, ns)
		}
	}
	return nil
}

// --- 1. BIRD interop ------------------------------------------------------

// nmBirdConf is BIRD 2 on a lab host. reflector: the tabby hosts are route
// reflector clients (mesh off); otherwise BIRD is a plain iBGP peer (mesh
// on). BIRD originates 192.168.77.0/24 (a blackhole: the address it serves,
// 192.168.77.1, is on its lo) and writes the routes it learns over BGP into
// its own host's kernel, so it can answer the containers. Only its own lab
// namespace is written.
func nmBirdConf(self *lab.Host, clients []*lab.Host, reflector bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `log stderr all;
router id %s;
protocol device { scan time 2; }
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
protocol static { ipv4; route 192.168.77.0/24 blackhole; }
template bgp tabby {
	local %s as 64512;
	direct;
	graceful restart on;
	connect retry time 1;
	ipv4 { import all; export all; gateway direct; };
`, self.IP, self.IP)
	if reflector {
		b.WriteString("\trr client;\n")
	}
	b.WriteString("}\n")
	for _, c := range clients {
		fmt.Fprintf(&b, "protocol bgp %s from tabby { neighbor %s as 64512; }\n", c.Name, c.IP)
	}
	return b.String()
}

// TestNodeMoreBIRDReflector: host3 runs Debian's BIRD 2 as the route
// reflector of host1 and host2 (mesh off). BIRD learns both hosts' blocks,
// containers reach each other across hosts through the reflected routes
// (next hop kept: the traffic does not pass host3), and BIRD's own prefix is
// in both hosts' kernels and carries traffic. Then the mesh goes on with
// BIRD a plain iBGP peer: same reachability, and every destination still
// has exactly one route. In between, host2's tabby-node is SIGKILLed and
// restarted under traffic behind the reflector: no echo lost.
func TestNodeMoreBIRDReflector(t *testing.T) {
	bird := testutil.Tool(t, "bird") // Debian package bird2
	e, _ := nmNewEnv(t, lab.Options{Hosts: 3})
	h1, h2, h3 := e.l.Hosts[0], e.l.Hosts[1], e.l.Hosts[2]
	tabbyHosts := []*lab.Host{h1, h2}
	e.pool("10.0.0.0/16")
	e.ctl(h1, "bgp", "config", "set", "--mesh", "off")
	e.ctl(h1, "bgp", "peer", "add", h3.IP, "--as", "64512")

	dir := t.TempDir()
	conf, sock := filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(conf, []byte(nmBirdConf(h3, tabbyHosts, true)), 0o644); err != nil {
		t.Fatal(err)
	}
	e.l.MustExec(h3.NS, "ip", "addr", "add", "192.168.77.1/32", "dev", "lo")
	birdc := func(args ...string) (string, error) {
		return e.l.Exec(h3.NS, append([]string{"birdc", "-s", sock}, args...)...)
	}
	e.l.Start(h3.NS, filepath.Join(e.l.Dir, "bird.log"), bird, "-f", "-c", conf, "-s", sock, "-P", filepath.Join(dir, "bird.pid"))
	eventually(t, 10*time.Second, func() error { _, err := birdc("show", "status"); return err })

	start := time.Now()
	procs := e.nmStartNodes(tabbyHosts, 1)
	t.Logf("both hosts Established with BIRD and settled %v after start", time.Since(start).Round(time.Millisecond))
	for _, h := range tabbyHosts {
		st, _ := e.status(h)
		if len(st.Peers) != 1 || st.Peers[0].Address != h3.IP || st.Peers[0].Kind != "global" {
			t.Fatalf("%s peers with the mesh off: %+v, want only BIRD (%s, global)", h.Name, st.Peers, h3.IP)
		}
	}
	c1, ip1 := e.nmCtr(h1, "c1", "", "")
	c2, ip2 := e.nmCtr(h2, "c2", "", "")

	// BIRD learned both blocks, each via its owner.
	eventually(t, 10*time.Second, func() error {
		out, err := birdc("show", "route", "protocol", "host1")
		if err != nil {
			return err
		}
		out2, err := birdc("show", "route", "protocol", "host2")
		if err != nil {
			return err
		}
		for _, want := range []struct {
			host *lab.Host
			out  string
		}{{h1, out}, {h2, out2}} {
			for _, b := range e.nmBlocks(want.host.Name) {
				if !strings.Contains(want.out, b) || !strings.Contains(want.out, "via "+want.host.IP) {
					return fmt.Errorf("BIRD has no %s via %s:\n%s", b, want.host.IP, want.out)
				}
			}
		}
		return nil
	})
	out, _ := birdc("show", "route")
	t.Logf("birdc show route:\n%s", out)

	// Across hosts through the reflected routes, both ways.
	e.pingEventually(c1, ip2, 10*time.Second)
	e.pingEventually(c2, ip1, 5*time.Second)
	if r := e.l.MustExec(c1, "ip", "route", "get", ip2); !strings.Contains(r, ip2) {
		t.Fatalf("route get: %s", r)
	}
	// The next hop is the owner, not the reflector.
	if r := e.l.MustExec(h1.NS, "ip", "route", "get", ip2); !strings.Contains(r, "via "+h2.IP) {
		t.Fatalf("host1 sends %s %q, want via %s (the reflector must keep the next hop)", ip2, r, h2.IP)
	}
	// BIRD's prefix is in both kernels, and carries traffic to BIRD's host.
	birdRoute := map[string]string{"192.168.77.0/24": "via " + h3.IP + " "}
	for _, h := range tabbyHosts {
		eventually(t, 10*time.Second, func() error { return e.nmCheckRoutes(h, e.nmWantRoutes(h, tabbyHosts, birdRoute)) })
	}
	e.pingEventually(c1, "192.168.77.1", 5*time.Second)
	e.pingEventually(c2, "192.168.77.1", 5*time.Second)

	// host2's daemon crashes and comes back behind the reflector: BIRD, as
	// graceful-restart helper, keeps host2's routes, and nothing is lost.
	flood := e.nmStartFlood(c1, ip2, 1200)
	time.Sleep(2 * time.Second)
	if err := procs[h2.Name].Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = procs[h2.Name].WaitTimeout(5 * time.Second)
	time.Sleep(2 * time.Second)
	restarted := time.Now()
	procs[h2.Name] = e.startNode(h2)
	e.waitEstablished(h2, 1, nmSessionWait)
	t.Logf("host2's tabby-node SIGKILLed and restarted: Established with BIRD and settled %v after the restart", time.Since(restarted).Round(time.Millisecond))
	nmCheckFlood(t, flood, "SIGKILL and restart of host2's tabby-node behind BIRD")
	for _, h := range tabbyHosts {
		eventually(t, 10*time.Second, func() error { return e.nmCheckRoutes(h, e.nmWantRoutes(h, tabbyHosts, birdRoute)) })
	}

	// Mesh on, BIRD a plain iBGP peer (not reflecting): nothing changes for
	// the containers, and every destination has one route.
	if err := os.WriteFile(conf, []byte(nmBirdConf(h3, tabbyHosts, false)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := birdc("configure"); err != nil || !strings.Contains(out, "onfigur") {
		t.Fatalf("birdc configure: %v\n%s", err, out)
	}
	e.ctl(h1, "bgp", "config", "set", "--mesh", "on")
	start = time.Now()
	for _, h := range tabbyHosts {
		e.waitEstablished(h, 2, nmSessionWait)
	}
	t.Logf("mesh on: two sessions (mesh + BIRD) Established on both hosts %v after the switch", time.Since(start).Round(time.Millisecond))
	for _, h := range tabbyHosts {
		st, _ := e.status(h)
		kinds := map[string]string{}
		for _, p := range st.Peers {
			kinds[p.Address] = p.Kind
		}
		other := h1
		if h == h1 {
			other = h2
		}
		if len(st.Peers) != 2 || kinds[h3.IP] != "global" || kinds[other.IP] != "mesh" {
			t.Fatalf("%s peers with the mesh on: %+v", h.Name, st.Peers)
		}
		eventually(t, 10*time.Second, func() error { return e.nmCheckRoutes(h, e.nmWantRoutes(h, tabbyHosts, birdRoute)) })
	}
	if err := e.l.Ping(c1, ip2); err != nil {
		t.Fatal(err)
	}
	if err := e.l.Ping(c2, "192.168.77.1"); err != nil {
		t.Fatal(err)
	}
	// A new block on host2 reaches host1 over the mesh and BIRD over its
	// own session.
	_, ip3 := e.nmCtr(h2, "c3", "", "IP=10.0.222.10")
	took := e.nmReachIn(c1, ip3, 5*time.Second)
	t.Logf("new block on host2 reachable from host1 %v after its ADD (mesh on)", took.Round(time.Millisecond))
	eventually(t, 5*time.Second, func() error {
		out, err := birdc("show", "route", "for", ip3)
		if err != nil || !strings.Contains(out, "via "+h2.IP) {
			return fmt.Errorf("BIRD route for %s: %v\n%s", ip3, err, out)
		}
		return nil
	})
}

// --- 2. restarts under traffic -------------------------------------------

// TestNodeMoreKillUnderTraffic: a container on host1 pings one on host2
// every 10 ms, directly routed and over VXLAN, while (1) host2's tabby-node is killed with SIGKILL and started
// again, then (2) host1's is stopped with SIGTERM and, while it is down,
// host3's only container goes away (and with it host3's block), then host1's
// daemon starts again. No echo is lost; each restarted daemon settles with
// every session back; every host ends with exactly the routes the blocks
// call for: host1 drops host3's old block (no stale route), none has a
// duplicate. The restarted daemons then serve a new block.
func TestNodeMoreKillUnderTraffic(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 3})
	hosts := e.l.Hosts
	h1, h2, h3 := hosts[0], hosts[1], hosts[2]
	e.pool("10.0.0.0/16")
	e.pool("10.1.0.0/16", "--vxlan")
	procs := e.nmStartNodes(hosts, 2)
	c1, _ := e.nmCtr(h1, "c1", "10.0.0.0/16", "")
	_, ip2 := e.nmCtr(h2, "c2", "10.0.0.0/16", "")
	c3, ip3 := e.nmCtr(h3, "c3", "10.0.0.0/16", "")
	v1, _ := e.nmCtr(h1, "v1", "10.1.0.0/16", "")
	_, ipV2 := e.nmCtr(h2, "v2", "10.1.0.0/16", "")
	e.pingEventually(c1, ip2, 5*time.Second)
	e.pingEventually(c3, ip2, 5*time.Second)
	e.pingEventually(c1, ip3, 5*time.Second)
	e.pingEventually(v1, ipV2, 5*time.Second)
	checkAll := func(d time.Duration) {
		t.Helper()
		for _, h := range hosts {
			want := e.nmWantRoutes(h, hosts, nil)
			eventually(t, d, func() error { return e.nmCheckRoutes(h, want) })
		}
	}
	checkAll(5 * time.Second)
	restart := func(h *lab.Host, sig syscall.Signal, whileDown func()) {
		t.Helper()
		flood := e.nmStartFlood(c1, ip2, 1200)
		vflood := e.nmStartFlood(v1, ipV2, 1200)
		time.Sleep(2 * time.Second)
		stopped := time.Now()
		if err := procs[h.Name].Kill(sig); err != nil {
			t.Fatal(err)
		}
		if err := procs[h.Name].WaitTimeout(10 * time.Second); err == nil && sig == syscall.SIGKILL {
			t.Fatalf("tabby-node exited cleanly after SIGKILL?")
		}
		t.Logf("%s's tabby-node down %v after %v", h.Name, time.Since(stopped).Round(time.Millisecond), sig)
		if whileDown != nil {
			whileDown()
		}
		time.Sleep(time.Until(stopped.Add(3 * time.Second)))
		restarted := time.Now()
		procs[h.Name] = e.startNode(h)
		for _, h := range hosts {
			e.waitEstablished(h, 2, nmSessionWait)
		}
		t.Logf("%s's tabby-node restarted %v after %v; every host settled with 2 sessions %v later",
			h.Name, restarted.Sub(stopped).Round(time.Millisecond), sig, time.Since(restarted).Round(time.Millisecond))
		checkAll(10 * time.Second)
		st, err := e.status(h)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Ready || !st.Settled || len(st.Errors) > 0 {
			t.Fatalf("%s after restart: ready %v settled %v errors %v", h.Name, st.Ready, st.Settled, st.Errors)
		}
		nmCheckFlood(t, flood, fmt.Sprintf("%v and restart of %s's tabby-node, direct", sig, h.Name))
		nmCheckFlood(t, vflood, fmt.Sprintf("%v and restart of %s's tabby-node, VXLAN", sig, h.Name))
	}

	restart(h2, syscall.SIGKILL, nil)
	direct := func(blocks []string) (out []string) {
		for _, b := range blocks {
			if strings.HasPrefix(b, "10.0.") {
				out = append(out, b)
			}
		}
		return out
	}
	old3 := direct(e.nmBlocks(h3.Name))
	restart(h1, syscall.SIGTERM, func() {
		// host3's block goes while host1 cannot see it go. A DEL keeps a
		// host's last block with room for its next workload; the
		// operator's release of the address returns the emptied block.
		e.ctl(h3, "ipam", "release", "--ip", ip3)
		conf := e.conf(h3, "", fmt.Sprintf(`,"profiles":[%q]`, nmProfile), "")
		if o := e.plugin(h3, "DEL", "c3", filepath.Join("/run/netns", c3), "eth0", "", conf); o.ExitCode != 0 {
			t.Fatalf("DEL c3: %s", o.Stdout)
		}
		if b := direct(e.nmBlocks(h3.Name)); len(b) != 0 {
			t.Fatalf("host3 still has blocks %v after its last container in the pool went", b)
		}
	})
	routes, _ := e.nmRoutes(h1)
	for _, b := range old3 {
		if len(routes[b]) > 0 {
			t.Fatalf("host1 kept a route to host3's released block: %q", routes[b])
		}
	}

	// The restarted daemons serve what comes next: new blocks on both.
	_, ip := e.nmCtr(h2, "late2", "10.0.0.0/16", "IP=10.0.222.10")
	took := e.nmReachIn(c1, ip, 5*time.Second)
	t.Logf("new block on host2 (restarted) reachable from host1 (restarted) %v after its ADD", took.Round(time.Millisecond))
	c4, _ := e.nmCtr(h1, "late1", "10.0.0.0/16", "IP=10.0.223.10")
	took = e.nmReachIn(c4, ip2, 5*time.Second)
	t.Logf("new block on host1 reaches host2 %v after its ADD", took.Round(time.Millisecond))
	checkAll(5 * time.Second)
}

// TestNodeMoreEtcdRestart: etcd stops (SIGTERM) for 5 s and comes back on
// the same data while a container on host1 pings one on host2 every 10 ms:
// no echo is lost and no BGP session drops; afterwards a container added on
// host2 in a new block is reachable from host1.
func TestNodeMoreEtcdRestart(t *testing.T) {
	e, etcd := nmNewEnv(t, lab.Options{Hosts: 2})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	e.pool("10.0.0.0/16")
	e.nmStartNodes(e.l.Hosts, 1)
	c1, _ := e.nmCtr(h1, "c1", "", "")
	_, ip2 := e.nmCtr(h2, "c2", "", "")
	e.pingEventually(c1, ip2, 5*time.Second)
	since := map[string]map[string]time.Time{}
	for _, h := range e.l.Hosts {
		since[h.Name] = e.nmPeersSince(h)
	}

	flood := e.nmStartFlood(c1, ip2, 1000)
	time.Sleep(2 * time.Second)
	if err := etcd.Stop(10 * time.Second); err != nil {
		t.Logf("etcd exit: %v", err)
	}
	stopped := time.Now()
	time.Sleep(5 * time.Second)
	for _, h := range e.l.Hosts {
		if _, err := e.status(h); err != nil {
			t.Errorf("%s's status socket while etcd is down: %v", h.Name, err)
		}
	}
	e.l.StartEtcd()
	t.Logf("etcd was down %v", time.Since(stopped).Round(time.Millisecond))
	nmCheckFlood(t, flood, "etcd stop and restart")
	for _, h := range e.l.Hosts {
		if now := e.nmPeersSince(h); fmt.Sprint(now) != fmt.Sprint(since[h.Name]) {
			t.Errorf("%s's BGP sessions changed across the etcd restart: %v, before %v", h.Name, now, since[h.Name])
		}
	}

	// A new container, in a new block, on host2 (its ADD waits for host2's
	// daemon to have its rules: the daemon must be following etcd again).
	start := time.Now()
	_, nsPath := e.l.AddContainer(h2, "late")
	conf := e.conf(h2, "", fmt.Sprintf(`,"profiles":[%q]`, nmProfile), "")
	var o testutil.Outcome
	tries := 0
	eventually(t, 20*time.Second, func() error {
		tries++
		o = e.plugin(h2, "ADD", "late", nsPath, "eth0", "IP=10.0.222.10", conf)
		if o.ExitCode != 0 {
			return fmt.Errorf("ADD after the etcd restart: exit %d: %s", o.ExitCode, o.Stdout)
		}
		return nil
	})
	ip := addrOf(t, o)
	added := time.Since(start)
	took := e.nmReachIn(c1, ip, 5*time.Second)
	t.Logf("after the etcd restart: ADD of a new block on host2 took %v (%d tries); reachable from host1 %v later",
		added.Round(time.Millisecond), tries, took.Round(time.Millisecond))
	for _, h := range e.l.Hosts {
		eventually(t, 10*time.Second, func() error { return e.nmCheckRoutes(h, e.nmWantRoutes(h, e.l.Hosts, nil)) })
	}
}

// TestNodeMoreRestartWhileEtcdDown: etcd is away when host1's tabby-node
// crashes and comes back (a host reboot during a datastore outage). The
// daemon must keep the kernel as it is until it knows better: a container
// on host1 pinging one on host2 every 10 ms loses nothing, from the crash,
// through the daemon running without etcd for longer than BGP's initial
// sync timeout (10 s), to etcd's return and the sessions coming back.
func TestNodeMoreRestartWhileEtcdDown(t *testing.T) {
	e, etcd := nmNewEnv(t, lab.Options{Hosts: 2})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	e.pool("10.0.0.0/16")
	procs := e.nmStartNodes(e.l.Hosts, 1)
	c1, _ := e.nmCtr(h1, "c1", "", "")
	_, ip2 := e.nmCtr(h2, "c2", "", "")
	e.pingEventually(c1, ip2, 5*time.Second)
	want := e.nmWantRoutes(h1, e.l.Hosts, nil)

	flood := e.nmStartFlood(c1, ip2, 2000)
	time.Sleep(2 * time.Second)
	if err := etcd.Stop(10 * time.Second); err != nil {
		t.Logf("etcd exit: %v", err)
	}
	if err := procs[h1.Name].Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = procs[h1.Name].WaitTimeout(5 * time.Second)
	procs[h1.Name] = e.startNode(h1)
	time.Sleep(12 * time.Second)
	if err := e.nmCheckRoutes(h1, want); err != nil {
		t.Errorf("host1's daemon, started without etcd, changed the kernel: %v", err)
	}
	etcdBack := time.Now()
	e.l.StartEtcd()
	var lost []string
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if err := e.nmCheckRoutes(h1, want); err != nil {
			lost = append(lost, fmt.Sprintf("+%v: %v", time.Since(etcdBack).Round(10*time.Millisecond), err))
		}
		if st, err := e.status(h1); err == nil && len(st.Peers) == 1 && st.Peers[0].State == "Established" && len(lost) > 0 {
			break
		}
	}
	if len(lost) > 0 {
		t.Errorf("host1's routes after etcd came back (%d checks failed), first: %s; last: %s", len(lost), lost[0], lost[len(lost)-1])
	}
	e.waitEstablished(h1, 1, nmSessionWait)
	e.waitEstablished(h2, 1, nmSessionWait)
	eventually(t, 10*time.Second, func() error { return e.nmCheckRoutes(h1, want) })
	nmCheckFlood(t, flood, "tabby-node crash and restart on host1 while etcd is down")
}

// TestNodeMoreWatchCompacted: host2's daemon loses etcd (its connections
// reset, new ones refused) while a pool is added and etcd compacts its
// history past what the daemon saw. When etcd is reachable again the
// daemon's watch cannot resume (compacted) and must read the prefix anew:
// the new pool's nat-outgoing reaches host2's kernel.
func TestNodeMoreWatchCompacted(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 2})
	h2 := e.l.Hosts[1]
	e.pool("10.0.0.0/16")
	e.nmStartNodes(e.l.Hosts, 1)
	natSet := func() string {
		out, _ := e.l.Exec(h2.NS, "ipset", "list", "tabby-nat-pools")
		return out
	}
	cut := []string{"iptables", "-I", "OUTPUT", "-p", "tcp", "-d", e.l.Hosts[0].Gateway, "--dport", "2379", "-j", "REJECT", "--reject-with", "tcp-reset"}
	e.l.MustExec(h2.NS, cut...)
	e.l.MustExec(h2.NS, "ss", "-K", "dst", e.l.Hosts[0].Gateway, "dport", "=", "2379")
	cutAt := time.Now()
	e.pool("10.7.0.0/16", "--nat-outgoing")
	cli := e.l.EtcdClient()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/tabby/v1/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if strings.Contains(natSet(), "10.7.0.0/16") {
		t.Fatalf("host2 saw the new pool while cut off from etcd?")
	}
	cut[1] = "-D"
	e.l.MustExec(h2.NS, cut...)
	healed := time.Now()
	eventually(t, 30*time.Second, func() error {
		if !strings.Contains(natSet(), "10.7.0.0/16") {
			return fmt.Errorf("host2's tabby-nat-pools after etcd came back:\n%s", natSet())
		}
		return nil
	})
	t.Logf("cut off %v; the pool added meanwhile (history compacted) reached host2's kernel %v after etcd was reachable again",
		healed.Sub(cutAt).Round(time.Millisecond), time.Since(healed).Round(time.Millisecond))
	log, _ := os.ReadFile(filepath.Join(e.l.Dir, "tabby-node-host2.log"))
	var lost []string
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "watch lost") {
			lost = append(lost, line)
		}
	}
	if len(lost) == 0 {
		t.Fatalf("host2's log shows no lost watch: the test did not exercise the resync")
	}
	t.Logf("host2: %d watches lost and resynced, first: %s", len(lost), lost[0])
}

// --- 3. nat-outgoing ------------------------------------------------------

// TestNodeMoreNATOutgoing: a container of a --nat-outgoing pool reaches the
// outside as its host's underlay address; container to container across
// hosts keeps the container's own address. A pool without nat-outgoing
// sends its own address out: the outside cannot answer it (no route back),
// and once the underlay routes the pool back to the host, the outside sees
// the container's address. Switching nat-outgoing on for that pool takes
// effect on the running container.
func TestNodeMoreNATOutgoing(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 2, Outside: true})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	e.pool("10.0.0.0/16", "--nat-outgoing")
	e.pool("10.9.0.0/16")
	e.nmStartNodes(e.l.Hosts, 1)
	e.l.ServeTCP(e.l.OutsideNS, 8080)
	c1, ip1 := e.nmCtr(h1, "c1", "10.0.0.0/16", "")
	c2, ip2 := e.nmCtr(h2, "c2", "10.0.0.0/16", "")
	d1, ipD := e.nmCtr(h1, "d1", "10.9.0.0/16", "")
	e.l.ServeTCP(c2, 8081)

	src := func(from, ip string, port int) func() (string, error) {
		return func() (string, error) { return e.l.TCPSourceIP(from, ip, port) }
	}
	expect := func(what string, f func() (string, error), want string) {
		t.Helper()
		eventually(t, 10*time.Second, func() error {
			got, err := f()
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			if got != want {
				return fmt.Errorf("%s: the server saw %s, want %s", what, got, want)
			}
			return nil
		})
		t.Logf("%s: the server saw %s", what, want)
	}
	expect("nat pool to the outside", src(c1, e.l.OutsideIP, 8080), h1.IP)
	expect("nat pool to a container on another host", src(c1, ip2, 8081), ip1)
	expect("non-nat pool to a nat-pool container on another host", src(d1, ip2, 8081), ipD)

	// Without nat-outgoing the packet leaves with the container's address,
	// which the outside cannot route back.
	if got, err := e.l.TCPSourceIP(d1, e.l.OutsideIP, 8080); err == nil {
		t.Fatalf("pool without nat-outgoing: the outside answered (saw %s); want no answer: nothing routes 10.9.0.0/16 back", got)
	}
	e.l.MustExec(e.l.Underlay, "ip", "route", "add", "10.9.0.0/16", "via", h1.IP)
	expect("non-nat pool to the outside, with a route back", src(d1, e.l.OutsideIP, 8080), ipD)

	// nat-outgoing switched on for the running pool.
	e.pool("10.9.0.0/16", "--nat-outgoing")
	expect("pool switched to nat-outgoing, to the outside", src(d1, e.l.OutsideIP, 8080), h1.IP)
	expect("nat pool still keeps its address between containers", src(d1, ip2, 8081), ipD)
	if r := e.l.MustExec(h1.NS, "iptables", "-t", "nat", "-S", "TABBY-POSTROUTING"); !strings.Contains(r, "MASQUERADE") {
		t.Fatalf("host1 nat rules:\n%s", r)
	}
}

// --- 4. IPIP honesty ------------------------------------------------------

// TestNodeMoreIPIPUnsupported: this kernel has no IPIP. `tabbyctl node
// status` says so, containers of an --ipip pool on different hosts are not
// pretended reachable (no route, no answer, the remote blocks listed as
// unserved), and a VXLAN pool works beside it.
func TestNodeMoreIPIPUnsupported(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 2})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	e.pool("10.5.0.0/16", "--ipip")
	e.pool("10.6.0.0/16", "--vxlan")
	e.nmStartNodes(e.l.Hosts, 1)
	if _, err := e.l.Exec(h1.NS, "ip", "link", "add", "nmprobe0", "type", "ipip", "remote", "192.0.2.1"); err == nil {
		e.l.MustExec(h1.NS, "ip", "link", "del", "nmprobe0")
		t.Skip("this kernel has IPIP")
	}
	for _, h := range e.l.Hosts {
		out := e.ctl(h, "node", "status", "--state-dir", e.stateDir(h))
		if !strings.Contains(out, "IPIP: not supported") {
			t.Fatalf("tabbyctl node status on %s does not say IPIP is unsupported:\n%s", h.Name, out)
		}
	}
	if out := e.ctl(h1, "node", "show"); strings.Contains(out, "true") {
		t.Fatalf("tabbyctl node show claims IPIP somewhere:\n%s", out)
	}
	i1, _ := e.nmCtr(h1, "i1", "10.5.0.0/16", "")
	_, ipI2 := e.nmCtr(h2, "i2", "10.5.0.0/16", "")
	v1, _ := e.nmCtr(h1, "v1", "10.6.0.0/16", "")
	_, ipV2 := e.nmCtr(h2, "v2", "10.6.0.0/16", "")

	// VXLAN works.
	took := e.nmReachIn(v1, ipV2, 10*time.Second)
	t.Logf("VXLAN pool across hosts: reachable %v after the ADD", took.Round(time.Millisecond))

	// IPIP: each host lists the other's IPIP block as unserved.
	var ipipBlocks = map[string][]string{}
	for _, h := range e.l.Hosts {
		for _, b := range e.nmBlocks(h.Name) {
			if strings.HasPrefix(b, "10.5.") {
				ipipBlocks[h.Name] = append(ipipBlocks[h.Name], b)
			}
		}
	}
	for _, pair := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
		h, other := pair[0], pair[1]
		eventually(t, 10*time.Second, func() error {
			st, err := e.status(h)
			if err != nil {
				return err
			}
			for _, b := range ipipBlocks[other.Name] {
				if !nmContains(st.Unserved, b) {
					return fmt.Errorf("%s: unserved %v lacks %s's IPIP block %s", h.Name, st.Unserved, other.Name, b)
				}
			}
			for _, u := range st.Unserved {
				if !strings.HasPrefix(u, "10.5.") {
					return fmt.Errorf("%s lists %s (not IPIP) as unserved", h.Name, u)
				}
			}
			return nil
		})
		out := e.ctl(h, "node", "status", "--state-dir", e.stateDir(h))
		if !strings.Contains(out, "unserved prefixes: ") || !strings.Contains(out, ipipBlocks[other.Name][0]) {
			t.Fatalf("tabbyctl node status on %s does not show the unserved IPIP block:\n%s", h.Name, out)
		}
		// No route of tabby's to the other host's IPIP block that would
		// pretend it works (not tunl0, not plain): only a blackhole, so its
		// packets die here instead of leaving by the default route.
		routes, err := e.nmRoutes(h)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range ipipBlocks[other.Name] {
			if r := routes[b]; len(r) != 1 || !strings.HasPrefix(r[0], "blackhole ") {
				t.Fatalf("%s's route to %s's unserved IPIP block %s: %q, want one blackhole", h.Name, other.Name, b, r)
			}
		}
	}
	if err := e.nmUnreachable(i1, ipI2, 2*time.Second); err != nil {
		t.Fatalf("IPIP pool without IPIP: %v", err)
	}
	// Still, the VXLAN pool keeps working.
	if err := e.l.Ping(v1, ipV2); err != nil {
		t.Fatal(err)
	}
	t.Logf("host1 status: %s", e.ctl(h1, "node", "status", "--state-dir", e.stateDir(h1)))
}

func nmContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// --- 5. metrics -----------------------------------------------------------

// TestNodeMoreMetrics: tabby-node with --metrics-addr serves Prometheus text
// inside its host's namespace (both hosts on 127.0.0.1:9099, each in its
// own namespace): sessions up, reconcile passes counting, routes programmed.
func TestNodeMoreMetrics(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 2})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	e.pool("10.0.0.0/16")
	e.nmStartNodes(e.l.Hosts, 1, "--metrics-addr", "127.0.0.1:9099")
	scrape := func(h *lab.Host) (map[string]float64, string, error) {
		out, err := e.l.Exec(h.NS, "curl", "-sS", "--max-time", "2", "-D", "-", "http://127.0.0.1:9099/metrics")
		if err != nil {
			return nil, out, err
		}
		m := map[string]float64{}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && strings.HasPrefix(f[0], "tabby_") {
				v, err := strconv.ParseFloat(f[1], 64)
				if err == nil {
					m[f[0]] = v
				}
			}
		}
		return m, out, nil
	}
	for _, h := range e.l.Hosts {
		m, out, err := scrape(h)
		if err != nil {
			t.Fatalf("scrape %s: %v", h.Name, err)
		}
		if !strings.Contains(out, "text/plain") || !strings.Contains(out, "# TYPE tabby_reconciles_total counter") ||
			!strings.Contains(out, "# TYPE tabby_bgp_peers_established gauge") {
			t.Fatalf("%s metrics are not Prometheus text with the tabby metrics:\n%s", h.Name, out)
		}
		if m["tabby_reconciles_total"] < 1 {
			t.Fatalf("%s: tabby_reconciles_total %v, want > 0", h.Name, m["tabby_reconciles_total"])
		}
		// The status says the session is Established (nmStartNodes waited
		// for it); the gauge must agree within a scrape or two.
		eventually(t, 5*time.Second, func() error {
			m, _, err := scrape(h)
			if err != nil {
				return err
			}
			if m["tabby_bgp_peers_established"] != 1 {
				return fmt.Errorf("%s: the status shows 1 session Established, tabby_bgp_peers_established is %v", h.Name, m["tabby_bgp_peers_established"])
			}
			return nil
		})
	}
	before, _, _ := scrape(h1)
	e.nmCtr(h2, "c2", "", "")
	eventually(t, 10*time.Second, func() error {
		m, _, err := scrape(h1)
		if err != nil {
			return err
		}
		if m["tabby_routes_programmed"] != 1 || m["tabby_reconciles_total"] <= before["tabby_reconciles_total"] {
			return fmt.Errorf("host1 after a block appeared on host2: routes %v (want 1), reconciles %v (before %v)",
				m["tabby_routes_programmed"], m["tabby_reconciles_total"], before["tabby_reconciles_total"])
		}
		return nil
	})
	m, _, _ := scrape(h1)
	t.Logf("host1: tabby_bgp_peers_established %v, tabby_reconciles_total %v, tabby_routes_programmed %v, tabby_reconcile_errors_total %v",
		m["tabby_bgp_peers_established"], m["tabby_reconciles_total"], m["tabby_routes_programmed"], m["tabby_reconcile_errors_total"])
	// Not reachable from the underlay: it listens on the namespace's loopback.
	if _, err := e.l.Exec(h2.NS, "curl", "-sS", "--max-time", "1", "http://"+h1.IP+":9099/metrics"); err == nil {
		t.Fatalf("host1's metrics answer on %s from host2; want loopback only", h1.IP)
	}
}

// nmMetric scrapes one tabby metric from h's daemon (--metrics-addr
// 127.0.0.1:9099), inside h's namespace.
func (e *env) nmMetric(h *lab.Host, name string) (float64, error) {
	out, err := e.l.Exec(h.NS, "curl", "-sS", "--max-time", "2", "http://127.0.0.1:9099/metrics")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s in the metrics", h.Name, name)
}

// nmCPU is a process's CPU time (user + system) from /proc.
func nmCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// nmIdle checks that h's daemon, with nothing changing, reconciles at most
// twice in 5 s and burns little CPU.
func (e *env) nmIdle(h *lab.Host, p *lab.Proc, what string) {
	e.t.Helper()
	r0, err := e.nmMetric(h, "tabby_reconciles_total")
	if err != nil {
		e.t.Fatal(err)
	}
	c0 := nmCPU(p.PID)
	time.Sleep(5 * time.Second)
	r1, err := e.nmMetric(h, "tabby_reconciles_total")
	if err != nil {
		e.t.Fatal(err)
	}
	cpu := nmCPU(p.PID) - c0
	e.t.Logf("%s, %s idle for 5 s: %v reconciles, %v CPU", what, h.Name, r1-r0, cpu)
	if r1-r0 > 2 || cpu > time.Second {
		e.t.Errorf("%s: %s's daemon is busy with nothing changing: %v reconciles and %v CPU in 5 s", what, h.Name, r1-r0, cpu)
	}
}

// TestNodeMoreIdleDaemon: a daemon with nothing to do stays idle, with
// direct and VXLAN pools, and still when an IPIP pool exists on this
// kernel without IPIP.
func TestNodeMoreIdleDaemon(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 2})
	h1 := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	e.pool("10.6.0.0/16", "--vxlan")
	procs := e.nmStartNodes(e.l.Hosts, 1, "--metrics-addr", "127.0.0.1:9099")
	e.nmCtr(h1, "c1", "10.0.0.0/16", "")
	e.nmCtr(e.l.Hosts[1], "c2", "10.6.0.0/16", "")
	time.Sleep(2 * time.Second)
	e.nmIdle(h1, procs[h1.Name], "direct and VXLAN pools")
	e.pool("10.5.0.0/16", "--ipip")
	time.Sleep(2 * time.Second)
	e.nmIdle(h1, procs[h1.Name], "plus an IPIP pool (no IPIP in this kernel)")
}

// --- found along the way --------------------------------------------------

// TestNodeMoreStatusFollowsSessions: `tabbyctl node status` (the status
// socket) and the metric tabby_bgp_peers_established must follow the BGP
// sessions.
// Two hosts with a pool but no container (so no route ever changes), and
// BGP refused until both daemons have registered and reconciled: once the
// session's TCP connection is up in the kernel, the status must say
// Established within 3 s, not at the next periodic reconcile (30 s later).
func TestNodeMoreStatusFollowsSessions(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 2})
	h1 := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	// The session may only come up once everything else has settled: BGP
	// is refused until both daemons have registered and reconciled.
	block := []string{"iptables", "-I", "INPUT", "-p", "tcp", "--dport", "179", "-j", "REJECT", "--reject-with", "tcp-reset"}
	for _, h := range e.l.Hosts {
		e.l.MustExec(h.NS, block...)
	}
	for _, h := range e.l.Hosts {
		e.startNode(h, "--metrics-addr", "127.0.0.1:9099")
	}
	time.Sleep(3 * time.Second)
	block[1] = "-D"
	for _, h := range e.l.Hosts {
		e.l.MustExec(h.NS, block...)
	}
	var up time.Time
	eventually(t, 20*time.Second, func() error {
		out, err := e.l.Exec(h1.NS, "ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("no BGP connection on host1 yet: %v", err)
		}
		up = time.Now()
		return nil
	})
	metric := func() string {
		out, _ := e.l.Exec(h1.NS, "curl", "-sS", "--max-time", "2", "http://127.0.0.1:9099/metrics")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "tabby_bgp_peers_established ") {
				return l
			}
		}
		return "(none)"
	}
	var status, gauge string
	err := lab.Eventually(3*time.Second, func() error {
		status, _ = e.ctlErr(h1, "node", "status", "--state-dir", e.stateDir(h1))
		gauge = metric()
		if !strings.Contains(status, "Established") || gauge != "tabby_bgp_peers_established 1" {
			return fmt.Errorf("not Established")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the BGP connection is up since %v, but tabbyctl node status says:\n%s\nand the metric: %s",
			time.Since(up).Round(time.Millisecond), status, gauge)
	}
	t.Logf("status and metric Established %v after the session's TCP connection was up", time.Since(up).Round(time.Millisecond))
}

// TestNodeMoreSameContainerIDOnTwoHosts: two hosts' runtimes happen to use
// the same container ID (`tabbyctl container add NAME` uses NAME as the
// ID, so two people adding "web" on two hosts do exactly this). The second
// ADD must not hand out the address the first host's container holds: that
// puts one address on two hosts, and the second host advertises it as a
// borrowed /32 that wins over the first host's block everywhere.
func TestNodeMoreSameContainerIDOnTwoHosts(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 3})
	h1, h2, h3 := e.l.Hosts[0], e.l.Hosts[1], e.l.Hosts[2]
	e.pool("10.0.0.0/16")
	e.nmStartNodes(e.l.Hosts, 2)
	_, ip1 := e.nmCtr(h1, "web", "", "")
	c3, _ := e.nmCtr(h3, "probe", "", "")
	e.pingEventually(c3, ip1, 5*time.Second)
	_, nsPath := e.l.AddContainer(h2, "web")
	conf := e.conf(h2, "", fmt.Sprintf(`,"profiles":[%q]`, nmProfile), "")
	o := e.plugin(h2, "ADD", "web", nsPath, "eth0", "", conf)
	if o.ExitCode != 0 {
		t.Logf("second ADD with the same container ID on another host refused: %s", o.Stdout)
		return
	}
	ip2 := addrOf(t, o)
	if ip2 != ip1 {
		return
	}
	t.Errorf("container ID \"web\" on %s got %s, the address of %s's container with the same ID", h2.Name, ip2, h1.Name)
	// What follows from it: host2 advertises the address as a borrowed /32,
	// which wins over host1's block on every other host.
	err := lab.Eventually(5*time.Second, func() error {
		r := e.l.MustExec(h3.NS, "ip", "route", "get", ip1)
		if !strings.Contains(r, "via "+h2.IP) {
			return fmt.Errorf("%s", strings.TrimSpace(r))
		}
		return nil
	})
	if err == nil {
		t.Errorf("%s now sends %s (host1's container) to host2", h3.Name, ip1)
	}
	// And host2's DEL releases the handle: the address host1's container
	// still uses is free again, and if it was the last of its block, the
	// block too (host1 stops advertising it).
	blocks := e.nmBlocks(h1.Name)
	e.plugin(h2, "DEL", "web", nsPath, "eth0", "", conf)
	t.Logf("after the DEL on host2, tabbyctl ipam show --ip %s:\n%s", ip1, e.ctl(h1, "ipam", "show", "--ip", ip1))
	if after := e.nmBlocks(h1.Name); len(after) != len(blocks) {
		t.Errorf("host2's DEL took host1's block away: host1's blocks %v, before %v", after, blocks)
	}
	time.Sleep(2 * time.Second)
	if err := e.l.Ping(c3, ip1); err != nil {
		t.Errorf("host1's container %s is unreachable from host3 after the DEL on host2: %v", ip1, err)
	}
}
