// Package agent is tabby-node's reconciler: it follows the etcd prefixes its
// host needs, runs BGP, and drives routes, tunnels and nat-outgoing in the
// kernel towards what etcd and BGP say, applying only differences. It never
// flushes on start: it adopts what is programmed, and removes stale routes
// only once BGP has settled.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/node/bgp"
	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/node/policy"
	"github.com/tabby-net/tabby/node/routes"
	"github.com/tabby-net/tabby/node/watch"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdauth"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// Config is tabby-node's configuration (flags).
type Config struct {
	Name        string
	IPv4        string // address/prefix on the underlay; "" = autodetect
	IPv6        string
	ASN         uint32 // 0 = the cluster's (bgp/config, default 64512)
	Etcd        store.Config
	StateDir    string
	MetricsAddr string
	BGPPort     int
	// BGPHoldTime and BGPRestartTime are the BGP hold time and graceful
	// restart time (0: the bgp package's defaults, 90 s and 120 s). Short
	// values make a partition between hosts visible sooner; long ones ride
	// out longer ones.
	BGPHoldTime, BGPRestartTime time.Duration
	// ResyncEvery is the periodic full reconcile that repairs tampering.
	ResyncEvery time.Duration
	// HostPorts are the host's ports local workloads may reach.
	HostPorts []policy.HostPort
	// RouteReflector is this host's route reflector cluster ID, written to
	// its host record: "" keeps what the record says (tabbyctl node set),
	// "off" makes it an ordinary host.
	RouteReflector string
	// K8sNode is the Kubernetes Node this host is ("" outside Kubernetes),
	// written to its host record.
	K8sNode string
	Version string
	Log     *slog.Logger
}

// Agent is one running node daemon.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	kv      *etcdv3.KV
	cache   *watch.Cache
	speaker *bgp.Speaker
	rt      *routes.Manager
	ipt4    *iptables.Backend
	ipt6    *iptables.Backend // nil when ip6tables cannot be used here
	// ip6tablesErr is why ipt6 is nil: IPv6 endpoints are then never ready.
	ip6tablesErr error
	sets         *iptables.Sets
	inc          incremental // what the last full policy pass programmed
	// policyDone: the packet filter in the kernel was rendered from a
	// loaded cache and applied (patches keep it so); until then the node
	// is not ready, whatever else it has loaded.
	policyDone bool
	gens       map[string]uint64 // base prefixes' change counts at the last full reconcile
	// hosts is the host list as of its change count gen (hostList).
	hosts struct {
		gen   uint64
		nodes map[string]*model.Host
		index *hostIndex
	}
	metrics *metrics
	ipipOK  bool
	ready   *readiness

	mu        sync.Mutex
	learned   []bgp.Route
	settled   bool
	status    nodestatus.Status
	kick      chan struct{}
	regKick   chan struct{}
	fatal     chan error // stops Run: the datastore became unwritable for this binary
	hostRecMu sync.Mutex
	tunnels   tunnelAddrs
	rtTun     tunnelAddrs // the tunnel addresses a.rt was opened with
}

type tunnelAddrs struct{ vxlan, ipip net.IP }

// New prepares an agent: it resolves the node's address and connects
// (lazily) to etcd. Run does the rest.
func New(cfg Config) (*Agent, error) {
	if err := model.ValidName(cfg.Name); err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ResyncEvery == 0 {
		cfg.ResyncEvery = 30 * time.Second
	}
	if cfg.BGPPort == 0 {
		cfg.BGPPort = 179
	}
	if rr := cfg.RouteReflector; rr != "" && rr != "off" {
		if err := model.ValidClusterID(rr); err != nil {
			return nil, fmt.Errorf("--route-reflector: %w", err)
		}
	}
	if cfg.IPv4 == "" || cfg.IPv4 == "autodetect" {
		a, err := defaultRouteAddr()
		if err != nil {
			return nil, fmt.Errorf("--ip autodetect: %w (give --ip ADDRESS/PREFIX)", err)
		}
		cfg.IPv4 = a
	}
	if !strings.Contains(cfg.IPv4, "/") {
		p, err := prefixOf(cfg.IPv4)
		if err != nil {
			return nil, fmt.Errorf("--ip %s: %w", cfg.IPv4, err)
		}
		cfg.IPv4 = p
	}
	if ip, _, err := net.ParseCIDR(cfg.IPv4); err != nil || ip.To4() == nil {
		return nil, fmt.Errorf("--ip %q is not an IPv4 address", cfg.IPv4)
	}
	kv, err := etcdv3.New(cfg.Etcd)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Log, kv: kv, kick: make(chan struct{}, 1), regKick: make(chan struct{}, 1), fatal: make(chan error, 1), ready: newReadiness(),
		sets: new(iptables.Sets)}
	a.metrics = newMetrics(a.peersEstablished)
	a.status.Name, a.status.IPv4, a.status.Version = cfg.Name, cfg.IPv4, cfg.Version
	return a, nil
}

