package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/pkg/ifaddr"
)

func TestHostVethName(t *testing.T) {
	a := HostVethName("k8s/default.web-0/eth0")
	if len(a) != 14 || !strings.HasPrefix(a, "tby") {
		t.Fatalf("HostVethName = %q, want tby + 11 characters", a)
	}
	if strings.Trim(a[3:], "0123456789abcdef") != "" {
		t.Fatalf("HostVethName = %q, want hex after tby", a)
	}
	if b := HostVethName("k8s/default.web-0/eth0"); b != a {
		t.Fatalf("not deterministic: %q then %q", a, b)
	}
	if b := HostVethName("k8s/default.web-0/eth1"); b == a {
		t.Fatalf("identities ending eth0 and eth1 share %q", a)
	}
	if b := HostVethName("k8s/default.web-1/eth0"); b == a {
		t.Fatalf("two workloads share %q", a)
	}
}

func TestSetupOneContainer(t *testing.T) {
	host := newHost(t)
	// An eth0 in the host namespace must not stop a container eth0: the
	// veth peer is registered in the container namespace only.
	inNS(t, host, func() error { _, err := addVethPair("eth0", "eth0-peer"); return err })
	c := newContainer(t, "one", "10.65.0.5/32")
	c.cfg.MTU = 1400

	res := setup(t, host, c.cfg)
	if res.HostVeth != c.cfg.HostVeth || !bytes.Equal(res.HostMAC, ifaddr.HostVethMAC) ||
		len(res.ContainerMAC) != 6 || res.ContainerIfIndex <= 0 || res.Sandbox != c.cfg.NetnsPath {
		t.Fatalf("unexpected result %+v", res)
	}

	// Container side.
	inNS(t, c.ns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().Index != res.ContainerIfIndex {
			return fmt.Errorf("container eth0: mtu %d flags %v index %d", l.Attrs().MTU, l.Attrs().Flags, l.Attrs().Index)
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(as) != 1 || as[0].IPNet.String() != "10.65.0.5/32" {
			return fmt.Errorf("container addresses %v, want 10.65.0.5/32", as)
		}
		routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		var linkRoute, defRoute bool
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "169.254.1.1/32" && r.Scope == netlink.SCOPE_LINK {
				linkRoute = true
			}
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(ifaddr.GatewayIPv4) {
				defRoute = true
			}
		}
		if !linkRoute || !defRoute {
			return fmt.Errorf("container routes %v: want 169.254.1.1 scope link and default via it", routes)
		}
		neighs, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, n := range neighs {
			if n.IP.Equal(ifaddr.GatewayIPv4) && n.State == netlink.NUD_PERMANENT && bytes.Equal(n.HardwareAddr, ifaddr.HostVethMAC) {
				return nil
			}
		}
		return fmt.Errorf("no permanent neighbour 169.254.1.1 -> ee:ee:ee:ee:ee:ee in %v", neighs)
	})

	// Host side.
	inNS(t, host, func() error {
		l, err := netlink.LinkByName(c.cfg.HostVeth)
		if err != nil {
			return err
		}
		if l.Type() != "veth" || !bytes.Equal(l.Attrs().HardwareAddr, ifaddr.HostVethMAC) ||
			l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("host veth %s: type %s mac %s mtu %d flags %v", l.Attrs().Name, l.Type(),
				l.Attrs().HardwareAddr, l.Attrs().MTU, l.Attrs().Flags)
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Dst: mustCIDR("10.65.0.5/32")}, netlink.RT_FILTER_DST)
		if err != nil {
			return err
		}
		if len(routes) != 1 || routes[0].LinkIndex != l.Attrs().Index ||
			routes[0].Scope != netlink.SCOPE_LINK || routes[0].Protocol != DefaultRouteProtocol {
			return fmt.Errorf("host routes to 10.65.0.5/32: %v", routes)
		}
		return nil
	})
	for path, want := range map[string]string{
		"/proc/sys/net/ipv4/conf/" + c.cfg.HostVeth + "/proxy_arp":    "1",
		"/proc/sys/net/ipv4/neigh/" + c.cfg.HostVeth + "/proxy_delay": "0",
		"/proc/sys/net/ipv4/conf/" + c.cfg.HostVeth + "/forwarding":   "1",
		"/proc/sys/net/ipv4/ip_forward":                               "1",
	} {
		if got := readSysctlIn(t, host, path); got != want {
			t.Errorf("%s = %s, want %s", path, got, want)
		}
	}

	mustPing(t, c.ns, hostLoV4.IP.String())

	inNS(t, host, func() error { return Check(c.cfg) })
}

