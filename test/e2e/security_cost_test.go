package e2e

import (
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/lab"
)

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

// TestSecurityADDCost measures what etcd TLS with client certificates and
// auth costs an ADD and a DEL (tabby + tabby-ipam under a running
// tabby-node, one host): 60 of each on plain etcd, then 60 on an etcd with
// TLS and auth. A figure, not a goal, so it runs only when asked:
// TABBY_SECURITY_COST=1 go test -v -run TestSecurityADDCost ./test/e2e/
// (docs/security.md has the numbers).
func TestSecurityADDCost(t *testing.T) {
	if os.Getenv("TABBY_SECURITY_COST") == "" {
		t.Skip("a measurement: set TABBY_SECURITY_COST=1")
	}
	run := func(name string, e *env, extra string, nodeFlags []string) {
		h := e.l.Hosts[0]
		e.StartNode(h, nodeFlags...)
		e.WaitPeers(h, 0, 60*time.Second)
		conf := e.conf(h, "", `,"profiles":["P"]`+extra, "")
		var adds, dels []time.Duration
		for round := 0; round < 3; round++ {
			for i := 0; i < 20; i++ {
				_, ns := e.l.AddContainer(h, fmt.Sprintf("c%d%d", round, i))
				o := e.plugin(h, "ADD", fmt.Sprintf("ctr-%d-%d", round, i), ns, "eth0", "", conf)
				if o.ExitCode != 0 {
					t.Fatalf("%s ADD: %s", name, o.Stdout)
				}
				adds = append(adds, o.Took)
				o = e.plugin(h, "DEL", fmt.Sprintf("ctr-%d-%d", round, i), ns, "eth0", "", conf)
				if o.ExitCode != 0 {
					t.Fatalf("%s DEL: %s", name, o.Stdout)
				}
				dels = append(dels, o.Took)
			}
		}
		t.Logf("%s: ADD p50 %v, DEL p50 %v (n=%d)", name, median(adds), median(dels), len(adds))
	}
	{
		e := newEnv(t, lab.Options{Hosts: 1})
		e.pool("10.0.0.0/16")
		e.ctl(e.l.Hosts[0], "profile", "add", "P")
		run("plain", e, "", nil)
	}
	{
		s := newSecureEnv(t, 1)
		h := s.l.Hosts[0]
		if _, err := s.ctlAs(h, s.admin, "pool", "add", "10.0.0.0/16"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ctlAs(h, s.admin, "profile", "add", "P"); err != nil {
			t.Fatal(err)
		}
		run("tls+auth", s.env, s.hosts[h].conf(), s.hosts[h].flags())
	}
}
