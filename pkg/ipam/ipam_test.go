package ipam

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func newKV(t testing.TB) store.KV {
	e := etcdtest.Start(t)
	kv, err := store.NewHTTP(store.Config{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return kv
}

func addPool(t *testing.T, kv store.KV, p model.Pool) {
	t.Helper()
	if _, err := AddPool(context.Background(), kv, p); err != nil {
		t.Fatal(err)
	}
}

func req(cid string) Request {
	return Request{Network: "net", ContainerID: cid, IfName: "eth0", IPv4: true}
}

func count(t *testing.T, kv store.KV, prefix string) int {
	t.Helper()
	kvs, _, err := kv.List(context.Background(), prefix, true)
	if err != nil {
		t.Fatal(err)
	}
	return len(kvs)
}

func TestAssignFromAffineBlockAndIdempotent(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	a := &IPAM{KV: kv, Host: "h1", LockDir: t.TempDir()}
	h, out, err := a.Assign(ctx, req("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || len(h.IPs) != 1 || out[0].Block.String() == "" {
		t.Fatalf("assigned %+v", out)
	}
	_, again, err := a.Assign(ctx, req("c1"))
	if err != nil || !again[0].IP.Equal(out[0].IP) {
		t.Fatalf("second ADD with the same handle: %v %v, want %v", again, err, out[0].IP)
	}
	_, out2, err := a.Assign(ctx, req("c2"))
	if err != nil {
		t.Fatal(err)
	}
	if out2[0].Block.String() != out[0].Block.String() {
		t.Fatalf("second container got block %s, want the host's block %s", out2[0].Block, out[0].Block)
	}
	if n := count(t, kv, model.AffinityHostPrefix("h1")); n != 1 {
		t.Fatalf("%d affinities, want 1", n)
	}
	// Release both: the handles go; the host's only block stays affine,
	// empty, for its next ADD (TestReleaseKeepsTheHostsLastBlock).
	for _, c := range []string{"c1", "c2", "c2"} {
		if err := a.Release(ctx, "net", c); err != nil {
			t.Fatal(err)
		}
	}
	for p, want := range map[string]int{model.BlockPrefix: 1, model.AffinityPrefix: 1, model.HandlePrefix: 0} {
		if n := count(t, kv, p); n != want {
			t.Fatalf("%d keys left under %s, want %d", n, p, want)
		}
	}
}

// TestReleaseKeepsTheHostsLastBlock: a host whose blocks are full, its
// workloads coming and going at the boundary, claims one block and keeps
// it (an ADD that claimed a block on every ADD and released it on every
// DEL probed the pool and wrote an affinity each time, and moved a route on
// every host); a block emptied while another of the host's blocks has
// room goes back to the pool; without a host cache, as in GC, an empty
// block goes.
func TestReleaseKeepsTheHostsLastBlock(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16", BlockSize: 30})
	a := &IPAM{KV: kv, Host: "h1", LockDir: t.TempDir()}
	blocks := func() []string {
		t.Helper()
		kvs, _, err := kv.List(ctx, model.BlockPrefix, true)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key)
		}
		return out
	}
	assign := func(cid string) string {
		t.Helper()
		_, out, err := a.Assign(ctx, req(cid))
		if err != nil {
			t.Fatal(err)
		}
		return out[0].Block.String()
	}
	// Fill the host's first block.
	first := assign("f0")
	for i := 1; ; i++ {
		if b := assign(fmt.Sprintf("f%d", i)); b != first {
			if err := a.Release(ctx, "net", fmt.Sprintf("f%d", i)); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	kept := blocks()
	if len(kept) != 2 || count(t, kv, model.AffinityHostPrefix("h1")) != 2 {
		t.Fatalf("after the boundary workload's DEL: blocks %v, want the full one and the emptied one kept", kept)
	}
	for i := range 5 {
		assign(fmt.Sprintf("b%d", i))
		if err := a.Release(ctx, "net", fmt.Sprintf("b%d", i)); err != nil {
			t.Fatal(err)
		}
		if got := blocks(); !slices.Equal(got, kept) {
			t.Fatalf("round %d at the boundary: blocks %v, want %v (no claim, no release)", i, got, kept)
		}
	}
	if k, err := Residue(ctx, kv); err != nil || len(k) != 2 {
		t.Fatalf("residue with the first block full: %v %v, want only that block and its affinity", k, err)
	}
	// The second block's workload goes after one of the first block's: the
	// emptied block has a neighbour with room, and goes back to the pool.
	if b := assign("x"); b == first {
		t.Fatalf("x got the full block %s", b)
	}
	for _, cid := range []string{"f0", "x"} {
		if err := a.Release(ctx, "net", cid); err != nil {
			t.Fatal(err)
		}
	}
	if got := blocks(); len(got) != 1 || count(t, kv, model.AffinityHostPrefix("h1")) != 1 {
		t.Fatalf("emptied beside a block with room: blocks %v, want only the first", got)
	}
	// No state dir, no cache: the emptied block goes.
	b := &IPAM{KV: kv, Host: "h2"}
	if _, _, err := b.Assign(ctx, req("h2a")); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, "net", "h2a"); err != nil {
		t.Fatal(err)
	}
	if n := count(t, kv, model.AffinityHostPrefix("h2")); n != 0 {
		t.Fatalf("h2 without a cache kept %d blocks", n)
	}
	for i := 1; ; i++ {
		cid := fmt.Sprintf("f%d", i)
		if _, err := kv.Get(ctx, model.HandleKey("net", cid)); errors.Is(err, store.ErrNotFound) {
			break
		}
		if err := a.Release(ctx, "net", cid); err != nil {
			t.Fatal(err)
		}
	}
	if k, err := Residue(ctx, kv); err != nil || len(k) != 0 || count(t, kv, model.AffinityHostPrefix("h1")) != 1 {
		t.Fatalf("every workload gone: residue %v %v, want none and h1's one kept block", k, err)
	}
	// h1 gone for good: its kept block goes back by hand; a block that
	// holds an address does not.
	if _, out, err := b.Assign(ctx, req("h2b")); err != nil {
		t.Fatal(err)
	} else if err := ReleaseBlock(ctx, kv, out[0].Block.String()); err == nil || !strings.Contains(err.Error(), "still holds 1 addresses") {
		t.Fatalf("release of a block in use: %v", err)
	}
	kept = blocks()
	for _, k := range kept {
		var blk model.Block
		if _, err := store.GetJSON(ctx, kv, k, &blk); err != nil {
			t.Fatal(err)
		}
		if blk.Affinity == "h1" {
			if err := ReleaseBlock(ctx, kv, blk.CIDR); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := count(t, kv, model.AffinityHostPrefix("h1")); n != 0 || len(blocks()) != 1 {
		t.Fatalf("after ReleaseBlock: h1 has %d affinities, blocks %v", n, blocks())
	}
}

func TestStaticAddresses(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	addPool(t, kv, model.Pool{CIDR: "10.9.0.0/16", Disabled: true})
	h1 := &IPAM{KV: kv, Host: "h1"}
	h2 := &IPAM{KV: kv, Host: "h2"}
	r := req("a")
	r.Static = []net.IP{net.ParseIP("10.0.0.1")}
	if _, out, err := h1.Assign(ctx, r); err != nil || out[0].IP.String() != "10.0.0.1" {
		t.Fatalf("static: %v %v", out, err)
	}
	// Same address again, other container: in use.
	r2 := req("b")
	r2.Static = []net.IP{net.ParseIP("10.0.0.1")}
	if _, _, err := h2.Assign(ctx, r2); cnierr.CodeOf(err) != cnierr.AddressInUse {
		t.Fatalf("in use: got %v", err)
	}
	// 10.0.0.2 from host 2 is borrowed from h1's block (the seed scenario).
	r2.Static = []net.IP{net.ParseIP("10.0.0.2")}
	if _, out, err := h2.Assign(ctx, r2); err != nil || out[0].IP.String() != "10.0.0.2" {
		t.Fatalf("borrow static: %v %v", out, err)
	}
	r3 := req("c")
	r3.Static = []net.IP{net.ParseIP("10.0.0.3")}
	r3.StrictAffinity = true
	if _, _, err := h2.Assign(ctx, r3); cnierr.CodeOf(err) != cnierr.NotAffine {
		t.Fatalf("strict: got %v", err)
	}
	r3.StrictAffinity = false
	r3.Static = []net.IP{net.ParseIP("172.31.0.1")}
	if _, _, err := h2.Assign(ctx, r3); cnierr.CodeOf(err) != cnierr.NoPool {
		t.Fatalf("outside pools: got %v", err)
	}
	r3.Static = []net.IP{net.ParseIP("10.9.0.1")}
	if _, _, err := h2.Assign(ctx, r3); cnierr.CodeOf(err) != cnierr.PoolDisabled {
		t.Fatalf("disabled pool: got %v", err)
	}
	// Nothing was written by the failed attempts.
	if n := count(t, kv, model.HandlePrefix); n != 2 {
		t.Fatalf("%d handles, want 2", n)
	}
	if err := ReleaseIP(ctx, kv, net.ParseIP("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if al, _, _ := Lookup(ctx, kv, net.ParseIP("10.0.0.2")); al != nil {
		t.Fatalf("10.0.0.2 still allocated: %+v", al)
	}
}

func TestExhaustBorrowAndStrict(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	// Two /30 blocks in a /29: 8 addresses, minus network and broadcast.
	addPool(t, kv, model.Pool{CIDR: "10.1.0.0/29", BlockSize: 30})
	h1 := &IPAM{KV: kv, Host: "h1"}
	h2 := &IPAM{KV: kv, Host: "h2"}
	if _, _, err := h1.Assign(ctx, req("a1")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h2.Assign(ctx, req("b1")); err != nil {
		t.Fatal(err)
	}
	// Fill h2's block, then h2 must borrow from h1's block.
	seen := map[string]bool{}
	for i := 2; i <= 6; i++ {
		r := req(fmt.Sprintf("b%d", i))
		_, out, err := h2.Assign(ctx, r)
		if i == 6 {
			if cnierr.CodeOf(err) != cnierr.PoolExhausted {
				t.Fatalf("7th address: got %v, want exhausted", err)
			}
			break
		}
		if err != nil {
			t.Fatalf("assign %d: %v", i, err)
		}
		if seen[out[0].IP.String()] {
			t.Fatalf("duplicate %s", out[0].IP)
		}
		seen[out[0].IP.String()] = true
	}
	r := req("strict")
	r.StrictAffinity = true
	if err := h2.Release(ctx, "net", "b5"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h2.Assign(ctx, r); err != nil {
		// b5 was borrowed from h1's block; with strict affinity h2 cannot get it.
		if cnierr.CodeOf(err) != cnierr.PoolExhausted {
			t.Fatalf("strict: %v", err)
		}
	} else {
		t.Fatal("strict affinity borrowed an address")
	}
}

func TestDualStack(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	addPool(t, kv, model.Pool{CIDR: "fd00:10::/64"})
	a := &IPAM{KV: kv, Host: "h1"}
	r := req("d")
	r.IPv6 = true
	_, out, err := a.Assign(ctx, r)
	if err != nil || len(out) != 2 || out[0].IP.To4() == nil || out[1].IP.To4() != nil {
		t.Fatalf("dual stack: %+v %v", out, err)
	}
	if ones, _ := out[1].Block.Mask.Size(); ones != 122 {
		t.Fatalf("v6 block /%d, want /122", ones)
	}
	if _, _, err := a.Assign(ctx, Request{Network: "net", ContainerID: "x", IPv6: true, Pools6: []string{"fd99::/64"}}); cnierr.CodeOf(err) != cnierr.NoPool {
		t.Fatalf("unknown pool: %v", err)
	}
}

func TestPoolValidationAndRemove(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16", IPIPMode: "always", NATOutgoing: true})
	for _, bad := range []model.Pool{
		{CIDR: "10.0.1.0/24"},                     // overlap
		{CIDR: "10.2.0.1/16"},                     // host bits
		{CIDR: "nonsense"},                        //
		{CIDR: "fd00::/64", IPIPMode: "always"},   // ipip v6
		{CIDR: "10.3.0.0/16", BlockSize: 8},       // block bigger than pool
		{CIDR: "10.4.0.0/16", VXLANMode: "often"}, // bad mode
	} {
		if _, err := AddPool(ctx, kv, bad); err == nil {
			t.Errorf("pool %+v accepted", bad)
		}
	}
	a := &IPAM{KV: kv, Host: "h1"}
	if _, _, err := a.Assign(ctx, req("x")); err != nil {
		t.Fatal(err)
	}
	if err := RemovePool(ctx, kv, "10.0.0.0/16"); err == nil {
		t.Fatal("removed a pool with allocations")
	} else {
		t.Log(err)
	}
	if err := a.Release(ctx, "net", "x"); err != nil {
		t.Fatal(err)
	}
	if err := RemovePool(ctx, kv, "10.0.0.0/16"); err != nil {
		t.Fatal(err)
	}
}

// Three hosts, 50 concurrent assignments each: all distinct, each from its own
// host's blocks; then all releases leave nothing.
func TestConcurrentHostsNoDuplicates(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	var mu sync.Mutex
	got := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 150)
	for h := 0; h < 3; h++ {
		a := &IPAM{KV: kv, Host: fmt.Sprintf("h%d", h)} // no lock: hosts race through etcd only
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func(cid string) {
				defer wg.Done()
				_, out, err := a.Assign(ctx, req(cid))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				defer mu.Unlock()
				ip := out[0].IP.String()
				if prev, dup := got[ip]; dup {
					errs <- fmt.Errorf("%s given to %s and %s", ip, prev, cid)
				}
				got[ip] = a.Host
				al, b, err := Lookup(ctx, kv, out[0].IP)
				if err != nil || al == nil || b.Affinity != a.Host {
					errs <- fmt.Errorf("%s of %s is in block of %v (%v)", ip, a.Host, b, err)
				}
			}(fmt.Sprintf("h%d-c%d", h, i))
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(got) != 150 {
		t.Fatalf("%d addresses, want 150", len(got))
	}
	for h := 0; h < 3; h++ {
		a := &IPAM{KV: kv, Host: fmt.Sprintf("h%d", h)}
		for i := 0; i < 50; i++ {
			if err := a.Release(ctx, "net", fmt.Sprintf("h%d-c%d", h, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, p := range []string{model.BlockPrefix, model.HandlePrefix, model.AffinityPrefix} {
		if n := count(t, kv, p); n != 0 {
			t.Fatalf("%d keys left under %s", n, p)
		}
	}
}

func TestGCAndCheck(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	a := &IPAM{KV: kv, Host: "h1"}
	for _, c := range []string{"keep", "leak1", "leak2"} {
		if _, _, err := a.Assign(ctx, req(c)); err != nil {
			t.Fatal(err)
		}
	}
	// Another host's container: host h1's runtime does not know it, and
	// h1's GC must leave it alone.
	if _, _, err := (&IPAM{KV: kv, Host: "h2"}).Assign(ctx, req("other")); err != nil {
		t.Fatal(err)
	}
	rep, err := Check(ctx, kv)
	if err != nil || rep.Allocations != 4 || len(rep.Problems) != 4 {
		t.Fatalf("check: %+v %v", rep, err)
	}
	rel, err := a.GC(ctx, "net", []Attachment{{ContainerID: "keep", IfName: "eth0"}})
	if err != nil || len(rel) != 2 {
		t.Fatalf("gc released %v (%v)", rel, err)
	}
	rep, _ = Check(ctx, kv)
	if rep.Allocations != 2 {
		t.Fatalf("after gc: %+v", rep)
	}
}

// countingKV counts round trips and records the prefixes listed.
type countingKV struct {
	store.KV
	n      int
	listed []string
}

func (c *countingKV) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) (*store.TxnResult, error) {
	c.n++
	return c.KV.Txn(ctx, cmps, ops)
}

func (c *countingKV) Get(ctx context.Context, key string) (*store.KeyValue, error) {
	c.n++
	return c.KV.Get(ctx, key)
}

func (c *countingKV) List(ctx context.Context, prefix string, keysOnly bool) ([]store.KeyValue, int64, error) {
	c.n++
	c.listed = append(c.listed, prefix)
	return c.KV.List(ctx, prefix, keysOnly)
}

func (c *countingKV) ListPage(ctx context.Context, prefix string, opt store.PageOptions) (*store.Page, error) {
	c.n++
	if opt.From == "" {
		c.listed = append(c.listed, prefix)
	}
	return c.KV.ListPage(ctx, prefix, opt)
}

// With a warm host cache an allocation is one round trip; a stale cache
// (another host took an address in our block) costs a retry, never a
// duplicate; release keeps the cache warm.
func TestHostCacheOneRoundTrip(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	ckv := &countingKV{KV: kv}
	a := &IPAM{KV: ckv, Host: "h1", LockDir: t.TempDir()}
	if _, _, err := a.Assign(ctx, req("warm")); err != nil {
		t.Fatal(err)
	}
	ckv.n = 0
	_, out, err := a.Assign(ctx, req("fast"))
	if err != nil {
		t.Fatal(err)
	}
	if ckv.n != 1 {
		t.Fatalf("warm-cache allocation took %d round trips, want 1", ckv.n)
	}
	// Another host borrows the next address of h1's block behind its back.
	other := &IPAM{KV: kv, Host: "h2"}
	next := nthIP(out[0].Block, ordinalOf(out[0].Block, out[0].IP)+1)
	r := req("borrow")
	r.Static = []net.IP{next}
	if _, _, err := other.Assign(ctx, r); err != nil {
		t.Fatal(err)
	}
	ckv.n = 0
	_, out2, err := a.Assign(ctx, req("after-stale"))
	if err != nil {
		t.Fatal(err)
	}
	if out2[0].IP.Equal(next) {
		t.Fatalf("stale cache handed out %s twice", next)
	}
	t.Logf("stale cache: %d round trips", ckv.n)
	if err := a.Release(ctx, "net", "fast"); err != nil {
		t.Fatal(err)
	}
	ckv.n = 0
	if _, _, err := a.Assign(ctx, req("after-release")); err != nil || ckv.n != 1 {
		t.Fatalf("after a release: %d round trips (%v), want 1", ckv.n, err)
	}
	// A repeated ADD of an existing handle falls back and returns the same address.
	_, again, err := a.Assign(ctx, req("fast"))
	if err != nil {
		t.Fatal(err)
	}
	_ = again
	rep, _ := Check(ctx, kv)
	for _, p := range rep.Problems {
		if p.Kind != LeakNoEndpoint {
			t.Fatalf("problem %+v", p)
		}
	}
}

// The same container ID on two hosts: the second host gets an error, not the
// first host's address, and its DEL leaves the first host's allocation alone.
func TestSameContainerIDOnTwoHosts(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	h1 := &IPAM{KV: kv, Host: "h1"}
	h2 := &IPAM{KV: kv, Host: "h2"}
	_, out, err := h1.Assign(ctx, req("web"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h2.Assign(ctx, req("web")); cnierr.CodeOf(err) != cnierr.AddressInUse {
		t.Fatalf("second host: %v", err)
	}
	if err := h2.Release(ctx, "net", "web"); err != nil {
		t.Fatal(err)
	}
	if al, _, _ := Lookup(ctx, kv, out[0].IP); al == nil || al.Host != "h1" {
		t.Fatalf("h2's DEL released h1's address: %+v", al)
	}
}

// A DEL after this host's ADD is one round trip: the attachment's note and
// the host cache hold all it reads. A note gone stale (the caller's record
// edited since, the block written by another ADD) falls back to reading and
// still releases exactly what the handle holds.
func TestReleaseOneRoundTrip(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	ckv := &countingKV{KV: kv}
	a := &IPAM{KV: ckv, Host: "h1", LockDir: t.TempDir()}
	recKey := func(id string) string { return "/tabby/v1/test/record/" + id }
	assign := func(id string) net.IP {
		t.Helper()
		r := req(id)
		r.Also = func(rs *store.ReadSet, out []Assigned) ([]store.Op, error) {
			return []store.Op{store.Put(recKey(id), []byte(`{"ip":"`+out[0].IP.String()+`"}`))}, nil
		}
		as, err := a.AssignWith(ctx, r, []store.Op{store.Get(recKey(id))})
		if err != nil {
			t.Fatal(err)
		}
		return as.Assigned[0].IP
	}
	var forgot []string
	release := func(id string) int {
		t.Helper()
		ckv.n = 0
		err := a.ReleaseWith(ctx, "net", id, []string{recKey(id)}, func(rs *store.ReadSet) ([]store.Op, error) {
			forgot = append(forgot, id)
			return []store.Op{store.Delete(recKey(id))}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return ckv.n
	}
	ip1, ip2, ip3 := assign("one"), assign("two"), assign("three")
	if n := release("two"); n != 1 {
		t.Fatalf("release with a fresh note took %d round trips, want 1", n)
	}
	// The record edited behind the note's back: the note is stale.
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(recKey("one"), []byte(`{"edited":true}`))}); err != nil {
		t.Fatal(err)
	}
	if n := release("one"); n < 2 {
		t.Fatalf("release with a stale note took %d round trips: it cannot have read", n)
	}
	release("one") // repeated: no note, nothing left to release
	for _, id := range []string{"one", "two"} {
		if kv, err := kv.Get(ctx, recKey(id)); err == nil && kv != nil {
			t.Fatalf("record of %s still there", id)
		}
		if kv, err := kv.Get(ctx, model.HandleKey("net", id)); err == nil && kv != nil {
			t.Fatalf("handle of %s still there", id)
		}
	}
	for _, ip := range []net.IP{ip1, ip2} {
		if al, _, err := Lookup(ctx, kv, ip); err != nil || al != nil {
			t.Fatalf("%s still allocated: %+v %v", ip, al, err)
		}
	}
	if al, _, err := Lookup(ctx, kv, ip3); err != nil || al == nil {
		t.Fatalf("%s of a live attachment released: %v", ip3, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(a.LockDir, notesDir)); len(entries) != 1 {
		t.Fatalf("notes left: %d, want 1 (three's)", len(entries))
	}
}

// An upgrade that makes the store one only newer binaries may write is
// seen by the next ADD even when this host's cache would have let it
// commit without reading: the cache's schema record is compared.
func TestCachedPathSeesSchemaUpgrade(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	put := func(s model.Schema) {
		t.Helper()
		if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(model.SchemaKey, store.MustJSON(s))}); err != nil {
			t.Fatal(err)
		}
	}
	put(model.CurrentSchema())
	ckv := &countingKV{KV: kv}
	a := &IPAM{KV: ckv, Host: "h1", LockDir: t.TempDir()}
	if _, _, err := a.Assign(ctx, req("warm")); err != nil {
		t.Fatal(err)
	}
	ckv.n = 0
	if _, _, err := a.Assign(ctx, req("cached")); err != nil || ckv.n != 1 {
		t.Fatalf("cached ADD: %d round trips (%v), want 1", ckv.n, err)
	}
	put(model.Schema{Version: model.SchemaVersion + 1, MinReader: model.SchemaVersion + 1})
	if _, _, err := a.Assign(ctx, req("after-upgrade")); cnierr.CodeOf(err) != cnierr.DatastoreFormat {
		t.Fatalf("ADD after the store's upgrade: %v, want code %d", err, cnierr.DatastoreFormat)
	}
	if h, _ := kv.Get(ctx, model.HandleKey("net", "after-upgrade")); h != nil {
		t.Fatalf("refused ADD wrote its handle")
	}
}

// Claiming a block in a pool where many are claimed reads candidate keys,
// not the pool's block list; a pool whose probes keep finding claimed
// blocks is still filled to its last block, through the list.
func TestClaimProbesInsteadOfListing(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/19", BlockSize: 26}) // 128 blocks
	nk := &countingKV{KV: kv}
	for i := range 8 {
		a := &IPAM{KV: nk, Host: fmt.Sprintf("h%d", i), LockDir: t.TempDir()}
		if _, _, err := a.Assign(ctx, req(fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if len(nk.listed) != 0 {
		t.Fatalf("8 claims in a mostly empty pool listed %v", nk.listed)
	}
	// Claim every remaining block: the last claims must find the few free
	// blocks left, whatever their probes hit.
	seen := map[string]bool{}
	for i := 8; i < 128; i++ {
		a := &IPAM{KV: nk, Host: fmt.Sprintf("h%d", i)}
		_, out, err := a.Assign(ctx, req(fmt.Sprintf("c%d", i)))
		if err != nil {
			t.Fatalf("claim %d of 128: %v", i+1, err)
		}
		if b := out[0].Block.String(); seen[b] {
			t.Fatalf("block %s claimed twice", b)
		} else {
			seen[b] = true
		}
	}
	if len(nk.listed) == 0 {
		t.Fatalf("128 claims never needed the list: the crowded path is untested")
	}
	t.Logf("128 blocks claimed; the pool's keys were listed %d times (the last, crowded claims)", len(nk.listed))
}

// A host's GC releases its own stale handles, in its blocks and borrowed
// from another host's, never another host's, and never lists the
// network's handles.
func TestGCReadsOnlyThisHost(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	pl := &countingKV{KV: kv}
	h1 := &IPAM{KV: pl, Host: "h1", LockDir: t.TempDir()}
	h2 := &IPAM{KV: kv, Host: "h2", LockDir: t.TempDir()}
	_, theirs, err := h2.Assign(ctx, req("h2-live"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h2.Assign(ctx, req("h2-other")); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"keep", "stale"} {
		if _, _, err := h1.Assign(ctx, req(id)); err != nil {
			t.Fatal(err)
		}
	}
	borrow := req("borrowed")
	borrow.Static = []net.IP{nthIP(theirs[0].Block, 10)}
	if _, _, err := h1.Assign(ctx, borrow); err != nil {
		t.Fatal(err)
	}
	pl.listed = nil
	rel, err := h1.GC(ctx, "net", []Attachment{{ContainerID: "keep", IfName: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rel) != "[net.borrowed net.stale]" {
		t.Fatalf("h1's GC released %v, want [net.borrowed net.stale]", rel)
	}
	for _, p := range pl.listed {
		if strings.HasPrefix(p, model.HandlePrefix) || strings.HasPrefix(p, model.BlockPrefix) {
			t.Fatalf("GC listed %s", p)
		}
	}
	for id, want := range map[string]bool{"keep": true, "stale": false, "borrowed": false, "h2-live": true, "h2-other": true} {
		h, _ := kv.Get(ctx, model.HandleKey("net", id))
		if (h != nil) != want {
			t.Errorf("handle %s present %v after h1's GC, want %v", id, h != nil, want)
		}
	}
	rep, err := Check(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Allocations != 3 {
		t.Fatalf("allocations after GC: %d, want 3 (keep, h2-live, h2-other)", rep.Allocations)
	}
}

// The host cache is a header and the blocks' values; a file torn at any
// byte (a crash in its write) is no cache, never a wrong one, and the
// blocks a full host holds are marked full, so that ADDs skip them
// without decoding them.
func TestHostCacheTornAndFull(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16"})
	dir := t.TempDir()
	a := &IPAM{KV: kv, Host: "h1", LockDir: dir}
	for i := range 65 {
		if _, _, err := a.Assign(ctx, req(fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	c := a.loadCache()
	if c == nil || len(c.Blocks) != 2 {
		t.Fatalf("cache %+v, want two blocks", c)
	}
	full := 0
	for _, b := range c.Blocks {
		if b.Full {
			full++
		}
		var blk model.Block
		if err := store.DecodeRecord(b.Key, b.Value, &blk); err != nil || blk.Affinity != "h1" || b.Affinity != "h1" {
			t.Fatalf("cached block %s: %v %+v", b.Key, err, blk)
		}
	}
	if full != 1 {
		t.Fatalf("%d blocks marked full, want 1 (64 addresses of a /26 taken)", full)
	}
	path := filepath.Join(dir, cacheFile)
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(whole); n += 1 + len(whole)/200 {
		if decodeCache(whole[:n], "h1") != nil {
			t.Fatalf("a cache torn at byte %d of %d decoded", n, len(whole))
		}
	}
	if decodeCache(append(whole, 'x'), "h1") != nil || decodeCache(whole, "h2") != nil {
		t.Fatal("a cache with trailing bytes, or another host's, decoded")
	}
	// The previous release's file goes when this one has none.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	legacy := filepath.Join(dir, legacyCacheFile)
	if err := os.WriteFile(legacy, []byte(`{"host":"h1","blocks":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if a.loadCache() != nil {
		t.Fatal("no cache file, yet a cache")
	}
	if _, err := os.Stat(legacy); !os.IsNotExist(err) {
		t.Fatalf("the legacy cache file is still there: %v", err)
	}
	// Without a cache the reading path allocates and writes a new one.
	if _, _, err := a.Assign(ctx, req("after")); err != nil || a.loadCache() == nil {
		t.Fatalf("after a lost cache: %v", err)
	}
}
