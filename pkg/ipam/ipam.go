// Package ipam hands out addresses from pools in host-affine blocks, stored in
// etcd. Every change is one etcd transaction guarded by the revisions of all
// keys it read, so concurrent hosts never hand out an address twice and a
// process killed at any line leaves either nothing or a complete allocation
// that its handle names.
//
// Unlike Calico's pending/confirmed affinity dance (needed where the datastore
// has no multi-key transactions), a block, its affinity and the first
// allocation in it are written in one transaction: a claim either fully
// happens or not at all.
package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// IPAM allocates for one host.
type IPAM struct {
	KV   store.KV
	Host string
	// LockDir, when set, holds a per-host lock file so concurrent local ADDs
	// queue instead of racing on the same block.
	LockDir string
	// Trace, when set, is told each phase an assignment has passed
	// ("ipam_lock": the host lock taken and its cache read; "ipam_decide":
	// the allocation decided from that cache; "ipam_txn": its round trip
	// returned; a conflict's reading retry follows it), for the plugin's
	// step log.
	Trace func(step string)
}

func (a *IPAM) trace(step string) {
	if a.Trace != nil {
		a.Trace(step)
	}
}

// Request asks for the addresses of one attachment.
type Request struct {
	Network, ContainerID, IfName, Workload, Plugin string
	IPv4, IPv6                                     bool // auto-assign one address of the family
	Pools4, Pools6                                 []string
	Static                                         []net.IP // exact addresses; replace auto for their family
	StrictAffinity                                 bool     // never borrow from another host's block
	// GatewayFirst keeps each block's first address free for auto-assignment:
	// networks whose result is the block prefix use it as the gateway.
	GatewayFirst bool
	// Also, when set, adds writes that must commit in the same transaction
	// as the allocation (the CNI plugin's endpoint record): they see the
	// addresses, and read through the same ReadSet.
	Also func(rs *store.ReadSet, out []Assigned) ([]store.Op, error)
}

// Assigned is one address handed out.
type Assigned struct {
	IP    net.IP
	Block *net.IPNet
	Pool  model.Pool
}

// errHandleExists makes Assign answer from the existing handle.
var errHandleExists = errors.New("handle exists")

