package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/test/lab"
)

// Row keys; the breakdown and the ratios find rows by them.
func keyCNI(c, mode, op string) string { return "cnitool/" + c + "/" + mode + "/" + op }
func keyDirect(c, op string) string    { return "direct/" + c + "/" + op }
func keyIPAM(kv, op string) string     { return "ipam/" + kv + "/" + op }
func keyStartup(bin string) string     { return "startup/" + bin + "/VERSION" }
func keyBinary(bin string) string      { return "binary/" + bin }

// A cniCase is one way of setting up a container, driven ADD then DEL.
type cniCase struct {
	key, name string
	section   string    // "cnitool" or "direct"
	h         *lab.Host // where it runs: its host namespace
	wantIP    bool      // ADD must return an address
	// fresh: a new container namespace per sequential iteration. Cases that
	// never touch the namespace share one (concurrent calls always get
	// their own: cnitool derives the container ID from the path).
	fresh bool
	// call runs op (ADD or DEL) for container id in the namespace at ns.
	call func(op, id, ns string) (sample, []byte, error)
}

// add runs ADD and checks its result.
func (c *cniCase) add(id, ns string) (sample, error) {
	s, out, err := c.call("ADD", id, ns)
	if err != nil {
		return s, fmt.Errorf("%s ADD: %w", c.name, err)
	}
	if c.wantIP {
		var r struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		}
		if err := json.Unmarshal(out, &r); err != nil || len(r.IPs) == 0 || r.IPs[0].Address == "" {
			return s, fmt.Errorf("%s ADD returned no address: %s", c.name, out)
		}
	}
	return s, nil
}

func (c *cniCase) del(id, ns string) (sample, error) {
	s, _, err := c.call("DEL", id, ns)
	if err != nil {
		return s, fmt.Errorf("%s DEL: %w", c.name, err)
	}
	return s, nil
}

// do runs op.
func (c *cniCase) do(op, id, ns string) (sample, error) {
	if op == "ADD" {
		return c.add(id, ns)
	}
	return c.del(id, ns)
}

// rowKey is the key of this case's row for mode ("seq", "c16") and op.
func (c *cniCase) rowKey(mode, op string) string {
	if c.section == "cnitool" {
		return keyCNI(c.key, mode, op)
	}
	return keyDirect(c.key, op)
}

// netconfs are the plugin configurations of the cases, as JSON objects.
type netconfs struct {
	noop, ptpHostLocal, ptpTabbyIPAM, tabby, tabbyExec, tabbyNode map[string]any
}

func (b *bench) netconfs() netconfs {
	state := filepath.Join(b.work, "state") // tabby's and tabby-ipam's host lock
	tabbyIPAM := map[string]any{"type": "tabby-ipam", "etcd_endpoints": b.l.EtcdURL, "nodename": b.h.Name,
		"state_dir": state, "result": "block"}
	tabby := func(h *lab.Host, state string, extra map[string]any) map[string]any {
		c := map[string]any{"type": "tabby", "etcd_endpoints": b.l.EtcdURL, "nodename": h.Name, "state_dir": state,
			"log_file": filepath.Join(b.work, "tabby-cni-"+h.Name+".log"), "log_level": "info", "ipam": map[string]any{"type": "tabby-ipam"}}
		maps.Copy(c, extra)
		return c
	}
	return netconfs{
		noop: map[string]any{"type": "noop"},
		ptpHostLocal: map[string]any{"type": "ptp", "ipMasq": false, "ipam": map[string]any{
			"type": "host-local", "ranges": [][]map[string]string{{{"subnet": hostLocalSubnet}}},
			"routes": []map[string]string{{"dst": "0.0.0.0/0"}}, "dataDir": filepath.Join(b.work, "host-local")}},
		ptpTabbyIPAM: map[string]any{"type": "ptp", "ipMasq": false, "ipam": tabbyIPAM},
		tabby:        tabby(b.h, state, nil),
		tabbyExec:    tabby(b.h, state, map[string]any{"ipam_exec": true}),
		tabbyNode:    tabby(b.hn, b.node.stateDir(b.hn), map[string]any{"profiles": []string{nodeProfile}}),
	}
}