func TestTwoContainersPing(t *testing.T) {
	// No address on the host at all: the containers' gateway is a permanent
	// neighbour and the host ARPs for them from 0.0.0.0.
	host := newBareHost(t)
	a := newContainer(t, "a", "10.65.1.1/32")
	b := newContainer(t, "b", "10.65.1.2/32")
	setup(t, host, a.cfg)
	setup(t, host, b.cfg)
	mustPing(t, a.ns, "10.65.1.2")
	mustPing(t, b.ns, "10.65.1.1")
}

func TestDualStack(t *testing.T) {
	host := newHost(t)
	a := newContainer(t, "a6", "10.65.2.1/32", "fd00:65::1/128")
	b := newContainer(t, "b6", "10.65.2.2/32", "fd00:65::2/128")
	v6only := newContainer(t, "c6", "fd00:65::3/128")
	for _, c := range []*container{a, b, v6only} {
		setup(t, host, c.cfg)
	}

	// Usable at once, no DAD wait: pinged right after Setup, single try.
	mustPing(t, a.ns, "fd00:65::2")
	mustPing(t, b.ns, "fd00:65::1")
	mustPing(t, v6only.ns, "fd00:65::1")
	mustPing(t, v6only.ns, hostLoV6.IP.String())
	mustPing(t, a.ns, "10.65.2.2")

	inNS(t, host, func() error {
		l, err := netlink.LinkByName(a.cfg.HostVeth)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		// Exactly the fixed link-local: addr_gen_mode none keeps the kernel
		// from adding one of its own.
		if len(as) != 1 || !as[0].IP.Equal(ifaddr.GatewayIPv6) || as[0].Flags&unix.IFA_F_TENTATIVE != 0 {
			return fmt.Errorf("host veth IPv6 addresses %v, want only %s, not tentative", as, ifaddr.GatewayIPv6)
		}
		return nil
	})
	for path, want := range map[string]string{
		"/proc/sys/net/ipv6/conf/" + a.cfg.HostVeth + "/accept_ra":  "0",
		"/proc/sys/net/ipv6/conf/" + a.cfg.HostVeth + "/forwarding": "1",
		"/proc/sys/net/ipv6/conf/all/forwarding":                    "1",
	} {
		if got := readSysctlIn(t, host, path); got != want {
			t.Errorf("%s = %s, want %s", path, got, want)
		}
	}
	// A v6-only workload gets no IPv4 gateway.
	inNS(t, v6only.ns, func() error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(routes) != 0 {
			return fmt.Errorf("v6-only container has IPv4 routes %v", routes)
		}
		return nil
	})
	for _, c := range []*container{a, b, v6only} {
		inNS(t, host, func() error { return Check(c.cfg) })
	}
}

// Namespaces where IPv6 is off for new interfaces (as some runtimes leave a
// container, or a host configured IPv4-only) still get the IPv6 wiring.
func TestIPv6Disabled(t *testing.T) {
	host := newHost(t)
	c := newContainer(t, "nov6", "fd00:65::9/128")
	inNS(t, c.ns, func() error {
		if err := writeSysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"); err != nil {
			return err
		}
		return writeSysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
	})
	inNS(t, host, func() error {
		return writeSysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
	})
	setup(t, host, c.cfg)
	mustPing(t, c.ns, hostLoV6.IP.String())
	inNS(t, host, func() error { return Check(c.cfg) })
}

func TestTeardown(t *testing.T) {
	host := newHost(t)
	c := newContainer(t, "td", "10.65.3.1/32", "fd00:65:3::1/128")
	setup(t, host, c.cfg)
	if len(leftovers(t, host)) == 0 {
		t.Fatal("Setup left nothing to tear down")
	}

	teardown(t, host, c)
	assertNoLeftovers(t, host)
	inNS(t, c.ns, func() error {
		if _, err := netlink.LinkByName("eth0"); !isLinkNotFound(err) {
			return fmt.Errorf("container eth0 still there (err %v)", err)
		}
		return nil
	})
	teardown(t, host, c) // again: nothing to do, no error

	// The namespace is gone before DEL: still fine, and the host end (which
	// the kernel reaps asynchronously) is removed by name.
	setup(t, host, c.cfg)
	destroyNS(t, c.ns)
	teardown(t, host, c)
	assertNoLeftovers(t, host)
	teardown(t, host, c)

	// A netns path that never existed.
	inNS(t, host, func() error {
		return Teardown(filepath.Join(t.TempDir(), "no-such-netns"), "eth0", HostVethName("nothing"))
	})
}

