// Command scale is tabby's scale simulation (make bench-scale): etcd filled
// as 10,000 hosts with 1,000,000 workloads would fill it (test/scale/load),
// the watch load of those hosts put on etcd by simulated nodes that open
// the reads and watches a tabby-node opens (test/scale/sim), with and
// without etcd's gRPC proxy in between, and a real tabby-node in the netns
// lab (test/lab) on the same etcd: its cold start, the CNI ADD, and the
// time from a profile change to its enforcement, while the simulated hosts
// watch. It writes DIR/report.json, DIR/report.md and PNG charts.
//
//	go run ./test/scale -out bench/out/scale              # the full run
//	go run ./test/scale -small -out /tmp/scale            # 200 hosts, 10,000 workloads
//
// It needs root, bin/ from make build (tabby, tabby-ipam, tabby-node,
// tabbyctl, etcd-lab). Every etcd client of the simulation runs in the
// lab's underlay namespace (a worker: this program again, under ip netns
// exec), so no packet leaves the lab.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
	"github.com/tabby-net/tabby/test/scale/load"
	"github.com/tabby-net/tabby/test/scale/sim"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "worker" {
		if err := runWorker(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "scale worker: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "scale: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	out                    string
	bin                    string
	cluster                load.Config
	steps                  []int
	churn                  time.Duration
	workers, changes, adds int
	stages, stageAdds      int
	turns                  int
	turnsProxy             bool
	swapHosts              bool
	proxies, conns         int
	rate                   float64
	skipIPAM, skipFanout   bool
	fullReads              int
	etcdProfile            time.Duration
	etcdEnv                []string
}

func parse() (*options, error) {
	o := &options{cluster: load.Defaults()}
	small := flag.Bool("small", false, "200 hosts, 10,000 workloads, 50 profiles, steps 0,100,200")
	flag.StringVar(&o.out, "out", "bench/out/scale", "report directory")
	flag.StringVar(&o.bin, "bin", "", "tabby's binaries (default $TABBY_BIN or <repo>/bin)")
	hosts := flag.Int("hosts", 0, "simulated hosts (default 10000)")
	eps := flag.Int("endpoints", 0, "workloads (default 1000000)")
	profiles := flag.Int("profiles", 0, "profiles/namespaces (default 1000)")
	steps := flag.String("steps", "", "simulated hosts watching at each step (default 0,1000,5000,10000)")
	flag.DurationVar(&o.churn, "churn", 60*time.Second, "write load per step (sustained: a minute)")
	flag.IntVar(&o.workers, "workers", 32, "writers of the churn")
	flag.IntVar(&o.changes, "changes", 20, "profile changes timed on the real node")
	flag.IntVar(&o.adds, "adds", 200, "CNI ADDs timed on the empty and on the full datastore")
	flag.IntVar(&o.stages, "stages", 4, "load the datastore in this many stages, timing -stage-adds CNI ADDs (and ptp + host-local's) after each but the last: the ADD latency against records curve")
	flag.IntVar(&o.stageAdds, "stage-adds", 100, "CNI ADDs timed between load stages")
	flag.BoolVar(&o.swapHosts, "swap-hosts", false, "run the full datastore's tabby-node and ADDs on lab host 2 and the empty one's on host 1 (does a gap follow the host?)")
	flag.BoolVar(&o.turnsProxy, "turns-proxy", true, "also take the full datastore's ADDs through a gRPC proxy in the turns")
	flag.IntVar(&o.turns, "turns", 600, "rounds of ADDs in turns on the full and on a second, empty datastore (and ptp + host-local)")
	flag.IntVar(&o.proxies, "proxies", 1, "gRPC proxies (the simulated hosts are spread over them)")
	flag.IntVar(&o.conns, "conns", 8, "client connections per etcd or proxy endpoint")
	flag.Float64Var(&o.rate, "rate", 100, "others' writes/s during ipam check and GC")
	flag.BoolVar(&o.skipIPAM, "skip-ipam", false, "skip ipam check and GC")
	flag.BoolVar(&o.skipFanout, "skip-fanout", false, "skip the watch fan-out and the enforcement timed under it")
	flag.DurationVar(&o.etcdProfile, "etcd-profile", 0, "CPU-profile both etcds for this long at the start of the ADDs in turns (etcd-full.pprof, etcd-empty.pprof in -out); 0: no profiles")
	etcdEnv := flag.String("etcd-env", "", "space-separated NAME=value for both etcds' environment, e.g. \"GOGC=off GOMEMLIMIT=10GiB\"")
	flag.IntVar(&o.fullReads, "full-reads", 1000, "simulated hosts that read the shared prefixes whole at join (the rest count-only); 0: all")
	flag.Parse()
	o.etcdEnv = strings.Fields(*etcdEnv)
	for _, kv := range o.etcdEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("-etcd-env: %q is not NAME=value", kv)
		}
	}
	if *small {
		o.cluster.Hosts, o.cluster.Endpoints, o.cluster.Profiles = 200, 10000, 50
		o.steps = []int{0, 100, 200}
		o.churn = 5 * time.Second
	}
	if *hosts > 0 {
		o.cluster.Hosts = *hosts
	}
	if *eps > 0 {
		o.cluster.Endpoints = *eps
	}
	if *profiles > 0 {
		o.cluster.Profiles = *profiles
	}
	if *steps != "" {
		o.steps = nil
		for _, f := range strings.Split(*steps, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return nil, fmt.Errorf("-steps: %w", err)
			}
			o.steps = append(o.steps, n)
		}
	}
	if o.steps == nil {
		o.steps = []int{0, 1000, 5000, 10000}
	}
	// Changes alternate allow and remove: an even number leaves B's
	// profile denying A, as the next series expects.
	o.changes += o.changes % 2
	for i, n := range o.steps {
		o.steps[i] = min(n, o.cluster.Hosts)
	}
	if o.bin == "" {
		o.bin = os.Getenv("TABBY_BIN")
	}
	if o.bin == "" {
		o.bin = filepath.Join(testutil.Root(), "bin")
	}
	return o, nil
}

