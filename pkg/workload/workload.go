// Package workload writes endpoint records together with their entries in the
// tag-member and namespace-member indexes, always in one transaction, so the
// indexes (which remote nodes watch to build their ipsets) never disagree
// with the endpoints.
package workload

import (
	"context"
	"fmt"
	"sort"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// memberKeys returns the index keys of an endpoint: its member record in its
// namespace (labels, for selectors) and one tag entry per profile (a
// profile's tag is its name).
func memberKeys(e *model.Endpoint) map[string][]byte {
	out := map[string][]byte{model.MemberKeyOf(e): store.MustJSON(model.MemberOf(e))}
	v := store.MustJSON(model.TagMember{Endpoint: e.Key(), Nets: e.Nets()})
	for _, p := range e.Profiles {
		out[model.TagMemberKey(p, e.Host, e.Orchestrator, e.Workload, e.Name)] = v
	}
	return out
}

// Ops writes next (nil: delete) over prev (nil: absent) with its tag index
// entries, for callers that commit them inside a larger transaction (the CNI
// plugin, with the IPAM allocation). The caller must compare prev's key.
func Ops(prev, next *model.Endpoint) []store.Op {
	if next != nil {
		next.Profiles = Dedup(next.Profiles)
	}
	return diffOps(prev, next)
}

// diffOps writes next (nil: delete) over prev (nil: absent), with index entries.
func diffOps(prev, next *model.Endpoint) []store.Op {
	var ops []store.Op
	old := map[string][]byte{}
	if prev != nil {
		old = memberKeys(prev)
	}
	if next != nil {
		ops = append(ops, store.Put(next.Key(), store.MustJSON(next)))
		for k, v := range memberKeys(next) {
			ops = append(ops, store.Put(k, v))
			delete(old, k)
		}
	} else if prev != nil {
		ops = append(ops, store.Delete(prev.Key()))
	}
	keys := make([]string, 0, len(old))
	for k := range old {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ops = append(ops, store.Delete(k))
	}
	return ops
}

// Put writes the endpoint, replacing whatever was at its key (a stale record
// of an earlier container with the same identity included).
func Put(ctx context.Context, kv store.KV, e *model.Endpoint) error {
	return PutFrom(ctx, kv, e, nil)
}

// PutFrom is Put starting from what the caller already read of the key.
func PutFrom(ctx context.Context, kv store.KV, e *model.Endpoint, seed store.Seed) error {
	e.Profiles = Dedup(e.Profiles)
	_, err := store.ReadModifyWriteFrom(ctx, kv, seed, []string{e.Key()}, func(rs *store.ReadSet) ([]store.Op, error) {
		var prev model.Endpoint
		ok, err := rs.Decode(e.Key(), &prev)
		if err != nil {
			return nil, err
		}
		if !ok {
			return diffOps(nil, e), nil
		}
		return diffOps(&prev, e), nil
	})
	return err
}

// Delete removes the endpoint at key if it still belongs to containerID (any
// container when containerID is empty). It reports whether it deleted.
func Delete(ctx context.Context, kv store.KV, key, containerID string) (bool, error) {
	deleted := false
	_, err := store.ReadModifyWrite(ctx, kv, []string{key}, func(rs *store.ReadSet) ([]store.Op, error) {
		deleted = false
		var prev model.Endpoint
		ok, err := rs.Decode(key, &prev)
		if err != nil || !ok {
			return nil, err
		}
		if containerID != "" && prev.ContainerID != containerID {
			return nil, store.ErrAbort
		}
		deleted = true
		return diffOps(&prev, nil), nil
	})
	return deleted, err
}

// Get reads one endpoint.
func Get(ctx context.Context, kv store.KV, key string) (*model.Endpoint, error) {
	var e model.Endpoint
	if _, err := store.GetJSON(ctx, kv, key, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// UpdateProfiles changes an endpoint's profiles with fn and moves its index
// entries with it.
func UpdateProfiles(ctx context.Context, kv store.KV, key string, fn func([]string) ([]string, error)) (*model.Endpoint, error) {
	var out *model.Endpoint
	_, err := store.ReadModifyWrite(ctx, kv, []string{key}, func(rs *store.ReadSet) ([]store.Op, error) {
		var prev model.Endpoint
		ok, err := rs.Decode(key, &prev)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("endpoint %s: %w", key, store.ErrNotFound)
		}
		next := prev
		ps, err := fn(append([]string{}, prev.Profiles...))
		if err != nil {
			return nil, err
		}
		next.Profiles = Dedup(ps)
		out = &next
		return diffOps(&prev, &next), nil
	})
	return out, err
}

// Dedup keeps the first occurrence of each name, in order: profile order
// matters, the first matching rule decides.
func Dedup(in []string) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
