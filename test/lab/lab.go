// Package lab builds a multi-host network lab out of Linux network
// namespaces for tabby's end-to-end tests and demo.
//
// A lab is an "underlay" namespace holding a bridge (br0, 198.19.0.254/24)
// and one namespace per simulated host, each wired to the bridge by a veth
// (eth0 in the host, 198.19.0.N/24, default route via the bridge address).
// With two subnets a second bridge br1 (198.19.1.254/24) is added and the
// underlay namespace routes between them, so tests can exercise
// cross-subnet behaviour. An optional "outside" namespace (203.0.113.1/24)
// hangs off the underlay as the world beyond the cluster, for nat-outgoing.
//
// Nothing is created in the root network namespace: every interface lives in
// a namespace the lab owns, so interface names only need to be unique inside
// it and the machine's own eth0, routes and firewall are never touched.
// Namespace names carry the lab's ID ("tl" plus four random characters) so
// that labs running side by side, or left over by a crashed run, never
// clash. Close (registered with t.Cleanup) kills every process the lab
// started and deletes every namespace; a SIGINT/SIGTERM handler and a small
// reaper process (for deaths that run no Go code at all: a timeout panic,
// SIGKILL) do the same when the test process cannot.
//
// SAFETY: the root namespace has no route to the lab's addresses; a packet
// sent there from the test process would leave through the machine's eth0.
// Reach lab addresses only from inside lab namespaces: l.Exec, l.Start,
// l.Ping, l.TCPConnect, l.DialContext or l.EtcdClient.
//
// Requirements: root, iproute2 (ip), iputils-ping (ping), and a kernel with
// veth, bridge and network namespaces. netcat-openbsd is not needed by the
// lab itself (TCP checks run in-process) but is handy inside tests.
package lab

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// TB is the part of testing.TB the lab uses. *testing.T and *testing.B
// satisfy it; programs such as the demo use a *Script.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

// Options describe the lab to build.
type Options struct {
	// Hosts is the number of simulated hosts (1-250; 0 means 1).
	Hosts int
	// Subnets is 1 (default) or 2. With 2, hosts alternate between
	// 198.19.0.0/24 (even index) and 198.19.1.0/24 (odd index) and the
	// underlay namespace routes between the subnets.
	Subnets int
	// Prefix is the lab ID that starts every namespace name. Empty means
	// "tl" plus four random characters. At most 8 of [a-z0-9].
	Prefix string
	// Outside adds the "outside" namespace at 203.0.113.1.
	Outside bool
	// MTU of the underlay links; 0 means 1500.
	MTU int
	// EtcdTLS, when set, makes the lab's etcd serve https and require
	// client certificates (see EtcdTLS); nil is plain http, as before.
	EtcdTLS *EtcdTLS
	// EtcdArgs are more etcd-lab flags for the lab's etcd (--enable-pprof).
	EtcdArgs []string
	// EtcdEnv is more environment for the lab's etcd, as NAME=value (the
	// Go runtime's GOGC, GOMEMLIMIT, GODEBUG).
	EtcdEnv []string
}

// Host is one simulated host.
type Host struct {
	Name     string // "host1", "host2", ... (the number is the last octet of IP)
	NS       string // network namespace name
	NSPath   string // /run/netns/<NS>
	Iface    string // the uplink inside the host: "eth0"
	IP       string // 198.19.0.N or 198.19.1.N
	CIDR     string // IP with prefix length: "198.19.0.1/24"
	IP6      string // fd00:198:19:S::N
	Gateway  string // the underlay bridge address on the host's subnet
	Gateway6 string
	Subnet   int // 0 or 1
}

// Lab is a running lab. Its exported fields are read-only.
type Lab struct {
	ID       string // the namespace name prefix
	Dir      string // work directory: process logs, etcd data
	Underlay string // namespace of the bridge(s) and router
	Hosts    []*Host

	OutsideNS  string // "" unless Options.Outside
	OutsideIP  string // 203.0.113.1
	OutsideIP6 string // fd00:203:0:113::1

	EtcdURL string // set by StartEtcd: http://198.19.0.254:2379

	tb   TB
	opts Options

	mu         sync.Mutex
	namespaces []string // in creation order; deleted in reverse
	procs      []*Proc
	servers    []*Server
	closers    []func() // extra things to close first (etcd clients)
	etcd       *Proc
	etcdNS     string
	reaper     *reaper
	closed     bool
}

const (
	nsRoot    = "/run/netns"
	underlay4 = "198.19.%d.%d"
	gwOctet   = 254
	outside4  = "203.0.113.1"
	outsideGW = "203.0.113.254"
	outside6  = "fd00:203:0:113::1"
	outGW6    = "fd00:203:0:113::fe"
)

