package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
	"github.com/tabby-net/tabby/test/scale/load"
	"github.com/tabby-net/tabby/test/scale/sim"
)

// startReady runs argv (etcd-lab or its grpc-proxy, on 127.0.0.1) until
// the test ends and returns the URL it prints with READY.
func startReady(t *testing.T, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	// etcd warns of every large range (the harness makes many): keep its
	// log out of the test's output.
	logf, err := os.Create(filepath.Join(t.TempDir(), filepath.Base(argv[0])+".log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- u
			}
		}
	}()
	select {
	case u := <-ready:
		return u
	case <-time.After(60 * time.Second):
		t.Fatalf("%v: no READY after 60 s", argv)
		return ""
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func watchers(t *testing.T, etcdURL string) float64 {
	t.Helper()
	m, err := sim.Scrape(context.Background(), http.DefaultClient, etcdURL+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return m["etcd_debugging_mvcc_watcher_total"]
}

// TestSmallCluster loads 200 hosts and 10,000 workloads into an etcd on
// 127.0.0.1, reads them back with tabbyctl, runs 100 simulated hosts
// against etcd and 100 through etcd's gRPC proxy, and checks what a user
// of the harness relies on: the records are tabby's own, every simulated
// host receives the changes its tabby-node would, the proxy serves those
// watches with fewer watchers on etcd, and the churn leaves IPAM
// consistent.
func TestSmallCluster(t *testing.T) {
	etcdLab, err := lab.EtcdLabBinary()
	if err != nil {
		t.Fatal(err)
	}
	tabbyctl := testutil.Bin(t, "tabbyctl")
	etcdURL := startReady(t, etcdLab, "--listen-client", "http://"+freeAddr(t), "--data-dir", filepath.Join(t.TempDir(), "etcd"))
	proxyURL := startReady(t, etcdLab, "grpc-proxy", "--endpoints", etcdURL, "--listen", freeAddr(t))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl, err := load.New(load.Config{Hosts: 200, Endpoints: 10000, Profiles: 50})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st, err := cl.Load(ctx, cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Per workload: endpoint, tag entry, member entry, handle.
	if want := int64(10000 * 4); st.Keys < want {
		t.Fatalf("loaded %d keys, want at least %d", st.Keys, want)
	}

	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(tabbyctl, append([]string{"--etcd-endpoints", etcdURL}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	checkIPAM := func(when string) {
		t.Helper()
		out, err := ctl("ipam", "check", "-o", "json")
		if err != nil {
			t.Fatalf("ipam check %s: %v\n%.2000s", when, err, out)
		}
		var rep ipam.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("ipam check %s: %v\n%.500s", when, err, out)
		}
		if rep.Allocations != 10000 || rep.Handles != 10000 || rep.Endpoints != 10000 || rep.Blocks != 200 || len(rep.Problems) != 0 {
			t.Fatalf("ipam check %s: %d blocks, %d allocations, %d handles, %d endpoints, problems %v; want 200, 10000 each, none",
				when, rep.Blocks, rep.Allocations, rep.Handles, rep.Endpoints, rep.Problems)
		}
	}
	checkIPAM("after the load")
	out, err := ctl("container", "show", "--host", cl.Host(7), "-o", "json")
	if err != nil {
		t.Fatalf("container show: %v\n%s", err, out)
	}
	var eps []model.Endpoint
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("container show -o json: %v\n%.500s", err, out)
	}
	if len(eps) != cl.PerHost() || eps[0].Host != cl.Host(7) || len(eps[0].IPv4Nets) != 1 {
		t.Fatalf("container show --host %s: %d endpoints (want %d), first %+v", cl.Host(7), len(eps), cl.PerHost(), eps[0])
	}
	if out, err := ctl("node", "show"); err != nil || strings.Count(out, "sim-") != 200 {
		t.Fatalf("node show: %v, %d sim hosts (want 200)\n%.300s", err, strings.Count(out, "sim-"), out)
	}
	if out, err := ctl("profile", "show", model.K8sNamespaceProfile(cl.Namespace(3))); err != nil || !strings.Contains(out, "port 10000") {
		t.Fatalf("profile show: %v\n%s", err, out)
	}

	// 100 hosts straight to etcd, 100 through the proxy.
	w0 := watchers(t, etcdURL)
	direct, err := sim.New(cl, sim.Config{Endpoints: []string{etcdURL}, Conns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if err := direct.Join(ctx, 100, 16); err != nil {
		t.Fatal(err)
	}
	perHost := int64(len(sim.NodePrefixes("h", cl.HostNamespaces(0))))
	if got := direct.Counters().Watchers; got != 100*perHost {
		t.Fatalf("direct hosts hold %d watches, want %d", got, 100*perHost)
	}
	w1 := watchers(t, etcdURL)
	viaProxy, err := sim.New(cl, sim.Config{Endpoints: []string{proxyURL}, Conns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer viaProxy.Close()
	if err := viaProxy.Join(ctx, 100, 16); err != nil {
		t.Fatal(err)
	}
	if got := viaProxy.Counters().Watchers; got != 100*perHost {
		t.Fatalf("proxied hosts hold %d watches, want %d", got, 100*perHost)
	}
	var w2 float64
	// The proxy opens its upstream watches as its clients ask: wait until
	// etcd counts them, then compare.
	if err := lab.Eventually(30*time.Second, func() error {
		w2 = watchers(t, etcdURL)
		if w2 <= w1 {
			return fmt.Errorf("etcd watchers %v, not above %v", w2, w1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d, p := w1-w0, w2-w1; d < float64(100*perHost) || p >= d/2 {
		t.Fatalf("etcd watchers added: %v by 100 direct hosts, %v by 100 hosts through the proxy; want the proxy to coalesce to under half", d, p)
	}
	t.Logf("etcd watchers: %v for 100 direct hosts, %v for 100 proxied hosts (%d watches each)", w1-w0, w2-w1, 100*perHost)

	// A host follows only the profiles its workloads name: one edit
	// reaches the hosts that run the namespace's pods, and no other.
	kv, err := etcdv3.New(store.Config{Endpoints: []string{etcdURL}})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Client.Close()
	e0, p0 := direct.Counters().Events, viaProxy.Counters().Events
	name := model.K8sNamespaceProfile(cl.Namespace(0))
	var runIt int64
	for h := range 100 {
		if slices.Contains(cl.HostNamespaces(h), cl.Namespace(0)) {
			runIt++
		}
	}
	if runIt == 0 || runIt == 100 {
		t.Fatalf("%d of 100 hosts run namespace %s: the check below needs some that do not", runIt, cl.Namespace(0))
	}
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(model.ProfileKey(name), store.MustJSON(load.ProfileVersion(name, 1)))}); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(30*time.Second, func() error {
		if d, p := direct.Counters().Events-e0, viaProxy.Counters().Events-p0; d < runIt || p < runIt {
			return fmt.Errorf("profile edit seen %d times by direct hosts, %d by proxied ones; want %d each", d, p, runIt)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The other hosts' watches would have delivered it with the rest: a
	// key written after it, that every host follows, is seen by all.
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Put(model.PoolPrefix+"scale-marker", []byte("{}"))}); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(30*time.Second, func() error {
		if d, p := direct.Counters().Events-e0, viaProxy.Counters().Events-p0; d < runIt+100 || p < runIt+100 {
			return fmt.Errorf("marker: %d and %d events, want %d each", d, p, runIt+100)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d, p := direct.Counters().Events-e0, viaProxy.Counters().Events-p0; d != runIt+100 || p != runIt+100 {
		t.Fatalf("one profile edit and one pool key: %d events to direct hosts, %d to proxied ones; want %d each (the edit to the %d hosts running %s only)", d, p, runIt+100, runIt, cl.Namespace(0))
	}
	if _, err := kv.Txn(ctx, nil, []store.Op{store.Delete(model.PoolPrefix + "scale-marker")}); err != nil {
		t.Fatal(err)
	}
	e0, p0 = direct.Counters().Events, viaProxy.Counters().Events

	ch := sim.NewChurner(cl, kv)
	res := ch.Run(ctx, sim.ChurnConfig{Workers: 4, Duration: 2 * time.Second, ProfileEvery: 10, HostEvery: 20, Seed: 1})
	if res.Writes == 0 || res.Errors != 0 {
		t.Fatalf("churn: %d writes, %d errors (%s)", res.Writes, res.Errors, res.FirstError)
	}
	// The mix is what it says: 1 in 10 a profile edit, 1 in 20 a host.
	if res.ProfileEdits < res.Writes/20 || res.HostChanges < res.Writes/40 {
		t.Fatalf("churn of %d writes made %d profile edits and %d host changes; want about 1 in 10 and 1 in 20", res.Writes, res.ProfileEdits, res.HostChanges)
	}
	if err := lab.Eventually(30*time.Second, func() error {
		if d, p := direct.Counters().Events-e0, viaProxy.Counters().Events-p0; d < int64(res.Writes)/10 || p < int64(res.Writes)/10 {
			return fmt.Errorf("after %d writes the hosts saw %d and %d events", res.Writes, d, p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if c := direct.Counters(); c.Lost != 0 {
		t.Fatalf("direct hosts lost %d watches", c.Lost)
	}
	if err := ch.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	checkIPAM("after the churn")
}

// TestPermutationsBalanceTurns: the ADDs in turns take every order of the
// sides once per cycle, so each side is first, last and in between equally
// often and none meets the machine's state after a given other more.
func TestPermutationsBalanceTurns(t *testing.T) {
	for n, want := range []int{1, 1, 2, 6, 24} {
		ps := permutations(n)
		if len(ps) != want {
			t.Fatalf("permutations(%d): %d orders, want %d", n, len(ps), want)
		}
		seen := map[string]bool{}
		first := make([]int, n)
		for _, p := range ps {
			if len(p) != n {
				t.Fatalf("permutations(%d): order %v has %d sides", n, p, len(p))
			}
			q := slices.Clone(p)
			slices.Sort(q)
			for i, x := range q {
				if x != i {
					t.Fatalf("permutations(%d): %v is not an order of 0..%d", n, p, n-1)
				}
			}
			if k := fmt.Sprint(p); seen[k] {
				t.Fatalf("permutations(%d): %v twice", n, p)
			} else {
				seen[k] = true
			}
			if n > 0 {
				first[p[0]]++
			}
		}
		for k, c := range first {
			if c != want/max(n, 1) {
				t.Fatalf("permutations(%d): side %d first in %d of %d orders", n, k, c, want)
			}
		}
	}
}
