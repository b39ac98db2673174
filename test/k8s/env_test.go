// Package k8s is tabby's cluster lab: a real Kubernetes cluster (kubelet,
// API server, kube-proxy, containerd; test/k8s/cluster) in the network
// lab, with tabby deployed as an admin deploys it (kubectl apply of
// conf/k8s/tabby.yaml), driven through kubectl. make test-k8s runs it
// after make k8s-bins has built (or found cached) the Kubernetes binaries.
package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/k8s/cluster"
	"github.com/tabby-net/tabby/test/lab"
	"github.com/tabby-net/tabby/test/ociimage"
)

// AgnhostImage is the name the upstream e2e suite asks for (e2e.test
// --list-images); tabby's own tests use the same image.
const AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"

// images are built once per test binary run.
var (
	imagesOnce sync.Once
	imagesDir  string
	imageTars  []string
	imagesErr  error
	pauseName  string
)

func buildImages(t *testing.T) []string {
	t.Helper()
	imagesOnce.Do(func() {
		imagesDir, imagesErr = os.MkdirTemp("", "tabby-k8s-images-")
		if imagesErr != nil {
			return
		}
		bin := filepath.Dir(testutil.Bin(t, "tabby-node"))
		for _, build := range []func() (ociimage.Image, error){
			func() (ociimage.Image, error) { return ociimage.BuildTabby(testutil.Root(), bin, imagesDir) },
			func() (ociimage.Image, error) { return ociimage.BuildPause(testutil.Root(), imagesDir) },
			func() (ociimage.Image, error) {
				// The suite's probe pods run curl and nc -u (the real
				// agnhost image is Alpine with both), through /bin/sh:
				// Debian's busybox shell runs its own applets first, so
				// the shell is dash.
				return ociimage.BuildFromBinary(AgnhostImage, filepath.Join(cluster.BinDir(), "agnhost"), imagesDir, []string{"/agnhost"},
					"/usr/bin/curl", "/usr/bin/nc.openbsd=/usr/bin/nc", "/bin/dash=/bin/sh")
			},
			func() (ociimage.Image, error) {
				return ociimage.BuildFromBinary(cluster.CoreDNSImage, filepath.Join(cluster.BinDir(), "coredns"), imagesDir, []string{"/coredns"})
			},
		} {
			img, err := build()
			if err != nil {
				imagesErr = err
				return
			}
			imageTars = append(imageTars, img.Tar)
		}
		pauseName = ociimage.PauseName
	})
	if imagesErr != nil {
		t.Fatalf("images: %v", imagesErr)
	}
	return imageTars
}

func TestMain(m *testing.M) {
	code := m.Run()
	if imagesDir != "" {
		os.RemoveAll(imagesDir)
	}
	os.Exit(code)
}

// env is a cluster with tabby deployed and its pool created.
type env struct {
	*cluster.Cluster
	t *testing.T
}

// newEnv starts a cluster of n nodes, checks they stay NotReady without a
// CNI configuration, deploys tabby with kubectl apply and waits until
// every node is Ready and every tabby-node pod is ready.
func newEnv(t *testing.T, n int) *env {
	t.Helper()
	testutil.NeedRoot(t)
	if _, err := os.Stat(filepath.Join(cluster.BinDir(), "kubelet")); err != nil {
		testutil.Missing(t, "Kubernetes binaries in %s (make k8s-bins)", cluster.BinDir())
	}
	tars := buildImages(t)
	c := cluster.Start(t, cluster.Options{Nodes: n, Images: tars, SandboxImage: pauseName})
	e := &env{Cluster: c, t: t}
	t.Cleanup(func() {
		if t.Failed() {
			c.Dump()
		}
	})
	if ready, err := c.NodesReady(); err != nil || len(ready) != 0 {
		t.Fatalf("nodes Ready before any CNI configuration: %v %v", ready, err)
	}
	e.MustCtl(c.Lab.Hosts[0], "pool", "add", cluster.PodCIDR, "--nat-outgoing")
	c.Apply(e.manifest())
	e.waitTabby()
	c.DeployDNS()
	return e
}

