package main

// The policy rows of the bench (issue "profiles enforced"), in a lab of
// their own (two hosts running tabby-node):
//
//   - full reconcile of the packet filter for 1,000 endpoints and 100
//     profiles on one host (render, ipsets, iptables-restore), cold and
//     with nothing to change;
//   - time from `tabbyctl container B profile append P` to B reaching a
//     member of P on another host;
//   - per-packet cost: small UDP packets between two containers with 10 and
//     with 1,000 endpoints on the hosts (ratio, goal close to 1);
//   - TCP throughput with the policy hooks in place vs removed (goal >= 0.95).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/node/policy"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/pkg/workload"
	"github.com/tabby-net/tabby/test/lab"
)

const (
	policyPool     = "10.0.0.0/16"
	policyFakePool = "10.50.0.0/16" // addresses of the 1,000 endpoints that have no interface
	reconcileGoal  = 2000.0         // ms
	appendGoal     = 1000.0         // ms
	ppsRatioMin    = 0.9
	policyTputMin  = 0.95
)

func keyPolicy(what string) string { return "node/policy-" + what }

// policyRows builds its lab, measures, and removes it.
func policyRows(s *lab.Script, c config, p paths) (rows []Row, notes []string, err error) {
	progress("policy rows: building a 2-host lab")
	l := lab.New(s, lab.Options{Hosts: 2})
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("policy lab: %w", cerr))
		}
	}()
	l.StartEtcd()
	nb := &nodeBench{p: p, l: l, work: filepath.Join(l.Dir, "policy-bench"), env: cleanEnv(), quick: c.quick, procs: make([]*lab.Proc, 2)}
	nb.kv = etcdv3.FromClient(l.EtcdClient(), []string{l.EtcdURL})
	if err := os.MkdirAll(nb.work, 0o755); err != nil {
		return nil, nil, err
	}

	r, err := reconcileRows(l, c.quick)
	if err != nil {
		return nil, nil, err
	}
	rows = append(rows, r...)

	for _, args := range [][]string{{"pool", "add", policyPool}, {"profile", "add", nodeProfile}, {"profile", "add", "other"}} {
		if err := nb.ctl(args...); err != nil {
			return nil, nil, err
		}
	}
	for i := range l.Hosts {
		nb.startNode(i)
	}
	for _, h := range l.Hosts {
		if err := nb.waitSettled(h, 1, 60*time.Second); err != nil {
			return nil, nil, err
		}
	}
	// A on host1 and S (an iperf3 server) on host2 share the bench profile;
	// B on host2 has "other" until it is appended to the bench profile.
	aNS, aIP, _, err := nb.add(l.Hosts[0], "pa", policyPool, "")
	if err != nil {
		return nil, nil, err
	}
	sNS, sIP, _, err := nb.add(l.Hosts[1], "ps", policyPool, "")
	if err != nil {
		return nil, nil, err
	}
	bNS, _, _, err := nb.add(l.Hosts[1], "pb", policyPool, "TABBY_WORKLOAD=pb")
	if err != nil {
		return nil, nil, err
	}
	if err := nb.ctl("container", "pb", "profile", "set", "other", "--host", l.Hosts[1].Name); err != nil {
		return nil, nil, err
	}
	r2, err := appendRows(nb, bNS, aIP)
	if err != nil {
		return rows, nil, err
	}
	rows = append(rows, r2...)
	l.Start(sNS, filepath.Join(nb.work, "iperf3-server.log"), "iperf3", "-s", "-p", "5201")
	time.Sleep(200 * time.Millisecond)
	r3, err := packetRows(nb, aNS, sIP)
	if err != nil {
		return rows, nil, err
	}
	rows = append(rows, r3...)
	notes = append(notes, "Policy rows: their own 2-host lab; A (host1) and the iperf3 server S (host2) share one profile; the reconcile rows drive node/policy and node/iptables directly in a host namespace, which is what tabby-node runs on every change.")
	return rows, notes, nil
}

// fakeEndpoints makes n endpoints with p profiles, each profile allowing its
// own members and a CIDR, with a port rule, as a realistic mix.
func fakeInput(n, profiles int) policy.Input {
	in := policy.Input{Profiles: map[string]model.Profile{}, Tags: map[string][]string{}}
	for i := 0; i < profiles; i++ {
		name := fmt.Sprintf("P%03d", i)
		pr := model.DefaultProfile(name)
		pr.Inbound = append(pr.Inbound, model.Rule{Action: "deny", Protocol: "tcp", DstPorts: "22", SrcNet: "192.0.2.0/24"})
		in.Profiles[name] = pr
	}
	for i := 0; i < n; i++ {
		ip := fmt.Sprintf("10.50.%d.%d/32", i/250, i%250+1)
		p1, p2 := fmt.Sprintf("P%03d", i%profiles), fmt.Sprintf("P%03d", (i*7)%profiles)
		in.Endpoints = append(in.Endpoints, model.Endpoint{HostInterface: fmt.Sprintf("tby%011x", i), ContainerID: strconv.Itoa(i),
			MAC: fmt.Sprintf("0a:58:00:00:%02x:%02x", i/256, i%256), IPv4Nets: []string{ip}, Profiles: []string{p1, p2}})
		in.Tags[p1] = append(in.Tags[p1], ip)
		in.Tags[p2] = append(in.Tags[p2], ip)
	}
	return in
}

