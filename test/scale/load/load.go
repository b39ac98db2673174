// Package load fills etcd as a cluster of many hosts would: host records,
// IPAM blocks with their affinities and handles, endpoint records with their
// tag and member index entries, profiles and namespaces, all shaped exactly
// as tabby's own writers shape them (pkg/model, pkg/workload), so that
// tabbyctl, tabby-node and tabby-ipam read them as their own. It writes in
// large transactions from a few writers; it is the fill of the scale
// harness (test/scale) and usable by any test that needs a big datastore.
package load

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

// Config says what to write. Zero fields take the defaults of Defaults.
type Config struct {
	Hosts     int    // simulated hosts: host records, blocks, affinities
	Endpoints int    // workloads, spread evenly over the hosts
	Profiles  int    // namespaces, each with its profile k8s_ns.<ns>
	NSPerHost int    // namespaces a host's workloads belong to (the tags a host follows)
	HostName  string // format of host names, one %d (default "sim-%05d")
	Pool      string // the pool all addresses come from (default 10.0.0.0/8)
	BlockSize int    // default 26
	Network   string // CNI network name of the handles (default "tabby-k8s")
	Writers   int    // transactions in flight (default 8)
	MaxOps    int    // operations per transaction (default 512; etcd's own default limit is 128)
}

// Defaults is the cluster: 10,000 hosts, 1,000,000 workloads,
// 1,000 profiles.
func Defaults() Config {
	return Config{Hosts: 10000, Endpoints: 1000000, Profiles: 1000, NSPerHost: 5, HostName: "sim-%05d",
		Pool: "10.0.0.0/8", BlockSize: 26, Network: "tabby-k8s", Writers: 8, MaxOps: 512}
}

func (c Config) withDefaults() Config {
	d := Defaults()
	if c.Hosts == 0 {
		c.Hosts = d.Hosts
	}
	if c.Endpoints == 0 {
		c.Endpoints = d.Endpoints
	}
	if c.Profiles == 0 {
		c.Profiles = d.Profiles
	}
	if c.NSPerHost == 0 {
		c.NSPerHost = d.NSPerHost
	}
	if c.HostName == "" {
		c.HostName = d.HostName
	}
	if c.Pool == "" {
		c.Pool = d.Pool
	}
	if c.BlockSize == 0 {
		c.BlockSize = d.BlockSize
	}
	if c.Network == "" {
		c.Network = d.Network
	}
	if c.Writers == 0 {
		c.Writers = d.Writers
	}
	if c.MaxOps == 0 {
		c.MaxOps = d.MaxOps
	}
	return c
}

// Cluster is a loaded (or to be loaded) layout: which host holds which
// endpoint, block and namespace. Every record is a pure function of the
// Config, so a later phase (churn, watchers, GC) can name records without
// reading them.
type Cluster struct {
	Config
	pool       *net.IPNet
	perHost    int // endpoints per host (the last host may hold fewer)
	blocksHost int // blocks per host
	blockAddrs int
	firstBlock int // block index of host 0's first block (block 0 holds the pool's network address)
}

// New lays out a cluster.
func New(c Config) (*Cluster, error) {
	c = c.withDefaults()
	_, pool, err := net.ParseCIDR(c.Pool)
	if err != nil || pool.IP.To4() == nil {
		return nil, fmt.Errorf("pool %q: want an IPv4 CIDR", c.Pool)
	}
	ones, _ := pool.Mask.Size()
	if c.BlockSize < ones || c.BlockSize > 30 {
		return nil, fmt.Errorf("block size /%d does not fit pool %s", c.BlockSize, c.Pool)
	}
	cl := &Cluster{Config: c, pool: pool, blockAddrs: 1 << (32 - c.BlockSize), firstBlock: 1}
	cl.perHost = (c.Endpoints + c.Hosts - 1) / c.Hosts
	cl.blocksHost = (cl.perHost + cl.blockAddrs - 1) / cl.blockAddrs
	if need, have := cl.firstBlock+c.Hosts*cl.blocksHost, 1<<(c.BlockSize-ones); need >= have {
		return nil, fmt.Errorf("pool %s holds %d /%d blocks; %d hosts x %d blocks need %d", c.Pool, have, c.BlockSize, c.Hosts, cl.blocksHost, need)
	}
	if c.NSPerHost > c.Profiles {
		return nil, fmt.Errorf("%d namespaces per host but only %d profiles", c.NSPerHost, c.Profiles)
	}
	return cl, nil
}

