package ipam

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// hostCache is this host's last known view of what its allocations depend
// on: the pools and its own blocks, each with the etcd revision it was read
// or written at. It lives in the state dir, is only touched under the host
// lock, and is never trusted: an ADD that decides from it commits with a
// compare on every revision it holds, so a stale cache costs one failed
// transaction and the reading path, never a wrong allocation.
type hostCache struct {
	Version int              `json:"version"` // cacheVersion; another is not read
	Host    string           `json:"host"`
	Pools   []store.KeyValue `json:"pools"`
	Blocks  []cachedBlock    `json:"blocks"`
	// Schema is the datastore's schema record when the reading path last
	// checked it (nil: absent). The cached path compares it, so an ADD
	// decided from the cache cannot write into a store that an upgrade has
	// since made one only newer binaries may write: the compare fails and
	// the reading path checks the record.
	Schema *store.KeyValue `json:"schema,omitempty"`
}

// The cache file is its JSON header on one line, then the blocks' values
// as etcd holds them, back to back (each header block says how long its
// value is): reading a host's cache decodes the header only, never the
// blocks, whose values a full host has many of and an ADD uses one of.
const (
	cacheFile = "ipam-cache"
	// legacyCacheFile held the whole cache as JSON, block values included.
	legacyCacheFile = "ipam-cache.json"
)

// cacheVersion 2: the header and values format, blocks described by their
// affinity and whether they are full. A file of another version is not
// read (the reading path writes a new one).
const cacheVersion = 2

// cachedBlock is one of this host's blocks as etcd holds it, with what an
// ADD's decision needs to know of it without decoding it: a host's full
// blocks cost an ADD their compare and nothing else (decoding every full
// block on every ADD, and the whole cache three times per ADD and DEL,
// made a host with a hundred workloads slower to ADD on than an empty
// one).
type cachedBlock struct {
	Key      string `json:"key"`
	ModRev   int64  `json:"modRev"`
	Affinity string `json:"affinity"`
	Full     bool   `json:"full,omitempty"` // no free address at all
	Len      int    `json:"len"`            // of Value, in the file
	Value    []byte `json:"-"`
}

func (b *cachedBlock) kv() *store.KeyValue {
	return &store.KeyValue{Key: b.Key, Value: b.Value, ModRev: b.ModRev}
}

// newCachedBlock describes b, written at rev as value.
func newCachedBlock(key string, value []byte, rev int64, b *model.Block) cachedBlock {
	full := false
	if _, pool, err := net.ParseCIDR(b.Pool); err == nil {
		full = freeOrdinal(b, pool) < 0
	}
	return cachedBlock{Key: key, Value: value, ModRev: rev, Affinity: b.Affinity, Full: full}
}

func (a *IPAM) loadCache() *hostCache {
	if a.LockDir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(a.LockDir, cacheFile))
	if err != nil {
		if os.IsNotExist(err) {
			_ = os.Remove(filepath.Join(a.LockDir, legacyCacheFile))
		}
		return nil
	}
	return decodeCache(b, a.Host)
}

// decodeCache parses a cache file; anything torn or unexpected is no cache.
func decodeCache(b []byte, host string) *hostCache {
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		return nil
	}
	var c hostCache
	if json.Unmarshal(b[:nl], &c) != nil || c.Host != host || c.Version != cacheVersion {
		return nil
	}
	rest := b[nl+1:]
	for i := range c.Blocks {
		n := c.Blocks[i].Len
		if n < 0 || n > len(rest) {
			return nil
		}
		c.Blocks[i].Value, rest = rest[:n:n], rest[n:]
	}
	if len(rest) != 0 {
		return nil
	}
	return &c
}

func encodeCache(c *hostCache) ([]byte, error) {
	for i := range c.Blocks {
		c.Blocks[i].Len = len(c.Blocks[i].Value)
	}
	head, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	out := append(head, '\n')
	for _, blk := range c.Blocks {
		out = append(out, blk.Value...)
	}
	return out, nil
}

func (a *IPAM) saveCache(c *hostCache) {
	if a.LockDir == "" {
		return
	}
	if c == nil {
		_ = os.Remove(filepath.Join(a.LockDir, cacheFile))
		return
	}
	c.Host, c.Version = a.Host, cacheVersion
	sort.Slice(c.Blocks, func(i, j int) bool { return c.Blocks[i].Key < c.Blocks[j].Key })
	b, err := encodeCache(c)
	if err != nil {
		return
	}
	tmp := filepath.Join(a.LockDir, fmt.Sprintf(".%s.%d", cacheFile, os.Getpid()))
	if os.WriteFile(tmp, b, 0o600) == nil { // a new file each time: the rename carries 0600
		_ = os.Rename(tmp, filepath.Join(a.LockDir, cacheFile))
	}
	// A write that failed (a full disk) leaves its torn temporary file;
	// after a rename there is nothing to remove.
	_ = os.Remove(tmp)
}

// blockKeys lists the cached blocks' keys.
func (c *hostCache) blockKeys() []string {
	if c == nil {
		return nil
	}
	var keys []string
	for _, b := range c.Blocks {
		keys = append(keys, b.Key)
	}
	return keys
}

// meta rebuilds what readMeta would have read, from the cache. No block
// is decoded here: the decision decodes the ones it uses.
func (c *hostCache) meta(host string) (*meta, store.Seed, error) {
	m := &meta{poolKVs: c.Pools, schema: c.Schema, full: map[string]bool{}}
	seed := store.Seed{model.SchemaKey: c.Schema}
	for _, kv := range c.Pools {
		var p model.Pool
		if err := store.DecodeRecord(kv.Key, kv.Value, &p); err != nil {
			return nil, nil, err
		}
		m.pools = append(m.pools, p)
		v := kv
		seed[kv.Key] = &v
	}
	for i := range c.Blocks {
		b := &c.Blocks[i]
		if b.Affinity == host {
			m.affineKeys = append(m.affineKeys, b.Key)
		}
		if b.Full {
			m.full[b.Key] = true
		}
		seed[b.Key] = b.kv()
	}
	sort.Strings(m.affineKeys)
	return m, seed, nil
}

// update records the blocks an allocation or release wrote (at revision rev)
// or deleted, and the pools it decided on.
func (a *IPAM) updateCache(c *hostCache, pools []store.KeyValue, known map[string]*store.KeyValue, written map[string]*model.Block, rev int64) {
	if c == nil {
		c = &hostCache{}
	}
	if pools != nil {
		c.Pools = pools
	}
	blocks := map[string]cachedBlock{}
	for _, b := range c.Blocks {
		blocks[b.Key] = b
	}
	for k, v := range known {
		if strings.HasPrefix(k, model.BlockPrefix) {
			if v == nil {
				delete(blocks, k)
				continue
			}
			var blk model.Block
			if json.Unmarshal(v.Value, &blk) != nil {
				delete(blocks, k)
				continue
			}
			blocks[k] = newCachedBlock(k, v.Value, v.ModRev, &blk)
		}
	}
	for k, b := range written {
		if b == nil {
			delete(blocks, k)
			continue
		}
		blocks[k] = newCachedBlock(k, store.MustJSON(b), rev, b)
	}
	c.Blocks = c.Blocks[:0]
	for _, b := range blocks {
		if b.Affinity == a.Host {
			c.Blocks = append(c.Blocks, b)
		}
	}
	if len(c.Blocks) > 64 { // a bound on the ADD's seed and compare size
		c.Blocks = c.Blocks[:64]
	}
	a.saveCache(c)
}