func (a *Agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run serves until ctx ends. Kernel state is left in place on return, so a
// restart (or a crash) does not disturb traffic.
func (a *Agent) Run(ctx context.Context) error {
	// The state dir holds the status socket (which answers who runs here
	// and takes the plugins' readiness requests) and the plugins' lock and
	// caches: root's alone. Chmod too: a hostPath or an older version may
	// have made it 0755.
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.Chmod(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// The CNI plugin reads the node name from here.
	if err := writePrivate(filepath.Join(a.cfg.StateDir, "nodename"), a.cfg.Name+"\n"); err != nil {
		return err
	}
	// The CNI plugin derives workload MTUs from this instead of probing the
	// host's links on every ADD.
	if mtu, err := linkMTUOf(a.cfg.IPv4); err == nil {
		_ = writePrivate(filepath.Join(a.cfg.StateDir, "mtu"), fmt.Sprintf("%d\n", mtu))
	} else {
		a.log.Warn("cannot find the uplink MTU; the CNI plugin will probe it", "err", err)
	}
	// Before the kernel is touched: a datastore only newer binaries may
	// write is refused here (etcd away: registerOnce checks again).
	if err := a.checkSchema(ctx); err != nil && !store.IsUnavailable(err) {
		return err
	}
	a.ipipOK = routes.IPIPSupported()
	if !a.ipipOK {
		a.log.Warn("this kernel has no IPIP support: IPIP pools cannot be served on this host; direct and VXLAN pools are served")
	}
	if err := a.detectIPTables(); err != nil {
		return err
	}

	ip4, _, _ := net.ParseCIDR(a.cfg.IPv4)
	if err := a.routeManager(tunnelAddrs{}); err != nil {
		return err
	}
	defer func() { a.rt.Close() }()
	own, err := a.rt.Installed()
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	restarting := len(own) > 0
	if restarting {
		a.log.Info("found routes from a previous run; keeping them until BGP has settled")
	}

	a.cache = newCache(a.kv.Client, a.log)
	a.cache.Resyncs = func(string) { a.metrics.resyncs.Inc() }
	a.cache.Start(ctx, a.basePrefixes()...)

	listen := []string{ip4.String()}
	if a.cfg.IPv6 != "" {
		listen = append(listen, addrOf(a.cfg.IPv6))
	}
	asn := a.cfg.ASN
	if asn == 0 {
		asn = a.clusterBGP(ctx).ASNumber
	}
	bcfg := bgp.Config{RouterID: ip4.String(), ASN: asn, ListenPort: int32(a.cfg.BGPPort), ListenAddrs: listen,
		Restarting: restarting, Logger: a.log.With("part", "bgp"),
		HoldTime: a.cfg.BGPHoldTime, GracefulRestartTime: a.cfg.BGPRestartTime}
	if a.cfg.IPv6 != "" {
		bcfg.NextHop6 = addrOf(a.cfg.IPv6)
	}
	sp, err := bgp.New(bcfg)
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	a.mu.Lock()
	a.speaker = sp
	a.mu.Unlock()
	defer a.speaker.StopForRestart()

	stopStatus, err := a.serveStatus()
	if err != nil {
		return err
	}
	defer stopStatus()
	if a.cfg.MetricsAddr != "" {
		stopMetrics, err := a.metrics.serve(a.cfg.MetricsAddr)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}

	go a.register(ctx)
	tick := time.NewTimer(jitter(a.cfg.ResyncEvery))
	defer tick.Stop()
	routesCh := a.speaker.Routes()
	var rest <-chan time.Time // a deferred reconcile of BGP, routes and NAT
	started := false          // the first pass on a synced cache is done
	for {
		full := false
		select {
		case <-ctx.Done():
			a.log.Info("stopping; kernel routes and rules stay in place")
			return nil
		case r, ok := <-routesCh:
			if !ok {
				routesCh = nil
				continue
			}
			a.mu.Lock()
			// The kernel's routes depend on prefixes and next hops only.
			// A set that differs in nothing else needs no pass: with two
			// reflectors a new block's second copy often becomes the best
			// path (same next hop, other peer), and a pass on every host
			// for it is CPU the next change waits behind. So do routes
			// turning stale or fresh in a peer's restart.
			same := a.settled && sameNextHops(a.learned, r)
			a.learned = r
			if !a.settled {
				a.settled = true
				a.log.Info("BGP settled; stale routes may now be removed", "routes", len(r))
			}
			a.mu.Unlock()
			if same {
				continue
			}
		case <-a.cache.Changed():
			// Endpoints and tag members coming and going are the common
			// change on a busy host (every ADD and DEL): patch the filter
			// at once, and leave the rest (BGP, routes, NAT), which a new
			// local endpoint rarely changes, to a pass a little later,
			// so that the next ADD does not wait behind it.
			if a.cache.Synced() && a.onlyWorkloadsChanged() && a.patchPolicy() {
				// Only a borrowed address (outside this host's blocks)
				// changes what BGP advertises; nothing else of the rest
				// depends on local endpoints.
				if a.inc.borrowedChanged && rest == nil {
					rest = time.After(restDelay)
				}
				continue
			}
		case err := <-a.fatal:
			return err
		case <-rest:
		case <-a.kick:
		case <-tick.C:
			full = true // read the kernel: repair what others changed
			tick.Reset(jitter(a.cfg.ResyncEvery))
		}
		rest = nil
		// Coalesce bursts (a profile change touches many keys).
		drain(a.cache.Changed(), a.kick)
		if a.cache.Synced() {
			a.reconcile(ctx, a.pass(full))
			if !started {
				started = true
				// The cold start read and decoded every prefix at
				// once: garbage that grows with the cluster and that no
				// later pass makes again. Collected and returned now, it
				// does not stay resident as headroom.
				debug.FreeOSMemory()
			}
		}
	}
}

// restDelay bounds how long BGP, routes and NAT may wait after a change
// of workloads only (a borrowed address's /32 route, for one).
const restDelay = 50 * time.Millisecond

// onlyWorkloadsChanged reports whether, since the last full reconcile,
// nothing but this host's subtree and tag members changed.
func (a *Agent) onlyWorkloadsChanged() bool {
	for _, p := range a.basePrefixes() {
		if p == model.HostSubtree(a.cfg.Name) {
			continue
		}
		if a.cache.Gen(p) != a.gens[p] {
			return false
		}
	}
	return true
}

// sameNextHops reports whether two route sets (sorted by prefix, as
// bgp.Speaker publishes them) have the same prefixes and next hops.
func sameNextHops(a, b []bgp.Route) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Prefix.String() != b[i].Prefix.String() || !a[i].NextHop.Equal(b[i].NextHop) {
			return false
		}
	}
	return true
}

