package inner

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/test/lab"
)

const (
	ipipPool  = "10.0.0.0/16" // --ipip --nat-outgoing
	crossPool = "10.2.0.0/16" // --ipip=cross-subnet
)

// TestIPIPLab: three hosts on two underlay subnets (host1 and host3 on
// 198.19.0.0/24, host2 on 198.19.1.0/24, routed by the underlay), tabby-node
// on each, an always-IPIP pool with nat-outgoing and a cross-subnet IPIP
// pool. Containers on different hosts reach each other over tunl0; the
// cross-subnet pool goes direct inside a subnet; the MTUs are 1480;
// nat-outgoing shows the host's address to the outside; policy holds across
// the tunnel.
func TestIPIPLab(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 3, Subnets: 2, Outside: true})
	h1, h2, h3 := e.l.Hosts[0], e.l.Hosts[1], e.l.Hosts[2]
	if h1.Subnet != 0 || h2.Subnet != 1 || h3.Subnet != 0 {
		t.Fatalf("lab layout: subnets %d %d %d, want 0 1 0", h1.Subnet, h2.Subnet, h3.Subnet)
	}
	t.Logf("kernel %s", strings.TrimSpace(e.l.MustExec(h1.NS, "uname", "-r")))
	e.MustCtl(h1, "pool", "add", ipipPool, "--ipip", "--nat-outgoing")
	e.MustCtl(h1, "pool", "add", crossPool, "--ipip=cross-subnet")
	e.MustCtl(h1, "profile", "add", "open")
	e.MustCtl(h1, "profile", "add", "other")
	t.Logf("pools:\n%s", e.MustCtl(h1, "pool", "show"))
	e.StartNodes()

	start := time.Now()
	a1 := e.container(h1, "a1", ipipPool, "open")
	a2 := e.container(h2, "a2", ipipPool, "open")
	a3 := e.container(h3, "a3", ipipPool, "open")
	x1 := e.container(h1, "x1", crossPool, "open")
	x2 := e.container(h2, "x2", crossPool, "open")
	x3 := e.container(h3, "x3", crossPool, "open")
	p2 := e.container(h2, "p2", ipipPool, "other") // not in "open"
	all := []ctr{a1, a2, a3, x1, x2, x3, p2}
	for _, c := range all {
		e.l.ServeTCP(c.ns, 8080)
	}
	e.l.ServeTCP(e.l.OutsideNS, 8080)
	t.Logf("7 containers added (CNI ADD) in %v: a1 %s, a2 %s, a3 %s, x1 %s, x2 %s, x3 %s, p2 %s",
		time.Since(start).Round(time.Millisecond), a1.ip, a2.ip, a3.ip, x1.ip, x2.ip, x3.ip, p2.ip)

	// Counting rules in the underlay router: IPIP (IP protocol 4) between
	// host1 and host2, and any pod-addressed packet routed between the two
	// subnets without encapsulation (there must be none).
	for _, r := range [][]string{
		{"-p", "4", "-s", h1.IP, "-d", h2.IP, "-m", "comment", "--comment", "ipip-h1-h2"},
		{"-p", "4", "-s", h2.IP, "-d", h1.IP, "-m", "comment", "--comment", "ipip-h2-h1"},
		{"-s", "10.0.0.0/8", "-i", "br0", "-o", "br1", "-m", "comment", "--comment", "plain-pod"},
		{"-s", "10.0.0.0/8", "-i", "br1", "-o", "br0", "-m", "comment", "--comment", "plain-pod"},
	} {
		e.l.MustExec(e.l.Underlay, append([]string{"iptables", "-A", "FORWARD"}, r...)...)
	}

	t.Run("node status says IPIP is supported", func(t *testing.T) {
		out, err := e.Ctl(h1, "node", "show")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("tabbyctl node show:\n%s", out)
		for _, h := range e.l.Hosts {
			txt, err := e.Ctl(h, "node", "status", "--state-dir", e.StateDir(h))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(txt, "IPIP: not supported") || strings.Contains(txt, "unserved prefixes") {
				t.Errorf("tabbyctl node status on %s:\n%s", h.Name, txt)
			}
			js, err := e.Ctl(h, "node", "status", "--state-dir", e.StateDir(h), "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			var st nodestatus.Status
			if err := json.Unmarshal([]byte(js), &st); err != nil {
				t.Fatalf("node status -o json on %s: %v\n%s", h.Name, err, js)
			}
			if !st.IPIPSupported || len(st.Unserved) > 0 || len(st.Errors) > 0 {
				t.Errorf("%s: ipipSupported %v, unserved %v, errors %v", h.Name, st.IPIPSupported, st.Unserved, st.Errors)
			}
			t.Logf("%s: ipipSupported %v, %d routes, blocks %v", h.Name, st.IPIPSupported, st.Routes, st.Blocks)
		}
		var hosts []struct {
			Name           string `json:"name"`
			IPIPSupported  bool   `json:"ipipSupported"`
			IPIPTunnelAddr string `json:"ipipTunnelAddr"`
		}
		js, err := e.Ctl(h1, "node", "show", "-o", "json")
		if err == nil {
			err = json.Unmarshal([]byte(js), &hosts)
		}
		if err != nil || len(hosts) != 3 {
			t.Fatalf("node show -o json: %v (%d hosts)\n%s", err, len(hosts), js)
		}
		for _, h := range hosts {
			if !h.IPIPSupported || h.IPIPTunnelAddr == "" {
				t.Errorf("host record %s: ipipSupported %v, ipipTunnelAddr %q", h.Name, h.IPIPSupported, h.IPIPTunnelAddr)
			}
		}
	})

	t.Run("tunl0 is up with MTU 1480 and the tunnel address", func(t *testing.T) {
		_, pool, _ := net.ParseCIDR(ipipPool)
		_, cpool, _ := net.ParseCIDR(crossPool)
		for _, h := range e.l.Hosts {
			if mtu, err := e.sysNetInt(h.NS, "eth0/mtu"); err != nil || mtu != 1500 {
				t.Errorf("%s uplink eth0 MTU %d (%v), want 1500", h.Name, mtu, err)
			}
			out, err := e.l.Exec(h.NS, "ip", "-d", "-o", "addr", "show", "dev", "tunl0")
			if err != nil {
				t.Errorf("%s: %v", h.Name, err)
				continue
			}
			link, _ := e.l.Exec(h.NS, "ip", "-d", "-o", "link", "show", "dev", "tunl0")
			t.Logf("%s: %s", h.Name, strings.Join(strings.Fields(link), " "))
			if !strings.Contains(link, "ipip any remote any local any") || !strings.Contains(link, ",UP") {
				t.Errorf("%s tunl0 is not the up ipip fallback device: %s", h.Name, link)
			}
			if mtu, err := e.sysNetInt(h.NS, "tunl0/mtu"); err != nil || mtu != 1480 {
				t.Errorf("%s tunl0 MTU %d (%v), want 1480", h.Name, mtu, err)
			}
			var addrs []string
			for _, f := range strings.Split(out, "\n") {
				w := strings.Fields(f)
				for i := range w {
					if w[i] == "inet" && i+1 < len(w) {
						addrs = append(addrs, w[i+1])
					}
				}
			}
			if len(addrs) != 1 || !strings.HasSuffix(addrs[0], "/32") {
				t.Errorf("%s tunl0 addresses %v, want one /32", h.Name, addrs)
				continue
			}
			ip, _, _ := net.ParseCIDR(addrs[0])
			if !pool.Contains(ip) && !cpool.Contains(ip) {
				t.Errorf("%s tunl0 address %s is in no IPIP pool", h.Name, ip)
			}
		}
	})

	t.Run("routes go via tunl0 (cross-subnet: direct inside a subnet)", func(t *testing.T) {
		want := []struct {
			from  *lab.Host
			to    ctr
			route string
		}{
			{h1, a2, "via " + h2.IP + " dev tunl0"}, // always, other subnet
			{h1, a3, "via " + h3.IP + " dev tunl0"}, // always, same subnet
			{h2, a1, "via " + h1.IP + " dev tunl0"},
			{h3, a2, "via " + h2.IP + " dev tunl0"},
			{h1, x2, "via " + h2.IP + " dev tunl0"}, // cross-subnet, other subnet
			{h2, x3, "via " + h3.IP + " dev tunl0"},
			{h1, x3, "via " + h3.IP + " dev eth0"}, // cross-subnet, same subnet: direct
			{h3, x1, "via " + h1.IP + " dev eth0"},
		}
		// One wait for all (routes arrive over BGP), then each is reported.
		got := make([]string, len(want))
		check := func() []string {
			var bad []string
			for i, w := range want {
				r, err := e.routeGet(w.from.NS, w.to.ip)
				got[i] = r
				if err != nil || !strings.Contains(r, w.route) {
					bad = append(bad, fmt.Sprintf("%s: ip route get %s (%s on %s): %q %v, want %q",
						w.from.Name, w.to.ip, w.to.name, w.to.host.Name, r, err, w.route))
				}
			}
			return bad
		}
		_ = lab.Eventually(10*time.Second, func() error {
			if bad := check(); len(bad) > 0 {
				return fmt.Errorf("%d wrong", len(bad))
			}
			return nil
		})
		for _, b := range check() {
			t.Error(b)
		}
		for i, w := range want {
			t.Logf("%s: ip route get %s (%s): %s", w.from.Name, w.to.ip, w.to.name, got[i])
		}
		r, err := e.l.Exec(h1.NS, "ip", "route", "show", "proto", "80")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("host1 ip route show proto 80:\n%s", r)
		// (ip leaves out "proto 80" when it filters on it.)
		n := 0
		for _, line := range strings.Split(r, "\n") {
			if strings.Contains(line, "dev tunl0") {
				n++
				if !strings.Contains(line, " onlink") {
					t.Errorf("host1 route through tunl0 without onlink: %s", line)
				}
			}
		}
		if n != 3 { // a2's, a3's and x2's blocks
			t.Errorf("host1 has %d tabby routes through tunl0, want 3:\n%s", n, r)
		}
	})

	t.Run("ping and TCP across hosts", func(t *testing.T) {
		open := []ctr{a1, a2, a3, x1, x2, x3}
		var pairs [][2]ctr
		for _, a := range open {
			for _, b := range open {
				if a.name != b.name && a.host != b.host {
					pairs = append(pairs, [2]ctr{a, b})
				}
			}
		}
		start := time.Now()
		if errs := parallel(pairs, func(p [2]ctr) error { return e.reach(p[0], p[1], 15*time.Second) }); len(errs) > 0 {
			t.Fatalf("%d of %d pairs fail:\n%s", len(errs), len(pairs), strings.Join(errs, "\n"))
		}
		t.Logf("%d cross-host pairs: ping and TCP in both directions, in %v", len(pairs), time.Since(start).Round(time.Millisecond))
	})

	t.Run("packets cross the underlay encapsulated", func(t *testing.T) {
		c, err := e.counters(e.l.Underlay)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("underlay router counters: %v", c)
		if c["ipip-h1-h2"] == 0 || c["ipip-h2-h1"] == 0 {
			t.Errorf("no IPIP (protocol 4) packets routed between host1 and host2: %v", c)
		}
		if c["plain-pod"] != 0 {
			t.Errorf("%d pod-addressed packets crossed the underlay router without encapsulation", c["plain-pod"])
		}
		// Same subnet (bridged, so seen only on tunl0): the always pool
		// goes through tunl0, the cross-subnet pool does not.
		tx := func(h *lab.Host) int {
			n, err := e.sysNetInt(h.NS, "tunl0/statistics/tx_packets")
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		rx := func(h *lab.Host) int {
			n, err := e.sysNetInt(h.NS, "tunl0/statistics/rx_packets")
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		tx1, rx3 := tx(h1), rx(h3)
		for range 3 {
			if err := e.ping(x1.ns, x3.ip); err != nil {
				t.Fatal(err)
			}
		}
		if d := tx(h1) - tx1; d != 0 {
			t.Errorf("cross-subnet pool inside a subnet: host1 tunl0 sent %d packets for 3 pings x1 -> x3, want 0", d)
		}
		tx1 = tx(h1)
		for range 3 {
			if err := e.ping(a1.ns, a3.ip); err != nil {
				t.Fatal(err)
			}
		}
		if d1, d3 := tx(h1)-tx1, rx(h3)-rx3; d1 < 3 || d3 < 3 {
			t.Errorf("always-IPIP pool inside a subnet: 3 pings a1 -> a3: host1 tunl0 tx +%d, host3 tunl0 rx +%d, want >= 3", d1, d3)
		} else {
			t.Logf("3 pings a1 -> a3 (same subnet, always): host1 tunl0 tx +%d, host3 tunl0 rx +%d; x1 -> x3 (cross-subnet): +0", d1, d3)
		}
	})

	t.Run("host to host over tunl0", func(t *testing.T) {
		out, err := e.l.Exec(h2.NS, "ip", "-4", "-o", "addr", "show", "dev", "tunl0")
		f := strings.Fields(out)
		if err != nil || len(f) < 4 {
			t.Fatalf("host2 tunl0 address: %v %q", err, out)
		}
		tun2 := strings.Split(f[3], "/")[0]
		if err := lab.Eventually(10*time.Second, func() error { return e.ping(h1.NS, tun2) }); err != nil {
			t.Fatalf("host1 -> host2's tunnel address %s: %v", tun2, err)
		}
		r, _ := e.routeGet(h1.NS, tun2)
		t.Logf("host1 pings host2's tunnel address %s: %s", tun2, r)
	})

	t.Run("MTU 1480 in containers, bulk TCP over the tunnel", func(t *testing.T) {
		for _, c := range []ctr{a1, a2, x1, x2} {
			if mtu, err := e.sysNetInt(c.ns, "eth0/mtu"); err != nil || mtu != 1480 {
				t.Errorf("container %s eth0 MTU %d (%v), want 1480", c.name, mtu, err)
			}
		}
		if err := e.reach(a1, a2, 5*time.Second); err != nil {
			t.Fatalf("no bulk checks: %v", err)
		}
		for _, p := range [][2]ctr{{a1, a2}, {x2, x1}} {
			took, err := e.echo(p[0].ns, p[1].ip, 4<<20)
			if err != nil {
				t.Errorf("4 MiB echo %s -> %s: %v", p[0].name, p[1].name, err)
				continue
			}
			t.Logf("4 MiB echoed %s -> %s (%s -> %s) through tunl0 in %v", p[0].name, p[1].name, p[0].host.Name, p[1].host.Name, took.Round(time.Millisecond))
		}
		// A 1452-byte echo fills a 1480 packet exactly.
		if _, err := e.l.Exec(a1.ns, "ping", "-c1", "-W2", "-q", "-s", "1452", a2.ip); err != nil {
			t.Errorf("1480-byte ping a1 -> a2: %v", err)
		}
		iperf(t, e, a1, a2)
	})

	t.Run("nat-outgoing shows the host address outside", func(t *testing.T) {
		expect := func(what string, from ctr, ip, want string) {
			t.Helper()
			var got string
			err := lab.Eventually(10*time.Second, func() error {
				var err error
				got, err = e.l.TCPSourceIP(from.ns, ip, 8080)
				if err == nil && got != want {
					err = fmt.Errorf("the server saw %s, want %s", got, want)
				}
				return err
			})
			if err != nil {
				t.Errorf("%s: %v", what, err)
				return
			}
			t.Logf("%s: the server saw %s", what, got)
		}
		expect("a1 (host1, nat pool) to the outside", a1, e.l.OutsideIP, h1.IP)
		expect("a2 (host2, nat pool) to the outside", a2, e.l.OutsideIP, h2.IP)
		expect("a1 to a2 across the tunnel keeps its address", a1, a2.ip, a1.ip)
		expect("x1 (other pool) to a2 keeps its address", x1, a2.ip, x1.ip)
		if got, err := e.l.TCPSourceIP(x1.ns, e.l.OutsideIP, 8080); err == nil {
			t.Errorf("x1 (pool without nat-outgoing) to the outside: answered (saw %s); nothing routes %s back", got, crossPool)
		}
		// tabby writes to the backend (legacy or nft) that holds more rules;
		// plain `iptables` may be the other one, so look in both.
		var rules string
		for _, bin := range []string{"iptables-nft", "iptables-legacy", "iptables"} {
			r, _ := e.l.Exec(h1.NS, bin, "-t", "nat", "-S", "TABBY-POSTROUTING")
			rules += r
		}
		if !strings.Contains(rules, "MASQUERADE") {
			t.Errorf("host1 nat rules (nft, legacy, default):\n%s", rules)
		}
	})

	t.Run("policy holds across the tunnel", func(t *testing.T) {
		pairs := [][2]ctr{{a1, p2}, {p2, a1}, {a3, p2}, {x1, p2}, {p2, x3}}
		if errs := parallel(pairs, func(p [2]ctr) error { return e.blocked(p[0], p[1]) }); len(errs) > 0 {
			t.Fatalf("p2 (profile other) is reachable:\n%s", strings.Join(errs, "\n"))
		}
		t.Logf("p2 (host2, profile other): a1, a3, x1 -> p2 and p2 -> a1, x3 dropped (ping and TCP)")
		// p2 joins "open": it becomes reachable over the tunnel.
		e.MustCtl(h1, "container", "p2", "profile", "append", "open")
		start := time.Now()
		if err := e.reach(a1, p2, 10*time.Second); err != nil {
			t.Fatalf("after profile append open: %v", err)
		}
		if err := e.reach(p2, a3, 10*time.Second); err != nil {
			t.Fatalf("after profile append open: %v", err)
		}
		t.Logf("after `container p2 profile append open`: a1 -> p2 and p2 -> a3 reachable within %v", time.Since(start).Round(time.Millisecond))
		e.MustCtl(h1, "container", "p2", "profile", "remove", "open")
		if err := lab.Eventually(10*time.Second, func() error { return e.blocked(a1, p2) }); err != nil {
			t.Fatalf("after profile remove open: %v", err)
		}
	})
}

// iperf runs iperf3 from a to b for 2 s over the tunnel (a functional
// check under TCG, not a benchmark).
func iperf(t *testing.T, e *env, a, b ctr) {
	srv := e.l.Start(b.ns, "", "iperf3", "-s", "-1", "-B", b.ip)
	defer srv.Stop(2 * time.Second)
	var out string
	err := lab.Eventually(5*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var err error
		out, err = e.l.ExecContext(ctx, a.ns, "iperf3", "-c", b.ip, "-t", "2", "-f", "m", "--connect-timeout", "3000")
		return err
	})
	if err != nil {
		t.Errorf("iperf3 %s -> %s: %v", a.name, b.name, err)
		return
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "receiver") {
			t.Logf("iperf3 %s -> %s over IPIP: %s", a.name, b.name, strings.Join(strings.Fields(l), " "))
		}
	}
}

