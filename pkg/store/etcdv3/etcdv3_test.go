package etcdv3

import (
	"context"
	"fmt"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/store"
)

// A list longer than a page comes back whole, in key order, and only the
// prefix's keys (every page after the first is read at the first one's
// revision, so it is one snapshot).
func TestListPages(t *testing.T) {
	e := etcdtest.Start(t)
	kv, err := New(store.Config{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Client.Close()
	ctx := context.Background()
	old := ListPageSize
	ListPageSize = 7
	defer func() { ListPageSize = old }()
	const n = 50
	for i := range n {
		if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(fmt.Sprintf("/p/k%03d", i), []byte("v"))}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Put("/q/outside", []byte("v"))}); err != nil {
		t.Fatal(err)
	}
	for _, keysOnly := range []bool{false, true} {
		got, rev, err := kv.List(ctx, "/p/", keysOnly)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != n || rev == 0 {
			t.Fatalf("keysOnly=%v: %d keys at rev %d, want %d", keysOnly, len(got), rev, n)
		}
		for i, k := range got {
			if want := fmt.Sprintf("/p/k%03d", i); k.Key != want {
				t.Fatalf("key %d = %s, want %s", i, k.Key, want)
			}
			if !keysOnly && string(k.Value) != "v" {
				t.Fatalf("%s = %q", k.Key, k.Value)
			}
		}
	}
	// The next list sees a later write and a later revision.
	_, rev, _ := kv.List(ctx, "/p/", true)
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Put("/p/k000a", []byte("late"))}); err != nil {
		t.Fatal(err)
	}
	if got, rev2, _ := kv.List(ctx, "/p/", true); len(got) != n+1 || rev2 <= rev {
		t.Fatalf("after a write: %d keys at %d (was %d)", len(got), rev2, rev)
	}
}
