package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Disowned is what Disown did.
type Disowned struct {
	// Released are the handles whose addresses were freed.
	Released []string `json:"released"`
	// Dropped are the blocks returned to their pools with their affinity.
	Dropped []string `json:"dropped"`
	// Unaffined are blocks that still hold addresses other hosts borrowed:
	// they lost their affinity and go when those hosts' DELs empty them.
	Unaffined []string `json:"unaffined"`
	// Cleared counts addresses of the host's that no handle named (a
	// leak), freed in its blocks directly.
	Cleared int `json:"cleared"`
}

// Disown gives back what a host that is gone for good holds in its own
// blocks: every address it allocated there is released handle by handle,
// as its DELs would have done (a handle's addresses in other blocks too),
// then each block goes back to its pool with its affinity, or, when other
// hosts borrowed addresses from it, stays without an affinity until their
// DELs empty it. It never touches another host's addresses. Safe to run
// again after a failure part way: each step is its own compare-and-swap.
//
// Addresses the host borrowed from other hosts' blocks are found only
// through handles: callers release the handles its endpoints name first
// (package retire does); one no record names is what `ipam check` reports.
func Disown(ctx context.Context, kv store.KV, host string) (*Disowned, error) {
	if err := model.ValidName(host); err != nil {
		return nil, fmt.Errorf("host %q: %w", host, err)
	}
	out := &Disowned{}
	affs, _, err := kv.List(ctx, model.AffinityHostPrefix(host), false)
	if err != nil {
		return nil, fmt.Errorf("affinities of %s: %w", host, err)
	}
	a := &IPAM{KV: kv, Host: host}
	for _, r := range affs {
		var af model.Affinity
		if err := store.DecodeRecord(r.Key, r.Value, &af); err != nil {
			return out, err
		}
		key := model.BlockKey(af.Pool, af.Block)
		var b model.Block
		_, err := store.GetJSON(ctx, kv, key, &b)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return out, fmt.Errorf("block %s: %w", af.Block, err)
		}
		if err == nil {
			for _, h := range heldBy(&b, host) {
				network, cid, _ := strings.Cut(h, ".")
				written, _, err := release(ctx, kv, model.HandleKey(network, cid), nil, host, nil, nil, nil)
				if err != nil {
					return out, fmt.Errorf("release %s: %w", h, err)
				}
				if len(written) > 0 {
					out.Released = append(out.Released, h)
				}
			}
		}
		if err := a.letGo(ctx, r.Key, af.Block, key, out); err != nil {
			return out, fmt.Errorf("block %s: %w", af.Block, err)
		}
	}
	return out, nil
}

// heldBy lists, sorted, the handles of host's addresses in b.
func heldBy(b *model.Block, host string) []string {
	seen := map[string]bool{}
	for _, al := range b.Allocations {
		if al != nil && al.Host == host && al.Handle != "" && al.Network != "" && strings.HasPrefix(al.Handle, al.Network+".") {
			seen[al.Handle] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// letGo ends a.Host's affinity to the block at key (affKey is its affinity
// record): what is left of the host's own addresses there (no handle
// named them) is cleared, and the block goes back to the pool if nobody
// else holds an address in it, or else stays without an affinity.
func (a *IPAM) letGo(ctx context.Context, affKey, cidr, key string, out *Disowned) error {
	var dropped, unaffined bool
	var cleared int
	_, err := store.ReadModifyWrite(ctx, a.KV, []string{key, affKey}, func(rs *store.ReadSet) ([]store.Op, error) {
		dropped, unaffined, cleared = false, false, 0
		var b model.Block
		found, err := rs.Decode(key, &b)
		if err != nil {
			return nil, err
		}
		if !found || b.Affinity != a.Host {
			// The block went already (released by the handles) or is
			// another host's now: only a stale affinity may be left.
			if rs.ModRev(affKey) == 0 {
				return nil, store.ErrAbort
			}
			return []store.Op{store.Delete(affKey)}, nil
		}
		for i, al := range b.Allocations {
			if al != nil && al.Host == a.Host {
				b.Allocations[i] = nil
				cleared++
			}
		}
		if empty(&b) {
			dropped = true
			return DropBlock(key, &b), nil
		}
		unaffined = true
		b.Affinity = ""
		return []store.Op{store.Put(key, store.MustJSON(&b)), store.Delete(affKey)}, nil
	})
	if err != nil {
		return err
	}
	out.Cleared += cleared
	switch {
	case dropped:
		out.Dropped = append(out.Dropped, cidr)
	case unaffined:
		out.Unaffined = append(out.Unaffined, cidr)
	}
	return nil
}
