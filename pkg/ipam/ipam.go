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
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

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
	if err := os.MkdirAll(a.LockDir, 0o755); err != nil {
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
	affineKeys []string // block keys of this host's blocks
}

// readMeta reads, in one round trip, the handle, the pools, this host's
// affinities and the blocks the state dir remembers as this host's (so that
// in the common case the allocation needs no second read), plus any extra
// gets the caller wants to piggyback (the CNI plugin's endpoint).
func (a *IPAM) readMeta(ctx context.Context, hkey string, extra []store.Op) (*meta, store.Seed, [][]store.KeyValue, error) {
	cached := a.cachedBlocks()
	ops := []store.Op{
		store.Get(hkey),
		{Kind: store.OpGet, Key: model.PoolPrefix, Prefix: true},
		{Kind: store.OpGet, Key: model.AffinityHostPrefix(a.Host), Prefix: true},
	}
	for _, k := range cached {
		ops = append(ops, store.Get(k))
	}
	ops = append(ops, extra...)
	res, err := a.KV.Txn(ctx, nil, ops)
	if err != nil {
		return nil, nil, nil, err
	}
	m := &meta{}
	if len(res.Gets[0]) > 0 {
		m.handle = &model.Handle{}
		if err := json.Unmarshal(res.Gets[0][0].Value, m.handle); err != nil {
			return nil, nil, nil, fmt.Errorf("decode handle %s: %w", hkey, err)
		}
	}
	for _, kv := range res.Gets[1] {
		var p model.Pool
		if err := json.Unmarshal(kv.Value, &p); err != nil {
			return nil, nil, nil, fmt.Errorf("decode pool %s: %w", kv.Key, err)
		}
		m.pools = append(m.pools, p)
	}
	for _, kv := range res.Gets[2] {
		var af model.Affinity
		if err := json.Unmarshal(kv.Value, &af); err != nil {
			return nil, nil, nil, fmt.Errorf("decode affinity %s: %w", kv.Key, err)
		}
		m.affineKeys = append(m.affineKeys, model.BlockKey(af.Pool, af.Block))
	}
	sort.Strings(m.affineKeys)
	seed := store.SeedFrom(append([]string{hkey}, cached...), append(res.Gets[:1:1], res.Gets[3:3+len(cached)]...))
	if !slices.Equal(cached, m.affineKeys) {
		a.cacheBlocks(m.affineKeys)
	}
	return m, seed, res.Gets[3+len(cached):], nil
}

// The state dir remembers this host's block keys; the affinity read in the
// same round trip verifies them, and a stale list only costs a read.
func (a *IPAM) cachedBlocks() []string {
	if a.LockDir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(a.LockDir, "ipam-blocks"))
	if err != nil {
		return nil
	}
	var keys []string
	for _, k := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(k, model.BlockPrefix) {
			keys = append(keys, k)
		}
	}
	if len(keys) > 64 { // a bound on the ADD's read size
		keys = keys[:64]
	}
	return keys
}

func (a *IPAM) cacheBlocks(keys []string) {
	if a.LockDir == "" {
		return
	}
	tmp := filepath.Join(a.LockDir, fmt.Sprintf(".ipam-blocks.%d", os.Getpid()))
	if os.WriteFile(tmp, []byte(strings.Join(keys, "\n")), 0o644) == nil {
		_ = os.Rename(tmp, filepath.Join(a.LockDir, "ipam-blocks"))
	}
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
				return nil, errf(CodeNoPool, "pool %q in the IPAM configuration: %v", n, err)
			}
			var found *model.Pool
			for i := range pools {
				if pools[i].CIDR == c.String() {
					found = &pools[i]
				}
			}
			if found == nil {
				return nil, errf(CodeNoPool, "pool %s named in the IPAM configuration does not exist; create it with 'tabbyctl pool add %s'", c, c)
			}
			if found.IsV6() != v6 {
				return nil, errf(CodeNoPool, "pool %s is listed under the wrong family", c)
			}
			if found.Disabled {
				return nil, errf(CodePoolDisabled, "pool %s is disabled; enable it or choose another pool", c)
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
		return nil, errf(CodeNoPool, "no enabled %s pool; create one with 'tabbyctl pool add CIDR'", fam)
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
	h, out, _, err := a.AssignWith(ctx, req, nil)
	return h, out, err
}