func drain(chs ...<-chan struct{}) {
	for _, c := range chs {
		select {
		case <-c:
		default:
		}
	}
}

func (a *Agent) clusterBGP(ctx context.Context) model.BGPConfig {
	c := model.DefaultBGPConfig()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, _ = store.GetJSON(cctx, a.kv, model.BGPConfigKey, &c)
	return c
}

// snapshot builds the view from the cache.
func (a *Agent) snapshot() *view {
	v := &view{me: a.cfg.Name, bgp: model.DefaultBGPConfig()}
	for _, p := range watch.Decode[model.Pool](a.cache, model.PoolPrefix, nil) {
		v.pools = append(v.pools, p)
	}
	sort.Slice(v.pools, func(i, j int) bool { return v.pools[i].CIDR < v.pools[j].CIDR })
	v.nodes, v.hosts = a.hostList()
	if b, ok := a.cache.Get(model.BGPConfigKey, model.BGPConfigKey); ok {
		_ = store.DecodeJSON(b, &v.bgp)
	}
	for _, p := range watch.Decode[model.BGPPeer](a.cache, model.BGPPeerPrefix, nil) {
		v.global = append(v.global, p)
	}
	sub := model.HostSubtree(a.cfg.Name)
	for k, p := range watch.Decode[model.BGPPeer](a.cache, sub, func(k string) bool { return strings.HasPrefix(k, model.HostBGPPeerPrefix(a.cfg.Name)) }) {
		_ = k
		v.hostPeers = append(v.hostPeers, p)
	}
	var eps map[string]model.Endpoint
	eps, v.epRevs = watch.DecodeRev[model.Endpoint](a.cache, sub, isEndpointKey)
	v.endpoints = make([]model.Endpoint, 0, len(eps))
	for _, e := range eps {
		v.endpoints = append(v.endpoints, e)
	}
	for _, af := range watch.Decode[model.Affinity](a.cache, model.AffinityHostPrefix(a.cfg.Name), nil) {
		if _, n, err := net.ParseCIDR(af.Block); err == nil {
			v.blocks = append(v.blocks, n)
		}
	}
	sort.Slice(v.blocks, func(i, j int) bool { return v.blocks[i].String() < v.blocks[j].String() })
	if h := v.nodes[a.cfg.Name]; h != nil {
		v.self = *h
	}
	if v.self.IPv4 == "" {
		v.self = a.hostRecord()
	}
	return v
}

