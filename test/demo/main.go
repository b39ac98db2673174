// The tabby demo: the classic Calico walk-through on three simulated hosts
// (network namespaces on one underlay), printed as a user would type it.
// Run it with `make demo` (as root). It cleans up after itself, also on
// Ctrl-C, and exits non-zero if the reachability matrix is not as expected.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/node/routes"
	"github.com/tabby-net/tabby/test/lab"
)

type demo struct {
	s     *lab.Script
	l     *lab.Lab
	bin   string
	dir   string
	start time.Time
}

func (d *demo) say(format string, a ...any) {
	fmt.Printf("\n\033[1m# "+format+"\033[0m\n", a...)
}

// run prints and runs a command on a host, as the user would type it there.
func (d *demo) run(h *lab.Host, args ...string) string {
	fmt.Printf("%s$ %s\n", h.Name, strings.Join(args, " "))
	argv := append([]string{filepath.Join(d.bin, args[0])}, args[1:]...)
	if args[0] != "tabbyctl" && args[0] != "tabby-node" {
		argv = args
	}
	cmd := d.l.Command(h.NS, argv...)
	cmd.Env = append(os.Environ(), "ETCD_ENDPOINTS="+d.l.EtcdURL, "TABBY_STATE_DIR="+d.state(h))
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(string(out)))
	if err != nil {
		d.s.Fatalf("FAIL: %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return "    " + strings.Join(lines, "\n    ") + "\n"
}

func (d *demo) state(h *lab.Host) string { return filepath.Join(d.dir, h.Name) }

func (d *demo) conflist(h *lab.Host) string {
	p := filepath.Join(d.dir, h.Name+".conflist")
	body := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby-net","plugins":[{"type":"tabby","etcd_endpoints":%q,
	  "state_dir":%q,"log_file":%q,"ipam":{"type":"tabby-ipam"}}]}`, d.l.EtcdURL, d.state(h), filepath.Join(d.dir, h.Name+"-cni.log"))
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		d.s.Fatalf("write conflist: %v", err)
	}
	return p
}

type ctr struct {
	name, ns, ip, ip6 string
	host              *lab.Host
	pid               int
}

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the demo builds network namespaces: run it as root (make demo)")
		os.Exit(2)
	}
	d := &demo{s: lab.NewScript(), bin: os.Getenv("TABBY_BIN"), start: time.Now()}
	defer d.s.Close()
	if d.bin == "" {
		d.bin = "bin"
	}
	d.bin, _ = filepath.Abs(d.bin)
	var err error
	if d.dir, err = os.MkdirTemp("", "tabby-demo-"); err != nil {
		d.s.Fatalf("%v", err)
	}
	d.s.Cleanup(func() { os.RemoveAll(d.dir) })
	ok := d.play()
	fmt.Printf("\ndemo took %v\n", time.Since(d.start).Round(time.Second))
	d.s.Close()
	if !ok {
		fmt.Println("FAIL")
		os.Exit(1)
	}
	fmt.Println("PASS")
}

func (d *demo) play() bool {
	d.say("Three hosts (network namespaces on one underlay, 198.19.0.0/24) and etcd")
	d.l = lab.New(d.s, lab.Options{Hosts: 3})
	d.l.StartEtcd()
	fmt.Printf("etcd at %s; hosts %s %s %s\n", d.l.EtcdURL, d.l.Hosts[0].IP, d.l.Hosts[1].IP, d.l.Hosts[2].IP)
	for _, h := range d.l.Hosts {
		fmt.Printf("%s$ tabby-node --name %s --ip %s --ip6 %s/64 --etcd-endpoints %s --state-dir %s &\n", h.Name, h.Name, h.CIDR, h.IP6, d.l.EtcdURL, d.state(h))
		d.l.Start(h.NS, filepath.Join(d.dir, h.Name+"-node.log"), filepath.Join(d.bin, "tabby-node"), "--name", h.Name, "--ip", h.CIDR,
			"--ip6", h.IP6+"/64", "--etcd-endpoints", d.l.EtcdURL, "--state-dir", d.state(h), "--metrics-addr", "")
	}
	h1 := d.l.Hosts[0]
	if err := lab.Eventually(30*time.Second, func() error {
		out, err := d.l.Exec(h1.NS, filepath.Join(d.bin, "tabbyctl"), "node", "status", "--state-dir", d.state(h1))
		if err != nil || strings.Count(out, "Established") < 2 {
			return fmt.Errorf("host1 has not two Established peers yet:\n%s%v", out, err)
		}
		return nil
	}); err != nil {
		d.s.Fatalf("FAIL: %v", err)
	}
	d.run(h1, "tabbyctl", "node", "status")

	d.say("An address pool with IPIP and nat-outgoing")
	encap := "--ipip"
	if !routes.IPIPSupported() {
		fmt.Println("(this kernel has no IPIP module: the demo uses --vxlan instead; tabby serves IPIP pools where the kernel has it)")
		encap = "--vxlan"
	}
	d.run(h1, "tabbyctl", "pool", "add", "10.0.0.0/16", encap, "--nat-outgoing")
	d.run(h1, "tabbyctl", "pool", "show")

	d.say("Five containers conA..conE, started with no network, then added with fixed IPs")
	var cs []*ctr
	for i, n := range []string{"conA", "conB", "conC", "conD", "conE"} {
		h := d.l.Hosts[i%3]
		nsName, _ := d.l.AddContainer(h, n)
		p := d.l.Start(nsName, filepath.Join(d.dir, n+".log"), "sleep", "infinity")
		c := &ctr{name: n, ns: nsName, ip: fmt.Sprintf("10.0.0.%d", i+1), host: h, pid: p.PID}
		fmt.Printf("%s$ # %s: a process (pid %d) in its own network namespace, no network yet\n", h.Name, n, p.PID)
		d.run(h, "tabbyctl", "container", "add", n, c.ip, "--netns", fmt.Sprintf("/proc/%d/ns/net", p.PID), "--conf", d.conflist(h))
		d.l.ServeTCP(nsName, 8080)
		cs = append(cs, c)
	}

	d.say("Profiles: A, C, E together; B, D together")
	d.run(h1, "tabbyctl", "profile", "add", "PROF_A_C_E")
	d.run(h1, "tabbyctl", "profile", "add", "PROF_B_D")
	for _, c := range cs {
		p := "PROF_A_C_E"
		if c.name == "conB" || c.name == "conD" {
			p = "PROF_B_D"
		}
		d.run(h1, "tabbyctl", "container", c.name, "profile", "append", p)
	}
	d.run(h1, "tabbyctl", "profile", "PROF_A_C_E", "rule", "show")
	d.run(h1, "tabbyctl", "container", "show")
	d.showKeys("/tabby/v1/host/" + cs[0].host.Name + "/workload/cni/conA/")

	d.say("Who reaches whom (ping and TCP 8080), expected vs seen")
	group := func(c *ctr) string {
		if c.name == "conB" || c.name == "conD" {
			return "BD"
		}
		return "ACE"
	}
	// Profile changes reach every host's rules within a bound (tabby-node
	// watches etcd); probe until the matrix settles, then show it.
	t0 := time.Now()
	want := func(a, b *ctr) bool { return group(a) == group(b) }
	var pass bool
	for {
		pass = d.probe(cs, want, false)
		if pass || time.Since(t0) > 10*time.Second {
			break
		}
	}
	fmt.Printf("(matrix settled %v after the last profile change, probing time included)\n", time.Since(t0).Round(100*time.Millisecond))
	pass = d.probe(cs, want, true)

	d.say("IPv6: a dual-stack pool and two dual-stack containers on host1 and host3")
	d.run(h1, "tabbyctl", "pool", "add", "fd00:10::/64")
	var v6 []*ctr
	for i, h := range []*lab.Host{d.l.Hosts[0], d.l.Hosts[2]} {
		n := fmt.Sprintf("conV%d", i+1)
		nsName, _ := d.l.AddContainer(h, n)
		p := d.l.Start(nsName, filepath.Join(d.dir, n+".log"), "sleep", "infinity")
		c := &ctr{name: n, ns: nsName, ip: fmt.Sprintf("10.0.0.%d", 11+i), ip6: fmt.Sprintf("fd00:10::%d", 11+i), host: h}
		d.run(h, "tabbyctl", "container", "add", n, c.ip+","+c.ip6, "--netns", fmt.Sprintf("/proc/%d/ns/net", p.PID), "--conf", d.conflist(h))
		d.run(h1, "tabbyctl", "container", n, "profile", "append", "PROF_A_C_E")
		v6 = append(v6, c)
	}
	err := lab.Eventually(5*time.Second, func() error { return d.l.Ping(v6[0].ns, v6[1].ip6) })
	fmt.Printf("%s$ ping -6 %s   (from %s on %s to %s on %s)\n", v6[0].host.Name, v6[1].ip6, v6[0].name, v6[0].host.Name, v6[1].name, v6[1].host.Name)
	if err != nil {
		fmt.Printf("    FAIL: %v\n", err)
		pass = false
	} else {
		fmt.Println("    reply: IPv6 works across hosts")
	}

	d.say("Cleaning up: containers, nodes, etcd and every namespace")
	for _, c := range cs {
		d.run(c.host, "tabbyctl", "container", "remove", c.name, "--conf", d.conflist(c.host))
	}
	return pass
}

// showKeys prints the etcd records of one endpoint.
func (d *demo) showKeys(prefix string) {
	fmt.Printf("\n(etcd keys under %s)\n", prefix)
	cli := d.l.EtcdClient()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, prefix, withPrefix())
	if err != nil {
		d.s.Fatalf("FAIL: read etcd: %v", err)
	}
	for _, kv := range r.Kvs {
		var v any
		_ = json.Unmarshal(kv.Value, &v)
		b, _ := json.MarshalIndent(v, "    ", "  ")
		fmt.Printf("    %s\n    %s\n", kv.Key, b)
	}
}

// probe checks every ordered pair (in parallel) and, with show, prints
// expected vs seen.
func (d *demo) probe(cs []*ctr, want func(a, b *ctr) bool, show bool) bool {
	type res struct{ icmp, tcp bool }
	seen := map[[2]int]res{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, a := range cs {
		for j, b := range cs {
			if i == j {
				continue
			}
			wg.Add(1)
			go func(i, j int, a, b *ctr) {
				defer wg.Done()
				_, perr := d.l.Exec(a.ns, "ping", "-c1", "-W1", "-n", "-q", b.ip)
				terr := d.l.TCPConnect(a.ns, b.ip, 8080)
				mu.Lock()
				seen[[2]int{i, j}] = res{perr == nil, terr == nil}
				mu.Unlock()
			}(i, j, a, b)
		}
	}
	wg.Wait()
	ok := true
	for k, r := range seen {
		if w := want(cs[k[0]], cs[k[1]]); r.icmp != w || r.tcp != w {
			ok = false
			if os.Getenv("DEMO_DEBUG") != "" {
				fmt.Printf("  probe %s->%s icmp %v tcp %v want %v at %s\n", cs[k[0]].name, cs[k[1]].name, r.icmp, r.tcp, w, time.Now().Format("15:04:05.000"))
			}
		}
	}
	if !show {
		return ok
	}
	fmt.Printf("%-14s", "from \\ to")
	for _, b := range cs {
		fmt.Printf("%-14s", b.name)
	}
	fmt.Println()
	for i, a := range cs {
		fmt.Printf("%-14s", a.name+" ("+a.host.Name+")")
		for j, b := range cs {
			if i == j {
				fmt.Printf("%-14s", "-")
				continue
			}
			r := seen[[2]int{i, j}]
			w := want(a, b)
			mark := "ok"
			if r.icmp != w || r.tcp != w {
				mark, ok = "WRONG", false
			}
			fmt.Printf("%-14s", fmt.Sprintf("%s %s/%s", yn(w), yn(r.icmp), yn(r.tcp))+" "+mark)
		}
		fmt.Println()
	}
	fmt.Println("(cell: expected  seen-ping/seen-tcp; y = connects, n = dropped)")
	return ok
}

func yn(b bool) string {
	if b {
		return "y"
	}
	return "n"
}

func withPrefix() clientv3.OpOption { return clientv3.WithPrefix() }
