// Package watch keeps a node's copy of the etcd prefixes it needs: one Get
// per prefix, then a watch from the revision of that Get. A watch that is lost
// (compaction, a canceled stream) resyncs only the prefix it covered. The set
// of prefixes can change at run time (tags named by local rules come and go).
//
// A followed name that ends in "/" is a prefix; any other is one key,
// read and watched alone (a profile, the BGP configuration): a node that
// follows the profiles its endpoints name must not also be sent every
// profile whose name merely starts with one of them.
package watch

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// Cache is an up-to-date copy of some prefixes.
type Cache struct {
	cli *clientv3.Client
	log *slog.Logger

	mu      sync.RWMutex
	data    map[string]map[string]entry // prefix -> key -> value
	synced  map[string]bool
	cancels map[string]context.CancelFunc
	ctx     context.Context

	tombstones int               // entries Refresh left for deleted keys (see entry)
	gens       map[string]uint64 // prefix -> changes seen, for callers that skip work

	// decoders are the prefixes whose values are kept decoded only (see
	// SetDecoder).
	decoders map[string]func(key string, value []byte) (any, error)

	notify  chan struct{}
	Resyncs func(prefix string) // optional: called on every (re)sync, for metrics
}

// loadPage is how many keys one read of a prefix's (re)load returns. A
// node's big prefix is the host list (10,000 records at 10,000 hosts): read
// whole, its response and the decoded copy of it were all alive at once
// and set the heap the daemon kept; in pages only one page is.
const loadPage = 1000

// entry is a value and the revision that wrote it. A deleted key that was
// injected ahead of the watch stays as a tombstone (no value, not decoded)
// until the watch passes it, so an older event cannot bring the key back.
type entry struct {
	value   []byte // nil in a prefix with a decoder: only decoded is kept
	rev     int64
	decoded any // what Decode (or the prefix's decoder) made of value, so an unchanged key is decoded once
}

func (e entry) live() bool { return e.value != nil || e.decoded != nil }

// undecodable stands for a value its prefix's decoder refused: the key
// exists (Each lists it) but decodes as nothing.
type undecodable struct{}

// SetDecoder makes the cache keep, for the keys of prefix, only what decode
// makes of their values, not the values: Decode and DecodeKey return it
// (asked for as the type decode returns), and Get and Snapshot return
// nothing for that prefix. It is for a big prefix of which a node needs
// only a few fields per key (the host list). Call it before the prefix is
// followed; decode must not call the cache.
func (c *Cache) SetDecoder(prefix string, decode func(key string, value []byte) (any, error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.decoders == nil {
		c.decoders = map[string]func(string, []byte) (any, error){}
	}
	c.decoders[prefix] = decode
}

// newEntry is what the cache keeps of a value read or watched in prefix.
// Callers hold c.mu or have read the decoder under it.
func newEntry(decode func(string, []byte) (any, error), key string, value []byte, rev int64) entry {
	if decode == nil {
		return entry{value: value, rev: rev}
	}
	d, err := decode(key, value)
	if err != nil || d == nil {
		d = undecodable{}
	}
	return entry{rev: rev, decoded: d}
}

// New makes a cache; Run starts it.
func New(cli *clientv3.Client, log *slog.Logger) *Cache {
	return &Cache{cli: cli, log: log, data: map[string]map[string]entry{}, synced: map[string]bool{},
		cancels: map[string]context.CancelFunc{}, notify: make(chan struct{}, 1)}
}

// Start begins following the prefixes; ctx ends it.
func (c *Cache) Start(ctx context.Context, prefixes ...string) {
	c.mu.Lock()
	c.ctx = ctx
	c.mu.Unlock()
	c.SetPrefixes(prefixes...)
}

// Changed fires (coalesced) after any change to any prefix.
func (c *Cache) Changed() <-chan struct{} { return c.notify }

func (c *Cache) poke() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// SetPrefixes follows exactly these prefixes, starting new ones and dropping
// the rest.
func (c *Cache) SetPrefixes(prefixes ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := map[string]bool{}
	for _, p := range prefixes {
		want[p] = true
		if _, ok := c.cancels[p]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(c.ctx)
		c.cancels[p] = cancel
		c.data[p] = map[string]entry{}
		go c.follow(ctx, p)
	}
	for p, cancel := range c.cancels {
		if !want[p] {
			cancel()
			delete(c.cancels, p)
			delete(c.data, p)
			delete(c.synced, p)
		}
	}
}

// Prefixes lists what is followed.
func (c *Cache) Prefixes() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []string
	for p := range c.cancels {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Synced reports whether every prefix has been read at least once.
func (c *Cache) Synced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for p := range c.cancels {
		if !c.synced[p] {
			return false
		}
	}
	return true
}

// Get returns one key's value from a followed prefix.
func (c *Cache) Get(prefix, key string) ([]byte, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.data[prefix][key]
	return e.value, ok && e.value != nil
}

// Holds reports whether every key that lies in a followed prefix is in the
// copy (keys outside every followed prefix are not asked for): what a
// Refresh of them would read, the watch has already brought.
func (c *Cache) Holds(keys ...string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, k := range keys {
		if p := c.prefixOf(k); p != "" && !c.data[p][k].live() {
			return false
		}
	}
	return true
}

// SingleKey reports whether a followed name is one key, not a prefix.
func SingleKey(name string) bool { return !strings.HasSuffix(name, "/") }

// covers reports whether the followed name holds key.
func covers(name, key string) bool {
	if SingleKey(name) {
		return key == name
	}
	return strings.HasPrefix(key, name)
}

// prefixOf is the longest followed prefix that holds key, "" if none.
// Callers hold c.mu.
func (c *Cache) prefixOf(key string) string {
	best := ""
	for p := range c.data {
		if covers(p, key) && len(p) > len(best) {
			best = p
		}
	}
	return best
}

// Snapshot copies one prefix: key -> value.
func (c *Cache) Snapshot(prefix string) map[string][]byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string][]byte, len(c.data[prefix]))
	for k, e := range c.data[prefix] {
		if e.value != nil {
			out[k] = e.value
		}
	}
	return out
}