// hostList is the host list by name and its index, rebuilt only when the
// list has changed since the last pass. The records are the watch cache's
// (decodeHost): shared, read-only.
func (a *Agent) hostList() (map[string]*model.Host, *hostIndex) {
	// The count first: a change landing after it makes the next pass
	// rebuild again, never keep a stale list.
	gen := a.cache.Gen(model.NodePrefix)
	if a.hosts.index != nil && a.hosts.gen == gen {
		return a.hosts.nodes, a.hosts.index
	}
	nodes := map[string]*model.Host{}
	for _, h := range watch.Decode[*model.Host](a.cache, model.NodePrefix, nil) {
		nodes[h.Name] = h
	}
	a.hosts.gen, a.hosts.nodes, a.hosts.index = gen, nodes, newHostIndex(nodes)
	return nodes, a.hosts.index
}

// detectIPTables picks the iptables backends. IPv4 is required; without a
// usable ip6tables the daemon runs, but fails closed for IPv6: endpoints
// with an IPv6 address are never reported ready.
func (a *Agent) detectIPTables() error {
	var err error
	if a.ipt4, err = iptables.Detect(iptables.V4); err != nil {
		return err
	}
	a.log.Info("iptables backend", "mode", a.ipt4.Mode)
	a.detectIP6Tables()
	return nil
}

func (a *Agent) detectIP6Tables() {
	b, err := iptables.Detect(iptables.V6)
	if err != nil {
		a.ipt6, a.ip6tablesErr = nil, fmt.Errorf("ip6tables unusable on this host: %w", err)
		return
	}
	a.ipt6, a.ip6tablesErr = b, nil
	a.log.Info("ip6tables backend", "mode", b.Mode)
}

