package routes

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/pkg/testutil"
)

// Every kernel change these tests make happens in namespaces they create
// with a random prefix and delete in t.Cleanup, even on failure. Underlay
// addresses are in 198.19.0.0/24 (benchmarking range, not the machine's).

var (
	runID   = randomHex(3)
	nsCount atomic.Int32
)

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func requireRoot(t testing.TB) {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.Tool(t, "ip") // iproute2
}

// run runs a command and fails the test on error.
func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// host is a test network namespace standing for one machine.
type host struct {
	name string
	path string
}

func newHost(t testing.TB, tag string) host {
	t.Helper()
	name := fmt.Sprintf("tbrt%s-%d%s", runID, nsCount.Add(1), tag)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v %s", name, err, out)
		}
	})
	h := host{name: name, path: "/var/run/netns/" + name}
	h.ip(t, "link", "set", "lo", "up")
	return h
}

// ip runs "ip -n <host> args".
func (h host) ip(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "-n", h.name}, args...)...)
}

// handle is a netlink socket inside the host, closed at test end.
func (h host) handle(t testing.TB) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nh.Close)
	return nh
}

// pair is two hosts on one veth link, each with a "workload" address on lo:
// A 198.19.0.1 / fd19::1, workload 10.0.1.5 / fd00:1::5;
// B 198.19.0.2 / fd19::2, workload 10.0.2.5 / fd00:2::5.
type pair struct{ a, b host }

func newPair(t testing.TB) pair {
	t.Helper()
	p := pair{a: newHost(t, "a"), b: newHost(t, "b")}
	p.a.ip(t, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", p.b.name)
	for _, c := range []struct {
		h        host
		dev, n   string
		workload string
	}{{p.a, "va", "1", "1"}, {p.b, "vb", "2", "2"}} {
		c.h.ip(t, "addr", "add", "198.19.0."+c.n+"/24", "dev", c.dev)
		c.h.ip(t, "addr", "add", "fd19::"+c.n+"/64", "dev", c.dev, "nodad")
		c.h.ip(t, "link", "set", c.dev, "up")
		c.h.ip(t, "addr", "add", "10.0."+c.workload+".5/32", "dev", "lo")
		c.h.ip(t, "addr", "add", "fd00:"+c.workload+"::5/128", "dev", "lo")
	}
	return p
}

// ping sends pings from src to dst inside h until one is answered.
func ping(t testing.TB, h host, src, dst string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", h.name, "ping", "-n", "-c", "1", "-W", "1", "-I", src, dst).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping %s -> %s in %s: %v\n%s\nroutes:\n%s", src, dst, h.name, err, out, h.ip(t, "route", "show", "table", "all"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// noPing checks that one ping from src to dst gets no answer.
func noPing(t testing.TB, h host, src, dst string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", h.name, "ping", "-n", "-c", "1", "-W", "1", "-I", src, dst).CombinedOutput()
	if err == nil {
		t.Fatalf("ping %s -> %s in %s answered, want no route:\n%s", src, dst, h.name, out)
	}
}

func newManager(t testing.TB, h host, o Options) *Manager {
	t.Helper()
	o.NetNSPath = h.path
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// syncOK runs Sync and fails on error; it returns the changes made.
func syncOK(t testing.TB, m *Manager, local Local, remotes []Remote) uint64 {
	t.Helper()
	before := m.Changes()
	start := time.Now()
	if err := m.Sync(local, remotes); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	t.Logf("Sync: %d changes in %v", m.Changes()-before, time.Since(start).Round(time.Microsecond))
	return m.Changes() - before
}

// routeTo returns the main-table routes to dst in h.
func routeTo(t testing.TB, nh *netlink.Handle, dst string) []netlink.Route {
	t.Helper()
	d := cidr(t, dst)
	fam := netlink.FAMILY_V4
	if d.IP.To4() == nil {
		fam = netlink.FAMILY_V6
	}
	rs, err := nh.RouteListFiltered(fam, &netlink.Route{Dst: d, Table: 254}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func cidr(t testing.TB, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mac(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
