package inner

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// InVMEnv must be "1" for these tests to run (test/ipipvm sets it in the VM).
const InVMEnv = "TABBY_IN_IPIP_VM"

// env is lab.Env (the lab, etcd, tabby's binaries and the shared helpers);
// l is its lab.
type env struct {
	*lab.Env
	t *testing.T
	l *lab.Lab
}

// ctr is a container (a namespace with a tabby endpoint).
type ctr struct {
	name, ns, ip string
	host         *lab.Host
}

func newEnv(t *testing.T, opts lab.Options) *env {
	t.Helper()
	if os.Getenv(InVMEnv) != "1" {
		// Not a missing prerequisite: these tests belong in the VM, which
		// test/ipipvm boots (the kernel here has no ipip by design).
		t.Skipf("runs only inside the IPIP VM (go test ./test/ipipvm starts it there; %s=1 forces it)", InVMEnv)
	}
	if _, err := os.Stat("/sys/module/ipip"); err != nil {
		t.Fatalf("%s=1 but this kernel has no ipip module loaded: %v", InVMEnv, err)
	}
	start := time.Now()
	le := lab.NewEnv(t, opts)
	mtu := opts.MTU
	if mtu == 0 {
		mtu = 1500
	}
	t.Logf("lab %s (%d hosts, %d subnet(s), MTU %d) and etcd up in %v", le.Lab.ID, len(le.Lab.Hosts), max(opts.Subnets, 1),
		mtu, time.Since(start).Round(time.Millisecond))
	return &env{Env: le, t: t, l: le.Lab}
}

// container makes a container on h with a CNI ADD, as a runtime does:
// addresses from pool, the given profiles.
func (e *env) container(h *lab.Host, name, pool string, profiles ...string) ctr {
	e.t.Helper()
	nsName, nsPath := e.l.AddContainer(h, name)
	prof, _ := json.Marshal(append([]string{}, profiles...))
	conf := e.Conf(h, "1.0.0", `,"profiles":`+string(prof), fmt.Sprintf(`,"ipv4_pools":[%q]`, pool))
	o := e.Plugin(h, testutil.Call{Command: "ADD", ContainerID: name, Netns: nsPath, IfName: "eth0", Conf: conf})
	if o.ExitCode != 0 {
		e.t.Fatalf("CNI ADD %s on %s (exit %d): %s %s", name, h.Name, o.ExitCode, o.Stdout, o.Stderr)
	}
	var r current.Result
	if err := json.Unmarshal(o.Stdout, &r); err != nil || len(r.IPs) == 0 {
		e.t.Fatalf("CNI ADD %s result %s: %v", name, o.Stdout, err)
	}
	return ctr{name: name, ns: nsName, ip: r.IPs[0].Address.IP.String(), host: h}
}

// ping is one echo with busybox ping (the VM has no iputils: -W takes
// whole seconds only). Under TCG the first echo can take ~1 s (ARP).
func (e *env) ping(ns, ip string) error {
	_, err := e.l.Exec(ns, "ping", "-c1", "-W2", "-q", ip)
	return err
}

// reach checks ICMP (retried for up to d: routes and ARP settle) and then
// TCP to port 8080 from a to b.
func (e *env) reach(a, b ctr, d time.Duration) error {
	if err := lab.Eventually(d, func() error { return e.ping(a.ns, b.ip) }); err != nil {
		return fmt.Errorf("%s(%s) -> %s(%s) ping: %w", a.name, a.host.Name, b.name, b.host.Name, err)
	}
	if err := lab.Eventually(d, func() error { return e.l.TCPConnect(a.ns, b.ip, 8080) }); err != nil {
		return fmt.Errorf("%s(%s) -> %s(%s) tcp: %w", a.name, a.host.Name, b.name, b.host.Name, err)
	}
	return nil
}

// blocked checks that neither ICMP nor TCP gets from a to b.
func (e *env) blocked(a, b ctr) error {
	if err := e.ping(a.ns, b.ip); err == nil {
		return fmt.Errorf("%s -> %s: ping answered, want dropped", a.name, b.name)
	}
	if err := e.l.TCPConnect(a.ns, b.ip, 8080); err == nil {
		return fmt.Errorf("%s -> %s: tcp connected, want dropped", a.name, b.name)
	}
	return nil
}

// parallel runs f for each item at once and joins the errors.
func parallel[T any](items []T, f func(T) error) []string {
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Go(func() {
			if err := f(it); err != nil {
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errs
}

// sysNet reads /sys/class/net/<path> inside a namespace (ip netns exec
// mounts the namespace's own /sys).
func (e *env) sysNet(ns, path string) (string, error) {
	out, err := e.l.Exec(ns, "cat", "/sys/class/net/"+path)
	return strings.TrimSpace(out), err
}

func (e *env) sysNetInt(ns, path string) (int, error) {
	s, err := e.sysNet(ns, path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

// routeGet is `ip route get ip` in namespace ns, on one line.
func (e *env) routeGet(ns, ip string) (string, error) {
	out, err := e.l.Exec(ns, "ip", "route", "get", ip)
	return strings.Join(strings.Fields(out), " "), err
}

// echo sends n bytes through the lab's echo server at ip:8080 from ns and
// checks they come back intact.
func (e *env) echo(ns, ip string, n int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := e.l.DialContext(ctx, ns, "tcp", net.JoinHostPort(ip, "8080"))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	start := time.Now()
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i*7 + i/251)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		werr <- err
	}()
	br := bufio.NewReader(conn)
	if _, err := br.ReadString('\n'); err != nil { // the greeting line
		return 0, fmt.Errorf("greeting: %w", err)
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(br, got); err != nil {
		return 0, fmt.Errorf("read back: %w", err)
	}
	if err := <-werr; err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	for i := range got {
		if got[i] != payload[i] {
			return 0, fmt.Errorf("byte %d differs", i)
		}
	}
	return time.Since(start), nil
}

// counters reads iptables-save -c of a namespace and sums the packet
// counters of the rules carrying each comment.
func (e *env) counters(ns string) (map[string]int, error) {
	out, err := e.l.Exec(ns, "iptables-save", "-c", "-t", "filter")
	if err != nil {
		return nil, err
	}
	re := regexp.MustCompile(`^\[(\d+):\d+\] .*--comment "?([a-z0-9-]+)"?`)
	m := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		if s := re.FindStringSubmatch(line); s != nil {
			n, _ := strconv.Atoi(s[1])
			m[s[2]] += n
		}
	}
	return m, nil
}
