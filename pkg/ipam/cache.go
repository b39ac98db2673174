package ipam

import (
	"encoding/json"
	"fmt"
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
	Host   string           `json:"host"`
	Pools  []store.KeyValue `json:"pools"`
	Blocks []store.KeyValue `json:"blocks"`
	// Schema is the datastore's schema record when the reading path last
	// checked it (nil: absent). The cached path compares it, so an ADD
	// decided from the cache cannot write into a store that an upgrade has
	// since made one only newer binaries may write: the compare fails and
	// the reading path checks the record.
	Schema *store.KeyValue `json:"schema,omitempty"`
}

const cacheFile = "ipam-cache.json"

func (a *IPAM) loadCache() *hostCache {
	if a.LockDir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(a.LockDir, cacheFile))
	if err != nil {
		return nil
	}
	var c hostCache
	if json.Unmarshal(b, &c) != nil || c.Host != a.Host {
		return nil
	}
	return &c
}

func (a *IPAM) saveCache(c *hostCache) {
	if a.LockDir == "" {
		return
	}
	if c == nil {
		_ = os.Remove(filepath.Join(a.LockDir, cacheFile))
		return
	}
	c.Host = a.Host
	sort.Slice(c.Blocks, func(i, j int) bool { return c.Blocks[i].Key < c.Blocks[j].Key })
	b, err := json.Marshal(c)
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

// meta rebuilds what readMeta would have read, from the cache.
func (c *hostCache) meta(host string) (*meta, store.Seed, error) {
	m := &meta{poolKVs: c.Pools, schema: c.Schema}
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
	for _, kv := range c.Blocks {
		var b model.Block
		if err := store.DecodeRecord(kv.Key, kv.Value, &b); err != nil {
			return nil, nil, err
		}
		if b.Affinity == host {
			m.affineKeys = append(m.affineKeys, kv.Key)
		}
		v := kv
		seed[kv.Key] = &v
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
	blocks := map[string]store.KeyValue{}
	for _, b := range c.Blocks {
		blocks[b.Key] = b
	}
	for k, v := range known {
		if strings.HasPrefix(k, model.BlockPrefix) {
			if v == nil {
				delete(blocks, k)
			} else {
				blocks[k] = *v
			}
		}
	}
	for k, b := range written {
		if b == nil || (b.Affinity != a.Host && !hasHostAlloc(b, a.Host)) {
			delete(blocks, k)
			continue
		}
		blocks[k] = store.KeyValue{Key: k, Value: store.MustJSON(b), ModRev: rev}
	}
	c.Blocks = c.Blocks[:0]
	for _, b := range blocks {
		var blk model.Block
		if json.Unmarshal(b.Value, &blk) == nil && blk.Affinity == a.Host {
			c.Blocks = append(c.Blocks, b)
		}
	}
	if len(c.Blocks) > 64 { // a bound on the ADD's seed and compare size
		c.Blocks = c.Blocks[:64]
	}
	a.saveCache(c)
}

func hasHostAlloc(b *model.Block, host string) bool {
	for _, s := range b.Allocations {
		if s != nil && s.Host == host {
			return true
		}
	}
	return false
}
