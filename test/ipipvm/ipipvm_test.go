// Package ipipvm proves the IPIP data path for real. The kernel tabby is
// developed on has no ipip module, so this test boots Debian's kernel (which
// has it) in a throwaway qemu VM with ../shared/tools/ipip-vm/run.sh and runs
// the lab test of test/ipipvm/inner there: three hosts with tabby-node, an
// --ipip --nat-outgoing pool, containers across hosts, tunl0 routes and
// MTUs, nat-outgoing, policy and cross-subnet IPIP.
//
// It skips, saying so, when the VM tool is not there (a failure under
// TABBY_REQUIRE_TOOLS, as make test sets it), in -short mode, or when it
// already runs inside the VM. The VM has no network device: every packet stays
// between network namespaces inside the guest, nothing touches this
// machine's network.
//
//	go test -v -count=1 ./test/ipipvm      (make test-ipip)
//
// Env: TABBY_IPIP_VM (path of run.sh), IPIP_VM_CACHE (the tool's cache),
// TABBY_IPIP_VM_RUN (a -test.run pattern for the inner tests),
// TABBY_IPIP_VM_KEEP (a directory to copy the VM's output to).
package ipipvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
)

// InVMEnv is set in the VM: the inner tests run only where it is "1", and
// this test never starts a VM from inside one.
const InVMEnv = "TABBY_IN_IPIP_VM"

// binaries are built for the VM (static: the guest has only a few libraries).
var binaries = map[string]string{
	"tabby":      "./cni-plugin",
	"tabby-ipam": "./ipam-plugin",
	"tabby-node": "./node",
	"tabbyctl":   "./tabbyctl",
	"etcd-lab":   "./test/etcd-lab",
}

// findTool returns the VM tool's run.sh, or "".
func findTool(root string) string {
	cands := []string{
		os.Getenv("TABBY_IPIP_VM"),
		filepath.Join(root, "..", "shared", "tools", "ipip-vm", "run.sh"),
		"/work/shared/tools/ipip-vm/run.sh",
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			if abs, err := filepath.Abs(c); err == nil {
				return abs
			}
			return c
		}
	}
	return ""
}

func TestIPIPInVM(t *testing.T) {
	if os.Getenv(InVMEnv) != "" {
		t.Skip("already inside the IPIP VM: not starting another one")
	}
	root := testutil.Root()
	tool := findTool(root)
	if tool == "" {
		// This machine's kernel has no ipip: without the VM, IPIP is not
		// tested at all, so under make test and CI this fails.
		testutil.Missing(t, "IPIP not tested: the VM tool ../shared/tools/ipip-vm/run.sh "+
			"(or /work/shared/tools/ipip-vm/run.sh, or $TABBY_IPIP_VM) does not exist here")
	}
	if testing.Short() {
		t.Skip("SKIPPED: IPIP VM test (boots a VM, minutes under TCG) in -short mode")
	}

	// Everything the VM needs goes in one shared directory (/mnt/host).
	share := t.TempDir()
	bin := filepath.Join(share, "bin")
	t0 := time.Now()
	build := func(args ...string) {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for name, pkg := range binaries {
		build("build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(bin, name), pkg)
	}
	build("test", "-c", "-ldflags", "-s -w", "-o", filepath.Join(share, "inner.test"), "./test/ipipvm/inner")
	t.Logf("built the binaries and the inner test in %v", time.Since(t0).Round(100*time.Millisecond))

	// The VM's own limit stays inside go test's deadline, so a hang ends as
	// the tool's timeout (exit 124, with its console) and not as a panic.
	vmTimeout := 600 * time.Second
	if dl, ok := t.Deadline(); ok {
		if left := time.Until(dl) - 30*time.Second; left < vmTimeout {
			vmTimeout = left
		}
	}
	if vmTimeout < 120*time.Second {
		t.Fatalf("only %v left before go test's -timeout: run with -timeout 15m", vmTimeout)
	}
	innerTimeout := vmTimeout - 45*time.Second // boot and poweroff

	args := []string{tool, "-s", share, "-t", fmt.Sprint(int(vmTimeout.Seconds())), "-m", "2048", "-c", "2", "--",
		"env", InVMEnv + "=1", "TABBY_BIN=/mnt/host/bin", "TABBY_BIN_DIR=/mnt/host/bin",
		"./inner.test", "-test.v", "-test.count=1", "-test.timeout", innerTimeout.String()}
	if run := os.Getenv("TABBY_IPIP_VM_RUN"); run != "" {
		args = append(args, "-test.run", run)
	}
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout+60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", args...)
	cmd.Dir = share
	var out bytes.Buffer
	var w io.Writer = &out
	if testing.Verbose() {
		// Live progress: a VM run takes minutes.
		w = io.MultiWriter(&out, newPrefixWriter(os.Stdout))
	}
	cmd.Stdout, cmd.Stderr = w, w
	t.Logf("running %s", strings.Join(args, " "))
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if keep := os.Getenv("TABBY_IPIP_VM_KEEP"); keep != "" {
		_ = os.MkdirAll(keep, 0o755)
		_ = os.WriteFile(filepath.Join(keep, "vm-output.txt"), out.Bytes(), 0o644)
	}
	if !testing.Verbose() {
		t.Logf("VM output:\n%s", out.String())
	}
	t.Logf("IPIP VM run (boot + inner tests + poweroff): %v", took.Round(100*time.Millisecond))
	if line := toolSummary(out.String()); line != "" {
		t.Logf("tool: %s", line)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() == 124:
		t.Fatalf("the VM timed out after %v (console: $IPIP_VM_CACHE/last-console.log)", vmTimeout)
	case errors.As(err, &ee) && ee.ExitCode() == 125:
		t.Fatalf("the VM could not run (exit 125); console: %s", consoleLog())
	default:
		t.Fatalf("the inner tests failed in the VM: %v (output above)", err)
	}
	if !strings.Contains(out.String(), "--- PASS: TestIPIP") || strings.Contains(out.String(), "--- SKIP") {
		t.Fatalf("the inner tests did not all run and pass (see the output above)")
	}
}

// toolSummary is the tool's closing line: wall time, guest boot and command time.
func toolSummary(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "[ipip-vm] rc=") {
			return strings.TrimPrefix(l, "[ipip-vm] ")
		}
	}
	return ""
}

func consoleLog() string {
	c := os.Getenv("IPIP_VM_CACHE")
	if c == "" {
		c = "/tmp/ipip-vm"
	}
	return filepath.Join(c, "last-console.log")
}

// prefixWriter marks the VM's lines in a verbose run, a whole line at a time.
type prefixWriter struct {
	w   io.Writer
	buf *bytes.Buffer
}

func newPrefixWriter(w io.Writer) prefixWriter { return prefixWriter{w: w, buf: &bytes.Buffer{}} }

func (p prefixWriter) Write(b []byte) (int, error) {
	p.buf.Write(b)
	for {
		i := bytes.IndexByte(p.buf.Bytes(), '\n')
		if i < 0 {
			return len(b), nil
		}
		line := p.buf.Next(i + 1)
		if _, err := fmt.Fprintf(p.w, "[vm] %s", line); err != nil {
			return 0, err
		}
	}
}
