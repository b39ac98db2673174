package main

// The worker is this same program run inside the lab's underlay namespace
// (where etcd and the gRPC proxies listen), so that its many etcd clients
// are plain ones: it loads the cluster, runs the simulated hosts and the
// write load, and times ipam check and GC. It prints one JSON result on
// stdout; progress goes to stderr. "HOLD" on stdout means: the simulated
// hosts are all joined and stay so until a line arrives on stdin.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/test/lab"
	"github.com/tabby-net/tabby/test/scale/load"
	"github.com/tabby-net/tabby/test/scale/sim"
)

// spec is one worker task.
type spec struct {
	Task    string   `json:"task"` // load, fanout, ipam
	Etcd    string   `json:"etcd"`
	Proxies []string `json:"proxies,omitempty"`
	// ProxyPIDs are the proxies' processes, whose CPU the fan-out rows
	// report.
	ProxyPIDs []int       `json:"proxy_pids,omitempty"`
	Cluster   load.Config `json:"cluster"`
	Steps     []int       `json:"steps,omitempty"`
	// Range is load's hosts [from, to) (empty: all of them).
	Range   []int         `json:"range,omitempty"`
	Churn   time.Duration `json:"churn_ns,omitempty"`
	Workers int           `json:"workers,omitempty"`
	Hold    bool          `json:"hold,omitempty"` // fanout: HOLD after the last direct step
	Rate    float64       `json:"rate,omitempty"` // ipam: the others' write rate during check and GC
	// CheckRate is ipam check's pace in keys/s: 0 is tabbyctl's default
	// (ipam.DefaultCheckRate), below 0 unpaced.
	CheckRate float64 `json:"check_rate,omitempty"`
	CheckPage int     `json:"check_page,omitempty"` // ipam check's page (0: ipam.DefaultCheckPage)
	Conns     int     `json:"conns,omitempty"`
	FullReads int     `json:"full_reads,omitempty"` // fanout: hosts that read shared prefixes whole at join
	// Beside is a second etcd (dial: the empty datastore's), Rounds how
	// many times each is dialed.
	Beside string `json:"beside,omitempty"`
	Rounds int    `json:"rounds,omitempty"`
	// From is the network namespace the worker runs in ("": the underlay,
	// etcd's own).
	From string `json:"from,omitempty"`
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func runWorker(raw string) error {
	var sp spec
	if err := json.Unmarshal([]byte(raw), &sp); err != nil {
		return fmt.Errorf("worker spec: %w", err)
	}
	cl, err := load.New(sp.Cluster)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var out any
	switch sp.Task {
	case "load":
		out, err = workLoad(ctx, sp, cl)
	case "fanout":
		out, err = workFanout(ctx, sp, cl)
	case "ipam":
		out, err = workIPAM(ctx, sp, cl)
	case "dial":
		out, err = workDial(ctx, sp)
	default:
		err = fmt.Errorf("unknown task %q", sp.Task)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func metricsOf(ctx context.Context, url string) sim.Metrics {
	m, err := sim.Scrape(ctx, http.DefaultClient, url+"/metrics")
	if err != nil {
		progress("metrics: %v", err)
	}
	return m
}

// LoadResult is the fill's figures.
type LoadResult struct {
	Stats   load.Stats  `json:"stats"`
	Metrics sim.Metrics `json:"etcd"`
	Before  sim.Metrics `json:"etcd_before"`
}

func workLoad(ctx context.Context, sp spec, cl *load.Cluster) (*LoadResult, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{sp.Etcd}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	res := &LoadResult{Before: metricsOf(ctx, sp.Etcd)}
	last := time.Now()
	from, to := 0, cl.Hosts
	if len(sp.Range) == 2 {
		from, to = sp.Range[0], sp.Range[1]
	}
	res.Stats, err = cl.LoadRange(ctx, cli, from, to, func(done int, st load.Stats) {
		if time.Since(last) >= 10*time.Second {
			last = time.Now()
			progress("load: %d of %d hosts, %d keys, %.0f keys/s", from+done, cl.Hosts, st.Keys, float64(st.Keys)/st.Duration.Seconds())
		}
	})
	if err != nil {
		return nil, err
	}
	res.Metrics = metricsOf(ctx, sp.Etcd)
	return res, nil
}

// FanoutRow is one (mode, hosts) point of the watch fan-out curve.
type FanoutRow struct {
	Mode         string          `json:"mode"` // direct or proxy
	Proxies      int             `json:"proxies"`
	Hosts        int             `json:"hosts"`
	JoinSeconds  float64         `json:"join_s"`  // the hosts added at this step: reads and watches
	Watches      int64           `json:"watches"` // what the simulated hosts hold
	EtcdWatchers float64         `json:"etcd_watchers"`
	EtcdStreams  float64         `json:"etcd_watch_streams"`
	EtcdSlow     float64         `json:"etcd_slow_watchers"`
	Churn        sim.ChurnResult `json:"churn"`
	Events       int64           `json:"events"` // delivered to the simulated hosts during the churn
	EventsPerSec float64         `json:"events_per_s"`
	EtcdCPU      float64         `json:"etcd_cpu_s"` // etcd's CPU seconds during the churn
	// SimCPU is this worker's CPU seconds during the churn: the simulated
	// hosts receiving and the churn's writers, which on a real cluster run
	// on other machines than etcd.
	SimCPU    float64 `json:"sim_cpu_s"`
	ProxyCPU  float64 `json:"proxy_cpu_s,omitempty"` // the proxies' CPU seconds during the churn
	EtcdRSS   float64 `json:"etcd_rss_bytes"`
	ReadBytes int64   `json:"join_read_bytes"`
	FullReads int     `json:"join_full_reads"` // hosts of this step that read shared prefixes whole
	Lost      int64   `json:"lost_watches"`
	// EtcdDB is etcd's backend file after the step's churn, and
	// CompactSeconds how long compacting the step before took.
	EtcdDB         float64 `json:"etcd_db_bytes"`
	CompactSeconds float64 `json:"compact_s"`
}

// compact compacts etcd's history up to now and waits until the space is
// free, as a cluster's compactor (kube-apiserver's every 5 minutes, or
// etcd's auto-compaction) keeps it bounded: a minute of the churn writes
// gigabytes of revisions, and without it etcd's 8 GB quota is met within
// a few steps.
func compact(ctx context.Context, cli *clientv3.Client) (time.Duration, error) {
	t0 := time.Now()
	r, err := cli.Get(ctx, "compact", clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("compact: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if _, err := cli.Compact(cctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		return 0, fmt.Errorf("compact to %d: %w", r.Header.Revision, err)
	}
	return time.Since(t0), nil
}

func workFanout(ctx context.Context, sp spec, cl *load.Cluster) ([]FanoutRow, error) {
	kv, err := etcdv3.New(store.Config{Endpoints: []string{sp.Etcd}, Timeout: 30 * time.Second})
	if err != nil {
		return nil, err
	}
	defer kv.Client.Close()
	ch := sim.NewChurner(cl, kv)
	var rows []FanoutRow
	// Direct first: a proxy keeps its upstream watches a while after its
	// clients leave, which would burden the direct rows.
	modes := []string{"direct"}
	if len(sp.Proxies) > 0 {
		modes = append(modes, "proxy")
	}
	for _, mode := range modes {
		eps := []string{sp.Etcd}
		if mode == "proxy" {
			eps = sp.Proxies
		}
		hosts, err := sim.New(cl, sim.Config{Endpoints: eps, Conns: sp.Conns, CountOnlyFrom: sp.FullReads})
		if err != nil {
			return nil, err
		}
		prev := 0
		for _, n := range sp.Steps {
			before := hosts.Counters()
			full := n - prev
			if sp.FullReads > 0 {
				full = max(0, min(n, sp.FullReads)-prev)
			}
			prev = max(prev, n)
			took, err := compact(ctx, kv.Client)
			if err != nil {
				hosts.Close()
				return nil, fmt.Errorf("%s: %d hosts: %w", mode, n, err)
			}
			t0 := time.Now()
			if err := hosts.Join(ctx, n, 64); err != nil {
				hosts.Close()
				return nil, fmt.Errorf("%s: join %d hosts: %w", mode, n, err)
			}
			join := time.Since(t0)
			joined := hosts.Counters()
			m0 := metricsOf(ctx, sp.Etcd)
			sim0, proxy0 := selfCPU(), proxiesCPU(sp.ProxyPIDs)
			progress("%s: %d hosts joined in %.1f s (%d watches, etcd %v watchers); churn %v", mode, n, join.Seconds(), joined.Watchers, m0["etcd_debugging_mvcc_watcher_total"], sp.Churn)
			res := ch.Run(ctx, sim.ChurnConfig{Workers: sp.Workers, Duration: sp.Churn, ProfileEvery: 100, HostEvery: 200, Seed: uint64(n)})
			after := hosts.Counters()
			simCPU, proxyCPU := selfCPU()-sim0, proxiesCPU(sp.ProxyPIDs)-proxy0
			m1 := metricsOf(ctx, sp.Etcd)
			row := FanoutRow{Mode: mode, Hosts: n, JoinSeconds: join.Seconds(), Watches: joined.Watchers,
				EtcdWatchers: m0["etcd_debugging_mvcc_watcher_total"], EtcdStreams: m0["etcd_debugging_mvcc_watch_stream_total"],
				EtcdSlow: m1["etcd_debugging_mvcc_slow_watcher_total"], Churn: res, Events: after.Events - joined.Events,
				EtcdCPU: m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"], EtcdRSS: m1["process_resident_memory_bytes"],
				ReadBytes: joined.GetBytes - before.GetBytes, Lost: after.Lost, FullReads: full, SimCPU: simCPU,
				EtcdDB: m1["etcd_mvcc_db_total_size_in_bytes"], CompactSeconds: took.Seconds()}
			if mode == "proxy" {
				row.Proxies, row.ProxyCPU = len(sp.Proxies), proxyCPU
			}
			row.EventsPerSec = float64(row.Events) / res.Duration.Seconds()
			progress("%s %d hosts: %.0f writes/s (p50 %v p99 %v, %d errors %s), %.0f events/s to the hosts, etcd CPU %.1f s, proxies %.1f s, simulator and writers %.1f s; etcd db %.0f MB (compacted before in %.1f s)",
				mode, n, res.Rate, res.P50.Round(time.Microsecond), res.P99.Round(time.Microsecond), res.Errors, res.FirstError, row.EventsPerSec, row.EtcdCPU, row.ProxyCPU, row.SimCPU, row.EtcdDB/1e6, row.CompactSeconds)
			rows = append(rows, row)
		}
		if sp.Hold && mode == "direct" {
			fmt.Println("HOLD")
			_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		}
		hosts.Close()
		// etcd drops a closed stream's watchers in its own time: the next
		// mode's rows must not carry them.
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			if m := metricsOf(ctx, sp.Etcd); m["etcd_debugging_mvcc_watcher_total"] < 100 {
				break
			}
			time.Sleep(time.Second)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := ch.Restore(rctx); err != nil {
		return rows, fmt.Errorf("restore after churn: %w", err)
	}
	return rows, nil
}

const (
	checkReading = 10 * time.Second
	checkHeld    = 5 * time.Second
	checkSettle  = 500 * time.Millisecond
)

// gate is ipam check's pacer in the harness: it paces as inner does and
// holds the check while the gate is shut.
type gate struct {
	inner ipam.Pacer // nil: unpaced
	mu    sync.Mutex
	open  chan struct{} // closed while the check may read
}

func (g *gate) set(open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if was := isClosed(g.open); open && !was {
		close(g.open)
	} else if !open && was {
		g.open = make(chan struct{})
	}
}

func (g *gate) Wait(ctx context.Context, keys int) error {
	if g.inner != nil {
		if err := g.inner.Wait(ctx, keys); err != nil {
			return err
		}
	}
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// sampleHeap samples the Go heap every 100 ms until the function it
// returns is called, which returns the largest sample.
func sampleHeap() func() uint64 {
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var peak uint64
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(stop); return <-done }
}

// IPAMResult is ipam check's and GC's cost on the full datastore and what
// they did to others' writes.
type IPAMResult struct {
	Baseline     sim.ChurnResult `json:"baseline"`
	CheckSeconds float64         `json:"check_s"`
	CheckReport  struct {
		Blocks, Allocations, Handles, Endpoints, Problems int
		Kinds                                             map[string]int
	} `json:"check"`
	CheckRate float64 `json:"check_rate"` // keys/s; 0: unpaced
	CheckPage int     `json:"check_page"`
	// The checker's Go heap at its largest during the check (sampled every
	// 100 ms) and what it allocated in all: the worker runs nothing else
	// then but the others' writers.
	CheckHeapPeak  uint64 `json:"check_heap_peak_bytes"`
	CheckAllocated uint64 `json:"check_allocated_bytes"`
	// The others' writes are measured in alternating windows, the check
	// reading in one and held in the next (checkReading, checkHeld), so
	// that the machine's load, which moves over minutes on shared cores,
	// weighs on both alike: DuringCheck against CheckHeld is the check's
	// cost to others. CheckSeconds counts the reading windows only.
	DuringCheck      sim.ChurnResult `json:"during_check"`
	CheckHeld        sim.ChurnResult `json:"check_held"`
	CheckWindows     int             `json:"check_windows"`
	CheckWallSeconds float64         `json:"check_wall_s"`
	GCSeconds        float64         `json:"gc_s"`
	GCReleased       int             `json:"gc_released"`
	DuringGC         sim.ChurnResult `json:"during_gc"`
	CheckError       string          `json:"check_error,omitempty"`
	GCError          string          `json:"gc_error,omitempty"`
}

func workIPAM(ctx context.Context, sp spec, cl *load.Cluster) (*IPAMResult, error) {
	kv, err := etcdv3.New(store.Config{Endpoints: []string{sp.Etcd}, Timeout: 10 * time.Minute})
	if err != nil {
		return nil, err
	}
	defer kv.Client.Close()
	wkv, err := etcdv3.New(store.Config{Endpoints: []string{sp.Etcd}, Timeout: 30 * time.Second})
	if err != nil {
		return nil, err
	}
	defer wkv.Client.Close()
	ch := sim.NewChurner(cl, wkv)
	others := sim.ChurnConfig{Workers: 4, Rate: sp.Rate, Duration: 15 * time.Second, Seed: 7}
	res := &IPAMResult{}
	progress("ipam: the others' writes alone, %.0f/s for %v", sp.Rate, others.Duration)
	res.Baseline = ch.Run(ctx, others)

	during := func(f func(context.Context) error) (time.Duration, sim.ChurnResult, error) {
		stop := make(chan struct{})
		done := make(chan sim.ChurnResult)
		go func() {
			c := others
			c.Duration, c.Stop = time.Hour, stop
			done <- ch.Run(ctx, c)
		}()
		t0 := time.Now()
		err := f(ctx)
		took := time.Since(t0)
		close(stop)
		return took, <-done, err
	}
	res.CheckRate = sp.CheckRate
	if res.CheckRate == 0 {
		res.CheckRate = ipam.DefaultCheckRate
	}
	res.CheckRate, res.CheckPage = max(res.CheckRate, 0), sp.CheckPage
	progress("ipam: check on the full datastore at %.0f keys/s (0: unpaced), in windows of %v reading and %v held", res.CheckRate, checkReading, checkHeld)
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	heapPeak := sampleHeap()
	g := &gate{open: make(chan struct{})}
	if res.CheckRate > 0 {
		g.inner = ipam.NewRatePacer(res.CheckRate)
	}
	checkDone := make(chan struct{})
	var rep *ipam.Report
	var checkErr error
	t0 := time.Now()
	go func() {
		defer close(checkDone)
		rep, checkErr = ipam.CheckPaced(ctx, kv, ipam.CheckOptions{PageSize: sp.CheckPage, Pacer: g})
	}()
	var reading, held []sim.ChurnResult
	var active time.Duration
	for i := 0; ; i++ {
		open := i%2 == 1
		g.set(open)
		w0 := time.Now()
		c := others
		c.Duration, c.Seed, c.Stop = checkHeld, uint64(100+i), nil
		if open {
			c.Duration, c.Stop = checkReading, checkDone
		}
		// The page in flight when the gate closes must not count against
		// the held window.
		select {
		case <-checkDone:
		case <-time.After(checkSettle):
		}
		r := ch.Run(ctx, c)
		if open {
			active += time.Since(w0)
			reading = append(reading, r)
		} else {
			held = append(held, r)
		}
		if isClosed(checkDone) && !open {
			break // a held window after the check's last reading one
		}
	}
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	res.CheckHeapPeak, res.CheckAllocated = heapPeak(), m1.TotalAlloc-m0.TotalAlloc
	res.CheckSeconds, res.CheckWallSeconds = active.Seconds(), time.Since(t0).Seconds()
	res.DuringCheck, res.CheckHeld, res.CheckWindows = sim.Merge(reading...), sim.Merge(held...), len(reading)
	if rep != nil {
		res.CheckReport.Blocks, res.CheckReport.Allocations, res.CheckReport.Handles = rep.Blocks, rep.Allocations, rep.Handles
		res.CheckReport.Endpoints, res.CheckReport.Problems = rep.Endpoints, len(rep.Problems)
		res.CheckReport.Kinds = map[string]int{}
		for _, p := range rep.Problems {
			res.CheckReport.Kinds[p.Kind]++
		}
	}
	if checkErr != nil {
		res.CheckError = checkErr.Error()
	}
	progress("ipam: check %.1f s reading (%.1f s in all), %+v, heap peak %.0f MB; others' p50 %v p99 %v with the check reading, %v %v held (alone before: %v, %v)",
		res.CheckSeconds, res.CheckWallSeconds, res.CheckReport, float64(res.CheckHeapPeak)/1e6,
		res.DuringCheck.P50, res.DuringCheck.P99, res.CheckHeld.P50, res.CheckHeld.P99, res.Baseline.P50, res.Baseline.P99)

	// One host's GC (it reads that host's blocks and attachment notes, not
	// the network's handles), with every loaded attachment valid: it
	// releases none but what the churn left deleted.
	var valid []ipam.Attachment
	for h := 0; h < cl.Hosts; h++ {
		for s := 0; s < cl.EndpointsOf(h); s++ {
			valid = append(valid, ipam.Attachment{ContainerID: cl.ContainerID(h, s), IfName: "eth0"})
		}
	}
	progress("ipam: GC of network %s with %d valid attachments", cl.Network, len(valid))
	var released []string
	took, gr, err := during(func(ctx context.Context) error {
		a := &ipam.IPAM{KV: kv, Host: cl.Host(0)}
		var err error
		released, err = a.GC(ctx, cl.Network, valid)
		return err
	})
	res.GCSeconds, res.DuringGC, res.GCReleased = took.Seconds(), gr, len(released)
	if err != nil {
		res.GCError = err.Error()
	}
	progress("ipam: GC %.1f s, released %d; others' p99 %v", took.Seconds(), len(released), gr.P99)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := ch.Restore(rctx); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	return res, nil
}

// proxiesCPU is the proxies' CPU seconds so far.
func proxiesCPU(pids []int) float64 {
	var d time.Duration
	for _, pid := range pids {
		d += lab.CPUTime(pid)
	}
	return d.Seconds()
}

// selfCPU is this process's CPU seconds so far.
func selfCPU() float64 { return lab.CPUTime(os.Getpid()).Seconds() }

// DialResult is the round trips of the CNI plugin's etcd client to each
// etcd: its first call, a transaction like IPAM's (a compare and a put),
// which opens the connection as every CNI call does, and a second one on
// the open connection.
type DialResult struct {
	From        string `json:"from"` // the lab host's namespace it ran in
	First, Warm map[string]*Latencies
}

// workDial calls etcd and the etcd beside it in turns with the plugin's
// client, from one lab host: run from each host, it tells whether an
// ADD's round trip that is slower on one datastore than on the other,
// while etcd's handler times agree, follows the datastore or the host.
func workDial(ctx context.Context, sp spec) (*DialResult, error) {
	targets := map[string]string{"full": sp.Etcd, "empty": sp.Beside}
	first, warm := map[string][]time.Duration{}, map[string][]time.Duration{}
	key := "/scale/dial/" + sp.From
	rev := map[string]int64{}
	for i := 0; i < sp.Rounds; i++ {
		order := []string{"full", "empty"}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, name := range order {
			kv, err := store.NewGRPC(store.Config{Endpoints: []string{targets[name]}})
			if err != nil {
				return nil, err
			}
			txn := func() error {
				res, err := kv.Txn(ctx, []store.Cmp{{Key: key, ModRev: rev[name]}}, []store.Op{store.Put(key, []byte(`{"dial":true}`))})
				if err == nil && !res.Succeeded {
					err = errors.New("the dial key changed under the dial")
				}
				if err == nil {
					rev[name] = res.Revision
				}
				return err
			}
			t0 := time.Now()
			err = txn()
			t1 := time.Now()
			if err == nil {
				err = txn()
			}
			t2 := time.Now()
			kv.Close()
			if err != nil {
				return nil, fmt.Errorf("dial %s: %w", name, err)
			}
			first[name] = append(first[name], t1.Sub(t0))
			warm[name] = append(warm[name], t2.Sub(t1))
		}
	}
	r := &DialResult{From: sp.From, First: map[string]*Latencies{}, Warm: map[string]*Latencies{}}
	for name := range targets {
		r.First[name], r.Warm[name] = latencies(first[name], 0), latencies(warm[name], 0)
		progress("dial from %s to %s: first call p50 %.2f ms p99 %.2f ms, warm p50 %.2f ms p99 %.2f ms", sp.From, name,
			r.First[name].P50, r.First[name].P99, r.Warm[name].P50, r.Warm[name].P99)
	}
	// Leave the datastores as they were.
	for name, url := range targets {
		if kv, err := store.NewGRPC(store.Config{Endpoints: []string{url}}); err == nil {
			_, _ = kv.Txn(ctx, nil, []store.Op{store.Delete(key)})
			kv.Close()
		} else {
			progress("dial %s: %v", name, err)
		}
	}
	return r, nil
}
