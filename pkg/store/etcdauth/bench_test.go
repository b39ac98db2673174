package etcdauth_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdauth"
)

// What TLS and etcd's authentication cost the plugins: a read and a
// compare-and-swap of a host's own endpoint key over the plugins' client,
// on plain http, on TLS with a client certificate, and on TLS with auth on
// (etcd checks the CN's role on every request). A new client per
// iteration in the "dial" rows, as a CNI process makes it:
// go test -bench . ./pkg/store/etcdauth
func BenchmarkReadCASSecurity(b *testing.B) {
	plain := etcdtest.Start(b)
	dir := b.TempDir()
	ca, err := etcdtest.NewCA(dir, "ca")
	if err != nil {
		b.Fatal(err)
	}
	sc, sk, _ := ca.Issue("server", "etcd", "127.0.0.1")
	rc, rk, _ := ca.Issue("root", etcdauth.RootUser)
	hc, hk, _ := ca.Issue("h1", etcdauth.HostUserPrefix+"h1")
	tlsE := etcdtest.StartTLS(b, etcdtest.TLSFiles{CA: ca.File, ServerCert: sc, ServerKey: sk})
	authE := etcdtest.StartTLS(b, etcdtest.TLSFiles{CA: ca.File, ServerCert: sc, ServerKey: sk})
	tlsCfg, _ := store.TLSConfig(store.Config{CAFile: ca.File, CertFile: rc, KeyFile: rk})
	root, err := clientv3.New(clientv3.Config{Endpoints: authE.Endpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	h1, _ := etcdauth.Host("h1")
	if err := etcdauth.Apply(context.Background(), root, h1); err != nil {
		b.Fatal(err)
	}
	if err := etcdauth.Enable(context.Background(), root); err != nil {
		b.Fatal(err)
	}
	cfgs := []struct {
		name string
		cfg  store.Config
	}{
		{"plain", store.Config{Endpoints: plain.Endpoints()}},
		{"tls", store.Config{Endpoints: tlsE.Endpoints(), CAFile: ca.File, CertFile: hc, KeyFile: hk}},
		{"tls+auth", store.Config{Endpoints: authE.Endpoints(), CAFile: ca.File, CertFile: hc, KeyFile: hk}},
	}
	key := model.EndpointKey("h1", "cni", "bench", "eth0")
	round := func(b *testing.B, kv store.KV, i int) {
		ctx := context.Background()
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
	for _, c := range cfgs {
		b.Run(c.name, func(b *testing.B) {
			kv, err := store.NewGRPC(c.cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer kv.Close()
			for i := 0; b.Loop(); i++ {
				round(b, kv, i)
			}
		})
		b.Run(c.name+"/dial", func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				kv, err := store.NewGRPC(c.cfg)
				if err != nil {
					b.Fatal(err)
				}
				round(b, kv, i)
				kv.Close()
			}
		})
	}
}