// Refresh reads keys now, ahead of the watch, into the followed prefixes
// that hold them (keys outside every followed prefix are not read): the CNI
// plugin has just written them and is waiting for their rules. What it
// reads is etcd's, at etcd's revision; the watch, when it delivers the same
// writes, changes nothing, and an older event it may still deliver for
// these keys is ignored. It reports whether anything changed.
func (c *Cache) Refresh(ctx context.Context, keys ...string) (bool, error) {
	c.mu.RLock()
	var ops []clientv3.Op
	var in []string // the followed prefix of each read key
	var read []string
	for _, k := range keys {
		if best := c.prefixOf(k); best != "" {
			ops, in, read = append(ops, clientv3.OpGet(k)), append(in, best), append(read, k)
		}
	}
	c.mu.RUnlock()
	if len(ops) == 0 {
		return false, nil
	}
	r, err := c.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	for i, k := range read {
		m, ok := c.data[in[i]]
		if !ok {
			continue
		}
		kvs := r.Responses[i].GetResponseRange().GetKvs()
		cur, had := m[k]
		switch {
		case len(kvs) == 1 && kvs[0].ModRevision > cur.rev:
			m[k] = newEntry(c.decoders[in[i]], k, kvs[0].Value, kvs[0].ModRevision)
			c.bump(in[i])
			changed = true
		case len(kvs) == 0 && had && cur.live():
			// Deleted since: the delete's revision is at most the read's.
			m[k] = entry{rev: r.Header.Revision}
			c.tombstones++
			c.bump(in[i])
			changed = true
		}
	}
	if changed {
		c.poke()
	}
	return changed, nil
}

// Gen counts the changes a prefix has seen: equal counts mean nothing in
// the prefix changed in between.
func (c *Cache) Gen(prefix string) uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gens[prefix]
}

func (c *Cache) bump(prefix string) {
	if c.gens == nil {
		c.gens = map[string]uint64{}
	}
	c.gens[prefix]++
}

// Each calls fn with every live key of a prefix and the revision that
// wrote it (cheap: nothing is copied or decoded), so that a caller can find
// what changed since it last looked. fn must not call the cache.
func (c *Cache) Each(prefix string, fn func(key string, rev int64)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for k, e := range c.data[prefix] {
		if e.live() {
			fn(k, e.rev)
		}
	}
}

// DecodeKey is Decode for one key.
func DecodeKey[T any](c *Cache, prefix, key string) (T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t T
	m := c.data[prefix]
	e, ok := m[key]
	if !ok || !e.live() {
		return t, false
	}
	if d, ok := e.decoded.(T); ok {
		return d, true
	}
	if e.value == nil || json.Unmarshal(e.value, &t) != nil {
		return t, false
	}
	e.decoded = t
	m[key] = e
	return t, true
}

// DecodeRev is Decode that also returns, read in the same instant, the
// revision that wrote each value.
func DecodeRev[T any](c *Cache, prefix string, match func(key string) bool) (map[string]T, map[string]int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.data[prefix]
	out := make(map[string]T, len(m))
	revs := make(map[string]int64, len(m))
	for k, e := range m {
		if !e.live() || (match != nil && !match(k)) {
			continue
		}
		t, ok := e.decoded.(T)
		if !ok {
			if e.value == nil || json.Unmarshal(e.value, &t) != nil {
				continue
			}
			e.decoded = t
			m[k] = e
		}
		out[k], revs[k] = t, e.rev
	}
	return out, revs
}

