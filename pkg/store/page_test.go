package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/store"
)

// Every client pages a prefix the same way: key order, only the prefix,
// a continuation that resumes after the last key, a fixed revision that
// hides later writes, keys only on request.
func TestListPageConformance(t *testing.T) {
	e := etcdtest.Start(t)
	for name, kv := range clients(t, e.Endpoints()) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			p := "/tabby/v1/page/" + name + "/"
			const n = 23
			var ops []store.Op
			for i := range n {
				ops = append(ops, store.Put(fmt.Sprintf("%sk%03d", p, i), []byte(fmt.Sprint(i))))
			}
			// Neighbours on both sides must stay out of every page.
			ops = append(ops, store.Put(strings.TrimSuffix(p, "/"), []byte("x")), store.Put(p[:len(p)-1]+"0", []byte("x")))
			if _, err := kv.Txn(ctx, nil, ops); err != nil {
				t.Fatal(err)
			}
			var got []string
			opt := store.PageOptions{Limit: 5}
			pages, rev := 0, int64(0)
			for {
				pg, err := kv.ListPage(ctx, p, opt)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(pg.KVs) > 5 || pg.Rev == 0 {
					t.Fatalf("page %d: %d keys at rev %d", pages, len(pg.KVs), pg.Rev)
				}
				if rev == 0 {
					rev = pg.Rev
					// Written after the first page: invisible at its revision.
					if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(p+"k010a", []byte("late")), store.Delete(p + "k020")}); err != nil {
						t.Fatal(err)
					}
				} else if pg.Rev != rev {
					t.Fatalf("page %d read at %d, asked %d", pages, pg.Rev, rev)
				}
				for _, kv := range pg.KVs {
					got = append(got, kv.Key)
					if string(kv.Value) == "" {
						t.Fatalf("%s: no value", kv.Key)
					}
				}
				if pg.Next == "" {
					break
				}
				opt.From, opt.Rev = pg.Next, pg.Rev
			}
			if len(got) != n || pages != 5 {
				t.Fatalf("%d keys in %d pages, want %d in 5: %v", len(got), pages, n, got)
			}
			for i, k := range got {
				if want := fmt.Sprintf("%sk%03d", p, i); k != want {
					t.Fatalf("key %d = %s, want %s", i, k, want)
				}
			}
			// At the latest revision: the late write is there, the deleted
			// key is not; keys only.
			pg, err := kv.ListPage(ctx, p, store.PageOptions{From: p + "k010", Limit: 3, KeysOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(pg.KVs) != 3 || pg.KVs[1].Key != p+"k010a" || len(pg.KVs[0].Value) != 0 || pg.Next != p+"k011\x00" {
				t.Fatalf("latest page: %+v", pg)
			}
			// The last page says so, even when it is exactly full.
			pg, err = kv.ListPage(ctx, p, store.PageOptions{From: p + "k021", Limit: 2})
			if err != nil || len(pg.KVs) != 2 || pg.Next != "" {
				t.Fatalf("last page: %+v %v", pg, err)
			}
			if _, err := kv.ListPage(ctx, p, store.PageOptions{From: "/elsewhere"}); err == nil {
				t.Fatal("a continuation outside the prefix was accepted")
			}
			// End bounds the range, and Count is the range's keys, not the page's.
			pg, err = kv.ListPage(ctx, p, store.PageOptions{From: p + "k005", End: p + "k009", Limit: 2})
			if err != nil || len(pg.KVs) != 2 || pg.Count != 4 || pg.Next != p+"k006\x00" {
				t.Fatalf("bounded page: %+v %v", pg, err)
			}
			pg, err = kv.ListPage(ctx, p, store.PageOptions{From: p + "k007", End: p + "k009", Limit: 2})
			if err != nil || len(pg.KVs) != 2 || pg.Count != 2 || pg.Next != "" {
				t.Fatalf("bounded last page: %+v %v", pg, err)
			}
			for _, end := range []string{"/elsewhere", p + "k004"} {
				if _, err := kv.ListPage(ctx, p, store.PageOptions{From: p + "k005", End: end}); err == nil {
					t.Fatalf("end %q accepted", end)
				}
			}
		})
	}
}