func (a *IPAM) lock() (func(), error) {
	if a.LockDir == "" {
		return func() {}, nil
	}
	// The state dir is root's alone (tabby-node makes it so too).
	if err := os.MkdirAll(a.LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(a.LockDir, "ipam.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ipam lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("ipam lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// meta is what Assign reads before it decides: the handle, the pools and the
// host's affinities, in one round trip.
type meta struct {
	handle     *model.Handle
	pools      []model.Pool
	poolKVs    []store.KeyValue
	affineKeys []string // block keys of this host's blocks
	// full: blocks the host cache knows to have no free address (as of
	// the revision the commit compares), which the decision skips
	// without decoding them.
	full   map[string]bool
	schema *store.KeyValue // the schema record as read (nil: absent)
}

// readMeta reads, in one round trip, the handle, the pools, this host's
// affinities and the blocks the state dir remembers as this host's (so that
// in the common case the allocation needs no second read), plus any extra
// gets the caller wants to piggyback (the CNI plugin's endpoint).
func (a *IPAM) readMeta(ctx context.Context, hkey string, extra []store.Op, cache *hostCache) (*meta, store.Seed, [][]store.KeyValue, error) {
	cached := cache.blockKeys()
	ops := []store.Op{
		store.Get(hkey),
		{Kind: store.OpGet, Key: model.PoolPrefix, Prefix: true},
		{Kind: store.OpGet, Key: model.AffinityHostPrefix(a.Host), Prefix: true},
	}
	for _, k := range cached {
		ops = append(ops, store.Get(k))
	}
	ops = append(ops, extra...)
	// The schema record rides along (no extra round trip): a store that
	// only newer binaries may write is refused before anything is written.
	ops = append(ops, store.Get(model.SchemaKey))
	res, err := a.KV.Txn(ctx, nil, ops)
	if err != nil {
		return nil, nil, nil, err
	}
	m := &meta{}
	if sch := res.Gets[len(res.Gets)-1]; len(sch) > 0 {
		m.schema = &sch[0]
		var s model.Schema
		if err := store.DecodeRecord(sch[0].Key, sch[0].Value, &s); err != nil {
			return nil, nil, nil, err
		}
		if err := s.Check(); err != nil {
			return nil, nil, nil, cnierr.New(cnierr.DatastoreFormat, "%v", err)
		}
	}
	res.Gets = res.Gets[:len(res.Gets)-1]
	if len(res.Gets[0]) > 0 {
		m.handle = &model.Handle{}
		if err := store.DecodeRecord(res.Gets[0][0].Key, res.Gets[0][0].Value, m.handle); err != nil {
			return nil, nil, nil, err
		}
	}
	m.poolKVs = res.Gets[1]
	for _, kv := range res.Gets[1] {
		var p model.Pool
		if err := store.DecodeRecord(kv.Key, kv.Value, &p); err != nil {
			return nil, nil, nil, err
		}
		m.pools = append(m.pools, p)
	}
	for _, kv := range res.Gets[2] {
		var af model.Affinity
		if err := store.DecodeRecord(kv.Key, kv.Value, &af); err != nil {
			return nil, nil, nil, err
		}
		m.affineKeys = append(m.affineKeys, model.BlockKey(af.Pool, af.Block))
	}
	sort.Strings(m.affineKeys)
	seed := store.SeedFrom(append([]string{hkey}, cached...), append(res.Gets[:1:1], res.Gets[3:3+len(cached)]...))
	extras := res.Gets[3+len(cached):]
	// The caller's single-key gets are part of what it decides on.
	for i, op := range extra {
		if op.Kind == store.OpGet && !op.Prefix {
			seed[op.Key] = nil
			if len(extras[i]) > 0 {
				v := extras[i][0]
				seed[op.Key] = &v
			}
		}
	}
	return m, seed, extras, nil
}

// Pools reads every pool.
func Pools(ctx context.Context, kv store.KV) ([]model.Pool, error) {
	return store.ListJSON[model.Pool](ctx, kv, model.PoolPrefix)
}

func poolFor(pools []model.Pool, ip net.IP) *model.Pool {
	for i := range pools {
		if pools[i].IPNet().Contains(ip) {
			return &pools[i]
		}
	}
	return nil
}

// allowedPools picks the enabled pools of one family, restricted to names when given.
func allowedPools(pools []model.Pool, v6 bool, names []string) ([]model.Pool, error) {
	var out []model.Pool
	if len(names) > 0 {
		for _, n := range names {
			c, err := model.CanonicalCIDR(n)
			if err != nil {
				return nil, cnierr.New(cnierr.NoPool, "pool %q in the IPAM configuration: %v", n, err)
			}
			var found *model.Pool
			for i := range pools {
				if pools[i].CIDR == c.String() {
					found = &pools[i]
				}
			}
			if found == nil {
				return nil, cnierr.New(cnierr.NoPool, "pool %s named in the IPAM configuration does not exist; create it with 'tabbyctl pool add %s'", c, c)
			}
			if found.IsV6() != v6 {
				return nil, cnierr.New(cnierr.NoPool, "pool %s is listed under the wrong family", c)
			}
			if found.Disabled {
				return nil, cnierr.New(cnierr.PoolDisabled, "pool %s is disabled; enable it or choose another pool", c)
			}
			out = append(out, *found)
		}
		return out, nil
	}
	for _, p := range pools {
		if p.IsV6() == v6 && !p.Disabled {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return nil, cnierr.New(cnierr.NoPool, "no enabled %s pool; create one with 'tabbyctl pool add CIDR'", fam)
	}
	return out, nil
}

// reserved reports addresses never auto-assigned: the network and broadcast
// address of an IPv4 pool, which some software refuses as a host address.
func reserved(pool *net.IPNet, ip net.IP) bool {
	if ip.To4() == nil {
		return false
	}
	return ip.Equal(pool.IP) || ip.Equal(lastIP(pool))
}

// Assign allocates the request's addresses and records them under its handle.
// A repeated Assign with the same handle returns the addresses it already has.
func (a *IPAM) Assign(ctx context.Context, req Request) (*model.Handle, []Assigned, error) {
	r, err := a.AssignWith(ctx, req, nil)
	if err != nil {
		return nil, nil, err
	}
	return r.Handle, r.Assigned, nil
}

// Assignment is what AssignWith did.
type Assignment struct {
	Handle   *model.Handle
	Assigned []Assigned
	// Extras are the results of the caller's extra gets.
	Extras [][]store.KeyValue
	// Created: this call allocated (and committed Request.Also's writes);
	// false: the handle existed and its addresses were returned as they are.
	Created bool
}

// AssignWith is Assign that also runs the caller's extra gets in its first
// round trip and returns their results (from the last attempt's read).
func (a *IPAM) AssignWith(ctx context.Context, req Request, extra []store.Op) (*Assignment, error) {
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	hkey := model.HandleKey(req.Network, req.ContainerID)
	cache := a.loadCache()
	a.trace("ipam_lock")
	// The common case: decide from this host's cache and commit in one round
	// trip, the caller's gets riding along.
	if cache != nil {
		if m, seed, err := cache.meta(a.Host); err == nil {
			seed[hkey] = nil
			for _, op := range extra {
				if op.Kind == store.OpGet && !op.Prefix {
					seed[op.Key] = nil
				}
			}
			d := &decision{}
			decide := a.decide(ctx, req, hkey, m, d)
			res, ok, err := store.CommitFrom(ctx, a.KV, seed, func(rs *store.ReadSet) ([]store.Op, error) {
				ops, err := decide(rs)
				a.trace("ipam_decide")
				return ops, err
			}, extra)
			a.trace("ipam_txn")
			if err == nil && ok {
				a.updateCache(cache, nil, nil, d.written, res.Revision)
				a.saveNote(hkey, d.ops, res.Revision)
				return &Assignment{Handle: d.handle, Assigned: d.out, Extras: res.Gets, Created: true}, nil
			}
			if err != nil && store.IsUnavailable(err) {
				return nil, err
			}
		}
	}
	for attempt := 0; attempt < 3; attempt++ {
		m, seed, extras, err := a.readMeta(ctx, hkey, extra, cache)
		if err != nil {
			return nil, err
		}
		if m.handle != nil {
			// Container IDs are per host; the same ID on another host is
			// another container, and must not be handed this one's addresses.
			if m.handle.Host != "" && m.handle.Host != a.Host {
				return nil, cnierr.New(cnierr.AddressInUse, "container ID %s of network %s already holds %v on host %s; container IDs must be unique across hosts",
					req.ContainerID, req.Network, m.handle.IPs, m.handle.Host)
			}
			h, out, err := a.existing(m.handle, m.pools)
			if err != nil {
				return nil, err
			}
			return &Assignment{Handle: h, Assigned: out, Extras: extras}, nil
		}
		d := &decision{}
		rev, err := store.ReadModifyWriteFrom(ctx, a.KV, seed, append([]string{hkey}, m.affineKeys...), a.decide(ctx, req, hkey, m, d))
		if errors.Is(err, errHandleExists) {
			continue
		}
		if err != nil {
			return nil, err
		}
		a.updateCache(&hostCache{Schema: m.schema}, m.poolKVs, d.read, d.written, rev)
		a.saveNote(hkey, d.ops, rev)
		return &Assignment{Handle: d.handle, Assigned: d.out, Extras: refreshExtras(extra, extras, d.read), Created: true}, nil
	}
	return nil, store.ErrConflict
}

func (a *IPAM) existing(h *model.Handle, pools []model.Pool) (*model.Handle, []Assigned, error) {
	var out []Assigned
	for _, s := range h.IPs {
		ip := net.ParseIP(s)
		p := poolFor(pools, ip)
		if p == nil {
			return nil, nil, fmt.Errorf("handle %s holds %s, which is in no pool any more", h.ID, s)
		}
		out = append(out, Assigned{IP: ip, Block: blockOf(ip, p.BlockSize), Pool: *p})
	}
	return h, out, nil
}

// alloc is the state of one attempt: blocks changed so far, keyed by block key.
type alloc struct {
	a       *IPAM
	ctx     context.Context
	rs      *store.ReadSet
	req     Request
	handle  string
	blocks  map[string]*model.Block
	created map[string]bool
	out     []Assigned
}

func (al *alloc) block(key string) (*model.Block, error) {
	if b, ok := al.blocks[key]; ok {
		return b, nil
	}
	var b model.Block
	ok, err := al.rs.Decode(key, &b)
	if err != nil || !ok {
		return nil, err
	}
	al.blocks[key] = &b
	return &b, nil
}

func (al *alloc) take(b *model.Block, key string, pool model.Pool, ord int) {
	_, n, _ := net.ParseCIDR(b.CIDR)
	b.Allocations[ord] = &model.Allocation{Handle: model.HandleID(al.req.Network, al.req.ContainerID), Network: al.req.Network, Host: al.a.Host, Workload: al.req.Workload}
	al.out = append(al.out, Assigned{IP: nthIP(n, ord), Block: n, Pool: pool})
}

func (al *alloc) newBlock(pool model.Pool, n *net.IPNet) (*model.Block, string, error) {
	key := model.BlockKey(pool.CIDR, n.String())
	// Reading the absent key makes the commit require that it is still absent.
	if kv, err := al.rs.Raw(key); err != nil || kv != nil {
		return nil, "", err
	}
	b := &model.Block{CIDR: n.String(), Pool: pool.CIDR, Affinity: al.a.Host,
		Allocations: make([]*model.Allocation, blockLen(pool.BlockSize, pool.IsV6()))}
	al.blocks[key] = b
	al.created[key] = true
	return b, key, nil
}

// freeOrdinal finds a free auto-assignable slot in b.
func freeOrdinal(b *model.Block, pool *net.IPNet) int { return freeOrdinalFrom(b, pool, 0) }

func (al *alloc) free(b *model.Block, pool *net.IPNet) int {
	if al.req.GatewayFirst {
		return freeOrdinalFrom(b, pool, 1)
	}
	return freeOrdinalFrom(b, pool, 0)
}

func freeOrdinalFrom(b *model.Block, pool *net.IPNet, first int) int {
	_, n, _ := net.ParseCIDR(b.CIDR)
	for i := first; i < len(b.Allocations); i++ {
		if b.Allocations[i] == nil && !reserved(pool, nthIP(n, i)) {
			return i
		}
	}
	return -1
}

func (al *alloc) static(pools []model.Pool, ip net.IP) error {
	p := poolFor(pools, ip)
	if p == nil {
		return cnierr.New(cnierr.NoPool, "address %s is outside every pool; add a pool that holds it or pick an address from 'tabbyctl pool show'", ip)
	}
	if p.Disabled {
		return cnierr.New(cnierr.PoolDisabled, "address %s is in pool %s, which is disabled", ip, p.CIDR)
	}
	bn := blockOf(ip, p.BlockSize)
	key := model.BlockKey(p.CIDR, bn.String())
	b, err := al.block(key)
	if err != nil {
		return err
	}
	if b == nil {
		if b, _, err = al.newBlock(*p, bn); err != nil {
			return err
		}
		if b == nil {
			return store.ErrConflict
		}
	} else if b.Affinity != al.a.Host && al.req.StrictAffinity {
		return cnierr.New(cnierr.NotAffine, "address %s is in block %s of host %s and strict affinity forbids borrowing it", ip, b.CIDR, b.Affinity)
	}
	ord := ordinalOf(bn, ip)
	if s := b.Allocations[ord]; s != nil {
		return cnierr.New(cnierr.AddressInUse, "address %s is already in use by %s on host %s; release it ('tabbyctl ipam release --ip %s') or choose another", ip, s.Handle, s.Host, ip)
	}
	al.take(b, key, *p, ord)
	return nil
}

func (al *alloc) auto(m *meta, v6 bool, names []string) error {
	pools, err := allowedPools(m.pools, v6, names)
	if err != nil {
		return err
	}
	inPool := func(key string) *model.Pool {
		for i := range pools {
			if strings.HasPrefix(key, model.BlockPoolPrefix(pools[i].CIDR)) {
				return &pools[i]
			}
		}
		return nil
	}
	// 1. This host's blocks, already fetched with the handle.
	for _, key := range m.affineKeys {
		p := inPool(key)
		if p == nil || m.full[key] {
			continue
		}
		b, err := al.block(key)
		if err != nil {
			return err
		}
		if b == nil || b.Affinity != al.a.Host {
			continue
		}
		if ord := al.free(b, p.IPNet()); ord >= 0 {
			al.take(b, key, *p, ord)
			return nil
		}
	}
	// 2. Claim a free block. Only this pool's block keys are listed, and only
	// on this rare path (once per block of addresses).
	for _, p := range pools {
		b, key, err := al.claim(p)
		if err != nil {
			return err
		}
		if b != nil {
			if ord := al.free(b, p.IPNet()); ord >= 0 {
				al.take(b, key, p, ord)
				return nil
			}
		}
	}
	// 3. Borrow one address from another host's block.
	if al.req.StrictAffinity {
		return cnierr.New(cnierr.PoolExhausted, "pools %s have no free block and strict affinity forbids borrowing; add a pool", poolNames(pools))
	}
	if al.rs.Offline() {
		return store.ErrNeedRead
	}
	for _, p := range pools {
		kvs, _, err := al.a.KV.List(al.ctx, model.BlockPoolPrefix(p.CIDR), false)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			var peek model.Block
			if json.Unmarshal(kv.Value, &peek) != nil || freeOrdinal(&peek, p.IPNet()) < 0 {
				continue
			}
			b, err := al.block(kv.Key)
			if err != nil {
				return err
			}
			if b == nil {
				continue
			}
			if ord := al.free(b, p.IPNet()); ord >= 0 {
				al.take(b, kv.Key, p, ord)
				return nil
			}
		}
	}
	return cnierr.New(cnierr.PoolExhausted, "pools %s are full; add a pool or release addresses ('tabbyctl ipam check')", poolNames(pools))
}

func poolNames(ps []model.Pool) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.CIDR)
	}
	return strings.Join(s, ", ")
}