// manifest is conf/k8s/tabby.yaml with the lab's etcd in its Secret: the
// only edit its header asks an admin to make (the image is the one built
// here and imported into every node, under the manifest's own name).
func (e *env) manifest() []byte {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(testutil.Root(), "conf", "k8s", "tabby.yaml"))
	if err != nil {
		e.t.Fatal(err)
	}
	const def = `etcd_endpoints: "http://127.0.0.1:2379"`
	if !bytes.Contains(b, []byte(def)) {
		e.t.Fatalf("conf/k8s/tabby.yaml has no %s to point at the lab's etcd", def)
	}
	return bytes.Replace(b, []byte(def), fmt.Appendf(nil, "etcd_endpoints: %q", e.Lab.EtcdURL), 1)
}

// waitTabby waits until tabby-node is ready on every node and every node
// is Ready.
func (e *env) waitTabby() {
	e.t.Helper()
	e.Eventually(3*time.Minute, func() error {
		out, err := e.Kubectl("-n", "kube-system", "get", "daemonset", "tabby-node", "-o", "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}/{.status.updatedNumberScheduled}")
		if err != nil {
			return err
		}
		want := fmt.Sprintf("%d/%d/%d", len(e.Nodes), len(e.Nodes), len(e.Nodes))
		if out != want {
			return fmt.Errorf("tabby-node ready/desired/updated %s, want %s", out, want)
		}
		out, err = e.Kubectl("-n", "kube-system", "get", "deployment", "tabby-kube-controllers", "-o", "jsonpath={.status.readyReplicas}")
		if err != nil {
			return err
		}
		if out != "1" {
			return fmt.Errorf("tabby-kube-controllers not ready (%q ready)", out)
		}
		ready, err := e.NodesReady()
		if err != nil {
			return err
		}
		if len(ready) != len(e.Nodes) {
			return fmt.Errorf("nodes Ready: %v", ready)
		}
		return nil
	})
}

// pod is a pod as kubectl shows it.
type pod struct {
	Name, Namespace, Node, IP string
}

// pods lists the Running pods matching selector in namespace ns.
func (e *env) pods(ns, selector string) ([]pod, error) {
	out, err := e.Kubectl("-n", ns, "get", "pods", "-l", selector, "--field-selector=status.phase=Running",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	var ps []pod
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 {
			ps = append(ps, pod{Name: f[0], Namespace: ns, Node: f[1], IP: f[2]})
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	return ps, nil
}

// exec runs argv in pod p's first container.
func (e *env) exec(p pod, argv ...string) (string, error) {
	return e.Kubectl(append([]string{"-n", p.Namespace, "exec", p.Name, "--"}, argv...)...)
}

// inPool says whether ip is in tabby's pool.
func inPool(ip string) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && netip.MustParsePrefix(cluster.PodCIDR).Contains(a)
}

// hostOf is the lab host of node name.
func (e *env) hostOf(name string) *lab.Host {
	for _, n := range e.Nodes {
		if n.Name == name {
			return n.Host
		}
	}
	e.t.Fatalf("no node %s", name)
	return nil
}

// httpGet fetches url from inside network namespace ns.
func (e *env) httpGet(ns, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.Lab.DialContext(ctx, ns, network, addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// dial has agnhost netexec in pod client dial ip:port once over proto
// ("http" or "udp") asking for the server's hostname, and returns the
// answers: the probe the upstream suite uses (netexec's /dial), asked from
// the client pod's own node.
func (e *env) dial(client pod, proto, ip string, port int) ([]string, error) {
	u := fmt.Sprintf("http://%s:8080/dial?request=hostname&protocol=%s&host=%s&port=%d&tries=1", client.IP, proto, ip, port)
	out, err := e.httpGet(e.hostOf(client.Node).NS, u)
	if err != nil {
		return nil, err
	}
	var r struct {
		Responses []string `json:"responses"`
		Errors    []string `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("dial answer %q: %w", out, err)
	}
	if len(r.Errors) > 0 {
		return r.Responses, fmt.Errorf("dial %s %s:%d from %s: %v", proto, ip, port, client.Name, r.Errors)
	}
	return r.Responses, nil
}