// A late DEL for an old sandbox must not remove the veth of a newer sandbox
// with the same identity (same host veth name).
func TestTeardownLeavesOtherSandbox(t *testing.T) {
	host := newHost(t)
	newer := newContainer(t, "same", "10.65.4.1/32")
	old := newContainer(t, "same", "10.65.4.1/32")
	setup(t, host, newer.cfg)

	teardown(t, host, old)
	inNS(t, host, func() error { return Check(newer.cfg) })
	mustPing(t, newer.ns, hostLoV4.IP.String())
}

func TestSetupFailures(t *testing.T) {
	t.Run("interface name taken in container", func(t *testing.T) {
		host := newHost(t)
		c := newContainer(t, "taken", "10.65.5.1/32")
		inNS(t, c.ns, func() error { _, err := addVethPair("eth0", "own-peer"); return err })
		err := setupErr(t, host, c.cfg)
		if !errors.Is(err, ErrContainerIfExists) || !strings.Contains(err.Error(), "eth0") {
			t.Fatalf("Setup error = %v, want ErrContainerIfExists naming eth0", err)
		}
		assertNoLeftovers(t, host)
		inNS(t, c.ns, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil || l.Attrs().ParentIndex == 0 {
				return fmt.Errorf("the container's own eth0 was disturbed: %v %v", l, err)
			}
			return nil
		})
	})

	t.Run("netns path missing", func(t *testing.T) {
		host := newHost(t)
		cfg := Config{
			NetnsPath: filepath.Join(t.TempDir(), "gone"),
			IfName:    "eth0",
			HostVeth:  HostVethName("cni/gone/eth0"),
			Addrs:     addrs("10.65.5.2/32"),
		}
		err := setupErr(t, host, cfg)
		var notExist ns.NSPathNotExistErr
		if !errors.As(err, &notExist) {
			t.Fatalf("Setup error = %v, want ns.NSPathNotExistErr", err)
		}
		assertNoLeftovers(t, host)
	})

	// Fails after the container side is done: the rollback must remove the
	// pair, the container's addresses and routes.
	t.Run("address already routed on host", func(t *testing.T) {
		host := newHost(t)
		c := newContainer(t, "dup", "10.65.5.3/32", "fd00:65:5::3/128")
		inNS(t, host, func() error {
			d, err := addVethPair("other0", "other0-peer")
			if err != nil {
				return err
			}
			return netlink.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Dst: mustCIDR("fd00:65:5::3/128")})
		})
		err := setupErr(t, host, c.cfg)
		if !errors.Is(err, ErrAddressRouted) || !strings.Contains(err.Error(), "other0") {
			t.Fatalf("Setup error = %v, want ErrAddressRouted naming other0", err)
		}
		assertNoLeftovers(t, host)
		inNS(t, c.ns, func() error {
			links, err := netlink.LinkList()
			if err != nil {
				return err
			}
			if len(links) != 1 || links[0].Attrs().Name != "lo" {
				return fmt.Errorf("container still has links %v", links)
			}
			return nil
		})
	})

	t.Run("bad config", func(t *testing.T) {
		host := newHost(t)
		c := newContainer(t, "bad", "10.65.5.4/32")
		for name, mutate := range map[string]func(*Config){
			"no addresses":   func(c *Config) { c.Addrs = nil },
			"long ifname":    func(c *Config) { c.IfName = "a-very-long-interface-name" },
			"empty hostveth": func(c *Config) { c.HostVeth = "" },
			"negative mtu":   func(c *Config) { c.MTU = -1 },
		} {
			cfg := c.cfg
			mutate(&cfg)
			if err := setupErr(t, host, cfg); err == nil {
				t.Errorf("%s: Setup succeeded", name)
			}
		}
		assertNoLeftovers(t, host)
	})
}