// claim creates a new block for this host in pool p, or returns nil when the
// pool has no free block. The search starts at a host-specific offset so hosts
// claiming at the same moment rarely collide.
// Claiming probes candidate blocks, from a start that spreads hosts over
// the pool, a batch of keys per round trip; only a pool so full that the
// probes keep finding claimed blocks is listed (keys only). Listing first
// would read every claimed block key of the pool on every claim: 20,000
// keys at 10,000 hosts.
const (
	claimProbeBatch  = 16
	claimProbeRounds = 4
)

func (al *alloc) claim(p model.Pool) (*model.Block, string, error) {
	if al.rs.Offline() {
		return nil, "", store.ErrNeedRead
	}
	pn := p.IPNet()
	total := numBlocks(pn, p.BlockSize)
	h := fnv.New32a()
	h.Write([]byte(al.a.Host))
	start := int(h.Sum32()) % total
	probed := 0
	for round := 0; round < claimProbeRounds && probed < total; round++ {
		var keys []string
		var nets []*net.IPNet
		var ops []store.Op
		for len(keys) < claimProbeBatch && probed < total {
			n := nthBlock(pn, p.BlockSize, (start+probed)%total)
			probed++
			key := model.BlockKey(p.CIDR, n.String())
			if _, mine := al.blocks[key]; mine {
				continue
			}
			keys, nets, ops = append(keys, key), append(nets, n), append(ops, store.Get(key))
		}
		if len(ops) == 0 {
			continue
		}
		res, err := al.a.KV.Txn(al.ctx, nil, ops)
		if err != nil {
			return nil, "", err
		}
		for i, key := range keys {
			if len(res.Gets[i]) > 0 {
				continue
			}
			al.rs.Learn(key, nil) // absent: the commit requires it still is
			b, key, err := al.newBlock(p, nets[i])
			if err != nil {
				return nil, "", err
			}
			if b != nil {
				return b, key, nil
			}
		}
	}
	if probed >= total {
		return nil, "", nil
	}
	kvs, _, err := al.a.KV.List(al.ctx, model.BlockPoolPrefix(p.CIDR), true)
	if err != nil {
		return nil, "", err
	}
	used := map[string]bool{}
	for _, kv := range kvs {
		used[kv.Key] = true
	}
	for k := range al.blocks {
		used[k] = true
	}
	if len(used) >= total {
		return nil, "", nil
	}
	for i := probed; i < probed+total; i++ {
		n := nthBlock(pn, p.BlockSize, (start+i)%total)
		key := model.BlockKey(p.CIDR, n.String())
		if used[key] {
			continue
		}
		b, key, err := al.newBlock(p, n)
		if err != nil {
			return nil, "", err
		}
		if b != nil {
			return b, key, nil
		}
	}
	return nil, "", nil
}