// cnitoolCase drives a one-plugin conflist with cnitool on host h.
func (b *bench) cnitoolCase(h *lab.Host, key, name string, plugin map[string]any, cniPath string) (*cniCase, error) {
	netName := "bench-" + key
	dir := filepath.Join(b.work, "net.d", key)
	list, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": netName, "plugins": []any{plugin}})
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "10-"+key+".conflist"), list, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("write conflist %s: %w", key, err)
	}
	env := append(slices.Clone(b.env), "NETCONFPATH="+dir, "CNI_PATH="+cniPath, "CNI_IFNAME=eth0")
	noop := plugin["type"] == "noop"
	return &cniCase{key: key, name: name, section: "cnitool", h: h, wantIP: !noop, fresh: !noop,
		call: func(op, _, ns string) (sample, []byte, error) {
			return b.run(h, []string{b.p.cnitool, strings.ToLower(op), netName, ns}, env, nil)
		}}, nil
}

// directCase executes a plugin binary on host h as a runtime would, without
// cnitool.
func (b *bench) directCase(h *lab.Host, key, name, bin string, plugin map[string]any, cniPath string, fresh bool) (*cniCase, error) {
	conf := map[string]any{"cniVersion": "1.0.0", "name": "bench-direct-" + key}
	for k, v := range plugin {
		conf[k] = v
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("netconf %s: %w", key, err)
	}
	return &cniCase{key: key, name: name, section: "direct", h: h, wantIP: true, fresh: fresh,
		call: func(op, id, ns string) (sample, []byte, error) {
			env := append(slices.Clone(b.env), "CNI_COMMAND="+op, "CNI_CONTAINERID="+id, "CNI_NETNS="+ns,
				"CNI_IFNAME=eth0", "CNI_ARGS=", "CNI_PATH="+cniPath)
			return b.run(h, []string{bin}, env, stdin)
		}}, nil
}

// sequential runs every case n times, one call at a time: per iteration each
// case does ADD then DEL in a fresh namespace. Cases are interleaved, in an
// order rotated every iteration, so drifting machine load hits all alike.
func (b *bench) sequential(cases []*cniCase, n int, mode string) ([]Row, error) {
	ns := make([][]string, len(cases))
	var all []string
	for ci, c := range cases {
		if c.fresh {
			ns[ci] = b.containers(c.h, n)
		} else {
			ns[ci] = slices.Repeat(b.containers(c.h, 1), n)
		}
		all = append(all, ns[ci][0])
		if c.fresh {
			all = append(all, ns[ci][1:]...)
		}
	}
	rows, err := b.interleave(cases, ns, n, mode)
	if rerr := b.removeContainers(all); err == nil && rerr != nil {
		err = fmt.Errorf("remove container namespaces: %w", rerr)
	}
	return rows, err
}

