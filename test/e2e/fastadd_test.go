package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/test/lab"
)

// probe pings ip from namespace ns every 20 ms until stopped; stop reports
// how many replies came back.
type probe struct {
	p  *lab.Proc
	ip string
}

func (e *env) startProbe(ns, ip string) *probe {
	return &probe{p: e.l.Start(ns, "", "ping", "-n", "-i", "0.02", "-W", "1", ip), ip: ip}
}

func (p *probe) stop(t *testing.T) int {
	t.Helper()
	if err := p.p.Kill(syscall.SIGINT); err != nil {
		t.Fatalf("stop probe of %s: %v", p.ip, err)
	}
	_ = p.p.WaitTimeout(5 * time.Second)
	b, err := os.ReadFile(p.p.Log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "bytes from "+p.ip)
}

// isolated is one host running tabby-node with two profiles, a container
// in each ("inside" ISO, "outside" OUT), and n namespaces waiting for an ADD
// into ISO at fixed addresses that "outside" probes already.
type isolated struct {
	h               *lab.Host
	node            *lab.Proc
	inside, outside string
	conf            []byte
	paths, ips      []string
	probes          []*probe
}

func (e *env) isolated(n int, name, subnet string) *isolated {
	e.t.Helper()
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	e.ctl(h, "profile", "add", "ISO")
	e.ctl(h, "profile", "add", "OUT")
	s := &isolated{h: h, node: e.startNode(h), conf: e.conf(h, "", `,"profiles":["ISO"]`, "")}
	e.waitReady(h)
	s.inside, _ = e.container(h, "inside", "TABBY_PROFILES=ISO")
	s.outside, _ = e.container(h, "outside", "TABBY_PROFILES=OUT")
	for i := range n {
		_, p := e.l.AddContainer(h, fmt.Sprintf("%s%d", name, i))
		ip := fmt.Sprintf("%s.%d", subnet, i+1)
		s.paths, s.ips = append(s.paths, p), append(s.ips, ip)
		s.probes = append(s.probes, e.startProbe(s.outside, ip))
	}
	// Every probe is sending before any ADD starts: the host has seen a
	// packet of each (conntrack tracks it whatever becomes of it).
	for _, p := range s.probes {
		eventually(e.t, 5*time.Second, func() error {
			if out, _ := e.l.Exec(h.NS, "conntrack", "-L", "-p", "icmp", "-d", p.ip); !strings.Contains(out, "dst="+p.ip) {
				return fmt.Errorf("no probe packet for %s seen on the host yet", p.ip)
			}
			return nil
		})
	}
	return s
}

// noAnswers: no probe from outside the profile was ever answered.
func (s *isolated) noAnswers(t *testing.T) {
	t.Helper()
	for _, p := range s.probes {
		if got := p.stop(t); got != 0 {
			t.Errorf("%s answered %d probes from outside its profile", p.ip, got)
		}
	}
}

// The promise under the fast path: 50 concurrent ADDs on a host running
// tabby-node, each with a profile that isolates it. A container outside
// the profile probes every new address from before its ADD starts until
// after all have returned, and never gets an answer; a container inside
// the profile reaches each new one as soon as its ADD returns.
func TestADDPolicyInForceWhenItReturns(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	s := e.isolated(50, "n", "10.0.9")
	var wg sync.WaitGroup
	for i, ip := range s.ips {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := e.plugin(s.h, "ADD", fmt.Sprintf("n%d", i), s.paths[i], "eth0", "IP="+ip, s.conf)
			if o.ExitCode != 0 {
				t.Errorf("ADD %d: %s", i, o.ErrMsg)
				return
			}
			// Inside the profile: in force now, so the first ping answers.
			if err := e.l.Ping(s.inside, ip); err != nil {
				// What the host holds for it, to tell the filter from ARP.
				state, _ := e.l.Exec(s.h.NS, "sh", "-c", "ip -s neigh show "+ip+"; ipset list | grep -c '"+ip+",'")
				later := e.l.Ping(s.inside, ip)
				t.Errorf("right after its ADD returned, %s is not reachable from inside its profile: %v (a second later: %v)\n%s", ip, err, later, state)
			}
		}()
	}
	wg.Wait()
	// Keep probing a little past the last return, then count.
	time.Sleep(200 * time.Millisecond)
	s.noAnswers(t)
}

