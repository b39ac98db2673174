// Package testutil finds tabby's binaries for tests that run them as
// processes, the way a runtime does, and is where every test reports a
// missing prerequisite (Missing, NeedRoot, Tool): skipped on a bare
// machine, a failure under make test and CI ($TABBY_REQUIRE_TOOLS).
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

// RequireEnv names the environment variable that turns a missing
// prerequisite into a failure: make test and CI set it, so a run that
// cannot test something says so in red instead of skipping it.
const RequireEnv = "TABBY_REQUIRE_TOOLS"

// Required reports whether missing prerequisites fail the run ($RequireEnv
// set).
func Required() bool { return os.Getenv(RequireEnv) != "" }

// Missing is how every test reports a missing prerequisite (a tool, a
// binary, root, a kernel feature): it skips the test, or fails it when
// $TABBY_REQUIRE_TOOLS is set. The message should say what is missing and
// how to get it. Skips that are not about a prerequisite (-short, a helper
// process body, a known upstream race) call t.Skip themselves.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf("missing prerequisite (%s is set): "+format, append([]any{RequireEnv}, args...)...)
	}
	t.Skipf("missing prerequisite: "+format, args...)
}

// NeedRoot is Missing unless the test runs as root (network namespaces,
// iptables, mounts).
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root (network namespaces); make test runs as root")
	}
}

// Tool returns the path of an external tool (cnitool, Debian's plugins, bird,
// ip): the first candidate path that exists, else name on $PATH. When it is
// missing the test is skipped (or fails, see Missing), saying how to get it.
func Tool(t testing.TB, name string, candidates ...string) string {
	t.Helper()
	if p := findTool(name, candidates...); p != "" {
		return p
	}
	Missing(t, "%s not found (make test installs it: make deps tools)", name)
	return ""
}

// HasTool is for a check that a test makes only when a tool is there (nc
// beside an in-process check): it reports whether name is on $PATH, and
// fails the test when it is not and $TABBY_REQUIRE_TOOLS is set.
func HasTool(t testing.TB, name string) bool {
	t.Helper()
	if findTool(name) != "" {
		return true
	}
	if Required() {
		t.Fatalf("missing prerequisite (%s is set): %s not found (make deps installs it)", RequireEnv, name)
	}
	t.Logf("%s not found: the check that uses it is left out (make deps installs it)", name)
	return false
}

func findTool(name string, candidates ...string) string {
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
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
