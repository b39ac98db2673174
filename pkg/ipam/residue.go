package ipam

import (
	"context"
	"sort"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Residue lists the block and affinity keys that etcd still holds beyond
// what the hosts keep on purpose: each host's one empty block per pool,
// with its affinity, that a release leaves it (keepBlock). When every
// workload is gone it should be empty; a block with an allocation, a
// second empty block of a host and pool, or an affinity without its block
// is residue.
func Residue(ctx context.Context, kv store.KV) ([]string, error) {
	blocks, _, err := kv.List(ctx, model.BlockPrefix, false)
	if err != nil {
		return nil, err
	}
	affs, _, err := kv.List(ctx, model.AffinityPrefix, true)
	if err != nil {
		return nil, err
	}
	hasAff := map[string]bool{}
	for _, a := range affs {
		hasAff[a.Key] = true
	}
	kept := map[string]bool{}   // affinity keys of kept blocks
	keptIn := map[string]bool{} // host + pool with a kept block
	var out []string
	for _, r := range blocks {
		var b model.Block
		if err := store.DecodeRecord(r.Key, r.Value, &b); err != nil {
			return nil, err
		}
		ak := model.AffinityKey(b.Affinity, b.CIDR)
		slot := b.Affinity + " " + b.Pool
		if b.Affinity == "" || !empty(&b) || !hasAff[ak] || keptIn[slot] {
			out = append(out, r.Key)
			continue
		}
		kept[ak], keptIn[slot] = true, true
	}
	for _, a := range affs {
		if !kept[a.Key] {
			out = append(out, a.Key)
		}
	}
	sort.Strings(out)
	return out, nil
}
