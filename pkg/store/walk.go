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
//
// etcd counts every key of the range it is asked for, whatever the limit
// (its index visits them all, under the lock its writes need), so pages
// that each ask for the rest of a prefix of n keys cost n^2/limit visits
// in all: a million keys in pages of 500 is a billion, and every write
// waits behind them. Walk asks instead for subtrees: the keys that share
// the next key's first depth bytes. A subtree that holds many pages makes
// it go one byte deeper; after a run of tiny ones it reads what is left
// of their parent and goes on at the parent's depth. A page then costs
// etcd a few pages of keys, not the rest of the prefix
// (TestWalkBoundsRanges).
func Walk(ctx context.Context, kv KV, prefix string, opt WalkOptions, each func(*Page) error) (int64, error) {
	limit := opt.Limit
	if limit <= 0 {
		limit = DefaultPageSize
	}
	po := PageOptions{Limit: limit, KeysOnly: opt.KeysOnly}
	prefixEnd := string(PrefixEnd(prefix))
	// The range read: the keys from From that share From's first depth
	// bytes (len(prefix): the rest of the prefix). fresh: it started at a
	// subtree's first key, so its first count is the subtree's size.
	depth, fresh, size := len(prefix), false, int64(-1)
	// home is the depth whose subtrees last held a useful share of a page:
	// going deeper again stops there rather than where one page's keys
	// happen to agree (a host's workloads), which only climbs back.
	home := 0
	var rev int64
	delivered := false
	for {
		po.End = ""
		if depth > len(prefix) { // never on the first page: From is set
			from := po.From
			if end := string(PrefixEnd(from[:min(depth, len(from))])); end < prefixEnd {
				po.End = end
			}
		}
		p, err := kv.ListPage(ctx, prefix, po)
		if err != nil {
			return rev, fmt.Errorf("read %s from %q: %w", prefix, po.From, err)
		}
		rev = p.Rev
		if size < 0 {
			size = p.Count
		}
		last := p.Next == "" && po.End == ""
		if len(p.KVs) > 0 || (last && !delivered) {
			delivered = true
			if err := each(p); err != nil {
				return rev, err
			}
		}
		bytes := 0
		for i := range p.KVs {
			bytes += len(p.KVs[i].Key) + len(p.KVs[i].Value)
		}
		if opt.Pace != nil && len(p.KVs) > 0 {
			if err := opt.Pace(ctx, len(p.KVs), bytes); err != nil {
				return rev, err
			}
		}
		if last {
			return rev, nil
		}
		if opt.Snapshot {
			po.Rev = p.Rev
		}
		if opt.PageBytes > 0 && bytes > 0 {
			po.Limit = max(1, min(limit, opt.PageBytes*len(p.KVs)/bytes))
		}
		if p.Next != "" {
			po.From = p.Next
			if p.Count > 4*int64(po.Limit) && len(p.KVs) > 0 {
				// Deeper: to what this page's keys share, or home.
				target := commonPrefix(p.KVs[0].Key, p.KVs[len(p.KVs)-1].Key)
				if home > depth && home < target {
					target = home
				}
				depth = max(depth+1, target)
				fresh, size = false, -1
			}
			continue
		}
		// The range is done; the next starts where it ended: the next
		// subtree at this depth, or, after a tiny subtree, what is left
		// of its parent (its other tiny siblings, in one range).
		po.From = po.End
		if fresh && size < int64(po.Limit)/4 && depth > len(prefix)+1 {
			depth--
			fresh = false
		} else {
			if fresh {
				home = depth
			}
			fresh = true
		}
		size = -1
	}
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
