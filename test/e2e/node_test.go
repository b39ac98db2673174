package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/test/lab"
)

// container adds a container on h through the CNI plugin and returns its
// namespace name and address.
func (e *env) container(h *lab.Host, name, args string) (string, string) {
	e.t.Helper()
	nsName, nsPath := e.l.AddContainer(h, name)
	ip := addrOf(e.t, e.plugin(h, "ADD", name, nsPath, "eth0", args, e.conf(h, "", e.netExtra, "")))
	return nsName, ip
}

func (e *env) pingEventually(from, ip string, d time.Duration) time.Duration {
	e.t.Helper()
	start := time.Now()
	eventually(e.t, d, func() error { return e.l.Ping(from, ip) })
	return time.Since(start)
}

// openNetwork gives every workload of the test network one profile that
// lets members reach each other: these tests are about routing, and tabby
// drops traffic of workloads without a profile.
func (e *env) openNetwork() {
	e.ctl(e.l.Hosts[0], "profile", "add", "open")
	e.netExtra = `,"profiles":["open"]`
}

// 3 hosts, direct routing: containers on all hosts reach each other; a new
// block on one host is reachable from another within 1 s of its ADD.
func TestNodeDirectRouting(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 3})
	e.pool("10.0.0.0/16")
	e.openNetwork()
	for _, h := range e.l.Hosts {
		e.startNode(h)
	}
	for _, h := range e.l.Hosts {
		e.waitEstablished(h, 2, 20*time.Second)
	}
	type ctr struct{ ns, ip string }
	var cs []ctr
	for i, h := range e.l.Hosts {
		ns, ip := e.container(h, fmt.Sprintf("c%d", i), "")
		cs = append(cs, ctr{ns, ip})
	}
	for _, a := range cs {
		for _, b := range cs {
			if a != b {
				e.pingEventually(a.ns, b.ip, 5*time.Second)
			}
		}
	}
	// Routes are tabby's (proto 80), plain via the peer, plus a blackhole
	// for the local block.
	r := e.l.MustExec(e.l.Hosts[0].NS, "ip", "route", "show", "proto", "80")
	if !strings.Contains(r, "via "+e.l.Hosts[1].IP) || !strings.Contains(r, "blackhole") {
		t.Fatalf("host1 routes:\n%s", r)
	}
	// A new block on host2 (a static address far from its first block).
	h2 := e.l.Hosts[1]
	nsPath := filepath.Join("/run/netns", cs[0].ns)
	_ = nsPath
	_, newNS := e.l.AddContainer(h2, "late")
	o := e.plugin(h2, "ADD", "late", newNS, "eth0", "IP=10.0.222.10", e.conf(h2, "", e.netExtra, ""))
	addrOf(t, o)
	// Probe with a short reply timeout, so the probe's own wait does not
	// hide how fast the route arrives.
	start := time.Now()
	eventually(t, 3*time.Second, func() error {
		_, err := e.l.Exec(cs[0].ns, "ping", "-c1", "-W0.1", "-n", "-q", "10.0.222.10")
		return err
	})
	took := time.Since(start)
	t.Logf("new block on %s reachable from host1 %v after its ADD returned", h2.Name, took.Round(time.Millisecond))
	if took > time.Second {
		t.Fatalf("new block reachable only after %v, want < 1s", took)
	}
	st, _ := e.status(e.l.Hosts[0])
	t.Logf("host1 status: %d routes, peers %+v, reconcile %.1f ms", st.Routes, st.Peers, st.ReconcileMillis)
}