// Walk hands over every key once, paces after every page, and shrinks its
// pages to PageBytes for large values.
func TestWalk(t *testing.T) {
	e := etcdtest.Start(t)
	for name, kv := range clients(t, e.Endpoints()) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			p := "/tabby/v1/walk/" + name + "/"
			var ops []store.Op
			for i := range 40 {
				v := "s"
				if i >= 20 {
					v = strings.Repeat("L", 1000)
				}
				ops = append(ops, store.Put(fmt.Sprintf("%sk%03d", p, i), []byte(v)))
			}
			if _, err := kv.Txn(ctx, nil, ops); err != nil {
				t.Fatal(err)
			}
			var sizes []int
			paced, seen := 0, 0
			_, err := store.Walk(ctx, kv, p, store.WalkOptions{Limit: 10, PageBytes: 3000, Snapshot: true,
				Pace: func(_ context.Context, keys, _ int) error { paced += keys; return nil }},
				func(pg *store.Page) error {
					sizes = append(sizes, len(pg.KVs))
					seen += len(pg.KVs)
					return nil
				})
			if err != nil {
				t.Fatal(err)
			}
			if seen != 40 || paced != 40 {
				t.Fatalf("walked %d keys, paced %d, want 40", seen, paced)
			}
			// Two pages of small values at the limit, then pages of ~3 large values.
			if sizes[0] != 10 || sizes[1] != 10 || sizes[len(sizes)-1] > 10 || len(sizes) < 6 {
				t.Fatalf("page sizes %v", sizes)
			}
			for _, s := range sizes[3:] {
				if s > 3 {
					t.Fatalf("pages of large values not shrunk: %v", sizes)
				}
			}
			stop := fmt.Errorf("stop")
			if _, err := store.Walk(ctx, kv, p, store.WalkOptions{Limit: 10}, func(*store.Page) error { return stop }); err != stop {
				t.Fatalf("each's error: %v", err)
			}
		})
	}
}

// countingKV adds up the keys etcd had to count for each page.
type countingKV struct {
	store.KV
	counted, pages int64
}

func (c *countingKV) ListPage(ctx context.Context, prefix string, opt store.PageOptions) (*store.Page, error) {
	p, err := c.KV.ListPage(ctx, prefix, opt)
	if err == nil {
		c.counted += p.Count
		c.pages++
	}
	return p, err
}

// A walk's pages do not each ask etcd for the rest of the prefix: etcd
// counts every key of a range whatever the limit, so that would cost
// n^2/limit key visits (here 20,000 keys in pages of 100: 2M). Every key
// still comes once, in order, at one revision.
func TestWalkBoundsRanges(t *testing.T) {
	e := etcdtest.Start(t)
	for name, kv := range clients(t, e.Endpoints()) {
		t.Run(name, func(t *testing.T) { walkBounded(t, kv, "/tabby/v1/bounded/"+name+"/") })
	}
}

func walkBounded(t *testing.T, kv store.KV, p string) {
	ctx := context.Background()
	var want []string
	// Shapes the datastore has: hosts with workloads under them, hashed
	// handle names, and a few odd ones out.
	for h := range 100 {
		for w := range 150 {
			want = append(want, fmt.Sprintf("%shost/node-%04d/wl/pod-%03d", p, h, w))
		}
	}
	for i := range 5000 {
		want = append(want, fmt.Sprintf("%shandle/k8s.%016x", p, uint64(i)*0x9e3779b97f4a7c15))
	}
	want = append(want, p+"a", p+"host", p+"z\xff\xff")
	for i := 0; i < len(want); i += 100 {
		var ops []store.Op
		for _, k := range want[i:min(i+100, len(want))] {
			ops = append(ops, store.Put(k, []byte("v")))
		}
		if _, err := kv.Txn(ctx, nil, ops); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)
	for _, snapshot := range []bool{false, true} {
		c := &countingKV{KV: kv}
		var got []string
		revs := map[int64]bool{}
		if _, err := store.Walk(ctx, c, p, store.WalkOptions{Limit: 100, Snapshot: snapshot}, func(pg *store.Page) error {
			for _, x := range pg.KVs {
				got = append(got, x.Key)
			}
			revs[pg.Rev] = true
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("snapshot %v: walked %d keys, want %d", snapshot, len(got), len(want))
		}
		if snapshot && len(revs) != 1 {
			t.Fatalf("snapshot walk read at %d revisions", len(revs))
		}
		n := int64(len(want))
		t.Logf("snapshot %v: %d keys, %d pages, etcd counted %d keys (%.1f per key)", snapshot, n, c.pages, c.counted, float64(c.counted)/float64(n))
		if c.counted > 10*n {
			t.Fatalf("etcd counted %d keys for a walk of %d (unbounded pages: ~%d)", c.counted, n, n*n/200)
		}
	}
}