var idPattern = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// New builds a lab and registers its Close with tb.Cleanup. It fails the
// test (tb.Fatalf) if the lab cannot be built; whatever was built by then is
// removed by the cleanup.
func New(tb TB, opts Options) *Lab {
	tb.Helper()
	l, err := build(tb, opts)
	if err != nil {
		tb.Fatalf("lab: %v", err)
	}
	return l
}

func build(tb TB, opts Options) (*Lab, error) {
	if opts.Hosts == 0 {
		opts.Hosts = 1
	}
	if opts.Subnets == 0 {
		opts.Subnets = 1
	}
	if opts.Hosts < 1 || opts.Hosts > 250 {
		return nil, fmt.Errorf("Hosts=%d: want 1-250", opts.Hosts)
	}
	if opts.Subnets != 1 && opts.Subnets != 2 {
		return nil, fmt.Errorf("Subnets=%d: want 1 or 2", opts.Subnets)
	}
	if opts.MTU == 0 {
		opts.MTU = 1500
	}
	// Leftovers of crashed runs (whose owner process is gone) go first, so
	// they neither clash with nor slow down this lab.
	if err := CleanupStale(""); err != nil {
		tb.Logf("lab: removing stale labs: %v", err)
	}
	if opts.Prefix != "" && !idPattern.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("Prefix %q: want 1-8 of [a-z0-9]", opts.Prefix)
	}
	var id, dir string
	var err error
	for range 5 { // a random ID clashes with a live lab once in 1.7 million
		id = opts.Prefix
		if id == "" {
			id = "tl" + randomID(4)
		}
		if dir, err = claim(id); err == nil || opts.Prefix != "" {
			break
		}
	}
	if err != nil {
		return nil, err
	}

	l := &Lab{ID: id, Dir: dir, tb: tb, opts: opts}
	register(l)
	tb.Cleanup(func() {
		if err := l.close(tb.Failed(), tb.Logf); err != nil {
			tb.Errorf("lab: close: %v", err)
		}
	})
	if l.reaper, err = startReaper(id, dir); err != nil {
		return nil, err
	}
	if err := l.buildTopology(); err != nil {
		return nil, fmt.Errorf("build lab %s: %w", id, err)
	}
	return l, nil
}

func (l *Lab) buildTopology() error {
	l.Underlay = l.ID + "-underlay"
	if err := l.addNS(l.Underlay); err != nil {
		return err
	}
	// The underlay is infrastructure, not code under test: it routes from
	// the first packet on. Interfaces created from now on inherit
	// accept_dad=0; with DAD the router's link-local address stays
	// tentative for ~2 s after a bridge gets its first port, and Linux
	// sends no neighbour solicitation (so forwards no IPv6) until then.
	if err := writeSysctls(pathOf(l.Underlay), forwarding, noDAD("default"), noDAD("all")); err != nil {
		return fmt.Errorf("underlay %s: %w", l.Underlay, err)
	}
	// etcd-lab's peer listener lives on the underlay's loopback.
	if err := ipn(l.Underlay, []string{"link", "set", "lo", "up"}); err != nil {
		return err
	}
	for s := range l.opts.Subnets {
		if err := l.addBridge(s); err != nil {
			return err
		}
	}
	for i := range l.opts.Hosts {
		if err := l.addHost(i); err != nil {
			return err
		}
	}
	if l.opts.Outside {
		if err := l.addOutside(); err != nil {
			return err
		}
	}
	return nil
}

// forwarding makes a namespace route: the underlay between its subnets,
// a host between its workloads and the underlay.
var forwarding = map[string]string{
	"net/ipv4/ip_forward":          "1",
	"net/ipv6/conf/all/forwarding": "1",
}

// noDAD turns off IPv6 duplicate address detection on one interface (or
// "default"/"all"): lab links are point-to-point or private bridges where
// no address can clash.
func noDAD(iface string) map[string]string {
	return map[string]string{"net/ipv6/conf/" + iface + "/accept_dad": "0"}
}

