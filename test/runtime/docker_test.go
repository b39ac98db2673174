package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

var tabbyDocker struct {
	once sync.Once
	path string
	err  error
}

// tabbyDockerBin is $TABBY_BIN/tabby-docker (make build), else one built
// from this tree once per test process.
func tabbyDockerBin(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("TABBY_BIN"); d != "" {
		if p := filepath.Join(d, "tabby-docker"); isFile(p) {
			return p
		}
	}
	tabbyDocker.once.Do(func() {
		dir, err := os.MkdirTemp("", "tabby-docker-bin-")
		if err != nil {
			tabbyDocker.err = err
			return
		}
		p := filepath.Join(dir, "tabby-docker")
		cmd := exec.Command("go", "build", "-o", p, "./docker")
		cmd.Dir = testutil.Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			tabbyDocker.err = fmt.Errorf("build tabby-docker: %v\n%s", err, out)
			return
		}
		tabbyDocker.path = p
	})
	if tabbyDocker.err != nil {
		t.Fatal(tabbyDocker.err)
	}
	return tabbyDocker.path
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// dockerHost is one Docker host: tabby-docker, containerd and dockerd in a
// lab host.
type dockerHost struct {
	e      *env
	h      *lab.Host
	dir    string
	sock   string
	cli    string
	plugin *lab.Proc
	ctrd   *containerd
	d      *daemon
}

