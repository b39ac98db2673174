package main

import (
	"context"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/pkg/workload"
)

// node remove takes a gone host's workload, address, block and record, says
// so, and refuses a name that holds nothing (a typo) or is not a name.
func TestNodeRemove(t *testing.T) {
	e := etcdtest.Start(t)
	kv, err := etcdv3.New(store.Config{Endpoints: []string{e.URL}})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	ctx := context.Background()
	if _, err := ipam.AddPool(ctx, kv, model.Pool{CIDR: "10.7.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	if err := store.PutJSON(ctx, kv, model.NodeKey("gone"), model.Host{Name: "gone", IPv4: "198.19.0.9/24"}); err != nil {
		t.Fatal(err)
	}
	a := &ipam.IPAM{KV: kv, Host: "gone", LockDir: t.TempDir()}
	_, out, err := a.Assign(ctx, ipam.Request{Network: "net", ContainerID: "c1", IfName: "eth0", IPv4: true})
	if err != nil {
		t.Fatal(err)
	}
	ep := &model.Endpoint{Host: "gone", Orchestrator: "cni", Workload: "c1", Name: "eth0", ContainerID: "c1", Network: "net",
		IPv4Nets: []string{out[0].IP.String() + "/32"}, Profiles: []string{"web"}}
	if err := workload.Put(ctx, kv, ep); err != nil {
		t.Fatal(err)
	}

	code, stdout, errs := runCtl(t, e.URL, "node", "remove", "gone")
	if code != 0 || !strings.Contains(stdout, "host gone removed: 1 endpoints") || !strings.Contains(stdout, "1 of its 1 blocks returned") {
		t.Fatalf("node remove: exit %d\n%s%s", code, stdout, errs)
	}
	for _, p := range []string{model.NodeKey("gone"), model.HostSubtree("gone"), model.AffinityHostPrefix("gone"), model.BlockPrefix, model.HandlePrefix, model.TagPrefix} {
		if kvs, _, err := kv.List(ctx, p, true); err != nil || len(kvs) != 0 {
			t.Errorf("left under %s: %v %v", p, kvs, err)
		}
	}
	if code, _, errs := runCtl(t, e.URL, "node", "remove", "gone"); code != 1 || !strings.Contains(errs, "no host gone registered") {
		t.Errorf("again: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runCtl(t, e.URL, "node", "remove", "a/b"); code != 2 || !strings.Contains(errs, "host") {
		t.Errorf("a bad name: exit %d, stderr %q", code, errs)
	}
}
