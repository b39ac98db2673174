// Package nstest runs node tests in network namespaces of their own:
// iptables, ipsets and routes are per netns, so a test touches nothing of
// the machine's own network.
package nstest

import (
	"runtime"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tabby-net/tabby/pkg/testutil"
)

// Run runs f in a fresh network namespace, on a thread that stays there
// (it is not handed back to other goroutines), and removes the namespace
// afterwards. It needs root (see testutil.NeedRoot).
func Run(t testing.TB, f func()) {
	t.Helper()
	testutil.NeedRoot(t)
	err := ns.WithNetNSPath(testutil.NetNS(t), func(ns.NetNS) error {
		runtime.LockOSThread()
		f()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