// A second ADD under the same identity (the DEL of the first never came)
// replaces the stale pair.
func TestSetupReplacesStaleVeth(t *testing.T) {
	host := newHost(t)
	first := newContainer(t, "stale", "10.65.6.1/32")
	second := newContainer(t, "stale", "10.65.6.1/32")
	setup(t, host, first.cfg)
	setup(t, host, second.cfg)
	inNS(t, host, func() error { return Check(second.cfg) })
	inNS(t, first.ns, func() error {
		if _, err := netlink.LinkByName("eth0"); !isLinkNotFound(err) {
			return fmt.Errorf("stale container eth0 survived (err %v)", err)
		}
		return nil
	})
	mustPing(t, second.ns, hostLoV4.IP.String())
}

func setupErr(t *testing.T, host ns.NetNS, cfg Config) error {
	t.Helper()
	var err error
	inNS(t, host, func() error {
		var res *Result
		res, err = Setup(cfg)
		if err == nil && res == nil {
			return errors.New("Setup returned neither result nor error")
		}
		return nil
	})
	return err
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name  string
		brk   func(t *testing.T, host ns.NetNS, c *container)
		wants string
	}{
		{
			name: "missing address",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, c.ns, func() error {
					l, err := netlink.LinkByName("eth0")
					if err != nil {
						return err
					}
					return netlink.AddrDel(l, &netlink.Addr{IPNet: mustCIDR("10.65.7.1/32")})
				})
			},
			wants: "container address 10.65.7.1/32 is missing on eth0",
		},
		{
			name: "missing default route",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, c.ns, func() error {
					l, err := netlink.LinkByName("eth0")
					if err != nil {
						return err
					}
					return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: ifaddr.GatewayIPv4})
				})
			},
			wants: "container default route via 169.254.1.1 dev eth0 is missing",
		},
		{
			name: "missing IPv6 default route",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, c.ns, func() error {
					l, err := netlink.LinkByName("eth0")
					if err != nil {
						return err
					}
					return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: ifaddr.GatewayIPv6})
				})
			},
			wants: "container IPv6 default route via fe80::ecee:eeff:feee:eeee dev eth0 is missing",
		},
		{
			name: "missing gateway neighbour",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, c.ns, func() error {
					l, err := netlink.LinkByName("eth0")
					if err != nil {
						return err
					}
					return netlink.NeighDel(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, IP: ifaddr.GatewayIPv4})
				})
			},
			wants: "container permanent neighbour 169.254.1.1 -> ee:ee:ee:ee:ee:ee is missing",
		},
		{
			name: "missing host route",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, host, func() error {
					l, err := netlink.LinkByName(c.cfg.HostVeth)
					if err != nil {
						return err
					}
					return netlink.RouteDel(hostRoute(l.Attrs().Index, mustCIDR("10.65.7.1/32"), DefaultRouteProtocol))
				})
			},
			wants: "host route to 10.65.7.1/32 dev " + HostVethName("cni/check/eth0") + " is missing",
		},
		{
			name: "proxy_arp off",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, host, func() error {
					return writeSysctl("/proc/sys/net/ipv4/conf/"+c.cfg.HostVeth+"/proxy_arp", "0")
				})
			},
			wants: "sysctl net.ipv4.conf." + HostVethName("cni/check/eth0") + ".proxy_arp is 0, want 1",
		},
		{
			name: "missing host veth",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, host, func() error {
					return netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: c.cfg.HostVeth}})
				})
			},
			wants: "host veth " + HostVethName("cni/check/eth0") + " is missing",
		},
		{
			name: "host veth down",
			brk: func(t *testing.T, host ns.NetNS, c *container) {
				inNS(t, host, func() error {
					l, err := netlink.LinkByName(c.cfg.HostVeth)
					if err != nil {
						return err
					}
					return netlink.LinkSetDown(l)
				})
			},
			wants: "host veth " + HostVethName("cni/check/eth0") + " is down",
		},
	}

	seen := map[string]string{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			host := newHost(t)
			c := newContainer(t, "check", "10.65.7.1/32", "fd00:65:7::1/128")
			setup(t, host, c.cfg)
			inNS(t, host, func() error { return Check(c.cfg) })

			tc.brk(t, host, c)
			var err error
			inNS(t, host, func() error { err = Check(c.cfg); return nil })
			var ce *CheckError
			if !errors.As(err, &ce) {
				t.Fatalf("Check = %v, want a *CheckError", err)
			}
			if !slices.Contains(ce.Problems, tc.wants) {
				t.Fatalf("Check problems %q do not include %q", ce.Problems, tc.wants)
			}
			t.Logf("%v", err)
			seen[tc.name] = err.Error()
		})
	}
	// Each breakage reads differently.
	byMsg := map[string]string{}
	for name, msg := range seen {
		if other, dup := byMsg[msg]; dup {
			t.Errorf("%q and %q give the same message %q", name, other, msg)
		}
		byMsg[msg] = name
	}
}

