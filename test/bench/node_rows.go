package main

// The tabby-node rows of the bench, in a lab of their own (nodeHosts hosts
// on one underlay bridge, the full BGP mesh):
//
//   - reachability after ADD: from an ADD returning on host2 to the first
//     echo answered from a container on host1 (a new address in a block
//     host1 already routes; and an address in a new block, which needs BGP);
//   - BGP convergence when the last host joins: from starting its
//     tabby-node to every other host having the route to its block;
//   - idle RSS of every tabby-node once the mesh has settled;
//   - TCP throughput (iperf3) container to container across hosts, direct
//     and VXLAN, against the same path built by hand with ip(8) in the same
//     namespaces with the same MTU, and against a plain veth pair.
//
// Everything runs inside the lab's namespaces; the lab is removed on return.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/test/lab"
	"github.com/tabby-net/tabby/test/plot"
)

const (
	nodeHosts     = 10
	nodePool      = "10.0.0.0/16" // direct routing
	nodeVXLANPool = "10.1.0.0/16" // --vxlan
	nodeFreshPool = "10.2.0.0/16" // static addresses only: every one a new block
	nodeProfile   = "bench"       // members reach each other (iperf3, ping)
	rssGoalMB     = 50
	throughputMin = 0.95 // of the hand-built path
)

func keyNode(what string) string { return "node/" + what }

type nodeBench struct {
	p     paths
	l     *lab.Lab
	kv    store.KV
	work  string
	env   []string
	quick bool
	procs []*lab.Proc // tabby-node per host index
	notes []string
}

// nodeRows builds the node lab, measures, and removes the lab.
func nodeRows(s *lab.Script, c config, p paths) (rows []Row, notes []string, err error) {
	if !isExec(filepath.Join(p.bin, "tabby-node")) {
		return nil, nil, fmt.Errorf("tabby-node not found in %s: run make build", p.bin)
	}
	for _, tool := range []string{"iperf3", "bridge", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, nil, fmt.Errorf("node rows need %s (make deps installs it)", tool)
		}
	}
	progress("node rows: building a %d-host lab", nodeHosts)
	l := lab.New(s, lab.Options{Hosts: nodeHosts})
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("node lab: %w", cerr))
		}
		if left := labNamespaces(l.ID); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("node lab: namespaces left behind: %v", left))
		}
	}()
	l.StartEtcd()
	nb := &nodeBench{p: p, l: l, work: filepath.Join(l.Dir, "node-bench"), env: cleanEnv(), quick: c.quick,
		procs: make([]*lab.Proc, nodeHosts)}
	nb.kv = etcdv3.FromClient(l.EtcdClient(), []string{l.EtcdURL})
	if err := os.MkdirAll(nb.work, 0o755); err != nil {
		return nil, nil, err
	}
	for _, args := range [][]string{{"pool", "add", nodePool}, {"pool", "add", nodeVXLANPool, "--vxlan"},
		{"pool", "add", nodeFreshPool}, {"profile", "add", nodeProfile}} {
		if err := nb.ctl(args...); err != nil {
			return nil, nil, err
		}
	}
	for _, step := range []func() ([]Row, error){nb.joinRows, nb.addPingRows, nb.throughputRows} {
		r, err := step()
		if err != nil {
			return rows, nb.notes, err
		}
		rows = append(rows, r...)
	}
	nb.notes = append(nb.notes,
		fmt.Sprintf("Node rows: their own lab of %d hosts (one underlay bridge, MTU 1500), full BGP mesh, tabby-node at log level info; pools %s (direct), %s (VXLAN) and %s (static addresses for new blocks); every container has profile %q, so the packet filter is in the path of every tabby row.",
			nodeHosts, nodePool, nodeVXLANPool, nodeFreshPool, nodeProfile))
	return rows, nb.notes, nil
}