// Host is host i's name.
func (cl *Cluster) Host(i int) string { return fmt.Sprintf(cl.HostName, i) }

// Namespace is namespace n's name; its profile is model.K8sNamespaceProfile.
func (cl *Cluster) Namespace(n int) string { return fmt.Sprintf("scale-%04d", n) }

// HostNamespaces lists the namespaces of host h's workloads: the tags a
// tabby-node on h follows (one profile per namespace).
func (cl *Cluster) HostNamespaces(h int) []string {
	out := make([]string, cl.NSPerHost)
	for j := range out {
		out[j] = cl.Namespace((h*cl.NSPerHost + j) % cl.Profiles)
	}
	return out
}

// EndpointsOf is how many endpoints host h holds.
func (cl *Cluster) EndpointsOf(h int) int {
	n := cl.Endpoints - h*cl.perHost
	return max(0, min(n, cl.perHost))
}

// PerHost is the endpoints of a full host.
func (cl *Cluster) PerHost() int { return cl.perHost }

// BlocksPerHost is the blocks each host owns.
func (cl *Cluster) BlocksPerHost() int { return cl.blocksHost }

func (cl *Cluster) blockNet(h, j int) *net.IPNet {
	idx := cl.firstBlock + h*cl.blocksHost + j
	base := binary.BigEndian.Uint32(cl.pool.IP.To4()) + uint32(idx*cl.blockAddrs)
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, base)
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(cl.BlockSize, 32)}
}

// ContainerID is the container ID of host h's endpoint s.
func (cl *Cluster) ContainerID(h, s int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "scale %d %d", h, s))
	return hex.EncodeToString(sum[:])
}

// Endpoint is host h's endpoint s (0 <= s < EndpointsOf(h)): a Kubernetes
// pod as the CNI plugin records it.
func (cl *Cluster) Endpoint(h, s int) *model.Endpoint {
	ns := cl.HostNamespaces(h)[s%cl.NSPerHost]
	pod := fmt.Sprintf("pod-%05d-%03d", h, s)
	cid := cl.ContainerID(h, s)
	ip := cl.addr(h, s)
	return &model.Endpoint{Host: cl.Host(h), Orchestrator: model.OrchestratorK8s, Workload: ns + "." + pod, Name: "eth0",
		ContainerID: cid, Network: cl.Network, Netns: "/var/run/netns/cni-" + cid[:8] + "-" + cid[8:12], IfName: "eth0",
		HostInterface: "tby" + cid[:11], MAC: fmt.Sprintf("ee:ee:%02x:%02x:%02x:%02x", ip[0], ip[1], ip[2], ip[3]),
		IPv4Nets: []string{ip.String() + "/32"}, Profiles: []string{model.K8sNamespaceProfile(ns)},
		Handle: model.HandleID(cl.Network, cid), Namespace: ns,
		Labels: map[string]string{"app": fmt.Sprintf("app-%d", s%10), "tier": "web", "pod-template-hash": cid[12:22]},
		Ports:  []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 8080}}}
}

func (cl *Cluster) addr(h, s int) net.IP {
	b := cl.blockNet(h, s/cl.blockAddrs)
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, binary.BigEndian.Uint32(b.IP)+uint32(s%cl.blockAddrs))
	return ip
}

// Ordinal is the slot of host h's endpoint s in its block.
func (cl *Cluster) Ordinal(h, s int) int { return s % cl.blockAddrs }

