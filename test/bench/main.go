// Command bench measures tabby's CNI plugins against Debian's ptp and
// host-local in the netns lab, all in one run, and writes DIR/report.md,
// DIR/report.json and DIR/readme-table.md (docs/scale-and-speed.md, "Speed
// rules"). readme-table.md is the README's performance table: one verdict
// per goal of the issues, from this run alone; make bench-readme splices it
// into the README.
//
//	go run ./test/bench -out bench/out       # make bench
//	go run ./test/bench -quick -out /tmp/b   # smoke run
//	go run ./test/bench -render bench/out    # report.md and readme-table.md again from report.json
//
// The deployed configuration (tabby with tabby-node running on the host and
// a profile on every workload) runs on a host of its own in the same lab,
// interleaved with every other case. Then, on the same host, pods through
// containerd's CRI with tabby and with ptp + host-local (cri.go; "not
// measured" with the reason when containerd or crictl is missing), and last
// the deployed ADD with 200,000 other hosts' endpoint records in etcd
// against the same ADD right before they were written (foreign.go).
//
// It needs root, tabby, tabby-ipam and tabbyctl from `make build` ($TABBY_BIN
// or <repo>/bin), cnitool (`make tools`) and Debian's plugins in
// /usr/lib/cni. Every plugin runs inside the lab's host namespace against the
// lab's etcd; the lab is removed on exit, also on error. A missed goal is
// reported, not an error: the exit status is non-zero only if something
// failed.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/test/lab"
)

const (
	tabbyPool       = "10.0.0.0/16"   // tabby-ipam's pool, made with tabbyctl
	hostLocalSubnet = "10.200.0.0/16" // host-local's range, disjoint from it
)

// interrupted receives SIGINT and SIGTERM once the lab exists (the lab
// handles them itself; main must only not exit under it).
var interrupted = make(chan os.Signal, 1)

type config struct {
	out                    string
	render                 string // re-render from DIR/report.json and exit
	runs                   string // DIR,DIR,...: the runs side by side, and exit
	n, callers, per, inits int
	callersHigh, perHigh   int // the second concurrent level (deployed case and ptp + host-local)
	quick                  bool
	node                   string // node rows: on, off or only
	foreign, criPods       int    // foreign endpoint records in etcd; pods per runtime through CRI
	foreignBudget          time.Duration
	bin, cnitool, cniDir   string
}