// Report is everything one run measured.
type Report struct {
	Started   time.Time   `json:"started"`
	Cluster   load.Config `json:"cluster"`
	Load      *LoadResult `json:"load"`
	LoadError string      `json:"load_error,omitempty"`
	ColdEmpty *ColdStart  `json:"cold_start_empty"`
	ColdFull  *ColdStart  `json:"cold_start_full"`
	AddEmpty  *Latencies  `json:"add_empty"`
	AddFull   *Latencies  `json:"add_full"`
	// ptp + host-local's ADDs, taken in turns with tabby's.
	RefEmpty *Latencies `json:"ref_add_empty,omitempty"`
	RefFull  *Latencies `json:"ref_add_full,omitempty"`
	// The same ADD on the full datastore and on a second, empty one (its
	// own etcd and tabby-node on a second lab host), with ptp +
	// host-local, taken in turns in one series after the load: the two
	// datastores see the same machine at the same minutes.
	TurnsFull  *Latencies `json:"add_turns_full,omitempty"`
	TurnsEmpty *Latencies `json:"add_turns_empty,omitempty"`
	TurnsRef   *Latencies `json:"add_turns_ref,omitempty"`
	// TurnsProxy: the full datastore's ADDs, in the same turns, with the
	// plugin's etcd endpoint a gRPC proxy in front of etcd.
	TurnsProxy *Latencies `json:"add_turns_proxy,omitempty"`
	// Dial is the plugin's etcd client's round trips to each of the two
	// datastores, taken in turns after the ADDs, from each of their hosts
	// (the full datastore's first).
	Dial []*DialResult `json:"dial,omitempty"`
	// TurnsDisk is each etcd's disk over the ADDs in turns ("full",
	// "empty"): its backend's commits hold the lock that every request to
	// that etcd waits on while they last.
	TurnsDisk map[string]*EtcdDisk `json:"turns_etcd_disk,omitempty"`
	// AddCurve is the ADD's latency as the datastore fills: the empty
	// datastore, each load stage, the full one.
	AddCurve     []CurvePoint `json:"add_curve,omitempty"`
	Enforce      *Latencies   `json:"enforce_10k_watching"`
	EnforceEmpty *Latencies   `json:"enforce_empty"`
	Fanout       []FanoutRow  `json:"fanout"`
	IPAM         *IPAMResult  `json:"ipam"`
	Errors       []string     `json:"errors,omitempty"`
	Notes        []string     `json:"notes"`
	Writers      int          `json:"writers"`
	FullReads    int          `json:"full_reads"`
	Seconds      float64      `json:"seconds"`
}

func run() error {
	o, err := parse()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	for _, b := range []string{"tabby", "tabby-ipam", "tabby-node", "tabbyctl", "etcd-lab"} {
		if _, err := os.Stat(filepath.Join(o.bin, b)); err != nil {
			return fmt.Errorf("%s missing in %s: run make build", b, o.bin)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	rep := &Report{Started: time.Now(), Cluster: o.cluster, Writers: o.workers, FullReads: o.fullReads}
	s := lab.NewScript()
	defer s.Close()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigc
		fmt.Fprintln(os.Stderr, "scale: interrupted; removing the lab")
		s.Close()
		os.Exit(1)
	}()
	os.Setenv("TABBY_BIN_DIR", o.bin)
	// Host 1 is the real node on the full datastore; host 2 the same on a
	// datastore of its own that stays empty, for ADDs in turns with host 1's.
	lo := lab.Options{Hosts: 2, Prefix: "scl"}
	if o.etcdProfile > 0 {
		lo.EtcdArgs = []string{"--enable-pprof"}
	}
	lo.EtcdEnv = o.etcdEnv
	l := lab.New(s, lo)
	etcd := l.StartEtcd()
	full := 0
	if o.swapHosts {
		full = 1
	}
	r := &runner{o: o, l: l, h: l.Hosts[full], self: self, rep: rep, etcds: map[string]*lab.Proc{"etcd-full": etcd}}
	defer func() {
		rep.Seconds = time.Since(rep.Started).Seconds()
		if err := r.write(); err != nil {
			fmt.Fprintf(os.Stderr, "scale: report: %v\n", err)
		}
	}()
	return r.all()
}

type runner struct {
	o         *options
	l         *lab.Lab
	h         *lab.Host
	self      string
	rep       *Report
	node      *lab.Proc
	proxies   []string
	proxyPIDs []int
	etcds     map[string]*lab.Proc // by the name their profiles and logs take in -out
}

func (r *runner) ctl(args ...string) (string, error) { return r.ctlAt(r.l.EtcdURL, args...) }

func (r *runner) ctlAt(url string, args ...string) (string, error) {
	return r.l.Exec(r.l.Underlay, append([]string{filepath.Join(r.o.bin, "tabbyctl"), "--etcd-endpoints", url}, args...)...)
}

// note records the machine's load average with a phase: the harness
// shares its cores with whatever else runs, and the figures say so.
func (r *runner) note(phase string) {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) >= 3 {
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("%s %s: load average %s %s %s (%d CPUs)", time.Now().Format("15:04:05"), phase, f[0], f[1], f[2], runtime.NumCPU()))
	}
}