// Decode unmarshals every value of a prefix that decodes as T, keyed by key.
// A value is decoded once and kept with it until it changes: a reconcile on
// a host with a thousand endpoints decodes the one that changed, not all.
// Callers must treat what they get as read-only (it is shared).
func Decode[T any](c *Cache, prefix string, match func(key string) bool) map[string]T {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.data[prefix]
	out := make(map[string]T, len(m))
	for k, e := range m {
		if !e.live() || (match != nil && !match(k)) {
			continue
		}
		if t, ok := e.decoded.(T); ok {
			out[k] = t
			continue
		}
		var t T
		if e.value != nil && json.Unmarshal(e.value, &t) == nil {
			out[k] = t
			e.decoded = t
			m[k] = e
		}
	}
	return out
}

func (c *Cache) follow(ctx context.Context, prefix string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		rev, err := c.load(ctx, prefix)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("read failed; keeping what is programmed and retrying", "prefix", prefix, "err", err, "retry", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		c.watch(ctx, prefix, rev)
	}
}

// load replaces the prefix's copy with what etcd holds at one revision
// and returns that revision. It reads in pages of loadPage keys, the first
// at etcd's current revision and the rest at the same revision, so the copy
// is one consistent state, and a prefix with a decoder holds only one
// page's raw values at a time. A compaction between pages fails the load,
// and follow reads again.
func (c *Cache) load(ctx context.Context, prefix string) (int64, error) {
	c.mu.RLock()
	decode := c.decoders[prefix]
	c.mu.RUnlock()
	m := map[string]entry{}
	var rev int64
	var err error
	keep := func(p *store.Page) error {
		for _, kv := range p.KVs {
			m[kv.Key] = newEntry(decode, kv.Key, kv.Value, kv.ModRev)
		}
		return nil
	}
	kv := etcdv3.FromClient(c.cli, nil)
	if SingleKey(prefix) {
		// One page bounded to the key itself: the store's own read, with
		// its deadline and errors, as every page of a prefix's walk.
		var p *store.Page
		if p, err = kv.ListPage(ctx, prefix, store.PageOptions{End: prefix + "\x00"}); err == nil {
			rev, err = p.Rev, keep(p)
		}
	} else {
		rev, err = store.Walk(ctx, kv, prefix, store.WalkOptions{Limit: loadPage, Snapshot: true}, keep)
	}
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	if _, still := c.cancels[prefix]; still {
		// What Refresh read after this read stays: it is newer.
		for k, e := range c.data[prefix] {
			if e.rev > rev {
				m[k] = e
			}
		}
		c.data[prefix] = m
		c.synced[prefix] = true
		c.bump(prefix)
	}
	c.mu.Unlock()
	if c.Resyncs != nil {
		c.Resyncs(prefix)
	}
	c.poke()
	return rev, nil
}

// watch applies events until the watch is lost.
func (c *Cache) watch(ctx context.Context, prefix string, rev int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithRev(rev + 1)}
	if !SingleKey(prefix) {
		opts = append(opts, clientv3.WithPrefix())
	}
	for resp := range c.cli.Watch(wctx, prefix, opts...) {
		if err := resp.Err(); err != nil {
			c.log.Info("watch lost; resyncing the prefix", "prefix", prefix, "err", err)
			return
		}
		// Events that Refresh already applied change nothing: no reconcile.
		if c.apply(prefix, resp.Events, resp.Header.Revision) {
			c.poke()
		}
	}
}

// apply folds one watch response into the prefix's copy and reports
// whether it changed what the cache shows.
func (c *Cache) apply(prefix string, events []*clientv3.Event, rev int64) (changed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, still := c.data[prefix]
	if !still {
		return false
	}
	for _, ev := range events {
		k := string(ev.Kv.Key)
		cur, ok := m[k]
		if ok && cur.rev >= ev.Kv.ModRevision {
			continue // Refresh was here first
		}
		if ev.Type == clientv3.EventTypeDelete {
			delete(m, k)
			changed = changed || (ok && cur.live())
		} else {
			m[k] = newEntry(c.decoders[prefix], k, ev.Kv.Value, ev.Kv.ModRevision)
			changed = true
		}
	}
	if changed {
		c.bump(prefix)
	}
	// Tombstones the watch has passed are no longer needed.
	if c.tombstones > 0 {
		for k, e := range m {
			if !e.live() && e.rev <= rev {
				delete(m, k)
				c.tombstones--
			}
		}
	}
	return changed
}
