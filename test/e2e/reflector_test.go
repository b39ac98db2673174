package e2e

// Route reflectors: the mesh off, two tabby hosts reflecting for the rest.

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/lab"
)

// rrSessions is nil once h's daemon has exactly the peers want (address ->
// kind), all Established, and BGP has settled.
func (e *env) rrSessions(h *lab.Host, want map[string]string) error {
	st, err := e.status(h)
	if err != nil {
		return err
	}
	var bad []string
	got := map[string]bool{}
	for _, p := range st.Peers {
		got[p.Address] = true
		if k, ok := want[p.Address]; !ok || k != p.Kind || p.State != "Established" {
			bad = append(bad, fmt.Sprintf("%s %s %s", p.Address, p.Kind, p.State))
		}
	}
	for a, k := range want {
		if !got[a] {
			bad = append(bad, fmt.Sprintf("missing %s %s", a, k))
		}
	}
	if len(bad) > 0 || !st.Settled {
		sort.Strings(bad)
		return fmt.Errorf("%s: sessions %d, want %d; settled %v; wrong: %s", h.Name, len(st.Peers), len(want), st.Settled,
			strings.Join(bad, ", "))
	}
	return nil
}

// TestReflectors: six hosts, host1 a reflector by its daemon's flag and
// host2 by tabbyctl node set, in a full mesh; the mesh is turned off under
// traffic without losing an echo. Then every client has exactly two
// sessions (one per reflector), a reflector five; workloads on every
// pair of hosts reach each other, through kernel routes via the
// originating host; a new block on a client reaches every other host; a
// reflector SIGKILLed loses no echo between two clients and its sessions
// come back when it restarts.
func TestReflectors(t *testing.T) {
	e, _ := nmNewEnv(t, lab.Options{Hosts: 6})
	hosts := e.l.Hosts
	h1, h2 := hosts[0], hosts[1]
	e.pool("10.0.0.0/16")
	const cluster = "244.0.0.1"
	procs := map[string]*lab.Proc{h1.Name: e.startNode(h1, "--route-reflector", cluster)}
	for _, h := range hosts[1:] {
		procs[h.Name] = e.startNode(h)
	}
	eventually(t, 30*time.Second, func() error {
		_, err := e.ctlErr(h1, "node", "set", h2.Name, "--route-reflector", cluster)
		return err // until host2 has registered
	})
	eventually(t, 30*time.Second, func() error { // until host1 has registered too
		if out := e.ctl(h1, "node", "show"); strings.Count(out, cluster) != 2 {
			return fmt.Errorf("node show does not list two reflectors:\n%s", out)
		}
		return nil
	})
	wantSessions := func(h *lab.Host) map[string]string {
		w := map[string]string{}
		for _, o := range hosts {
			switch {
			case o == h:
			case o == h1 || o == h2:
				w[o.IP] = "reflector"
			case h == h1 || h == h2:
				w[o.IP] = "rr-client"
			}
		}
		return w
	}
	checkSessions := func(d time.Duration) {
		t.Helper()
		for _, h := range hosts {
			eventually(t, d, func() error { return e.rrSessions(h, wantSessions(h)) })
		}
	}

	// The full mesh first, as a cluster that grew would have it, with the
	// reflectors chosen; a workload on every host.
	for _, h := range hosts {
		e.waitEstablished(h, len(hosts)-1, nmSessionWait)
	}
	ns, ips := map[*lab.Host]string{}, map[*lab.Host]string{}
	for _, h := range hosts {
		ns[h], ips[h] = e.nmCtr(h, "w"+strings.TrimPrefix(h.Name, "host"), "10.0.0.0/16", "")
	}
	e.pingEventually(ns[hosts[2]], ips[hosts[5]], 10*time.Second)
	e.pingEventually(ns[hosts[4]], ips[hosts[3]], 10*time.Second)

	// The mesh off under traffic between clients: their direct sessions
	// go, the routes stay (the reflectors already reflected them).
	flood := e.nmStartFlood(ns[hosts[2]], ips[hosts[5]], 600)
	flood2 := e.nmStartFlood(ns[hosts[4]], ips[hosts[3]], 600)
	time.Sleep(time.Second)
	e.ctl(h1, "bgp", "config", "set", "--mesh", "off")
	checkSessions(nmSessionWait)
	nmCheckFlood(t, flood, "mesh turned off, host3 -> host6")
	nmCheckFlood(t, flood2, "mesh turned off, host5 -> host4")

	// Every pair reaches each other through the reflectors.
	for _, a := range hosts {
		for _, b := range hosts {
			if a != b {
				e.pingEventually(ns[a], ips[b], 10*time.Second)
			}
		}
	}
	// Kernel routes point at the originating host, not the reflector.
	for _, h := range hosts {
		want := e.nmWantRoutes(h, hosts, nil)
		eventually(t, 5*time.Second, func() error { return e.nmCheckRoutes(h, want) })
	}

	// A new block on a client (a fixed address outside every block so far)
	// reaches every other host through the reflectors.
	h4 := hosts[3]
	nsNew, ipNew := e.nmCtr(h4, "late", "10.0.0.0/16", "IP=10.0.200.10")
	for _, h := range hosts {
		if h != h4 {
			took := e.nmReachIn(ns[h], ipNew, 10*time.Second)
			t.Logf("new block on %s reachable from %s %v after its ADD", h4.Name, h.Name, took.Round(time.Millisecond))
		}
	}

	// The late workload goes, and its block with it: the route must leave
	// every kernel, reflectors included (copies passed between reflectors
	// once outlived their withdrawal).
	conf := e.conf(h4, "", fmt.Sprintf(`,"profiles":[%q]`, nmProfile), "")
	if o := e.plugin(h4, "DEL", "late", filepath.Join("/run/netns", nsNew), "eth0", "", conf); o.ExitCode != 0 {
		t.Fatalf("DEL late: %s", o.Stdout)
	}
	for _, b := range e.nmBlocks(h4.Name) {
		if b == "10.0.200.0/26" {
			t.Fatalf("host4 still holds block %s after its last workload in it went", b)
		}
	}
	for _, h := range hosts {
		want := e.nmWantRoutes(h, hosts, nil)
		eventually(t, 10*time.Second, func() error { return e.nmCheckRoutes(h, want) })
	}

	// Reflector host1 SIGKILLed while host3 pings host4 and host5 pings
	// host6: host2 still reflects, and the routes learned from
	// host1 stay (graceful restart), so nothing is lost; host1's own
	// workload stays reachable through its stale routes.
	h3, h5 := hosts[2], hosts[4]
	flood = e.nmStartFlood(ns[h3], ips[h4], 800)
	flood2 = e.nmStartFlood(ns[h5], ips[hosts[5]], 800)
	time.Sleep(2 * time.Second)
	if err := procs[h1.Name].Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = procs[h1.Name].WaitTimeout(10 * time.Second)
	killed := time.Now()
	for _, h := range hosts[2:] {
		eventually(t, 10*time.Second, func() error {
			st, err := e.status(h)
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if p.Address == h1.IP && p.State == "Established" {
					return fmt.Errorf("%s still has its session to the killed reflector", h.Name)
				}
			}
			return nil
		})
	}
	e.pingEventually(ns[h3], ips[h1], time.Second)
	nmCheckFlood(t, flood, "reflector host1 SIGKILLed, host3 -> host4")
	nmCheckFlood(t, flood2, "reflector host1 SIGKILLed, host5 -> host6")

	procs[h1.Name] = e.startNode(h1, "--route-reflector", cluster)
	checkSessions(nmSessionWait)
	t.Logf("host1 restarted: every host has its sessions back %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	for _, h := range hosts {
		want := e.nmWantRoutes(h, hosts, nil)
		eventually(t, 10*time.Second, func() error { return e.nmCheckRoutes(h, want) })
	}

}
