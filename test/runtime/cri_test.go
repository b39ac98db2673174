package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// containerd is one containerd daemon on a lab host.
type containerd struct {
	e      *env
	h      *lab.Host
	dir    string
	sock   string
	d      *daemon
	crictl string // crictl with its config; "" without CRI
}

// startContainerd runs Debian's containerd on host h: in h's network
// namespace and a private mount namespace where /run/containerd and
// /run/netns (CRI's pod namespaces) are directories of the test, plus
// extra binds. With cni it serves CRI with the given CNI directories.
func (e *env) startContainerd(h *lab.Host, cni *cniDirs, extra ...[2]string) *containerd {
	e.t.Helper()
	c := &containerd{e: e, h: h, dir: filepath.Join(e.dir, h.Name)}
	c.sock = filepath.Join(c.dir, "containerd.sock")
	for _, d := range []string{"run-containerd", "netns", "root", "state", "runc", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	cc := lab.ContainerdIn(c.dir)
	cc.DebugLevel = "info"
	if cni == nil {
		cc.NoCRI = true
	} else {
		cc.SandboxImage = pauseImage
		cc.CNIBinDir, cc.CNIConfDir = cni.bin, cni.conf
	}
	cfgPath := filepath.Join(c.dir, "containerd.toml")
	if err := cc.Write(cfgPath); err != nil {
		e.t.Fatal(err)
	}
	e.privateMounts("/run/containerd", "/run/netns")
	binds := append([][2]string{{filepath.Join(c.dir, "run-containerd"), "/run/containerd"}, {filepath.Join(c.dir, "netns"), "/run/netns"}}, extra...)
	c.d = e.startDaemon("containerd on "+h.Name, filepath.Join(c.dir, "logs", "containerd.log"),
		lab.InMounts(h, binds, "containerd", "--config", cfgPath)...)
	e.t.Cleanup(c.stop)
	e.waitFor("containerd on "+h.Name, 20*time.Second, c.d, func() error {
		_, err := c.ctr("version")
		return err
	})
	if cni != nil {
		crictlYAML := filepath.Join(c.dir, "crictl.yaml")
		body := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\ndebug: false\n", c.sock, c.sock)
		if err := os.WriteFile(crictlYAML, []byte(body), 0o644); err != nil {
			e.t.Fatal(err)
		}
		c.crictl = crictlYAML
		e.waitFor("CRI on "+h.Name, 20*time.Second, c.d, func() error {
			out, err := c.cri("info")
			if err == nil && !strings.Contains(out, `"NetworkReady"`) {
				return fmt.Errorf("no network status in crictl info")
			}
			return err
		})
	}
	return c
}

func (c *containerd) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return run(ctx, append([]string{"ctr", "--address", c.sock}, args...)...)
}

// cri runs crictl inside the host's network namespace: exec and attach
// stream from containerd's server on the host's 127.0.0.1.
func (c *containerd) cri(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	crictl := testutil.Tool(c.e.t, "crictl", filepath.Join(testutil.Root(), "bin", "tools", "crictl"))
	return c.e.l.ExecContext(ctx, c.h.NS, append([]string{crictl, "--config", c.crictl}, args...)...)
}

func (c *containerd) mustCRI(args ...string) string {
	c.e.t.Helper()
	out, err := c.cri(args...)
	if err != nil {
		c.e.t.Fatalf("crictl on %s: %v", c.h.Name, err)
	}
	return strings.TrimSpace(out)
}

// stop removes what is left (pods: a CNI DEL each), stops containerd and
// its shims.
func (c *containerd) stop() {
	t := c.e.t
	if c.crictl != "" && !c.d.exited() {
		if out, _ := c.cri("pods", "-q"); strings.TrimSpace(out) != "" {
			t.Logf("cleanup: removing pods left on %s", c.h.Name)
			_, _ = c.cri("rm", "-a", "-f")
			for _, id := range strings.Fields(out) {
				_, _ = c.cri("stopp", id)
				_, _ = c.cri("rmp", "-f", id)
			}
		}
	}
	c.d.stop(10 * time.Second)
	if pids := lab.KillShims(c.sock); len(pids) > 0 {
		t.Logf("cleanup: killed containerd shims %v", pids)
	}
	if t.Failed() || os.Getenv("TABBY_RT_LOGS") != "" {
		t.Logf("--- end of containerd log on %s:\n%s", c.h.Name, tail(c.d.log, 40))
	}
}

func (c *containerd) importImages(paths ...string) {
	c.e.t.Helper()
	for _, p := range paths {
		if _, err := c.ctr("-n", "k8s.io", "images", "import", p); err != nil {
			c.e.t.Fatal(err)
		}
	}
}

type cniDirs struct{ bin, conf string }