// reconcile drives BGP, routes and NAT to the desired state.
func (a *Agent) reconcile(ctx context.Context, p pass) {
	start := time.Now()
	a.gens = map[string]uint64{}
	a.inc.borrowedChanged = false
	for _, pre := range a.basePrefixes() {
		a.gens[pre] = a.cache.Gen(pre)
	}
	// The packet filter first: a CNI ADD is waiting for it. Most event
	// passes only add or remove endpoints of existing groups and tag
	// members: those are patched in the kernel's sets without reading the
	// whole host.
	patched := !p.full && a.patchPolicy()
	tPatch := time.Since(start)
	v := a.snapshot()
	defer func() {
		a.log.Debug("reconcile pass", "policyPatched", patched, "policy", tPatch, "total", time.Since(start))
	}()
	var errs []error
	if p.full && a.ipt6 == nil {
		a.detectIP6Tables() // ip6tables may have been installed since
	}
	if !patched {
		complete, err := a.syncPolicy(v, p)
		if err != nil {
			errs = append(errs, fmt.Errorf("policy: %w", err))
		}
		a.policyDone = complete
	}
	// Prefixes first, so a new session starts with the full set.
	if err := a.speaker.Advertise(v.advertised()); err != nil {
		errs = append(errs, fmt.Errorf("bgp advertise: %w", err))
	}
	if err := a.speaker.SetPeers(v.peers()); err != nil {
		errs = append(errs, fmt.Errorf("bgp peers: %w", err))
	}
	a.mu.Lock()
	learned, settled := a.learned, a.settled
	a.mu.Unlock()
	rem, unserved := v.remotes(learned, a.ipipOK)
	a.mu.Lock()
	tun := a.tunnels
	a.mu.Unlock()
	needIPIP, needVXLAN := v.needsEncap()
	// A pool that starts (or stops) needing a tunnel address: register now
	// rather than at the next periodic pass.
	if needVXLAN != (tun.vxlan != nil) || (needIPIP && a.ipipOK) != (tun.ipip != nil) {
		select {
		case a.regKick <- struct{}{}:
		default:
		}
	}
	if !needVXLAN {
		tun.vxlan = nil
	}
	if !needIPIP || !a.ipipOK {
		tun.ipip = nil
	}
	// Until BGP has settled after a start, the kernel keeps what it has: a
	// half-learned table must not delete routes that are still good.
	if settled {
		if err := a.routeManager(tun); err != nil {
			errs = append(errs, err)
		} else if err := p.syncRoutes(a.rt, routes.Local{Blocks: append(append([]*net.IPNet{}, v.blocks...), cidrs(unserved)...)}, rem); err != nil {
			errs = append(errs, fmt.Errorf("routes: %w", err))
		}
	}
	if err := a.syncNAT(v, p); err != nil {
		errs = append(errs, fmt.Errorf("nat-outgoing: %w", err))
	}
	if len(unserved) > 0 {
		a.log.Debug("routes that cannot be served here", "prefixes", unserved)
	}
	d := time.Since(start)
	a.metrics.reconciles.Inc()
	a.metrics.reconcileSeconds.Observe(d.Seconds())
	a.metrics.routes.Set(float64(len(rem)))
	a.mu.Lock()
	a.status.Routes = len(rem)
	a.status.Unserved = unserved
	a.status.Blocks = nil
	for _, b := range v.blocks {
		a.status.Blocks = append(a.status.Blocks, b.String())
	}
	a.status.LastReconcile = time.Now()
	a.status.ReconcileMillis = float64(d.Microseconds()) / 1000
	a.status.Ready = a.cache.Synced() && a.policyDone
	a.status.Settled = settled
	a.status.IPIPSupported = a.ipipOK
	a.status.Errors = nil
	for _, e := range errs {
		a.status.Errors = append(a.status.Errors, e.Error())
	}
	a.mu.Unlock()
	for _, e := range errs {
		a.metrics.errors.Inc()
		a.log.Error("reconcile", "err", e)
	}
}

// pass is how one reconcile writes iptables and ipsets. The event path
// diffs against what tabby last applied (a CNI ADD may be waiting); the
// periodic pass (full) reads the kernel back and so repairs what anyone
// else changed.
type pass struct {
	full bool
	sets *iptables.Sets
}

func (a *Agent) pass(full bool) pass { return pass{full: full, sets: a.sets} }

func (p pass) syncSets(sets ...iptables.Set) error {
	sync := p.sets.SyncKnown
	if p.full {
		sync = p.sets.Sync
	}
	_, err := sync(sets...)
	return err
}

// syncRoutes: every host passes for every BGP change anywhere in the
// cluster, so event passes send the kernel only the difference from what
// tabby installed; the periodic pass reads the kernel's tables back.
func (p pass) syncRoutes(m *routes.Manager, local routes.Local, remotes []routes.Remote) error {
	if p.full {
		return m.Sync(local, remotes)
	}
	return m.SyncKnown(local, remotes)
}

func (p pass) apply(b *iptables.Backend, tables ...iptables.Table) error {
	if p.full {
		return b.Apply(tables...)
	}
	return b.ApplyKnown(tables...)
}

func (p pass) listSets() ([]string, error) {
	if p.full {
		return p.sets.List()
	}
	return p.sets.Known()
}

