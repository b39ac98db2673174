package ipam

import (
	"context"
	"fmt"
	"hash/maphash"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Problem is one finding of Check.
type Problem struct {
	Kind   string `json:"kind"`
	IP     string `json:"ip,omitempty"`
	Handle string `json:"handle,omitempty"`
	Host   string `json:"host,omitempty"`
	Block  string `json:"block,omitempty"`
	Detail string `json:"detail"`
}

// Problem kinds.
const (
	LeakNoEndpoint   = "allocation-without-endpoint"
	LeakNoHandle     = "allocation-without-handle"
	OrphanHandle     = "handle-without-allocation"
	EndpointNoAlloc  = "endpoint-without-allocation"
	BlockUnknownHost = "block-of-unknown-host"
)

// Report is what `tabbyctl ipam check` prints.
type Report struct {
	Blocks      int       `json:"blocks"`
	Allocations int       `json:"allocations"`
	Handles     int       `json:"handles"`
	Endpoints   int       `json:"endpoints"`
	Problems    []Problem `json:"problems"`
}

// CheckOptions paces Check's walk of the datastore.
type CheckOptions struct {
	// PageSize is the most keys one read returns (DefaultCheckPage if 0).
	PageSize int
	// Rate bounds the keys read per second, re-reads included (a value
	// larger than keyBytes counts as several keys); 0 reads as fast as
	// etcd answers.
	Rate float64
	// Pacer, when set, replaces Rate (tests pace on a fake clock).
	Pacer Pacer
}

// DefaultCheckPage keeps each range small: etcd serves a range inside one
// read transaction, and others' requests queue behind a large one.
const DefaultCheckPage = 500

// DefaultCheckRate is tabbyctl's pace (keys/s). test/scale measured it:
// at this rate, on a million workloads (~2.3M keys paced), the check read
// for 10 minutes and others' write p99 was 1.2x theirs with the check
// held (docs/scale.md).
const DefaultCheckRate = 5000

// checkPageBytes caps a page's bytes: a page of 500 IPAM blocks is ~3 MB.
const checkPageBytes = 256 << 10

// keyBytes is what the pace counts as one key: an endpoint or a handle.
// A block (64 allocations, ~6 KB) costs etcd what a dozen of them do, and
// is paced as that many keys.
const keyBytes = 512

// Pacer spaces Check's reads. Wait is told how many keys were just read
// and returns once reading more keeps to the pace.
type Pacer interface {
	Wait(ctx context.Context, keys int) error
}

// NewRatePacer paces to rate keys per second.
func NewRatePacer(rate float64) Pacer {
	return &ratePacer{rate: rate, now: time.Now, sleep: sleepCtx}
}

type ratePacer struct {
	rate  float64
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
	next  time.Time // when the keys read so far are paid for
}

func (p *ratePacer) Wait(ctx context.Context, keys int) error {
	now := p.now()
	// Time spent waiting on etcd is not saved up: a slow page must not be
	// followed by a burst of fast ones, which is when others suffer most.
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(keys) / p.rate * float64(time.Second)))
	if d := p.next.Sub(now); d > 0 {
		return p.sleep(ctx, d)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type noPacer struct{}

func (noPacer) Wait(context.Context, int) error { return nil }

// Check cross-checks blocks, handles, endpoints and hosts as fast as etcd
// answers. It is meant for an operator's tool, never a data path.
func Check(ctx context.Context, kv store.KV) (*Report, error) {
	return CheckPaced(ctx, kv, CheckOptions{})
}

// CheckPaced cross-checks blocks, handles, endpoints and hosts. It walks
// each prefix in small pages at the given pace, so that a check of a
// million workloads lifts nobody's latency much, and keeps only what the
// cross-check needs: per allocation 16 bytes (its handle's hash, its
// ordinal, what names it), per block its key and host. The prefixes are
// read minutes apart, so an ADD or DEL in between looks like a leak or an
// orphan: every finding is read again (the block, handle, endpoint or host
// involved, by key) and reported only if it still holds.
func CheckPaced(ctx context.Context, kv store.KV, opt CheckOptions) (*Report, error) {
	c := &checker{kv: kv, seed: maphash.MakeSeed(), hosts: map[string]bool{}, byBase: map[netip.Addr]int32{}, pacer: opt.Pacer}
	if c.pacer == nil {
		c.pacer = noPacer{}
		if opt.Rate > 0 {
			c.pacer = NewRatePacer(opt.Rate)
		}
	}
	c.walk = store.WalkOptions{Limit: opt.PageSize, PageBytes: checkPageBytes,
		Pace: func(ctx context.Context, keys, bytes int) error { return c.pacer.Wait(ctx, max(keys, bytes/keyBytes)) }}
	if c.walk.Limit <= 0 {
		c.walk.Limit = DefaultCheckPage
	}
	for _, s := range []struct {
		prefix string
		each   func(store.KeyValue) error
	}{
		{model.NodePrefix, c.node},
		{model.BlockPrefix, c.block},
		{model.HandlePrefix, c.handle},
		{model.HostPrefix, c.endpoint},
	} {
		if _, err := store.Walk(ctx, kv, s.prefix, c.walk, func(p *store.Page) error {
			for _, r := range p.KVs {
				if err := s.each(r); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("ipam check: %w", err)
		}
		if s.prefix == model.BlockPrefix {
			c.blocksDone()
		}
	}
	if err := c.confirm(ctx, c.suspects()); err != nil {
		return nil, fmt.Errorf("ipam check: re-reading what it found: %w", err)
	}
	return &c.rep, nil
}

// What the walk saw name an allocation.
const (
	seenHandle = 1 << iota
	seenEndpoint
)

type checker struct {
	kv    store.KV
	walk  store.WalkOptions
	pacer Pacer
	seed  maphash.Seed
	rep   Report

	hosts   map[string]bool
	tunnels []netip.Addr
	blocks  []blockRec
	byBase  map[netip.Addr]int32 // a block's first address -> its index
	bits    []int                // the block sizes seen (prefix lengths)
	allocs  []allocRec           // every allocation, block by block, by ordinal
	named   []uint64             // sorted hashes of the handles allocations name
	// What the walk found outside blocks, in walk order.
	orphans []suspect
	strays  []suspect
}

type blockRec struct {
	key, cidr, affinity string
	first, n            int32 // its allocations: allocs[first:first+n]
	unknownHost         bool
}

type allocRec struct {
	handle uint64 // maphash of the handle ID
	ord    uint32
	seen   uint8
}

// suspect is a finding of the walk, to be read again.
type suspect struct {
	kind  string
	block int32 // index in blocks (block problems)
	ord   uint32
	ip    netip.Addr
	key   string // the handle's or the endpoint's key
	host  string
}

func (c *checker) hash(id string) uint64 { return maphash.String(c.seed, id) }

func (c *checker) node(r store.KeyValue) error {
	c.hosts[strings.TrimPrefix(r.Key, model.NodePrefix)] = true
	// A host's VXLAN and IPIP tunnel addresses are allocations that no
	// endpoint uses but its host record does: not leaks.
	var h struct{ VXLANTunnelAddr, IPIPTunnelAddr string }
	if store.DecodeJSON(r.Value, &h) == nil {
		for _, s := range []string{h.VXLANTunnelAddr, h.IPIPTunnelAddr} {
			if a, err := netip.ParseAddr(s); err == nil {
				c.tunnels = append(c.tunnels, a.Unmap())
			}
		}
	}
	return nil
}

func (c *checker) block(r store.KeyValue) error {
	var b model.Block
	if err := store.DecodeRecord(r.Key, r.Value, &b); err != nil {
		return err
	}
	pfx, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return fmt.Errorf("block %s: CIDR %q: %w", r.Key, b.CIDR, err)
	}
	pfx = pfx.Masked()
	c.rep.Blocks++
	i := int32(len(c.blocks))
	rec := blockRec{key: r.Key, cidr: b.CIDR, affinity: b.Affinity, first: int32(len(c.allocs))}
	// A block without an affinity is one whose host was retired while
	// others still held addresses it lent them: nobody's, not unknown.
	rec.unknownHost = len(c.hosts) > 0 && b.Affinity != "" && !c.hosts[b.Affinity]
	for ord, a := range b.Allocations {
		if a == nil {
			continue
		}
		c.allocs = append(c.allocs, allocRec{handle: c.hash(a.Handle), ord: uint32(ord)})
	}
	rec.n = int32(len(c.allocs)) - rec.first
	c.rep.Allocations += int(rec.n)
	c.blocks = append(c.blocks, rec)
	c.byBase[pfx.Addr()] = i
	if !slices.Contains(c.bits, pfx.Bits()) {
		c.bits = append(c.bits, pfx.Bits())
	}
	return nil
}

// blocksDone indexes the handles allocations name and marks the tunnel
// addresses, once every block is read.
func (c *checker) blocksDone() {
	c.named = make([]uint64, len(c.allocs))
	for i := range c.allocs {
		c.named[i] = c.allocs[i].handle
	}
	slices.Sort(c.named)
	c.named = slices.Compact(c.named)
	for _, a := range c.tunnels {
		if al := c.alloc(a); al != nil {
			al.seen |= seenEndpoint
		}
	}
	c.tunnels = nil
}

// locate finds the block that holds a and a's ordinal in it.
func (c *checker) locate(a netip.Addr) (int32, uint32, bool) {
	a = a.Unmap()
	for _, bits := range c.bits {
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		i, ok := c.byBase[p.Addr()]
		if !ok {
			continue
		}
		return i, offset(p.Addr(), a), true
	}
	return -1, 0, false
}

// offset is a's distance from base (blocks are far smaller than 2^32).
func offset(base, a netip.Addr) uint32 {
	x, y := base.As16(), a.As16()
	return beUint32(y[12:]) - beUint32(x[12:])
}

func beUint32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// alloc is the allocation record of a, or nil when a is not allocated.
func (c *checker) alloc(a netip.Addr) *allocRec {
	bi, ord, ok := c.locate(a)
	if !ok {
		return nil
	}
	b := c.blocks[bi]
	as := c.allocs[b.first : b.first+b.n]
	j := sort.Search(len(as), func(k int) bool { return as[k].ord >= ord })
	if j < len(as) && as[j].ord == ord {
		return &as[j]
	}
	return nil
}

func (c *checker) handle(r store.KeyValue) error {
	var h struct {
		ID, Host string
		IPs      []string
	}
	if err := store.DecodeRecord(r.Key, r.Value, &h); err != nil {
		return err
	}
	c.rep.Handles++
	hh := c.hash(h.ID)
	for _, s := range h.IPs {
		if a, err := netip.ParseAddr(s); err == nil {
			if al := c.alloc(a); al != nil && al.handle == hh {
				al.seen |= seenHandle
			}
		}
	}
	if _, ok := slices.BinarySearch(c.named, hh); !ok {
		c.orphans = append(c.orphans, suspect{kind: OrphanHandle, key: r.Key, host: h.Host})
	}
	return nil
}

func (c *checker) endpoint(r store.KeyValue) error {
	if _, _, _, _, ok := model.ParseEndpointKey(r.Key); !ok {
		return nil
	}
	// Only what the check needs: a full model.Endpoint (labels, ports,
	// profiles) costs several times the decoding and the garbage.
	var ep struct {
		Host               string
		IPv4Nets, IPv6Nets []string
	}
	if store.DecodeJSON(r.Value, &ep) != nil {
		return nil
	}
	c.rep.Endpoints++
	for _, n := range append(ep.IPv4Nets, ep.IPv6Nets...) {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			continue
		}
		if al := c.alloc(p.Addr()); al != nil {
			al.seen |= seenEndpoint
		} else {
			c.strays = append(c.strays, suspect{kind: EndpointNoAlloc, ip: p.Addr().Unmap(), key: r.Key, host: ep.Host})
		}
	}
	return nil
}

// suspects lists the walk's findings in the order Check reports them:
// block by block, then handles, then endpoints.
func (c *checker) suspects() []suspect {
	var out []suspect
	for bi, b := range c.blocks {
		if b.unknownHost {
			out = append(out, suspect{kind: BlockUnknownHost, block: int32(bi)})
		}
		for _, a := range c.allocs[b.first : b.first+b.n] {
			switch {
			case a.seen&seenHandle == 0:
				out = append(out, suspect{kind: LeakNoHandle, block: int32(bi), ord: a.ord})
			case a.seen&seenEndpoint == 0:
				out = append(out, suspect{kind: LeakNoEndpoint, block: int32(bi), ord: a.ord})
			}
		}
	}
	out = append(out, c.orphans...)
	out = append(out, c.strays...)
	c.orphans, c.strays = nil, nil
	return out
}

// confirmBatch is how many findings one round of re-reads covers: a few
// round trips per batch, whatever the number of findings.
const confirmBatch = 64

// confirm reads every finding of the walk again and reports those that
// still hold: what the walk saw minutes apart is compared again at one
// moment, so an ADD or DEL that was in flight is not reported.
func (c *checker) confirm(ctx context.Context, sus []suspect) error {
	if len(sus) == 0 {
		return nil
	}
	pools, err := Pools(ctx, c.kv)
	if err != nil {
		return err
	}
	if err := c.pacer.Wait(ctx, len(pools)); err != nil {
		return err
	}
	for len(sus) > 0 {
		n := min(len(sus), confirmBatch)
		ps, err := c.confirmBatch(ctx, pools, sus[:n])
		if err != nil {
			return err
		}
		c.rep.Problems = append(c.rep.Problems, ps...)
		sus = sus[n:]
	}
	return nil
}

// get reads keys by key, a Txn of point reads per 128, and returns those
// present.
func (c *checker) get(ctx context.Context, keys []string) (map[string]*store.KeyValue, error) {
	slices.Sort(keys)
	keys = slices.Compact(keys)
	out := make(map[string]*store.KeyValue, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), 128)
		ops := make([]store.Op, n)
		for i, k := range keys[:n] {
			ops[i] = store.Get(k)
		}
		res, err := c.kv.Txn(ctx, nil, ops)
		if err != nil {
			return nil, fmt.Errorf("re-read %d keys: %w", n, err)
		}
		for _, g := range res.Gets {
			for i := range g {
				out[g[i].Key] = &g[i]
			}
		}
		if err := c.pacer.Wait(ctx, n); err != nil {
			return nil, err
		}
		keys = keys[n:]
	}
	return out, nil
}