// paths are the programs the bench runs.
type paths struct {
	root    string // the repository
	bin     string // tabby, tabby-ipam, tabbyctl
	cnitool string
	cniDir  string // Debian's ptp and host-local
	noopDir string // the no-op plugin, built for this run
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "ipam-helper" {
		os.Exit(ipamHelper(os.Args[2:]))
	}
	c := parseFlags()
	if c.runs != "" {
		if err := runsTable(strings.Split(c.runs, ",")); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if c.render != "" {
		if err := rerender(c.render); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	start := time.Now()
	s := lab.NewScript()
	var labID string
	rep, err := runGuarded(s, c, &labID)
	select {
	case sig := <-interrupted:
		// The lab's own handler got sig too: it is removing the lab and then
		// ends this process with sig. Exiting first would cut that short.
		progress("%v: waiting for the lab to be removed", sig)
		time.Sleep(time.Minute)
		os.Exit(1)
	default:
	}
	s.Close() // removes the lab
	if s.Failed() {
		err = errors.Join(err, errors.New("the lab reported errors (see above)"))
	}
	if left := labNamespaces(labID); len(left) > 0 {
		err = errors.Join(err, fmt.Errorf("namespaces left behind: %v", left))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		if rep != nil && len(rep.Rows) > 0 {
			// What was measured is kept, marked incomplete: the goals of
			// the parts that did not run say "not measured".
			rep.Meta["incomplete"] = err.Error()
			rep.ratios()
			rep.judge()
			if _, werr := rep.write(c.out); werr == nil {
				progress("INCOMPLETE run: wrote what it measured to %s", c.out)
			}
		}
		os.Exit(1)
	}
	rep.Meta["took"] = time.Since(start).Round(time.Second).String() + " (lab setup and teardown included)"
	md, err := rep.write(c.out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
	fmt.Print(md)
	progress("wrote %s, %s and %s", filepath.Join(c.out, "report.md"), filepath.Join(c.out, "report.json"), filepath.Join(c.out, readmeTableFile))
}

// rerender writes report.md and readme-table.md again from dir's
// report.json (after a change of their format; no measurement).
func rerender(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		return err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("report.json: %w", err)
	}
	rep.judge()
	_, err = rep.write(dir)
	return err
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.out, "out", "bench/out", "directory for report.md and report.json")
	flag.IntVar(&c.n, "n", 200, "sequential iterations of every row")
	flag.IntVar(&c.callers, "c", 16, "concurrent callers")
	flag.IntVar(&c.per, "per", 10, "calls per concurrent caller")
	flag.IntVar(&c.callersHigh, "c-high", 64, "concurrent callers of the second level (deployed case and ptp + host-local)")
	flag.IntVar(&c.perHigh, "per-high", 2, "calls per caller at -c-high")
	flag.StringVar(&c.runs, "runs", "", "write DIR1/runs-table.md with the verdicts of the runs in DIR1,DIR2,... side by side, measure nothing")
	flag.StringVar(&c.render, "render", "", "write report.md and readme-table.md again from DIR/report.json, measure nothing")
	flag.IntVar(&c.inits, "init-runs", 20, "process starts traced with GODEBUG=inittrace=1 per binary")
	flag.BoolVar(&c.quick, "quick", false, "smoke run: -n 10 -per 2 -init-runs 5 unless given")
	flag.StringVar(&c.bin, "bin", os.Getenv("TABBY_BIN"), "directory with tabby, tabby-ipam, tabbyctl (default $TABBY_BIN, else <repo>/bin)")
	flag.StringVar(&c.cnitool, "cnitool", "", "cnitool binary (default <bin>/tools/cnitool, <repo>/bin/tools/cnitool, $PATH)")
	flag.StringVar(&c.cniDir, "cni-dir", "/usr/lib/cni", "directory with Debian's ptp and host-local")
	flag.StringVar(&c.node, "node", "on", "tabby-node rows (node_rows.go, a 10-host lab of their own): on, off or only")
	flag.IntVar(&c.foreign, "foreign", foreignGoal, "foreign endpoint records written to etcd for the last row of the main lab (0: skip the row)")
	flag.DurationVar(&c.foreignBudget, "foreign-budget", time.Minute, "the foreign records' fill stops after this; the row names the count written")
	flag.IntVar(&c.criPods, "cri-pods", 64, "pods per runtime through containerd CRI (0: skip the rows)")
	flag.Parse()
	if c.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for _, q := range []struct {
			name string
			v    *int
			val  int
		}{{"n", &c.n, 10}, {"per", &c.per, 2}, {"per-high", &c.perHigh, 1}, {"init-runs", &c.inits, 5}} {
			if !set[q.name] {
				*q.v = q.val
			}
		}
	}
	if c.node != "on" && c.node != "off" && c.node != "only" {
		fmt.Fprintln(os.Stderr, "bench: -node is on, off or only")
		os.Exit(2)
	}
	if c.foreign < 0 || c.foreign > 262000 || c.criPods < 0 {
		fmt.Fprintln(os.Stderr, "bench: -foreign is 0-262000 (their addresses fill a /14), -cri-pods at least 0")
		os.Exit(2)
	}
	if c.n < 1 || c.callers < 1 || c.per < 1 || c.callersHigh < 1 || c.perHigh < 1 || c.inits < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "bench: -n, -c, -per, -c-high, -per-high and -init-runs must be at least 1; no arguments")
		flag.Usage()
		os.Exit(2)
	}
	return c
}

// runGuarded is run with a panic turned into an error, so that the lab is
// still removed.
func runGuarded(s *lab.Script, c config, labID *string) (rep *Report, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return run(s, c, labID)
}

