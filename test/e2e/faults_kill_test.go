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
// TABBY_FAULT_TRIALS sets the kills per verb and per daemon (default 100,
// about 95 s for all of them here; fewer for a quick run).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
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
// trials, w at a time; n..n+w-1 measure GC's p50.
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
	outsider string // tabby: a container in profile O, which P never admits
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
		e.ctl(k.h, "profile", "add", "O")
		k.outsider, _ = e.container(k.h, "outsider", "TABBY_PROFILES=O")
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
			att = append(att, map[string]string{"containerID": "peer", "ifname": "eth0"},
				map[string]string{"containerID": "outsider", "ifname": "eth0"})
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
// rules in force: the peer in P reaches each, the outsider in O does not.
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
		want["peer"], want["outsider"] = true, true
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
	if n := len(k.keys(model.TagMembersPrefix("P"))); n != len(want)-1 { // all but the outsider
		return fmt.Errorf("%d members of tag P, want %d", n, len(want)-1)
	}
	if n := len(k.keys(model.MemberPrefix)); n != len(want) {
		return fmt.Errorf("%d member index entries, want %d", n, len(want))
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
	// In force: the peer reaches every live workload, the outsider none
	// (three of them tried).
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	tried := 0
	for _, ip := range liveIPs {
		if ip == k.peerIP || ip == k.outsiderIP(ctx) {
			continue
		}
		if tried < 3 {
			tried++
			wg.Go(func() {
				if err := k.l.Ping(k.outsider, ip); err == nil {
					mu.Lock()
					bad = append(bad, ip+" (answers the outsider)")
					mu.Unlock()
				}
			})
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
		return fmt.Errorf("live workloads whose profile is not in force (the peer in it does not reach them, or the outsider does): %v", bad)
	}
	return nil
}

// outsiderIP is the outsider's address.
func (k *killLab) outsiderIP(ctx context.Context) string {
	var ep model.Endpoint
	if _, err := store.GetJSON(ctx, k.kv, model.EndpointKey(k.h.Name, "cni", "outsider", "eth0"), &ep); err != nil || len(ep.IPv4Nets) == 0 {
		return ""
	}
	return strings.TrimSuffix(ep.IPv4Nets[0], "/32")
}

// split lists the indexes whose outcome succeeded, and the others.
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
	trials := span(0, k.n)
	start := time.Now()

	// ADD. The p50s come from the same calls unkilled first: the same
	// containers, concurrency and host.
	pAdd := k.mustAll("ADD", trials)
	pDel := k.mustAll("DEL", trials)
	outs, tally := k.killAll("ADD", trials, pAdd)
	ok, failed := split(trials, outs)
	t.Logf("ADD (p50 %v at %d concurrent): %v", pAdd.Round(time.Microsecond), k.w, tally)
	k.recover(failed, ok)
	k.assertLive("after killed ADDs, the runtime's DELs and GC", ok)
	k.mustAll("ADD", failed) // the runtime's next attempt works

	// CHECK, on every container attached.
	pCheck := k.mustAll("CHECK", trials)
	_, tally = k.killAll("CHECK", trials, pCheck)
	t.Logf("CHECK (p50 %v): %v", pCheck.Round(time.Microsecond), tally)
	k.mustAll("CHECK", trials)
	k.recover(nil, trials)
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
	rounds := faultTrials(t, 100)
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

// dockerd plays dockerd against tabby-docker's plugin socket: the calls a
// `docker network create --driver tabby --ipam-driver tabby --subnet S -o
// tabby.profile=P`, `docker run` and their removal make, in order.
type dockerd struct {
	c    *http.Client
	sock string
	// The networks dockerd has (from its CreateNetwork call until their
	// removal), which its Engine API answers for.
	mu    sync.Mutex
	known map[string]bool
}

func newDockerd(sock string) *dockerd {
	return &dockerd{sock: sock, known: map[string]bool{}, c: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}, DisableKeepAlives: true}}}
}

func (d *dockerd) know(id string, yes bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if yes {
		d.known[id] = true
	} else {
		delete(d.known, id)
	}
}