// AssignWith is Assign that also runs the caller's extra gets in its first
// round trip and returns their results (from the last attempt's read).
func (a *IPAM) AssignWith(ctx context.Context, req Request, extra []store.Op) (*model.Handle, []Assigned, [][]store.KeyValue, error) {
	unlock, err := a.lock()
	if err != nil {
		return nil, nil, nil, err
	}
	defer unlock()
	hkey := model.HandleKey(req.Network, req.ContainerID)
	for attempt := 0; attempt < 3; attempt++ {
		m, seed, extras, err := a.readMeta(ctx, hkey, extra)
		if err != nil {
			return nil, nil, nil, err
		}
		if m.handle != nil {
			h, out, err := a.existing(m.handle, m.pools)
			return h, out, extras, err
		}
		h, out, err := a.assign(ctx, req, hkey, m, seed)
		if errors.Is(err, errHandleExists) {
			continue
		}
		return h, out, extras, err
	}
	return nil, nil, nil, store.ErrConflict
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
		return errf(CodeNoPool, "address %s is outside every pool; add a pool that holds it or pick an address from 'tabbyctl pool show'", ip)
	}
	if p.Disabled {
		return errf(CodePoolDisabled, "address %s is in pool %s, which is disabled", ip, p.CIDR)
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
		return errf(CodeNotAffine, "address %s is in block %s of host %s and strict affinity forbids borrowing it", ip, b.CIDR, b.Affinity)
	}
	ord := ordinalOf(bn, ip)
	if s := b.Allocations[ord]; s != nil {
		return errf(CodeAddressInUse, "address %s is already in use by %s on host %s; release it ('tabbyctl ipam release --ip %s') or choose another", ip, s.Handle, s.Host, ip)
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
		if p == nil {
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
		return errf(CodePoolExhausted, "pools %s have no free block and strict affinity forbids borrowing; add a pool", poolNames(pools))
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
	return errf(CodePoolExhausted, "pools %s are full; add a pool or release addresses ('tabbyctl ipam check')", poolNames(pools))
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
func (al *alloc) claim(p model.Pool) (*model.Block, string, error) {
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
	pn := p.IPNet()
	total := numBlocks(pn, p.BlockSize)
	if len(used) >= total {
		return nil, "", nil
	}
	h := fnv.New32a()
	h.Write([]byte(al.a.Host))
	start := int(h.Sum32()) % total
	for i := 0; i < total; i++ {
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

func (a *IPAM) assign(ctx context.Context, req Request, hkey string, m *meta, seed store.Seed) (*model.Handle, []Assigned, error) {
	var handle *model.Handle
	var out []Assigned
	_, err := store.ReadModifyWriteFrom(ctx, a.KV, seed, append([]string{hkey}, m.affineKeys...), func(rs *store.ReadSet) ([]store.Op, error) {
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
			return nil, errf(CodeNoPool, "nothing to assign: enable assign_ipv4 or assign_ipv6, or give an IP")
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
		handle, out = h, al.out
		return ops, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return handle, out, nil
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
// fine: DEL must be idempotent. A block left empty goes back to the pool.
func (a *IPAM) Release(ctx context.Context, network, containerID string) error {
	unlock, err := a.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return releaseHandle(ctx, a.KV, model.HandleKey(network, containerID), nil)
}

// releaseHandle frees the handle's addresses; with only set, just those
// addresses (and the handle survives while it holds others).
func releaseHandle(ctx context.Context, kv store.KV, hkey string, only net.IP) error {
	_, err := store.ReadModifyWrite(ctx, kv, []string{hkey}, func(rs *store.ReadSet) ([]store.Op, error) {
		var h model.Handle
		ok, err := rs.Decode(hkey, &h)
		if err != nil {
			return nil, err
		}
		if !ok {
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
		for key, b := range blocks {
			if empty(b) {
				ops = append(ops, store.Delete(key), store.Delete(model.AffinityKey(b.Affinity, b.CIDR)))
			} else {
				ops = append(ops, store.Put(key, store.MustJSON(b)))
			}
		}
		if len(keepIPs) == 0 {
			ops = append(ops, store.Delete(hkey))
		} else {
			h.IPs, h.Blocks = keepIPs, keepBlocks
			ops = append(ops, store.Put(hkey, store.MustJSON(&h)))
		}
		return ops, nil
	})
	return err
}

func empty(b *model.Block) bool {
	for _, s := range b.Allocations {
		if s != nil {
			return false
		}
	}
	return true
}

// Lookup returns the allocation that holds ip, with its block, or nil.
func Lookup(ctx context.Context, kv store.KV, ip net.IP) (*model.Allocation, *model.Block, error) {
	pools, err := Pools(ctx, kv)
	if err != nil {
		return nil, nil, err
	}
	p := poolFor(pools, ip)
	if p == nil {
		return nil, nil, errf(CodeNoPool, "address %s is outside every pool", ip)
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

// ReleaseIP frees one address whatever holds it (tabbyctl ipam release).
func ReleaseIP(ctx context.Context, kv store.KV, ip net.IP) error {
	al, _, err := Lookup(ctx, kv, ip)
	if err != nil {
		return err
	}
	if al == nil {
		return errf(CodeAddressInUse, "address %s is not allocated", ip)
	}
	cid := strings.TrimPrefix(al.Handle, al.Network+".")
	return releaseHandle(ctx, kv, model.HandleKey(al.Network, cid), ip)
}

// Attachment is a (container, interface) the runtime still uses.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// GC releases every handle of network that no valid attachment names. It
// returns the handles it released.
func (a *IPAM) GC(ctx context.Context, network string, valid []Attachment) ([]string, error) {
	hs, err := store.ListJSON[model.Handle](ctx, a.KV, model.HandleNetworkPrefix(network))
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, v := range valid {
		keep[v.ContainerID] = true
	}
	var released []string
	for _, h := range hs {
		if keep[h.ContainerID] {
			continue
		}
		if err := releaseHandle(ctx, a.KV, model.HandleKey(network, h.ContainerID), nil); err != nil {
			return released, fmt.Errorf("release %s: %w", h.ID, err)
		}
		released = append(released, h.ID)
	}
	return released, nil
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
	return errf(CodePoolExhausted, "pools %s are full", poolNames(allowed))
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