func run(s *lab.Script, c config, labID *string) (*Report, error) {
	p, err := findPaths(c)
	if err != nil {
		return nil, err
	}
	if c.node == "only" {
		rows, notes, err := nodeAndPolicyRows(s, c, p)
		rep := &Report{Meta: meta(c, p), Rows: rows, Notes: notes}
		rep.judge()
		return rep, err
	}
	progress("building the lab")
	l := lab.New(s, lab.Options{Hosts: 2})
	*labID = l.ID
	signal.Notify(interrupted, syscall.SIGINT, syscall.SIGTERM)
	// In the lab's directory, which goes with the lab also on a signal.
	p.noopDir = filepath.Join(l.Dir, "cni")
	if err := buildNoop(p.root, p.noopDir); err != nil {
		return nil, err
	}
	etcd := l.StartEtcd()
	b := &bench{s: s, p: p, l: l, h: l.Hosts[0], hn: l.Hosts[1], env: cleanEnv(), work: filepath.Join(l.Dir, "bench"),
		etcd: cpuMeter{pid: etcd.PID}}
	b.kv = etcdv3.FromClient(l.EtcdClient(), []string{l.EtcdURL})
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	// host2 runs tabby-node, as tabby is deployed; host1 has none.
	b.node = &nodeBench{p: p, l: l, kv: b.kv, work: b.work, env: b.env, quick: c.quick, procs: make([]*lab.Proc, len(l.Hosts))}
	for _, args := range [][]string{{"pool", "add", tabbyPool}, {"profile", "add", nodeProfile}} {
		if err := b.node.ctl(args...); err != nil {
			return nil, err
		}
	}
	if !isExec(filepath.Join(p.bin, "tabby-node")) {
		return nil, fmt.Errorf("tabby-node not found in %s: run make build", p.bin)
	}
	b.node.startNode(1)
	if err := waitNodeReady(b.node.stateDir(b.hn), 60*time.Second); err != nil {
		return nil, err
	}
	b.nodeCPU = cpuMeter{pid: b.node.procs[1].PID}
	rep := &Report{Meta: meta(c, p), Notes: notes(c)}
	loadStart := loadavg()

	cni, direct, err := b.cases()
	if err != nil {
		return rep, err
	}
	all := append(append([]*cniCase{}, cni...), direct...)
	progress("warm-up: one untimed ADD and DEL per case")
	if _, err := b.sequential(all, 1, "seq"); err != nil {
		return rep, fmt.Errorf("warm-up: %w", err)
	}

	// A host as users run it holds workloads: one of every CNI case stays
	// for the whole run, so the timed ADD and DEL are never a host's first
	// and last workload of a network, which with tabby-ipam claim and
	// release the host's block (and tabby-node announces and withdraws
	// it, a pass over everything on the host) on every iteration.
	resident := map[*cniCase]string{}
	defer func() {
		for rc, ns := range resident {
			if _, err := rc.do("DEL", "bench-resident-"+rc.key, ns); err != nil {
				progress("resident workload of %s: DEL: %v", rc.name, err)
			}
			_ = b.removeContainers([]string{ns})
		}
	}()
	for _, rc := range cni {
		ns := b.containers(rc.h, 1)[0]
		if _, err := rc.do("ADD", "bench-resident-"+rc.key, ns); err != nil {
			_ = b.removeContainers([]string{ns})
			return rep, fmt.Errorf("resident workload of %s: %w", rc.name, err)
		}
		resident[rc] = ns
	}

	progress("IPAM library in-process, %d assign+release", c.n)
	rows, err := b.ipamRows(c.n)
	if err != nil {
		return rep, err
	}
	rep.Rows = append(rep.Rows, rows...)

	progress("sequential: %d iterations of ADD+DEL x %d cases", c.n, len(all))
	if rows, err = b.sequential(all, c.n, "seq"); err != nil {
		return rep, fmt.Errorf("sequential: %w", err)
	}
	rep.Rows = append(rep.Rows, rows...)

	if rows, err = b.concurrentRows(cni, c.callers, c.per); err != nil {
		return rep, err
	}
	rep.Rows = append(rep.Rows, rows...)
	// The second level: only the deployed case and its reference.
	high := []*cniCase{caseOf(cni, "ptp-host-local"), caseOf(cni, "tabby-node")}
	if rows, err = b.concurrentRows(high, c.callersHigh, c.perHigh); err != nil {
		return rep, err
	}
	rep.Rows = append(rep.Rows, rows...)

	// The deployed case again with 1,000 more endpoints on its host.
	rows, note, err := b.manyEndpointRows(high, c.n)
	if err != nil {
		return rep, fmt.Errorf("1,000 endpoints: %w", err)
	}
	rep.Rows, rep.Notes = append(rep.Rows, rows...), append(rep.Notes, note)

	progress("process start-up: %d VERSION calls per binary, %d init traces", c.n, c.inits)
	if rows, err = b.startupRows(c.n); err != nil {
		return rep, err
	}
	rep.Rows = append(rep.Rows, rows...)
	if rows, err = b.binaryRows(c.inits); err != nil {
		return rep, err
	}
	rep.Rows = append(rep.Rows, rows...)

	// Pods through containerd's CRI on host2. A missing runtime or a
	// failure here says "not measured" in its row; a failure also fails
	// the run at the end, after everything else was measured.
	var soft []error
	if c.criPods > 0 {
		rows, note, skip, err := b.criRows(c.criPods)
		switch {
		case err != nil:
			progress("CRI rows failed: %v", err)
			rep.skip("cri", "failed: "+firstLine(err.Error()))
			soft = append(soft, fmt.Errorf("CRI rows: %w", err))
		case skip != "":
			rep.skip("cri", skip)
			rep.Notes = append(rep.Notes, "CRI rows not measured: "+skip+".")
		default:
			rep.Rows, rep.Notes = append(rep.Rows, rows...), append(rep.Notes, note)
		}
	} else {
		rep.skip("cri", "skipped with -cri-pods 0")
	}

	// Last in this lab: etcd grows by the foreign records (removed again).
	if c.foreign > 0 {
		rows, note, err := b.foreignRows(high, c.n, c.foreign, c.foreignBudget)
		if err != nil {
			return rep, fmt.Errorf("foreign records: %w", err)
		}
		rep.Rows, rep.Notes = append(rep.Rows, rows...), append(rep.Notes, note)
	} else {
		rep.skip("foreign", "skipped with -foreign 0")
	}

	if c.node == "on" {
		rows, notes, err := nodeAndPolicyRows(s, c, p)
		rep.Rows, rep.Notes = append(rep.Rows, rows...), append(rep.Notes, notes...)
		if err != nil {
			return rep, fmt.Errorf("node rows: %w", err)
		}
	}
	rep.ratios()
	rep.judge()
	rep.Meta["loadavg"] = "1/5/15 min: " + loadStart + " at start, " + loadavg() + " at end"
	for _, w := range b.leftovers() {
		progress("%s", w)
		rep.Notes = append(rep.Notes, w)
	}
	return rep, errors.Join(soft...)
}

