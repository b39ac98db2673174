package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/store"
)

// A read-then-compare-and-swap round, as an IPAM allocation makes it, per
// client: go test -bench . ./pkg/store
func BenchmarkReadCAS(b *testing.B) {
	e := etcdtest.Start(b)
	for name, kv := range clients(b, e.Endpoints()) {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			key := "/tabby/v1/test/bench-" + name
			for i := 0; b.Loop(); i++ {
				res, err := kv.Txn(ctx, nil, []store.Op{store.Get(key)})
				if err != nil {
					b.Fatal(err)
				}
				var rev int64
				if len(res.Gets[0]) > 0 {
					rev = res.Gets[0][0].ModRev
				}
				if r, err := kv.Txn(ctx, []store.Cmp{{Key: key, ModRev: rev}}, []store.Op{store.Put(key, fmt.Appendf(nil, `{"n":%d}`, i))}); err != nil || !r.Succeeded {
					b.Fatalf("CAS: %v", err)
				}
			}
		})
	}
}
