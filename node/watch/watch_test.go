package watch

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tabby-net/tabby/pkg/etcdtest"
)

func client(t *testing.T, e *etcdtest.Etcd) *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFollowResyncAndDynamicPrefixes(t *testing.T) {
	e := etcdtest.Start(t)
	cli := client(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli.Put(ctx, "/a/1", "x")
	cli.Put(ctx, "/b/1", "not followed")
	c := New(cli, slog.Default())
	resyncs := 0
	c.Resyncs = func(string) { resyncs++ }
	c.Start(ctx, "/a/")
	waitFor(t, "initial sync", c.Synced)
	if v, ok := c.Get("/a/", "/a/1"); !ok || string(v) != "x" {
		t.Fatalf("initial: %q %v", v, ok)
	}
	cli.Put(ctx, "/a/2", "y")
	cli.Delete(ctx, "/a/1")
	waitFor(t, "events", func() bool {
		s := c.Snapshot("/a/")
		return len(s) == 1 && string(s["/a/2"]) == "y"
	})
	// Compaction while the watch is down makes it resync the prefix.
	for i := 0; i < 5; i++ {
		cli.Put(ctx, "/c/x", fmt.Sprint(i))
	}
	e.Stop()
	e.Restart(t)
	cli2 := client(t, e)
	r, _ := cli2.Put(ctx, "/a/3", "z")
	cli2.Compact(ctx, r.Header.Revision)
	waitFor(t, "catch-up after etcd restart", func() bool { _, ok := c.Get("/a/", "/a/3"); return ok })
	// Dynamic prefixes.
	c.SetPrefixes("/a/", "/b/")
	waitFor(t, "new prefix", func() bool { _, ok := c.Get("/b/", "/b/1"); return ok })
	c.SetPrefixes("/b/")
	if len(c.Snapshot("/a/")) != 0 || len(c.Prefixes()) != 1 {
		t.Fatalf("dropped prefix still held: %v", c.Prefixes())
	}
	t.Logf("resyncs: %d", resyncs)
}

// Refresh reads keys ahead of the watch; the watch's later (or older)
// events for them change nothing, and a delete wins once it is newer.
func TestRefreshAheadOfTheWatch(t *testing.T) {
	e := etcdtest.Start(t)
	cli := client(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A cache whose watch lags forever: the prefix is followed by hand.
	c := New(cli, slog.Default())
	c.data["/h/"] = map[string]entry{}
	old, err := cli.Put(ctx, "/h/ep", "v1")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := cli.Put(ctx, "/h/ep", "v2")
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := c.Refresh(ctx, "/h/ep", "/elsewhere/x"); err != nil || !changed {
		t.Fatalf("Refresh: changed %v, %v", changed, err)
	}
	if v, ok := c.Get("/h/", "/h/ep"); !ok || string(v) != "v2" {
		t.Fatalf("after Refresh: %q %v", v, ok)
	}
	// Holds: what is here, or outside every followed prefix, needs no read.
	if !c.Holds("/h/ep", "/elsewhere/x") {
		t.Fatal("Holds: /h/ep was read and /elsewhere/ is not followed")
	}
	if c.Holds("/h/ep", "/h/other") {
		t.Fatal("Holds: /h/other is followed and not here")
	}
	// An event older than what Refresh read (as a lagging watch would
	// deliver it) must not bring v1 back.
	stale := &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: []byte("/h/ep"), Value: []byte("v1"), ModRevision: old.Header.Revision}}
	c.apply("/h/", []*clientv3.Event{stale}, old.Header.Revision)
	if v, _ := c.Get("/h/", "/h/ep"); string(v) != "v2" {
		t.Fatalf("a stale event replaced the refreshed value: %q", v)
	}
	// Deleted in etcd: Refresh sees it at once, and the stale put that a
	// lagging watch still holds cannot resurrect it.
	if _, err := cli.Delete(ctx, "/h/ep"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(ctx, "/h/ep", "/elsewhere/x"); err != nil {
		t.Fatal(err)
	}
	stale.Kv.ModRevision, stale.Kv.Value = cur.Header.Revision, []byte("v2")
	c.apply("/h/", []*clientv3.Event{stale}, cur.Header.Revision)
	if v, ok := c.Get("/h/", "/h/ep"); ok {
		t.Fatalf("deleted key came back as %q", v)
	}
	if c.Holds("/h/ep") {
		t.Fatal("Holds: a tombstone is not the key")
	}
	// A real watch converges on etcd: a new write shows, the tombstone goes.
	delete(c.data, "/h/")
	c.Start(ctx, "/h/")
	if _, err := cli.Put(ctx, "/h/ep", "v3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "watch after refresh", func() bool { v, ok := c.Get("/h/", "/h/ep"); return ok && string(v) == "v3" })
}

// A prefix with a decoder keeps only what it decodes, from the paged
// first read, the watch and Refresh alike; a prefix bigger than a page
// loads whole.
func TestDecoderAndPagedLoad(t *testing.T) {
	e := etcdtest.Start(t)
	cli := client(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 2*loadPage + 7
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/d/%05d", j), fmt.Sprint(j)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	cli.Put(ctx, "/d/bad", "not a number")
	type num struct{ n int }
	c := New(cli, slog.Default())
	c.SetDecoder("/d/", func(key string, v []byte) (any, error) {
		var x num
		_, err := fmt.Sscan(string(v), &x.n)
		return &x, err
	})
	c.Start(ctx, "/d/")
	waitFor(t, "sync", c.Synced)
	got := Decode[*num](c, "/d/", nil)
	if len(got) != n || got["/d/00042"].n != 42 || got[fmt.Sprintf("/d/%05d", n-1)].n != n-1 {
		t.Fatalf("decoded %d of %d keys", len(got), n)
	}
	keys := 0
	c.Each("/d/", func(string, int64) { keys++ })
	if keys != n+1 {
		t.Fatalf("Each lists %d keys, want %d (the undecodable one too)", keys, n+1)
	}
	if _, ok := c.Get("/d/", "/d/00042"); ok || len(c.Snapshot("/d/")) != 0 {
		t.Fatal("a decoded prefix still holds raw values")
	}
	for _, e := range c.data["/d/"] {
		if e.value != nil {
			t.Fatal("raw value kept beside the decoded one")
		}
	}
	cli.Put(ctx, "/d/00042", "4242")
	cli.Delete(ctx, "/d/00043")
	waitFor(t, "events decoded", func() bool {
		x, ok := DecodeKey[*num](c, "/d/", "/d/00042")
		_, gone := DecodeKey[*num](c, "/d/", "/d/00043")
		return ok && x.n == 4242 && !gone
	})
	cli.Put(ctx, "/d/00044", "44044")
	if _, err := c.Refresh(ctx, "/d/00044"); err != nil {
		t.Fatal(err)
	}
	if x, ok := DecodeKey[*num](c, "/d/", "/d/00044"); !ok || x.n != 44044 {
		t.Fatalf("refreshed key: %+v %v", x, ok)
	}
}

// A followed name without a trailing "/" is one key: keys that merely
// start with it are neither read, nor delivered, nor counted as changes,
// and Refresh of them reads nothing.
func TestSingleKeyIsNotAPrefix(t *testing.T) {
	e := etcdtest.Start(t)
	cli := client(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cli.Put(ctx, "/p/web", "v1")
	cli.Put(ctx, "/p/webapp", "other")
	c := New(cli, slog.Default())
	c.Start(ctx, "/p/web", "/q/")
	waitFor(t, "initial sync", c.Synced)
	if s := c.Snapshot("/p/web"); len(s) != 1 || string(s["/p/web"]) != "v1" {
		t.Fatalf("initial read of one key: %q", s)
	}
	gen := c.Gen("/p/web")
	cli.Put(ctx, "/p/webapp", "other 2")
	cli.Put(ctx, "/p/web2", "x")
	// A write to the key itself, after the others: once it is seen, the
	// others would have been too.
	cli.Put(ctx, "/q/marker", "m")
	cli.Put(ctx, "/p/web", "v2")
	waitFor(t, "the key's write", func() bool { v, _ := c.Get("/p/web", "/p/web"); return string(v) == "v2" })
	if s := c.Snapshot("/p/web"); len(s) != 1 {
		t.Fatalf("keys beyond the one followed were delivered: %q", s)
	}
	if got := c.Gen("/p/web") - gen; got != 1 {
		t.Fatalf("%d changes counted for one write to the key", got)
	}
	if changed, err := c.Refresh(ctx, "/p/webapp"); err != nil || changed {
		t.Fatalf("Refresh of a key outside the followed one: changed %v, err %v", changed, err)
	}
	if c.Holds("/p/webapp") != true {
		t.Fatal("Holds asks for a key no followed name covers")
	}
	cli.Delete(ctx, "/p/web")
	waitFor(t, "the key's delete", func() bool { return len(c.Snapshot("/p/web")) == 0 })
}