// tabby-node killed (SIGKILL) during a burst of ADDs: each ADD either
// succeeds with its rules in force or fails with code 11 and leaves
// nothing; no interface forwards without its rules, before or after the
// daemon comes back.
func TestADDBurstWhileNodeIsKilled(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	const n = 30
	s := e.isolated(n, "k", "10.0.8")
	h, inside, conf, paths, node := s.h, s.inside, s.conf, s.paths, s.node
	ok := make([]bool, n)
	firstOK := make(chan struct{}, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Staggered, so that ADDs are at every step when the kill lands.
			time.Sleep(time.Duration(i) * 3 * time.Millisecond)
			o := e.plugin(h, "ADD", fmt.Sprintf("k%d", i), paths[i], "eth0", fmt.Sprintf("IP=10.0.8.%d", i+1), conf)
			switch {
			case o.ExitCode == 0:
				ok[i] = true
				firstOK <- struct{}{}
			case cnierr.Code(o.ErrCode) != cnierr.TryAgain:
				t.Errorf("ADD %d failed with code %d, want 11: %s", i, o.ErrCode, o.ErrMsg)
			}
		}()
	}
	// Kill once the burst is under way: some ADDs done, others in flight.
	select {
	case <-firstOK:
	case <-time.After(20 * time.Second):
		t.Fatal("no ADD succeeded with tabby-node running")
	}
	if err := node.Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	succeeded := 0
	for i := range n {
		ip := fmt.Sprintf("10.0.8.%d", i+1)
		if !ok[i] {
			// Failed: no veth, no record, no address.
			key := model.EndpointKey(h.Name, "cni", fmt.Sprintf("k%d", i), "eth0")
			if len(e.keys(key)) != 0 {
				t.Errorf("failed ADD %d left its endpoint record", i)
			}
			if len(e.keys(model.HandlePrefix+"tabby-net/"+fmt.Sprintf("k%d", i))) != 0 {
				t.Errorf("failed ADD %d left its address", i)
			}
			if out, _ := e.l.Exec(filepath.Base(paths[i]), "ip", "-o", "link", "show", "eth0"); strings.Contains(out, "eth0") {
				t.Errorf("failed ADD %d left its interface", i)
			}
			continue
		}
		succeeded++
		if err := e.l.Ping(inside, ip); err != nil {
			t.Errorf("ADD %d succeeded but %s is not reachable from inside its profile: %v", i, ip, err)
		}
	}
	t.Logf("%d of %d ADDs succeeded; the rest failed with code 11", succeeded, n)
	// The daemon comes back and the host converges; still nothing open.
	e.startNode(h)
	e.waitReady(h)
	for i := range n {
		if ok[i] {
			if err := e.l.Ping(inside, fmt.Sprintf("10.0.8.%d", i+1)); err != nil {
				state, _ := e.l.Exec(h.NS, "sh", "-c", "date +%T.%N; ip route; ip neigh; ipset list -t; ipset list | grep 10.0.8; iptables-save -c | grep -v '^#'")
				later := e.l.Ping(inside, fmt.Sprintf("10.0.8.%d", i+1))
				t.Errorf("after the restart, %d: %v (a second later: %v)\n%s", i, err, later, state)
			}
		}
	}
	s.noAnswers(t)
}

// waitReady waits until tabby-node on h has loaded etcd and answers.
func (e *env) waitReady(h *lab.Host) {
	e.t.Helper()
	eventually(e.t, 15*time.Second, func() error {
		st, err := e.status(h)
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("tabby-node on %s not ready", h.Name)
		}
		return nil
	})
}
