package e2e

// SIGKILL at random points of every CNI verb of both plugins, of tabby-node
// during ADD bursts and of tabby-docker under a dockerd's requests (project
// issue 16, Faults). "A random point" is a delay drawn uniformly from
// [0, 1.5 x the verb's p50), the p50 measured first in the same lab with
// the same concurrency, so kills land all over the verb and some after it.
// After a batch the runtime is played as containerd plays it: DEL again for
// every attachment whose ADD did not succeed (and for all, after killed
// DELs) until it succeeds, then CNI GC with the attachments it still
// knows; then etcd, the host's kernel and the live workloads are checked.
//
// TABBY_FAULT_TRIALS sets the trials per verb. By default the CNI verbs get
// 100 each and tabby-node and tabby-docker 25 kills each, which keeps
// these tests near a minute and a half in make test; the figures in
// docs/reliability-kill.md are from TABBY_FAULT_TRIALS=100.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// faultTrials is the number of kills per verb: TABBY_FAULT_TRIALS, else def.
func faultTrials(t *testing.T, def int) int {
	t.Helper()
	if v := os.Getenv("TABBY_FAULT_TRIALS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TABBY_FAULT_TRIALS=%q: want a positive number", v)
		}
		return n
	}
	return def
}

// killDelay is a random point of a verb whose p50 is p50.
func killDelay(p50 time.Duration) time.Duration {
	return time.Duration(rand.Int64N(int64(p50)*3/2 + 1))
}

