package lab

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// ContainerdConfig is the config.toml of a containerd that a test runs in a
// lab host (Debian's containerd 1.6, config version 2): every directory and
// socket its own, no plugin directory, no metrics, and unless NoCRI the CRI
// plugin with overlayfs, runc (cgroupfs) and one CNI network.
type ContainerdConfig struct {
	Root, State string // containerd's root and state directories
	Socket      string // the gRPC socket; the ttrpc one is Socket + ".ttrpc"
	Opt         string // the opt plugin's directory
	DebugLevel  string // [debug] level; "" leaves containerd's default (info)

	// NoCRI disables the CRI plugin (a containerd for ctr only); the
	// fields below are then not used.
	NoCRI        bool
	SandboxImage string
	RuncBinary   string // the runc options' BinaryName; "" = runc from $PATH
	RuncRoot     string // the runc options' Root
	CNIBinDir    string
	CNIConfDir   string
}

// ContainerdIn is the config of a containerd whose files all lie in dir:
// root, state, opt and runc (runc's root) below it, and the socket
// dir/containerd.sock. The rest (CRI's image and CNI directories, ...) is
// the caller's.
func ContainerdIn(dir string) ContainerdConfig {
	return ContainerdConfig{
		Root:     filepath.Join(dir, "root"),
		State:    filepath.Join(dir, "state"),
		Socket:   filepath.Join(dir, "containerd.sock"),
		Opt:      filepath.Join(dir, "opt"),
		RuncRoot: filepath.Join(dir, "runc"),
	}
}

// TOML is the config file's text.
func (c ContainerdConfig) TOML() string {
	var s strings.Builder
	disabled := `"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"`
	if c.NoCRI {
		disabled += `, "io.containerd.grpc.v1.cri"`
	}
	fmt.Fprintf(&s, `version = 2
root = %q
state = %q
plugin_dir = ""
disabled_plugins = [%s]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, c.Root, c.State, disabled, c.Socket, c.Socket+".ttrpc")
	if c.DebugLevel != "" {
		fmt.Fprintf(&s, "[debug]\n  level = %q\n", c.DebugLevel)
	}
	fmt.Fprintf(&s, `[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, c.Opt)
	if c.NoCRI {
		return s.String()
	}
	binary := ""
	if c.RuncBinary != "" {
		binary = fmt.Sprintf("        BinaryName = %q\n", c.RuncBinary)
	}
	fmt.Fprintf(&s, `[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # root here lacks CAP_SYS_RESOURCE: CRI's oom_score_adj -998 for the
  # pause container makes runc fail ("can't get final child's PID from
  # pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
%s        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, c.SandboxImage, binary, c.RuncRoot, c.CNIBinDir, c.CNIConfDir)
	return s.String()
}

// Write writes the config file at path.
func (c ContainerdConfig) Write(path string) error {
	return os.WriteFile(path, []byte(c.TOML()), 0o644)
}

// InMounts is argv run in host h's network namespace and a new private
// mount namespace in which each binds[i] = {source, target} is bind
// mounted (nsenter and unshare, not `ip netns exec`, which remounts /sys
// and hides the cgroup hierarchy runc needs). Everything execs in place:
// the process started is argv's.
func InMounts(h *Host, binds [][2]string, argv ...string) []string {
	var s strings.Builder
	s.WriteString("set -e\n")
	for _, b := range binds {
		fmt.Fprintf(&s, "mount --bind '%s' '%s'\n", b[0], b[1])
	}
	s.WriteString(`exec "$@"`)
	return append([]string{"nsenter", "--net=" + h.NSPath, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", s.String(), "sh"}, argv...)
}

// JoinMounts is argv run in the network and mount namespaces of process
// pid (one started with InMounts, and what it mounted).
func JoinMounts(pid int, argv ...string) []string {
	return append([]string{"nsenter", "-t", strconv.Itoa(pid), "--net", "--mount"}, argv...)
}

// EnsureMountPoint makes a bind target exist in the machine's tree; the
// directories it creates for that, parents included, are removed again at
// the end of the test (only when empty).
func EnsureMountPoint(t testing.TB, target string) {
	t.Helper()
	// Last first: os.Remove refuses a directory that is not empty.
	var made []string
	for d := target; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		made = append(made, d)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range made {
			_ = os.Remove(d)
		}
	})
}

// KillShims kills the containerd shims of the containerd whose socket is
// sock, and with them the containers they hold, and returns the shims'
// pids. Shims outlive their containerd, re-parented, and carry its socket's
// path (unique to a test) on their command line. A shim's children (the
// containers) are in its cgroup subtree, not reliably its process group:
// they go by parentage, before the shim (whose death would re-parent them).
func KillShims(sock string) []int {
	var killed []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cl, []byte("containerd-shim")) || !bytes.Contains(cl, []byte(sock)) {
			continue
		}
		for _, child := range descendants(pid) {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed = append(killed, pid)
		}
	}
	return killed
}

// descendants lists the process tree under pid (not pid itself).
func descendants(pid int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		p, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// Field 4 follows the command, which is in parentheses and may
		// hold spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 {
			pp, _ := strconv.Atoi(f[1])
			parent[p] = pp
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for c, pp := range parent {
			if pp == p {
				out = append(out, c)
				walk(c)
			}
		}
	}
	walk(pid)
	return out
}
