package ipam

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// checkFixture is a datastore with one problem of every kind and the
// things that must not be problems: a used allocation, a host's tunnel
// address. It returns the IPs of interest.
func checkFixture(t *testing.T, kv store.KV) map[string]string {
	t.Helper()
	ctx := context.Background()
	addPool(t, kv, model.Pool{CIDR: "10.0.0.0/16", BlockSize: 26})
	ips := map[string]string{}
	put := func(key string, v any) {
		t.Helper()
		if err := store.PutJSON(ctx, kv, key, v); err != nil {
			t.Fatal(err)
		}
	}
	assign := func(host, cid string) string {
		t.Helper()
		_, out, err := (&IPAM{KV: kv, Host: host}).Assign(ctx, req(cid))
		if err != nil {
			t.Fatal(err)
		}
		ips[cid] = out[0].IP.String()
		return out[0].IP.String()
	}
	endpoint := func(host, name, ip string) {
		t.Helper()
		e := model.Endpoint{Host: host, Orchestrator: "cni", Workload: name, Name: "eth0", ContainerID: name, Network: "net",
			IPv4Nets: []string{ip + "/32"}, Handle: "net." + name}
		put(e.Key(), &e)
	}
	for _, h := range []string{"h1", "h2"} {
		put(model.NodeKey(h), &model.Host{Name: h})
	}
	// Fine: allocated, named by its handle, used by an endpoint.
	for i := range 5 {
		c := fmt.Sprintf("ok%d", i)
		endpoint("h1", c, assign("h1", c))
	}
	endpoint("h2", "ok-h2", assign("h2", "ok-h2"))
	// Fine: h1's VXLAN tunnel address.
	put(model.NodeKey("h1"), &model.Host{Name: "h1", VXLANTunnelAddr: assign("h1", "tunnel")})
	// An allocation no endpoint uses.
	assign("h1", "leak")
	// An allocation no handle names.
	endpoint("h1", "nohandle", assign("h1", "nohandle"))
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Delete(model.HandleKey("net", "nohandle"))}); err != nil {
		t.Fatal(err)
	}
	// A handle whose address is allocated to nobody.
	put(model.HandleKey("net", "ghost"), &model.Handle{ID: "net.ghost", Network: "net", ContainerID: "ghost", Host: "h2",
		IPs: []string{"10.0.200.1"}, Blocks: []string{model.BlockKey("10.0.0.0/16", "10.0.200.0/26")}})
	// An endpoint on an address IPAM never gave.
	endpoint("h2", "hostlocal", "10.0.250.7")
	// A block of a host that is not registered (its workload is fine).
	endpoint("gone", "orphaned-host", assign("gone", "orphaned-host"))
	return ips
}

func sortedProblems(ps []Problem) []Problem {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b Problem) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	return out
}