// refreshExtras gives the caller its single-key gets as the committed
// attempt saw them (a retry may have re-read them).
func refreshExtras(extra []store.Op, got [][]store.KeyValue, read map[string]*store.KeyValue) [][]store.KeyValue {
	out := make([][]store.KeyValue, len(got))
	copy(out, got)
	for i, op := range extra {
		if op.Kind != store.OpGet || op.Prefix {
			continue
		}
		if v, ok := read[op.Key]; ok {
			out[i] = nil
			if v != nil {
				out[i] = []store.KeyValue{*v}
			}
		}
	}
	return out
}

// decision is what one allocation attempt decided.
type decision struct {
	handle  *model.Handle
	out     []Assigned
	written map[string]*model.Block // blocks the commit writes
	read    map[string]*store.KeyValue
	ops     []store.Op // what the commit writes, for the attachment's note
}

// decide returns the modify function of an allocation: it reads through the
// ReadSet (or, speculatively, only the seed) and returns the writes.
func (a *IPAM) decide(ctx context.Context, req Request, hkey string, m *meta, d *decision) func(rs *store.ReadSet) ([]store.Op, error) {
	return func(rs *store.ReadSet) ([]store.Op, error) {
		if kv, err := rs.Raw(hkey); err != nil {
			return nil, err
		} else if kv != nil {
			return nil, errHandleExists
		}
		al := &alloc{a: a, ctx: ctx, rs: rs, req: req, blocks: map[string]*model.Block{}, created: map[string]bool{}}
		has4, has6 := false, false
		for _, ip := range req.Static {
			if err := al.static(m.pools, ip); err != nil {
				return nil, err
			}
			if ip.To4() != nil {
				has4 = true
			} else {
				has6 = true
			}
		}
		if req.IPv4 && !has4 {
			if err := al.auto(m, false, req.Pools4); err != nil {
				return nil, err
			}
		}
		if req.IPv6 && !has6 {
			if err := al.auto(m, true, req.Pools6); err != nil {
				return nil, err
			}
		}
		if len(al.out) == 0 {
			return nil, cnierr.New(cnierr.NoPool, "nothing to assign: enable assign_ipv4 or assign_ipv6, or give an IP")
		}
		h := &model.Handle{ID: model.HandleID(req.Network, req.ContainerID), Network: req.Network, ContainerID: req.ContainerID,
			IfName: req.IfName, Host: a.Host, Workload: req.Workload, Plugin: req.Plugin, Created: time.Now().Unix()}
		ops := []store.Op{}
		for _, as := range al.out {
			bkey := model.BlockKey(as.Pool.CIDR, as.Block.String())
			h.IPs = append(h.IPs, as.IP.String())
			h.Blocks = append(h.Blocks, bkey)
		}
		for key, b := range al.blocks {
			if !touched(al.out, key) {
				continue
			}
			ops = append(ops, store.Put(key, store.MustJSON(b)))
			if al.created[key] {
				ops = append(ops, store.Put(model.AffinityKey(a.Host, b.CIDR), store.MustJSON(model.Affinity{Host: a.Host, Block: b.CIDR, Pool: b.Pool})))
			}
		}
		ops = append(ops, store.Put(hkey, store.MustJSON(h)))
		if req.Also != nil {
			more, err := req.Also(rs, al.out)
			if err != nil {
				return nil, err
			}
			ops = append(ops, more...)
		}
		d.handle, d.out, d.written, d.read, d.ops = h, al.out, map[string]*model.Block{}, rs.Values(), ops
		for key, b := range al.blocks {
			if touched(al.out, key) {
				d.written[key] = b
			}
		}
		return ops, nil
	}
}