// TestIPIPMTUFollowsUplink: on a 1400-byte underlay tunl0 and IPIP
// containers get 1380 (the kernel's own default for tunl0 is 1480, so this
// shows tabby sets it), and bulk TCP still flows.
func TestIPIPMTUFollowsUplink(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 2, MTU: 1400})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	e.MustCtl(h1, "pool", "add", ipipPool, "--ipip")
	e.MustCtl(h1, "profile", "add", "open")
	e.StartNodes()
	c1 := e.container(h1, "m1", ipipPool, "open")
	c2 := e.container(h2, "m2", ipipPool, "open")
	e.l.ServeTCP(c2.ns, 8080)
	e.l.ServeTCP(c1.ns, 8080)
	for _, h := range e.l.Hosts {
		if mtu, err := e.sysNetInt(h.NS, "tunl0/mtu"); err != nil || mtu != 1380 {
			t.Errorf("%s tunl0 MTU %d (%v), want 1380 on a 1400 uplink", h.Name, mtu, err)
		}
	}
	for _, c := range []ctr{c1, c2} {
		if mtu, err := e.sysNetInt(c.ns, "eth0/mtu"); err != nil || mtu != 1380 {
			t.Errorf("container %s MTU %d (%v), want 1380", c.name, mtu, err)
		}
	}
	if err := e.reach(c1, c2, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if r, _ := e.routeGet(h1.NS, c2.ip); !strings.Contains(r, "dev tunl0") {
		t.Errorf("host1 route to m2: %s", r)
	}
	took, err := e.echo(c1.ns, c2.ip, 4<<20)
	if err != nil {
		t.Fatalf("4 MiB echo m1 -> m2: %v", err)
	}
	t.Logf("1400-byte uplink: tunl0 and containers at 1380, 4 MiB echoed m1 -> m2 in %v", took.Round(time.Millisecond))
}
