// Package store is tabby's access to etcd: a small key-value seam (KV) with two
// implementations, and the one read-modify-write helper every caller uses.
//
// The CNI plugins are short-lived processes whose start-up time is the ADD
// latency, so they do not link clientv3 (~2 ms of package init plus a
// gRPC handshake per process). They speak etcd's gRPC KV API through
// GRPCKV, which needs only the standard library; HTTPKV, etcd's JSON
// gateway over net/http, starts as fast but costs etcd about twice the CPU
// per call and each Txn ~0.3 ms more (BenchmarkReadCAS), so it stays only as
// the measured alternative. Resident programs (tabby-node, tabbyctl) use
// clientv3, which they also need for watches.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// KeyValue is one stored key.
type KeyValue struct {
	Key       string
	Value     []byte
	ModRev    int64
	CreateRev int64
}

// OpKind is what an Op does.
type OpKind int

// Op kinds.
const (
	OpPut OpKind = iota
	OpDelete
	OpGet
)

// Op is one operation in a transaction.
type Op struct {
	Kind   OpKind
	Key    string
	Value  []byte
	Prefix bool // OpGet/OpDelete: the whole prefix
}

// Put, Delete and Get build Ops.
func Put(key string, value []byte) Op { return Op{Kind: OpPut, Key: key, Value: value} }
func Delete(key string) Op            { return Op{Kind: OpDelete, Key: key} }
func Get(key string) Op               { return Op{Kind: OpGet, Key: key} }

// Cmp guards a transaction: the key's mod revision must equal ModRev, where 0
// means the key must not exist. Revisions only grow, even across delete and
// re-create, so a revision compare cannot suffer ABA.
type Cmp struct {
	Key    string
	ModRev int64
}

// TxnResult is what a transaction returned. Gets holds, per OpGet in the
// executed branch, the keys it found.
type TxnResult struct {
	Succeeded bool
	Revision  int64
	Gets      [][]KeyValue
}

// PageOptions says which page of a prefix ListPage reads.
type PageOptions struct {
	// From is the first key to read: "" for the prefix's first key, else a
	// previous page's Next.
	From string
	// Limit is the most keys the page holds; 0 or less is DefaultPageSize.
	Limit int
	// Rev reads at this store revision (a previous page's Rev, so that
	// pages compose one snapshot); 0 reads the latest. etcd answers a
	// compacted revision with an error.
	Rev      int64
	KeysOnly bool
	// End, when set, bounds the page's range below it (a key inside the
	// prefix): etcd counts every key of a range it is asked for, limit or
	// not, so a walk keeps its ranges small (Walk).
	End string
}

// Page is one page of a prefix.
type Page struct {
	KVs []KeyValue
	// Rev is the store revision the page was read at.
	Rev int64
	// Next is where the following page starts (PageOptions.From); "" when
	// this page ended its range (the prefix, or End).
	Next string
	// Count is how many keys the range from From to End (or the prefix's
	// end) held at Rev, as etcd counted them.
	Count int64
}

// DefaultPageSize is ListPage's page without a Limit: big enough that a
// round trip is not the cost, small enough that one range does not hold
// etcd's read transaction (and other clients' requests) for long.
const DefaultPageSize = 500

// PageRange is the range a page of prefix reads: its start key, its end
// and its limit. From must lie inside the prefix: a continuation from
// elsewhere would silently read another prefix's keys.
func PageRange(prefix string, opt PageOptions) (start string, end []byte, limit int64, err error) {
	start = prefix
	if opt.From != "" {
		if !strings.HasPrefix(opt.From, prefix) {
			return "", nil, 0, fmt.Errorf("page of %s: continuation %q is outside the prefix", prefix, opt.From)
		}
		start = opt.From
	}
	limit = int64(opt.Limit)
	if limit <= 0 {
		limit = DefaultPageSize
	}
	end = PrefixEnd(prefix)
	if opt.End != "" {
		if !strings.HasPrefix(opt.End, prefix) || opt.End <= start {
			return "", nil, 0, fmt.Errorf("page of %s: end %q is outside the prefix or not after %q", prefix, opt.End, start)
		}
		end = []byte(opt.End)
	}
	return start, end, limit, nil
}

// NewPage is the page a range read answered: kvs, read at rev (etcd's
// header revision) with more after them or not. etcd's header carries its
// latest revision, not the one a fixed-revision read asked for, so the
// asked one is kept: pages that continue from it stay one snapshot.
func NewPage(kvs []KeyValue, rev int64, more bool, count int64, opt PageOptions) *Page {
	p := &Page{KVs: kvs, Rev: rev, Count: count}
	if opt.Rev != 0 {
		p.Rev = opt.Rev
	}
	if more && len(kvs) > 0 {
		p.Next = NextAfter(kvs[len(kvs)-1].Key)
	}
	return p
}

// NextAfter is the continuation key of a page whose last key is last and
// after which etcd said there are more: the smallest key above last.
func NextAfter(last string) string { return last + "\x00" }

// KV is the datastore seam. Implementations apply a deadline to every call and
// map transport failures to ErrUnavailable.
type KV interface {
	// Get returns the key or ErrNotFound.
	Get(ctx context.Context, key string) (*KeyValue, error)
	// List returns every key under prefix and the store revision it read at.
	List(ctx context.Context, prefix string, keysOnly bool) ([]KeyValue, int64, error)
	// ListPage returns one page of the keys under prefix, in key order, and
	// where the next page starts: a caller can stream a prefix too large to
	// hold (Walk), and pace its reads.
	ListPage(ctx context.Context, prefix string, opt PageOptions) (*Page, error)
	// Txn runs ops if every cmp holds; it returns Succeeded=false otherwise.
	Txn(ctx context.Context, cmps []Cmp, ops []Op) (*TxnResult, error)
	Close() error
}

// ErrNotFound is returned for a missing key.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned when a compare-and-swap kept losing races.
var ErrConflict = errors.New("too many concurrent updates; try again")

// UnavailableError means etcd could not be reached or did not answer in time.
// CNI plugins turn it into code 11 (try again later).
type UnavailableError struct {
	Endpoints []string
	Err       error
}

func (e *UnavailableError) Error() string {
	if IsNoSpace(e.Err) {
		return fmt.Sprintf("etcd at %v is out of space: %v (its NOSPACE alarm is raised: it takes no writes until an operator frees space: compact, defragment, then etcdctl alarm disarm)", e.Endpoints, e.Err)
	}
	return fmt.Sprintf("etcd at %v is unreachable: %v (check that etcd runs and etcd_endpoints is right)", e.Endpoints, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// IsNoSpace reports whether err is etcd's answer while its space quota
// alarm (NOSPACE) is raised: reachable, but refusing writes.
func IsNoSpace(err error) bool {
	return err != nil && strings.Contains(err.Error(), "database space exceeded")
}

// IsUnavailable reports whether err means etcd is unreachable.
func IsUnavailable(err error) bool {
	var u *UnavailableError
	return errors.As(err, &u)
}

// DefaultTimeout bounds each call when the caller's context has no deadline, so
// that no caller can hang on a dead etcd.
const DefaultTimeout = 4 * time.Second

// Config says how to reach etcd.
type Config struct {
	Endpoints []string
	CAFile    string
	CertFile  string
	KeyFile   string
	Timeout   time.Duration // per call; DefaultTimeout if zero
}