func touched(out []Assigned, key string) bool {
	for _, as := range out {
		if model.BlockKey(as.Pool.CIDR, as.Block.String()) == key {
			return true
		}
	}
	return false
}

// Release frees every address of the handle. Releasing a missing handle is
// fine: DEL must be idempotent. A block left empty goes back to the pool,
// unless it is this host's last block of its pool with room (keepBlock).
func (a *IPAM) Release(ctx context.Context, network, containerID string) error {
	return a.ReleaseWith(ctx, network, containerID, nil, nil)
}

// ReleaseWith is Release that also reads keys and commits also's writes in
// the release's own transaction (the CNI plugin's DEL removes the endpoint
// record with its addresses: one etcd commit instead of two, and never one
// without the other). also runs even when the handle is gone.
func (a *IPAM) ReleaseWith(ctx context.Context, network, containerID string, keys []string, also func(rs *store.ReadSet) ([]store.Op, error)) error {
	unlock, err := a.lock()
	if err != nil {
		return err
	}
	defer unlock()
	hkey := model.HandleKey(network, containerID)
	defer a.dropNote(hkey)
	cache := a.loadCache()
	keep := a.keepBlock(cache)
	// The common case: this host's ADD left a note of what it wrote, and
	// the host cache holds the blocks; decide from them, one round trip.
	if seed := a.noteSeed(hkey, keys, cache); seed != nil {
		var written map[string]*model.Block
		res, ok, err := store.CommitFrom(ctx, a.KV, seed, releaseOps(hkey, nil, a.Host, keep, also, &written), nil)
		if err != nil && store.IsUnavailable(err) {
			return err
		}
		if err == nil && ok {
			a.afterRelease(cache, written, res.Revision)
			return nil
		}
	}
	written, rev, err := release(ctx, a.KV, hkey, nil, a.Host, keep, keys, also)
	if err == nil {
		a.afterRelease(cache, written, rev)
	}
	return err
}