// The streaming check finds what the whole-datastore check found, page
// size whatever.
func TestCheckSameAsWholeRead(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	checkFixture(t, kv)
	want, err := checkWhole(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, p := range want.Problems {
		kinds[p.Kind]++
	}
	if fmt.Sprint(kinds) != fmt.Sprint(map[string]int{LeakNoEndpoint: 1, LeakNoHandle: 1, OrphanHandle: 1, EndpointNoAlloc: 1, BlockUnknownHost: 1}) {
		t.Fatalf("the fixture's problems by the old check: %+v", want.Problems)
	}
	for _, page := range []int{1, 2, 7, 0} {
		got, err := CheckPaced(ctx, kv, CheckOptions{PageSize: page})
		if err != nil {
			t.Fatal(err)
		}
		if got.Blocks != want.Blocks || got.Allocations != want.Allocations || got.Handles != want.Handles || got.Endpoints != want.Endpoints {
			t.Fatalf("page %d: counts %+v, want %+v", page, got, want)
		}
		if g, w := sortedProblems(got.Problems), sortedProblems(want.Problems); !reflect.DeepEqual(g, w) {
			t.Fatalf("page %d: problems\n%+v\nwant\n%+v", page, g, w)
		}
	}
	if rep, _ := Check(ctx, kv); len(rep.Problems) != 5 || rep.Problems[len(rep.Problems)-1].IP != "10.0.250.7" {
		t.Fatalf("Check: %+v", rep.Problems)
	}
}

// hookKV runs a hook before the first page of a prefix and before the
// first transaction (the re-reads), as an ADD or DEL elsewhere would.
type hookKV struct {
	store.KV
	onPage map[string]func()
	onTxn  func()
	log    []string
}

func (h *hookKV) ListPage(ctx context.Context, prefix string, opt store.PageOptions) (*store.Page, error) {
	if f := h.onPage[prefix]; f != nil {
		delete(h.onPage, prefix)
		f()
	}
	p, err := h.KV.ListPage(ctx, prefix, opt)
	if err == nil {
		h.log = append(h.log, fmt.Sprintf("page %d", len(p.KVs)))
	}
	return p, err
}

func (h *hookKV) List(ctx context.Context, prefix string, keysOnly bool) ([]store.KeyValue, int64, error) {
	kvs, rev, err := h.KV.List(ctx, prefix, keysOnly)
	h.log = append(h.log, fmt.Sprintf("page %d", len(kvs)))
	return kvs, rev, err
}

func (h *hookKV) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) (*store.TxnResult, error) {
	if f := h.onTxn; f != nil {
		h.onTxn = nil
		f()
	}
	h.log = append(h.log, fmt.Sprintf("txn %d", len(ops)))
	return h.KV.Txn(ctx, cmps, ops)
}