// cases are the rows driven ADD then DEL: under cnitool (also run
// concurrently) and executed directly (to split cnitool's share off). The
// deployed case runs on host2, with tabby-node; every other on host1.
func (b *bench) cases() (cni, direct []*cniCase, err error) {
	nc := b.netconfs()
	tabbyPath := b.p.bin + ":" + b.p.cniDir
	for _, c := range []struct {
		h         *lab.Host
		key, name string
		conf      map[string]any
		path      string
	}{
		{b.h, "noop", "no-op Go plugin", nc.noop, b.p.noopDir},
		{b.h, "ptp-host-local", "ptp + host-local", nc.ptpHostLocal, b.p.cniDir},
		{b.hn, "tabby-node", "tabby + tabby-ipam, tabby-node enforcing policy (deployed)", nc.tabbyNode, tabbyPath},
		{b.h, "tabby", "tabby + tabby-ipam, no tabby-node on the host", nc.tabby, tabbyPath},
		{b.h, "ptp-tabby-ipam", "ptp + tabby-ipam", nc.ptpTabbyIPAM, tabbyPath},
	} {
		cc, err := b.cnitoolCase(c.h, c.key, c.name, c.conf, c.path)
		if err != nil {
			return nil, nil, err
		}
		cni = append(cni, cc)
	}
	for _, c := range []struct {
		key, name, bin string
		conf           map[string]any
		fresh          bool
	}{
		{"tabby", "tabby, IPAM in process (the default: no tabby-ipam process)", "tabby", nc.tabby, true},
		{"tabby-exec", `tabby delegating to the tabby-ipam binary ("ipam_exec": true)`, "tabby", nc.tabbyExec, true},
		{"tabby-ipam", "tabby-ipam alone (ptp's netconf)", "tabby-ipam", nc.ptpTabbyIPAM, false},
	} {
		dc, err := b.directCase(b.h, c.key, c.name, filepath.Join(b.p.bin, c.bin), c.conf, tabbyPath, c.fresh)
		if err != nil {
			return nil, nil, err
		}
		direct = append(direct, dc)
	}
	return cni, direct, nil
}