// Pool sets that nat-outgoing matches on.
const (
	setPools4    = "tabby-pools"
	setNATPools4 = "tabby-nat-pools"
	setPools6    = "tabby-pools6"
	setNATPools6 = "tabby-nat-pools6"
)

// natTable masquerades what leaves a nat-outgoing pool for anywhere outside
// every pool.
func natTable(natPools, allPools string) iptables.Table {
	rule := fmt.Sprintf("-m set --match-set %s src -m set ! --match-set %s dst -j MASQUERADE", natPools, allPools)
	return iptables.Table{Name: "nat", Chains: []iptables.Chain{{Name: "TABBY-POSTROUTING", Rules: []string{rule}}},
		Hooks: []iptables.Hook{{Chain: "POSTROUTING", Target: "TABBY-POSTROUTING"}}}
}

// syncNAT programs nat-outgoing. IPv6 nat-outgoing that cannot be put in
// force is not an error of the pass (IPv4 is served); the status says why.
func (a *Agent) syncNAT(v *view, p pass) error {
	all4, nat4, all6, nat6 := v.natSets()
	if err := p.syncSets(
		iptables.Set{Name: setPools4, Type: "hash:net", Family: iptables.V4, Members: all4},
		iptables.Set{Name: setNATPools4, Type: "hash:net", Family: iptables.V4, Members: nat4},
		iptables.Set{Name: setPools6, Type: "hash:net", Family: iptables.V6, Members: all6},
		iptables.Set{Name: setNATPools6, Type: "hash:net", Family: iptables.V6, Members: nat6},
	); err != nil {
		return err
	}
	if err := p.apply(a.ipt4, natTable(setNATPools4, setPools4)); err != nil {
		return err
	}
	var err6 error
	switch {
	case a.ipt6 != nil:
		err6 = p.apply(a.ipt6, natTable(setNATPools6, setPools6))
	case len(nat6) > 0:
		err6 = a.ip6tablesErr
	}
	a.noteV6("IPv6 nat-outgoing", &a.status.IPv6NATError, err6)
	return nil
}

// routeManager (re)opens the route manager when the tunnel addresses change:
// they are part of its options.
func (a *Agent) routeManager(tun tunnelAddrs) error {
	if a.rt != nil && a.rtTun.vxlan.Equal(tun.vxlan) && a.rtTun.ipip.Equal(tun.ipip) {
		return nil
	}
	ip4, _, _ := net.ParseCIDR(a.cfg.IPv4)
	m, err := routes.New(routes.Options{NodeIP: ip4, VXLANMAC: vxlanMAC(a.cfg.Name), VXLANTunnelAddr: tun.vxlan, IPIPTunnelAddr: tun.ipip})
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	if a.rt != nil {
		a.rt.Close()
	}
	a.rt, a.rtTun = m, tun
	return nil
}

// vxlanMAC is stable per host name, so a restart keeps the same VTEP
// address and peers' FDB entries stay right.
func vxlanMAC(name string) net.HardwareAddr { return routes.DeriveVTEPMAC(name) }

func (a *Agent) hostRecord() model.Host {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := model.Host{Name: a.cfg.Name, IPv4: a.cfg.IPv4, IPv6: a.cfg.IPv6, ASNumber: a.cfg.ASN, IPIPSupported: a.ipipOK,
		Version: a.cfg.Version, VXLANMAC: vxlanMAC(a.cfg.Name).String()}
	if a.cfg.BGPPort != 179 {
		h.BGPPort = a.cfg.BGPPort
	}
	if a.tunnels.vxlan != nil {
		h.VXLANTunnelAddr = a.tunnels.vxlan.String()
	}
	if a.tunnels.ipip != nil {
		h.IPIPTunnelAddr = a.tunnels.ipip.String()
	}
	if a.cfg.RouteReflector != "off" {
		h.RouteReflectorClusterID = a.cfg.RouteReflector
	}
	h.K8sNode = a.cfg.K8sNode
	return h
}