func (nb *nodeBench) ctl(args ...string) error {
	argv := append([]string{filepath.Join(nb.p.bin, "tabbyctl"), "--etcd-endpoints", nb.l.EtcdURL}, args...)
	if _, err := nb.l.Exec(nb.l.Hosts[0].NS, argv...); err != nil {
		return fmt.Errorf("tabbyctl: %w", err)
	}
	return nil
}

func (nb *nodeBench) stateDir(h *lab.Host) string { return filepath.Join(nb.work, "state-"+h.Name) }

func (nb *nodeBench) startNode(i int) {
	h := nb.l.Hosts[i]
	nb.procs[i] = nb.l.Start(h.NS, filepath.Join(nb.work, "tabby-node-"+h.Name+".log"),
		filepath.Join(nb.p.bin, "tabby-node"), "--name", h.Name, "--ip", h.CIDR, "--etcd-endpoints", nb.l.EtcdURL,
		"--state-dir", nb.stateDir(h), "--metrics-addr", "", "--log-level", "info")
}

// waitSettled polls h's status socket (a unix socket: no network) until it
// has peers Established sessions and has settled.
func (nb *nodeBench) waitSettled(h *lab.Host, peers int, d time.Duration) error {
	var last string
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := nodestatus.Get(ctx, nb.stateDir(h))
		cancel()
		if err != nil {
			last = err.Error()
			continue
		}
		up := 0
		for _, p := range st.Peers {
			if p.State == "Established" {
				up++
			}
		}
		if up >= peers && st.Settled {
			return nil
		}
		last = fmt.Sprintf("%d of %d sessions up, settled %v", up, peers, st.Settled)
	}
	return fmt.Errorf("%s not settled after %v: %s", h.Name, d, last)
}

// add runs the tabby plugin's ADD for a new container on h (exec'd in h's
// namespace as a runtime would) and returns the container's namespace, its
// address and the ADD's wall time.
func (nb *nodeBench) add(h *lab.Host, name, pool, args string) (string, string, time.Duration, error) {
	nsName, nsPath := nb.l.AddContainer(h, name)
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "bench-node", "type": "tabby",
		"etcd_endpoints": nb.l.EtcdURL, "nodename": h.Name, "state_dir": nb.stateDir(h),
		"log_file": filepath.Join(nb.work, "cni-"+h.Name+".log"), "log_level": "info", "profiles": []string{nodeProfile},
		"ipam": map[string]any{"type": "tabby-ipam", "ipv4_pools": []string{pool}}})
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(nb.p.bin, "tabby"))
	cmd.Env = append(slices.Clone(nb.env), "CNI_COMMAND=ADD", "CNI_CONTAINERID="+name, "CNI_NETNS="+nsPath,
		"CNI_IFNAME=eth0", "CNI_ARGS="+args, "CNI_PATH="+nb.p.bin)
	cmd.Stdin = strings.NewReader(string(conf))
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	s, err := timedRun(h.NSPath, cmd)
	if err != nil {
		return "", "", 0, fmt.Errorf("ADD %s on %s: %w: %s %s", name, h.Name, err, out.String(), errb.String())
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out.String()), &r); err != nil || len(r.IPs) == 0 {
		return "", "", 0, fmt.Errorf("ADD %s on %s: no address in %s", name, h.Name, out.String())
	}
	ip, _, _ := strings.Cut(r.IPs[0].Address, "/")
	return nsName, ip, s.wall, nil
}

// probe sends one echo from the namespace at nsPath with a 100 ms wait.
// ping is forked from a thread inside the namespace (no ip netns exec).
func probe(nsPath, ip string) (time.Duration, bool) {
	cmd := exec.Command("ping", "-c1", "-W0.1", "-n", "-q", ip)
	s, err := timedRun(nsPath, cmd)
	return s.wall, err == nil
}

