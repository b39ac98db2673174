package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

type counter struct{ N int }

// Both clients must behave the same: the plugins use one, the daemon the other.
func clients(t testing.TB, eps []string) map[string]store.KV {
	h, err := store.NewHTTP(store.Config{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	g, err := etcdv3.New(store.Config{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	l, err := store.NewGRPC(store.Config{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); g.Close(); l.Close() })
	return map[string]store.KV{"http": h, "grpc": g, "lean": l}
}

func TestKVConformance(t *testing.T) {
	e := etcdtest.Start(t)
	for name, kv := range clients(t, e.Endpoints()) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			p := "/tabby/v1/test/" + name + "/"
			if _, err := kv.Get(ctx, p+"missing"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("missing key: got %v, want ErrNotFound", err)
			}
			// create-if-absent succeeds once
			r, err := kv.Txn(ctx, []store.Cmp{{Key: p + "a", ModRev: 0}}, []store.Op{store.Put(p+"a", []byte("1"))})
			if err != nil || !r.Succeeded {
				t.Fatalf("create: %v %+v", err, r)
			}
			r2, err := kv.Txn(ctx, []store.Cmp{{Key: p + "a", ModRev: 0}}, []store.Op{store.Put(p+"a", []byte("2"))})
			if err != nil || r2.Succeeded {
				t.Fatalf("second create must fail the compare: %v %+v", err, r2)
			}
			got, err := kv.Get(ctx, p+"a")
			if err != nil || string(got.Value) != "1" || got.ModRev != r.Revision {
				t.Fatalf("get: %v %+v (rev %d)", err, got, r.Revision)
			}
			// gets inside a txn, multiple keys and a prefix
			if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(p+"b", []byte("x")), store.Put(p+"c/1", []byte("y"))}); err != nil {
				t.Fatal(err)
			}
			gr, err := kv.Txn(ctx, nil, []store.Op{store.Get(p + "a"), store.Get(p + "nope"), {Kind: store.OpGet, Key: p + "c/", Prefix: true}})
			if err != nil || !gr.Succeeded || len(gr.Gets) != 3 {
				t.Fatalf("txn gets: %v %+v", err, gr)
			}
			if len(gr.Gets[0]) != 1 || len(gr.Gets[1]) != 0 || len(gr.Gets[2]) != 1 || string(gr.Gets[2][0].Value) != "y" {
				t.Fatalf("txn gets content: %+v", gr.Gets)
			}
			all, rev, err := kv.List(ctx, p, false)
			if err != nil || len(all) != 3 || rev < r.Revision {
				t.Fatalf("list: %v %d %d", err, len(all), rev)
			}
			keys, _, err := kv.List(ctx, p, true)
			if err != nil || len(keys) != 3 || len(keys[0].Value) != 0 {
				t.Fatalf("keys only: %v %+v", err, keys)
			}
			if _, err := kv.Txn(ctx, nil, []store.Op{{Kind: store.OpDelete, Key: p, Prefix: true}}); err != nil {
				t.Fatal(err)
			}
			if all, _, _ := kv.List(ctx, p, false); len(all) != 0 {
				t.Fatalf("prefix delete left %d keys", len(all))
			}
		})
	}
}

// Many writers increment one counter through ReadModifyWrite: no update is lost.
func TestReadModifyWriteNoLostUpdate(t *testing.T) {
	e := etcdtest.Start(t)
	kvs := clients(t, e.Endpoints())
	key := "/tabby/v1/test/counter"
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		kv := kvs["http"]
		if i%2 == 0 {
			kv = kvs["grpc"]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- store.Update(context.Background(), kv, key, func(c *counter, _ bool) (*counter, error) {
				c.N++
				return c, nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var c counter
	if _, err := store.GetJSON(context.Background(), kvs["http"], key, &c); err != nil || c.N != 40 {
		t.Fatalf("counter = %d (%v), want 40", c.N, err)
	}
}

// etcd down: every call fails with a typed error within a few seconds.
func TestUnavailableIsTypedAndBounded(t *testing.T) {
	e := etcdtest.Start(t)
	kvs := clients(t, e.Endpoints())
	e.Stop()
	for name, kv := range kvs {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			_, err := kv.Get(context.Background(), "/tabby/v1/x")
			if !store.IsUnavailable(err) {
				t.Fatalf("got %v, want UnavailableError", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v, want < 5s", d)
			}
			fmt.Println(name, "unavailable after", time.Since(start).Round(time.Millisecond), ":", err)
		})
	}
	e.Restart(t)
	for name, kv := range kvs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for {
			_, err := kv.Txn(ctx, nil, []store.Op{store.Put("/tabby/v1/x", []byte("1"))})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: no recovery after restart: %v", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
	}
}

// A stale seed costs a retry, never a lost update.
func TestSeededReadModifyWrite(t *testing.T) {
	e := etcdtest.Start(t)
	kv := clients(t, e.Endpoints())["http"]
	ctx := context.Background()
	key := "/tabby/v1/test/seeded"
	if err := store.Update(ctx, kv, key, func(c *counter, _ bool) (*counter, error) { c.N = 1; return c, nil }); err != nil {
		t.Fatal(err)
	}
	stale := store.Seed{key: nil} // claims the key is absent
	calls := 0
	_, err := store.ReadModifyWriteFrom(ctx, kv, stale, []string{key}, func(rs *store.ReadSet) ([]store.Op, error) {
		calls++
		var c counter
		if _, err := rs.Decode(key, &c); err != nil {
			return nil, err
		}
		c.N++
		return []store.Op{store.Put(key, store.MustJSON(c))}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var c counter
	store.GetJSON(ctx, kv, key, &c)
	if c.N != 2 || calls != 2 {
		t.Fatalf("counter %d after %d attempts; want 2 after 2 (the stale seed must fail its compare)", c.N, calls)
	}
}

// etcd with TLS and client certificates: both clients connect with the
// etcd_*_file settings, and refuse without them.
func TestTLS(t *testing.T) {
	f := etcdtest.PKI(t, t.TempDir())
	e := etcdtest.StartTLS(t, f)
	cfg := store.Config{Endpoints: e.Endpoints(), CAFile: f.CA, CertFile: f.ClientCert, KeyFile: f.ClientKey}
	h, err := store.NewHTTP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := etcdv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := store.NewGRPC(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	defer g.Close()
	defer l.Close()
	for name, kv := range map[string]store.KV{"http": h, "grpc": g, "lean": l} {
		if err := store.PutJSON(context.Background(), kv, "/tabby/v1/test/tls-"+name, counter{N: 1}); err != nil {
			t.Fatalf("%s over TLS: %v", name, err)
		}
	}
	// Without a client certificate etcd refuses the connection.
	noCert, _ := store.NewHTTP(store.Config{Endpoints: e.Endpoints(), CAFile: f.CA, Timeout: 2 * time.Second})
	if _, err := noCert.Get(context.Background(), "/tabby/v1/test/tls-http"); err == nil {
		t.Fatal("etcd answered a client without a certificate")
	}
	noCertG, _ := store.NewGRPC(store.Config{Endpoints: e.Endpoints(), CAFile: f.CA, Timeout: 2 * time.Second})
	if _, err := noCertG.Get(context.Background(), "/tabby/v1/test/tls-lean"); err == nil {
		t.Fatal("etcd answered a gRPC client without a certificate")
	}
	if _, err := store.NewHTTP(store.Config{Endpoints: e.Endpoints(), CAFile: "/nonexistent"}); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
}
