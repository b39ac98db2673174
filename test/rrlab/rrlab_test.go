// Package rrlab is the route reflector lab: TABBY_RR_HOSTS real tabby-nodes
// in netns hosts, the BGP mesh off and two of them reflecting for the rest.
// It measures what the design promises (two sessions per host, a new block
// everywhere fast, a reflector's death unnoticed by traffic) and what it
// costs (routes per host, the reflectors' memory and CPU), and writes the
// figures as JSON to TABBY_RR_OUT and as a markdown table next to it.
//
//	TABBY_RR_HOSTS=100 TABBY_RR_OUT=bench/out/rr.json go test -count=1 -timeout 30m ./test/rrlab/
//
// (make bench-rr). Skipped when TABBY_RR_HOSTS is unset: it is a bench,
// not part of make test.
package rrlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

const (
	clusterID  = "244.0.0.1"
	basePool   = "10.0.0.0/16" // one block per host from the start, and the workloads
	trialPool  = "10.1.0.0/16" // trial i claims 10.1.i.0/26
	profile    = "rr-all"
	protoTabby = 80
)

// Result is what the lab measured; the JSON written to TABBY_RR_OUT.
type Result struct {
	Hosts      int       `json:"hosts"`
	Reflectors []string  `json:"reflectors"`
	Mesh       bool      `json:"mesh"` // the full mesh instead (TABBY_RR_MESH)
	Date       time.Time `json:"date"`
	// Load1 is the machine's 1-minute load average at the start and end:
	// the machine is shared, so timings are noisy.
	Load1Start      float64 `json:"load1Start"`
	Load1End        float64 `json:"load1End"`
	LabSetupSeconds float64 `json:"labSetupSeconds"`
	// ConvergeSeconds: from the first tabby-node start to every host
	// having exactly its sessions Established and settled.
	ConvergeSeconds float64 `json:"convergeSeconds"`
	// Sessions per host (Established): clients and reflectors.
	ClientSessionsMin int   `json:"clientSessionsMin"`
	ClientSessionsMax int   `json:"clientSessionsMax"`
	ReflectorSessions []int `json:"reflectorSessions"`
	// RoutesPerHost: remote block routes in each host's kernel once every
	// host has one block (min, max).
	RoutesPerHostMin int `json:"routesPerHostMin"`
	RoutesPerHostMax int `json:"routesPerHostMax"`
	// Trials: a new block on a random host until its route is in the
	// kernel of every other host, in milliseconds per trial.
	TrialsMs []float64 `json:"trialsMs"`
	P50Ms    float64   `json:"p50Ms"`
	P99Ms    float64   `json:"p99Ms"`
	MaxMs    float64   `json:"maxMs"`
	// PerHostP50Ms/P99Ms: the same over every (trial, host) pair.
	PerHostP50Ms float64 `json:"perHostP50Ms"`
	PerHostP99Ms float64 `json:"perHostP99Ms"`
	// FirstHostP50Ms/P99Ms: the first host to have the route, per trial:
	// the protocol's own delay, before 99 daemons queue for the CPUs.
	FirstHostP50Ms float64 `json:"firstHostP50Ms"`
	FirstHostP99Ms float64 `json:"firstHostP99Ms"`
	// WithdrawMs: a released block until its route has left every other
	// host's kernel, per withdrawal.
	WithdrawMs    []float64 `json:"withdrawMs"`
	WithdrawP50Ms float64   `json:"withdrawP50Ms"`
	WithdrawMaxMs float64   `json:"withdrawMaxMs"`
	// Reflector and client daemons' resident memory (MB) and CPU seconds
	// consumed from start to the end of the trials.
	ReflectorRSSMB     []float64 `json:"reflectorRSSMB"`
	ReflectorCPUSec    []float64 `json:"reflectorCPUSec"`
	ClientRSSMBMedian  float64   `json:"clientRSSMBMedian"`
	ClientCPUSecMedian float64   `json:"clientCPUSecMedian"`
	// Kill: echoes every 10 ms between workloads on two clients while
	// one reflector is SIGKILLed, and how long after its restart every
	// host had its sessions back.
	KillEchoesSent      int     `json:"killEchoesSent"`
	KillEchoesLost      int     `json:"killEchoesLost"`
	SessionsBackSeconds float64 `json:"sessionsBackSeconds"`
	// SessionsBackP50Seconds, SessionsBackMaxSeconds: a host's session
	// to the restarted reflector Established again (median, slowest).
	SessionsBackP50Seconds float64 `json:"sessionsBackP50Seconds"`
	SessionsBackMaxSeconds float64 `json:"sessionsBackMaxSeconds"`
}