func caseOf(cases []*cniCase, key string) *cniCase {
	for _, c := range cases {
		if c.key == key {
			return c
		}
	}
	panic("bench: no case " + key)
}

// ratios relates every cnitool row to ptp + host-local of the same mode and
// op (judge holds them against the goals).
func (rep *Report) ratios() {
	for i := range rep.Rows {
		r := &rep.Rows[i]
		f := strings.Split(r.Key, "/") // cnitool/<case>/<mode>/<op>
		if r.Section != "cnitool" || len(f) != 4 || f[1] == "ptp-host-local" || f[1] == "noop" {
			continue
		}
		r.ratio(rep.row(keyCNI("ptp-host-local", f[2], f[3])))
	}
}

func findPaths(c config) (paths, error) {
	var p paths
	_, file, _, _ := runtime.Caller(0)
	p.root = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	if _, err := os.Stat(filepath.Join(p.root, "go.mod")); err != nil {
		wd, _ := os.Getwd()
		if _, err := os.Stat(filepath.Join(wd, "go.mod")); err != nil {
			return p, errors.New("cannot find the repository root: run from it with go run ./test/bench")
		}
		p.root = wd
	}
	p.bin = c.bin
	if p.bin == "" {
		p.bin = filepath.Join(p.root, "bin")
	}
	var err error
	if p.bin, err = filepath.Abs(p.bin); err != nil {
		return p, err
	}
	for _, n := range []string{"tabby", "tabby-ipam", "tabbyctl"} {
		if !isExec(filepath.Join(p.bin, n)) {
			return p, fmt.Errorf("%s not found in %s: run make build, or set TABBY_BIN or -bin", n, p.bin)
		}
	}
	p.cniDir = c.cniDir
	for _, n := range []string{"ptp", "host-local"} {
		if !isExec(filepath.Join(p.cniDir, n)) {
			return p, fmt.Errorf("%s not found in %s: make deps installs containernetworking-plugins", n, p.cniDir)
		}
	}
	p.cnitool = c.cnitool
	if p.cnitool == "" {
		for _, cand := range []string{filepath.Join(p.bin, "tools", "cnitool"), filepath.Join(p.root, "bin", "tools", "cnitool")} {
			if isExec(cand) {
				p.cnitool = cand
				break
			}
		}
	}
	if p.cnitool == "" {
		if p.cnitool, err = exec.LookPath("cnitool"); err != nil {
			return p, errors.New("cnitool not found: run make tools, or pass -cnitool")
		}
	}
	p.cnitool, err = filepath.Abs(p.cnitool)
	return p, err
}

func isExec(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// buildNoop builds the no-op plugin (test/bench/noop) like make build does.
func buildNoop(root, dir string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "noop"), "./test/bench/noop")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the no-op plugin: %w: %s", err, out)
	}
	return nil
}