func (b *bench) interleave(cases []*cniCase, ns [][]string, n int, mode string) ([]Row, error) {
	ops := []string{"ADD", "DEL"}
	samples := make([][2][]sample, len(cases))
	// tabby-node works only for the deployed case, partly after a call has
	// returned (a DEL's set member goes after the DEL): its CPU is the
	// phase's total over the deployed case's iterations.
	node0 := b.nodeCPU.read()
	for i := range n {
		for j := range cases {
			ci := (i + j) % len(cases)
			c, path := cases[ci], ns[ci][i]
			id := fmt.Sprintf("bench-%s-s%d", c.key, i)
			for k, op := range ops {
				e0 := b.etcd.read()
				s, err := c.do(op, id, path)
				if err != nil {
					return nil, fmt.Errorf("iteration %d: %w", i, err)
				}
				s.etcd = b.etcd.read() - e0
				samples[ci][k] = append(samples[ci][k], s)
			}
		}
	}
	nodeCPU := b.nodeCPU.read() - node0
	var rows []Row
	for ci, c := range cases {
		for k, op := range ops {
			r := callRow(c.rowKey(mode, op), c.name, c.section, "sequential", op, samples[ci][k])
			if c.h == b.hn && n > 0 {
				r.NodeCPU = round2(ms(nodeCPU) / float64(n))
			}
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// concurrentRows runs callers*per ADDs of every case from callers
// goroutines, then as many DELs; each sample is one call's wall time under
// that load. The calls come in two rounds, the second in reverse case order
// (ABBA), so load that drifts during the run favours no case.
func (b *bench) concurrentRows(cases []*cniCase, callers, per int) ([]Row, error) {
	ops := []string{"ADD", "DEL"}
	phases := make([][2]phase, len(cases))
	for round, calls := range []int{(per + 1) / 2, per / 2} {
		for j := range cases {
			ci := j
			if round == 1 {
				ci = len(cases) - 1 - j
			}
			if calls == 0 {
				continue
			}
			c := cases[ci]
			progress("%d concurrent, round %d: %s, %d ADDs then %d DELs", callers, round+1, c.name, callers*calls, callers*calls)
			ns := b.containers(c.h, callers*calls)
			for k, op := range ops {
				ph, err := b.hammer(c, op, ns, callers)
				if err != nil {
					b.removeContainers(ns)
					return nil, fmt.Errorf("%s: %d concurrent: %w", c.name, callers, err)
				}
				phases[ci][k].add(ph)
			}
			if err := b.removeContainers(ns); err != nil {
				return nil, fmt.Errorf("remove container namespaces: %w", err)
			}
		}
	}
	var rows []Row
	for ci, c := range cases {
		for k, op := range ops {
			ph := phases[ci][k]
			n := len(ph.samples)
			r := callRow(c.rowKey("c"+strconv.Itoa(callers), op), c.name, c.section, fmt.Sprintf("%d concurrent", callers), op, ph.samples)
			r.EtcdCPU = round2(ms(ph.etcd) / float64(n))
			r.Note = fmt.Sprintf("%d calls in %.2f s: %.0f/s", n, ph.wall.Seconds(), float64(n)/ph.wall.Seconds())
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// phase is a batch of concurrent calls: their samples, the batch's wall time
// and the etcd server's CPU time during it.
type phase struct {
	samples    []sample
	wall, etcd time.Duration
}

func (p *phase) add(q phase) {
	p.samples = append(p.samples, q.samples...)
	p.wall += q.wall
	p.etcd += q.etcd
}

// hammer runs op for every namespace in ns from callers goroutines.
func (b *bench) hammer(c *cniCase, op string, ns []string, callers int) (phase, error) {
	ph := phase{samples: make([]sample, len(ns))}
	e0, start := b.etcd.read(), time.Now()
	err := parallel(callers, len(ns), func(i int) (err error) {
		ph.samples[i], err = c.do(op, fmt.Sprintf("bench-%s-c%d", c.key, i), ns[i])
		return err
	})
	ph.wall, ph.etcd = time.Since(start), b.etcd.read()-e0
	return ph, err
}

// ipamTimes is what an IPAM library loop measured: wall time and the etcd
// server's CPU time of every call.
type ipamTimes struct {
	Assign      []time.Duration `json:"assign"`
	Release     []time.Duration `json:"release"`
	AssignEtcd  []time.Duration `json:"assign_etcd"`
	ReleaseEtcd []time.Duration `json:"release_etcd"`
}

// ipamLoop assigns and releases one IPv4 address n times with pkg/ipam on
// kv, after one untimed round that opens the connection.
func ipamLoop(kv store.KV, etcd cpuMeter, host, lockDir, network string, n int) (*ipamTimes, error) {
	a := &ipam.IPAM{KV: kv, Host: host, LockDir: lockDir}
	t := &ipamTimes{}
	for i := -1; i < n; i++ {
		id := fmt.Sprintf("bench-lib-%d", i+1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		e0, t0 := etcd.read(), time.Now()
		_, out, err := a.Assign(ctx, ipam.Request{Network: network, ContainerID: id, IfName: "eth0", Workload: id,
			Plugin: "bench", IPv4: true})
		d1 := time.Since(t0)
		e1, t1 := etcd.read(), time.Now()
		if err == nil && len(out) == 0 {
			err = errors.New("no address assigned")
		}
		if err != nil {
			cancel()
			return nil, fmt.Errorf("ipam assign %s: %w", id, err)
		}
		err = a.Release(ctx, network, id)
		d2 := time.Since(t1)
		e2 := etcd.read()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("ipam release %s: %w", id, err)
		}
		if i >= 0 {
			t.Assign, t.Release = append(t.Assign, d1), append(t.Release, d2)
			t.AssignEtcd, t.ReleaseEtcd = append(t.AssignEtcd, e1-e0), append(t.ReleaseEtcd, e2-e1)
		}
	}
	return t, nil
}

// rows turns the loop's measurements into report rows.
func (t *ipamTimes) rows(kv, name string) []Row {
	samples := func(wall, etcd []time.Duration) []sample {
		s := make([]sample, len(wall))
		for i := range wall {
			s[i] = sample{wall: wall[i], etcd: etcd[i]}
		}
		return s
	}
	return []Row{
		callRow(keyIPAM(kv, "assign"), name, "ipam", "sequential", "Assign", samples(t.Assign, t.AssignEtcd)),
		callRow(keyIPAM(kv, "release"), name, "ipam", "sequential", "Release", samples(t.Release, t.ReleaseEtcd)),
	}
}

// ipamHelper is the bench binary re-executed inside the host namespace
// ("ipam-helper" as first argument): there the plugins' own HTTP store
// reaches etcd with no dial hook. It prints ipamTimes as JSON.
func ipamHelper(args []string) int {
	fs := flag.NewFlagSet("ipam-helper", flag.ContinueOnError)
	ep := fs.String("endpoint", "", "etcd URL")
	etcdPID := fs.Int("etcd-pid", 0, "etcd server PID, for its CPU time")
	host := fs.String("host", "", "node name")
	lockDir := fs.String("lockdir", "", "IPAM lock dir")
	network := fs.String("network", "bench-lib-http", "network name")
	n := fs.Int("n", 200, "iterations")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	kv, err := store.NewHTTP(store.Config{Endpoints: []string{*ep}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ipam-helper: %v\n", err)
		return 1
	}
	defer kv.Close()
	t, err := ipamLoop(kv, cpuMeter{pid: *etcdPID}, *host, *lockDir, *network, *n)
	if err == nil {
		err = json.NewEncoder(os.Stdout).Encode(t)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ipam-helper: %v\n", err)
		return 1
	}
	return 0
}

// ipamRows measures pkg/ipam in-process: with the HTTP store the plugins use
// (this binary re-run inside the host namespace) and with the lab's clientv3
// client (in this process; it dials inside the lab).
func (b *bench) ipamRows(n int) ([]Row, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("ipam helper: %w", err)
	}
	lockDir := filepath.Join(b.work, "state")
	out, err := b.l.Exec(b.h.NS, self, "ipam-helper", "-endpoint", b.l.EtcdURL, "-etcd-pid", strconv.Itoa(b.etcd.pid),
		"-host", b.h.Name, "-lockdir", lockDir, "-n", strconv.Itoa(n))
	if err != nil {
		return nil, fmt.Errorf("ipam helper: %w", err)
	}
	var httpT ipamTimes
	if err := json.Unmarshal([]byte(out), &httpT); err != nil {
		return nil, fmt.Errorf("ipam helper output %q: %w", out, err)
	}
	grpcT, err := ipamLoop(b.kv, b.etcd, b.h.Name, lockDir, "bench-lib-grpc", n)
	if err != nil {
		return nil, err
	}
	return append(httpT.rows("http", "pkg/ipam, HTTP store (as the plugins)"),
		grpcT.rows("grpc", "pkg/ipam, clientv3 store (etcdv3.FromClient)")...), nil
}

// binaries are the executables whose start-up the report shows.
func (b *bench) binaries() []struct{ name, path string } {
	return []struct{ name, path string }{
		{"noop", filepath.Join(b.p.noopDir, "noop")},
		{"tabby", filepath.Join(b.p.bin, "tabby")},
		{"tabby-ipam", filepath.Join(b.p.bin, "tabby-ipam")},
		{"ptp", filepath.Join(b.p.cniDir, "ptp")},
		{"host-local", filepath.Join(b.p.cniDir, "host-local")},
	}
}

// startupRows times `CNI_COMMAND=VERSION <binary>`: process start-up, Go
// runtime and package init, and printing a line. Binaries are interleaved.
func (b *bench) startupRows(n int) ([]Row, error) {
	bins := b.binaries()
	env := append(slices.Clone(b.env), "CNI_COMMAND=VERSION")
	samples := make([][]sample, len(bins))
	for i := range n {
		for j := range bins {
			k := (i + j) % len(bins)
			s, _, err := b.run(b.h, []string{bins[k].path}, env, nil)
			if err != nil {
				return nil, fmt.Errorf("VERSION: %w", err)
			}
			samples[k] = append(samples[k], s)
		}
	}
	var rows []Row
	for k, bin := range bins {
		rows = append(rows, callRow(keyStartup(bin.name), bin.name+" exec'd directly", "startup", "sequential", "VERSION", samples[k]))
	}
	return rows, nil
}

// inittrace matches a GODEBUG=inittrace=1 line:
// "init net/http @1.2 ms, 0.31 ms clock, 1234 bytes, 12 allocs".
var inittrace = regexp.MustCompile(`^init (\S+) @([0-9.]+) ms, ([0-9.]+) ms clock`)

// binaryRows reports each binary's size and its Go package init time per
// start (the sum over packages of inittrace's "ms clock"), over runs starts.
func (b *bench) binaryRows(runs int) ([]Row, error) {
	env := append(slices.Clone(b.env), "CNI_COMMAND=VERSION", "GODEBUG=inittrace=1")
	var rows []Row
	for _, bin := range b.binaries() {
		st, err := os.Stat(bin.path)
		if err != nil {
			return nil, fmt.Errorf("binary size: %w", err)
		}
		var sums, ends []float64
		pkgs := 0
		for range runs {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			cmd := exec.CommandContext(ctx, bin.path)
			cmd.Env = env
			var errb bytes.Buffer
			cmd.Stderr = &errb
			_, err := timedRun(b.h.NSPath, cmd)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("%s with inittrace: %w: %s", bin.name, err, errb.String())
			}
			sum, end, n := parseInittrace(errb.Bytes())
			if n == 0 {
				return nil, fmt.Errorf("%s printed no inittrace lines (not a Go binary?)", bin.name)
			}
			sums, ends, pkgs = append(sums, sum), append(ends, end), n
		}
		r := Row{Key: keyBinary(bin.name), Name: bin.name, Section: "binary", Mode: "sequential", Op: "init",
			SizeBytes: st.Size(), InitPackages: pkgs, Note: bin.path}
		r.setStats(sums)
		slices.Sort(ends)
		r.InitDoneMs = round2(percentile(ends, 50))
		rows = append(rows, r)
	}
	return rows, nil
}

// parseInittrace sums the init clock times and finds when the last init
// ended (ms since the process started); n is the number of inits.
func parseInittrace(stderr []byte) (sum, end float64, n int) {
	sc := bufio.NewScanner(bytes.NewReader(stderr))
	for sc.Scan() {
		m := inittrace.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		at, _ := strconv.ParseFloat(m[2], 64)
		clock, _ := strconv.ParseFloat(m[3], 64)
		sum += clock
		end = max(end, at+clock)
		n++
	}
	return sum, end, n
}

// leftovers reports what the plugins left on the host or in etcd after
// every DEL: a warning for the report, not a bench failure.
func (b *bench) leftovers() []string {
	var warn []string
	links, err := b.l.Exec(b.h.NS, "ip", "-o", "link", "show")
	if err != nil {
		return []string{"could not list host links: " + err.Error()}
	}
	var extra []string
	for _, line := range strings.Split(strings.TrimSpace(links), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] != "lo:" && !strings.HasPrefix(f[1], "eth0@") {
			extra = append(extra, strings.TrimSuffix(f[1], ":"))
		}
	}
	if len(extra) > 0 {
		warn = append(warn, fmt.Sprintf("WARNING: links left on %s after all DELs: %v", b.h.Name, extra))
	}
	for _, p := range []string{model.HandlePrefix, model.HostWorkloadPrefix(b.h.Name)} {
		kvs, _, err := b.kv.List(context.Background(), p, true)
		if err != nil {
			return append(warn, "could not list etcd: "+err.Error())
		}
		if len(kvs) > 0 {
			warn = append(warn, fmt.Sprintf("WARNING: %d etcd keys left under %s after all DELs (first: %s)", len(kvs), p, kvs[0].Key))
		}
	}
	return warn
}