func TestRouteReflectorLab(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("TABBY_RR_HOSTS"))
	if n == 0 {
		t.Skip("set TABBY_RR_HOSTS (e.g. 100) to run the route reflector lab (make bench-rr)")
	}
	if n < 4 {
		t.Fatalf("TABBY_RR_HOSTS=%d: want at least 4 (2 reflectors, 2 clients)", n)
	}
	// TABBY_RR_MESH=1 runs the same lab as a full mesh, no reflectors:
	// the figures to compare with.
	mesh := os.Getenv("TABBY_RR_MESH") != ""
	// All lab hosts share the kernel's one ARP table (its limit,
	// gc_thresh3, counts every namespace's entries): a host needs an entry
	// per BGP neighbour. A 100-host full mesh (9,900 entries) overflows the
	// default 1,024, drops keepalives and never converges; reflectors need
	// about 4 per host. The limit is the machine's; the lab does not raise it.
	need := 4 * n
	if mesh {
		need = n * (n - 1)
	}
	if limit := arpLimit(); limit > 0 && need > limit*9/10 {
		t.Skipf("%d hosts need ~%d ARP entries; the kernel's table, shared by every namespace, holds %d "+
			"(net.ipv4.neigh.default.gc_thresh3, the machine's setting, which this lab leaves alone)", n, need, limit)
	}
	res := &Result{Hosts: n, Mesh: mesh, Date: time.Now().UTC(), Load1Start: load1()}
	start := time.Now()
	e := lab.NewEnv(t, lab.Options{Hosts: n})
	res.LabSetupSeconds = time.Since(start).Seconds()
	t.Logf("lab of %d hosts built in %.1f s (load %.1f)", n, res.LabSetupSeconds, res.Load1Start)
	hosts := e.Lab.Hosts
	refl := hosts[:2]
	if mesh {
		refl = nil
	}
	for _, h := range refl {
		res.Reflectors = append(res.Reflectors, h.Name)
	}
	ctl := func(args ...string) { e.MustCtl(hosts[0], args...) }
	ctl("pool", "add", basePool)
	ctl("pool", "add", trialPool)
	ctl("profile", "add", profile)
	if !mesh {
		ctl("bgp", "config", "set", "--mesh", "off")
	}

	// One block per host before the daemons start, as on a cluster that
	// runs workloads: every host then has n-1 remote routes.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	for _, h := range hosts {
		im := &ipam.IPAM{KV: e.KV, Host: h.Name}
		if _, _, err := im.Assign(ctx, ipam.Request{Network: "rrlab", ContainerID: "base-" + h.Name, Workload: "base",
			Plugin: "rrlab", IPv4: true, Pools4: []string{basePool}}); err != nil {
			t.Fatalf("block for %s: %v", h.Name, err)
		}
	}

	procs := map[*lab.Host]*lab.Proc{}
	start = time.Now()
	for _, h := range hosts {
		procs[h] = startNode(t, e, h, isRefl(refl, h))
	}
	conv := pollAll(t, hosts, start, 10*time.Minute, func(h *lab.Host) error {
		if procs[h].Exited() {
			return fatal{fmt.Errorf("tabby-node on %s exited: %v", h.Name, procs[h].Wait())}
		}
		return sessionsExact(e, h, hosts, refl)
	})
	res.ConvergeSeconds = pct(conv, 100)
	t.Logf("%d daemons: every host has its sessions %.1f s after the first start", n, res.ConvergeSeconds)
	res.ClientSessionsMin, res.ClientSessionsMax = 1<<30, 0
	for _, h := range hosts {
		up := established(t, e, h)
		if isRefl(refl, h) {
			res.ReflectorSessions = append(res.ReflectorSessions, up)
			continue
		}
		res.ClientSessionsMin, res.ClientSessionsMax = min(res.ClientSessionsMin, up), max(res.ClientSessionsMax, up)
	}

	watches := watchRoutes(t, hosts)
	res.RoutesPerHostMin, res.RoutesPerHostMax = 1<<30, 0
	for _, h := range hosts {
		var c int
		e.Eventually(2*time.Minute, func() error {
			c = remoteRoutes(t, h)
			if c < n-1 {
				return fmt.Errorf("%s has %d remote routes, want %d", h.Name, c, n-1)
			}
			return nil
		})
		res.RoutesPerHostMin, res.RoutesPerHostMax = min(res.RoutesPerHostMin, c), max(res.RoutesPerHostMax, c)
	}

	// Trials: a new block on a random host; the time until its route is in
	// every other host's kernel (route events, read as they happen).
	const trials = 25
	var perHost, firstMs []float64
	owners := map[int]*lab.Host{}
	for i := range trials {
		owner := hosts[rand.IntN(n)]
		owners[i] = owner
		block := fmt.Sprintf("10.1.%d.0/26", i)
		ip := net.ParseIP(fmt.Sprintf("10.1.%d.10", i))
		t0 := time.Now()
		im := &ipam.IPAM{KV: e.KV, Host: owner.Name}
		if _, _, err := im.Assign(ctx, ipam.Request{Network: "rrlab", ContainerID: fmt.Sprintf("trial-%d", i), Workload: "trial",
			Plugin: "rrlab", Static: []net.IP{ip}}); err != nil {
			t.Fatalf("trial %d on %s: %v", i, owner.Name, err)
		}
		var worst time.Duration
		first := time.Hour
		for _, h := range hosts {
			if h == owner {
				continue
			}
			at, err := watches[h].wait(block, 30*time.Second)
			if err != nil {
				t.Fatalf("trial %d (block %s on %s): %v", i, block, owner.Name, err)
			}
			d := at.Sub(t0)
			perHost = append(perHost, ms(d))
			worst, first = max(worst, d), min(first, d)
		}
		res.TrialsMs = append(res.TrialsMs, ms(worst))
		firstMs = append(firstMs, ms(first))
		t.Logf("trial %2d: %s on %s in every other host's kernel after %v", i, block, owner.Name, worst.Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond) // the trials apart, not stacked
	}
	res.P50Ms, res.P99Ms, res.MaxMs = pct(res.TrialsMs, 50), pct(res.TrialsMs, 99), pct(res.TrialsMs, 100)
	res.PerHostP50Ms, res.PerHostP99Ms = pct(perHost, 50), pct(perHost, 99)
	res.FirstHostP50Ms, res.FirstHostP99Ms = pct(firstMs, 50), pct(firstMs, 99)

	// Withdrawals: a trial block released (its one address, as a CNI DEL
	// would); the time until its route has left every other host's kernel.
	const withdrawals = 10
	for i := range withdrawals {
		block, owner := fmt.Sprintf("10.1.%d.0/26", i), owners[i]
		t0 := time.Now()
		im := &ipam.IPAM{KV: e.KV, Host: owner.Name}
		if err := im.Release(ctx, "rrlab", fmt.Sprintf("trial-%d", i)); err != nil {
			t.Fatalf("release trial %d on %s: %v", i, owner.Name, err)
		}
		var worst time.Duration
		for _, h := range hosts {
			if h == owner {
				continue
			}
			at, err := watches[h].waitGone(block, t0, 30*time.Second)
			if err != nil {
				t.Fatalf("withdrawal %d (block %s of %s) on %s: %v", i, block, owner.Name, h.Name, err)
			}
			worst = max(worst, at.Sub(t0))
		}
		res.WithdrawMs = append(res.WithdrawMs, ms(worst))
		t.Logf("withdrawal %d: %s of %s gone from every other host's kernel after %v", i, block, owner.Name, worst.Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
	}
	res.WithdrawP50Ms, res.WithdrawMaxMs = pct(res.WithdrawMs, 50), pct(res.WithdrawMs, 100)

	var clientRSS, clientCPU []float64
	for _, h := range hosts {
		rss, cpu := usage(procs[h].PID)
		if isRefl(refl, h) {
			res.ReflectorRSSMB = append(res.ReflectorRSSMB, rss)
			res.ReflectorCPUSec = append(res.ReflectorCPUSec, cpu)
		} else {
			clientRSS, clientCPU = append(clientRSS, rss), append(clientCPU, cpu)
		}
	}
	res.ClientRSSMBMedian, res.ClientCPUSecMedian = pct(clientRSS, 50), pct(clientCPU, 50)

	if !mesh {
		killReflector(t, e, res, hosts, refl, procs)
	}
	res.Load1End = load1()

	writeResult(t, res)
	wantSessions := len(refl)
	if mesh {
		wantSessions = n - 1
	}
	if res.ClientSessionsMin != wantSessions || res.ClientSessionsMax != wantSessions {
		t.Errorf("hosts have %d..%d sessions, want %d", res.ClientSessionsMin, res.ClientSessionsMax, wantSessions)
	}
	if res.KillEchoesLost != 0 {
		t.Errorf("%d of %d echoes lost across a reflector's SIGKILL", res.KillEchoesLost, res.KillEchoesSent)
	}
}