// Handle is the IPAM handle of host h's endpoint s.
func (cl *Cluster) Handle(h, s int) model.Handle {
	cid := cl.ContainerID(h, s)
	b := cl.blockNet(h, s/cl.blockAddrs)
	return model.Handle{ID: model.HandleID(cl.Network, cid), Network: cl.Network, ContainerID: cid, IfName: "eth0",
		Host: cl.Host(h), Workload: cl.Endpoint(h, s).Workload, Plugin: "tabby", IPs: []string{cl.addr(h, s).String()},
		Blocks: []string{model.BlockKey(cl.Pool, b.String())}, Created: 1780000000}
}

// HostRecord is host h's node record. Its address is in 100.64.0.0/10 and
// reaches nothing: no real host peers with simulated ones (the loader turns
// the BGP full mesh off, as a cluster of this size uses route reflectors).
func (cl *Cluster) HostRecord(h int) model.Host {
	return model.Host{Name: cl.Host(h), IPv4: fmt.Sprintf("100.%d.%d.%d/10", 64+(h>>16)&63, (h>>8)&255, h&255),
		ASNumber: model.DefaultASNumber, Version: "scale-sim"}
}

// hostOps are host h's node record, blocks (every endpoint's address
// allocated) and affinities.
func (cl *Cluster) hostOps(h int) []store.Op {
	ops := []store.Op{store.Put(model.NodeKey(cl.Host(h)), store.MustJSON(cl.HostRecord(h)))}
	n := cl.EndpointsOf(h)
	for j := 0; j < cl.blocksHost; j++ {
		bn := cl.blockNet(h, j)
		b := model.Block{CIDR: bn.String(), Pool: cl.Pool, Affinity: cl.Host(h), Allocations: make([]*model.Allocation, cl.blockAddrs)}
		for o := 0; o < cl.blockAddrs; o++ {
			if s := j*cl.blockAddrs + o; s < n {
				b.Allocations[o] = &model.Allocation{Handle: model.HandleID(cl.Network, cl.ContainerID(h, s)), Network: cl.Network,
					Host: cl.Host(h), Workload: cl.Endpoint(h, s).Workload}
			}
		}
		ops = append(ops, store.Put(model.BlockKey(cl.Pool, bn.String()), store.MustJSON(b)),
			store.Put(model.AffinityKey(cl.Host(h), bn.String()), store.MustJSON(model.Affinity{Host: cl.Host(h), Block: bn.String(), Pool: cl.Pool})))
	}
	return ops
}

// EndpointOps are the writes of host h's endpoint s: the endpoint with its
// tag and member entries (pkg/workload, as the CNI plugin writes them) and
// its IPAM handle.
func (cl *Cluster) EndpointOps(h, s int) []store.Op {
	e := cl.Endpoint(h, s)
	return append(workload.Ops(nil, e), store.Put(model.HandleKey(cl.Network, e.ContainerID), store.MustJSON(cl.Handle(h, s))))
}

// globalOps: the pool, BGP configuration (mesh off), profiles and namespaces.
func (cl *Cluster) globalOps() []store.Op {
	ops := []store.Op{
		store.Put(model.PoolKey(cl.Pool), store.MustJSON(model.Pool{CIDR: cl.Pool, BlockSize: cl.BlockSize, IPIPMode: model.EncapNever, VXLANMode: model.EncapNever})),
		store.Put(model.BGPConfigKey, store.MustJSON(model.BGPConfig{ASNumber: model.DefaultASNumber, Mesh: false})),
	}
	for n := 0; n < cl.Profiles; n++ {
		ns := cl.Namespace(n)
		ops = append(ops, store.Put(model.ProfileKey(model.K8sNamespaceProfile(ns)), store.MustJSON(ProfileVersion(model.K8sNamespaceProfile(ns), 0))),
			store.Put(model.NamespaceKey(ns), store.MustJSON(model.Namespace{Name: ns, Labels: map[string]string{"team": fmt.Sprintf("t%d", n%50)}})))
	}
	return ops
}

