package ipam

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func overlaps(a, b string) bool {
	x, _ := model.CanonicalCIDR(a)
	y, _ := model.CanonicalCIDR(b)
	return x.Contains(y.IP) || y.Contains(x.IP)
}

// AddPool validates p and creates it; an overlapping pool is refused. Adding a
// pool that exists with the same settings updates it (flags can change; the
// block size cannot once blocks exist).
func AddPool(ctx context.Context, kv store.KV, p model.Pool) (*model.Pool, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	pools, err := Pools(ctx, kv)
	if err != nil {
		return nil, err
	}
	for _, o := range pools {
		if o.CIDR != p.CIDR && overlaps(o.CIDR, p.CIDR) {
			return nil, fmt.Errorf("pool %s overlaps existing pool %s; remove that one first or pick a disjoint range", p.CIDR, o.CIDR)
		}
	}
	key := model.PoolKey(p.CIDR)
	err = store.Update(ctx, kv, key, func(cur *model.Pool, exists bool) (*model.Pool, error) {
		if exists && cur.BlockSize != p.BlockSize {
			blocks, _, err := kv.List(ctx, model.BlockPoolPrefix(p.CIDR), true)
			if err != nil {
				return nil, err
			}
			if len(blocks) > 0 {
				return nil, fmt.Errorf("pool %s has %d blocks of /%d; its block size cannot change to /%d", p.CIDR, len(blocks), cur.BlockSize, p.BlockSize)
			}
		}
		return &p, nil
	})
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// RemovePool deletes a pool that holds no allocation; otherwise it refuses and
// says how many addresses are held and on which hosts.
func RemovePool(ctx context.Context, kv store.KV, cidr string) error {
	n, err := model.CanonicalCIDR(cidr)
	if err != nil {
		return err
	}
	key := model.PoolKey(n.String())
	if _, err := kv.Get(ctx, key); err != nil {
		return fmt.Errorf("pool %s: %w", n, err)
	}
	kvs, _, err := kv.List(ctx, model.BlockPoolPrefix(n.String()), false)
	if err != nil {
		return err
	}
	perHost := map[string]int{}
	total := 0
	var ops []store.Op
	var cmps []store.Cmp
	for _, r := range kvs {
		var b model.Block
		if err := store.DecodeRecord(r.Key, r.Value, &b); err != nil {
			return err
		}
		for _, a := range b.Allocations {
			if a != nil {
				perHost[a.Host]++
				total++
			}
		}
		cmps = append(cmps, store.Cmp{Key: r.Key, ModRev: r.ModRev})
		ops = append(ops, DropBlock(r.Key, &b)...)
	}
	if total > 0 {
		var where []string
		for h, c := range perHost {
			where = append(where, fmt.Sprintf("%s: %d", h, c))
		}
		sort.Strings(where)
		return fmt.Errorf("pool %s still has %d allocated addresses (%s); remove those workloads first, or disable the pool with 'tabbyctl pool add %s --disabled'", n, total, strings.Join(where, ", "), n)
	}
	// Empty blocks go with the pool; the compares make sure none got an
	// allocation since we looked.
	ops = append(ops, store.Delete(key))
	res, err := kv.Txn(ctx, cmps, ops)
	if err != nil {
		return err
	}
	if !res.Succeeded {
		return fmt.Errorf("pool %s changed while removing it; try again", n)
	}
	return nil
}