func meta(c config, p paths) map[string]string {
	m := map[string]string{
		"date":     time.Now().Format(time.RFC3339),
		"machine":  fmt.Sprintf("%d CPUs, Linux %s, %s", runtime.NumCPU(), readTrim("/proc/sys/kernel/osrelease"), runtime.Version()),
		"settings": fmt.Sprintf("%d sequential iterations; %d callers x %d calls concurrent; %d callers x %d calls (deployed case and ptp + host-local); %d init traces", c.n, c.callers, c.per, c.callersHigh, c.perHigh, c.inits),
		"binaries": fmt.Sprintf("%s; cnitool %s; Debian plugins %s", p.bin, p.cnitool, p.cniDir),
	}
	// Settings that differ from make bench's (which gives only -out).
	var flags []string
	flag.Visit(func(f *flag.Flag) {
		if f.Name != "out" && f.Name != "bin" {
			flags = append(flags, "-"+f.Name+"="+f.Value.String())
		}
	})
	if len(flags) > 0 {
		m["flags"] = strings.Join(flags, " ")
	}
	if out, err := exec.Command("git", "-C", p.root, "describe", "--always", "--dirty").Output(); err == nil {
		m["source"] = strings.TrimSpace(string(out))
	}
	return m
}

func notes(c config) []string {
	return []string{
		"Every plugin process runs in a lab host's network namespace, forked from a thread that joined it (no `ip netns exec` wrapper in the timings). Each ADD gets a container namespace created before the timed part.",
		"Two hosts: host2 runs tabby-node (log level info) and its tabby case puts profile " + nodeProfile + " on every workload, so its ADD returns once tabby-node has the workload's rules in force: the configuration tabby is deployed in. Every other case runs on host1, which has no tabby-node. The deployed case is interleaved with the others in every sequential and concurrent phase.",
		"Sequential rows: per iteration every case does ADD then DEL; cases are interleaved and their order rotates each iteration, so load drift hits all alike. One untimed warm-up ADD+DEL per case ran first.",
		fmt.Sprintf("Concurrent rows: %d goroutines take the ADDs from a queue (each sample is one call's wall time under that load); the DELs follow the same way once every ADD is done. %d calls per case in two rounds, the second in reverse case order.", c.callers, c.callers*c.per),
		"Every CNI case keeps one resident workload on its host for the whole run (ADDed after the warm-up, DELeted at the end), as a host in use has: the timed calls are never a host's first and last workload, which with tabby-ipam claim and release the host's block on every iteration (and tabby-node announces and withdraws it). Runs before 2026-12-04 14:40 had no resident workload.",
		"ptp runs with ipMasq=false (no iptables). host-local's dataDir and tabby's state_dir sit in the lab's work directory; tabby logs at info level to a file there.",
		"etcd is the lab's single etcd-lab member in the underlay namespace of this machine: its CPU time competes with the plugins'. The tabby-ipam pool is " + tabbyPool + ", host-local's range " + hostLocalSubnet + ".",
		"Direct rows: tabby exec'd as a runtime would, once as deployed by default (tabby-ipam's code runs inside the tabby process: no second process) and once with \"ipam_exec\": true (tabby execs the tabby-ipam binary from CNI_PATH, as with any other IPAM plugin); tabby-ipam exec'd alone with the netconf ptp hands it. The IPAM library rows keep one connection open and reuse it; the plugins open one per process.",
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func loadavg() string {
	f := strings.Fields(readTrim("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// labNamespaces lists the namespaces of lab id that still exist.
func labNamespaces(id string) []string {
	if id == "" {
		return nil
	}
	entries, _ := os.ReadDir("/run/netns")
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id+"-") {
			left = append(left, e.Name())
		}
	}
	return left
}

var started = time.Now()

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench [%5.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, a...))
}

// nodeAndPolicyRows runs the tabby-node rows and the policy rows, each in a
// lab of its own.
func nodeAndPolicyRows(s *lab.Script, c config, p paths) ([]Row, []string, error) {
	rows, notes, err := nodeRows(s, c, p)
	if err != nil {
		return rows, notes, err
	}
	prows, pnotes, err := policyRows(s, c, p)
	if err != nil {
		return rows, notes, fmt.Errorf("policy rows: %w", err)
	}
	return append(rows, prows...), append(notes, pnotes...), nil
}