func (l *Lab) addBridge(subnet int) error {
	br := fmt.Sprintf("br%d", subnet)
	// A fixed MAC keeps the gateway's MAC stable as ports join the bridge
	// (a bridge otherwise takes its lowest port's MAC), so hosts' ARP
	// entries for the gateway never go stale mid-test.
	mac := fmt.Sprintf("02:19:80:%02x:00:fe", subnet)
	mtu := fmt.Sprint(l.opts.MTU)
	cmds := [][]string{
		{"link", "add", br, "address", mac, "mtu", mtu, "type", "bridge", "mcast_snooping", "0"},
		{"addr", "add", fmt.Sprintf(underlay4+"/24", subnet, gwOctet), "dev", br},
		{"addr", "add", ip6(subnet, gwOctet) + "/64", "dev", br, "nodad"},
		{"link", "set", br, "up"},
	}
	if err := ipn(l.Underlay, cmds...); err != nil {
		return fmt.Errorf("add bridge %s: %w", br, err)
	}
	return nil
}

func (l *Lab) addHost(i int) error {
	subnet := i % l.opts.Subnets
	n := i + 1
	h := &Host{
		Name:     fmt.Sprintf("host%d", n),
		Iface:    "eth0",
		IP:       fmt.Sprintf(underlay4, subnet, n),
		IP6:      ip6(subnet, n),
		Gateway:  fmt.Sprintf(underlay4, subnet, gwOctet),
		Gateway6: ip6(subnet, gwOctet),
		Subnet:   subnet,
	}
	h.CIDR = h.IP + "/24"
	h.NS = l.ID + "-" + h.Name
	h.NSPath = pathOf(h.NS)
	if err := l.addNS(h.NS); err != nil {
		return fmt.Errorf("add host %s: %w", h.Name, err)
	}
	l.Hosts = append(l.Hosts, h)
	err := l.link(h.NS, "v-"+h.Name, fmt.Sprintf("br%d", subnet),
		[]string{h.CIDR}, []string{h.IP6 + "/64"}, h.Gateway, h.Gateway6, forwarding)
	if err != nil {
		return fmt.Errorf("add host %s: %w", h.Name, err)
	}
	return nil
}

func (l *Lab) addOutside() error {
	l.OutsideNS = l.ID + "-outside"
	l.OutsideIP, l.OutsideIP6 = outside4, outside6
	if err := l.addNS(l.OutsideNS); err != nil {
		return fmt.Errorf("add outside: %w", err)
	}
	// The underlay end is a routed interface, not a bridge port: the outside
	// world is a different network the underlay routes to.
	err := l.link(l.OutsideNS, "v-outside", "",
		[]string{outside4 + "/24"}, []string{outside6 + "/64"}, outsideGW, outGW6, nil)
	if err == nil {
		err = ipn(l.Underlay,
			[]string{"addr", "add", outsideGW + "/24", "dev", "v-outside"},
			[]string{"addr", "add", outGW6 + "/64", "dev", "v-outside", "nodad"})
	}
	if err != nil {
		return fmt.Errorf("add outside: %w", err)
	}
	return nil
}