// blockKeyOf is the key of the block that would hold a, "" outside every pool.
func blockKeyOf(pools []model.Pool, a netip.Addr) string {
	ip := net.IP(a.AsSlice())
	p := poolFor(pools, ip)
	if p == nil {
		return ""
	}
	return model.BlockKey(p.CIDR, blockOf(ip, p.BlockSize).String())
}

// allocAt decodes the block at key and returns the allocation that holds
// ip in it, nil when the block or the allocation is gone.
func allocAt(got map[string]*store.KeyValue, key string, ip net.IP) (*model.Allocation, *model.Block, error) {
	r := got[key]
	if r == nil {
		return nil, nil, nil
	}
	var b model.Block
	if err := store.DecodeRecord(r.Key, r.Value, &b); err != nil {
		return nil, nil, err
	}
	_, bn, err := net.ParseCIDR(b.CIDR)
	if err != nil {
		return nil, nil, fmt.Errorf("block %s: CIDR %q: %w", key, b.CIDR, err)
	}
	ord := ordinalOf(bn, ip)
	if ord < 0 || ord >= len(b.Allocations) {
		return nil, &b, nil
	}
	return b.Allocations[ord], &b, nil
}

// handleKeyOf is the key of the handle an allocation names, "" when its
// name is not "<network>.<container>".
func handleKeyOf(al *model.Allocation) string {
	cid, ok := strings.CutPrefix(al.Handle, al.Network+".")
	if al.Network == "" || !ok || cid == "" {
		return ""
	}
	return model.HandleKey(al.Network, cid)
}

