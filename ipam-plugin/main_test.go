package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
)

type fixture struct {
	t    *testing.T
	etcd *etcdtest.Etcd
	kv   store.KV
	bin  string
	dir  string
	ns   string // a netns path: skel refuses the plugin's own netns
}

func newFixture(t *testing.T) *fixture {
	e := etcdtest.Start(t)
	kv, err := store.NewHTTP(store.Config{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return &fixture{t: t, etcd: e, kv: kv, bin: testutil.Bin(t, "tabby-ipam"), dir: t.TempDir(), ns: testutil.NetNS(t)}
}

func (f *fixture) conf(host string, ipamExtra string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net1","type":"ptp","ipam":{"type":"tabby-ipam",
	  "etcd_endpoints":%q,"nodename":%q,"state_dir":%q%s}}`, f.etcd.URL, host, filepath.Join(f.dir, host), ipamExtra))
}

func (f *fixture) run(cmd, host, cid, args string, extra string) testutil.Outcome {
	return testutil.Run(f.bin, testutil.Call{Command: cmd, ContainerID: cid, Netns: f.ns, Args: args, Conf: f.conf(host, extra)})
}

func (f *fixture) pool(p model.Pool) {
	if _, err := ipam.AddPool(context.Background(), f.kv, p); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) keys(prefix string) int {
	kvs, _, err := f.kv.List(context.Background(), prefix, true)
	if err != nil {
		f.t.Fatal(err)
	}
	return len(kvs)
}

func resultIP(t *testing.T, o testutil.Outcome) net.IP {
	t.Helper()
	if o.ExitCode != 0 {
		t.Fatalf("plugin failed (%d): %s %s", o.ExitCode, o.Stdout, o.Stderr)
	}
	var r current.Result
	if err := json.Unmarshal(o.Stdout, &r); err != nil || len(r.IPs) == 0 {
		t.Fatalf("bad result %s: %v", o.Stdout, err)
	}
	return r.IPs[0].Address.IP
}

// 3 hosts x 50 concurrent ADD processes: 150 distinct addresses, each from its
// own host's blocks; then every DEL leaves no allocation and no handle.
func TestConcurrentProcessesThreeHosts(t *testing.T) {
	f := newFixture(t)
	f.pool(model.Pool{CIDR: "10.0.0.0/16"})
	type got struct{ host, ip string }
	var mu sync.Mutex
	var all []got
	var wg sync.WaitGroup
	for h := 1; h <= 3; h++ {
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func(host, cid string) {
				defer wg.Done()
				o := f.run("ADD", host, cid, "", "")
				if o.ExitCode != 0 {
					t.Errorf("ADD %s on %s: %s", cid, host, o.Stdout)
					return
				}
				ip := resultIP(t, o)
				mu.Lock()
				all = append(all, got{host, ip.String()})
				mu.Unlock()
			}(fmt.Sprintf("h%d", h), fmt.Sprintf("c-%d-%d", h, i))
		}
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, g := range all {
		if seen[g.ip] {
			t.Fatalf("address %s handed out twice", g.ip)
		}
		seen[g.ip] = true
		al, b, err := ipam.Lookup(context.Background(), f.kv, net.ParseIP(g.ip))
		if err != nil || al == nil || b.Affinity != g.host {
			t.Fatalf("%s of %s: block affinity %v (%v)", g.ip, g.host, b, err)
		}
	}
	if len(seen) != 150 {
		t.Fatalf("%d distinct addresses, want 150", len(seen))
	}
	for h := 1; h <= 3; h++ {
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func(host, cid string) {
				defer wg.Done()
				if o := f.run("DEL", host, cid, "", ""); o.ExitCode != 0 {
					t.Errorf("DEL %s: %s", cid, o.Stdout)
				}
			}(fmt.Sprintf("h%d", h), fmt.Sprintf("c-%d-%d", h, i))
		}
	}
	wg.Wait()
	if h := f.keys(model.HandlePrefix); h != 0 {
		t.Fatalf("after DEL: %d handles left", h)
	}
	if k, err := ipam.Residue(context.Background(), f.kv); err != nil || len(k) != 0 {
		t.Fatalf("after DEL, beyond each host's kept empty block: %v %v", k, err)
	}
}

// SIGKILL at random points of ADD, 50 times: the check finds every leak, GC
// frees them, and no address is ever given out twice.
func TestKilledADDsLeakNothingUnnamed(t *testing.T) {
	f := newFixture(t)
	f.pool(model.Pool{CIDR: "10.0.0.0/16"})
	completed := map[string]bool{}
	for i := 0; i < 50; i++ {
		cid := fmt.Sprintf("k%d", i)
		o := testutil.Run(f.bin, testutil.Call{Command: "ADD", ContainerID: cid, Netns: f.ns, Conf: f.conf("h1", ""),
			KillAfter: time.Duration(1+rand.IntN(6000)) * time.Microsecond})
		if o.ExitCode == 0 {
			completed[cid] = true
		}
	}
	rep, err := ipam.Check(context.Background(), f.kv)
	if err != nil {
		t.Fatal(err)
	}
	handles := f.keys(model.HandlePrefix)
	leaks := 0
	for _, p := range rep.Problems {
		if p.Kind != ipam.LeakNoEndpoint {
			t.Fatalf("unexpected problem after kills: %+v", p)
		}
		leaks++
	}
	// Nobody wrote endpoints, so every allocation made is a leak and each is named by a handle.
	if leaks != rep.Allocations || handles != rep.Allocations {
		t.Fatalf("check found %d leaks, %d allocations, %d handles", leaks, rep.Allocations, handles)
	}
	t.Logf("50 killed ADDs: %d completed, %d left allocations (all found by check)", len(completed), rep.Allocations)
	// GC with no valid attachment frees them all.
	gc := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net1","type":"ptp","cni.dev/valid-attachments":[],
	  "ipam":{"type":"tabby-ipam","etcd_endpoints":%q,"nodename":"h1","state_dir":%q}}`, f.etcd.URL, f.dir))
	if o := testutil.Run(f.bin, testutil.Call{Command: "GC", Conf: gc}); o.ExitCode != 0 {
		t.Fatalf("GC: %s %s", o.Stdout, o.Stderr)
	}
	if rep, _ := ipam.Check(context.Background(), f.kv); rep.Allocations != 0 || len(rep.Problems) != 0 || f.keys(model.HandlePrefix) != 0 {
		t.Fatalf("after GC: %+v", rep)
	}
}