// serveAPI answers the one Engine API call tabby-docker makes (GET
// /networks/<id>) on a unix socket: the test process serves it, no network
// is involved.
func (d *dockerd) serveAPI(t *testing.T, path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/networks/")
		d.mu.Lock()
		ok := d.known[id]
		d.mu.Unlock()
		if !ok {
			http.Error(w, `{"message":"network `+id+` not found"}`, http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"Name":%q,"Id":%q}`, id, id)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// call posts req to the plugin's path; an Err in the answer is an error.
func (d *dockerd) call(path string, req any, resp any) error {
	b, _ := json.Marshal(req)
	res, err := d.c.Post("http://plugin/"+path, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	var e struct{ Err string }
	if json.Unmarshal(body, &e) == nil && e.Err != "" {
		return fmt.Errorf("%s: %s", path, e.Err)
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d: %s", path, res.StatusCode, body)
	}
	if resp != nil {
		return json.Unmarshal(body, resp)
	}
	return nil
}

// dockerLife is one network with one container, as far as dockerd got.
type dockerLife struct {
	subnet, netID, epID string
	poolID, addr        string
	// stage is the call that failed: dockerd's rollback depends on it.
	stage string
}

// up creates the network and starts the container on it.
func (d *dockerd) up(l *dockerLife) error {
	var pool struct{ PoolID string }
	l.stage = "RequestPool"
	if err := d.call("IpamDriver.RequestPool", map[string]any{"AddressSpace": "tabby-local", "Pool": l.subnet, "Options": map[string]string{}}, &pool); err != nil {
		return err
	}
	l.poolID = pool.PoolID
	ipv4 := []map[string]string{{"AddressSpace": "tabby-local", "Pool": l.subnet, "Gateway": "0.0.0.0/0"}}
	l.stage = "CreateNetwork"
	d.know(l.netID, true)
	if err := d.call("NetworkDriver.CreateNetwork", map[string]any{"NetworkID": l.netID, "IPv4Data": ipv4,
		"Options": map[string]any{"com.docker.network.generic": map[string]string{"tabby.profile": "P"}}}, nil); err != nil {
		d.know(l.netID, false)
		return err
	}
	var addr struct{ Address string }
	l.stage = "container"
	if err := d.call("IpamDriver.RequestAddress", map[string]any{"PoolID": l.poolID, "Options": map[string]string{}}, &addr); err != nil {
		return err
	}
	l.addr = addr.Address
	if err := d.call("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": l.netID, "EndpointID": l.epID,
		"Interface": map[string]string{"Address": l.addr}, "Options": map[string]any{}}, nil); err != nil {
		return err
	}
	if err := d.call("NetworkDriver.Join", map[string]any{"NetworkID": l.netID, "EndpointID": l.epID,
		"SandboxKey": "/var/run/docker/netns/" + l.epID, "Options": map[string]any{}}, nil); err != nil {
		return err
	}
	l.stage = "down"
	return nil
}

// down removes what up made, in dockerd's order, as the container's and
// the network's removal do; it is also dockerd's roll-back after a failed
// step, for what dockerd knows of: libnetwork calls no DeleteNetwork when
// CreateNetwork failed (only ReleasePool), and a pool or address whose
// request got no answer it never learns.
func (d *dockerd) down(l *dockerLife) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if l.stage == "container" || l.stage == "down" {
		ep := map[string]any{"NetworkID": l.netID, "EndpointID": l.epID}
		add(d.call("NetworkDriver.Leave", ep, nil))
		add(d.call("NetworkDriver.DeleteEndpoint", ep, nil))
		if l.addr != "" {
			ip, _, _ := strings.Cut(l.addr, "/")
			add(d.call("IpamDriver.ReleaseAddress", map[string]any{"PoolID": l.poolID, "Address": ip}, nil))
		}
		err := d.call("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": l.netID}, nil)
		if err == nil {
			d.know(l.netID, false)
		}
		add(err)
	}
	if l.poolID != "" {
		add(d.call("IpamDriver.ReleasePool", map[string]any{"PoolID": l.poolID}, nil))
	}
	return errors.Join(errs...)
}

// TestKillTabbyDocker: tabby-docker SIGKILLed at a random point while
// dockerd-like requests run (three networks, each with a container, made
// and removed at once), then started again; dockerd rolls back what it
// knows of, as libnetwork does. Afterwards nothing is left: no handle,
// block, endpoint or veth at once; no pool, profile, owner or network
// record once tabby-docker's sweep (--orphan-grace) has removed what a kill
// after a commit hid from dockerd.
func TestKillTabbyDocker(t *testing.T) {
	rounds := faultTrials(t, 100)
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	sock := filepath.Join(e.Dir, "docker-plugins", "tabby.sock")
	d := newDockerd(sock)
	api := filepath.Join(e.Dir, "dockerd.sock")
	d.serveAPI(t, api)
	start := func() *lab.Proc {
		t.Helper()
		p := e.l.Start(h.NS, filepath.Join(e.l.Dir, "tabby-docker.log"), testutil.Bin(t, "tabby-docker"),
			"--socket", sock, "--etcd-endpoints", e.l.EtcdURL, "--nodename", h.Name, "--state-dir", e.stateDir(h),
			"--docker-host", "unix://"+api, "--orphan-grace", "300ms", "--log-level", "debug")
		e.Eventually(10*time.Second, func() error {
			if p.Exited() {
				return lab.GiveUp(fmt.Errorf("tabby-docker exited: %v", p.Wait()))
			}
			c, err := net.Dial("unix", sock)
			if err != nil {
				return err
			}
			return c.Close()
		})
		return p
	}
	plugin := start()
	const lives = 3
	life := func(round, i int) *dockerLife {
		return &dockerLife{subnet: fmt.Sprintf("10.9.%d.0/24", i), netID: fmt.Sprintf("net%d-%d", round, i), epID: fmt.Sprintf("ep%d-%d", round, i)}
	}
	// A lifecycle's p50 with the plugin up.
	took := make([]time.Duration, 3*lives)
	for r := range 3 {
		var wg sync.WaitGroup
		for i := range lives {
			wg.Go(func() {
				l := life(-1-r, i)
				t0 := time.Now()
				if err := d.up(l); err != nil {
					t.Error(err)
				} else if err := d.down(l); err != nil {
					t.Error(err)
				}
				took[r*lives+i] = time.Since(t0)
			})
		}
		wg.Wait()
	}
	if t.Failed() {
		t.FailNow()
	}
	pLife := p50(took)
	var tally killTally
	cutAt := map[string]int{}
	begin := time.Now()
	for r := range rounds {
		ls := make([]*dockerLife, lives)
		errs := make([]error, lives)
		var wg sync.WaitGroup
		for i := range lives {
			ls[i] = life(r, i)
			wg.Go(func() {
				if errs[i] = d.up(ls[i]); errs[i] == nil {
					errs[i] = d.down(ls[i])
				}
			})
		}
		time.Sleep(killDelay(pLife))
		if err := plugin.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		_ = plugin.WaitTimeout(10 * time.Second)
		plugin = start()
		for i, l := range ls {
			if errs[i] == nil {
				tally.finished++
				continue
			}
			tally.killed++
			cutAt[l.stage]++
			// dockerd, once the plugin answers again: roll back, remove.
			if err := d.down(l); err != nil {
				t.Fatalf("round %d: removing %s after the kill: %v", r, l.netID, err)
			}
		}
	}
	t.Logf("tabby-docker SIGKILLed %d times (lifecycle p50 %v, %d at once): %d lifecycles cut (%v), %d finished first; %v",
		rounds, pLife.Round(time.Microsecond), lives, tally.killed, cutAt, tally.finished, time.Since(begin).Round(time.Millisecond))
	// Addresses, endpoints and interfaces: nothing, ever.
	for _, p := range []string{model.HandlePrefix, model.HostWorkloadPrefix(h.Name), model.TagPrefix} {
		if k := e.keys(p); len(k) != 0 {
			t.Errorf("left under %s: %v", p, k)
		}
	}
	if k, err := ipam.Residue(context.Background(), e.KV); err != nil || len(k) != 0 {
		t.Errorf("IPAM blocks or affinities left: %v %v", k, err)
	}
	if out := e.l.MustExec(h.NS, "ip", "-o", "link"); strings.Contains(out, "tby") || strings.Contains(out, "tbc") {
		t.Errorf("veths left on the host:\n%s", out)
	}
	// What a cut CreateNetwork or RequestPool left where dockerd cannot see
	// it (a network record Docker does not know, a pool reference whose
	// pool ID never reached dockerd), tabby-docker's sweep removes: then
	// nothing is left.
	e.Eventually(15*time.Second, func() error {
		for _, p := range []string{model.PoolPrefix, model.Prefix + "docker/", model.ProfilePrefix} {
			if k := e.keys(p); len(k) != 0 {
				return fmt.Errorf("left under %s: %v", p, k)
			}
		}
		return nil
	})
}
