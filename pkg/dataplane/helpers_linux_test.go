package dataplane

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/vishvananda/netlink"
)

// Every test works inside namespaces it creates: a "host" namespace standing
// in for the node and one per container. Nothing touches the root namespace.

// Addresses the helpers give the test host's lo, so containers have
// something on the host to ping.
var (
	hostLoV4 = mustCIDR("198.19.255.1/32")
	hostLoV6 = mustCIDR("fd00:198:19::1/128")
)

func requireRoot(tb testing.TB) {
	tb.Helper()
	testutil.NeedRoot(tb)
}

// newNS makes a named namespace (under /var/run/netns) removed at cleanup,
// even if the test fails.
func newNS(tb testing.TB) ns.NetNS {
	tb.Helper()
	requireRoot(tb)
	n, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	tb.Cleanup(func() { destroyNS(tb, n) })
	return n
}

// destroyNS may run twice (a test destroying a namespace early, then
// cleanup); the second time is a no-op.
func destroyNS(tb testing.TB, n ns.NetNS) {
	path := n.Path()
	_ = n.Close()
	if _, err := os.Stat(path); err != nil {
		return
	}
	if err := testutils.UnmountNS(n); err != nil {
		tb.Errorf("remove netns %s: %v", path, err)
	}
}

// newHost makes a host namespace with lo up and hostLoV4/hostLoV6 on it.
func newHost(tb testing.TB) ns.NetNS {
	tb.Helper()
	h := newBareHost(tb)
	inNS(tb, h, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range []*net.IPNet{hostLoV4, hostLoV6} {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: a}); err != nil {
				return fmt.Errorf("add %s to lo: %w", a, err)
			}
		}
		return nil
	})
	return h
}

// newBareHost makes a host namespace with lo up and no address at all.
func newBareHost(tb testing.TB) ns.NetNS {
	tb.Helper()
	h := newNS(tb)
	inNS(tb, h, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return h
}

// inNS runs f on a thread inside n and fails the test on error.
func inNS(tb testing.TB, n ns.NetNS, f func() error) {
	tb.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		tb.Fatal(err)
	}
}

func mustCIDR(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func addrs(ss ...string) []net.IPNet {
	var out []net.IPNet
	for _, s := range ss {
		out = append(out, *mustCIDR(s))
	}
	return out
}

// container is one test workload: its namespace and the Config for it.
type container struct {
	ns  ns.NetNS
	cfg Config
}

func newContainer(tb testing.TB, name string, ips ...string) *container {
	tb.Helper()
	c := &container{ns: newNS(tb)}
	c.cfg = Config{
		NetnsPath: c.ns.Path(),
		IfName:    "eth0",
		HostVeth:  HostVethName("cni/" + name + "/eth0"),
		Addrs:     addrs(ips...),
	}
	return c
}

func setup(tb testing.TB, host ns.NetNS, cfg Config) *Result {
	tb.Helper()
	var res *Result
	inNS(tb, host, func() error {
		var err error
		res, err = Setup(cfg)
		return err
	})
	return res
}

func teardown(tb testing.TB, host ns.NetNS, c *container) {
	tb.Helper()
	inNS(tb, host, func() error { return Teardown(c.cfg.NetnsPath, c.cfg.IfName, c.cfg.HostVeth) })
}

// ping runs ping inside from's namespace; nsenter switches before exec, so
// no packet leaves from the root namespace.
// A first IPv6 echo can meet an ICMPv6 error while neighbour discovery is
// still settling on a loaded machine, so it retries for a few seconds.
func ping(from ns.NetNS, dst string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+from.Path(), "ping", "-c1", "-W2", dst).CombinedOutput()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ping %s from %s: %w\n%s", dst, from.Path(), err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustPing(tb testing.TB, from ns.NetNS, dst string) {
	tb.Helper()
	if err := ping(from, dst); err != nil {
		tb.Fatal(err)
	}
}

// leftovers lists tby* links and tabby-protocol routes in the host namespace.
func leftovers(tb testing.TB, host ns.NetNS) []string {
	tb.Helper()
	var found []string
	inNS(tb, host, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, HostVethPrefix) {
				found = append(found, "link "+l.Attrs().Name)
			}
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Protocol: DefaultRouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			found = append(found, "route "+r.String())
		}
		return nil
	})
	return found
}

func assertNoLeftovers(tb testing.TB, host ns.NetNS) {
	tb.Helper()
	if l := leftovers(tb, host); len(l) > 0 {
		tb.Fatalf("left behind in host netns: %v", l)
	}
}

// addVethPair makes an up veth pair inside the current namespace, a stand-in
// for any other interface (this kernel has no dummy driver).
func addVethPair(name, peer string) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.Flags = net.FlagUp
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: peer}
	if err := netlink.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", name, err)
	}
	p, err := netlink.LinkByName(peer)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(p); err != nil {
		return nil, err
	}
	return v, nil
}

func readSysctlIn(tb testing.TB, n ns.NetNS, path string) string {
	tb.Helper()
	var v string
	inNS(tb, n, func() error {
		var err error
		v, err = readSysctl(path)
		return err
	})
	return v
}