// keepBlock says which block a release that empties it keeps: one of this
// host's blocks when, as far as the host cache knows, the host has no other
// block of that pool with room. A host whose blocks are full would
// otherwise claim a block on every ADD and return it on every DEL, each
// time probing the pool, writing the affinity, and announcing or
// withdrawing a route on every other host. The host keeps at most one such
// empty block per pool (Calico keeps every affine block); another host
// borrows from it when the pool runs out of blocks, and removing the pool
// takes it. Without a cache (no state dir) nothing is known and the block
// goes, as it does in GC.
func (a *IPAM) keepBlock(c *hostCache) func(key string, b *model.Block) bool {
	if c == nil {
		return nil
	}
	return func(key string, b *model.Block) bool {
		if b.Affinity != a.Host {
			return false
		}
		prefix := model.BlockPoolPrefix(b.Pool)
		for _, cb := range c.Blocks {
			if cb.Key != key && cb.Affinity == a.Host && !cb.Full && strings.HasPrefix(cb.Key, prefix) {
				return false
			}
		}
		return true
	}
}

func (a *IPAM) afterRelease(c *hostCache, written map[string]*model.Block, rev int64) {
	if len(written) == 0 || c == nil {
		return
	}
	a.updateCache(c, nil, nil, written, rev)
}

// releaseHandle frees the handle's addresses; with only set, just those
// addresses (and the handle survives while it holds others).
func releaseHandle(ctx context.Context, kv store.KV, hkey string, only net.IP) error {
	_, _, err := release(ctx, kv, hkey, only, "", nil, nil, nil)
	return err
}

// release frees the handle's addresses and returns the blocks it wrote (nil:
// deleted) and the revision of the commit. With host set, a handle another
// host holds is left alone (a DEL for a container ID that is another host's).
// keep is releaseOps'.
func release(ctx context.Context, kv store.KV, hkey string, only net.IP, host string, keep func(key string, b *model.Block) bool, keys []string, also func(rs *store.ReadSet) ([]store.Op, error)) (map[string]*model.Block, int64, error) {
	var written map[string]*model.Block
	rev, err := store.ReadModifyWrite(ctx, kv, append([]string{hkey}, keys...), releaseOps(hkey, only, host, keep, also, &written))
	return written, rev, err
}