// reconcileRows times the packet filter's reconcile for 1,000 endpoints and
// 100 profiles in a host namespace: cold (nothing there), warm (nothing to
// change), and one endpoint's profiles changed.
func reconcileRows(l *lab.Lab, quick bool) ([]Row, error) {
	reps := 5
	if quick {
		reps = 2
	}
	in := fakeInput(1000, 100)
	var cold, warm, one []float64
	err := lab.InNS(l.Hosts[1].NSPath, func() error {
		b4, err := iptables.Detect(iptables.V4)
		if err != nil {
			return err
		}
		apply := func(in policy.Input) (time.Duration, error) {
			t0 := time.Now()
			out := policy.Render(in)
			if _, err := iptables.SyncSets(out.Sets...); err != nil {
				return 0, err
			}
			if err := b4.Apply(out.Filter4); err != nil {
				return 0, err
			}
			return time.Since(t0), nil
		}
		for i := 0; i < reps; i++ {
			if err := b4.Remove("filter"); err != nil {
				return err
			}
			d, err := apply(in)
			if err != nil {
				return err
			}
			cold = append(cold, ms(d))
			if d, err = apply(in); err != nil {
				return err
			}
			warm = append(warm, ms(d))
			in.Endpoints[i].Profiles = []string{"P099"}
			if d, err = apply(in); err != nil {
				return err
			}
			one = append(one, ms(d))
		}
		return b4.Remove("filter")
	})
	if err != nil {
		return nil, fmt.Errorf("reconcile rows: %w", err)
	}
	out := policy.Render(in)
	rules := 0
	for _, ch := range out.Filter4.Chains {
		rules += len(ch.Rules)
	}
	mk := func(key, what string, v []float64) Row {
		r := Row{Key: keyPolicy(key), Name: what, Section: "node", Mode: "1,000 endpoints, 100 profiles", Op: "reconcile", Unit: "ms"}
		r.setStats(v)
		r.Note = fmt.Sprintf("%d chains, %d rules, %d ipsets (IPv4 table)", len(out.Filter4.Chains), rules, len(out.Sets)/2)
		return r
	}
	return []Row{
		mk("reconcile-cold", "packet filter reconcile, from nothing (render, ipsets, iptables-restore)", cold),
		mk("reconcile-noop", "packet filter resync, nothing to change (render, ipset save, iptables-save, compare)", warm),
		mk("reconcile-one", "packet filter reconcile, one endpoint's profiles changed", one),
	}, nil
}

// appendRows times profile append (and remove) to effect on another host.
func appendRows(nb *nodeBench, bNS, aIP string) ([]Row, error) {
	n := 10
	if nb.quick {
		n = 3
	}
	host2 := nb.l.Hosts[1].Name
	bPath := filepath.Join("/run/netns", bNS)
	var add, del []float64
	for i := 0; i < n; i++ {
		if err := nb.ctl("container", "pb", "profile", "append", nodeProfile, "--host", host2); err != nil {
			return nil, err
		}
		t0 := time.Now()
		d, err := reachAfter(t0, bPath, aIP, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("profile append: %w", err)
		}
		add = append(add, ms(d))
		if err := nb.ctl("container", "pb", "profile", "remove", nodeProfile, "--host", host2); err != nil {
			return nil, err
		}
		t0 = time.Now()
		for {
			if _, ok := probe(bPath, aIP); !ok {
				break
			}
			if time.Since(t0) > 5*time.Second {
				return nil, fmt.Errorf("profile remove: B still reaches A after 5 s")
			}
		}
		del = append(del, ms(time.Since(t0)))
	}
	mk := func(key, what string, v []float64) Row {
		r := Row{Key: keyPolicy(key), Name: what, Section: "node", Mode: "2 hosts", Op: "profile change", Unit: "ms"}
		r.setStats(v)
		r.Note = "from tabbyctl returning to the first echo answered (append) or lost (remove), 100 ms probes from B on host2 to A on host1"
		return r
	}
	return []Row{mk("append", "profile append to effect on another host", add), mk("remove", "profile remove to effect on another host", del)}, nil
}