// killReflector SIGKILLs the first reflector while two clients' workloads
// ping each other every 10 ms, restarts it and measures how long every
// host takes to have its sessions back.
func killReflector(t *testing.T, e *lab.Env, res *Result, hosts, refl []*lab.Host, procs map[*lab.Host]*lab.Proc) {
	t.Helper()
	n := len(hosts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	a, b := hosts[2+rand.IntN(n-2)], hosts[2+rand.IntN(n-2)]
	for a == b {
		b = hosts[2+rand.IntN(n-2)]
	}
	nsA, _ := workload(t, e, a, "wa")
	_, ipB := workload(t, e, b, "wb")
	e.Eventually(30*time.Second, func() error {
		_, err := e.Lab.Exec(nsA, "ping", "-c1", "-W1", "-n", "-q", ipB)
		return err
	})
	const echoes = 1000
	type pingOut struct {
		out string
		err error
	}
	done := make(chan pingOut, 1)
	go func() {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Minute)
		defer pcancel()
		out, err := e.Lab.ExecContext(pctx, nsA, "ping", "-n", "-O", "-i", "0.01", "-W", "1", "-c", strconv.Itoa(echoes), ipB)
		done <- pingOut{out, err}
	}()
	time.Sleep(3 * time.Second)
	victim := refl[0]
	if err := procs[victim].Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = procs[victim].WaitTimeout(10 * time.Second)
	killed := time.Now()
	p := <-done
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(p.out)
	if m == nil {
		t.Fatalf("ping %s from %s: no summary (%v):\n%s", ipB, a.Name, p.err, p.out)
	}
	sent, _ := strconv.Atoi(m[1])
	recv, _ := strconv.Atoi(m[2])
	res.KillEchoesSent, res.KillEchoesLost = sent, sent-recv
	t.Logf("%s SIGKILLed: %s -> %s %d echoes every 10 ms, %d lost", victim.Name, a.Name, b.Name, sent, sent-recv)

	t.Logf("%s down for %v while the echoes ran", victim.Name, time.Since(killed).Round(time.Millisecond))
	restarted := time.Now()
	procs[victim] = startNode(t, e, victim, true)
	var others []*lab.Host
	for _, h := range hosts {
		if h != victim {
			others = append(others, h)
		}
	}
	back := pollAll(t, others, restarted, 5*time.Minute, func(h *lab.Host) error {
		if procs[victim].Exited() {
			return fatal{fmt.Errorf("restarted tabby-node on %s exited: %v", victim.Name, procs[victim].Wait())}
		}
		return sessionUp(e, h, victim)
	})
	res.SessionsBackP50Seconds, res.SessionsBackMaxSeconds = pct(back, 50), pct(back, 100)
	logSlowest(t, e, others, back, victim, procs[victim])
	settled := pollAll(t, hosts, restarted, 5*time.Minute, func(h *lab.Host) error { return sessionsExact(e, h, hosts, refl) })
	res.SessionsBackSeconds = pct(settled, 100)
	t.Logf("sessions back on every host %.1f s after the reflector's restart", res.SessionsBackSeconds)
}

