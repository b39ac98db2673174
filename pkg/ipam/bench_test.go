package ipam

import (
	"context"
	"fmt"
	"testing"

	"github.com/tabby-net/tabby/pkg/model"
)

// An ADD and DEL on a host whose blocks are full costs what it costs on a
// host with one resident workload: the full blocks stay out of the way of
// the decision (the scale run's full datastore's host holds 100 workloads).
func BenchmarkAssignReleaseCached(b *testing.B) {
	for _, resident := range []int{1, 130} {
		b.Run(fmt.Sprintf("resident=%d", resident), func(b *testing.B) {
			kv := newKV(b)
			ctx := context.Background()
			if _, err := AddPool(ctx, kv, model.Pool{CIDR: "10.0.0.0/16"}); err != nil {
				b.Fatal(err)
			}
			a := &IPAM{KV: kv, Host: "h1", LockDir: b.TempDir()}
			for i := range resident {
				if _, _, err := a.Assign(ctx, req(fmt.Sprintf("r%d", i))); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				c := fmt.Sprintf("c%d", i)
				if _, _, err := a.Assign(ctx, req(c)); err != nil {
					b.Fatal(err)
				}
				if err := a.Release(ctx, "net", c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