// udpPPS sends small UDP packets for secs and returns the packets per
// second the server received.
func udpPPS(l *lab.Lab, fromNS, ip string, secs int) (float64, error) {
	out, err := l.Exec(fromNS, "iperf3", "-c", ip, "-p", "5201", "-u", "-b", "0", "-l", "64", "-t", strconv.Itoa(secs), "-J")
	if err != nil {
		return 0, fmt.Errorf("iperf3 -u: %w: %.300s", err, out)
	}
	var r struct {
		End struct {
			Sum struct {
				Packets     float64 `json:"packets"`
				LostPackets float64 `json:"lost_packets"`
				Seconds     float64 `json:"seconds"`
			} `json:"sum"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.End.Sum.Seconds == 0 {
		return 0, fmt.Errorf("iperf3 -u output: %v: %.300s", err, out)
	}
	return (r.End.Sum.Packets - r.End.Sum.LostPackets) / r.End.Sum.Seconds, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// packetRows measures small-packet rate with 10 and with 1,000 endpoints on
// the hosts, and TCP throughput with the policy hooks in and out.
func packetRows(nb *nodeBench, aNS, sIP string) ([]Row, error) {
	secs, reps := 3, 3
	if nb.quick {
		secs, reps = 1, 1
	}
	measure := func() ([]float64, error) {
		return repeat(reps, func() (float64, error) { return udpPPS(nb.l, aNS, sIP, secs) })
	}
	few, err := measure()
	if err != nil {
		return nil, err
	}
	// 990 more endpoints on each host (records only: their interfaces do
	// not exist, but every one gets chains, dispatch entries and set members).
	if _, err := nb.kv.Txn(ctxBG(), nil, []store.Op{store.Put(model.PoolKey(policyFakePool), store.MustJSON(model.Pool{CIDR: policyFakePool, BlockSize: 26, IPIPMode: "never", VXLANMode: "never"}))}); err != nil {
		return nil, err
	}
	var fakes []*model.Endpoint
	for hi, h := range nb.l.Hosts {
		for i := 0; i < 990; i++ {
			ep := &model.Endpoint{Host: h.Name, Orchestrator: "cni", Workload: fmt.Sprintf("fake%d", i), Name: "eth0",
				ContainerID: fmt.Sprintf("fake%d", i), HostInterface: fmt.Sprintf("tby%d%010x", hi, i),
				IPv4Nets: []string{fmt.Sprintf("10.50.%d.%d/32", hi*4+i/250, i%250+1)}, Profiles: []string{nodeProfile}}
			if err := workload.Put(ctxBG(), nb.kv, ep); err != nil {
				return nil, err
			}
			fakes = append(fakes, ep)
		}
	}
	// Wait until each host's tabby-node reports every endpoint of its own
	// ready (its rules in force: what the CNI plugin waits for), whatever
	// the filter's layout.
	t0 := time.Now()
	for _, ep := range fakes {
		h := nb.l.Host(ep.Host)
		if err := nodestatus.WaitReady(ctxBG(), nb.stateDir(h), ep.HostInterface, ep.ContainerID, 60*time.Second); err != nil {
			return nil, fmt.Errorf("%s did not program endpoint %s: %w", h.Name, ep.HostInterface, err)
		}
	}
	programmed := time.Since(t0)
	many, err := measure()
	if err != nil {
		return nil, err
	}
	ratio := round2(median(many) / median(few))
	pps := Row{Key: keyPolicy("pps-1000"), Name: "64-byte UDP, container to container across hosts, 1,000 endpoints per host",
		Section: "node", Mode: "policy on", Op: "iperf3 -u", Unit: "kpps"}
	pps.setStats(scale(many, 1e-3))
	pps.RatioP50 = &ratio
	pps.Note = fmt.Sprintf("vs %.1f kpps with 10 endpoints per host; established flows take the conntrack fast path; both hosts had the 990 extra endpoints each ready %.1f s after their records were written", median(few)/1e3, programmed.Seconds())
	base := Row{Key: keyPolicy("pps-10"), Name: "64-byte UDP, container to container across hosts, 10 endpoints per host",
		Section: "node", Mode: "policy on", Op: "iperf3 -u", Unit: "kpps"}
	base.setStats(scale(few, 1e-3))
	withPolicies, err := policiesPPS(nb, measure)
	if err != nil {
		return nil, err
	}
	pr := round2(median(withPolicies) / median(many))
	pol := Row{Key: keyPolicy("pps-1000-policies"), Name: "64-byte UDP, container to container across hosts, 1,000 policies selecting every endpoint (1,000 endpoints per host)",
		Section: "node", Mode: "policy on", Op: "iperf3 -u", Unit: "kpps"}
	pol.setStats(scale(withPolicies, 1e-3))
	pol.RatioP50 = &pr
	pol.Note = fmt.Sprintf("vs %.1f kpps with no policy; every endpoint isolated, its first packet of a flow walks 1,000 policies' rules (999 selector sets that match nothing, then an allow)", median(many)/1e3)

	// TCP throughput with the hooks in, then with them out (and back).
	on, err := tcpRuns(nb, aNS, sIP, reps, secs)
	if err != nil {
		return nil, err
	}
	for _, h := range nb.l.Hosts {
		if _, err := nb.l.Exec(h.NS, "iptables", "-D", "FORWARD", "-j", "TABBY-FORWARD"); err != nil {
			return nil, err
		}
	}
	off, err := tcpRuns(nb, aNS, sIP, reps, secs)
	for _, h := range nb.l.Hosts {
		if _, rerr := nb.l.Exec(h.NS, "iptables", "-I", "FORWARD", "1", "-j", "TABBY-FORWARD"); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return nil, err
	}
	tr := round2(median(on) / median(off))
	tcp := Row{Key: keyPolicy("tcp-on-off"), Name: "TCP throughput across hosts, policy on (1,000 endpoints per host) vs the hooks removed",
		Section: "node", Mode: "policy on", Op: "iperf3 TCP", Unit: "Gbit/s"}
	tcp.setStats(on)
	tcp.RatioP50 = &tr
	tcp.Note = fmt.Sprintf("policy off: %.2f Gbit/s (median of %d)", median(off), len(off))
	return []Row{base, pps, pol, tcp}, nil
}

// policiesPPS writes 1,000 global policies that select every endpoint
// (999 admit only peers labelled bench-peer=p<i>, which none is; the last,
// ordered after them, admits all), waits until both hosts have them in
// force, measures, and removes them again.
func policiesPPS(nb *nodeBench, measure func() ([]float64, error)) ([]float64, error) {
	const n = 1000
	var ops []store.Op
	for i := 0; i < n; i++ {
		p := model.Policy{Name: fmt.Sprintf("bench-%04d", i), Order: i, Types: []string{model.PolicyIngress},
			Ingress: []model.PolicyRule{{Peers: []model.Peer{{Selector: fmt.Sprintf("bench-peer=p%d", i)}}}}}
		if i == n-1 {
			p.Ingress = []model.PolicyRule{{}}
		}
		if err := p.Validate(); err != nil {
			return nil, err
		}
		ops = append(ops, store.Put(model.PolicyKey("", p.Name), store.MustJSON(p)))
	}
	for len(ops) > 0 {
		k := min(len(ops), 100)
		if _, err := nb.kv.Txn(ctxBG(), nil, ops[:k]); err != nil {
			return nil, err
		}
		ops = ops[k:]
	}
	sets := func(h *lab.Host) int {
		out, _ := nb.l.Exec(h.NS, "iptables-save", "-t", "filter")
		return strings.Count(out, "--match-set "+policy.PeerSetPrefix4)
	}
	t0 := time.Now()
	for _, h := range nb.l.Hosts {
		for sets(h) < n-1 {
			if time.Since(t0) > 2*time.Minute {
				return nil, fmt.Errorf("%s: %d policy selector rules in force after 2 min, want %d", h.Name, sets(h), n-1)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	progress("policy rows: 1,000 policies in force on both hosts %.1f s after they were written", time.Since(t0).Seconds())
	v, err := measure()
	if _, derr := nb.kv.Txn(ctxBG(), nil, []store.Op{{Kind: store.OpDelete, Key: model.PolicyPrefix, Prefix: true}}); derr != nil && err == nil {
		err = derr
	}
	for _, h := range nb.l.Hosts {
		for sets(h) > 0 && err == nil {
			if time.Since(t0) > 4*time.Minute {
				err = fmt.Errorf("%s: policy rules still in force after the policies were deleted", h.Name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return v, err
}

func tcpRuns(nb *nodeBench, aNS, sIP string, reps, secs int) ([]float64, error) {
	return repeat(reps, func() (float64, error) { return iperf(nb.l, aNS, sIP, secs) })
}

// repeat collects n results of f, stopping at the first error.
func repeat(n int, f func() (float64, error)) ([]float64, error) {
	var v []float64
	for range n {
		x, err := f()
		if err != nil {
			return nil, err
		}
		v = append(v, x)
	}
	return v, nil
}

func scale(v []float64, f float64) []float64 {
	out := make([]float64, len(v))
	for i := range v {
		out[i] = round2(v[i] * f)
	}
	return out
}

// ctxBG bounds one etcd call of the bench (the store applies its own
// per-call deadline too).
func ctxBG() context.Context { return context.Background() }
