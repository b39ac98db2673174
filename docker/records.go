package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// etcd keys of tabby-docker, all under /tabby/v1/docker/. No other part of
// tabby reads them: tabby-node follows pools, profiles and endpoints, which
// tabby-docker writes in their usual places.
//
//	docker/network/<host>/<network ID>   one Docker network on one host (Network)
//	docker/pool/<cidr with / as ->       the pool was created by tabby-docker (Owner)
//	docker/profile/<name>                the profile was created by tabby-docker (Owner)
//
// An Owner record exists only for a pool or profile that tabby-docker made;
// its Refs name the Docker networks (on any host) that use it. The object
// and its Owner change together in one transaction, and the object goes when
// the last reference goes (and nothing else uses it). Pools and profiles
// that existed before are used as they are and never removed.
const (
	dockerPrefix       = model.Prefix + "docker/"
	networkPrefix      = dockerPrefix + "network/"
	poolOwnerPrefix    = dockerPrefix + "pool/"
	profileOwnerPrefix = dockerPrefix + "profile/"
)

func networkKey(host, id string) string { return networkPrefix + host + "/" + id }
func poolOwnerKey(cidr string) string   { return poolOwnerPrefix + model.EscapeCIDR(cidr) }
func profileOwnerKey(name string) string {
	return profileOwnerPrefix + name
}

// Network is one Docker network of driver tabby on one host.
type Network struct {
	ID      string   `json:"id"`
	Host    string   `json:"host"`
	Name    string   `json:"name,omitempty"`    // Docker's name, once known
	Profile string   `json:"profile,omitempty"` // the network's profile, once known
	Subnets []string `json:"subnets,omitempty"`
	Created int64    `json:"created"`
}

// Owner marks a pool or profile that tabby-docker created.
type Owner struct {
	CreatedBy string   `json:"createdBy"`
	Refs      []string `json:"refs"`
	// Since is when each reference was added (unix seconds; absent in
	// records of older versions): the sweep leaves young ones alone.
	Since map[string]int64 `json:"since,omitempty"`
}

// newOwner is the Owner of an object ref has just made.
func newOwner(ref string) *Owner {
	return &Owner{CreatedBy: createdBy, Refs: []string{ref}, Since: map[string]int64{ref: time.Now().Unix()}}
}

const createdBy = "tabby-docker"

// EnsurePool makes sure pool p exists: it creates it (with an Owner holding
// ref) when absent, adds ref to its Owner when tabby-docker made it, and
// leaves a pool an operator made alone. It reports whether the pool is
// tabby-docker's.
func EnsurePool(ctx context.Context, kv store.KV, p model.Pool, ref string) (owned bool, err error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	pk, ok := model.PoolKey(p.CIDR), poolOwnerKey(p.CIDR)
	_, err = store.ReadModifyWrite(ctx, kv, []string{pk, ok}, func(rs *store.ReadSet) ([]store.Op, error) {
		owned = false
		var cur model.Pool
		exists, err := rs.Decode(pk, &cur)
		if err != nil {
			return nil, err
		}
		var own Owner
		hasOwner, err := rs.Decode(ok, &own)
		if err != nil {
			return nil, err
		}
		if !exists {
			pools, err := ipam.Pools(ctx, kv)
			if err != nil {
				return nil, err
			}
			for _, o := range pools {
				if o.CIDR != p.CIDR && overlaps(o.CIDR, p.CIDR) {
					return nil, fmt.Errorf("subnet %s overlaps tabby pool %s; use that pool's exact CIDR as --subnet, or a disjoint range", p.CIDR, o.CIDR)
				}
			}
			owned = true
			return []store.Op{store.Put(pk, store.MustJSON(&p)), store.Put(ok, store.MustJSON(newOwner(ref)))}, nil
		}
		if cur.Disabled {
			return nil, fmt.Errorf("tabby pool %s is disabled; enable it with 'tabbyctl pool add %s' or choose another subnet", p.CIDR, p.CIDR)
		}
		// An operator's pool (no Owner) is used, never removed.
		owned = hasOwner
		return own.addRef(hasOwner, ok, ref)
	})
	return owned, err
}

// addRef adds ref to an existing Owner stored at key (nothing to write
// when there is no Owner, or ref is already in it).
func (own Owner) addRef(hasOwner bool, key, ref string) ([]store.Op, error) {
	if !hasOwner || slices.Contains(own.Refs, ref) {
		return nil, store.ErrAbort
	}
	own.Refs = append(own.Refs, ref)
	if own.Since == nil {
		own.Since = map[string]int64{}
	}
	own.Since[ref] = time.Now().Unix()
	return []store.Op{store.Put(key, store.MustJSON(&own))}, nil
}