// releaseOps is the modify function of a release; written gets the blocks
// the commit writes (nil: deleted). A block the release empties is deleted
// with its affinity unless keep (nil: none) keeps it.
func releaseOps(hkey string, only net.IP, host string, keep func(key string, b *model.Block) bool, also func(rs *store.ReadSet) ([]store.Op, error), written *map[string]*model.Block) func(rs *store.ReadSet) ([]store.Op, error) {
	return func(rs *store.ReadSet) ([]store.Op, error) {
		*written = nil
		var extra []store.Op
		if also != nil {
			var err error
			if extra, err = also(rs); err != nil {
				return nil, err
			}
		}
		var h model.Handle
		ok, err := rs.Decode(hkey, &h)
		if err != nil {
			return nil, err
		}
		if !ok || (host != "" && h.Host != "" && h.Host != host) {
			if len(extra) > 0 {
				return extra, nil
			}
			return nil, store.ErrAbort
		}
		if err := rs.Fetch(h.Blocks...); err != nil {
			return nil, err
		}
		blocks := map[string]*model.Block{}
		var keepIPs, keepBlocks []string
		for i, s := range h.IPs {
			ip := net.ParseIP(s)
			if only != nil && !ip.Equal(only) {
				keepIPs, keepBlocks = append(keepIPs, s), append(keepBlocks, h.Blocks[i])
				continue
			}
			key := h.Blocks[i]
			b, ok := blocks[key]
			if !ok {
				b = &model.Block{}
				found, err := rs.Decode(key, b)
				if err != nil {
					return nil, err
				}
				if !found {
					continue
				}
				blocks[key] = b
			}
			_, n, _ := net.ParseCIDR(b.CIDR)
			if ord := ordinalOf(n, ip); ord >= 0 && b.Allocations[ord] != nil && b.Allocations[ord].Handle == h.ID {
				b.Allocations[ord] = nil
			}
		}
		var ops []store.Op
		w := map[string]*model.Block{}
		*written = w
		for key, b := range blocks {
			if empty(b) && (keep == nil || !keep(key, b)) {
				ops = append(ops, DropBlock(key, b)...)
				w[key] = nil
			} else {
				ops = append(ops, store.Put(key, store.MustJSON(b)))
				w[key] = b
			}
		}
		if len(keepIPs) == 0 {
			ops = append(ops, store.Delete(hkey))
		} else {
			h.IPs, h.Blocks = keepIPs, keepBlocks
			ops = append(ops, store.Put(hkey, store.MustJSON(&h)))
		}
		return append(ops, extra...), nil
	}
}

func empty(b *model.Block) bool { return allocated(b) == 0 }

// allocated counts the block's addresses in use.
func allocated(b *model.Block) int {
	n := 0
	for _, s := range b.Allocations {
		if s != nil {
			n++
		}
	}
	return n
}

// DropBlock is the writes that return a block to its pool: the block goes
// with its host's affinity, never one without the other.
func DropBlock(key string, b *model.Block) []store.Op {
	return []store.Op{store.Delete(key), store.Delete(model.AffinityKey(b.Affinity, b.CIDR))}
}

// Lookup returns the allocation that holds ip, with its block, or nil.
func Lookup(ctx context.Context, kv store.KV, ip net.IP) (*model.Allocation, *model.Block, error) {
	pools, err := Pools(ctx, kv)
	if err != nil {
		return nil, nil, err
	}
	p := poolFor(pools, ip)
	if p == nil {
		return nil, nil, cnierr.New(cnierr.NoPool, "address %s is outside every pool", ip)
	}
	bn := blockOf(ip, p.BlockSize)
	var b model.Block
	if _, err := store.GetJSON(ctx, kv, model.BlockKey(p.CIDR, bn.String()), &b); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	return b.Allocations[ordinalOf(bn, ip)], &b, nil
}

// ReleaseBlock returns an empty block, and its host's affinity, to the pool
// (tabbyctl ipam release --block): the block a DEL keeps for its host's
// next workload, when that host is gone for good. A block that still holds
// an address is refused.
func ReleaseBlock(ctx context.Context, kv store.KV, cidr string) error {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return cnierr.New(cnierr.BadArgs, "block %q is not a CIDR (e.g. 10.0.3.64/26)", cidr)
	}
	pools, err := Pools(ctx, kv)
	if err != nil {
		return err
	}
	p := poolFor(pools, ip)
	if p == nil {
		return cnierr.New(cnierr.NoPool, "block %s is outside every pool", n)
	}
	if ones, _ := n.Mask.Size(); ones != p.BlockSize || !n.IP.Equal(ip) {
		return cnierr.New(cnierr.BadArgs, "%s is not a block of pool %s, whose blocks are /%d (%s holds %s)", cidr, p.CIDR, p.BlockSize, blockOf(ip, p.BlockSize), ip)
	}
	key := model.BlockKey(p.CIDR, n.String())
	r, err := kv.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("block %s: %w", n, err)
	}
	var b model.Block
	if err := store.DecodeRecord(r.Key, r.Value, &b); err != nil {
		return err
	}
	if held := allocated(&b); held > 0 {
		return fmt.Errorf("block %s still holds %d addresses; release them first ('tabbyctl ipam show' lists them)", n, held)
	}
	res, err := kv.Txn(ctx, []store.Cmp{{Key: key, ModRev: r.ModRev}}, DropBlock(key, &b))
	if err != nil {
		return err
	}
	if !res.Succeeded {
		return fmt.Errorf("block %s changed while releasing it; try again", n)
	}
	return nil
}