// What was in flight while the walk read one prefix and then another is
// not reported: the re-read sees it settled. What stays wrong is.
func TestCheckDropsWhatResolved(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	ips := checkFixture(t, kv)
	a1 := &IPAM{KV: kv, Host: "h1"}
	// An ADD half done (IPAM written, endpoint not yet), a DEL half done
	// (endpoint gone, IPAM not yet released).
	_, out, err := a1.Assign(ctx, req("adding"))
	if err != nil {
		t.Fatal(err)
	}
	adding := out[0].IP.String()
	_, out, err = a1.Assign(ctx, req("deleting"))
	if err != nil {
		t.Fatal(err)
	}
	deleting := out[0].IP.String()
	endpointOf := func(name, ip string) *model.Endpoint {
		return &model.Endpoint{Host: "h1", Orchestrator: "cni", Workload: name, Name: "eth0", ContainerID: name, Network: "net",
			IPv4Nets: []string{ip + "/32"}}
	}
	if err := store.PutJSON(ctx, kv, endpointOf("deleting", deleting).Key(), endpointOf("deleting", deleting)); err != nil {
		t.Fatal(err)
	}
	var late string
	hk := &hookKV{KV: kv}
	hk.onPage = map[string]func(){
		// Between the blocks and the endpoints: an ADD completes whole, so
		// the walk sees its endpoint and not its allocation.
		model.HostPrefix: func() {
			_, out, err := a1.Assign(ctx, req("late"))
			if err != nil {
				t.Fatal(err)
			}
			late = out[0].IP.String()
			if err := store.PutJSON(ctx, kv, endpointOf("late", late).Key(), endpointOf("late", late)); err != nil {
				t.Fatal(err)
			}
			// A DEL removes its endpoint after the walk read its allocation.
			if _, err := kv.Txn(ctx, nil, []store.Op{store.Delete(endpointOf("deleting", deleting).Key())}); err != nil {
				t.Fatal(err)
			}
		},
	}
	walked := false
	hk.onTxn = func() {
		walked = true
		// Before the re-reads: the ADD writes its endpoint, the DEL
		// releases its address, the ghost handle is deleted.
		if err := store.PutJSON(ctx, kv, endpointOf("adding", adding).Key(), endpointOf("adding", adding)); err != nil {
			t.Fatal(err)
		}
		if err := a1.Release(ctx, "net", "deleting"); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Txn(ctx, nil, []store.Op{store.Delete(model.HandleKey("net", "ghost"))}); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := CheckPaced(ctx, hk, CheckOptions{PageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !walked || late == "" {
		t.Fatal("hooks did not run")
	}
	var got []string
	for _, p := range rep.Problems {
		got = append(got, p.Kind+" "+p.IP+" "+p.Handle)
	}
	want := []string{
		LeakNoEndpoint + " " + ips["leak"] + " net.leak",
		LeakNoHandle + " " + ips["nohandle"] + " net.nohandle",
		BlockUnknownHost + "  ",
		EndpointNoAlloc + " 10.0.250.7 ",
	}
	if g, w := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want)); !slices.Equal(g, w) {
		t.Fatalf("problems\n%s\nwant\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	// The walk saw 8 suspects (3 allocations without endpoint, 2
	// endpoints without allocation, ...); a whole read at this moment
	// agrees with what the re-read kept.
	whole, err := checkWhole(ctx, kv)
	if err != nil || len(whole.Problems) != len(rep.Problems) {
		t.Fatalf("whole read now: %+v %v", whole, err)
	}
}

// recordingPacer records what it was told and, by the log it shares with
// hookKV, where.
type recordingPacer struct {
	hk   *hookKV
	keys int
}

func (p *recordingPacer) Wait(_ context.Context, keys int) error {
	p.keys += keys
	p.hk.log = append(p.hk.log, fmt.Sprintf("wait %d", keys))
	return nil
}

// Every read is paid to the pacer before the next one: pages and re-reads,
// key for key.
func TestCheckPaces(t *testing.T) {
	kv := newKV(t)
	ctx := context.Background()
	checkFixture(t, kv)
	hk := &hookKV{KV: kv}
	pc := &recordingPacer{hk: hk}
	rep, err := CheckPaced(ctx, hk, CheckOptions{PageSize: 4, Pacer: pc})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 5 {
		t.Fatalf("problems: %+v", rep.Problems)
	}
	read, pages := 0, 0
	for i, e := range hk.log {
		var what string
		var n int
		fmt.Sscanf(e, "%s %d", &what, &n)
		switch what {
		case "page":
			pages++
			read += n
			if n > 4 {
				t.Fatalf("a page of %d keys, asked 4", n)
			}
			fallthrough
		case "txn":
			if what == "txn" {
				read += n
			}
			if i+1 >= len(hk.log) || !strings.HasPrefix(hk.log[i+1], "wait ") {
				t.Fatalf("read %d (%s) not followed by a wait: %v", i, e, hk.log)
			}
		}
	}
	if pages < 10 || read != pc.keys {
		t.Fatalf("%d pages, %d keys read, %d paced: %v", pages, read, pc.keys, hk.log)
	}
}

// The rate pacer sleeps what the keys cost at the rate, and time spent
// elsewhere is not saved up for a burst.
func TestRatePacer(t *testing.T) {
	now := time.Unix(1000, 0)
	var slept []time.Duration
	p := &ratePacer{rate: 100, now: func() time.Time { return now },
		sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); now = now.Add(d); return nil }}
	ctx := context.Background()
	for range 3 {
		if err := p.Wait(ctx, 50); err != nil {
			t.Fatal(err)
		}
	}
	// A page that took 2 s of etcd's time: no credit for it.
	now = now.Add(2 * time.Second)
	_ = p.Wait(ctx, 10)
	want := []time.Duration{500 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond, 100 * time.Millisecond}
	if !slices.Equal(slept, want) {
		t.Fatalf("slept %v, want %v", slept, want)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := NewRatePacer(1).Wait(cctx, 10); err == nil {
		t.Fatal("a cancelled wait returned nil")
	}
}

// checkWhole is the check before it streamed (every prefix read whole and
// decoded), kept as the reference the streaming check must agree with.
func checkWhole(ctx context.Context, kv store.KV) (*Report, error) {
	blocks, err := store.ListJSON[model.Block](ctx, kv, model.BlockPrefix)
	if err != nil {
		return nil, err
	}
	handles, err := store.ListJSON[model.Handle](ctx, kv, model.HandlePrefix)
	if err != nil {
		return nil, err
	}
	nodes, _, err := kv.List(ctx, model.NodePrefix, false)
	if err != nil {
		return nil, err
	}
	hosts := map[string]bool{}
	// A host's VXLAN and IPIP tunnel addresses are allocations that no
	// endpoint uses but its host record does: not leaks.
	epIPs := map[string]bool{}
	for _, r := range nodes {
		hosts[strings.TrimPrefix(r.Key, model.NodePrefix)] = true
		var h model.Host
		if store.DecodeJSON(r.Value, &h) == nil {
			for _, a := range []string{h.VXLANTunnelAddr, h.IPIPTunnelAddr} {
				if ip := net.ParseIP(a); ip != nil {
					epIPs[ip.String()] = true
				}
			}
		}
	}
	hostKVs, _, err := kv.List(ctx, model.HostPrefix, false)
	if err != nil {
		return nil, err
	}
	var eps []model.Endpoint
	for _, r := range hostKVs {
		if _, _, _, _, ok := model.ParseEndpointKey(r.Key); ok {
			var e model.Endpoint
			if store.DecodeJSON(r.Value, &e) == nil {
				eps = append(eps, e)
			}
		}
	}
	rep := &Report{Blocks: len(blocks), Handles: len(handles), Endpoints: len(eps)}
	for _, e := range eps {
		for _, n := range e.Nets() {
			ip, _, _ := net.ParseCIDR(n)
			epIPs[ip.String()] = true
		}
	}
	hIPs := map[string]string{}
	for _, h := range handles {
		for _, ip := range h.IPs {
			hIPs[ip] = h.ID
		}
	}
	allocated := map[string]bool{}
	byHandle := map[string]bool{}
	for _, b := range blocks {
		_, n, _ := net.ParseCIDR(b.CIDR)
		if len(hosts) > 0 && b.Affinity != "" && !hosts[b.Affinity] {
			rep.Problems = append(rep.Problems, Problem{Kind: BlockUnknownHost, Block: b.CIDR, Host: b.Affinity,
				Detail: "block is affine to a host that is not registered; if the host is gone for good, 'tabbyctl node remove " + b.Affinity + "' releases its addresses and returns its blocks"})
		}
		for i, a := range b.Allocations {
			if a == nil {
				continue
			}
			rep.Allocations++
			ip := nthIP(n, i).String()
			allocated[ip] = true
			byHandle[a.Handle] = true
			if hIPs[ip] != a.Handle {
				rep.Problems = append(rep.Problems, Problem{Kind: LeakNoHandle, IP: ip, Handle: a.Handle, Host: a.Host, Block: b.CIDR,
					Detail: "no handle record names this address; 'tabbyctl ipam release --ip " + ip + "' frees it"})
			} else if !epIPs[ip] {
				rep.Problems = append(rep.Problems, Problem{Kind: LeakNoEndpoint, IP: ip, Handle: a.Handle, Host: a.Host, Block: b.CIDR,
					Detail: "no endpoint uses this address; if its container is gone, CNI GC or 'tabbyctl ipam release --ip " + ip + "' frees it"})
			}
		}
	}
	for _, h := range handles {
		if !byHandle[h.ID] {
			rep.Problems = append(rep.Problems, Problem{Kind: OrphanHandle, Handle: h.ID, Host: h.Host, Detail: "handle holds no allocated address"})
		}
	}
	for _, e := range eps {
		for _, n := range e.Nets() {
			ip, _, _ := net.ParseCIDR(n)
			if !allocated[ip.String()] {
				rep.Problems = append(rep.Problems, Problem{Kind: EndpointNoAlloc, IP: ip.String(), Host: e.Host,
					Detail: "endpoint " + e.Key() + " uses an address IPAM has not allocated (host-local IPAM, or a released address)"})
			}
		}
	}
	return rep, nil
}
