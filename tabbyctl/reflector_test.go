package main

import (
	"context"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// node set --route-reflector changes only the role in a registered host's
// record; node show lists it; bad IDs and unknown hosts are refused.
func TestNodeSetRouteReflector(t *testing.T) {
	e := etcdtest.Start(t)
	kv, err := etcdv3.New(store.Config{Endpoints: []string{e.URL}})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	ctx := context.Background()
	h := model.Host{Name: "h1", IPv4: "198.19.0.1/24", VXLANMAC: "02:00:00:00:00:01"}
	if err := store.PutJSON(ctx, kv, model.NodeKey("h1"), h); err != nil {
		t.Fatal(err)
	}
	run := func(want int, args ...string) (string, string) {
		t.Helper()
		code, out, errs := runCtl(t, e.URL, args...)
		if code != want {
			t.Fatalf("tabbyctl %v: exit %d, want %d: %s%s", args, code, want, out, errs)
		}
		return out, errs
	}
	record := func() model.Host {
		t.Helper()
		var got model.Host
		if _, err := store.GetJSON(ctx, kv, model.NodeKey("h1"), &got); err != nil {
			t.Fatal(err)
		}
		return got
	}

	run(0, "node", "set", "h1", "--route-reflector", "244.0.0.1")
	want := h
	want.RouteReflectorClusterID = "244.0.0.1"
	if got := record(); got != want {
		t.Fatalf("record after set: %+v", got)
	}
	if out, _ := run(0, "node", "show"); !strings.Contains(out, "RR-CLUSTER") || !strings.Contains(out, "244.0.0.1") {
		t.Fatalf("node show:\n%s", out)
	}
	run(0, "node", "set", "h1", "--route-reflector", "244.0.0.1") // again: no change, no error

	for _, bad := range []string{"cluster-1", "::1", "1.2.3"} {
		if _, errs := run(2, "node", "set", "h1", "--route-reflector", bad); !strings.Contains(errs, "cluster ID") {
			t.Errorf("--route-reflector %s: stderr %q", bad, errs)
		}
	}
	run(2, "node", "set", "h1")
	if _, errs := run(1, "node", "set", "nosuch", "--route-reflector", "244.0.0.1"); !strings.Contains(errs, "no host nosuch") {
		t.Errorf("unknown host: %q", errs)
	}
	if got := record(); got != want {
		t.Fatalf("a refused set changed the record: %+v", got)
	}

	run(0, "node", "set", "h1", "--route-reflector=off")
	if got := record(); got != h {
		t.Fatalf("record after off: %+v", got)
	}
}
