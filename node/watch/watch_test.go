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
	// A real watch converges on etcd: a new write shows, the tombstone goes.
	delete(c.data, "/h/")
	c.Start(ctx, "/h/")
	if _, err := cli.Put(ctx, "/h/ep", "v3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "watch after refresh", func() bool { v, ok := c.Get("/h/", "/h/ep"); return ok && string(v) == "v3" })
}