// cniSetup writes host h's CNI directories: bin with tabby, tabby-ipam and
// Debian's loopback and portmap, conf with the tabby conflist.
func (e *env) cniSetup(h *lab.Host) *cniDirs {
	e.t.Helper()
	d := &cniDirs{bin: filepath.Join(e.dir, h.Name, "cni-bin"), conf: filepath.Join(e.dir, h.Name, "cni-conf")}
	for _, p := range []string{d.bin, d.conf} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	for name, src := range map[string]string{
		"tabby": filepath.Join(e.bin, "tabby"), "tabby-ipam": filepath.Join(e.bin, "tabby-ipam"),
		"loopback": requireTool(e.t, "loopback", "/usr/lib/cni/loopback"), "portmap": requireTool(e.t, "portmap", "/usr/lib/cni/portmap"),
	} {
		if err := os.Symlink(src, filepath.Join(d.bin, name)); err != nil {
			e.t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "tabby-k8s",
  "plugins": [
    {
      "type": "tabby",
      "etcd_endpoints": %q,
      "nodename": %q,
      "state_dir": %q,
      "log_file": %q,
      "log_level": "debug",
      "ipam": { "type": "tabby-ipam" }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
`, e.l.EtcdURL, h.Name, e.stateDir(h), filepath.Join(e.dir, h.Name, "cni.log"))
	if err := os.WriteFile(filepath.Join(d.conf, "10-tabby.conflist"), []byte(conf), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return d
}

type pod struct {
	id, ns, name, ip string
	pid              int
	config           string
	c                *containerd
}

// runPod runs a pod sandbox with Kubernetes metadata.
func (c *containerd) runPod(namespace, name string) *pod {
	c.e.t.Helper()
	p := &pod{ns: namespace, name: name, c: c, config: filepath.Join(c.dir, "pod-"+name+".json")}
	body := mustJSON(map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": namespace, "uid": "uid-" + namespace + "-" + name, "attempt": 0},
		"hostname":      name,
		"log_directory": filepath.Join(c.dir, "logs", "pod-"+name),
		"linux":         map[string]any{},
	})
	if err := os.WriteFile(p.config, body, 0o644); err != nil {
		c.e.t.Fatal(err)
	}
	p.id = c.mustCRI("runp", p.config)
	c.e.phase(fmt.Sprintf("crictl runp %s/%s on %s (CNI ADD included)", namespace, name, c.h.Name))
	var insp struct {
		Status struct {
			Network struct{ IP string } `json:"network"`
		} `json:"status"`
		Info struct{ Pid int } `json:"info"`
	}
	if err := json.Unmarshal([]byte(c.mustCRI("inspectp", "-o", "json", p.id)), &insp); err != nil {
		c.e.t.Fatalf("inspectp %s: %v", name, err)
	}
	p.ip, p.pid = insp.Status.Network.IP, insp.Info.Pid
	if p.ip == "" || p.pid == 0 {
		c.e.t.Fatalf("pod %s: ip %q pid %d", name, p.ip, p.pid)
	}
	return p
}

func (p *pod) String() string { return fmt.Sprintf("%s/%s (%s on %s)", p.ns, p.name, p.ip, p.c.h.Name) }

// endpoint checks the pod's endpoint record: Kubernetes workload name,
// orchestrator k8s, the namespace profile, the pod's address.
func (e *env) checkPodEndpoint(p *pod) {
	e.t.Helper()
	key := model.EndpointKey(p.c.h.Name, model.OrchestratorK8s, p.ns+"."+p.name, "eth0")
	var ep model.Endpoint
	if _, err := store.GetJSON(context.Background(), e.kv, key, &ep); err != nil {
		e.t.Fatalf("endpoint of %s at %s: %v", p, key, err)
	}
	if !slices.Equal(ep.Profiles, []string{"k8s_ns." + p.ns}) || !slices.Equal(ep.IPv4Nets, []string{p.ip + "/32"}) ||
		!strings.HasPrefix(ep.HostInterface, "tby") || ep.Orchestrator != "k8s" {
		e.t.Fatalf("endpoint of %s: %+v", p, ep)
	}
}

// containerd CRI, as Kubernetes drives it: pods on two hosts get tabby
// addresses and endpoints named after the pod, reach each other within
// their namespace's profile (a busybox container included) and not from a
// namespace without one, and stopp/rmp leave nothing behind.
func TestCRIContainerd(t *testing.T) {
	requireTool(t, "containerd")
	requireTool(t, "runc", "/usr/sbin/runc")
	requireTool(t, "ctr")
	requireTool(t, "crictl", filepath.Join(testutil.Root(), "bin", "tools", "crictl"))
	requireTool(t, "nsenter")
	e := newEnv(t, 2)
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	imgs := buildImages(t, e.dir)
	e.phase("images built (pause, busybox)")
	e.ctl(h1, "pool", "add", "10.244.0.0/16")
	e.ctl(h1, "profile", "add", "k8s_ns.default")
	e.startNodes()

	c1 := e.startContainerd(h1, e.cniSetup(h1))
	c2 := e.startContainerd(h2, e.cniSetup(h2))
	e.phase("containerd with CRI ready on host1 and host2")
	c1.importImages(imgs.pause, imgs.busybox)
	c2.importImages(imgs.pause)
	e.phase("images imported")

	pa := c1.runPod("default", "pod-a")
	pb := c1.runPod("default", "pod-b")
	pc := c2.runPod("default", "pod-c")
	e.phase("crictl inspectp of the last pod")
	t.Logf("pods: %s, %s, %s", pa, pb, pc)
	for _, p := range []*pod{pa, pb, pc} {
		if !strings.HasPrefix(p.ip, "10.244.") {
			t.Fatalf("pod %s has an address outside the tabby pool", p)
		}
		e.checkPodEndpoint(p)
	}
	// Inside the pod: the address as /32 and the default route via 169.254.1.1.
	if out, err := run(context.Background(), "nsenter", "-t", fmt.Sprint(pa.pid), "--net", "ip", "-4", "-o", "addr", "show", "dev", "eth0"); err != nil || !strings.Contains(out, pa.ip+"/32") {
		t.Fatalf("pod-a eth0: %q %v", out, err)
	}
	if out, _ := run(context.Background(), "nsenter", "-t", fmt.Sprint(pa.pid), "--net", "ip", "-4", "route"); !strings.Contains(out, "default via 169.254.1.1 dev eth0") {
		t.Fatalf("pod-a routes:\n%s", out)
	}

	for _, pair := range [][2]*pod{{pa, pb}, {pb, pa}, {pa, pc}, {pc, pa}, {pc, pb}} {
		from, to := pair[0], pair[1]
		e.eventually(10*time.Second, func() error { return pingFrom(from.pid, to.ip) })
	}
	e.phase("pods ping each other (same host and across hosts)")

	// A real container in pod-a.
	ctrCfg := filepath.Join(c1.dir, "ctr-bb.json")
	if err := os.WriteFile(ctrCfg, mustJSON(map[string]any{
		"metadata": map[string]any{"name": "bb"}, "image": map[string]any{"image": busyboxImage},
		"command":  []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"},
		"log_path": "bb.log", "linux": map[string]any{},
	}), 0o644); err != nil {
		t.Fatal(err)
	}
	cid := c1.mustCRI("create", pa.id, ctrCfg, pa.config)
	c1.mustCRI("start", cid)
	e.phase("busybox container created and started in pod-a")
	if out := c1.mustCRI("exec", cid, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(out, pa.ip+"/32") {
		t.Fatalf("busybox in pod-a sees eth0 as %q", out)
	}
	for _, to := range []*pod{pb, pc} {
		if out, err := c1.cri("exec", cid, "ping", "-c1", "-W2", to.ip); err != nil {
			t.Fatalf("busybox in pod-a pings %s: %v\n%s", to, err, out)
		}
	}
	e.phase("busybox in pod-a pings pod-b and pod-c (crictl exec)")

	// Profiles decide: a pod of namespace "other" (no profile k8s_ns.other)
	// neither reaches nor is reached.
	px := c1.runPod("other", "pod-x")
	e.checkPodEndpoint(px)
	for _, pair := range [][2]*pod{{px, pa}, {pa, px}, {pc, px}} {
		if err := pingFrom(pair[0].pid, pair[1].ip); err == nil {
			t.Fatalf("%s reaches %s without a profile that allows it", pair[0], pair[1])
		}
	}
	e.phase("pod of namespace other: no traffic either way (3 pings time out)")

	c1.mustCRI("stop", "-t", "5", cid)
	c1.mustCRI("rm", cid)
	e.phase("busybox container stop and rm")
	for _, p := range []*pod{pa, pb, px, pc} {
		p.c.mustCRI("stopp", p.id)
		e.phase(fmt.Sprintf("crictl stopp %s/%s (CNI DEL)", p.ns, p.name))
		p.c.mustCRI("rmp", p.id)
		e.phase(fmt.Sprintf("crictl rmp %s/%s", p.ns, p.name))
	}
	for _, c := range []*containerd{c1, c2} {
		if out := c.mustCRI("pods", "-q"); out != "" {
			t.Fatalf("pods left on %s: %s", c.h.Name, out)
		}
		if ents, _ := os.ReadDir(filepath.Join(c.dir, "netns")); len(ents) != 0 {
			t.Fatalf("pod network namespaces left on %s: %v", c.h.Name, ents)
		}
	}
	e.assertNothingLeft()
	e.ctl(h1, "ipam", "check")
	e.phase("nothing left: no veth, endpoint, handle or block; ipam check clean")
	e.summary()
}