// leak is an allocation under re-read.
type leak struct {
	i     int // index in the batch
	ip    net.IP
	al    *model.Allocation
	block string // CIDR
	hkey  string
}

func (c *checker) confirmBatch(ctx context.Context, pools []model.Pool, batch []suspect) ([]Problem, error) {
	found := make([]*Problem, len(batch))
	// First read: what the finding is about.
	var keys []string
	for _, s := range batch {
		switch s.kind {
		case BlockUnknownHost:
			b := c.blocks[s.block]
			keys = append(keys, b.key, model.NodeKey(b.affinity))
		case LeakNoHandle, LeakNoEndpoint:
			keys = append(keys, c.blocks[s.block].key)
		case OrphanHandle:
			keys = append(keys, s.key)
		case EndpointNoAlloc:
			keys = append(keys, s.key)
			if bk := blockKeyOf(pools, s.ip); bk != "" {
				keys = append(keys, bk)
			}
		}
	}
	got, err := c.get(ctx, keys)
	if err != nil {
		return nil, err
	}
	var leaks []leak
	type orphan struct {
		i int
		h model.Handle
	}
	var orphans []orphan
	keys = keys[:0]
	for i, s := range batch {
		switch s.kind {
		case BlockUnknownHost:
			b := c.blocks[s.block]
			r := got[b.key]
			if r == nil || got[model.NodeKey(b.affinity)] != nil {
				continue
			}
			var fresh model.Block
			if err := store.DecodeRecord(r.Key, r.Value, &fresh); err != nil {
				return nil, err
			}
			if fresh.Affinity != b.affinity {
				continue // claimed again since: a live host's
			}
			found[i] = &Problem{Kind: BlockUnknownHost, Block: b.cidr, Host: b.affinity,
				Detail: "block is affine to a host that is not registered; if the host is gone for good, 'tabbyctl node remove " + b.affinity + "' releases its addresses and returns its blocks"}
		case LeakNoHandle, LeakNoEndpoint:
			b := c.blocks[s.block]
			_, bn, err := net.ParseCIDR(b.cidr)
			if err != nil {
				return nil, fmt.Errorf("block %s: %w", b.key, err)
			}
			ip := nthIP(bn, int(s.ord))
			al, _, err := allocAt(got, b.key, ip)
			if err != nil {
				return nil, err
			}
			if al == nil {
				continue // released since
			}
			l := leak{i: i, ip: ip, al: al, block: b.cidr, hkey: handleKeyOf(al)}
			if l.hkey != "" {
				keys = append(keys, l.hkey)
			}
			keys = append(keys, model.NodeKey(al.Host))
			leaks = append(leaks, l)
		case OrphanHandle:
			r := got[s.key]
			if r == nil {
				continue // released since
			}
			var h model.Handle
			if err := store.DecodeRecord(r.Key, r.Value, &h); err != nil {
				return nil, err
			}
			for j, ip := range h.IPs {
				if j < len(h.Blocks) && h.Blocks[j] != "" {
					keys = append(keys, h.Blocks[j])
				} else if a, err := netip.ParseAddr(ip); err == nil {
					if bk := blockKeyOf(pools, a); bk != "" {
						keys = append(keys, bk)
					}
				}
			}
			orphans = append(orphans, orphan{i: i, h: h})
		case EndpointNoAlloc:
			r := got[s.key]
			if r == nil {
				continue // deleted since
			}
			var e model.Endpoint
			if store.DecodeJSON(r.Value, &e) != nil || !usesIP(&e, s.ip) {
				continue
			}
			if bk := blockKeyOf(pools, s.ip); bk != "" {
				al, _, err := allocAt(got, bk, net.IP(s.ip.AsSlice()))
				if err != nil {
					return nil, err
				}
				if al != nil {
					continue // allocated since
				}
			}
			found[i] = &Problem{Kind: EndpointNoAlloc, IP: s.ip.String(), Host: e.Host,
				Detail: "endpoint " + e.Key() + " uses an address IPAM has not allocated (host-local IPAM, or a released address)"}
		}
	}
	// Second read: what names the allocations, and the allocations the
	// handles name.
	if len(keys) > 0 {
		if got, err = c.get(ctx, keys); err != nil {
			return nil, err
		}
	}
	for _, o := range orphans {
		held := false
		for j, s := range o.h.IPs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			bk := ""
			if j < len(o.h.Blocks) {
				bk = o.h.Blocks[j]
			}
			if bk == "" {
				bk = blockKeyOf(pools, a)
			}
			al, _, err := allocAt(got, bk, net.IP(a.AsSlice()))
			if err != nil {
				return nil, err
			}
			if al != nil && al.Handle == o.h.ID {
				held = true
				break
			}
		}
		if !held {
			found[o.i] = &Problem{Kind: OrphanHandle, Handle: o.h.ID, Host: o.h.Host, Detail: "handle holds no allocated address"}
		}
	}
	used := map[string]map[netip.Addr]bool{} // per host: its endpoints' addresses
	for _, l := range leaks {
		ipS := l.ip.String()
		if !handleNames(got[l.hkey], l.al.Handle, l.ip) {
			found[l.i] = &Problem{Kind: LeakNoHandle, IP: ipS, Handle: l.al.Handle, Host: l.al.Host, Block: l.block,
				Detail: "no handle record names this address; 'tabbyctl ipam release --ip " + ipS + "' frees it"}
			continue
		}
		a, _ := netip.AddrFromSlice(l.ip)
		a = a.Unmap()
		if tunnelOf(got[model.NodeKey(l.al.Host)], a) {
			continue
		}
		ips, ok := used[l.al.Host]
		if !ok {
			if ips, err = c.hostAddrs(ctx, l.al.Host); err != nil {
				return nil, err
			}
			used[l.al.Host] = ips
		}
		if !ips[a] {
			found[l.i] = &Problem{Kind: LeakNoEndpoint, IP: ipS, Handle: l.al.Handle, Host: l.al.Host, Block: l.block,
				Detail: "no endpoint uses this address; if its container is gone, CNI GC or 'tabbyctl ipam release --ip " + ipS + "' frees it"}
		}
	}
	var out []Problem
	for _, p := range found {
		if p != nil {
			out = append(out, *p)
		}
	}
	return out, nil
}