// register keeps this host's record and tunnel addresses in etcd, retrying
// while etcd is away.
func (a *Agent) register(ctx context.Context) {
	for {
		err := a.registerOnce(ctx)
		if err == nil {
			a.poke()
		} else if ctx.Err() == nil {
			a.log.Warn("registering the host failed; retrying", "err", err)
		}
		wait := jitter(a.cfg.ResyncEvery)
		if err != nil {
			wait = 2 * time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-a.regKick:
		case <-time.After(wait):
		}
	}
}

// jitter is d give or take a tenth, drawn anew each time: nodes started
// together (a DaemonSet rollout, a lab) would otherwise run their periodic
// passes in the same second for ever, and a route or an ADD arriving then
// waits behind all of them on shared CPUs and etcd.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

// checkSchema writes the datastore's schema record when there is none and
// fails when this binary may not write to the store (model.EnsureSchema).
func (a *Agent) checkSchema(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := model.EnsureSchema(cctx, a.kv)
	if err == nil || !etcdauth.IsPermissionDenied(err) {
		return err
	}
	// Under etcd auth a host's role may not write the schema record (a host
	// that could would lock every writer out by raising it); the admin's
	// tabbyctl records it. Reading it and being allowed to write is enough.
	s, ok, rerr := model.ReadSchema(cctx, a.kv)
	if rerr != nil {
		return rerr
	}
	if !ok {
		return fmt.Errorf("no %s record yet, and this host's etcd user may not write it: run 'tabbyctl auth setup' as etcd's root first: %w", model.SchemaKey, err)
	}
	return s.Check()
}

// tunnelHandle names the tunnel address allocation of a host.
func tunnelHandle(kind, host string) (string, string) { return "tabby-tunnel", kind + "-" + host }

func (a *Agent) registerOnce(ctx context.Context) error {
	if err := a.checkSchema(ctx); err != nil {
		if !store.IsUnavailable(err) {
			select {
			case a.fatal <- err:
			default:
			}
		}
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pools, err := ipam.Pools(cctx, a.kv)
	if err != nil {
		return err
	}
	var want4vx, want4ip []string
	for _, p := range pools {
		if p.Disabled || p.IsV6() {
			continue
		}
		if p.VXLANMode.On() {
			want4vx = append(want4vx, p.CIDR)
		}
		if p.IPIPMode.On() {
			want4ip = append(want4ip, p.CIDR)
		}
	}
	im := &ipam.IPAM{KV: a.kv, Host: a.cfg.Name}
	alloc := func(kind string, pools []string) (net.IP, error) {
		net_, cid := tunnelHandle(kind, a.cfg.Name)
		if len(pools) == 0 {
			return nil, im.Release(cctx, net_, cid)
		}
		_, out, err := im.Assign(cctx, ipam.Request{Network: net_, ContainerID: cid, Workload: kind + ".tunnel", Plugin: "tabby-node",
			IPv4: true, Pools4: pools})
		if err != nil {
			return nil, fmt.Errorf("%s tunnel address: %w", kind, err)
		}
		return out[0].IP, nil
	}
	vx, err := alloc("vxlan", want4vx)
	if err != nil {
		return err
	}
	if !a.ipipOK {
		want4ip = nil // no tunl0 here: an address for it would be wasted
	}
	ipip, err := alloc("ipip", want4ip)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.tunnels = tunnelAddrs{vxlan: vx, ipip: ipip}
	a.mu.Unlock()
	rec := a.hostRecord()
	return store.Update(cctx, a.kv, model.NodeKey(a.cfg.Name), func(cur *model.Host, exists bool) (*model.Host, error) {
		rec := rec
		if exists && a.cfg.RouteReflector == "" {
			// Without the flag the role is the operator's (tabbyctl node
			// set), not the daemon's: keep it.
			rec.RouteReflectorClusterID = cur.RouteReflectorClusterID
		}
		if exists && *cur == rec {
			return nil, store.ErrAbort
		}
		return &rec, nil
	})
}

// cidrs parses prefixes. Unserved remote prefixes get a blackhole like local
// blocks: without it their packets would follow the default route out of
// the host, unencapsulated.
func cidrs(ss []string) []*net.IPNet {
	var out []*net.IPNet
	for _, s := range ss {
		if _, n, err := net.ParseCIDR(s); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// writePrivate writes a state file mode 0600, also when an older version
// left it 0644 (WriteFile's mode applies only to a new file).
func writePrivate(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}
