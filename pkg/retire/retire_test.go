package retire

import (
	"context"
	"net"
	"slices"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/pkg/workload"
)

func keys(t *testing.T, kv store.KV, prefix string) []string { return testutil.Keys(t, kv, prefix) }

// A host that left without its DELs: two workloads (one on an address
// borrowed from another host's block), a tunnel-like handle with no
// endpoint, an address whose handle is lost, a BGP peer of its own. The
// other host borrowed an address from it.
func TestRetireHost(t *testing.T) {
	e := etcdtest.Start(t)
	kv, err := store.NewHTTP(store.Config{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	ctx := context.Background()
	if _, err := ipam.AddPool(ctx, kv, model.Pool{CIDR: "10.9.0.0/24", BlockSize: 29}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"h1", "h2"} {
		if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(model.NodeKey(h), store.MustJSON(model.Host{Name: h, IPv4: "198.19.0.1/24"}))}); err != nil {
			t.Fatal(err)
		}
	}
	h1 := &ipam.IPAM{KV: kv, Host: "h1", LockDir: t.TempDir()}
	h2 := &ipam.IPAM{KV: kv, Host: "h2", LockDir: t.TempDir()}
	assign := func(a *ipam.IPAM, cid string, static string) string {
		t.Helper()
		r := ipam.Request{Network: "net", ContainerID: cid, IfName: "eth0", IPv4: static == ""}
		if static != "" {
			r.Static = []net.IP{net.ParseIP(static)}
		}
		_, out, err := a.Assign(ctx, r)
		if err != nil {
			t.Fatalf("assign %s on %s: %v", cid, a.Host, err)
		}
		return out[0].IP.String()
	}
	endpoint := func(host, cid, ip string) {
		t.Helper()
		ep := &model.Endpoint{Host: host, Orchestrator: "k8s", Workload: "default." + cid, Name: "eth0", ContainerID: cid, Network: "net",
			IPv4Nets: []string{ip + "/32"}, Profiles: []string{"prof"}, Handle: model.HandleID("net", cid)}
		if err := workload.Put(ctx, kv, ep); err != nil {
			t.Fatal(err)
		}
	}
	c1 := assign(h1, "c1", "")
	endpoint("h1", "c1", c1)
	// An address in h1's block (a /29: .0-.7 of the 8 it starts at) for
	// h2 to borrow.
	ip := net.ParseIP(c1).To4()
	ip[3] = ip[3]&^7 | 5
	lent, blockA := ip.String(), (&net.IPNet{IP: ip.Mask(net.CIDRMask(29, 32)), Mask: net.CIDRMask(29, 32)}).String()
	assign(h1, "tun", "")
	assign(h1, "leak", "")
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Delete(model.HandleKey("net", "leak"))}); err != nil {
		t.Fatal(err)
	}
	endpoint("h2", "b1", assign(h2, "b1", lent)) // borrowed from h1's block
	own := assign(h2, "d1", "")                  // claims h2's own block
	endpoint("h2", "d1", own)
	ip = net.ParseIP(own).To4()
	ip[3] = ip[3]&^7 | 4
	borrowed := ip.String()
	endpoint("h1", "c2", assign(h1, "c2", borrowed))
	peer := model.HostBGPPeerKey("h1", "198.19.0.99")
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(peer, store.MustJSON(model.BGPPeer{IP: "198.19.0.99", ASNumber: 65001}))}); err != nil {
		t.Fatal(err)
	}
	if len(keys(t, kv, model.TagMembersPrefix("prof"))) == 0 {
		t.Fatal("the endpoints wrote no tag entries; the test sets nothing up")
	}

	rep, err := Host(ctx, kv, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Registered || len(rep.Endpoints) != 2 || rep.Keys != 1 || rep.Blocks != 1 || rep.IPAM.Cleared != 1 ||
		!slices.Equal(rep.IPAM.Unaffined, []string{blockA}) || len(rep.IPAM.Dropped) != 0 ||
		!slices.Equal(rep.IPAM.Released, []string{"net.tun"}) {
		t.Fatalf("report %+v", rep)
	}
	for _, p := range []string{model.NodeKey("h1"), model.HostSubtree("h1"), model.AffinityHostPrefix("h1"), model.TagMembersPrefix("prof") + "h1/",
		model.HandleKey("net", "c1"), model.HandleKey("net", "c2"), model.HandleKey("net", "tun")} {
		if k := keys(t, kv, p); len(k) != 0 {
			t.Errorf("left behind under %s: %v", p, k)
		}
	}
	// h2's addresses are untouched: the one it borrowed from h1, its own.
	for _, ip := range []string{lent, own} {
		al, _, err := ipam.Lookup(ctx, kv, net.ParseIP(ip))
		if err != nil || al == nil || al.Host != "h2" {
			t.Errorf("%s after retiring h1: %+v %v, want h2's", ip, al, err)
		}
	}
	if al, _, _ := ipam.Lookup(ctx, kv, net.ParseIP(borrowed)); al != nil {
		t.Errorf("h1's address borrowed in h2's block is still held: %+v", al)
	}
	if r, err := ipam.Check(ctx, kv); err != nil || len(r.Problems) != 0 {
		t.Fatalf("ipam check after retiring: %+v %v", r, err)
	}
	// The block without an affinity goes with the last address in it.
	for _, cid := range []string{"b1", "d1"} {
		if _, err := workload.Delete(ctx, kv, model.EndpointKey("h2", "k8s", "default."+cid, "eth0"), ""); err != nil {
			t.Fatal(err)
		}
		if err := h2.Release(ctx, "net", cid); err != nil {
			t.Fatal(err)
		}
	}
	if k := keys(t, kv, model.BlockKey("10.9.0.0/24", blockA)); len(k) != 0 {
		t.Fatalf("the unaffined block outlived its last address: %v", k)
	}
	if k, err := ipam.Residue(ctx, kv); err != nil || len(k) != 0 {
		t.Fatalf("residue: %v %v", k, err)
	}
	again, err := Host(ctx, kv, "h1")
	if err != nil || !again.Empty() {
		t.Fatalf("again: %+v %v, want nothing left to remove", again, err)
	}
	if k := keys(t, kv, model.NodeKey("h2")); len(k) != 1 {
		t.Fatal("h2's record went too")
	}
}
