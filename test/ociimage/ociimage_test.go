package ociimage_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/ociimage"
)

// scratch holds the images the tests build (one tabby image is shared by
// the tests, it takes seconds); TestMain removes it.
var scratch string

func TestMain(m *testing.M) {
	removeStale()
	code := m.Run()
	if scratch != "" {
		os.RemoveAll(scratch)
	}
	os.Exit(code)
}

// Names of what a test run leaves behind only when it is killed: they
// carry its pid.
var (
	scratchPrefix = fmt.Sprintf("tabby-ociimage-%d-", os.Getpid())
	ctrdPrefix    = fmt.Sprintf("tabby-ctrd-%d-", os.Getpid())
	cgroupName    = fmt.Sprintf("tabby-ociimage-%d", os.Getpid())
	staleName     = regexp.MustCompile(`^tabby-(?:ociimage|ctrd)-(\d+)(?:-\d+)?$`)
)

// removeStale removes the temporary directories and (empty) cgroups of
// runs that were killed: those whose pid is no longer a test of this
// package. Their processes died with them (see startContainerd).
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "tabby-*"))
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/tabby-ociimage-*")
	for _, p := range append(dirs, cgroups...) {
		m := staleName.FindStringSubmatch(filepath.Base(p))
		if m == nil {
			continue
		}
		if cl, err := os.ReadFile("/proc/" + m[1] + "/cmdline"); err == nil && bytes.Contains(cl, []byte("ociimage")) {
			continue // a live run
		}
		if strings.HasPrefix(p, "/sys/") {
			kids, _ := filepath.Glob(p + "/tabby-img-*")
			for _, k := range kids {
				_ = os.Remove(k)
			}
			_ = os.Remove(p)
		} else {
			_ = os.RemoveAll(p)
		}
	}
}

var shared struct {
	once sync.Once
	img  ociimage.Image
	took time.Duration
	err  error
}

// binDir is where make build put tabby's binaries ($TABBY_BIN_DIR,
// $TABBY_BIN, else bin/ of the repository).
func binDir(t *testing.T) string {
	t.Helper()
	for _, d := range []string{os.Getenv("TABBY_BIN_DIR"), os.Getenv("TABBY_BIN"), filepath.Join(testutil.Root(), "bin")} {
		if d == "" {
			continue
		}
		ok := true
		for _, b := range []string{"tabby", "tabby-ipam", "tabby-node", "tabbyctl"} {
			if _, err := os.Stat(filepath.Join(d, b)); err != nil {
				ok = false
			}
		}
		if ok {
			return d
		}
	}
	testutil.Missing(t, "tabby's binaries are not in $TABBY_BIN_DIR, $TABBY_BIN or bin/ (make build)")
	return ""
}

// needHostTools skips (see testutil.Missing) unless this machine has what
// BuildTabby copies.
func needHostTools(t *testing.T) {
	t.Helper()
	testutil.Tool(t, "busybox", "/bin/busybox")
	testutil.Tool(t, "portmap", "/usr/lib/cni/portmap")
	testutil.Tool(t, "xtables-nft-multi", "/usr/sbin/xtables-nft-multi")
	testutil.Tool(t, "xtables-legacy-multi", "/usr/sbin/xtables-legacy-multi")
	testutil.Tool(t, "ipset", "/usr/sbin/ipset")
	testutil.Tool(t, "ip", "/sbin/ip")
	testutil.Tool(t, "dash", "/bin/dash")
	testutil.Tool(t, "ldd")
}

