package agent

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// TestHostListMemory: what a node keeps per other host, its cache copy and
// what a pass derives from it, stays a few hundred bytes. Every node
// follows the host list, so at 10,000 hosts each byte here is 10 KB on
// every node; once the cache held each record twice (JSON and decoded) and
// every pass copied the list, 4 KB a host of resident memory in all.
func TestHostListMemory(t *testing.T) {
	e := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	if _, err := cli.Put(ctx, model.BGPConfigKey, string(store.MustJSON(model.BGPConfig{ASNumber: model.DefaultASNumber}))); err != nil {
		t.Fatal(err)
	}

	live := func() int64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	// heap is the live heap a node adds, with its cache synced and one
	// pass's view (peers and routes derived) held, as between two
	// reconciles: what the embedded etcd itself holds is measured before.
	heap := func() (int64, int) {
		before := live()
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		a := &Agent{cfg: Config{Name: "me", IPv4: "198.19.0.1/24"}, log: slog.New(slog.DiscardHandler)}
		a.cache = newCache(cli, a.log)
		a.cache.Start(cctx, a.basePrefixes()...)
		for deadline := time.Now().Add(30 * time.Second); !a.cache.Synced(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("cache not synced")
			}
		}
		v := a.snapshot()
		_ = v.peers()
		_, _ = v.remotes(nil, true)
		after := live()
		runtime.KeepAlive(v)
		runtime.KeepAlive(a)
		return after - before, len(v.nodes)
	}

	empty, _ := heap()
	const hosts = 10000
	var ops []clientv3.Op
	for i := 0; i < hosts; i++ {
		// The shape of a real record (tabby-node's hostRecord).
		name := fmt.Sprintf("host-%05d", i)
		h := model.Host{Name: name, IPv4: fmt.Sprintf("100.%d.%d.%d/10", 64+i>>16, i>>8&255, i&255), ASNumber: model.DefaultASNumber,
			VXLANTunnelAddr: fmt.Sprintf("10.%d.%d.1", i>>8&255, i&255), VXLANMAC: vxlanMAC(name).String(), IPIPSupported: true, Version: "v1.2.3-45-gabcdef0"}
		ops = append(ops, clientv3.OpPut(model.NodeKey(name), string(store.MustJSON(h))))
		if len(ops) == 100 || i == hosts-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	full, n := heap()
	if n != hosts {
		t.Fatalf("the view holds %d hosts, want %d", n, hosts)
	}
	per := (full - empty) / hosts
	t.Logf("a node's live heap: %.2f MB with no other host, %.2f MB with %d: %d B a host", float64(empty)/1e6, float64(full)/1e6, hosts, per)
	// Measured ~480 B a host (the decoded record, its cache entry, the
	// index's name and address); the JSON kept beside the decoded record
	// and a copy of the list per pass made it 786.
	if per > 600 {
		t.Errorf("a node keeps %d B of live heap per other host, want <= 600", per)
	}
}
