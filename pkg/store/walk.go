package store

import (
	"context"
	"fmt"
)

// WalkOptions says how Walk reads a prefix.
type WalkOptions struct {
	// Limit is the most keys a page holds (DefaultPageSize if 0).
	Limit int
	// PageBytes, when set, shrinks the pages of a prefix with large values
	// (IPAM blocks are ~100 times an endpoint) so that a page holds about
	// this many bytes: a page's cost to etcd and to the others waiting
	// behind it is its bytes, not its keys.
	PageBytes int
	KeysOnly  bool
	// Snapshot reads every page at the first page's revision: one
	// consistent view, but a walk that outlives etcd's compaction of that
	// revision fails. Without it each page reads the latest revision.
	Snapshot bool
	// Pace, when set, runs after each page with its keys and value bytes,
	// before the next page is read; its error ends the walk.
	Pace func(ctx context.Context, keys, bytes int) error
}

// Walk streams the keys under prefix to each, one page at a time, in key
// order, so that a caller holds one page, never the prefix. It returns
// the revision of the last page read.
func Walk(ctx context.Context, kv KV, prefix string, opt WalkOptions, each func(*Page) error) (int64, error) {
	limit := opt.Limit
	if limit <= 0 {
		limit = DefaultPageSize
	}
	po := PageOptions{Limit: limit, KeysOnly: opt.KeysOnly}
	var rev int64
	for {
		p, err := kv.ListPage(ctx, prefix, po)
		if err != nil {
			return rev, fmt.Errorf("read %s from %q: %w", prefix, po.From, err)
		}
		rev = p.Rev
		if err := each(p); err != nil {
			return rev, err
		}
		bytes := 0
		for i := range p.KVs {
			bytes += len(p.KVs[i].Key) + len(p.KVs[i].Value)
		}
		if opt.Pace != nil {
			if err := opt.Pace(ctx, len(p.KVs), bytes); err != nil {
				return rev, err
			}
		}
		if p.Next == "" {
			return rev, nil
		}
		po.From = p.Next
		if opt.Snapshot {
			po.Rev = p.Rev
		}
		if opt.PageBytes > 0 && bytes > 0 {
			po.Limit = max(1, min(limit, opt.PageBytes*len(p.KVs)/bytes))
		}
	}
}