// link wires namespace ns to the underlay: a veth named ulName in the
// underlay (enslaved to bridge unless bridge is "") and eth0 in ns with the
// given addresses, default routes and sysctls. The peer is created
// directly in ns, so no interface ever appears in the root namespace.
func (l *Lab) link(ns, ulName, bridge string, addrs4, addrs6 []string, gw4, gw6 string, sysctls map[string]string) error {
	mtu := fmt.Sprint(l.opts.MTU)
	ul := [][]string{{"link", "add", ulName, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", ns}}
	if bridge != "" {
		ul = append(ul, []string{"link", "set", ulName, "master", bridge})
	}
	ul = append(ul, []string{"link", "set", ulName, "up"})
	if err := ipn(l.Underlay, ul...); err != nil {
		return err
	}
	// Before eth0 comes up, so its link-local address is usable at once.
	// The rest of the host keeps the kernel's defaults: interfaces that
	// tabby creates there see DAD as on a real host.
	if err := writeSysctls(pathOf(ns), sysctls, noDAD("eth0")); err != nil {
		return err
	}
	in := [][]string{{"link", "set", "lo", "up"}}
	for _, a := range addrs4 {
		in = append(in, []string{"addr", "add", a, "dev", "eth0"})
	}
	for _, a := range addrs6 {
		// nodad: the address is usable at once instead of after ~2 s of
		// duplicate address detection on a link where it cannot clash.
		in = append(in, []string{"addr", "add", a, "dev", "eth0", "nodad"})
	}
	in = append(in,
		[]string{"link", "set", "eth0", "up"},
		[]string{"route", "add", "default", "via", gw4, "dev", "eth0"},
		[]string{"route", "add", "::/0", "via", gw6, "dev", "eth0"},
	)
	return ipn(ns, in...)
}

// AddContainer creates an empty network namespace (only lo, up) to stand in
// for a container on host h, named "<lab>-<host>-<name>". It is removed by
// Close or RemoveContainer.
func (l *Lab) AddContainer(h *Host, name string) (nsName, nsPath string) {
	l.tb.Helper()
	ns, err := l.addContainer(h, name)
	if err != nil {
		l.tb.Fatalf("lab: %v", err)
	}
	return ns, pathOf(ns)
}

var containerName = regexp.MustCompile(`^[A-Za-z0-9_.]+$`)

func (l *Lab) addContainer(h *Host, name string) (string, error) {
	if !containerName.MatchString(name) {
		return "", fmt.Errorf("add container %q: name must be [A-Za-z0-9_.]+", name)
	}
	ns := l.ID + "-" + h.Name + "-" + name
	if err := l.addNS(ns); err != nil {
		return "", fmt.Errorf("add container %s on %s: %w", name, h.Name, err)
	}
	if err := ipn(ns, []string{"link", "set", "lo", "up"}); err != nil {
		return "", fmt.Errorf("add container %s on %s: %w", name, h.Name, err)
	}
	return ns, nil
}

// RemoveContainer kills whatever still runs in a container namespace made by
// AddContainer and deletes the namespace.
func (l *Lab) RemoveContainer(nsName string) error {
	l.mu.Lock()
	idx := -1
	for i, ns := range l.namespaces {
		if ns == nsName {
			idx = i
		}
	}
	if idx < 0 || nsName == l.Underlay || nsName == l.OutsideNS || l.isHostNS(nsName) {
		l.mu.Unlock()
		return fmt.Errorf("remove container %s: not a container of lab %s", nsName, l.ID)
	}
	l.namespaces = append(l.namespaces[:idx], l.namespaces[idx+1:]...)
	l.mu.Unlock()
	killNSProcs(nsName)
	if err := delNS(nsName); err != nil {
		return fmt.Errorf("remove container %s: %w", nsName, err)
	}
	return nil
}

func (l *Lab) isHostNS(ns string) bool {
	for _, h := range l.Hosts {
		if h.NS == ns {
			return true
		}
	}
	return false
}

// Host returns the host with the given name ("host2"), or nil.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Namespaces lists the namespaces the lab currently owns.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.namespaces...)
}

// addNS creates a namespace and records it before anything else can fail,
// so Close always knows about it.
func (l *Lab) addNS(name string) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("lab is closed")
	}
	l.namespaces = append(l.namespaces, name)
	l.mu.Unlock()
	if out, err := runCmd("ip", "netns", "add", name); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	return nil
}

// Close stops the lab's processes and servers and deletes its namespaces
// and work directory. It is registered with tb.Cleanup by New, and safe to
// call more than once.
func (l *Lab) Close() error { return l.close(l.tb.Failed(), l.tb.Logf) }

// close does Close; dumpLogs shows the end of each process log first, and
// logf reports leftovers (tb.Logf must not be used once a test is over).
func (l *Lab) close(dumpLogs bool, logf func(string, ...any)) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	closers, servers, procs := l.closers, l.servers, l.procs
	namespaces := l.namespaces
	l.mu.Unlock()
	defer unregister(l)

	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	for _, s := range servers {
		s.Close()
	}
	if dumpLogs {
		l.dumpLogs(procs, logf)
	}
	// Stop all processes at once: shutdown time is then the slowest one's,
	// not the sum.
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.stopGroup(5 * time.Second) })
	}
	wg.Wait()

	var errs []error
	// Whatever still runs inside a lab namespace was started by the test
	// through the lab (a daemon's child, a command that forked): it would
	// keep its namespace, and that namespace's veths, alive.
	for _, ns := range namespaces {
		if pids := killNSProcs(ns); len(pids) > 0 {
			logf("lab: killed leftover processes in %s: %v", ns, pids)
		}
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		if err := delNS(namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := l.reaper.done(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(l.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", l.Dir, err))
	}
	return errors.Join(errs...)
}

// dumpLogs shows the end of every process log when a test failed: the log
// files themselves go away with the lab.
func (l *Lab) dumpLogs(procs []*Proc, logf func(string, ...any)) {
	for _, p := range procs {
		logf("lab: --- last lines of %s (%s in %s) ---\n%s", filepath.Base(p.Log),
			strings.Join(p.Args, " "), p.NS, Tail(p.Log, 40))
	}
}

// ip6 is the underlay IPv6 address of host n (or the gateway, 254) on a
// subnet, in canonical form: fd00:198:19:S::N with N in hex.
func ip6(subnet, n int) string {
	return netip.MustParseAddr(fmt.Sprintf("fd00:198:19:%d::%x", subnet, n)).String()
}

func pathOf(name string) string { return filepath.Join(nsRoot, name) }

func randomID(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
