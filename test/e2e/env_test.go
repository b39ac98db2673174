// Package e2e runs tabby's binaries in the multi-host netns lab, as a
// runtime would, and checks what a user would see.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

type env struct {
	t   *testing.T
	l   *lab.Lab
	kv  store.KV
	dir string
	bin string // directory holding tabby and tabby-ipam
	// netExtra is added to every netconf e.container makes (profiles).
	netExtra string
}

func newEnv(t *testing.T, opts lab.Options) *env {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	l := lab.New(t, opts)
	l.StartEtcd()
	e := &env{t: t, l: l, dir: t.TempDir()}
	e.kv = etcdv3.FromClient(l.EtcdClient(), []string{l.EtcdURL})
	e.bin = filepath.Dir(testutil.Bin(t, "tabby"))
	// tabby-ipam must sit next to tabby for delegation through CNI_PATH.
	if ipam := testutil.Bin(t, "tabby-ipam"); filepath.Dir(ipam) != e.bin {
		t.Fatalf("tabby and tabby-ipam built into different dirs")
	}
	return e
}

func (e *env) stateDir(h *lab.Host) string { return filepath.Join(e.dir, h.Name) }

// conf is a single tabby plugin configuration for host h.
func (e *env) conf(h *lab.Host, version, extra, ipamExtra string) []byte {
	if version == "" {
		version = "1.1.0"
	}
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"tabby-net","type":"tabby","etcd_endpoints":%q,"nodename":%q,
	  "state_dir":%q,"log_file":%q,"log_level":"debug"%s,
	  "ipam":{"type":"tabby-ipam"%s}}`, version, e.l.EtcdURL, h.Name, e.stateDir(h),
		filepath.Join(e.dir, h.Name+"-cni.log"), extra, ipamExtra))
}

func (e *env) cniPath() string { return e.bin + ":/usr/lib/cni" }

// plugin runs the tabby plugin inside host h's namespace.
func (e *env) plugin(h *lab.Host, cmd, cid, netns, ifname, args string, conf []byte) testutil.Outcome {
	return testutil.Run(filepath.Join(e.bin, "tabby"), testutil.Call{Command: cmd, ContainerID: cid, Netns: netns, IfName: ifname,
		Args: args, Conf: conf, Path: e.cniPath(), Wrap: []string{"ip", "netns", "exec", h.NS}})
}

func (e *env) pool(cidr string, extra ...string) {
	e.t.Helper()
	e.ctl(e.l.Hosts[0], append([]string{"pool", "add", cidr}, extra...)...)
}

// ctl runs tabbyctl inside host h's namespace.
func (e *env) ctl(h *lab.Host, args ...string) string {
	e.t.Helper()
	out, err := e.ctlErr(h, args...)
	if err != nil {
		e.t.Fatalf("tabbyctl %v: %v", args, err)
	}
	return out
}

func (e *env) ctlErr(h *lab.Host, args ...string) (string, error) {
	return e.l.Exec(h.NS, append([]string{testutil.Bin(e.t, "tabbyctl"), "--etcd-endpoints", e.l.EtcdURL}, args...)...)
}

func (e *env) keys(prefix string) []string {
	e.t.Helper()
	kvs, _, err := e.kv.List(context.Background(), prefix, true)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, kv := range kvs {
		out = append(out, kv.Key)
	}
	return out
}

// assertClean checks that host h has no tabby veth or route, and etcd no
// endpoint, handle or block.
func (e *env) assertClean(h *lab.Host) {
	e.t.Helper()
	links := e.l.MustExec(h.NS, "ip", "-o", "link", "show")
	if strings.Contains(links, "tby") {
		e.t.Fatalf("veths left on %s:\n%s", h.Name, links)
	}
	if routes := strings.TrimSpace(e.l.MustExec(h.NS, "ip", "route", "show", "proto", "80")); routes != "" {
		e.t.Fatalf("routes left on %s:\n%s", h.Name, routes)
	}
	for _, p := range []string{model.HostWorkloadPrefix(h.Name), model.HandlePrefix, model.BlockPrefix, model.TagPrefix} {
		if k := e.keys(p); len(k) != 0 {
			e.t.Fatalf("keys left under %s: %v", p, k)
		}
	}
}

func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	if err := lab.Eventually(d, f); err != nil {
		t.Fatal(err)
	}
}
