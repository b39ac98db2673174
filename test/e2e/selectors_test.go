package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/lab"
)

// Policies by label selector across three hosts, driven as a user would:
// workloads labelled at ADD (TABBY_LABELS), policies written with
// tabbyctl policy add -f. An ingress policy isolates only what it selects
// and admits only its peers on its port; an egress policy with no rules
// cuts its endpoints off; the profile ("open") still has to allow too;
// removing the policies opens everything again.
func TestPolicySelectorsAcrossHosts(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 3})
	h := e.l.Hosts
	e.pool("10.0.0.0/16")
	e.openNetwork()
	for _, host := range h {
		e.startNode(host)
	}
	for _, host := range h {
		e.waitEstablished(host, 2, 20*time.Second)
	}
	mk := func(host *lab.Host, name, labels string) workload {
		ns, ip := e.container(host, name, "TABBY_WORKLOAD="+name+";TABBY_LABELS="+labels)
		e.l.ServeTCP(ns, 8080)
		return workload{name: name, ns: ns, ip: ip, host: host}
	}
	web := mk(h[0], "web", "role=web")
	front := mk(h[1], "front", "role=frontend,team=a")
	other := mk(h[2], "other", "role=other")
	db := mk(h[0], "db", "role=db")
	ws := []workload{web, front, other, db}
	e.matrix(ws, func(a, b workload) bool { return true })

	pol := filepath.Join(e.dir, "policies.yaml")
	if err := os.WriteFile(pol, []byte(`name: web-from-frontend
selector: role == web
types: [ingress]
ingress:
- ports: [{protocol: tcp, port: 8080}]
  peers: [{selector: "role in (frontend)"}]
---
name: db-no-egress
selector: role=db
types: [egress]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctl(h[0], "policy", "add", "-f", pol)
	// Port-only ingress: front reaches web on tcp 8080 only, the others
	// not at all; db sends nothing but still receives.
	want := func(a, b workload) (icmp, tcp bool) {
		switch {
		case a.name == "db":
			return false, false
		case b.name == "web":
			return false, a.name == "front"
		}
		return true, true
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var bad []string
		for _, a := range ws {
			for _, b := range ws {
				if a.name == b.name {
					continue
				}
				icmp, tcp := e.reach(a, b)
				wi, wt := want(a, b)
				if icmp != wi || tcp != wt {
					bad = append(bad, fmt.Sprintf("%s->%s icmp %v tcp %v, want %v %v", a.name, b.name, icmp, tcp, wi, wt))
				}
			}
		}
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with policies:\n%v\nrules on %s:\n%s", bad, h[0].Name, e.tabbyRules(h[0]))
		}
	}
	// The profile is the outer boundary: take "open" off front and no
	// policy lets it reach web any more.
	e.ctl(h[0], "container", "front", "profile", "remove", "open")
	eventually(t, 5*time.Second, func() error {
		if e.l.TCPConnect(front.ns, web.ip, 8080) == nil {
			return fmt.Errorf("front still reaches web without a profile")
		}
		return nil
	})
	e.ctl(h[0], "container", "front", "profile", "append", "open")
	e.ctl(h[0], "policy", "remove", "web-from-frontend")
	e.ctl(h[0], "policy", "remove", "db-no-egress")
	e.matrix(ws, func(a, b workload) bool { return true })
}