func isRefl(refl []*lab.Host, h *lab.Host) bool {
	for _, r := range refl {
		if r == h {
			return true
		}
	}
	return false
}

// startNode runs tabby-node on h at log level info (debug logs of a
// hundred daemons would be the load being measured).
func startNode(t *testing.T, e *lab.Env, h *lab.Host, reflector bool) *lab.Proc {
	t.Helper()
	if err := os.MkdirAll(e.StateDir(h), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{testutil.Bin(t, "tabby-node"), "--name", h.Name, "--ip", h.CIDR, "--etcd-endpoints", e.Lab.EtcdURL,
		"--state-dir", e.StateDir(h), "--metrics-addr", "", "--log-level", "info"}
	if reflector {
		args = append(args, "--route-reflector", clusterID)
	}
	return e.Lab.Start(h.NS, filepath.Join(e.Lab.Dir, "tabby-node-"+h.Name+".log"), args...)
}

// pollAll runs f for every host at once, each every 250 ms until it
// returns nil, and returns per host (in hosts' order) the seconds from
// start to that. Polling the hosts in turn would add up their status
// round trips, seconds at 100 busy hosts, to what is measured.
func pollAll(t *testing.T, hosts []*lab.Host, start time.Time, d time.Duration, f func(*lab.Host) error) []float64 {
	t.Helper()
	out := make([]float64, len(hosts))
	errs := make([]error, len(hosts))
	last := make([]error, len(hosts)) // the slowest host's last miss is logged
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() {
			deadline := time.Now().Add(d)
			for {
				err := f(h)
				if err == nil {
					out[i] = time.Since(start).Seconds()
					return
				}
				var fe fatal
				if errors.As(err, &fe) || time.Now().After(deadline) {
					errs[i] = err
					return
				}
				last[i] = err
				time.Sleep(250 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	slowest := 0
	for i := range out {
		if out[i] > out[slowest] {
			slowest = i
		}
	}
	if len(out) > 0 && last[slowest] != nil {
		t.Logf("slowest: %s after %.1f s; before that: %v", hosts[slowest].Name, out[slowest], last[slowest])
	}
	return out
}

// fatal ends pollAll's wait for a host at once (its daemon exited).
type fatal struct{ error }

// sessionUp is nil when h's session to r is Established.
func sessionUp(e *lab.Env, h, r *lab.Host) error {
	st, err := e.Status(h)
	if err != nil {
		return err
	}
	for _, p := range st.Peers {
		if p.Address == r.IP && p.State == "Established" {
			return nil
		}
	}
	return fmt.Errorf("%s: no Established session to %s", h.Name, r.Name)
}

// logSlowest shows, for the three hosts whose session to the restarted
// reflector came back last (if over 10 s), what their daemon and the
// reflector logged about each other: the tail is what an operator would
// ask about.
func logSlowest(t *testing.T, e *lab.Env, hosts []*lab.Host, secs []float64, victim *lab.Host, p *lab.Proc) {
	t.Helper()
	idx := make([]int, len(hosts))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return secs[idx[a]] > secs[idx[b]] })
	for _, i := range idx[:min(3, len(idx))] {
		h := hosts[i]
		if secs[i] < 10 {
			break
		}
		t.Logf("slow: %s's session to %s back after %.1f s; its log ends:\n%s\n%s's log about it:\n%s", h.Name, victim.Name, secs[i],
			lab.Tail(filepath.Join(e.Lab.Dir, "tabby-node-"+h.Name+".log"), 8), victim.Name, grepLog(p.Log, h.IP, 8))
	}
}

// grepLog is the last n lines of file that name address ip.
func grepLog(file, ip string, n int) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return err.Error()
	}
	re := regexp.MustCompile(`\b` + regexp.QuoteMeta(ip) + `\b`)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out[max(0, len(out)-n):], "\n")
}

