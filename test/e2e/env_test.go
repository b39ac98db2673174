// Package e2e runs tabby's binaries in the multi-host netns lab, as a
// runtime would, and checks what a user would see.
package e2e

import (
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// env is lab.Env (the lab, etcd, tabby's binaries and the shared helpers)
// with this package's shorthands: the test files name its parts e.l, e.kv,
// e.dir and e.bin, and call the helpers in lower case.
type env struct {
	*lab.Env
	t   *testing.T
	l   *lab.Lab
	kv  store.KV
	dir string
	bin string // directory holding tabby and tabby-ipam
	// netExtra is added to every netconf e.container makes (profiles).
	netExtra string
}

func newEnv(t *testing.T, opts lab.Options) *env {
	t.Helper()
	le := lab.NewEnv(t, opts)
	return &env{Env: le, t: t, l: le.Lab, kv: le.KV, dir: le.Dir, bin: le.Bin}
}

// conf is a single tabby plugin configuration for host h (lab.Env.Conf).
func (e *env) conf(h *lab.Host, version, extra, ipamExtra string) []byte {
	return e.Conf(h, version, extra, ipamExtra)
}

// plugin runs the tabby plugin inside host h's namespace.
func (e *env) plugin(h *lab.Host, cmd, cid, netns, ifname, args string, conf []byte) testutil.Outcome {
	return e.Plugin(h, testutil.Call{Command: cmd, ContainerID: cid, Netns: netns, IfName: ifname, Args: args, Conf: conf})
}

func (e *env) pool(cidr string, extra ...string) {
	e.t.Helper()
	e.MustCtl(e.l.Hosts[0], append([]string{"pool", "add", cidr}, extra...)...)
}

// assertClean checks that host h has no tabby veth or workload route, and
// etcd no endpoint, tag member, handle, block or affinity.
func (e *env) assertClean(h *lab.Host) {
	e.t.Helper()
	if err := e.Leftovers(h); err != nil {
		e.t.Fatal(err)
	}
}

// Lower-case names of lab.Env's helpers, as the test files call them.

func (e *env) stateDir(h *lab.Host) string                        { return e.StateDir(h) }
func (e *env) cniPath() string                                    { return e.CNIPath() }
func (e *env) ctlErr(h *lab.Host, args ...string) (string, error) { return e.Ctl(h, args...) }
func (e *env) keys(prefix string) []string                        { e.t.Helper(); return e.Keys(prefix) }
func (e *env) status(h *lab.Host) (*nodestatus.Status, error)     { return e.Status(h) }

// ctl runs tabbyctl inside host h's namespace and fails the test on error.
func (e *env) ctl(h *lab.Host, args ...string) string {
	e.t.Helper()
	return e.MustCtl(h, args...)
}

// startNode runs tabby-node in host h's namespace.
func (e *env) startNode(h *lab.Host, extra ...string) *lab.Proc {
	e.t.Helper()
	return e.StartNode(h, extra...)
}

// waitEstablished waits until host h has n Established BGP peers and has
// settled.
func (e *env) waitEstablished(h *lab.Host, n int, d time.Duration) {
	e.t.Helper()
	e.WaitPeers(h, n, d)
}

func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	if err := lab.Eventually(d, f); err != nil {
		t.Fatal(err)
	}
}