// ReleasePool drops the references of pool cidr that match (see dropRefs);
// when none is left it removes the pool, its empty blocks and its Owner. A
// pool that still has allocations (workloads of other runtimes) stays and
// becomes an ordinary pool. It reports whether it removed the pool.
func ReleasePool(ctx context.Context, kv store.KV, cidr string, match func(string) bool) (removed bool, err error) {
	pk, ok := model.PoolKey(cidr), poolOwnerKey(cidr)
	_, err = store.ReadModifyWrite(ctx, kv, []string{pk, ok}, func(rs *store.ReadSet) ([]store.Op, error) {
		removed = false
		var own Owner
		hasOwner, err := rs.Decode(ok, &own)
		if err != nil || !hasOwner {
			return nil, orAbort(err)
		}
		own.Refs = slices.DeleteFunc(own.Refs, match)
		for r := range own.Since {
			if !slices.Contains(own.Refs, r) {
				delete(own.Since, r)
			}
		}
		if len(own.Refs) > 0 {
			return []store.Op{store.Put(ok, store.MustJSON(&own))}, nil
		}
		if raw, err := rs.Raw(pk); err != nil || raw == nil {
			return []store.Op{store.Delete(ok)}, err
		}
		blocks, _, err := kv.List(ctx, model.BlockPoolPrefix(cidr), false)
		if err != nil {
			return nil, err
		}
		ops := []store.Op{store.Delete(ok)}
		var keys []string
		for _, r := range blocks {
			var b model.Block
			if err := store.DecodeJSON(r.Value, &b); err != nil {
				return nil, fmt.Errorf("decode %s: %w", r.Key, err)
			}
			for _, a := range b.Allocations {
				if a != nil {
					return ops, nil // in use by others: keep the pool
				}
			}
			keys = append(keys, r.Key)
			ops = append(ops, ipam.DropBlock(r.Key, &b)...)
		}
		// The blocks join the compare: none may gain an allocation meanwhile.
		if err := rs.Fetch(keys...); err != nil {
			return nil, err
		}
		removed = true
		return append(ops, store.Delete(pk)), nil
	})
	return removed, err
}

// EnsureProfile makes sure profile name exists, as `tabbyctl profile add`
// makes it (members reach each other and send anywhere), with the same
// ownership rules as EnsurePool.
func EnsureProfile(ctx context.Context, kv store.KV, name, ref string) (owned bool, err error) {
	if err := model.ValidName(name); err != nil {
		return false, fmt.Errorf("profile name: %w", err)
	}
	pk, ok := model.ProfileKey(name), profileOwnerKey(name)
	_, err = store.ReadModifyWrite(ctx, kv, []string{pk, ok}, func(rs *store.ReadSet) ([]store.Op, error) {
		owned = false
		raw, err := rs.Raw(pk)
		if err != nil {
			return nil, err
		}
		var own Owner
		hasOwner, err := rs.Decode(ok, &own)
		if err != nil {
			return nil, err
		}
		if raw == nil {
			owned = true
			p := model.DefaultProfile(name)
			return []store.Op{store.Put(pk, store.MustJSON(&p)), store.Put(ok, store.MustJSON(newOwner(ref)))}, nil
		}
		owned = hasOwner
		return own.addRef(hasOwner, ok, ref)
	})
	return owned, err
}

// ReleaseProfile drops ref from profile name's Owner; the last reference
// removes the profile, unless endpoints still carry it (then it stays and
// becomes an ordinary profile).
func ReleaseProfile(ctx context.Context, kv store.KV, name, ref string) (removed bool, err error) {
	pk, ok := model.ProfileKey(name), profileOwnerKey(name)
	_, err = store.ReadModifyWrite(ctx, kv, []string{pk, ok}, func(rs *store.ReadSet) ([]store.Op, error) {
		removed = false
		var own Owner
		hasOwner, err := rs.Decode(ok, &own)
		if err != nil || !hasOwner {
			return nil, orAbort(err)
		}
		own.Refs = slices.DeleteFunc(own.Refs, func(r string) bool { return r == ref })
		if len(own.Refs) > 0 {
			return []store.Op{store.Put(ok, store.MustJSON(&own))}, nil
		}
		members, _, err := kv.List(ctx, model.TagMembersPrefix(name), true)
		if err != nil {
			return nil, err
		}
		if len(members) > 0 {
			return []store.Op{store.Delete(ok)}, nil
		}
		removed = true
		return []store.Op{store.Delete(ok), store.Delete(pk)}, nil
	})
	return removed, err
}

func orAbort(err error) error {
	if err != nil {
		return err
	}
	return store.ErrAbort
}

func overlaps(a, b string) bool {
	_, x, err1 := net.ParseCIDR(a)
	_, y, err2 := net.ParseCIDR(b)
	return err1 == nil && err2 == nil && (x.Contains(y.IP) || y.Contains(x.IP))
}

// getNetwork reads a network record; (nil, nil) when absent.
func getNetwork(ctx context.Context, kv store.KV, host, id string) (*Network, error) {
	var n Network
	if _, err := store.GetJSON(ctx, kv, networkKey(host, id), &n); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	return &n, nil
}

// refSuffix matches the references a pool ID added (see PoolID).
func refSuffix(nonce string) func(string) bool {
	return func(r string) bool { return strings.HasSuffix(r, "/"+nonce) }
}