// etcd down: ADD fails with code 11 within 5 s; when etcd is back, ADD works.
func TestEtcdDownTryAgain(t *testing.T) {
	f := newFixture(t)
	f.pool(model.Pool{CIDR: "10.0.0.0/16"})
	f.etcd.Stop()
	o := f.run("ADD", "h1", "c1", "", "")
	if o.ErrCode != 11 || o.Took > 5*time.Second {
		t.Fatalf("etcd down: code %d after %v: %s", o.ErrCode, o.Took, o.Stdout)
	}
	t.Logf("etcd down: code 11 after %v: %s", o.Took.Round(time.Millisecond), o.ErrMsg)
	f.etcd.Restart(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		o = f.run("ADD", "h1", "c1", "", "")
		if o.ExitCode == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	resultIP(t, o)
}

func TestBadInput(t *testing.T) {
	f := newFixture(t)
	f.pool(model.Pool{CIDR: "10.0.0.0/30", BlockSize: 30})
	// The /30 has two usable addresses (network and broadcast are never
	// auto-assigned): take both.
	for i, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		if o := f.run("ADD", "h1", fmt.Sprintf("used%d", i), "IP="+ip, ""); o.ExitCode != 0 {
			t.Fatalf("%s", o.Stdout)
		}
	}
	cases := []struct {
		name, args, extra string
		conf              []byte
		code              cnierr.Code
	}{
		{name: "malformed netconf", conf: []byte(`{"name":`), code: 4},
		{name: "unknown pool", extra: `,"ipv4_pools":["10.99.0.0/16"]`, code: cnierr.NoPool},
		{name: "ip outside pools", args: "IP=172.31.9.9", code: cnierr.NoPool},
		{name: "ip in use", args: "IP=10.0.0.1", code: cnierr.AddressInUse},
		{name: "exhausted pool", code: cnierr.PoolExhausted},
		{name: "bad CNI_ARGS", args: "IP=10.0.0.300", code: 7},
		{name: "unknown CNI_ARGS key", args: "COLOUR=blue", code: 7},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf := c.conf
			if conf == nil {
				conf = f.conf("h1", c.extra)
			}
			o := testutil.Run(f.bin, testutil.Call{Command: "ADD", ContainerID: fmt.Sprintf("bad%d", i), Netns: f.ns, Args: c.args, Conf: conf})
			if cnierr.Code(o.ErrCode) != c.code || o.ErrMsg == "" {
				t.Fatalf("got code %d %q, want %d", o.ErrCode, o.ErrMsg, c.code)
			}
			t.Logf("code %d: %s", o.ErrCode, o.ErrMsg)
		})
	}
	if h := f.keys(model.HandlePrefix); h != 2 {
		t.Fatalf("%d handles after failed ADDs, want 2", h)
	}
}