// reachAfter probes ip from nsPath in a tight loop and returns the time
// from start to the first answered echo's end.
func reachAfter(start time.Time, nsPath, ip string, limit time.Duration) (time.Duration, error) {
	for time.Since(start) < limit {
		if _, ok := probe(nsPath, ip); ok {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("%s not reachable from %s after %v", ip, filepath.Base(nsPath), limit)
}

func (nb *nodeBench) blocks(host string) ([]string, error) {
	kvs, _, err := nb.kv.List(context.Background(), model.AffinityHostPrefix(host), false)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range kvs {
		var a model.Affinity
		if err := store.DecodeJSON(kv.Value, &a); err != nil {
			return nil, err
		}
		out = append(out, a.Block)
	}
	return out, nil
}

// joinRows: hosts 1..n-1 form the mesh; the last host (with a container,
// hence a block, made before its daemon starts) joins; the row is the time
// from its tabby-node's start until each other host routes its block. Then
// every daemon's resident memory once idle.
func (nb *nodeBench) joinRows() ([]Row, error) {
	hosts := nb.l.Hosts
	last := hosts[len(hosts)-1]
	progress("node rows: %d tabby-nodes forming the mesh", len(hosts)-1)
	if _, _, _, err := nb.add(last, "join", nodePool, ""); err != nil {
		return nil, err
	}
	bl, err := nb.blocks(last.Name)
	if err != nil || len(bl) != 1 {
		return nil, fmt.Errorf("blocks of %s before its daemon starts: %v %v", last.Name, bl, err)
	}
	block := bl[0]
	start := time.Now()
	for i := range hosts[:len(hosts)-1] {
		nb.startNode(i)
	}
	if err := parallel(len(hosts)-1, len(hosts)-1, func(i int) error {
		return nb.waitSettled(hosts[i], len(hosts)-2, 60*time.Second)
	}); err != nil {
		return nil, err
	}
	cold := time.Since(start)
	progress("node rows: mesh of %d settled in %v; %s joins", len(hosts)-1, cold.Round(time.Millisecond), last.Name)

	took := make([]float64, len(hosts)-1)
	t0 := time.Now()
	nb.startNode(len(hosts) - 1)
	err = parallel(len(hosts)-1, len(hosts)-1, func(i int) error {
		h := hosts[i]
		for time.Since(t0) < 60*time.Second {
			out, err := exec.Command("ip", "-n", h.NS, "-4", "route", "show", "exact", block).Output()
			if err == nil && strings.Contains(string(out), "via "+last.IP+" ") {
				took[i] = ms(time.Since(t0))
				return nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		return fmt.Errorf("%s has no route to %s's block %s 60 s after its daemon started", h.Name, last.Name, block)
	})
	if err != nil {
		return nil, err
	}
	if err := nb.waitSettled(last, len(hosts)-1, 60*time.Second); err != nil {
		return nil, err
	}
	selfSettled := time.Since(t0)
	join := Row{Key: keyNode("bgp-join"), Name: fmt.Sprintf("BGP convergence: host %d of %d joins, until every other host routes its block", len(hosts), len(hosts)),
		Section: "node", Mode: "full mesh", Op: "join", Unit: "ms"}
	join.setStats(took)
	// The count of hosts routing the block over time: a step at each
	// host's time, in order.
	arrive := plot.Series{Name: "hosts routing the joining host's block", X: []float64{0}, Y: []float64{0}}
	for i, t := range slices.Sorted(slices.Values(took)) {
		arrive.X, arrive.Y = append(arrive.X, t), append(arrive.Y, float64(i+1))
	}
	join.Timeline = &Timeline{Title: fmt.Sprintf("BGP convergence: host %d of %d joins the full mesh", len(hosts), len(hosts)),
		XLabel: "time since its tabby-node started (ms)", YLabel: "other hosts routing its block", Series: []plot.Series{arrive}}
	join.Note = fmt.Sprintf("n = the other hosts (p99 = the last of them); one join; the joining daemon itself had its %d sessions up and settled %.0f ms after start; cold start of the %d-host mesh before it: %.0f ms",
		len(hosts)-1, ms(selfSettled), len(hosts)-1, ms(cold))

	// Idle: nothing changes for a while, then every daemon's RSS.
	idle := 5 * time.Second
	if nb.quick {
		idle = 2 * time.Second
	}
	time.Sleep(idle)
	var rss []float64
	for _, p := range nb.procs {
		kb, err := vmRSS(p.PID)
		if err != nil {
			return nil, err
		}
		rss = append(rss, float64(kb)/1024)
	}
	mem := Row{Key: keyNode("rss"), Name: fmt.Sprintf("tabby-node resident memory (VmRSS), idle, %d-host mesh", len(hosts)),
		Section: "node", Mode: "idle", Op: "VmRSS", Unit: "MB"}
	mem.setStats(rss)
	mem.Note = fmt.Sprintf("every daemon (n = %d), read %v after the last join settled", len(rss), idle)
	return []Row{join, mem}, nil
}

// vmRSS reads a process's resident set size in kB.
func vmRSS(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// addPingRows: a container on host1 probes containers added on host2.
func (nb *nodeBench) addPingRows() ([]Row, error) {
	h1, h2 := nb.l.Hosts[0], nb.l.Hosts[1]
	same, fresh := 30, 10
	if nb.quick {
		same, fresh = 8, 3
	}
	progress("node rows: ADD on %s to first echo from %s: %d addresses in a routed block, %d in new blocks", h2.Name, h1.Name, same, fresh)
	from, _, _, err := nb.add(h1, "probe", nodePool, "")
	if err != nil {
		return nil, err
	}
	fromPath := filepath.Join("/run/netns", from)
	// The first container on host2 claims its block; wait for the route.
	_, ip0, _, err := nb.add(h2, "first", nodePool, "")
	if err != nil {
		return nil, err
	}
	if _, err := reachAfter(time.Now(), fromPath, ip0, 10*time.Second); err != nil {
		return nil, err
	}
	var base []float64
	for range 20 {
		d, ok := probe(fromPath, ip0)
		if !ok {
			return nil, fmt.Errorf("probe to %s failed on a converged path", ip0)
		}
		base = append(base, ms(d))
	}
	slices.Sort(base)

	measure := func(n int, args func(i int) string, pool string) ([]float64, []float64, error) {
		var reach, adds []float64
		for i := range n {
			_, ip, add, err := nb.add(h2, fmt.Sprintf("a%s%d", strings.Split(pool, ".")[1], i), pool, args(i))
			if err != nil {
				return nil, nil, err
			}
			d, err := reachAfter(time.Now(), fromPath, ip, 10*time.Second)
			if err != nil {
				return nil, nil, err
			}
			reach, adds = append(reach, ms(d)), append(adds, ms(add))
		}
		return reach, adds, nil
	}
	reachSame, addSame, err := measure(same, func(int) string { return "" }, nodePool)
	if err != nil {
		return nil, err
	}
	// Static addresses 10.2.i.10: each in its own new /26, which host1 can
	// only learn over BGP.
	reachNew, addNew, err := measure(fresh, func(i int) string { return fmt.Sprintf("IP=10.2.%d.10", i) }, nodeFreshPool)
	if err != nil {
		return nil, err
	}
	row := func(key, name string, v []float64) Row {
		r := Row{Key: keyNode(key), Name: name, Section: "node", Mode: "sequential", Op: "ADD to first echo", Unit: "ms"}
		r.setStats(v)
		r.Note = fmt.Sprintf("probe: ping -c1 -W0.1 in a tight loop, forked inside the container; one answered probe alone takes %.2f ms (p50)", percentile(base, 50))
		return r
	}
	addRow := func(key, name string, v []float64) Row {
		r := Row{Key: keyNode(key), Name: name, Section: "node", Mode: "sequential", Op: "ADD", Unit: "ms"}
		r.setStats(v)
		r.Note = "tabby exec'd directly in host2's namespace; it returns once host2's tabby-node has the container's rules in force (compare the plugin rows above, made without a daemon)"
		return r
	}
	return []Row{
		row("add-ping/routed-block", "ADD on host2 returns -> first echo from a container on host1 (address in a block host1 already routes)", reachSame),
		row("add-ping/new-block", "ADD on host2 returns -> first echo from a container on host1 (address in a new block: BGP)", reachNew),
		addRow("add/routed-block", "tabby ADD on a host running tabby-node (address in an existing block)", addSame),
		addRow("add/new-block", "tabby ADD on a host running tabby-node (static address in a new block)", addNew),
	}, nil
}

// --- throughput ---------------------------------------------------------

// path is one way from a client namespace to a server address.
type tputPath struct {
	key, name    string
	client, srv  string // namespaces
	ip           string // server address
	compareTo    string // key of the hand-built path, for tabby rows
	mtu          int
	gbps         []float64
	serverHandle *lab.Proc
}

// ipBatch runs ip commands in namespace ns (ip -n: nothing runs in the root
// namespace's network).
func ipBatch(ns string, cmds ...string) error {
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s\n%s", ns, err, out, strings.Join(cmds, "\n"))
	}
	return nil
}

func sysctlsIn(nsPath string, kv map[string]string) error {
	return lab.InNS(nsPath, func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
}

// handVeth wires a container namespace to host h the way the tabby plugin
// does: a veth with MAC ee:ee:ee:ee:ee:ee on the host side, proxy ARP, a
// /32 route to it; in the container the /32, a link route to 169.254.1.1,
// the default route via it and a permanent neighbour entry for it.
func handVeth(h *lab.Host, ctrNS, hostIf, ip string, mtu int) error {
	if err := ipBatch(h.NS,
		fmt.Sprintf("link add %s mtu %d address ee:ee:ee:ee:ee:ee type veth peer name eth0 mtu %d netns %s", hostIf, mtu, mtu, ctrNS),
		fmt.Sprintf("link set %s up", hostIf),
		fmt.Sprintf("route add %s/32 dev %s scope link", ip, hostIf)); err != nil {
		return err
	}
	if err := sysctlsIn(h.NSPath, map[string]string{
		"net/ipv4/conf/" + hostIf + "/proxy_arp":    "1",
		"net/ipv4/conf/" + hostIf + "/forwarding":   "1",
		"net/ipv4/neigh/" + hostIf + "/proxy_delay": "0",
	}); err != nil {
		return err
	}
	return ipBatch(ctrNS,
		fmt.Sprintf("addr add %s/32 dev eth0", ip),
		"link set eth0 up",
		"route add 169.254.1.1 dev eth0 scope link",
		"route add default via 169.254.1.1 dev eth0",
		"neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent")
}

func mtuOf(l *lab.Lab, ns, dev string) (int, error) {
	out, err := l.Exec(ns, "cat", "/sys/class/net/"+dev+"/mtu")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}

// throughputRows builds the five paths between host1 and host2 and runs
// iperf3 over each, interleaved.
func (nb *nodeBench) throughputRows() ([]Row, error) {
	l := nb.l
	h1, h2 := l.Hosts[0], l.Hosts[1]
	progress("node rows: building the throughput paths (tabby and by hand)")
	var paths []*tputPath
	// tabby, direct and VXLAN.
	for _, c := range []struct{ key, pool, name string }{
		{"tabby-direct", nodePool, "tabby, direct routing"},
		{"tabby-vxlan", nodeVXLANPool, "tabby, VXLAN"},
	} {
		cl, _, _, err := nb.add(h1, "tc"+c.key[6:], c.pool, "")
		if err != nil {
			return nil, err
		}
		srv, ip, _, err := nb.add(h2, "ts"+c.key[6:], c.pool, "")
		if err != nil {
			return nil, err
		}
		mtu, err := mtuOf(l, cl, "eth0")
		if err != nil {
			return nil, err
		}
		if _, err := reachAfter(time.Now(), filepath.Join("/run/netns", cl), ip, 10*time.Second); err != nil {
			return nil, err
		}
		paths = append(paths, &tputPath{key: c.key, name: c.name, client: cl, srv: srv, ip: ip, mtu: mtu, compareTo: "hand-" + c.key[6:]})
	}
	direct, vx := paths[0], paths[1]

	// By hand, direct: the same veth layout, routes via the other host.
	hd1, _ := l.AddContainer(h1, "hd")
	hd2, _ := l.AddContainer(h2, "hd")
	if err := handVeth(h1, hd1, "hnd0", "10.250.1.1", direct.mtu); err != nil {
		return nil, err
	}
	if err := handVeth(h2, hd2, "hnd0", "10.250.2.1", direct.mtu); err != nil {
		return nil, err
	}
	if err := ipBatch(h1.NS, "route add 10.250.2.1/32 via "+h2.IP+" dev eth0"); err != nil {
		return nil, err
	}
	if err := ipBatch(h2.NS, "route add 10.250.1.1/32 via "+h1.IP+" dev eth0"); err != nil {
		return nil, err
	}
	paths = append(paths, &tputPath{key: "hand-direct", name: "by hand with ip(8), direct routing (same layout and MTU)", client: hd1, srv: hd2, ip: "10.250.2.1", mtu: direct.mtu})

	// By hand, VXLAN: a device like vxlan.tabby (other VNI and port), the
	// same neighbour/FDB/onlink-route scheme, the same MTUs.
	vxInfo, err := l.Exec(h1.NS, "ip", "-d", "link", "show", "vxlan.tabby")
	if err != nil {
		return nil, fmt.Errorf("tabby's VXLAN device: %w", err)
	}
	csum := "udpcsum"
	if strings.Contains(vxInfo, "noudpcsum") {
		csum = "noudpcsum"
	}
	vxMTU, err := mtuOf(l, h1.NS, "vxlan.tabby")
	if err != nil {
		return nil, err
	}
	hx1, _ := l.AddContainer(h1, "hx")
	hx2, _ := l.AddContainer(h2, "hx")
	macs := []string{"0a:bb:00:00:00:01", "0a:bb:00:00:00:02"}
	for i, h := range []*lab.Host{h1, h2} {
		o := 1 - i
		other := l.Hosts[o]
		if err := ipBatch(h.NS,
			fmt.Sprintf("link add vxhand address %s mtu %d type vxlan id 4097 dstport 4790 local %s dev eth0 nolearning %s", macs[i], vxMTU, h.IP, csum),
			"link set vxhand up",
			fmt.Sprintf("addr add 10.251.255.%d/32 dev vxhand", i+1),
			fmt.Sprintf("neigh add 10.251.255.%d lladdr %s dev vxhand nud permanent", o+1, macs[o]),
			fmt.Sprintf("route add 10.251.%d.1/32 via 10.251.255.%d dev vxhand onlink", o+1, o+1)); err != nil {
			return nil, err
		}
		if out, err := exec.Command("bridge", "-n", h.NS, "fdb", "add", macs[o], "dev", "vxhand", "dst", other.IP, "self", "permanent").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("bridge fdb in %s: %w: %s", h.NS, err, out)
		}
		ns := []string{hx1, hx2}[i]
		if err := handVeth(h, ns, "hnx0", fmt.Sprintf("10.251.%d.1", i+1), vx.mtu); err != nil {
			return nil, err
		}
	}
	paths = append(paths, &tputPath{key: "hand-vxlan", name: "by hand with ip(8), VXLAN (same layout and MTUs)", client: hx1, srv: hx2, ip: "10.251.2.1", mtu: vx.mtu})

	// A plain veth pair between two namespaces: the ceiling.
	pv1, _ := l.AddContainer(h1, "pv1")
	pv2, _ := l.AddContainer(h1, "pv2")
	if err := ipBatch(pv1, "link add eth0 mtu 1500 type veth peer name eth0 mtu 1500 netns "+pv2,
		"addr add 10.252.0.1/24 dev eth0", "link set eth0 up"); err != nil {
		return nil, err
	}
	if err := ipBatch(pv2, "addr add 10.252.0.2/24 dev eth0", "link set eth0 up"); err != nil {
		return nil, err
	}
	paths = append(paths, &tputPath{key: "veth", name: "plain veth pair between two namespaces (one host, no routing)", client: pv1, srv: pv2, ip: "10.252.0.2", mtu: 1500})

	for _, p := range paths {
		p.serverHandle = l.Start(p.srv, filepath.Join(nb.work, "iperf3-"+p.key+".log"), "iperf3", "-s", "-p", "5201")
	}
	defer func() {
		for _, p := range paths {
			_ = p.serverHandle.Stop(5 * time.Second)
		}
	}()
	for _, p := range paths { // reachable, and the server listening
		var err error
		for range 50 {
			if err = l.TCPConnect(p.client, p.ip, 5201); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: iperf3 server at %s: %w", p.name, p.ip, err)
		}
	}
	reps, secs := 5, 2
	if nb.quick {
		reps, secs = 1, 2
	}
	progress("node rows: iperf3, %d paths x %d runs of %d s", len(paths), reps, secs)
	for r := range reps {
		for j := range paths {
			p := paths[(r+j)%len(paths)]
			g, err := iperf(l, p.client, p.ip, secs)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			p.gbps = append(p.gbps, g)
		}
	}
	byKey := map[string]*tputPath{}
	for _, p := range paths {
		byKey[p.key] = p
	}
	med := func(p *tputPath) float64 { s := slices.Clone(p.gbps); slices.Sort(s); return percentile(s, 50) }
	var rows []Row
	for _, p := range paths {
		r := Row{Key: keyNode("tcp/" + p.key), Name: p.name, Section: "node", Mode: fmt.Sprintf("MTU %d", p.mtu),
			Op: "iperf3 TCP", Unit: "Gbit/s"}
		r.setStats(p.gbps)
		r.P99 = r.Max // "best run": a p99 of a handful of runs means nothing
		if veth := byKey["veth"]; p != veth {
			r.Note = fmt.Sprintf("%.2f of the plain veth pair", med(p)/med(veth))
		}
		if base := byKey[p.compareTo]; base != nil {
			ratio := round2(med(p) / med(base))
			r.RatioTo, r.RatioP50 = keyNode("tcp/"+base.key), &ratio
		}
		rows = append(rows, r)
	}
	nb.notes = append(nb.notes, fmt.Sprintf("Throughput: iperf3 -t %d -O 1, one TCP stream, client on host1 and server on host2 (the veth pair: both on host1); %d runs per path, interleaved in rotating order; the value is the median, the p99 column the best run. The hand-built VXLAN device uses VNI 4097 and port 4790 beside tabby's (4096, 4789), %s like it. Client and server share this machine's CPUs, so the numbers are CPU-bound.", secs, reps, csum))
	return rows, nil
}

// iperf runs one iperf3 client and returns the receiver's rate in Gbit/s.
func iperf(l *lab.Lab, fromNS, ip string, secs int) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+20)*time.Second)
	defer cancel()
	out, err := l.ExecContext(ctx, fromNS, "iperf3", "-c", ip, "-p", "5201", "-t", strconv.Itoa(secs), "-O", "1", "-J")
	if err != nil {
		return 0, fmt.Errorf("iperf3 -c %s from %s: %w: %.500s", ip, fromNS, err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("iperf3 output: %v: %.500s", err, out)
	}
	return round2(r.End.SumReceived.BitsPerSecond / 1e9), nil
}