// startDocker starts tabby-docker, containerd and dockerd on host h.
// dockerd and containerd share a private mount namespace in which
// /run/docker is <dir>/run-docker (so this host's dockerd finds this
// host's tabby-docker at /run/docker/plugins/tabby.sock) and /etc/docker
// is <dir>/etc-docker (dockerd 20.10 writes its key.json there).
func (e *env) startDocker(h *lab.Host) *dockerHost {
	e.t.Helper()
	dh := &dockerHost{e: e, h: h, dir: filepath.Join(e.dir, h.Name)}
	dh.sock = filepath.Join(dh.dir, "docker.sock")
	dh.cli = requireTool(e.t, "docker", "/usr/bin/docker") // Debian's 20.10 client
	for _, d := range []string{"run-docker/plugins", "etc-docker", "docker-root", "docker-exec", "logs"} {
		if err := os.MkdirAll(filepath.Join(dh.dir, d), 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	pluginSock := filepath.Join(dh.dir, "run-docker", "plugins", "tabby.sock")
	dh.plugin = e.l.Start(h.NS, filepath.Join(e.l.Dir, "tabby-docker-"+h.Name+".log"), tabbyDockerBin(e.t),
		"--socket", pluginSock, "--etcd-endpoints", e.l.EtcdURL, "--nodename", h.Name, "--state-dir", e.stateDir(h),
		"--docker-host", "unix://"+dh.sock, "--log-level", "debug")
	e.waitFor("tabby-docker on "+h.Name, 10*time.Second, nil, func() error {
		if dh.plugin.Exited() {
			e.t.Fatalf("tabby-docker on %s exited: %v", h.Name, dh.plugin.Wait())
		}
		_, err := os.Stat(pluginSock)
		return err
	})
	e.privateMounts("/run/docker", "/etc/docker")
	dh.ctrd = e.startContainerd(h, nil, [2]string{filepath.Join(dh.dir, "run-docker"), "/run/docker"},
		[2]string{filepath.Join(dh.dir, "etc-docker"), "/etc/docker"})
	cfg := filepath.Join(dh.dir, "daemon.json")
	if err := os.WriteFile(cfg, []byte("{}\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	dh.d = e.startDaemon("dockerd on "+h.Name, filepath.Join(dh.dir, "logs", "dockerd.log"), lab.JoinMounts(dh.ctrd.d.cmd.Process.Pid,
		"dockerd", "--config-file", cfg, "--data-root", filepath.Join(dh.dir, "docker-root"),
		"--exec-root", filepath.Join(dh.dir, "docker-exec"), "--pidfile", filepath.Join(dh.dir, "dockerd.pid"),
		"-H", "unix://"+dh.sock, "--containerd", dh.ctrd.sock, "--containerd-namespace", "tabby-moby",
		"--containerd-plugins-namespace", "tabby-moby-plugins", "--storage-driver", "overlay2",
		"--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--userland-proxy=false", "--oom-score-adjust=0")...)
	e.t.Cleanup(dh.stop)
	e.waitFor("dockerd on "+h.Name, 30*time.Second, dh.d, func() error {
		_, err := dh.docker("version", "--format", "{{.Server.Version}}")
		return err
	})
	return dh
}

func (dh *dockerHost) docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := run(ctx, append([]string{dh.cli, "-H", "unix://" + dh.sock}, args...)...)
	return strings.TrimSpace(out), err
}

func (dh *dockerHost) mustDocker(args ...string) string {
	dh.e.t.Helper()
	out, err := dh.docker(args...)
	if err != nil {
		dh.e.t.Fatalf("docker on %s: %v", dh.h.Name, err)
	}
	return out
}

// stop removes the containers left (a failed test) and stops dockerd; the
// containerd cleanup runs next.
func (dh *dockerHost) stop() {
	t := dh.e.t
	if !dh.d.exited() {
		if ids, _ := dh.docker("ps", "-aq"); ids != "" {
			t.Logf("cleanup: removing containers left on %s", dh.h.Name)
			_, _ = dh.docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
	}
	dh.d.stop(20 * time.Second)
	if t.Failed() || os.Getenv("TABBY_RT_LOGS") != "" {
		t.Logf("--- end of dockerd log on %s:\n%s", dh.h.Name, tail(dh.d.log, 40))
		t.Logf("--- end of tabby-docker log on %s:\n%s", dh.h.Name, tail(dh.plugin.Log, 60))
	}
}

type dockerContainer struct {
	name, ip, ip6, mac, endpoint string
	dh                           *dockerHost
}

func (c *dockerContainer) String() string {
	return fmt.Sprintf("%s (%s on %s)", c.name, c.ip, c.dh.h.Name)
}

// runContainer starts a busybox container on network net.
func (dh *dockerHost) runContainer(name, net string, extra ...string) *dockerContainer {
	dh.e.t.Helper()
	args := append([]string{"run", "-d", "--name", name, "--net", net}, extra...)
	dh.mustDocker(append(args, busyboxImage, "sleep", "3600")...)
	var nets map[string]struct {
		IPAddress, GlobalIPv6Address, MacAddress, EndpointID string
	}
	if err := json.Unmarshal([]byte(dh.mustDocker("inspect", "--format", "{{json .NetworkSettings.Networks}}", name)), &nets); err != nil {
		dh.e.t.Fatal(err)
	}
	n := nets[net]
	return &dockerContainer{name: name, ip: n.IPAddress, ip6: n.GlobalIPv6Address, mac: n.MacAddress, endpoint: n.EndpointID, dh: dh}
}

func (c *dockerContainer) ping(ip string) error {
	_, err := c.dh.docker("exec", c.name, "ping", "-c1", "-W1", ip)
	return err
}

// checkEndpoint checks the container's endpoint record: orchestrator
// docker, workload = Docker's endpoint ID, the network's profile, the
// container's address and MAC.
func (e *env) checkDockerEndpoint(c *dockerContainer, profile string) {
	e.t.Helper()
	key := model.EndpointKey(c.dh.h.Name, model.OrchestratorDock, c.endpoint, "eth0")
	var ep model.Endpoint
	if _, err := store.GetJSON(context.Background(), e.kv, key, &ep); err != nil {
		e.t.Fatalf("endpoint of %s at %s: %v", c, key, err)
	}
	if !slices.Equal(ep.Profiles, []string{profile}) || !slices.Equal(ep.IPv4Nets, []string{c.ip + "/32"}) ||
		ep.MAC != c.mac || !strings.HasPrefix(ep.HostInterface, "tby") || ep.Handle == "" {
		e.t.Fatalf("endpoint of %s (MAC %s): %+v", c, c.mac, ep)
	}
}

// Docker with tabby as remote network and IPAM driver, on two Docker hosts
// sharing etcd: `docker network create --driver tabby --ipam-driver tabby`
// on each, containers get tabby endpoints with the network's profile and
// reach each other across hosts but not from another network, a
// dual-stack network works, and `docker rm -f` and `docker network rm`
// release everything.
func TestDockerRemoteDriver(t *testing.T) {
	requireTool(t, "dockerd", "/usr/sbin/dockerd")
	requireTool(t, "containerd")
	requireTool(t, "runc", "/usr/sbin/runc")
	requireTool(t, "nsenter")
	e := newEnv(t, 2)
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	imgs := buildImages(t, e.dir)
	e.phase("images built (busybox)")
	e.startNodes()
	d1 := e.startDocker(h1)
	d2 := e.startDocker(h2)
	e.phase("tabby-docker, containerd and dockerd up on host1 and host2")
	for _, dh := range []*dockerHost{d1, d2} {
		dh.mustDocker("load", "-i", imgs.busybox)
	}
	e.phase("docker load busybox on both hosts")

	for _, dh := range []*dockerHost{d1, d2} {
		dh.mustDocker("network", "create", "--driver", "tabby", "--ipam-driver", "tabby", "--subnet", "10.10.0.0/16", "net1")
		e.phase("docker network create net1 on " + dh.h.Name)
	}
	// One pool and one profile, both made by tabby-docker and shared by the
	// two hosts' networks.
	var own struct{ Refs []string }
	if _, err := store.GetJSON(context.Background(), e.kv, model.Prefix+"docker/pool/10.10.0.0-16", &own); err != nil || len(own.Refs) != 2 {
		t.Fatalf("pool 10.10.0.0/16 owner: %+v %v", own, err)
	}
	e.eventually(10*time.Second, func() error {
		if _, err := e.kv.Get(context.Background(), model.ProfileKey("net1")); err != nil {
			return fmt.Errorf("profile net1: %w", err)
		}
		return nil
	})
	if out := e.ctl(h1, "pool", "show"); !strings.Contains(out, "10.10.0.0/16") {
		t.Fatalf("pool show:\n%s", out)
	}

	c1 := d1.runContainer("c1", "net1", "--ip", "10.10.0.5")
	e.phase("docker run c1 --ip 10.10.0.5 (host1)")
	c2 := d2.runContainer("c2", "net1")
	e.phase("docker run c2 (host2, address from tabby IPAM)")
	c3 := d1.runContainer("c3", "net1")
	e.phase("docker run c3 (host1)")
	t.Logf("containers: %s, %s, %s", c1, c2, c3)
	if c1.ip != "10.10.0.5" || !strings.HasPrefix(c2.ip, "10.10.") || !strings.HasPrefix(c3.ip, "10.10.") {
		t.Fatalf("addresses: %s %s %s", c1, c2, c3)
	}
	for _, c := range []*dockerContainer{c1, c2, c3} {
		e.checkDockerEndpoint(c, "net1")
	}
	if out := d1.mustDocker("exec", "c1", "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(out, "10.10.0.5/32") {
		t.Fatalf("c1 eth0: %s", out)
	}
	if out := d1.mustDocker("exec", "c1", "ip", "-4", "route"); !strings.Contains(out, "default via 169.254.1.1 dev eth0") {
		t.Fatalf("c1 routes:\n%s", out)
	}
	// An address in use is refused, and the failed run leaves nothing.
	if out, err := d2.docker("run", "-d", "--name", "dup", "--net", "net1", "--ip", "10.10.0.5", busyboxImage, "sleep", "1"); err == nil {
		t.Fatalf("second container with 10.10.0.5 started: %s", out)
	} else if !strings.Contains(err.Error(), "10.10.0.5") {
		t.Fatalf("duplicate address error does not name it: %v", err)
	}
	_, _ = d2.docker("rm", "-f", "dup")
	e.phase("docker run --ip of an address in use: refused")

	for _, pair := range [][2]*dockerContainer{{c1, c2}, {c2, c1}, {c1, c3}, {c3, c2}} {
		e.eventually(10*time.Second, func() error { return pair[0].ping(pair[1].ip) })
	}
	e.phase("containers ping each other (same host and across hosts)")

	// Another network, another profile: no traffic either way.
	d2.mustDocker("network", "create", "--driver", "tabby", "--ipam-driver", "tabby", "--subnet", "10.20.0.0/16", "net2")
	c4 := d2.runContainer("c4", "net2")
	e.checkDockerEndpoint(c4, "net2")
	for _, pair := range [][2]*dockerContainer{{c4, c1}, {c1, c4}, {c2, c4}} {
		if err := pair[0].ping(pair[1].ip); err == nil {
			t.Fatalf("%s reaches %s across networks", pair[0], pair[1])
		}
	}
	e.phase("net2 container: no traffic to or from net1 (3 pings time out)")

	// Dual stack: an IPv6 subnet too; the containers' IPv6 default route is
	// via the host veth's link-local address. (The first IPv6 ping waits for
	// the container address's duplicate address detection, which libnetwork
	// leaves on.)
	d1.mustDocker("network", "create", "--driver", "tabby", "--ipam-driver", "tabby", "--ipv6",
		"--subnet", "10.30.0.0/16", "--subnet", "fd00:30::/64", "net6")
	c5 := d1.runContainer("c5", "net6")
	c6 := d1.runContainer("c6", "net6")
	t.Logf("dual-stack containers: %s %s, %s %s", c5, c5.ip6, c6, c6.ip6)
	if !strings.HasPrefix(c5.ip6, "fd00:30:") || !strings.HasPrefix(c5.ip, "10.30.") {
		t.Fatalf("c5 addresses %s %s", c5.ip, c5.ip6)
	}
	if out := d1.mustDocker("exec", "c5", "ip", "-6", "route"); !strings.Contains(out, "default via fe80::ecee:eeff:feee:eeee dev eth0") {
		t.Fatalf("c5 IPv6 routes:\n%s", out)
	}
	var ep6 model.Endpoint
	if _, err := store.GetJSON(context.Background(), e.kv, model.EndpointKey(h1.Name, model.OrchestratorDock, c5.endpoint, "eth0"), &ep6); err != nil ||
		!slices.Equal(ep6.IPv6Nets, []string{c5.ip6 + "/128"}) || !slices.Equal(ep6.Profiles, []string{"net6"}) {
		t.Fatalf("c5 endpoint %+v %v", ep6, err)
	}
	e.eventually(10*time.Second, func() error { return c5.ping(c6.ip6) })
	e.eventually(10*time.Second, func() error { return c6.ping(c5.ip) })
	e.phase("dual-stack network net6: IPv4 and IPv6 ping")

	d1.mustDocker("rm", "-f", "c1", "c3", "c5", "c6")
	e.phase("docker rm -f c1 c3 (host1)")
	d2.mustDocker("rm", "-f", "c2", "c4")
	e.phase("docker rm -f c2 c4 (host2)")
	e.eventually(10*time.Second, func() error {
		for _, p := range []string{model.HostWorkloadPrefix(h1.Name), model.HostWorkloadPrefix(h2.Name), model.HandlePrefix} {
			if k := e.keys(p); len(k) != 0 {
				return fmt.Errorf("left after docker rm under %s: %v", p, k)
			}
		}
		return nil
	})
	d1.mustDocker("network", "rm", "net1", "net6")
	e.phase("docker network rm net1 net6 (host1)")
	if _, err := e.kv.Get(context.Background(), model.PoolKey("10.10.0.0/16")); err != nil {
		t.Fatalf("pool removed while host2's net1 uses it: %v", err)
	}
	d2.mustDocker("network", "rm", "net1", "net2")
	e.phase("docker network rm net1 net2 (host2)")
	for _, p := range []string{model.PoolPrefix, model.ProfilePrefix, model.Prefix + "docker/"} {
		if k := e.keys(p); len(k) != 0 {
			t.Fatalf("left after docker network rm under %s: %v", p, k)
		}
	}
	e.assertNothingLeft()
	e.ctl(h1, "ipam", "check")
	e.phase("nothing left: no veth, endpoint, handle, block, pool or profile")
	e.summary()
}
