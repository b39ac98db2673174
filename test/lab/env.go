package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/pkg/testutil"
)

// Env is what every end-to-end test of tabby starts from (test/e2e,
// test/runtime, test/ipipvm/inner): a lab with etcd running, tabby's
// binaries, and the helpers to run them in a host's namespace: tabbyctl,
// the CNI plugin, tabby-node and its status socket, and the check that a
// test left nothing behind. A test package embeds *Env in its own env and
// adds what only it needs.
type Env struct {
	T    testing.TB
	Lab  *Lab
	Etcd *Proc    // the lab's etcd (stop it and call Lab.StartEtcd to restart)
	KV   store.KV // the test's own etcd client; it dials inside the lab
	// Dir holds the hosts' state dirs and the plugins' logs. It is inside
	// the lab's work directory: short enough for unix socket paths, and
	// removed with the lab (also by the next run's stale-lab cleanup).
	Dir string
	// Bin is the directory of tabby and tabby-ipam: the plugin's CNI_PATH,
	// where tabby finds tabby-ipam when it delegates.
	Bin string
}

// NewEnv builds a lab with opts, starts its etcd and finds tabby's binaries
// (testutil.Bin). It needs root (testutil.NeedRoot: a skip, or a failure
// under TABBY_REQUIRE_TOOLS).
func NewEnv(t testing.TB, opts Options) *Env {
	t.Helper()
	testutil.NeedRoot(t)
	e := &Env{T: t}
	e.Bin = filepath.Dir(testutil.Bin(t, "tabby"))
	if filepath.Dir(testutil.Bin(t, "tabby-ipam")) != e.Bin {
		t.Fatalf("tabby and tabby-ipam are in different directories: tabby finds tabby-ipam next to itself")
	}
	e.Lab = New(t, opts)
	e.Dir = filepath.Join(e.Lab.Dir, "tabby")
	if err := os.MkdirAll(e.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.Etcd = e.Lab.StartEtcd()
	e.KV = etcdv3.FromClient(e.Lab.EtcdClient(), []string{e.Lab.EtcdURL})
	return e
}

// StateDir is host h's tabby state dir (tabby-node's status socket, the
// plugins' host lock and caches).
func (e *Env) StateDir(h *Host) string { return filepath.Join(e.Dir, h.Name) }

// CNILog is the log file of the plugins on host h.
func (e *Env) CNILog(h *Host) string { return filepath.Join(e.Dir, h.Name+"-cni.log") }

// CNIPath is the plugins' CNI_PATH: tabby's binaries, then Debian's plugins.
func (e *Env) CNIPath() string { return e.Bin + ":/usr/lib/cni" }

// Conf is a tabby netconf for host h with tabby-ipam: version "" means
// 1.1.0; extra is added to the top-level object and ipamExtra to the ipam
// object, each starting with a comma (`,"profiles":["P"]`).
func (e *Env) Conf(h *Host, version, extra, ipamExtra string) []byte {
	if version == "" {
		version = "1.1.0"
	}
	return fmt.Appendf(nil, `{"cniVersion":%q,"name":"tabby-net","type":"tabby","etcd_endpoints":%q,"nodename":%q,
	  "state_dir":%q,"log_file":%q,"log_level":"debug"%s,
	  "ipam":{"type":"tabby-ipam"%s}}`, version, e.Lab.EtcdURL, h.Name, e.StateDir(h), e.CNILog(h), extra, ipamExtra)
}

// Plugin runs the tabby CNI plugin inside host h's namespace, as a runtime
// on h would. c.Path defaults to CNIPath.
func (e *Env) Plugin(h *Host, c testutil.Call) testutil.Outcome {
	if c.Path == "" {
		c.Path = e.CNIPath()
	}
	c.Wrap = []string{"ip", "netns", "exec", h.NS}
	return testutil.Run(filepath.Join(e.Bin, "tabby"), c)
}

// Ctl runs tabbyctl, pointed at the lab's etcd, inside host h's namespace.
// With Options.EtcdTLS it presents the test's own client certificate;
// flags in args come later and win.
func (e *Env) Ctl(h *Host, args ...string) (string, error) {
	argv := []string{testutil.Bin(e.T, "tabbyctl"), "--etcd-endpoints", e.Lab.EtcdURL}
	if t := e.Lab.opts.EtcdTLS; t != nil {
		argv = append(argv, "--etcd-ca-cert-file", t.CA, "--etcd-cert-file", t.ClientCert, "--etcd-key-file", t.ClientKey)
	}
	return e.Lab.Exec(h.NS, append(argv, args...)...)
}

// MustCtl is Ctl that fails the test on error.
func (e *Env) MustCtl(h *Host, args ...string) string {
	e.T.Helper()
	out, err := e.Ctl(h, args...)
	if err != nil {
		e.T.Fatalf("tabbyctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// Keys lists the etcd keys under prefix.
func (e *Env) Keys(prefix string) []string {
	e.T.Helper()
	return testutil.Keys(e.T, e.KV, prefix)
}

// Eventually is the package's Eventually that fails the test when f has not
// succeeded within d.
func (e *Env) Eventually(d time.Duration, f func() error) {
	e.T.Helper()
	if err := Eventually(d, f); err != nil {
		e.T.Fatal(err)
	}
}

// StartNode runs tabby-node on host h (log level debug, no metrics
// listener, its log in the lab's Dir), with extra flags appended.
func (e *Env) StartNode(h *Host, extra ...string) *Proc {
	e.T.Helper()
	if err := os.MkdirAll(e.StateDir(h), 0o755); err != nil {
		e.T.Fatal(err)
	}
	args := []string{testutil.Bin(e.T, "tabby-node"), "--name", h.Name, "--ip", h.CIDR, "--etcd-endpoints", e.Lab.EtcdURL,
		"--state-dir", e.StateDir(h), "--metrics-addr", "", "--log-level", "debug"}
	return e.Lab.Start(h.NS, filepath.Join(e.Lab.Dir, "tabby-node-"+h.Name+".log"), append(args, extra...)...)
}

// Status reads host h's tabby-node status socket (a unix socket: no
// network involved).
func (e *Env) Status(h *Host) (*nodestatus.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return nodestatus.Get(ctx, e.StateDir(h))
}

// PeersUp is nil once host h's tabby-node has at least n Established BGP
// sessions and BGP has settled.
func (e *Env) PeersUp(h *Host, n int) error {
	st, err := e.Status(h)
	if err != nil {
		return err
	}
	up := 0
	for _, p := range st.Peers {
		if p.State == "Established" {
			up++
		}
	}
	if up < n || !st.Settled {
		return fmt.Errorf("%s: %d of %d peers established (settled %v): %+v", h.Name, up, n, st.Settled, st.Peers)
	}
	return nil
}

// WaitPeers waits up to d for PeersUp(h, n). When p (host h's tabby-node)
// is given and exits meanwhile it fails at once (the lab shows the end of
// its log).
func (e *Env) WaitPeers(h *Host, n int, d time.Duration, p ...*Proc) {
	e.T.Helper()
	err := Eventually(d, func() error {
		for _, p := range p {
			if p.Exited() {
				return GiveUp(fmt.Errorf("tabby-node on %s exited: %v", h.Name, p.Wait()))
			}
		}
		return e.PeersUp(h, n)
	})
	if err != nil {
		e.T.Fatal(err)
	}
}

// StartNodes runs tabby-node on every host of the lab and waits until each
// has the full mesh Established, has settled and has its etcd data loaded.
func (e *Env) StartNodes(extra ...string) map[*Host]*Proc {
	e.T.Helper()
	procs := map[*Host]*Proc{}
	for _, h := range e.Lab.Hosts {
		procs[h] = e.StartNode(h, extra...)
	}
	for _, h := range e.Lab.Hosts {
		e.WaitPeers(h, len(e.Lab.Hosts)-1, 60*time.Second, procs[h])
		e.Eventually(30*time.Second, func() error {
			if st, err := e.Status(h); err != nil || !st.Ready {
				return fmt.Errorf("tabby-node on %s has not loaded its etcd data (%v)", h.Name, err)
			}
			return nil
		})
	}
	return procs
}

// Leftovers says what tabby left behind on hosts or in etcd: a tby veth or
// a workload route (proto 80, scope link) on a host; an endpoint of one of
// the hosts, a tag member, an IPAM handle, a block with an allocation, or a
// block or affinity beyond the one empty block per pool a host keeps. nil
// means clean.
func (e *Env) Leftovers(hosts ...*Host) error {
	prefixes := []string{model.TagPrefix, model.MemberPrefix, model.HandlePrefix}
	for _, h := range hosts {
		links, err := e.Lab.Exec(h.NS, "ip", "-o", "link", "show")
		if err != nil {
			return err
		}
		if strings.Contains(links, "tby") {
			return fmt.Errorf("veths left on %s:\n%s", h.Name, links)
		}
		routes, err := e.Lab.Exec(h.NS, "ip", "-4", "route", "show", "proto", "80", "scope", "link")
		if err != nil {
			return err
		}
		if strings.TrimSpace(routes) != "" {
			return fmt.Errorf("workload routes left on %s:\n%s", h.Name, routes)
		}
		prefixes = append(prefixes, model.HostWorkloadPrefix(h.Name))
	}
	for _, p := range prefixes {
		kvs, _, err := e.KV.List(context.Background(), p, true)
		if err != nil {
			return err
		}
		if len(kvs) != 0 {
			var keys []string
			for _, kv := range kvs {
				keys = append(keys, kv.Key)
			}
			return fmt.Errorf("keys left under %s: %v", p, keys)
		}
	}
	// A host keeps one empty block per pool for its next workload.
	if keys, err := ipam.Residue(context.Background(), e.KV); err != nil || len(keys) != 0 {
		return fmt.Errorf("IPAM blocks or affinities left beyond each host's kept empty block: %v %v", keys, err)
	}
	return nil
}