// VXLAN across two subnets, and cross-subnet mode: direct inside a subnet,
// VXLAN across.
func TestNodeVXLANAndCrossSubnet(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 3, Subnets: 2})
	// host1 and host3 share 198.19.0.0/24; host2 is on 198.19.1.0/24.
	e.pool("10.1.0.0/16", "--vxlan")
	e.pool("10.2.0.0/16", "--vxlan=cross-subnet")
	e.openNetwork()
	for _, h := range e.l.Hosts {
		e.startNode(h)
	}
	for _, h := range e.l.Hosts {
		e.waitEstablished(h, 2, 20*time.Second)
	}
	pools := `,"ipv4_pools":["%s"]`
	h1, h2, h3 := e.l.Hosts[0], e.l.Hosts[1], e.l.Hosts[2]
	mk := func(h *lab.Host, name, pool string) (string, string) {
		nsName, nsPath := e.l.AddContainer(h, name)
		return nsName, addrOf(t, e.plugin(h, "ADD", name, nsPath, "eth0", "", e.conf(h, "", e.netExtra, fmt.Sprintf(pools, pool))))
	}
	a1, ipA1 := mk(h1, "a1", "10.1.0.0/16")
	_, ipA2 := mk(h2, "a2", "10.1.0.0/16")
	x1, ipX1 := mk(h1, "x1", "10.2.0.0/16")
	_, ipX2 := mk(h2, "x2", "10.2.0.0/16")
	x3, ipX3 := mk(h3, "x3", "10.2.0.0/16")
	e.pingEventually(a1, ipA2, 5*time.Second)
	e.pingEventually(x1, ipX2, 5*time.Second)
	e.pingEventually(x1, ipX3, 5*time.Second)
	e.pingEventually(x3, ipX1, 5*time.Second)
	_ = ipA1
	// Where the kernel sends them: always-VXLAN and cross-subnet to the other
	// subnet through vxlan.tabby, cross-subnet inside the subnet plain.
	get := func(ip string) string { return e.l.MustExec(h1.NS, "ip", "route", "get", ip) }
	if r := get(ipA2); !strings.Contains(r, "dev vxlan.tabby") {
		t.Fatalf("VXLAN pool to the other subnet: %s", r)
	}
	if r := get(ipX2); !strings.Contains(r, "dev vxlan.tabby") {
		t.Fatalf("cross-subnet pool to the other subnet: %s", r)
	}
	if r := get(ipX3); !strings.Contains(r, "via "+h3.IP+" dev eth0") {
		t.Fatalf("cross-subnet pool inside the subnet: %s", r)
	}
	if mtu := e.l.MustExec(h1.NS, "cat", "/sys/class/net/vxlan.tabby/mtu"); strings.TrimSpace(mtu) != "1450" {
		t.Fatalf("vxlan.tabby MTU %s, want 1450", mtu)
	}
	// The container's MTU follows the pool's encapsulation.
	if mtu := e.l.MustExec(a1, "cat", "/sys/class/net/eth0/mtu"); strings.TrimSpace(mtu) != "1450" {
		t.Fatalf("container MTU in a VXLAN pool: %s, want 1450", mtu)
	}
}

// IPv6: dual-stack containers on two hosts reach each other over IPv6
// (routes learned over BGP with the hosts' IPv6 next hops), with policy.
func TestNodeDualStack(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 2})
	e.pool("10.0.0.0/16", "--vxlan", "--nat-outgoing")
	e.pool("fd00:10::/64")
	e.openNetwork()
	for _, h := range e.l.Hosts {
		e.startNode(h, "--ip6", h.IP6+"/64")
	}
	for _, h := range e.l.Hosts {
		e.waitEstablished(h, 1, 20*time.Second)
	}
	ds := `,"assign_ipv6":true`
	var ns6, ip6, ip4 []string
	for i, h := range e.l.Hosts {
		nsName, nsPath := e.l.AddContainer(h, fmt.Sprintf("d%d", i))
		o := e.plugin(h, "ADD", fmt.Sprintf("d%d", i), nsPath, "eth0", "", e.conf(h, "", e.netExtra, ds))
		ip4 = append(ip4, addrOf(t, o))
		out := e.l.MustExec(nsName, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
		f := strings.Fields(out)
		if len(f) < 4 {
			t.Fatalf("no IPv6 address in %s: %q", nsName, out)
		}
		ns6 = append(ns6, nsName)
		ip6 = append(ip6, strings.Split(f[3], "/")[0])
	}
	e.pingEventually(ns6[0], ip4[1], 10*time.Second)
	e.pingEventually(ns6[0], ip6[1], 10*time.Second)
	e.pingEventually(ns6[1], ip6[0], 5*time.Second)
	if r := e.l.MustExec(e.l.Hosts[0].NS, "ip", "-6", "route", "show", "proto", "80"); !strings.Contains(r, "via "+e.l.Hosts[1].IP6) {
		t.Fatalf("host1 IPv6 routes:\n%s", r)
	}
}

// With tabby-node installed but not answering, an ADD cannot get its policy
// in force: code 11 and nothing left behind. Once the daemon runs, the same
// ADD succeeds.
func TestNodeDownADDFailsClosed(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	e.openNetwork()
	p := e.startNode(h)
	e.waitEstablished(h, 0, 20*time.Second)
	p.Kill(syscall.SIGKILL)
	p.Wait()
	_, ns := e.l.AddContainer(h, "w")
	conf := e.conf(h, "", e.netExtra+`,"policy_setup_timeout_seconds":2`, "")
	o := e.plugin(h, "ADD", "w", ns, "eth0", "", conf)
	if o.ErrCode != 11 {
		t.Fatalf("ADD with tabby-node down: code %d (%s), want 11", o.ErrCode, o.ErrMsg)
	}
	t.Logf("code 11 after %v: %s", o.Took.Round(time.Millisecond), o.ErrMsg)
	if links := e.l.MustExec(h.NS, "ip", "-o", "link"); strings.Contains(links, "tby") {
		t.Fatalf("veth left after a failed ADD:\n%s", links)
	}
	for _, pre := range []string{model.HostWorkloadPrefix(h.Name), model.HandlePrefix} {
		if k := e.keys(pre); len(k) != 0 {
			t.Fatalf("keys left under %s: %v", pre, k)
		}
	}
	e.startNode(h)
	e.waitEstablished(h, 0, 20*time.Second)
	addrOf(t, e.plugin(h, "ADD", "w", ns, "eth0", "", conf))
}
