// Package runtime runs tabby under real container runtimes that no one here
// wrote: Debian's containerd 1.6 (CRI, as Kubernetes drives it, with
// crictl) and Docker 20.10 (libnetwork remote driver and IPAM, through
// tabby-docker), each inside the lab's simulated hosts.
//
// Every runtime daemon runs inside a lab host's network namespace (so the
// CNI plugin's and tabby-docker's veths and routes land there, never in the
// machine's own namespace) and inside a private mount namespace of its own,
// where /run/containerd, /run/docker, /run/netns and /etc/docker are bind
// mounts of directories of the test: the runtime's shim sockets, pod
// network namespaces, plugin sockets and overlay mounts are the host's own
// (two Docker hosts each find their own /run/docker/plugins/tabby.sock) and
// vanish with its processes, even when the test dies. The daemons are
// started with nsenter and unshare, not `ip netns exec`, which remounts
// /sys and hides the cgroup hierarchy runc needs.
//
// Pitfalls of this machine, as ../shared/tools/cri-lab.sh found them: no
// registry (images are built here from busybox-static and a small pause
// program), root lacks CAP_SYS_RESOURCE (CRI's restrict_oom_score_adj =
// true, dockerd --oom-score-adjust=0), crictl comes from
// sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0 (make tools puts it in
// bin/tools), and dockerd runs with --iptables=false --bridge=none.
//
// Every phase's run time is logged (go test -v, as make test-runtime runs
// it). The ends of the daemons' logs are shown when a test fails, or always
// with TABBY_RT_LOGS=1.
package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// env is lab.Env (the lab, etcd, tabby's binaries and the shared helpers)
// with the run time of every phase, and this package's shorthands.
type env struct {
	*lab.Env
	begin, last time.Time
	phases      []string
	// The runtimes' directories: short, unix socket paths must stay under
	// 108 bytes.
	dir string

	// Shorthands of the test files: the test, the lab, its etcd client and
	// the directory holding tabby and tabby-ipam.
	t   *testing.T
	l   *lab.Lab
	kv  store.KV
	bin string
}

func newEnv(t *testing.T, hosts int) *env {
	t.Helper()
	begin := time.Now()
	le := lab.NewEnv(t, lab.Options{Hosts: hosts})
	e := &env{Env: le, t: t, l: le.Lab, kv: le.KV, bin: le.Bin, begin: begin, last: begin}
	// Inside the lab's own directory (short, for unix socket paths): the lab
	// removes it after stopping every process, and the next run's stale-lab
	// cleanup removes it after a crash.
	e.dir = filepath.Join(e.l.Dir, "rt")
	if err := os.MkdirAll(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.phase(fmt.Sprintf("lab (%d hosts) and etcd", hosts))
	return e
}

// phase logs how long the step since the previous phase took.
func (e *env) phase(name string) {
	now := time.Now()
	line := fmt.Sprintf("%-58s %7.2fs", name, now.Sub(e.last).Seconds())
	e.phases = append(e.phases, line)
	e.last = now
	e.t.Logf("phase: %s", line)
}

// summary logs every phase's time again, as one table.
func (e *env) summary() {
	e.t.Logf("run times of %s:\n  %s\n  %-58s %7.2fs", e.t.Name(), strings.Join(e.phases, "\n  "), "total", time.Since(e.begin).Seconds())
}

// startNodes runs tabby-node on every host and waits for the BGP mesh.
func (e *env) startNodes() {
	e.t.Helper()
	e.StartNodes()
	e.phase("tabby-node on every host, BGP established")
}

// assertNothingLeft checks that no host has a tby veth or workload route
// and that etcd holds no endpoint, tag member, IPAM handle, block or
// affinity.
func (e *env) assertNothingLeft() {
	e.t.Helper()
	e.Eventually(10*time.Second, func() error { return e.Leftovers(e.l.Hosts...) })
}

func (e *env) stateDir(h *lab.Host) string { return e.StateDir(h) }

func (e *env) ctl(h *lab.Host, args ...string) string {
	e.t.Helper()
	return e.MustCtl(h, args...)
}

func (e *env) eventually(d time.Duration, f func() error) {
	e.t.Helper()
	e.Eventually(d, f)
}

func (e *env) keys(prefix string) []string {
	e.t.Helper()
	return e.Keys(prefix)
}

// requireTool finds a runtime's program or skips: only when the machine
// could not install it (make test installs containerd, runc, docker.io and
// crictl; with TABBY_REQUIRE_TOOLS a missing one fails).
func requireTool(t *testing.T, name string, candidates ...string) string {
	t.Helper()
	return testutil.Tool(t, name, candidates...)
}

// daemon is a runtime process the test started (containerd, dockerd) in a
// lab host's namespaces: a lab.Proc with a name. nsenter and unshare exec
// in place, so cmd.Process.Pid is the daemon's.
type daemon struct {
	*lab.Proc
	name string
	cmd  *exec.Cmd
	log  string
}

// startDaemon runs argv (nsenter into a lab host, see lab.InMounts and
// lab.JoinMounts) with its output in logPath, in its own process group
// (a Ctrl-C reaches only the test, which stops daemons in order).
func (e *env) startDaemon(name, logPath string, argv ...string) *daemon {
	e.t.Helper()
	p := e.l.StartEntering(logPath, argv...)
	return &daemon{Proc: p, name: name, cmd: p.Cmd, log: p.Log}
}

func (d *daemon) exited() bool { return d.Exited() }

// stop sends SIGTERM to the daemon, then SIGKILL after timeout.
func (d *daemon) stop(timeout time.Duration) { _ = d.Stop(timeout) }

func tail(path string, n int) string { return lab.Tail(path, n) }

// privateMounts makes the mount points the runtimes' private namespaces
// bind over. Those that did not exist are removed again at the end of the
// test (only when empty), and so are empty /run/containerd and /run/docker
// (which a run killed with SIGKILL leaves behind; a live runtime's are
// never empty).
func (e *env) privateMounts(targets ...string) {
	e.t.Helper()
	for _, t := range targets {
		lab.EnsureMountPoint(e.t, t)
		if t == "/run/containerd" || t == "/run/docker" {
			e.t.Cleanup(func() { _ = os.Remove(t) }) // fails unless empty
		}
	}
}

// run runs a command of the test (a runtime's CLI) and returns its stdout.
func run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || ctx.Err() != nil {
			return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
		}
		return out.String(), fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return out.String(), nil
}

// waitSocket waits until something accepts connections... by asking the
// daemon's own CLI (check) until it succeeds.
func (e *env) waitFor(what string, d time.Duration, dm *daemon, check func() error) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if dm != nil && dm.exited() {
			e.t.Fatalf("%s exited: %v\n%s", dm.name, err, tail(dm.log, 40))
		}
		if time.Now().After(deadline) {
			msg := ""
			if dm != nil {
				msg = tail(dm.log, 40)
			}
			e.t.Fatalf("%s not ready after %v: %v\n%s", what, d, err, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pingFrom pings ip once from the network namespace of process pid.
func pingFrom(pid int, ip string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := run(ctx, "nsenter", "-t", strconv.Itoa(pid), "--net", "ping", "-c1", "-W1", "-n", "-q", ip)
	return err
}
