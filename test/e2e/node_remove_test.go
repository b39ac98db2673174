package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/test/lab"
)

// A host gone for good (its daemon killed, its workload never DELeted),
// then `tabbyctl node remove`: until then the other hosts keep its routes
// (graceful restart) and its workload's address stays taken; after it
// they drop its session and routes within seconds, the address can be
// given again, and ipam check finds nothing.
func TestNodeRemoveGoneHost(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 3})
	e.pool("10.0.0.0/16")
	e.openNetwork()
	procs := map[*lab.Host]*lab.Proc{}
	for _, h := range e.l.Hosts {
		procs[h] = e.startNode(h)
	}
	for _, h := range e.l.Hosts {
		e.waitEstablished(h, 2, 20*time.Second)
	}
	h1, h2, h3 := e.l.Hosts[0], e.l.Hosts[1], e.l.Hosts[2]
	ns1, _ := e.container(h1, "c1", "")
	_, ip3 := e.container(h3, "c3", "")
	e.pingEventually(ns1, ip3, 5*time.Second)

	if err := procs[h3].Kill(os.Kill); err != nil {
		t.Fatal(err)
	}
	_ = procs[h3].Wait()
	routeVia := func(h *lab.Host, via string) bool {
		return strings.Contains(e.l.MustExec(h.NS, "ip", "route", "show", "proto", "80"), "via "+via)
	}
	if !routeVia(h1, h3.IP) {
		t.Fatalf("host1 has no route via host3 right after host3's daemon died (graceful restart keeps them)")
	}
	_, nsLate := e.l.AddContainer(h2, "late")
	conf := e.conf(h2, "", e.netExtra, "")
	if o := e.plugin(h2, "ADD", "late", nsLate, "eth0", "IP="+ip3, conf); o.ExitCode == 0 || o.ErrCode != int(cnierr.AddressInUse) {
		t.Fatalf("ADD of the gone host's address before node remove: exit %d code %d (%s), want code %d", o.ExitCode, o.ErrCode, o.ErrMsg, cnierr.AddressInUse)
	}

	out := e.ctl(h1, "node", "remove", h3.Name)
	t.Logf("tabbyctl node remove %s: %s", h3.Name, strings.TrimSpace(out))
	if !strings.Contains(out, "1 endpoints") {
		t.Fatalf("node remove said: %s", out)
	}
	start := time.Now()
	eventually(t, 10*time.Second, func() error {
		if routeVia(h1, h3.IP) {
			return fmt.Errorf("host1 still routes via host3")
		}
		st, err := e.status(h1)
		if err != nil {
			return err
		}
		for _, p := range st.Peers {
			if p.Address == h3.IP {
				return fmt.Errorf("host1 still has host3 as a BGP peer (%s)", p.State)
			}
		}
		return nil
	})
	t.Logf("host1 dropped host3's session and routes %v after node remove", time.Since(start).Round(time.Millisecond))
	if strings.Contains(e.ctl(h1, "node", "show"), h3.Name) {
		t.Fatal("node show still lists host3")
	}
	if ip := addrOf(t, e.plugin(h2, "ADD", "late", nsLate, "eth0", "IP="+ip3, conf)); ip != ip3 {
		t.Fatalf("late got %s, want %s", ip, ip3)
	}
	e.pingEventually(ns1, ip3, 5*time.Second) // now host2's workload
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := ipam.Check(ctx, e.kv); err != nil || len(r.Problems) != 0 {
		t.Fatalf("ipam check after node remove: %+v %v", r, err)
	}
}