// ReleaseIP frees one address whatever holds it (tabbyctl ipam release).
func ReleaseIP(ctx context.Context, kv store.KV, ip net.IP) error {
	al, _, err := Lookup(ctx, kv, ip)
	if err != nil {
		return err
	}
	if al == nil {
		return cnierr.New(cnierr.AddressInUse, "address %s is not allocated", ip)
	}
	cid := strings.TrimPrefix(al.Handle, al.Network+".")
	return releaseHandle(ctx, kv, model.HandleKey(al.Network, cid), ip)
}

// Attachment is a (container, interface) the runtime still uses.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// GC releases every handle of network on this host that no valid
// attachment names, and returns the handles it released. A runtime knows
// only its own host's attachments, so another host's handles are never
// touched. It reads this host's own allocations, not the network's handle
// list (a million handles at 10,000 hosts, on every host's GC): the
// allocations in this host's blocks, and the attachment notes of its ADDs,
// which also name the addresses it borrowed from other hosts' blocks.
func (a *IPAM) GC(ctx context.Context, network string, valid []Attachment) ([]string, error) {
	own, err := a.ownHandles(ctx, network)
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, v := range valid {
		keep[v.ContainerID] = true
	}
	var released []string
	for _, cid := range own {
		if keep[cid] {
			continue
		}
		hkey := model.HandleKey(network, cid)
		written, _, err := release(ctx, a.KV, hkey, nil, a.Host, nil, nil, nil)
		if err != nil {
			return released, fmt.Errorf("release %s: %w", model.HandleID(network, cid), err)
		}
		a.dropNote(hkey)
		if len(written) > 0 {
			released = append(released, model.HandleID(network, cid))
		}
	}
	return released, nil
}

// ownHandles lists, sorted, the container IDs of network's handles that
// this host allocated: in its own blocks, and in its attachment notes.
func (a *IPAM) ownHandles(ctx context.Context, network string) ([]string, error) {
	affs, _, err := a.KV.List(ctx, model.AffinityHostPrefix(a.Host), false)
	if err != nil {
		return nil, err
	}
	var gets []store.Op
	for _, kv := range affs {
		var af model.Affinity
		if err := store.DecodeRecord(kv.Key, kv.Value, &af); err != nil {
			return nil, err
		}
		gets = append(gets, store.Get(model.BlockKey(af.Pool, af.Block)))
	}
	ids := map[string]bool{}
	prefix := network + "."
	for len(gets) > 0 {
		n := min(len(gets), 64)
		res, err := a.KV.Txn(ctx, nil, gets[:n])
		if err != nil {
			return nil, err
		}
		gets = gets[n:]
		for _, g := range res.Gets {
			for _, kv := range g {
				var b model.Block
				if err := store.DecodeRecord(kv.Key, kv.Value, &b); err != nil {
					return nil, err
				}
				for _, al := range b.Allocations {
					if al != nil && al.Network == network && al.Host == a.Host && strings.HasPrefix(al.Handle, prefix) {
						ids[strings.TrimPrefix(al.Handle, prefix)] = true
					}
				}
			}
		}
	}
	for _, hkey := range a.notedHandles() {
		if cid, ok := strings.CutPrefix(hkey, model.HandleNetworkPrefix(network)); ok && cid != "" && !strings.Contains(cid, "/") {
			ids[cid] = true
		}
	}
	out := make([]string, 0, len(ids))
	for id := range ids {
		out = append(out, id)
	}
	sort.Strings(out)
	return out, nil
}

// HasRoom reports whether some enabled pool of the family can still give an
// address (STATUS uses it). It lists block keys, so it is not for the ADD path.
func HasRoom(ctx context.Context, kv store.KV, v6 bool, names []string) error {
	pools, err := Pools(ctx, kv)
	if err != nil {
		return err
	}
	allowed, err := allowedPools(pools, v6, names)
	if err != nil {
		return err
	}
	for _, p := range allowed {
		kvs, _, err := kv.List(ctx, model.BlockPoolPrefix(p.CIDR), false)
		if err != nil {
			return err
		}
		if len(kvs) < numBlocks(p.IPNet(), p.BlockSize) {
			return nil
		}
		for _, r := range kvs {
			var b model.Block
			if json.Unmarshal(r.Value, &b) == nil && freeOrdinal(&b, p.IPNet()) >= 0 {
				return nil
			}
		}
	}
	return cnierr.New(cnierr.PoolExhausted, "pools %s are full", poolNames(allowed))
}

// CheckHandle verifies that the handle of (network, containerID) exists and
// that every address it names is still allocated to it in its block.
func CheckHandle(ctx context.Context, kv store.KV, network, containerID string) error {
	var h model.Handle
	if _, err := store.GetJSON(ctx, kv, model.HandleKey(network, containerID), &h); err != nil {
		return fmt.Errorf("no IPAM handle %s: %w", model.HandleID(network, containerID), err)
	}
	for _, s := range h.IPs {
		al, _, err := Lookup(ctx, kv, net.ParseIP(s))
		if err != nil {
			return err
		}
		if al == nil || al.Handle != h.ID {
			return fmt.Errorf("address %s of handle %s is not allocated to it in its block", s, h.ID)
		}
	}
	return nil
}