// sessionsExact is nil once h has settled with exactly its sessions
// Established: one per reflector on a client; every other host on a
// reflector.
func sessionsExact(e *lab.Env, h *lab.Host, hosts, refl []*lab.Host) error {
	st, err := e.Status(h)
	if err != nil {
		return err
	}
	want := len(refl)
	if len(refl) == 0 || isRefl(refl, h) { // the full mesh, or a reflector
		want = len(hosts) - 1
	}
	up := 0
	for _, p := range st.Peers {
		if p.State == "Established" {
			up++
		}
	}
	if up != want || len(st.Peers) != want || !st.Settled {
		return fmt.Errorf("%s: %d of %d peers Established (want %d), settled %v", h.Name, up, len(st.Peers), want, st.Settled)
	}
	return nil
}

func established(t *testing.T, e *lab.Env, h *lab.Host) int {
	t.Helper()
	st, err := e.Status(h)
	if err != nil {
		t.Fatal(err)
	}
	up := 0
	for _, p := range st.Peers {
		if p.State == "Established" {
			up++
		}
	}
	return up
}

// nsHandle opens host h's network namespace (read only: netlink queries
// and subscriptions; nothing in it is changed).
func nsHandle(t *testing.T, h *lab.Host) netns.NsHandle {
	t.Helper()
	ns, err := netns.GetFromPath(h.NSPath)
	if err != nil {
		t.Fatalf("open %s: %v", h.NSPath, err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// remoteRoutes counts h's tabby routes to other hosts' blocks (via a
// gateway; not the blackholes of its own blocks nor workload routes).
func remoteRoutes(t *testing.T, h *lab.Host) int {
	t.Helper()
	ns, err := netns.GetFromPath(h.NSPath)
	if err != nil {
		t.Fatalf("open %s: %v", h.NSPath, err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	rs, err := nh.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: protoTabby}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatalf("routes of %s: %v", h.Name, err)
	}
	c := 0
	for _, r := range rs {
		if r.Gw != nil && r.Type == unix.RTN_UNICAST {
			c++
		}
	}
	return c
}

// routeWatch records when each destination's route first appeared in one
// host's kernel.
type routeWatch struct {
	mu    sync.Mutex
	seen  map[string]time.Time
	gone  map[string]time.Time // when a route was last deleted
	added chan struct{}
}

func watchRoutes(t *testing.T, hosts []*lab.Host) map[*lab.Host]*routeWatch {
	t.Helper()
	out := map[*lab.Host]*routeWatch{}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	for _, h := range hosts {
		ns := nsHandle(t, h)
		w := &routeWatch{seen: map[string]time.Time{}, gone: map[string]time.Time{}, added: make(chan struct{}, 1)}
		ch := make(chan netlink.RouteUpdate, 1024)
		err := netlink.RouteSubscribeWithOptions(ch, stop, netlink.RouteSubscribeOptions{Namespace: &ns,
			ErrorCallback: func(err error) {
				select {
				case <-stop: // the subscription closing at the end
				default:
					t.Logf("route events of %s: %v", h.Name, err)
				}
			}})
		if err != nil {
			t.Fatalf("watch routes of %s: %v", h.Name, err)
		}
		go func() {
			for u := range ch {
				if u.Dst == nil || u.Protocol != protoTabby || u.Type != unix.RTM_NEWROUTE && u.Type != unix.RTM_DELROUTE {
					continue
				}
				now := time.Now()
				w.mu.Lock()
				if _, ok := w.seen[u.Dst.String()]; !ok && u.Type == unix.RTM_NEWROUTE {
					w.seen[u.Dst.String()] = now
				}
				if u.Type == unix.RTM_DELROUTE {
					w.gone[u.Dst.String()] = now
				}
				w.mu.Unlock()
				select {
				case w.added <- struct{}{}:
				default:
				}
			}
		}()
		out[h] = w
	}
	return out
}

// wait returns when dst's route appeared.
func (w *routeWatch) wait(dst string, d time.Duration) (time.Time, error) {
	return w.waitFor(w.seen, dst, time.Time{}, d)
}

// waitGone returns when dst's route was deleted after since.
func (w *routeWatch) waitGone(dst string, since time.Time, d time.Duration) (time.Time, error) {
	return w.waitFor(w.gone, dst, since, d)
}

func (w *routeWatch) waitFor(m map[string]time.Time, dst string, since time.Time, d time.Duration) (time.Time, error) {
	deadline := time.After(d)
	for {
		w.mu.Lock()
		at, ok := m[dst]
		ok = ok && !at.Before(since)
		w.mu.Unlock()
		if ok {
			return at, nil
		}
		select {
		case <-w.added:
		case <-deadline:
			return time.Time{}, fmt.Errorf("no route event for %s within %v", dst, d)
		}
	}
}

// workload adds a container on h with the tabby CNI plugin and returns its
// namespace and address.
func workload(t *testing.T, e *lab.Env, h *lab.Host, name string) (string, string) {
	t.Helper()
	nsName, nsPath := e.Lab.AddContainer(h, name)
	o := e.Plugin(h, testutil.Call{Command: "ADD", ContainerID: name, Netns: nsPath, IfName: "eth0",
		Conf: e.Conf(h, "", fmt.Sprintf(`,"profiles":[%q]`, profile), fmt.Sprintf(`,"ipv4_pools":[%q]`, basePool))})
	if o.ExitCode != 0 {
		t.Fatalf("ADD %s on %s: exit %d: %s", name, h.Name, o.ExitCode, o.Stdout)
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(o.Stdout), &r); err != nil || len(r.IPs) == 0 {
		t.Fatalf("ADD %s on %s: result %q: %v", name, h.Name, o.Stdout, err)
	}
	ip, _, _ := strings.Cut(r.IPs[0].Address, "/")
	return nsName, ip
}

// usage is a process's resident memory (MB) and CPU time (user+system, s).
func usage(pid int) (rssMB, cpuSec float64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				rssMB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command name (which may hold spaces): utime
		// and stime are the 12th and 13th, in clock ticks (100 Hz).
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 12 {
				u, _ := strconv.ParseFloat(f[11], 64)
				st, _ := strconv.ParseFloat(f[12], 64)
				cpuSec = (u + st) / 100
			}
		}
	}
	return rssMB, cpuSec
}

// arpLimit is the kernel's hard limit of IPv4 neighbour entries, or 0.
func arpLimit() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
	if err != nil {
		return 0
	}
	v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return v
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the p-th percentile (nearest rank) of xs.
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// writeResult writes the JSON to TABBY_RR_OUT and the markdown table next
// to it (same name, .md); without TABBY_RR_OUT the table goes to the log.
func writeResult(t *testing.T, r *Result) {
	t.Helper()
	md := markdown(r)
	t.Logf("\n%s", md)
	path := os.Getenv("TABBY_RR_OUT")
	if path == "" {
		return
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	mdPath := strings.TrimSuffix(path, filepath.Ext(path)) + ".md"
	if err := os.WriteFile(mdPath, []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
}

func markdown(r *Result) string {
	var b strings.Builder
	design := fmt.Sprintf("%d reflectors, mesh off", len(r.Reflectors))
	if r.Mesh {
		design = "full mesh, no reflectors"
	}
	fmt.Fprintf(&b, "| route reflector lab: %d hosts, %s (%s, load %.1f -> %.1f) | figure |\n|---|---|\n",
		r.Hosts, design, r.Date.Format("2006-01-02"), r.Load1Start, r.Load1End)
	row := func(k, f string, a ...any) { fmt.Fprintf(&b, "| %s | %s |\n", k, fmt.Sprintf(f, a...)) }
	row("BGP sessions per host, reflectors aside (Established)", "%d..%d", r.ClientSessionsMin, r.ClientSessionsMax)
	if !r.Mesh {
		row("BGP sessions per reflector", "%v", r.ReflectorSessions)
	}
	row("remote block routes per host (one block per host)", "%d..%d", r.RoutesPerHostMin, r.RoutesPerHostMax)
	row("start to all sessions Established", "%.1f s", r.ConvergeSeconds)
	row(fmt.Sprintf("new block on a random host -> route in every other host's kernel, %d trials", len(r.TrialsMs)),
		"p50 %.0f ms, p99 %.0f ms, max %.0f ms", r.P50Ms, r.P99Ms, r.MaxMs)
	row("same, per receiving host", "p50 %.0f ms, p99 %.0f ms", r.PerHostP50Ms, r.PerHostP99Ms)
	row("same, the first host to have it", "p50 %.0f ms, p99 %.0f ms", r.FirstHostP50Ms, r.FirstHostP99Ms)
	row(fmt.Sprintf("block released -> route gone from every other host's kernel, %d trials", len(r.WithdrawMs)),
		"p50 %.0f ms, max %.0f ms", r.WithdrawP50Ms, r.WithdrawMaxMs)
	if !r.Mesh {
		row("reflector RSS", "%s MB", floats(r.ReflectorRSSMB, "%.0f"))
		row("reflector CPU, start to end of trials", "%s s", floats(r.ReflectorCPUSec, "%.1f"))
	}
	row("RSS / CPU of the other hosts' daemons (median)", "%.0f MB / %.1f s", r.ClientRSSMBMedian, r.ClientCPUSecMedian)
	if !r.Mesh {
		row("echoes lost between two clients across a reflector's SIGKILL", "%d of %d", r.KillEchoesLost, r.KillEchoesSent)
		row("killed reflector restarted: a host's session back (median / slowest); every host settled",
			"%.1f s / %.1f s; %.1f s", r.SessionsBackP50Seconds, r.SessionsBackMaxSeconds, r.SessionsBackSeconds)
	}
	row("lab set-up (netns hosts, etcd)", "%.1f s", r.LabSetupSeconds)
	return b.String()
}

func floats(xs []float64, f string) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf(f, x))
	}
	return strings.Join(s, ", ")
}