func (r *runner) fail(what string, err error) {
	msg := fmt.Sprintf("%s: %v", what, err)
	progress("FAILED %s", msg)
	r.rep.Errors = append(r.rep.Errors, msg)
}

func (r *runner) all() error {
	cl := r.o.cluster
	// The pool the loader fills, and the BGP mesh off (the loader sets it
	// too): 10,000 hosts are meshed through route reflectors, not by every
	// node with every other.
	if _, err := r.ctl("pool", "add", cl.Pool); err != nil {
		return err
	}
	if _, err := r.ctl("bgp", "config", "set", "--mesh", "off"); err != nil {
		return err
	}
	for _, p := range []string{profA, profB} {
		if _, err := r.ctl("profile", "add", p); err != nil {
			return err
		}
	}
	var err error
	r.note("empty datastore")
	progress("tabby-node cold start on the empty datastore")
	if r.rep.ColdEmpty, err = r.coldStart(); err != nil {
		return err
	}
	// The probe's two workloads stay on the host from here on, so that
	// the timed ADDs, on the empty datastore as on the full one, are not
	// the host's first: a host's first workload claims its block (and its
	// last releases it), which is not what an ADD on a host in use costs.
	pr, err := r.newProbe()
	if err != nil {
		return err
	}
	progress("CNI ADD on the empty datastore: %d", r.o.adds)
	if r.rep.AddEmpty, r.rep.RefEmpty, err = r.addLatency(r.o.adds); err != nil {
		r.fail("ADD on the empty datastore", err)
	}
	progress("profile change to enforcement on the empty datastore: %d changes", r.o.changes)
	if r.rep.EnforceEmpty, err = pr.changes(r.o.changes); err != nil {
		r.fail("enforcement on the empty datastore", err)
	}

	r.note("load")
	progress("loading %d hosts, %d workloads, %d profiles", cl.Hosts, cl.Endpoints, cl.Profiles)
	lr, err := r.loadInStages(cl)
	if err != nil {
		r.rep.LoadError = err.Error()
		return fmt.Errorf("load: %w", err)
	}
	r.rep.Load = lr
	progress("loaded in %.1f s: %d keys, etcd db %.0f MB", lr.Stats.Duration.Seconds(), lr.Stats.Keys, lr.Metrics["etcd_mvcc_db_total_size_in_bytes"]/1e6)
	if out, err := r.ctl("ipam", "show"); err == nil {
		progress("tabbyctl ipam show: %d lines", strings.Count(out, "\n"))
	}

	r.note("full datastore")
	progress("tabby-node cold start on the full datastore")
	if r.rep.ColdFull, err = r.coldStart(); err != nil {
		return err
	}
	progress("CNI ADD on the full datastore: %d", r.o.adds)
	if r.rep.AddFull, r.rep.RefFull, err = r.addLatency(r.o.adds); err != nil {
		r.fail("ADD on the full datastore", err)
	}
	if len(r.rep.AddCurve) > 0 {
		r.rep.AddCurve = append(append([]CurvePoint{{Workloads: 0, Tabby: r.rep.AddEmpty, Ref: r.rep.RefEmpty}}, r.rep.AddCurve...),
			CurvePoint{Workloads: cl.Endpoints, Tabby: r.rep.AddFull, Ref: r.rep.RefFull})
	}
	if r.o.turns > 0 {
		r.note("ADDs in turns")
		progress("CNI ADD in turns on the full and on an empty datastore, with ptp + host-local: %d rounds", r.o.turns)
		if err := r.addInTurns(); err != nil {
			r.fail("ADD in turns", err)
		}
	}

	if !r.o.skipFanout {
		if err := r.fanout(pr); err != nil {
			return err
		}
	}
	r.note("ipam")
	if !r.o.skipIPAM {
		var ir IPAMResult
		if err := r.worker(spec{Task: "ipam", Cluster: cl, Rate: r.o.rate}, &ir, nil); err != nil {
			r.fail("ipam check and GC", err)
		} else {
			r.rep.IPAM = &ir
		}
	}
	return nil
}

// fanout runs the watch fan-out steps, direct and through the proxies,
// and times profile changes on the real node while the most hosts watch.
func (r *runner) fanout(pr *probe) error {
	cl := r.o.cluster
	if err := r.startProxies(); err != nil {
		return err
	}
	r.note("fan-out")
	progress("watch fan-out: steps %v, %v of churn each, with %d proxies and without", r.o.steps, r.o.churn, len(r.proxies))
	var rows []FanoutRow
	hold := func() {
		progress("profile change to enforcement with %d simulated hosts watching: %d changes", r.o.steps[len(r.o.steps)-1], r.o.changes)
		var err error
		if r.rep.Enforce, err = pr.changes(r.o.changes); err != nil {
			r.fail("enforcement while watched", err)
		}
	}
	if err := r.worker(spec{Task: "fanout", Cluster: cl, Proxies: r.proxies, ProxyPIDs: r.proxyPIDs, Steps: r.o.steps, Churn: r.o.churn,
		Workers: r.o.workers, Hold: true, Conns: r.o.conns, FullReads: r.o.fullReads}, &rows, hold); err != nil {
		r.fail("fan-out", err)
	}
	r.rep.Fanout = rows
	return nil
}