func newScratch(t *testing.T, name string) string {
	t.Helper()
	if scratch == "" {
		d, err := os.MkdirTemp("", scratchPrefix)
		if err != nil {
			t.Fatal(err)
		}
		scratch = d
	}
	d := filepath.Join(scratch, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func tabbyImage(t *testing.T) ociimage.Image {
	t.Helper()
	bin := binDir(t)
	needHostTools(t)
	shared.once.Do(func() {
		begin := time.Now()
		shared.img, shared.err = ociimage.BuildTabby(testutil.Root(), bin, newScratch(t, "a"))
		shared.took = time.Since(begin)
	})
	if shared.err != nil {
		t.Fatalf("build tabby image: %v", shared.err)
	}
	return shared.img
}

// TestTabbyImageLayout reads the tarball back: the names runtimes import it
// by, the config conf/Dockerfile gives, the files, links and modes it lays
// out, and that no link in it dangles (a library the loader would miss).
// A second build must give the same bytes.
func TestTabbyImageLayout(t *testing.T) {
	img := tabbyImage(t)
	fi, err := os.Stat(img.Tar)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s: %d MB in %.2fs", img.Name, fi.Size()>>20, shared.took.Seconds())
	if img.Name != "docker.io/tabby-net/tabby:dev" {
		t.Errorf("image name %q", img.Name)
	}

	begin := time.Now()
	again, err := ociimage.BuildTabby(testutil.Root(), binDir(t), newScratch(t, "b"))
	if err != nil {
		t.Fatalf("second build: %v", err)
	}
	if a, b := fileDigest(t, img.Tar), fileDigest(t, again.Tar); a != b {
		t.Errorf("rebuilt tarball differs: %s, then %s", a, b)
	} else {
		t.Logf("rebuilt in %.2fs: same sha256 %s", time.Since(begin).Seconds(), a[:16])
	}

	outer := readTar(t, img.Tar, nil)
	var index struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	mustUnmarshal(t, outer["index.json"].data, &index)
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != ociimage.TabbyName {
		t.Fatalf("index.json does not name %s: %s", ociimage.TabbyName, outer["index.json"].data)
	}
	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	mustUnmarshal(t, outer["manifest.json"].data, &docker)
	if len(docker) != 1 || !slices.Equal(docker[0].RepoTags, []string{ociimage.TabbyName}) || len(docker[0].Layers) != 1 {
		t.Fatalf("manifest.json: %s", outer["manifest.json"].data)
	}
	var config struct {
		Config struct {
			Entrypoint, Cmd, Env []string
		}
		Rootfs struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	mustUnmarshal(t, outer[docker[0].Config].data, &config)
	if !slices.Equal(config.Config.Entrypoint, []string{"/usr/local/bin/tabby-node"}) || config.Config.Cmd != nil {
		t.Errorf("entrypoint %q, cmd %q", config.Config.Entrypoint, config.Config.Cmd)
	}
	if !slices.Contains(config.Config.Env, "TABBY_STATE_DIR=/var/run/tabby") || !slices.Contains(config.Config.Env, ociimage.DefaultPath) {
		t.Errorf("env %q", config.Config.Env)
	}
	layerBytes := outer[docker[0].Layers[0]].data
	if d := sha256.Sum256(layerBytes); config.Rootfs.DiffIDs[0] != "sha256:"+hex.EncodeToString(d[:]) {
		t.Errorf("diff_id %s is not the layer's digest", config.Rootfs.DiffIDs[0])
	}

	layer := readTar(t, "", layerBytes)
	bin := binDir(t)
	for _, b := range []string{"tabby", "tabby-ipam", "tabby-node", "tabbyctl"} {
		want, err := os.ReadFile(filepath.Join(bin, b))
		if err != nil {
			t.Fatal(err)
		}
		e := layer.file(t, "opt/tabby/bin/"+b, 0o755)
		if e != nil && !bytes.Equal(e.data, want) {
			t.Errorf("opt/tabby/bin/%s is not %s/%s", b, bin, b)
		}
	}
	if e := layer.file(t, "opt/tabby/install-cni.sh", 0o755); e != nil {
		want, _ := os.ReadFile(filepath.Join(testutil.Root(), "conf/install-cni.sh"))
		if !bytes.Equal(e.data, want) {
			t.Error("opt/tabby/install-cni.sh is not conf/install-cni.sh")
		}
	}
	layer.file(t, "opt/tabby/10-tabby.conflist", 0o644)
	for _, f := range []string{"opt/tabby/cni/portmap", "usr/sbin/xtables-nft-multi", "usr/sbin/xtables-legacy-multi", "usr/sbin/ipset", "sbin/ip", "bin/busybox", "bin/dash"} {
		layer.file(t, f, 0o755)
	}
	for _, f := range []string{"etc/protocols", "etc/services", "etc/passwd", "etc/group"} {
		layer.file(t, f, 0o644)
	}
	for link, target := range map[string]string{
		"usr/local/bin/tabby-node":      "/opt/tabby/bin/tabby-node",
		"usr/local/bin/tabbyctl":        "/opt/tabby/bin/tabbyctl",
		"usr/sbin/iptables":             "xtables-nft-multi",
		"usr/sbin/ip6tables-save":       "xtables-nft-multi",
		"usr/sbin/iptables-nft-restore": "xtables-nft-multi",
		"usr/sbin/iptables-legacy":      "xtables-legacy-multi",
		"usr/sbin/ip6tables-legacy":     "xtables-legacy-multi",
		"usr/sbin/iptables-legacy-save": "xtables-legacy-multi",
		"bin/sh":                        "dash",
		"bin/grep":                      "busybox",
		"bin/ip":                        "/sbin/ip", // not busybox's
		"var/run":                       "../run",
	} {
		if e := layer[link]; e == nil || e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != target {
			t.Errorf("%s should link to %s: %+v", link, target, e)
		}
	}
	for dir, mode := range map[string]int64{"tmp/": 0o1777, "run/": 0o755, "proc/": 0o755, "sys/": 0o755, "dev/": 0o755, "etc/": 0o755, "lib/modules/": 0o755, "usr/lib/x86_64-linux-gnu/xtables/": 0o755} {
		if e := layer[dir]; e == nil || e.hdr.Typeflag != tar.TypeDir || e.hdr.Mode&0o7777 != mode {
			t.Errorf("%s should be a directory of mode %o: %+v", dir, mode, e)
		}
	}
	if e := layer.resolve("lib64/ld-linux-x86-64.so.2"); e == nil || e.hdr.Typeflag != tar.TypeReg {
		t.Error("no dynamic loader at /lib64/ld-linux-x86-64.so.2")
	}
	if e := layer["usr/lib/x86_64-linux-gnu/xtables/libxt_set.so"]; e == nil {
		t.Error("no iptables extensions (libxt_set.so) in /usr/lib/x86_64-linux-gnu/xtables")
	}
	var dangling []string
	for name, e := range layer {
		if e.hdr.Typeflag == tar.TypeSymlink && layer.resolve(name) == nil {
			dangling = append(dangling, name+" -> "+e.hdr.Linkname)
		}
		if e.hdr.ModTime.Unix() != 0 || e.hdr.Uid != 0 || e.hdr.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want 0", name, e.hdr.ModTime, e.hdr.Uid, e.hdr.Gid)
		}
	}
	if len(dangling) > 0 {
		slices.Sort(dangling)
		t.Errorf("dangling links in the image: %s", strings.Join(dangling, ", "))
	}
}

// TestTabbyImageRuns imports the image into a containerd of its own and
// runs the tools tabby-node, its probes and install-cni.sh use, each in a
// container of its own: a new, empty network namespace (ctr run without
// --net-host), so nothing here sees or changes the machine's network.
func TestTabbyImageRuns(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tool := range []string{"containerd", "ctr", "runc", "unshare", "nsenter"} {
		testutil.Tool(t, tool)
	}
	img := tabbyImage(t)
	begin := time.Now()
	c := startContainerd(t)
	t.Logf("containerd up in %.2fs", time.Since(begin).Seconds())

	begin = time.Now()
	if out, err := c.ctr(t, "images", "import", img.Tar); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	out, err := c.ctr(t, "images", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(out), ociimage.TabbyName) {
		t.Fatalf("%s not among the imported images: %q", ociimage.TabbyName, out)
	}
	t.Logf("imported in %.2fs", time.Since(begin).Seconds())

	for _, tc := range []struct {
		name string
		env  []string
		argv []string
		want []string // each must appear in the output
		re   string   // the output must match
	}{
		{name: "iptables-nft", argv: []string{"iptables-nft", "-t", "filter", "-S"}, want: []string{"-P INPUT ACCEPT"}},
		{name: "iptables-legacy", argv: []string{"iptables-legacy", "-t", "filter", "-S"}, want: []string{"-P INPUT ACCEPT"}},
		{name: "ip6tables-legacy-save", argv: []string{"ip6tables-legacy-save"}},
		{name: "iptables-version", argv: []string{"iptables", "--version"}, want: []string{"nf_tables"}},
		{name: "ipset", argv: []string{"ipset", "list", "-n"}},
		// Only lo: the container has a network namespace of its own.
		{name: "ip-link", argv: []string{"ip", "link"}, re: `^1: lo: [^\n]*\n[^\n]*\n$`},
		{name: "tabbyctl", argv: []string{"tabbyctl", "--help"}},
		{name: "sh", argv: []string{"/bin/sh", "-c", "echo ok"}, re: `^ok\n$`},
		{name: "portmap", env: []string{"CNI_COMMAND=VERSION"}, argv: []string{"/opt/tabby/cni/portmap"}, want: []string{`"supportedVersions"`}},
		// The real tools come first in PATH, busybox's applets never (the
		// shell is dash: busybox's would run its own ip).
		{
			name: "path",
			argv: []string{"/bin/sh", "-c", "for c in iptables ip6tables-legacy-restore ipset ip tabby-node tabbyctl; do command -v $c; done"},
			re:   `^/usr/sbin/iptables\n/usr/sbin/ip6tables-legacy-restore\n/usr/sbin/ipset\n/sbin/ip\n/usr/local/bin/tabby-node\n/usr/local/bin/tabbyctl\n$`,
		},
		// install-cni.sh with busybox's tools, into a stand-in for the
		// host's directories inside the container.
		{
			name: "install-cni",
			env: []string{"CNI_BIN_DIR=/tmp/host/opt/cni/bin", "CNI_NET_DIR=/tmp/host/etc/cni/net.d",
				"CNI_NETWORK_CONFIG_FILE=/opt/tabby/10-tabby.conflist", "ETCD_ENDPOINTS=http://127.0.0.1:2379"},
			argv: []string{"/bin/sh", "-c", "/opt/tabby/install-cni.sh 2>&1 && ls /tmp/host/opt/cni/bin /tmp/host/etc/cni/net.d"},
			want: []string{"install-cni: done", "portmap", "tabby-ipam", "10-tabby.conflist"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			begin := time.Now()
			out, err := c.run(t, tc.name, tc.env, tc.argv...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tc.re != "" && !regexp.MustCompile(tc.re).MatchString(out) {
				t.Errorf("output does not match %s:\n%s", tc.re, out)
			}
			t.Logf("%s: exit 0 in %.2fs", strings.Join(tc.argv, " "), time.Since(begin).Seconds())
		})
	}
}

// containerd is a containerd of the test: pid 1 of a pid namespace, in
// mount and network namespaces of its own, with its root, state and socket
// in dir and a tmpfs on /run (shim sockets, runc state, FIFOs), so nothing
// of it is left in the machine's namespaces, and whatever it started dies
// with it.
type containerd struct {
	dir, sock string
	unshare   *exec.Cmd
	pid       int // containerd's
	done      chan struct{}
	log       string
	cgroup    string // parent of the containers' cgroups
	runs      int
}

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	dir, err := os.MkdirTemp("", ctrdPrefix) // short: socket paths
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{dir: dir, sock: filepath.Join(dir, "c.sock"), log: filepath.Join(dir, "containerd.log"),
		cgroup: cgroupName, done: make(chan struct{})}
	// Cleanups run last-in first-out: the directory goes after containerd.
	t.Cleanup(func() { c.removeDir(t) })
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
plugin_dir = ""
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// --kill-child and Pdeathsig: if the test dies, unshare dies, and with
	// it containerd and so its whole pid namespace.
	c.unshare = exec.Command("unshare", "--pid", "--kill-child", "--mount-proc", "--propagation", "private", "--net",
		"sh", "-c", `set -e; mount -t tmpfs -o mode=0755 tmpfs /run; exec containerd --config "$1"`, "sh", cfgPath)
	c.unshare.Stdout, c.unshare.Stderr = logf, logf
	c.unshare.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.unshare.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	go func() { _ = c.unshare.Wait(); close(c.done) }()
	t.Cleanup(func() { c.stop(t) })

	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.findPID()
		if err == nil {
			_, err = c.ctr(t, "version")
		}
		if err == nil {
			return c
		}
		select {
		case <-c.done:
			t.Fatalf("containerd exited: %v\n%s", err, tail(c.log))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd not ready after 20s: %v\n%s", err, tail(c.log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// findPID finds containerd: unshare's child, pid 1 of the new namespace.
func (c *containerd) findPID() error {
	p := c.unshare.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
	if err != nil {
		return fmt.Errorf("children of unshare: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return fmt.Errorf("unshare has children %q, want containerd alone", f)
	}
	c.pid, err = strconv.Atoi(f[0])
	return err
}

// ctr runs ctr in containerd's mount and pid namespaces: ctr run's FIFOs
// must be on the shim's /run, and ctr opens them through /proc/self, which
// the /proc there shows only to processes of that pid namespace.
func (c *containerd) ctr(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append([]string{"-t", strconv.Itoa(c.pid), "--mount", "--pid", "ctr", "--address", c.sock, "-n", "k8s.io"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ctr %s: %w", strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// run runs argv in a new container of the image (removed after) with
// CAP_NET_ADMIN, which iptables, ipset and ip need in its own namespace.
func (c *containerd) run(t *testing.T, name string, env []string, argv ...string) (string, error) {
	t.Helper()
	c.runs++
	id := fmt.Sprintf("tabby-img-%s-%d", name, c.runs)
	args := []string{"run", "--rm", "--cap-add", "CAP_NET_ADMIN", "--cgroup", "/" + c.cgroup + "/" + id}
	for _, e := range env {
		args = append(args, "--env", e)
	}
	args = append(args, ociimage.TabbyName, id)
	return c.ctr(t, append(args, argv...)...)
}

// stop asks containerd to stop, then kills unshare (and so containerd and
// every process of its pid namespace), and removes the containers'
// cgroups.
func (c *containerd) stop(t *testing.T) {
	if c.pid != 0 {
		_ = syscall.Kill(c.pid, syscall.SIGTERM)
	}
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Log("containerd did not stop on SIGTERM; killing it")
		_ = c.unshare.Process.Kill()
		<-c.done
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("--- end of the containerd log:\n%s", tail(c.log))
	}
	// The kernel kills the rest of the pid namespace as its pid 1 exits;
	// the cgroups are empty once it has.
	ctrls, _ := filepath.Glob("/sys/fs/cgroup/*/" + c.cgroup)
	if st, err := os.Stat("/sys/fs/cgroup/" + c.cgroup); err == nil && st.IsDir() {
		ctrls = append(ctrls, "/sys/fs/cgroup/"+c.cgroup)
	}
	for _, parent := range ctrls {
		retry(2*time.Second, func() error {
			kids, _ := filepath.Glob(parent + "/tabby-img-*")
			for _, k := range kids {
				_ = os.Remove(k)
			}
			return os.Remove(parent)
		})
	}
}

// removeDir removes the test's directory once the mount namespace holding
// the image's overlay mounts is gone.
func (c *containerd) removeDir(t *testing.T) {
	if err := retry(5*time.Second, func() error { return os.RemoveAll(c.dir) }); err != nil {
		t.Errorf("remove %s: %v", c.dir, err)
	}
}

func retry(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

type tarIndex map[string]*entry

// readTar reads a tarball (the file at p, or b) into memory, by name.
func readTar(t *testing.T, p string, b []byte) tarIndex {
	t.Helper()
	var r io.Reader = bytes.NewReader(b)
	if p != "" {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r = f
	}
	idx := tarIndex{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return idx
		}
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		idx[hdr.Name] = &entry{hdr: hdr, data: data}
	}
}

// file checks that name is a regular file of the given mode.
func (idx tarIndex) file(t *testing.T, name string, mode int64) *entry {
	t.Helper()
	e := idx[name]
	if e == nil || e.hdr.Typeflag != tar.TypeReg {
		t.Errorf("%s is not a regular file in the image: %+v", name, e)
		return nil
	}
	if e.hdr.Mode&0o7777 != mode {
		t.Errorf("%s has mode %o, want %o", name, e.hdr.Mode&0o7777, mode)
	}
	return e
}

// resolve follows links in name (also in its directories) within the
// layer, as the kernel would inside the container; nil if it dangles.
func (idx tarIndex) resolve(name string) *entry {
	parts := strings.Split(strings.Trim(name, "/"), "/")
	cur := ""
	for hops := 0; len(parts) > 0; {
		p := parts[0]
		parts = parts[1:]
		next := path.Join(cur, p)
		if p == "." || p == "" {
			continue
		}
		if p == ".." {
			cur = path.Dir(cur)
			if cur == "." {
				cur = ""
			}
			continue
		}
		e := idx[next]
		if e == nil {
			e = idx[next+"/"]
		}
		if e == nil {
			return nil
		}
		if e.hdr.Typeflag == tar.TypeSymlink {
			if hops++; hops > 40 {
				return nil
			}
			l := e.hdr.Linkname
			if strings.HasPrefix(l, "/") {
				cur = ""
			}
			parts = append(strings.Split(strings.Trim(l, "/"), "/"), parts...)
			continue
		}
		cur = next
		if len(parts) == 0 {
			return e
		}
	}
	return idx[cur+"/"]
}

func fileDigest(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}
