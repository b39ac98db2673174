package model_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func newKV(t *testing.T) store.KV {
	t.Helper()
	e := etcdtest.Start(t)
	kv, err := store.NewGRPC(store.Config{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return kv
}

func put(t *testing.T, kv store.KV, key, val string) {
	t.Helper()
	if _, err := kv.Txn(context.Background(), nil, []store.Op{store.Put(key, []byte(val))}); err != nil {
		t.Fatal(err)
	}
}

// The first writers to find no schema agree on one record; a store whose
// schema only a newer binary can write to is refused with an error that
// says what to do; an older store is raised to this binary's version.
func TestEnsureSchema(t *testing.T) {
	kv := newKV(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, ok, err := model.ReadSchema(ctx, kv); err != nil || ok {
		t.Fatalf("empty store: schema present %v, err %v", ok, err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = model.EnsureSchema(ctx, kv) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := kv.Get(ctx, model.SchemaKey)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Value) != model.CurrentSchema().JSON() {
		t.Fatalf("schema record %s, want %s", r.Value, model.CurrentSchema().JSON())
	}
	if r.CreateRev != r.ModRev {
		t.Fatalf("concurrent first writers rewrote the schema record (create rev %d, mod rev %d)", r.CreateRev, r.ModRev)
	}

	// A newer store that this binary can still write (additive change).
	put(t, kv, model.SchemaKey, `{"version":7,"minReader":1,"future":"ignored"}`)
	s, err := model.EnsureSchema(ctx, kv)
	if err != nil || s.Version != 7 {
		t.Fatalf("newer but compatible store: %+v %v", s, err)
	}

	// A newer store this binary may not write.
	put(t, kv, model.SchemaKey, `{"version":3,"minReader":2}`)
	_, err = model.EnsureSchema(ctx, kv)
	if !errors.Is(err, model.ErrSchemaTooNew) || !strings.Contains(err.Error(), "upgrade") || !strings.Contains(err.Error(), model.SchemaKey) {
		t.Fatalf("store needing schema 2: %v", err)
	}
	if r2, _ := kv.Get(ctx, model.SchemaKey); string(r2.Value) != `{"version":3,"minReader":2}` {
		t.Fatalf("a refused binary changed the schema record: %s", r2.Value)
	}
	// The plugins' IPAM reads the record with its first read (no extra
	// round trip) and refuses with code 120 before writing anything.
	if _, err := ipam.AddPool(ctx, kv, model.Pool{CIDR: "10.0.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	im := &ipam.IPAM{KV: kv, Host: "h1"}
	_, _, err = im.Assign(ctx, ipam.Request{Network: "n", ContainerID: "c", IPv4: true})
	if cnierr.CodeOf(err) != cnierr.DatastoreFormat || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("IPAM on a store needing schema 2: code %d, %v", cnierr.CodeOf(err), err)
	}
	if _, err := kv.Get(ctx, model.HandleKey("n", "c")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused assignment wrote its handle: %v", err)
	}

	// Garbage is a format error naming the key, not a silent overwrite.
	put(t, kv, model.SchemaKey, `{"version":0}`)
	if _, err := model.EnsureSchema(ctx, kv); !errors.Is(err, store.ErrFormat) {
		t.Fatalf("bad schema record: %v", err)
	}
}
