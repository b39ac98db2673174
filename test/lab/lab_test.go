package lab

// These tests build real namespaces: they need root, iproute2 (ip) and
// iputils-ping (ping). netcat-openbsd (nc) is used to check the in-process
// TCP server from a separate program.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
)

func needRoot(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.Tool(t, "ip")   // iproute2
	testutil.Tool(t, "ping") // iputils-ping
}

// nsList returns the names `ip netns list` shows.
func nsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// assertGone checks that nothing of lab id is left: no namespace, no
// process among pids, no state directory.
func assertGone(t *testing.T, id string, pids ...int) {
	t.Helper()
	for _, ns := range nsList(t) {
		if strings.HasPrefix(ns, id+"-") {
			t.Errorf("namespace %s left behind", ns)
		}
	}
	// A SIGKILLed process dies when the kernel next runs it, which on a
	// loaded machine can be a while after kill(2) returned: wait for it, up
	// to a deadline, rather than for a fixed time.
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d left running 5 s after cleanup", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(stateRoot, id)); err == nil {
		t.Errorf("state dir %s left behind", filepath.Join(stateRoot, id))
	}
}

func TestThreeHosts(t *testing.T) {
	needRoot(t)
	t0 := time.Now()
	l := New(t, Options{Hosts: 3})
	built := time.Since(t0)

	if len(l.Hosts) != 3 {
		t.Fatalf("got %d hosts", len(l.Hosts))
	}
	for i, h := range l.Hosts {
		if want := fmt.Sprintf("198.19.0.%d", i+1); h.IP != want || h.Gateway != "198.19.0.254" {
			t.Errorf("host %d: IP %s gateway %s, want %s via 198.19.0.254", i, h.IP, h.Gateway, want)
		}
		if got := strings.TrimSpace(l.MustExec(h.NS, "cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
			t.Errorf("%s: ip_forward=%s", h.Name, got)
		}
		// ip netns exec remounts /sys, so tools see the host's own links.
		if _, err := l.Exec(h.NS, "cat", "/sys/class/net/eth0/mtu"); err != nil {
			t.Errorf("%s: no eth0 in /sys: %v", h.Name, err)
		}
	}
	for _, from := range l.Hosts {
		for _, to := range l.Hosts {
			if err := l.Ping(from.NS, to.IP); err != nil {
				t.Error(err)
			}
			if err := l.Ping(from.NS, to.IP6); err != nil {
				t.Error(err)
			}
		}
	}

	t1 := time.Now()
	etcd := l.StartEtcd()
	etcdUp := time.Since(t1)
	if l.EtcdURL != "http://198.19.0.254:2379" {
		t.Errorf("EtcdURL %q", l.EtcdURL)
	}
	for _, h := range l.Hosts {
		if err := l.TCPConnect(h.NS, "198.19.0.254", EtcdPort); err != nil {
			t.Error(err)
		}
	}
	// A real request from a host: etcd's /health over a connection made
	// inside host2.
	hc := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.DialContext(ctx, l.Hosts[1].NS, network, addr)
		}}}
	resp, err := hc.Get(l.EtcdURL + "/health")
	if err != nil {
		t.Fatalf("etcd /health from %s: %v", l.Hosts[1].Name, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"health":"true"`) {
		t.Errorf("etcd /health: %s", body)
	}
	cli := l.EtcdClient()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/tabby/v1/lab-test", "hello"); err != nil {
		t.Fatalf("etcd put: %v", err)
	}
	if g, err := cli.Get(ctx, "/tabby/v1/lab-test"); err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "hello" {
		t.Fatalf("etcd get: %v %v", g, err)
	}
	// A tool inside a host ns reaches etcd too (nc from netcat-openbsd).
	if testutil.HasTool(t, "nc") {
		if _, err := l.Exec(l.Hosts[2].NS, "nc", "-z", "-w2", "198.19.0.254", "2379"); err != nil {
			t.Errorf("nc to etcd from %s: %v", l.Hosts[2].Name, err)
		}
	}

	// The root namespace got nothing: no interface, no route of the lab's.
	rootLinks, _ := exec.Command("ip", "-o", "link").Output()
	rootRoutes, _ := exec.Command("ip", "route").Output()
	for _, bad := range []string{"v-host", "br0", "br1", "v-outside"} {
		if strings.Contains(string(rootLinks), bad) {
			t.Errorf("root namespace has a %s link", bad)
		}
	}
	if strings.Contains(string(rootRoutes), "198.19.") {
		t.Errorf("root namespace has a lab route:\n%s", rootRoutes)
	}

	t2 := time.Now()
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	closed := time.Since(t2)
	assertGone(t, l.ID, etcd.PID)
	if err := etcd.Wait(); err != nil {
		t.Errorf("etcd-lab did not exit cleanly on SIGTERM: %v", err)
	}
	t.Logf("3-host lab %s: build %v, etcd ready %v, close (with etcd) %v", l.ID, built.Round(time.Millisecond),
		etcdUp.Round(time.Millisecond), closed.Round(time.Millisecond))
}

func TestTwoSubnets(t *testing.T) {
	needRoot(t)
	t.Parallel()
	l := New(t, Options{Hosts: 4, Subnets: 2, MTU: 9000})
	subnets := map[int]int{}
	for _, h := range l.Hosts {
		subnets[h.Subnet]++
		if want := fmt.Sprintf("198.19.%d.", h.Subnet); !strings.HasPrefix(h.IP, want) {
			t.Errorf("%s: IP %s not in subnet %d", h.Name, h.IP, h.Subnet)
		}
	}
	if subnets[0] != 2 || subnets[1] != 2 {
		t.Fatalf("hosts per subnet: %v", subnets)
	}
	for _, from := range l.Hosts {
		for _, to := range l.Hosts {
			if err := l.Ping(from.NS, to.IP); err != nil {
				t.Error(err)
			}
			if err := l.Ping(from.NS, to.IP6); err != nil {
				t.Error(err)
			}
		}
	}
	// Across subnets the path goes through the router: one hop less TTL.
	a, b := l.Hosts[0], l.Hosts[1]
	if a.Subnet == b.Subnet {
		t.Fatalf("%s and %s share a subnet", a.Name, b.Name)
	}
	out := l.MustExec(a.NS, "ping", "-c1", "-W1", "-n", b.IP)
	if !strings.Contains(out, "ttl=63") {
		t.Errorf("ping %s -> %s did not cross one router:\n%s", a.Name, b.Name, out)
	}
	// The MTU holds end to end: a full-size unfragmentable packet passes,
	// one byte more does not.
	if mtu := strings.TrimSpace(l.MustExec(a.NS, "cat", "/sys/class/net/eth0/mtu")); mtu != "9000" {
		t.Errorf("%s eth0 mtu %s", a.Name, mtu)
	}
	if _, err := l.Exec(a.NS, "ping", "-c1", "-W1", "-M", "do", "-s", "8972", b.IP); err != nil {
		t.Errorf("9000-byte packet across the router: %v", err)
	}
	if _, err := l.Exec(a.NS, "ping", "-c1", "-W1", "-M", "do", "-s", "8973", b.IP); err == nil {
		t.Errorf("9001-byte packet went through")
	}
}

// TestEtcdRestart: a test can stop etcd and start it again on the same
// data, and a client made by EtcdClient carries on.
func TestEtcdRestart(t *testing.T) {
	needRoot(t)
	t.Parallel()
	l := New(t, Options{Hosts: 1})
	first := l.StartEtcd()
	cli := l.EtcdClient()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := first.Stop(5 * time.Second); err != nil {
		t.Fatalf("etcd-lab stop: %v", err)
	}
	if err := l.TCPConnect(l.Hosts[0].NS, "198.19.0.254", EtcdPort); err == nil {
		t.Errorf("etcd port open after stop")
	}
	second := l.StartEtcd()
	if second.PID == first.PID {
		t.Fatalf("same pid")
	}
	g, err := cli.Get(ctx, "k")
	if err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v %v", g, err)
	}
}

func TestOutside(t *testing.T) {
	needRoot(t)
	t.Parallel()
	l := New(t, Options{Hosts: 2, Outside: true})
	if l.OutsideNS == "" || l.OutsideIP != "203.0.113.1" {
		t.Fatalf("outside: ns %q ip %q", l.OutsideNS, l.OutsideIP)
	}
	h := l.Hosts[0]
	if err := l.Ping(h.NS, l.OutsideIP); err != nil {
		t.Fatal(err)
	}
	if err := l.Ping(h.NS, l.OutsideIP6); err != nil {
		t.Error(err)
	}
	l.ServeTCP(l.OutsideNS, 8080)
	// Routed, not NATed: the outside sees the host's own address.
	src, err := l.TCPSourceIP(h.NS, l.OutsideIP, 8080)
	if err != nil || src != h.IP {
		t.Errorf("outside saw %q (err %v), want %s", src, err, h.IP)
	}
	// A container without a network cannot get out.
	c, _ := l.AddContainer(h, "c1")
	if err := l.TCPConnect(c, l.OutsideIP, 8080); err == nil {
		t.Errorf("unwired container reached the outside")
	}
}

func TestTCPBothWays(t *testing.T) {
	needRoot(t)
	t.Parallel()
	l := New(t, Options{Hosts: 2})
	a, b := l.Hosts[0], l.Hosts[1]
	l.ServeTCP(a.NS, 7000)
	srv := l.ServeTCP(b.NS, 7000)
	for _, c := range []struct {
		from *Host
		to   string
	}{{a, b.IP}, {b, a.IP}, {a, b.IP6}, {b, a.IP6}} {
		if err := l.TCPConnect(c.from.NS, c.to, 7000); err != nil {
			t.Error(err)
		}
		src, err := l.TCPSourceIP(c.from.NS, c.to, 7000)
		want := c.from.IP
		if strings.Contains(c.to, ":") {
			want = c.from.IP6
		}
		if err != nil || src != want {
			t.Errorf("%s -> %s: server saw %q (err %v), want %s", c.from.Name, c.to, src, err, want)
		}
	}
	// The server echoes, and a separate program (nc) reaches it too.
	if testutil.HasTool(t, "nc") {
		cmd := l.Command(a.NS, "nc", "-N", "-w2", b.IP, "7000")
		cmd.Stdin = strings.NewReader("ping\n")
		out, err := cmd.Output()
		if err != nil || string(out) != a.IP+"\nping\n" {
			t.Errorf("nc echo: %q %v", out, err)
		}
	}
	// No server, no connection.
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// A process forked at that moment by a parallel test holds a copy of the
	// listening socket until it execs (CLOEXEC acts at exec, not fork), so a
	// connect can still succeed for an instant after Close.
	if err := Eventually(2*time.Second, func() error {
		if err := l.TCPConnect(a.NS, b.IP, 7000); err == nil {
			return fmt.Errorf("connected to a closed server")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if err := l.TCPConnect(a.NS, b.IP, 7001); err == nil {
		t.Errorf("connected to a port nobody listens on")
	}
}

func TestContainersAndProcesses(t *testing.T) {
	needRoot(t)
	t.Parallel()
	l := New(t, Options{Hosts: 1})
	h := l.Hosts[0]
	ns, path := l.AddContainer(h, "web")
	if ns != l.ID+"-host1-web" || path != "/run/netns/"+ns {
		t.Errorf("container %s at %s", ns, path)
	}
	links := l.MustExec(ns, "ip", "-o", "link")
	if n := strings.Count(strings.TrimSpace(links), "\n") + 1; n != 1 || !strings.Contains(links, "lo:") {
		t.Errorf("container has links other than lo:\n%s", links)
	}
	if _, err := l.Exec(ns, "false"); err == nil {
		t.Errorf("Exec of a failing command gave no error")
	}

	// A process and its child, both stopped by Close.
	p := l.Start(ns, "", "sh", "-c", "sleep 600 & echo child $!; wait")
	var child int
	if err := Eventually(5*time.Second, func() error {
		b, _ := os.ReadFile(p.Log)
		if _, err := fmt.Sscanf(string(b), "child %d", &child); err != nil {
			return fmt.Errorf("no child pid in log: %q", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Kill and Wait on a process of our own.
	q := l.Start(h.NS, "", "sleep", "600")
	if err := q.Kill(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := q.WaitTimeout(5 * time.Second); err == nil || !q.Exited() {
		t.Errorf("sleep after SIGTERM: %v exited=%v", err, q.Exited())
	}

	// RemoveContainer takes processes inside with it.
	stray := l.Start(ns, "", "sleep", "600")
	if err := l.RemoveContainer(ns); err != nil {
		t.Fatal(err)
	}
	if err := stray.WaitTimeout(5 * time.Second); err == nil {
		t.Errorf("process in removed container still running")
	}
	if _, err := os.Stat(path); err == nil {
		t.Errorf("%s still exists", path)
	}
	if err := l.RemoveContainer(h.NS); err == nil {
		t.Errorf("RemoveContainer accepted a host namespace")
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, l.ID, p.PID, child)
}

// TestCleanupStale fakes a crashed run: a recorded lab whose owner is dead,
// with a namespace and a process inside it.
func TestCleanupStale(t *testing.T) {
	needRoot(t)
	id := "tlst" + randomID(4)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(stateRoot, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), fmt.Appendf(nil, "%d 1\n", dead.Process.Pid), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := id + "-host1"
	// Not ours: same prefix but no record. CleanupStale must leave it.
	foreign := "tlfz" + randomID(4) + "-x"
	for _, n := range []string{ns, foreign} {
		if out, err := runCmd("ip", "netns", "add", n); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	t.Cleanup(func() { delNS(foreign); removeLab(id, dir) })
	sleeper := exec.Command("ip", "netns", "exec", ns, "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	go sleeper.Wait() // reap it once killed
	// Inside the namespace before anything cleans up: New below removes
	// stale labs too, and a sleeper still on its way in when the name goes
	// would live on in a namespace nobody can name.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := runCmd("ip", "netns", "pids", ns)
		if slices.Contains(strings.Fields(out), strconv.Itoa(sleeper.Process.Pid)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleeper %d not in namespace %s after 10 s", sleeper.Process.Pid, ns)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A live lab with the same family of names is left alone.
	l := New(t, Options{Hosts: 1, Prefix: "tlst" + randomID(4)})

	if err := CleanupStale("tlst"); err != nil {
		t.Fatal(err)
	}
	assertGone(t, id, sleeper.Process.Pid)
	if _, err := os.Stat(pathOf(foreign)); err != nil {
		t.Errorf("unrecorded namespace %s was removed", foreign)
	}
	if err := l.Ping(l.Hosts[0].NS, l.Hosts[0].Gateway); err != nil {
		t.Errorf("live lab damaged: %v", err)
	}
}

// TestCleanupOnDeath runs a lab in a child test process that dies in
// various ways, and checks that nothing is left each time.
func TestCleanupOnDeath(t *testing.T) {
	needRoot(t)
	for _, mode := range []string{"failnow", "panic", "sigint", "sigterm", "goroutine-panic", "timeout", "sigkill"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			args := []string{"-test.run=^TestHelperLab$", "-test.v"}
			if mode == "timeout" {
				args = append(args, "-test.timeout=5s")
			}
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), "TABBY_LAB_HELPER="+mode)
			// Panics and signal deaths are expected: show the helper's
			// output only if this check fails.
			var stderr strings.Builder
			cmd.Stderr = &stderr
			defer func() {
				if t.Failed() {
					t.Logf("helper stderr:\n%s", stderr.String())
				}
			}()
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var id string
			var pids []int
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) >= 2 && f[0] == "LAB" {
					id = f[1]
					for _, s := range f[2:] {
						pid, _ := strconv.Atoi(s)
						pids = append(pids, pid)
					}
					break
				}
			}
			if id == "" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("helper printed no LAB line")
			}
			switch mode {
			case "sigint":
				cmd.Process.Signal(syscall.SIGINT)
			case "sigterm":
				cmd.Process.Signal(syscall.SIGTERM)
			case "sigkill":
				cmd.Process.Kill()
			}
			go io.Copy(io.Discard, stdout)
			if err := cmd.Wait(); err == nil {
				t.Errorf("helper exited 0")
			}
			// Without Go code to run, the reaper cleans up just after:
			// namespaces first, its record (the state dir) last.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if _, err := os.Stat(filepath.Join(stateRoot, id)); err != nil && len(namespacesOf(id)) == 0 {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			assertGone(t, id, pids...)
		})
	}
}

// TestHelperLab is run by TestCleanupOnDeath in a child process.
func TestHelperLab(t *testing.T) {
	mode := os.Getenv("TABBY_LAB_HELPER")
	if mode == "" {
		t.Skip("run by TestCleanupOnDeath")
	}
	l := New(t, Options{Hosts: 2, Outside: true})
	etcd := l.StartEtcd()
	sleeper := l.Start(l.Hosts[1].NS, "", "sleep", "600")
	c, _ := l.AddContainer(l.Hosts[0], "c")
	inContainer := l.Start(c, "", "sleep", "600")
	l.ServeTCP(l.Hosts[0].NS, 7000)
	fmt.Printf("LAB %s %d %d %d\n", l.ID, etcd.PID, sleeper.PID, inContainer.PID)
	switch mode {
	case "failnow":
		t.FailNow()
	case "panic":
		panic("helper panics on purpose")
	case "goroutine-panic":
		go panic("helper panics on another goroutine")
	}
	time.Sleep(time.Minute) // wait for a signal or the test timeout
}

// TestScript: a program (the demo) drives a lab through a Script, and
// Script.Close removes it.
func TestScript(t *testing.T) {
	needRoot(t)
	t.Parallel()
	s := NewScript()
	l := New(s, Options{Hosts: 2})
	p := l.Start(l.Hosts[0].NS, "", "sleep", "600")
	if err := l.Ping(l.Hosts[0].NS, l.Hosts[1].IP); err != nil {
		t.Error(err)
	}
	s.Close()
	if s.Failed() {
		t.Errorf("script marked failed")
	}
	assertGone(t, l.ID, p.PID)
}