// worker runs this program's worker in the underlay namespace and decodes
// its result into out; onHold runs when it says HOLD, and it is released
// afterwards.
func (r *runner) worker(sp spec, out any, onHold func()) error {
	sp.Etcd = r.l.EtcdURL
	raw, err := json.Marshal(sp)
	if err != nil {
		return err
	}
	ns := r.l.Underlay
	if sp.From != "" {
		ns = sp.From
	}
	cmd := r.l.Command(ns, r.self, "worker", string(raw))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	br := bufio.NewReader(stdout)
	var result []byte
	for {
		line, err := br.ReadBytes('\n')
		if strings.TrimSpace(string(line)) == "HOLD" {
			if onHold != nil {
				onHold()
			}
			fmt.Fprintln(stdin, "go")
			continue
		}
		result = append(result, line...)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("worker %s: %w", sp.Task, err)
	}
	return json.Unmarshal(result, out)
}

// besideEtcd is an address on etcd's, in the underlay namespace, at port:
// where the harness's other servers (proxies, the empty etcd) listen.
func (r *runner) besideEtcd(port int) string {
	host, _, _ := net.SplitHostPort(strings.TrimPrefix(r.l.EtcdURL, "http://"))
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// startProxies runs the gRPC proxies in the underlay namespace.
func (r *runner) startProxies() error {
	for i := 0; i < r.o.proxies; i++ {
		p, url, err := r.startProxy(23790+i, fmt.Sprintf("grpc-proxy-%d.log", i))
		if p != nil {
			r.proxyPIDs = append(r.proxyPIDs, p.PID)
		}
		if err != nil {
			return err
		}
		r.proxies = append(r.proxies, url)
	}
	return nil
}

// startProxy runs one etcd gRPC proxy in front of the lab's etcd, beside
// it at port, and waits until it listens. The process is returned (to be
// stopped) even when it does not come up.
func (r *runner) startProxy(port int, log string) (*lab.Proc, string, error) {
	addr := r.besideEtcd(port)
	p := r.l.Start(r.l.Underlay, filepath.Join(r.l.Dir, log), filepath.Join(r.o.bin, "etcd-lab"),
		"grpc-proxy", "--endpoints", r.l.EtcdURL, "--listen", addr)
	err := lab.Eventually(30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := r.l.DialContext(ctx, r.l.Underlay, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		return p, "", fmt.Errorf("grpc-proxy %s: %w", addr, err)
	}
	return p, "http://" + addr, nil
}

// ColdStart is one tabby-node start.
type ColdStart struct {
	ReadySeconds float64 `json:"ready_s"` // process start to status ready (its etcd data loaded, rules in force)
	RSSBytes     int64   `json:"rss_bytes"`
}

// coldStart (re)starts tabby-node on the lab host and times it to ready.
func (r *runner) coldStart() (*ColdStart, error) {
	if r.node != nil {
		if err := r.node.Stop(10 * time.Second); err != nil {
			progress("tabby-node stop: %v", err)
		}
	}
	t0 := time.Now()
	var err error
	if r.node, err = r.startNode(r.h, r.l.EtcdURL); err != nil {
		return nil, err
	}
	cs := &ColdStart{ReadySeconds: time.Since(t0).Seconds()}
	// RSS once its first passes are done, not the moment it said ready.
	time.Sleep(2 * time.Second)
	cs.RSSBytes = rss(r.node.PID)
	progress("tabby-node ready in %.2f s, RSS %.1f MB", cs.ReadySeconds, float64(cs.RSSBytes)/1e6)
	return cs, nil
}

// startNode starts tabby-node on lab host h with the etcd at url and
// waits until it says ready.
func (r *runner) startNode(h *lab.Host, url string) (*lab.Proc, error) {
	sd := r.stateDir(h)
	if err := os.MkdirAll(sd, 0o755); err != nil {
		return nil, err
	}
	node := r.l.Start(h.NS, filepath.Join(r.l.Dir, "tabby-node-"+h.Name+".log"), filepath.Join(r.o.bin, "tabby-node"), "--name", h.Name,
		"--ip", h.CIDR, "--etcd-endpoints", url, "--state-dir", sd, "--metrics-addr", "")
	err := lab.Eventually(60*time.Second, func() error {
		if node.Exited() {
			return lab.GiveUp(fmt.Errorf("tabby-node exited: %v\n%s", node.Wait(), lab.Tail(node.Log, 20)))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := nodestatus.Get(ctx, sd)
		if err != nil {
			return err
		}
		if !st.Ready {
			return errors.New("not ready")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tabby-node on %s: %w", h.Name, err)
	}
	return node, nil
}

func (r *runner) stateDir(h *lab.Host) string { return filepath.Join(r.l.Dir, "state-"+h.Name) }

func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// Latencies are one timed series.
type Latencies struct {
	N       int       `json:"n"`
	Samples []float64 `json:"samples_ms"`
	P50     float64   `json:"p50_ms"`
	P99     float64   `json:"p99_ms"`
	Failed  int       `json:"failed"`
	// Steps is the ADD's own steps, p50 each in ms, from the plugin's
	// debug log: where the time goes when the datastore is full.
	Steps map[string]float64 `json:"steps_p50_ms,omitempty"`
	// Steps99 is each step's p99: where the slow ADDs spent their time.
	Steps99 map[string]float64 `json:"steps_p99_ms,omitempty"`
	// What else ran meanwhile: the machine's busy cores over the series
	// and tabby-node's CPU per ADD+DEL.
	BusyCores float64 `json:"busy_cores,omitempty"`
	NodeCPUms float64 `json:"node_cpu_ms_per_add,omitempty"`
}

func latencies(d []time.Duration, failed int) *Latencies {
	slices.Sort(d)
	l := &Latencies{N: len(d), Failed: failed, P50: ms(load.Percentile(d, 50)), P99: ms(load.Percentile(d, 99))}
	for _, x := range d {
		l.Samples = append(l.Samples, ms(x))
	}
	return l
}

// machineCPU is the machine's busy and total jiffies (/proc/stat).
func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, x := range f[1:] {
		v, _ := strconv.ParseUint(x, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

var stepRE = regexp.MustCompile(`msg="ADD step" .*step=(\w+) elapsed=(\S+)`)

// addSteps reads the plugin's "ADD step" lines written after from: each
// is the time since the ADD began, so a step's own time is its elapsed
// less the previous step's ("done" after "endpoint" is the wait for the
// policy, named so). It returns each step's p50 and p99.
func addSteps(path string, from int64) (p50, p99 map[string]float64) {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < from {
		return nil, nil
	}
	per := map[string][]time.Duration{}
	var prev time.Duration
	for _, line := range strings.Split(string(b[from:]), "\n") {
		m := stepRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		el, err := time.ParseDuration(m[2])
		if err != nil {
			continue
		}
		step := m[1]
		if step == "identity" {
			prev = 0
		}
		if step == "done" {
			step = "policy"
		}
		per[step] = append(per[step], el-prev)
		prev = el
	}
	p50, p99 = map[string]float64{}, map[string]float64{}
	for k, v := range per {
		slices.Sort(v)
		p50[k], p99[k] = ms(load.Percentile(v, 50)), ms(load.Percentile(v, 99))
	}
	return p50, p99
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *runner) conf(profile string) []byte {
	return r.confOf(r.h, r.l.EtcdURL, r.cniLog(r.h), profile)
}

func (r *runner) cniLog(h *lab.Host) string { return filepath.Join(r.l.Dir, "cni-"+h.Name+".log") }

func (r *runner) confOf(h *lab.Host, url, log, profile string) []byte {
	return fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"tabby-net","type":"tabby","etcd_endpoints":%q,"nodename":%q,
	  "state_dir":%q,"log_file":%q,"log_level":"debug","profiles":[%q],"ipam":{"type":"tabby-ipam"}}`,
		url, h.Name, r.stateDir(h), log, profile)
}

// plugin runs a CNI plugin on lab host h: tabby from bin/, the reference
// from the system's CNI plugins.
func (r *runner) plugin(h *lab.Host, name, cmd, id, nsPath string, conf []byte) testutil.Outcome {
	path := filepath.Join(r.o.bin, name)
	if name != "tabby" {
		path = filepath.Join("/usr/lib/cni", name)
	}
	return testutil.Run(path, testutil.Call{Command: cmd, ContainerID: id, Netns: nsPath,
		IfName: "eth0", Path: r.o.bin + ":/usr/lib/cni", Conf: conf, Wrap: []string{"ip", "netns", "exec", h.NS}, Timeout: 60 * time.Second})
}

// side is one series of ADDs: a plugin on a lab host with its netconf.
type side struct {
	name   string
	plugin string
	h      *lab.Host
	conf   []byte
	log    string    // tabby's debug log, for the ADD's steps ("" for the reference)
	node   *lab.Proc // the host's tabby-node, for its CPU (nil for the reference)
}

func (r *runner) tabbySide(name string) side {
	return side{name: name, plugin: "tabby", h: r.h, conf: r.conf(profA), log: r.cniLog(r.h), node: r.node}
}

func (r *runner) refSide() side {
	return side{name: "ptp + host-local", plugin: "ptp", h: r.h, conf: r.refConf()}
}

// addLatency times n CNI ADDs on the lab host (tabby-node enforcing a
// profile on each), each followed by its DEL, beside as many of ptp +
// host-local (no datastore) in turns A B B A: what the machine does to
// ADDs between the empty and the full datastore (here: a 9 GB etcd beside
// them) shows in the reference too.
func (r *runner) addLatency(n int) (*Latencies, *Latencies, error) {
	l, err := r.addTurns(n, []side{r.tabbySide("tabby"), r.refSide()})
	return l[0], l[1], err
}

// addInTurns times ADDs on the full datastore and on a second, empty one
// in one series, in turns with each other and with ptp + host-local (every
// order of the three in rotation): ADDs on an empty datastore timed before
// the load, minutes earlier, met another machine than those on the full
// one, and on 2 shared cores that alone moves a p99 of a few hundred ADDs
// by more than the 10% the goal allows.
func (r *runner) addInTurns() error {
	empty, stop, err := r.startEmpty()
	if err != nil {
		return err
	}
	defer stop()
	if r.o.etcdProfile > 0 {
		wait := r.profileEtcds(map[string]string{"etcd-full": r.l.EtcdURL, "etcd-empty": r.emptyURL()})
		defer func() {
			wait()
			r.keepLogs()
		}()
	}
	sides := []side{r.tabbySide("tabby, full datastore"), empty, r.refSide()}
	// The plugins of a cluster this size reach etcd through gRPC proxies
	// (the sizing guide's deployment past ~2,000 hosts): the same ADDs on
	// the full datastore, with the plugin's connection opened to a proxy
	// that holds its own to etcd.
	if r.o.turnsProxy {
		proxy, url, err := r.startProxy(23810, "grpc-proxy-turns.log")
		if proxy != nil {
			defer func() {
				if err := proxy.Stop(10 * time.Second); err != nil {
					progress("stop grpc-proxy: %v", err)
				}
			}()
		}
		if err != nil {
			return err
		}
		via := r.tabbySide("tabby, full datastore through a gRPC proxy")
		via.log = filepath.Join(r.l.Dir, "cni-"+r.h.Name+"-proxy.log") // its own steps
		via.conf = r.confOf(r.h, url, via.log, profA)
		sides = append(sides, via)
	}
	urls := map[string]string{"full": r.l.EtcdURL, "empty": r.emptyURL()}
	before := r.etcdMetrics(urls)
	l, err := r.addTurns(r.o.turns, sides)
	r.rep.TurnsDisk = diskBetween(before, r.etcdMetrics(urls))
	r.rep.TurnsFull, r.rep.TurnsEmpty, r.rep.TurnsRef = l[0], l[1], l[2]
	if len(l) > 3 {
		r.rep.TurnsProxy = l[3]
	}
	if err != nil {
		return err
	}
	// From each datastore's host to both datastores: does a slower round
	// trip follow the datastore or the host?
	for _, h := range r.l.Hosts[:2] {
		var d DialResult
		if err := r.worker(spec{Task: "dial", Beside: r.emptyURL(), Rounds: r.o.turns, From: h.NS}, &d, nil); err != nil {
			return err
		}
		d.From = h.Name
		r.rep.Dial = append(r.rep.Dial, &d)
	}
	return nil
}

// startEmpty runs a second etcd and a tabby-node on lab host 2 with it:
// the empty datastore, holding what a host in use holds (the pool, the
// BGP configuration, the profile and one resident workload, so that no
// timed ADD claims or frees the host's block).
func (r *runner) startEmpty() (_ side, stop func(), err error) {
	h := r.l.Hosts[1]
	if h == r.h {
		h = r.l.Hosts[0]
	}
	url := r.emptyURL()
	argv, err := r.l.EtcdCommand("--listen-client", url, "--data-dir", filepath.Join(r.l.Dir, "etcd-empty"))
	if err != nil {
		return side{}, nil, err
	}
	etcd := r.l.Start(r.l.Underlay, filepath.Join(r.l.Dir, "etcd-empty.log"), argv...)
	r.etcds["etcd-empty"] = etcd
	var node *lab.Proc
	var nsName, nsPath string
	conf := r.confOf(h, url, r.cniLog(h), profA)
	stop = func() {
		if nsName != "" {
			r.plugin(h, "tabby", "DEL", "scale-resident", nsPath, conf)
			if err := r.l.RemoveContainer(nsName); err != nil {
				progress("remove %s: %v", nsName, err)
			}
		}
		for _, p := range []*lab.Proc{node, etcd} {
			if p != nil {
				if err := p.Stop(10 * time.Second); err != nil {
					progress("stop pid %d: %v", p.PID, err)
				}
			}
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	if err = lab.Eventually(60*time.Second, func() error {
		if etcd.Exited() {
			return lab.GiveUp(fmt.Errorf("etcd-lab exited: %v\n%s", etcd.Wait(), lab.Tail(etcd.Log, 20)))
		}
		_, err := r.ctlAt(url, "pool", "show")
		return err
	}); err != nil {
		return side{}, nil, fmt.Errorf("empty etcd: %w", err)
	}
	for _, args := range [][]string{{"pool", "add", r.o.cluster.Pool}, {"bgp", "config", "set", "--mesh", "off"}, {"profile", "add", profA}} {
		if out, err := r.ctlAt(url, args...); err != nil {
			return side{}, nil, fmt.Errorf("empty etcd: tabbyctl %v: %v %s", args, err, out)
		}
	}
	if node, err = r.startNode(h, url); err != nil {
		return side{}, nil, err
	}
	nsName, nsPath = r.l.AddContainer(h, "resident")
	if out := r.plugin(h, "tabby", "ADD", "scale-resident", nsPath, conf); out.ExitCode != 0 {
		return side{}, nil, fmt.Errorf("resident workload on the empty datastore: exit %d: %s", out.ExitCode, out.Stdout)
	}
	return side{name: "tabby, empty datastore", plugin: "tabby", h: h, conf: conf, log: r.cniLog(h), node: node}, stop, nil
}

// keepLogs copies what explains the profiles of the ADDs in turns into
// -out: both etcds' logs (with GODEBUG=gctrace=1 in -etcd-env, their
// collections, timed from the start each <name>.started holds) and the
// plugin's debug logs of both hosts (each step of each ADD, timestamped).
func (r *runner) keepLogs() {
	keep := map[string]string{}
	for name, p := range r.etcds {
		keep[name+".log"] = p.Log
		if err := os.WriteFile(filepath.Join(r.o.out, name+".started"), []byte(p.Started.UTC().Format(time.RFC3339Nano)+"\n"), 0o644); err != nil {
			progress("keep %s start: %v", name, err)
		}
	}
	for _, h := range r.l.Hosts {
		keep["cni-"+h.Name+".log"] = r.cniLog(h)
	}
	keep["cni-"+r.h.Name+"-proxy.log"] = filepath.Join(r.l.Dir, "cni-"+r.h.Name+"-proxy.log")
	for name, path := range keep {
		b, err := os.ReadFile(path)
		if err == nil {
			err = os.WriteFile(filepath.Join(r.o.out, name), b, 0o644)
		}
		if err != nil {
			progress("keep %s: %v", name, err)
		}
	}
}

// EtcdDisk is what one etcd's disk did over a series.
type EtcdDisk struct {
	Commit   sim.Dist `json:"backend_commit"`
	WALFsync sim.Dist `json:"wal_fsync"`
}

// etcdMetrics scrapes each etcd (name -> client URL) from the underlay
// namespace, where the lab's etcds listen; nil for one that fails (it
// explains a run, it is not one of its figures).
func (r *runner) etcdMetrics(urls map[string]string) map[string]sim.Metrics {
	out := map[string]sim.Metrics{}
	for name, url := range urls {
		b, err := r.l.Command(r.l.Underlay, "curl", "-sSf", "--max-time", "10", url+"/metrics").Output()
		if err == nil {
			out[name], err = sim.Parse(bytes.NewReader(b))
		}
		if err != nil {
			progress("metrics of etcd %s: %v", name, err)
		}
	}
	return out
}

func diskBetween(before, after map[string]sim.Metrics) map[string]*EtcdDisk {
	out := map[string]*EtcdDisk{}
	for name, a := range after {
		if b, ok := before[name]; ok && a != nil && b != nil {
			out[name] = &EtcdDisk{
				Commit:   sim.Between(b, a, "etcd_disk_backend_commit_duration_seconds"),
				WALFsync: sim.Between(b, a, "etcd_disk_wal_fsync_duration_seconds"),
			}
		}
	}
	return out
}

// CurvePoint is the ADD's latency with some of the workloads loaded.
type CurvePoint struct {
	Workloads int        `json:"workloads"`
	Tabby     *Latencies `json:"tabby"`
	Ref       *Latencies `json:"ref"` // ptp + host-local, in turns with tabby's
}

// loadInStages fills the datastore in r.o.stages parts, timing ADDs
// between them (r.rep.AddCurve, without its two ends: the empty and the
// full datastore's own series).
func (r *runner) loadInStages(cl load.Config) (*LoadResult, error) {
	c, err := load.New(cl)
	if err != nil {
		return nil, err
	}
	stages := max(1, r.o.stages)
	out := &LoadResult{}
	workloads := 0
	for i := range stages {
		from, to := c.Hosts*i/stages, c.Hosts*(i+1)/stages
		var part LoadResult
		if err := r.worker(spec{Task: "load", Cluster: cl, Range: []int{from, to}}, &part, nil); err != nil {
			return nil, err
		}
		if i == 0 {
			out.Before = part.Before
		}
		out.Metrics = part.Metrics
		out.Stats.Keys += part.Stats.Keys
		out.Stats.Txns += part.Stats.Txns
		out.Stats.Bytes += part.Stats.Bytes
		out.Stats.Duration += part.Stats.Duration
		for h := from; h < to; h++ {
			workloads += c.EndpointsOf(h)
		}
		if i == stages-1 || r.o.stageAdds <= 0 {
			continue
		}
		progress("CNI ADD with %d of %d workloads loaded: %d", workloads, c.Endpoints, r.o.stageAdds)
		t, ref, err := r.addLatency(r.o.stageAdds)
		if err != nil {
			r.fail(fmt.Sprintf("ADD with %d workloads", workloads), err)
		}
		r.rep.AddCurve = append(r.rep.AddCurve, CurvePoint{Workloads: workloads, Tabby: t, Ref: ref})
	}
	return out, nil
}

// emptyURL is the client URL of the empty datastore's etcd.
func (r *runner) emptyURL() string { return "http://" + r.besideEtcd(23800) }

// profileEtcds takes a CPU profile of each etcd (name -> client URL) at
// once, from the underlay namespace, into the report directory; the
// returned func waits for them. A profile that fails is reported, not
// fatal: it explains a run, it is not one of its figures.
func (r *runner) profileEtcds(urls map[string]string) (wait func()) {
	var wg sync.WaitGroup
	for name, url := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := filepath.Join(r.o.out, name+".pprof")
			q := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", url, int(r.o.etcdProfile.Seconds()))
			if b, err := r.l.Command(r.l.Underlay, "curl", "-sSf", "-o", out, q).CombinedOutput(); err != nil {
				progress("profile %s: %v %s", name, err, b)
				return
			}
			progress("profile %s: %s", name, out)
		}()
	}
	return wg.Wait
}

// addTurns times n rounds of one ADD and its DEL per side, each in a
// fresh container namespace, the sides taken in every order in rotation.
func (r *runner) addTurns(n int, sides []side) ([]*Latencies, error) {
	from := make([]int64, len(sides))
	cpu0 := make([]time.Duration, len(sides))
	for k, sd := range sides {
		if st, err := os.Stat(sd.log); sd.log != "" && err == nil {
			from[k] = st.Size()
		}
		if sd.node != nil {
			cpu0[k] = lab.CPUTime(sd.node.PID)
		}
	}
	busy0, total0 := machineCPU()
	d := make([][]time.Duration, len(sides))
	failed := make([]int, len(sides))
	var firstErr error
	call := func(sd side, name string) (time.Duration, bool) {
		nsName, nsPath := r.l.AddContainer(sd.h, name)
		id := fmt.Sprintf("scale-%s-%d", name, time.Now().UnixNano())
		out := r.plugin(sd.h, sd.plugin, "ADD", id, nsPath, sd.conf)
		ok := out.ExitCode == 0
		if !ok && firstErr == nil {
			firstErr = fmt.Errorf("%s ADD: exit %d: %s %s", sd.name, out.ExitCode, out.Stdout, out.Stderr)
		}
		if del := r.plugin(sd.h, sd.plugin, "DEL", id, nsPath, sd.conf); del.ExitCode != 0 && firstErr == nil {
			firstErr = fmt.Errorf("%s DEL: exit %d: %s", sd.name, del.ExitCode, del.Stdout)
		}
		if err := r.l.RemoveContainer(nsName); err != nil && firstErr == nil {
			firstErr = err
		}
		return out.Took, ok
	}
	orders := permutations(len(sides))
	for i := 0; i < n; i++ {
		for _, k := range orders[i%len(orders)] {
			if t, ok := call(sides[k], fmt.Sprintf("add%d_%d", i, k)); ok {
				d[k] = append(d[k], t)
			} else {
				failed[k]++
			}
		}
	}
	var busy float64
	if busy1, total1 := machineCPU(); total1 > total0 {
		busy = float64(busy1-busy0) / float64(total1-total0) * float64(runtime.NumCPU())
	}
	// Sides may share a node (the full datastore's, direct and through
	// the proxy): its CPU is per ADD+DEL of all of them.
	adds := map[*lab.Proc]int{}
	for _, sd := range sides {
		if sd.node != nil {
			adds[sd.node] += n
		}
	}
	out := make([]*Latencies, len(sides))
	for k, sd := range sides {
		l := latencies(d[k], failed[k])
		if sd.log != "" {
			l.Steps, l.Steps99 = addSteps(sd.log, from[k])
		}
		l.BusyCores = busy
		if sd.node != nil && n > 0 {
			l.NodeCPUms = ms(lab.CPUTime(sd.node.PID)-cpu0[k]) / float64(adds[sd.node])
		}
		out[k] = l
		progress("%s: ADD p50 %.1f ms p99 %.1f ms (%d failed), steps p50 %v p99 %v; tabby-node %.2f ms CPU per ADD+DEL",
			sd.name, l.P50, l.P99, failed[k], l.Steps, l.Steps99, l.NodeCPUms)
	}
	progress("machine busy %.2f cores", busy)
	return out, firstErr
}

// permutations is every order of 0..n-1: taken in rotation, each side
// comes first, last and between the others equally often.
func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

// refConf is the reference: ptp + host-local on a range of its own.
func (r *runner) refConf() []byte {
	return fmt.Appendf(nil, `{"cniVersion":"1.0.0","name":"ref-net","type":"ptp","ipMasq":false,
	  "ipam":{"type":"host-local","ranges":[[{"subnet":"198.18.0.0/16"}]],"dataDir":%q}}`, filepath.Join(r.l.Dir, "host-local"))
}

const (
	profA     = "scale-probe-a"
	profB     = "scale-probe-b"
	probePort = 8080
)

// probe is workload A probing workload B (both on the lab host, each with
// its own profile) over TCP: B's inbound allows A's tag or not.
type probe struct {
	r        *runner
	nsA, ipB string
}

func (r *runner) newProbe() (*probe, error) {
	p := &probe{r: r}
	for i, prof := range []string{profA, profB} {
		name := fmt.Sprintf("probe%c", 'a'+i)
		nsName, nsPath := r.l.AddContainer(r.h, name)
		out := r.plugin(r.h, "tabby", "ADD", "scale-"+name, nsPath, r.conf(prof))
		if out.ExitCode != 0 {
			return nil, fmt.Errorf("probe workload %s: exit %d: %s", name, out.ExitCode, out.Stdout)
		}
		var res struct {
			IPs []struct{ Address string } `json:"ips"`
		}
		if err := json.Unmarshal(out.Stdout, &res); err != nil || len(res.IPs) == 0 {
			return nil, fmt.Errorf("probe workload %s: result %s: %v", name, out.Stdout, err)
		}
		ip, _, _ := net.ParseCIDR(res.IPs[0].Address)
		if i == 0 {
			p.nsA = nsName
		} else {
			p.ipB = ip.String()
			r.l.ServeTCP(nsName, probePort)
		}
	}
	return p, nil
}

// reach makes one TCP connection attempt from A to B.
func (p *probe) reach() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	c, err := p.r.l.DialContext(ctx, p.nsA, "tcp", net.JoinHostPort(p.ipB, strconv.Itoa(probePort)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// changes alternately allows A into B (a rule appended to B's profile)
// and takes the rule away, n times, and times each from the start of the
// tabbyctl that writes it to the first probe that sees the new verdict.
func (p *probe) changes(n int) (*Latencies, error) {
	if p.reach() {
		return nil, errors.New("A reaches B before any rule allows it")
	}
	var d []time.Duration
	failed := 0
	for i := 0; i < n; i++ {
		allow := i%2 == 0
		args := []string{"profile", profB, "rule", "add", "inbound", "allow", "from", "tag", profA, "tcp", "port", strconv.Itoa(probePort)}
		if !allow {
			args = []string{"profile", profB, "rule", "remove", "inbound", "2"}
		}
		t0 := time.Now()
		if out, err := p.r.ctl(args...); err != nil {
			return latencies(d, failed), fmt.Errorf("tabbyctl %v: %v %s", args, err, out)
		}
		ok := false
		for time.Since(t0) < 10*time.Second {
			ps := time.Now()
			if p.reach() == allow {
				// A denial shows as a connect that times out: it took
				// effect before that attempt began.
				at := time.Since(t0)
				if !allow {
					at = ps.Sub(t0)
				}
				d = append(d, at)
				ok = true
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !ok {
			failed++
		}
		time.Sleep(200 * time.Millisecond)
	}
	l := latencies(d, failed)
	progress("change to enforcement p50 %.0f ms p99 %.0f ms (%d not seen within 10 s)", l.P50, l.P99, failed)
	return l, nil
}
