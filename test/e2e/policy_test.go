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

	"github.com/tabby-net/tabby/test/lab"
)

// conflist writes a conflist for host h (what `tabbyctl container add --conf` reads).
func (e *env) conflist(h *lab.Host) string {
	e.t.Helper()
	p := filepath.Join(e.dir, h.Name+".conflist")
	body := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby-net","plugins":[{"type":"tabby","etcd_endpoints":%q,"nodename":%q,
	  "state_dir":%q,"log_file":%q,"log_level":"debug","ipam":{"type":"tabby-ipam"}}]}`, e.l.EtcdURL, h.Name, e.stateDir(h), filepath.Join(e.dir, h.Name+"-cni.log"))
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

type workload struct {
	name, ns, ip string
	host         *lab.Host
}

// quickPing is one echo with a short wait, for matrices where most probes
// are expected to fail.
func (e *env) quickPing(from, ip string) error {
	_, err := e.l.Exec(from, "ping", "-c1", "-W0.5", "-n", "-q", ip)
	return err
}

// reach checks ICMP and TCP from a to b.
func (e *env) reach(a, b workload) (bool, bool) {
	return e.quickPing(a.ns, b.ip) == nil, e.l.TCPConnect(a.ns, b.ip, 8080) == nil
}

// matrix checks every ordered pair in parallel against want(a, b). Rules
// reach every host within a bound, not at the instant tabbyctl returns: the
// matrix must hold within 5 s of the last change.
func (e *env) matrix(ws []workload, want func(a, b workload) bool) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		bad := e.matrixOnce(ws, want)
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("reachability matrix:\n%s", strings.Join(bad, "\n"))
		}
	}
}

func (e *env) matrixOnce(ws []workload, want func(a, b workload) bool) []string {
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for _, a := range ws {
		for _, b := range ws {
			if a.name == b.name {
				continue
			}
			wg.Add(1)
			go func(a, b workload) {
				defer wg.Done()
				icmp, tcp := e.reach(a, b)
				w := want(a, b)
				if icmp != w || tcp != w {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s->%s: icmp %v tcp %v, want %v", a.name, b.name, icmp, tcp, w))
					mu.Unlock()
				}
			}(a, b)
		}
	}
	wg.Wait()
	return bad
}

func (e *env) tabbyRules(h *lab.Host) string {
	out := e.l.MustExec(h.NS, "iptables-save")
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "TABBY") || strings.Contains(l, "tby") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// The seed scenario: A, C, E with PROF_A_C_E, B, D with PROF_B_D, spread
// over three hosts: exactly the intended pairs connect, both ways, ICMP and
// TCP; then profile changes, deny and CIDR rules, spoofing, a daemon restart
// and someone else's rules.
func TestPolicySeedScenario(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 3})
	h1 := e.l.Hosts[0]
	// Someone else's firewall, there before tabby.
	e.l.MustExec(h1.NS, "iptables", "-N", "OTHER-CHAIN")
	e.l.MustExec(h1.NS, "iptables", "-A", "OTHER-CHAIN", "-j", "RETURN")
	e.l.MustExec(h1.NS, "iptables", "-A", "FORWARD", "-s", "192.0.2.123/32", "-j", "OTHER-CHAIN")
	e.pool("10.0.0.0/16")
	procs := map[string]*lab.Proc{}
	for _, h := range e.l.Hosts {
		procs[h.Name] = e.startNode(h)
	}
	for _, h := range e.l.Hosts {
		e.waitEstablished(h, 2, 20*time.Second)
	}
	names := []string{"conA", "conB", "conC", "conD", "conE"}
	var ws []workload
	for i, n := range names {
		h := e.l.Hosts[i%3]
		nsName, nsPath := e.l.AddContainer(h, n)
		ip := fmt.Sprintf("10.0.0.%d", i+1)
		start := time.Now()
		e.ctl(h, "container", "add", n, ip, "--netns", nsPath, "--conf", e.conflist(h))
		t.Logf("container add %s on %s (policy in force on return) took %v", n, h.Name, time.Since(start).Round(time.Millisecond))
		e.l.ServeTCP(nsName, 8080)
		ws = append(ws, workload{name: n, ns: nsName, ip: ip, host: h})
	}
	// No profile yet: nothing crosses.
	e.matrix(ws, func(a, b workload) bool { return false })
	e.ctl(h1, "profile", "add", "PROF_A_C_E")
	e.ctl(h1, "profile", "add", "PROF_B_D")
	group := map[string]string{"conA": "PROF_A_C_E", "conC": "PROF_A_C_E", "conE": "PROF_A_C_E", "conB": "PROF_B_D", "conD": "PROF_B_D"}
	for _, w := range ws {
		e.ctl(h1, "container", w.name, "profile", "append", group[w.name])
	}
	same := func(a, b workload) bool { return group[a.name] == group[b.name] }
	eventually(t, 3*time.Second, func() error {
		if ok, _ := e.reach(ws[0], ws[2]); !ok {
			return fmt.Errorf("A cannot reach C yet")
		}
		return nil
	})
	e.matrix(ws, same)
	show := e.ctl(h1, "container", "show")
	t.Logf("container show:\n%s", show)

	// B joins PROF_A_C_E: it reaches A, C, E within a second, on every
	// host. Probes wait 100 ms for a reply so they do not hide the time.
	e.ctl(h1, "container", "conB", "profile", "append", "PROF_A_C_E")
	start := time.Now()
	var wg sync.WaitGroup
	took := make([]time.Duration, 3)
	for i, target := range []workload{ws[0], ws[2], ws[4]} {
		wg.Add(1)
		go func(i int, target workload) {
			defer wg.Done()
			for time.Since(start) < 5*time.Second {
				if _, err := e.l.Exec(ws[1].ns, "ping", "-c1", "-W0.1", "-n", "-q", target.ip); err == nil {
					took[i] = time.Since(start)
					return
				}
			}
			took[i] = -1
		}(i, target)
	}
	wg.Wait()
	t.Logf("profile append to effect: B reaches A, C, E after %v", took)
	for i, d := range took {
		if d < 0 || d > time.Second {
			t.Fatalf("B reached %s only after %v, want < 1s", ws[[]int{0, 2, 4}[i]].name, d)
		}
	}
	e.ctl(h1, "container", "conB", "profile", "remove", "PROF_A_C_E")
	eventually(t, 5*time.Second, func() error {
		if ok, _ := e.reach(ws[1], ws[0]); ok {
			return fmt.Errorf("B still reaches A")
		}
		return nil
	})
	e.matrix(ws, same)

	// A deny on top of an allow: B back in PROF_A_C_E, but tcp 8080 from tag
	// PROF_B_D is denied (ICMP still allowed).
	e.ctl(h1, "container", "conB", "profile", "append", "PROF_A_C_E")
	e.ctl(h1, "profile", "PROF_A_C_E", "rule", "add", "inbound", "--at", "1", "deny", "from", "tag", "PROF_B_D", "tcp", "port", "8080")
	eventually(t, 5*time.Second, func() error {
		icmp, tcp := e.reach(ws[1], ws[0])
		if !icmp || tcp {
			return fmt.Errorf("B->A icmp %v tcp %v, want icmp only", icmp, tcp)
		}
		return nil
	})
	e.ctl(h1, "profile", "PROF_A_C_E", "rule", "remove", "inbound", "1")
	e.ctl(h1, "container", "conB", "profile", "remove", "PROF_A_C_E")
	// A CIDR rule: D accepts A's address.
	e.ctl(h1, "profile", "PROF_B_D", "rule", "add", "inbound", "allow", "from", "cidr", ws[0].ip+"/32")
	eventually(t, 5*time.Second, func() error {
		if ok, _ := e.reach(ws[0], ws[3]); !ok {
			return fmt.Errorf("A cannot reach D through the CIDR rule")
		}
		return nil
	})
	if ok, _ := e.reach(ws[2], ws[3]); ok {
		t.Fatal("C reaches D: the CIDR rule is too wide")
	}
	e.ctl(h1, "profile", "PROF_B_D", "rule", "remove", "inbound", "2")
	eventually(t, 5*time.Second, func() error {
		if ok, _ := e.reach(ws[0], ws[3]); ok {
			return fmt.Errorf("A still reaches D after the CIDR rule went")
		}
		return nil
	})
	e.matrix(ws, same)

	// Spoofing: A sends from an address that is not its own.
	e.l.MustExec(ws[0].ns, "ip", "addr", "add", "10.0.0.99/32", "dev", "eth0")
	if _, err := e.l.Exec(ws[0].ns, "ping", "-c1", "-W0.5", "-I", "10.0.0.99", ws[2].ip); err == nil {
		t.Fatal("a spoofed source address got through")
	}
	if err := e.quickPing(ws[0].ns, ws[2].ip); err != nil {
		t.Fatalf("A's own address stopped working: %v", err)
	}

	// Restart tabby-node on host1 (kill -9) while allowed traffic flows:
	// allowed flows keep flowing, denied stay denied, no rule duplicated.
	before := e.tabbyRules(h1)
	// An allowed flow pinging every 10 ms across the restart (A on host1 to
	// C on host3), and a denied one probed meanwhile (B to A).
	pingOut := make(chan string, 1)
	go func() {
		out, _ := e.l.Exec(ws[0].ns, "ping", "-i", "0.01", "-c", "600", "-W", "1", "-n", "-q", ws[2].ip)
		pingOut <- out
	}()
	deniedGot := make(chan bool, 1)
	stopDenied := make(chan struct{})
	go func() {
		leaked := false
		for {
			select {
			case <-stopDenied:
				deniedGot <- leaked
				return
			default:
			}
			if e.l.TCPConnect(ws[1].ns, ws[0].ip, 8080) == nil {
				leaked = true
			}
		}
	}()
	time.Sleep(time.Second)
	procs[h1.Name].Kill(syscall.SIGKILL)
	procs[h1.Name].Wait()
	time.Sleep(300 * time.Millisecond)
	procs[h1.Name] = e.startNode(h1)
	e.waitEstablished(h1, 2, 30*time.Second)
	out := <-pingOut
	close(stopDenied)
	if <-deniedGot {
		t.Fatal("a denied flow got through while tabby-node restarted")
	}
	if !strings.Contains(out, "600 packets transmitted, 600 received") {
		t.Fatalf("allowed flow lost packets across the restart:\n%s", out)
	}
	if after := e.tabbyRules(h1); after != before {
		t.Fatalf("rules changed across a restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	t.Logf("tabby-node kill -9 and restart under a 10 ms ping: %s; %d tabby rules unchanged", strings.TrimSpace(strings.Split(out, "\n")[len(strings.Split(strings.TrimSpace(out), "\n"))-2]), strings.Count(before, "\n")+1)
	e.matrix(ws, same)
	// Someone else's rules survived everything.
	save := e.l.MustExec(h1.NS, "iptables-save")
	if !strings.Contains(save, ":OTHER-CHAIN") || !strings.Contains(save, "-A FORWARD -s 192.0.2.123/32 -j OTHER-CHAIN") || strings.Count(save, "-j TABBY-FORWARD") != 1 {
		t.Fatalf("foreign rules or single hook lost:\n%s", save)
	}
}