// ProfileVersion is profile name's record at edit v: the default rules plus
// v-dependent allowed port, so that every edit changes the record.
func ProfileVersion(name string, v int) model.Profile {
	p := model.DefaultProfile(name)
	p.Inbound = append(p.Inbound, model.Rule{Action: model.ActionAllow, Protocol: "tcp", DstPorts: fmt.Sprint(10000 + v%50000)})
	return p
}

// Stats is what a load did.
type Stats struct {
	Keys     int64         `json:"keys"`
	Txns     int64         `json:"txns"`
	Bytes    int64         `json:"bytes"` // keys and values written
	Duration time.Duration `json:"duration_ns"`
}

// Load writes the whole cluster. progress, when set, is called about every
// second with the hosts done so far.
func (cl *Cluster) Load(ctx context.Context, cli *clientv3.Client, progress func(hostsDone int, st Stats)) (Stats, error) {
	return cl.LoadRange(ctx, cli, 0, cl.Hosts, progress)
}

// LoadRange writes hosts [from, to) and their workloads, and the shared
// records (pool, profiles, namespaces) when from is 0: the load in stages,
// with the datastore measured between them. progress counts hosts from
// from.
func (cl *Cluster) LoadRange(ctx context.Context, cli *clientv3.Client, from, to int, progress func(hostsDone int, st Stats)) (Stats, error) {
	if from < 0 || to > cl.Hosts || from > to {
		return Stats{}, fmt.Errorf("load: hosts %d to %d of %d", from, to, cl.Hosts)
	}
	start := time.Now()
	var st Stats
	var keys, txns, bytes atomic.Int64
	commit := func(ops []store.Op) error {
		if len(ops) == 0 {
			return nil
		}
		cops := make([]clientv3.Op, len(ops))
		var b int64
		for i, o := range ops {
			if o.Kind != store.OpPut {
				return fmt.Errorf("load: only puts, got %v on %s", o.Kind, o.Key)
			}
			cops[i] = clientv3.OpPut(o.Key, string(o.Value))
			b += int64(len(o.Key) + len(o.Value))
		}
		var err error
		for try := 0; try < 5; try++ {
			tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			_, err = cli.Txn(tctx).Then(cops...).Commit()
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(try+1) * 200 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("load: txn of %d ops from %s: %w", len(ops), ops[0].Key, err)
		}
		keys.Add(int64(len(ops)))
		txns.Add(1)
		bytes.Add(b)
		return nil
	}
	if from == 0 {
		if err := chunks(cl.globalOps(), cl.MaxOps, commit); err != nil {
			return st, err
		}
	}
	var done atomic.Int64
	hosts := make(chan int)
	errc := make(chan error, cl.Writers)
	var wg sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < cl.Writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := range hosts {
				ops := cl.hostOps(h)
				for s := 0; s < cl.EndpointsOf(h); s++ {
					ops = append(ops, cl.EndpointOps(h, s)...)
				}
				if err := chunks(ops, cl.MaxOps, commit); err != nil {
					errc <- err
					cancel()
					return
				}
				done.Add(1)
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	report := func() {
		if progress != nil {
			progress(int(done.Load()), Stats{Keys: keys.Load(), Txns: txns.Load(), Bytes: bytes.Load(), Duration: time.Since(start)})
		}
	}
feed:
	for h := from; h < to; h++ {
		for {
			select {
			case hosts <- h:
				continue feed
			case <-wctx.Done():
				break feed
			case <-tick.C:
				report()
			}
		}
	}
	close(hosts)
	wg.Wait()
	report()
	st = Stats{Keys: keys.Load(), Txns: txns.Load(), Bytes: bytes.Load(), Duration: time.Since(start)}
	select {
	case err := <-errc:
		return st, err
	default:
	}
	return st, ctx.Err()
}

// chunks commits ops in pieces of at most n.
func chunks(ops []store.Op, n int, commit func([]store.Op) error) error {
	for len(ops) > 0 {
		k := min(n, len(ops))
		if err := commit(ops[:k]); err != nil {
			return err
		}
		ops = ops[k:]
	}
	return nil
}

// Percentile is the p-th percentile (0-100) of sorted durations, by the
// nearest-rank method.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