// hostAddrs reads the addresses host's endpoints use: the endpoint of an
// allocation is on the host that allocated it, and its key is not
// derivable from the allocation.
func (c *checker) hostAddrs(ctx context.Context, host string) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	_, err := store.Walk(ctx, c.kv, model.HostWorkloadPrefix(host), c.walk, func(p *store.Page) error {
		for _, r := range p.KVs {
			if _, _, _, _, ok := model.ParseEndpointKey(r.Key); !ok {
				continue
			}
			var e model.Endpoint
			if store.DecodeJSON(r.Value, &e) != nil {
				continue
			}
			for _, n := range e.Nets() {
				if p, err := netip.ParsePrefix(n); err == nil {
					out[p.Addr().Unmap()] = true
				}
			}
		}
		return nil
	})
	return out, err
}

// handleNames reports whether the handle record r is id and lists ip.
func handleNames(r *store.KeyValue, id string, ip net.IP) bool {
	if r == nil {
		return false
	}
	var h model.Handle
	if store.DecodeJSON(r.Value, &h) != nil || h.ID != id {
		return false
	}
	for _, s := range h.IPs {
		if x := net.ParseIP(s); x != nil && x.Equal(ip) {
			return true
		}
	}
	return false
}

// tunnelOf reports whether the host record r gives a as a tunnel address.
func tunnelOf(r *store.KeyValue, a netip.Addr) bool {
	if r == nil {
		return false
	}
	var h model.Host
	if store.DecodeJSON(r.Value, &h) != nil {
		return false
	}
	for _, s := range []string{h.VXLANTunnelAddr, h.IPIPTunnelAddr} {
		if x, err := netip.ParseAddr(s); err == nil && x.Unmap() == a {
			return true
		}
	}
	return false
}

func usesIP(e *model.Endpoint, a netip.Addr) bool {
	for _, n := range e.Nets() {
		if p, err := netip.ParsePrefix(n); err == nil && p.Addr().Unmap() == a {
			return true
		}
	}
	return false
}
