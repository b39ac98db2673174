// Package testutil finds tabby's binaries for tests that run them as
// processes, the way a runtime does.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/testutils"
)

var pkgs = map[string]string{
	"tabby":      "cni-plugin",
	"tabby-ipam": "ipam-plugin",
	"tabby-node": "node",
	"tabbyctl":   "tabbyctl",
	"etcd-lab":   "test/etcd-lab",
}

var (
	mu    sync.Mutex
	built = map[string]string{}
	tmp   string
)

// Root is the repository root.
func Root() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(f), "..", ".."))
}

// Bin returns the path of a tabby binary: from $TABBY_BIN (make test builds
// them there first), else built once per test process.
func Bin(t testing.TB, name string) string {
	t.Helper()
	if d := os.Getenv("TABBY_BIN"); d != "" {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	if tmp == "" {
		d, err := os.MkdirTemp("", "tabby-testbin-")
		if err != nil {
			t.Fatal(err)
		}
		tmp = d
	}
	p := filepath.Join(tmp, name)
	cmd := exec.Command("go", "build", "-o", p, "./"+pkgs[name])
	cmd.Dir = Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	built[name] = p
	return p
}

// Tool returns the path of an external tool (cnitool, Debian's plugins), or
// skips the test when it is missing, saying how to get it.
func Tool(t testing.TB, name string, candidates ...string) string {
	t.Helper()
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("TABBY_REQUIRE_TOOLS") != "" {
		t.Fatalf("%s not found although make test should have installed it", name)
	}
	t.Skipf("%s not found (make test installs it: make deps tools)", name)
	return ""
}

// NetNS makes an empty network namespace for the test and removes it after.
func NetNS(t testing.TB) string {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() { n.Close(); testutils.UnmountNS(n) })
	return n.Path()
}