func p50(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// killTally counts how the killed calls ended.
type killTally struct{ killed, finished, failed int }

func (k *killTally) add(o testutil.Outcome) {
	switch {
	case o.Killed:
		k.killed++
	case o.ExitCode == 0:
		k.finished++
	default:
		k.failed++
	}
}

func (k killTally) String() string {
	return fmt.Sprintf("%d killed, %d finished first, %d failed by themselves", k.killed, k.finished, k.failed)
}

// killLab is one host with n+w container namespaces for one plugin: the
// tabby plugin (with tabby-node enforcing profile P, which every workload
// has) or tabby-ipam called as ptp calls it. Containers 0..n-1 take the
// trials; n..n+w-1 measure the verbs' p50 at the trials' concurrency w.
type killLab struct {
	*env
	h        *lab.Host
	ipamOnly bool
	netName  string
	n, w     int
	ns       []string // container netns paths
	prev     [][]byte // each container's last ADD result
	peer     string   // tabby: a container in P that pings the live ones
	peerIP   string
}

func newKillLab(t *testing.T, ipamOnly bool) *killLab {
	e := newEnv(t, lab.Options{Hosts: 1})
	k := &killLab{env: e, h: e.l.Hosts[0], ipamOnly: ipamOnly, netName: "tabby-net", n: faultTrials(t, 100), w: 8}
	if ipamOnly {
		k.netName = "ptp-net"
	}
	e.pool("10.0.0.0/16")
	if !ipamOnly {
		e.ctl(k.h, "profile", "add", "P")
		e.startNode(k.h)
		e.waitReady(k.h)
		k.peer, _ = e.container(k.h, "peer", "TABBY_PROFILES=P")
		k.peerIP = e.endpoint(k.h, "cni", "peer").IPv4Nets[0]
		k.peerIP = strings.TrimSuffix(k.peerIP, "/32")
	}
	k.ns = make([]string, k.n+k.w)
	k.prev = make([][]byte, k.n+k.w)
	for i := range k.ns {
		_, k.ns[i] = e.l.AddContainer(k.h, fmt.Sprintf("k%d", i))
	}
	return k
}

func (k *killLab) cid(i int) string { return fmt.Sprintf("k%d", i) }

// conf is the network configuration; gc makes it a GC's with valid as
// the valid attachments (the peer's always among them).
func (k *killLab) conf(gc bool, valid []int, prev []byte) []byte {
	var c []byte
	if k.ipamOnly {
		c = fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":%q,"type":"ptp","ipam":{"type":"tabby-ipam",
		  "etcd_endpoints":%q,"nodename":%q,"state_dir":%q,"log_file":%q}}`,
			k.netName, k.l.EtcdURL, k.h.Name, k.stateDir(k.h), k.CNILog(k.h))
	} else {
		c = k.env.conf(k.h, "", `,"profiles":["P"]`, "")
	}
	var m map[string]any
	if err := json.Unmarshal(c, &m); err != nil {
		k.t.Fatal(err)
	}
	if gc {
		att := []map[string]string{}
		if k.peer != "" {
			att = append(att, map[string]string{"containerID": "peer", "ifname": "eth0"})
		}
		for _, i := range valid {
			att = append(att, map[string]string{"containerID": k.cid(i), "ifname": "eth0"})
		}
		m["cni.dev/valid-attachments"] = att
	}
	if prev != nil {
		var p any
		if err := json.Unmarshal(prev, &p); err != nil {
			k.t.Fatalf("prevResult %s: %v", prev, err)
		}
		m["prevResult"] = p
	}
	b, _ := json.Marshal(m)
	return b
}

// call runs verb for container i (i < 0: GC with valid), SIGKILLed after
// kill when kill > 0.
func (k *killLab) call(verb string, i int, valid []int, kill time.Duration) testutil.Outcome {
	c := testutil.Call{Command: verb, IfName: "eth0", KillAfter: kill, Timeout: time.Minute}
	switch {
	case verb == "GC":
		c.Conf = k.conf(true, valid, nil)
	case verb == "CHECK":
		c.ContainerID, c.Netns, c.Conf = k.cid(i), k.ns[i], k.conf(false, nil, k.prev[i])
	default:
		c.ContainerID, c.Netns, c.Conf = k.cid(i), k.ns[i], k.conf(false, nil, nil)
	}
	if !k.ipamOnly {
		return k.Plugin(k.h, c)
	}
	c.Path = k.CNIPath()
	c.Wrap = []string{"ip", "netns", "exec", k.h.NS}
	return testutil.Run(filepath.Join(k.bin, "tabby-ipam"), c)
}

// each runs f(i) for every i in idx, w at a time, and returns what each
// returned.
func (k *killLab) each(idx []int, f func(i int) testutil.Outcome) map[int]testutil.Outcome {
	out := map[int]testutil.Outcome{}
	var mu sync.Mutex
	sem := make(chan struct{}, k.w)
	var wg sync.WaitGroup
	for _, i := range idx {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			o := f(i)
			mu.Lock()
			out[i] = o
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func span(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

// mustAll runs verb unkilled for every i in idx (ADD keeps the result) and
// returns the verb's p50.
func (k *killLab) mustAll(verb string, idx []int) time.Duration {
	k.t.Helper()
	outs := k.each(idx, func(i int) testutil.Outcome { return k.call(verb, i, nil, 0) })
	var took []time.Duration
	for _, i := range idx {
		o := outs[i]
		if o.ExitCode != 0 {
			k.t.Fatalf("%s %s: exit %d: %s %s", verb, k.cid(i), o.ExitCode, o.Stdout, o.Stderr)
		}
		if verb == "ADD" {
			k.prev[i] = o.Stdout
		}
		took = append(took, o.Took)
	}
	return p50(took)
}

// killAll runs verb for every i in idx, each SIGKILLed at a random point.
func (k *killLab) killAll(verb string, idx []int, p time.Duration) (map[int]testutil.Outcome, killTally) {
	outs := k.each(idx, func(i int) testutil.Outcome { return k.call(verb, i, nil, killDelay(p)) })
	var tally killTally
	for _, i := range idx {
		tally.add(outs[i])
		if verb == "ADD" && outs[i].ExitCode == 0 {
			k.prev[i] = outs[i].Stdout
		}
	}
	return outs, tally
}

// recover is the runtime after a batch: DEL, until it succeeds, for every
// container in del; then GC with live as the valid attachments.
func (k *killLab) recover(del, live []int) {
	k.t.Helper()
	outs := k.each(del, func(i int) testutil.Outcome {
		var o testutil.Outcome
		for range 5 {
			if o = k.call("DEL", i, nil, 0); o.ExitCode == 0 {
				break
			}
		}
		return o
	})
	for _, i := range del {
		if o := outs[i]; o.ExitCode != 0 {
			k.t.Fatalf("DEL %s after a killed verb fails 5 times: %d %s", k.cid(i), o.ErrCode, o.ErrMsg)
		}
	}
	if o := k.call("GC", -1, live, 0); o.ExitCode != 0 {
		k.t.Fatalf("GC: %d %s %s", o.ErrCode, o.Stdout, o.Stderr)
	}
}

// assertLive checks that exactly the containers in live are attached and
// that nothing is left of any other: in etcd (endpoints, tag and member
// index, handles, unique addresses that their handle owns, ipam check),
// on the host (tby veths, /32 routes, iptables rules and ipset members,
// once tabby-node has caught up) and, for the live ones, their profile's
// rules in force: the peer in P reaches each.
func (k *killLab) assertLive(what string, live []int) {
	k.t.Helper()
	if err := lab.Eventually(15*time.Second, func() error { return k.checkLive(live) }); err != nil {
		k.t.Fatalf("%s: %v", what, err)
	}
}

func (k *killLab) checkLive(live []int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := map[string]bool{}
	for _, i := range live {
		want[k.cid(i)] = true
	}
	if k.peer != "" {
		want["peer"] = true
	}
	// Handles: exactly the live ones, each address once, owned by it.
	handles, err := store.ListJSON[model.Handle](ctx, k.kv, model.HandlePrefix)
	if err != nil {
		return err
	}
	seenIP := map[string]string{}
	var liveIPs []string
	for _, h := range handles {
		cid := strings.TrimPrefix(h.ID, k.netName+".")
		if !want[cid] {
			return fmt.Errorf("handle %s of a gone container is left (addresses %v)", h.ID, h.IPs)
		}
		for _, ip := range h.IPs {
			if other, dup := seenIP[ip]; dup {
				return fmt.Errorf("address %s held by both %s and %s", ip, other, h.ID)
			}
			seenIP[ip] = h.ID
			al, _, err := ipam.Lookup(ctx, k.kv, net.ParseIP(ip))
			if err != nil || al == nil || al.Handle != h.ID {
				return fmt.Errorf("address %s of handle %s: allocation %+v (%v)", ip, h.ID, al, err)
			}
			liveIPs = append(liveIPs, ip)
		}
	}
	if len(handles) != len(want) {
		return fmt.Errorf("%d handles, want %d", len(handles), len(want))
	}
	// tabbyctl ipam check, as an operator runs it.
	out, _ := k.ctlErr(k.h, "-o", "json", "ipam", "check")
	var rep ipam.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return fmt.Errorf("tabbyctl ipam check: %q: %v", out, err)
	}
	for _, p := range rep.Problems {
		// Under ptp nobody writes endpoint records: a live allocation
		// without one is what it should be.
		if k.ipamOnly && p.Kind == ipam.LeakNoEndpoint && want[strings.TrimPrefix(p.Handle, k.netName+".")] {
			continue
		}
		return fmt.Errorf("tabbyctl ipam check: %+v", p)
	}
	if rep.Allocations != len(liveIPs) {
		return fmt.Errorf("ipam check counts %d allocations, the live handles hold %d", rep.Allocations, len(liveIPs))
	}
	if k.ipamOnly {
		return nil
	}
	// Endpoint records and their indexes.
	eps, err := store.ListJSON[model.Endpoint](ctx, k.kv, model.HostWorkloadPrefix(k.h.Name))
	if err != nil {
		return err
	}
	veths := map[string]bool{}
	for _, ep := range eps {
		if !want[ep.ContainerID] {
			return fmt.Errorf("endpoint %s of a gone container is left", ep.Key())
		}
		veths[ep.HostInterface] = true
	}
	if len(eps) != len(want) {
		return fmt.Errorf("%d endpoint records, want %d", len(eps), len(want))
	}
	for _, p := range []string{model.TagMembersPrefix("P"), model.MemberPrefix} {
		if n := len(k.keys(p)); n != len(want) {
			return fmt.Errorf("%d index entries under %s, want %d", n, p, len(want))
		}
	}
	// The host: veths and routes.
	links, err := k.l.Exec(k.h.NS, "ip", "-o", "link", "show")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "tby") {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if !veths[name] {
				return fmt.Errorf("veth %s of no live endpoint on the host", name)
			}
		}
	}
	if n := strings.Count(links, ": tby"); n != len(veths) {
		return fmt.Errorf("%d tby veths on the host, want %d", n, len(veths))
	}
	routes, err := k.l.Exec(k.h.NS, "ip", "-4", "route", "show", "proto", "80", "scope", "link")
	if err != nil {
		return err
	}
	var routed []string
	for _, l := range strings.Split(strings.TrimSpace(routes), "\n") {
		if f := strings.Fields(l); len(f) >= 3 {
			if !veths[f[2]] {
				return fmt.Errorf("route %q to no live endpoint", l)
			}
			routed = append(routed, f[0])
		}
	}
	sort.Strings(routed)
	sort.Strings(liveIPs)
	if !slices.Equal(routed, liveIPs) {
		return fmt.Errorf("workload routes to %v, live addresses %v", routed, liveIPs)
	}
	// tabby-node's packet filter: the policy group's set holds exactly the
	// live (address, veth) pairs, profile P's tag set exactly their
	// addresses; a packet of any other interface is dropped.
	sets, err := k.l.Exec(k.h.NS, "ipset", "list")
	if err != nil {
		return err
	}
	var pairs, members, wantPairs []string
	for _, l := range strings.Split(sets, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "10.0.") {
			continue
		}
		if ip, iface, ok := strings.Cut(l, ","); ok {
			pairs = append(pairs, strings.TrimSuffix(ip, "/32")+","+iface)
		} else if ip := strings.TrimSuffix(l, "/32"); net.ParseIP(ip) != nil {
			members = append(members, ip) // not a pool's CIDR
		}
	}
	for _, ep := range eps {
		for _, n := range ep.IPv4Nets {
			wantPairs = append(wantPairs, strings.TrimSuffix(n, "/32")+","+ep.HostInterface)
		}
	}
	sort.Strings(pairs)
	sort.Strings(members)
	sort.Strings(wantPairs)
	if !slices.Equal(pairs, wantPairs) {
		return fmt.Errorf("policy group set members %v, live endpoints %v", pairs, wantPairs)
	}
	if !slices.Equal(members, liveIPs) {
		return fmt.Errorf("tag set members %v, live addresses %v", members, liveIPs)
	}
	// In force: the peer reaches every live workload.
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, ip := range liveIPs {
		if ip == k.peerIP {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := k.l.Ping(k.peer, ip); err != nil {
				mu.Lock()
				bad = append(bad, ip)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		return fmt.Errorf("live workloads the peer in their profile does not reach: %v", bad)
	}
	return nil
}

// ok lists the indexes whose outcome succeeded, and the others.
func split(idx []int, outs map[int]testutil.Outcome) (ok, failed []int) {
	for _, i := range idx {
		if outs[i].ExitCode == 0 {
			ok = append(ok, i)
		} else {
			failed = append(failed, i)
		}
	}
	return ok, failed
}

// runKillTrials kills every verb of the plugin at random points, in turn:
// ADD (the runtime DELs the failed ones and GCs), CHECK (a CHECK after it
// passes, nothing changed), DEL (the runtime DELs again and GCs: nothing
// left), GC (a GC after it, with the same attachments, removes exactly the
// gone ones).
func runKillTrials(t *testing.T, ipamOnly bool) {
	k := newKillLab(t, ipamOnly)
	trials, cal := span(0, k.n), span(k.n, k.n+k.w)
	start := time.Now()

	// ADD.
	pAdd := k.mustAll("ADD", cal)
	pDel := k.mustAll("DEL", cal)
	outs, tally := k.killAll("ADD", trials, pAdd)
	ok, failed := split(trials, outs)
	t.Logf("ADD (p50 %v at %d concurrent): %v", pAdd.Round(time.Microsecond), k.w, tally)
	k.recover(failed, ok)
	k.assertLive("after killed ADDs, the runtime's DELs and GC", ok)
	k.mustAll("ADD", failed) // the runtime's next attempt works

	// CHECK, on every container attached.
	k.mustAll("ADD", cal)
	pCheck := k.mustAll("CHECK", cal)
	_, tally = k.killAll("CHECK", trials, pCheck)
	t.Logf("CHECK (p50 %v): %v", pCheck.Round(time.Microsecond), tally)
	k.mustAll("CHECK", trials)
	k.recover(cal, trials)
	k.assertLive("after killed CHECKs", trials)

	// DEL.
	outs, tally = k.killAll("DEL", trials, pDel)
	t.Logf("DEL (p50 %v): %v", pDel.Round(time.Microsecond), tally)
	k.recover(trials, []int{})
	k.assertLive("after killed DELs, the runtime's DELs and GC", nil)

	// GC: each trial drops one more container from the valid attachments.
	all := span(0, k.n+k.w)
	k.mustAll("ADD", all)
	var took []time.Duration
	for j := range k.w {
		o := k.call("GC", -1, span(j+1, k.n+k.w), 0)
		if o.ExitCode != 0 {
			t.Fatalf("GC: %s", o.Stdout)
		}
		took = append(took, o.Took)
	}
	pGC := p50(took)
	tally = killTally{}
	valid := func(j int) []int { return span(k.w+j+1, k.n+k.w) }
	for j := range k.n {
		tally.add(k.call("GC", -1, valid(j), killDelay(pGC)))
		if j%25 == 24 || j == k.n-1 {
			k.recover(nil, valid(j))
			k.assertLive(fmt.Sprintf("after %d killed GCs and one GC to finish", j+1), valid(j))
		}
	}
	t.Logf("GC (p50 %v): %v", pGC.Round(time.Microsecond), tally)
	t.Logf("%d trials per verb in %v", k.n, time.Since(start).Round(time.Millisecond))
}

// TestKillTabbyVerbs: SIGKILL at random points of the tabby plugin's ADD,
// CHECK, DEL and GC, tabby-node enforcing profile P on the host.
func TestKillTabbyVerbs(t *testing.T) { runKillTrials(t, false) }

// TestKillTabbyIPAMVerbs: the same for tabby-ipam, called as ptp calls it
// (ptp's netconf on stdin, in the host's namespace).
func TestKillTabbyIPAMVerbs(t *testing.T) { runKillTrials(t, true) }

// TestKillNodeDuringADDs: tabby-node SIGKILLed at a random point of a burst
// of ADDs, once per trial, then started again. Each ADD either succeeds
// with its rules in force (a container in its profile reaches it) or fails
// with code 11 and leaves nothing (no record, no address, no interface);
// containers outside the profile probe every address all along and never
// get an answer: no interface ever forwards without its rules. The failed
// ones the runtime DELs; every round ends with DEL of all.
func TestKillNodeDuringADDs(t *testing.T) {
	rounds := faultTrials(t, 25)
	e := newEnv(t, lab.Options{Hosts: 1})
	const burst = 4
	s := e.isolated(burst, "nk", "10.0.6")
	h := s.h
	node := s.node
	add := func(round, i int) testutil.Outcome {
		return e.plugin(h, "ADD", fmt.Sprintf("nk%d-%d", round, i), s.paths[i], "eth0", fmt.Sprintf("IP=%s", s.ips[i]), s.conf)
	}
	del := func(round, i int) {
		t.Helper()
		if o := e.plugin(h, "DEL", fmt.Sprintf("nk%d-%d", round, i), s.paths[i], "eth0", "", s.conf); o.ExitCode != 0 {
			t.Fatalf("DEL %d-%d: %s", round, i, o.ErrMsg)
		}
	}
	// The ADD's p50 in a burst with the daemon up.
	var took []time.Duration
	for r := range 3 {
		outs := make([]testutil.Outcome, burst)
		var wg sync.WaitGroup
		for i := range burst {
			wg.Go(func() { outs[i] = add(-1-r, i) })
		}
		wg.Wait()
		for i, o := range outs {
			if o.ExitCode != 0 {
				t.Fatalf("ADD with tabby-node up: %s", o.ErrMsg)
			}
			took = append(took, o.Took)
			del(-1-r, i)
		}
	}
	pAdd := p50(took)
	succeeded, failed := 0, 0
	start := time.Now()
	for r := range rounds {
		outs := make([]testutil.Outcome, burst)
		var wg sync.WaitGroup
		for i := range burst {
			wg.Go(func() { outs[i] = add(r, i) })
		}
		time.Sleep(killDelay(pAdd))
		if err := node.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		_ = node.WaitTimeout(10 * time.Second)
		for i, o := range outs {
			cid := fmt.Sprintf("nk%d-%d", r, i)
			if o.ExitCode == 0 {
				succeeded++
				if err := e.l.Ping(s.inside, s.ips[i]); err != nil {
					t.Fatalf("round %d: ADD %s succeeded but its profile does not reach it: %v", r, cid, err)
				}
				continue
			}
			failed++
			if cnierr.Code(o.ErrCode) != cnierr.TryAgain {
				t.Fatalf("round %d: ADD %s failed with code %d, want 11: %s", r, cid, o.ErrCode, o.ErrMsg)
			}
			if k := e.keys(model.HostWorkloadPrefix(h.Name) + "cni/" + cid + "/"); len(k) != 0 {
				t.Fatalf("round %d: failed ADD %s left its endpoint record", r, cid)
			}
			if k := e.keys(model.HandlePrefix + "tabby-net/" + cid); len(k) != 0 {
				t.Fatalf("round %d: failed ADD %s left its address", r, cid)
			}
			if out, _ := e.l.Exec(filepath.Base(s.paths[i]), "ip", "-o", "link", "show", "eth0"); strings.Contains(out, "eth0") {
				t.Fatalf("round %d: failed ADD %s left its interface", r, cid)
			}
		}
		for i := range burst {
			del(r, i) // the runtime: DEL the failed ones, and the rest at teardown
		}
		node = e.startNode(h)
		e.waitReady(h)
	}
	t.Logf("tabby-node SIGKILLed %d times during bursts of %d ADDs (ADD p50 %v): %d ADDs succeeded with their rules in force, %d failed with code 11 and left nothing; %v",
		rounds, burst, pAdd.Round(time.Microsecond), succeeded, failed, time.Since(start).Round(time.Millisecond))
	s.noAnswers(t)
	e.Eventually(10*time.Second, func() error {
		out, err := e.l.Exec(h.NS, "ipset", "list")
		if err != nil {
			return err
		}
		if strings.Contains(out, "\n10.0.6.") {
			return fmt.Errorf("set members of the burst's addresses left after every DEL:\n%s", out)
		}
		return nil
	})
}