func TestInspect(t *testing.T) {
	host := newHost(t)
	c := newContainer(t, "insp", "10.65.8.1/32", "fd00:65:8::1/128")
	c.cfg.MTU = 1450
	res := setup(t, host, c.cfg)

	var got *Result
	var gotAddrs []net.IPNet
	inNS(t, host, func() error {
		var err error
		got, gotAddrs, err = Inspect(c.cfg.NetnsPath, c.cfg.IfName, c.cfg.HostVeth)
		return err
	})
	if got.HostVeth != res.HostVeth || !bytes.Equal(got.HostMAC, res.HostMAC) ||
		!bytes.Equal(got.ContainerMAC, res.ContainerMAC) || got.ContainerIfIndex != res.ContainerIfIndex ||
		got.Sandbox != res.Sandbox {
		t.Fatalf("Inspect = %+v, Setup returned %+v", got, res)
	}
	var strs []string
	for _, a := range gotAddrs {
		strs = append(strs, a.String())
	}
	slices.Sort(strs)
	if want := []string{"10.65.8.1/32", "fd00:65:8::1/128"}; !slices.Equal(strs, want) {
		t.Fatalf("Inspect addresses %v, want %v", strs, want)
	}

	// Another sandbox's namespace does not hold this veth's peer.
	other := newContainer(t, "insp-other", "10.65.8.2/32")
	setup(t, host, other.cfg)
	inNS(t, host, func() error {
		if _, _, err := Inspect(other.cfg.NetnsPath, "eth0", c.cfg.HostVeth); err == nil {
			return errors.New("Inspect paired a host veth with another container's eth0")
		}
		return nil
	})
}

func TestConcurrentSetupTeardown(t *testing.T) {
	const n = 20
	host := newHost(t)
	cs := make([]*container, n)
	for i := range cs {
		cs[i] = newContainer(t, fmt.Sprintf("conc-%d", i), fmt.Sprintf("10.65.9.%d/32", i+1))
	}

	run := func(f func(c *container) error) {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, c := range cs {
			wg.Go(func() {
				errs[i] = host.Do(func(ns.NetNS) error { return f(c) })
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}

	run(func(c *container) error { _, err := Setup(c.cfg); return err })
	run(func(c *container) error { return Check(c.cfg) })
	mustPing(t, cs[0].ns, "10.65.9.20")
	mustPing(t, cs[19].ns, "10.65.9.1")
	run(func(c *container) error { return Teardown(c.cfg.NetnsPath, c.cfg.IfName, c.cfg.HostVeth) })
	assertNoLeftovers(t, host)
}

func TestUplinkMTU(t *testing.T) {
	host := newBareHost(t)
	var got int
	inNS(t, host, func() error {
		// Two candidate uplinks (the ends of a veth pair) and a low-MTU
		// tabby veth pair that must be ignored.
		ua, err := addVethPair("ua", "ub")
		if err != nil {
			return err
		}
		ub, err := netlink.LinkByName("ub")
		if err != nil {
			return err
		}
		tby, err := addVethPair("tbyfake", "tbyfake-peer")
		if err != nil {
			return err
		}
		for l, mtu := range map[netlink.Link]int{ua: 9000, ub: 8000, tby: 1280} {
			if err := netlink.LinkSetMTU(l, mtu); err != nil {
				return err
			}
		}

		if got, err = UplinkMTU(); err != nil || got != 8000 {
			return fmt.Errorf("without default route: UplinkMTU = %d, %v; want 8000", got, err)
		}

		if err := netlink.AddrAdd(ua, &netlink.Addr{IPNet: mustCIDR("192.0.2.10/24")}); err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: ua.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}); err != nil {
			return err
		}
		if got, err = UplinkMTU(); err != nil || got != 9000 {
			return fmt.Errorf("with default route via ua: UplinkMTU = %d, %v; want 9000", got, err)
		}
		return nil
	})

	empty := newNS(t)
	inNS(t, empty, func() error {
		if mtu, err := UplinkMTU(); err == nil {
			return fmt.Errorf("UplinkMTU in an empty netns = %d, want an error", mtu)
		}
		return nil
	})
}