// STATUS, CHECK and a repeated ADD.
func TestStatusCheckRepeat(t *testing.T) {
	f := newFixture(t)
	if o := f.run("STATUS", "h1", "", "", ""); o.ExitCode == 0 {
		t.Fatal("STATUS ok without any pool")
	}
	f.pool(model.Pool{CIDR: "10.0.0.0/16"})
	if o := f.run("STATUS", "h1", "", "", ""); o.ExitCode != 0 {
		t.Fatalf("STATUS: %s", o.Stdout)
	}
	ip1 := resultIP(t, f.run("ADD", "h1", "c", "", ""))
	ip2 := resultIP(t, f.run("ADD", "h1", "c", "", ""))
	if !ip1.Equal(ip2) {
		t.Fatalf("repeated ADD: %s then %s", ip1, ip2)
	}
	if o := f.run("CHECK", "h1", "c", "", ""); o.ExitCode != 0 {
		t.Fatalf("CHECK: %s", o.Stdout)
	}
	f.run("DEL", "h1", "c", "", "")
	if o := f.run("CHECK", "h1", "c", "", ""); o.ExitCode == 0 {
		t.Fatal("CHECK passed after DEL")
	}
	if o := f.run("DEL", "h1", "c", "", ""); o.ExitCode != 0 {
		t.Fatalf("second DEL: %s", o.Stdout)
	}
	f.etcd.Stop()
	if o := f.run("STATUS", "h1", "", "", ""); o.ErrCode != 11 {
		t.Fatalf("STATUS with etcd down: %d %s", o.ErrCode, o.Stdout)
	}
}

// Every CNI version gets a result it can parse.
func TestVersions(t *testing.T) {
	f := newFixture(t)
	f.pool(model.Pool{CIDR: "10.0.0.0/16"})
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		conf := []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"net1","type":"ptp","ipam":{"type":"tabby-ipam","etcd_endpoints":%q,"nodename":"h1","state_dir":%q}}`, v, f.etcd.URL, f.dir))
		o := testutil.Run(f.bin, testutil.Call{Command: "ADD", ContainerID: "v" + v, Netns: f.ns, Conf: conf})
		var r struct {
			CNIVersion string `json:"cniVersion"`
			IPs        []any  `json:"ips"`
		}
		if o.ExitCode != 0 || json.Unmarshal(o.Stdout, &r) != nil || r.CNIVersion != v || len(r.IPs) != 1 {
			t.Fatalf("version %s: %s %s", v, o.Stdout, o.Stderr)
		}
	}
}
