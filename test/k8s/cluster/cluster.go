// Package cluster runs a real Kubernetes cluster inside tabby's network
// lab: etcd, kube-apiserver, kube-controller-manager and kube-scheduler in
// the underlay namespace, and on every lab host its own containerd,
// kubelet and kube-proxy (iptables mode). Pods are real containers started
// by the kubelets through containerd's CRI, and the CNI plugin the nodes use
// is whatever the test deploys: tabby through its DaemonSet manifest, or
// Debian's ptp + host-local as the reference.
//
// A lab host is a network namespace; a Kubernetes node also needs its own
// files where the manifest's hostPath volumes and the CNI runtime look
// (/etc/cni/net.d, /opt/cni/bin, /var/run/tabby, /var/lib/kubelet, ...).
// Each node's containerd therefore runs in a private mount namespace that
// binds the node's directories over those paths, and its kubelet and
// kube-proxy join that mount namespace, so three nodes on one machine look
// like three machines to everything they run, tabby-node's pods included.
// That mount namespace (and with it every pod network namespace CRI
// mounted in it) disappears when its last process exits.
//
// Pitfalls of this machine the code handles (see each spot): cgroup v1
// (failCgroupV1: false, cgroupfs, a cgroupRoot created in every hierarchy),
// no CAP_SYS_RESOURCE (restrict_oom_score_adj), no registry (images are
// imported into each containerd; pods use imagePullPolicy Never or
// IfNotPresent), no DNS for node names (--kubelet-preferred-address-types
// InternalIP), and nf_conntrack sysctls that are not per namespace
// (kube-proxy's conntrack settings left alone).
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/lab"
)

// Addresses of the cluster.
const (
	ServiceCIDR  = "10.96.0.0/16"
	KubeDNSIP    = "10.96.0.10"
	APIPort      = 6443
	PodCIDR      = "10.244.0.0/16" // tabby's pool in the cluster lab
	RefPodPrefix = "10.245"        // ptp + host-local: 10.245.<host>.0/24 per node
)

// Options describe the cluster.
type Options struct {
	Nodes  int    // lab hosts running a kubelet; 0 means 3
	BinDir string // the Kubernetes binaries (make k8s-bins); "" = K8S_BIN_DIR or the cache
	// Images are image tarballs imported into every node's containerd.
	Images []string
	// SandboxImage is CRI's pause image (one of Images).
	SandboxImage string
}

// Cluster is a running cluster.
type Cluster struct {
	*lab.Env
	t          testing.TB
	Bin        string // the Kubernetes binaries
	Dir        string
	APIServer  string // https://198.19.0.254:6443
	Kubeconfig string // the admin's (system:masters)
	pki        *pki
	tokens     map[string]string // user -> token
	Nodes      []*Node
	control    []*lab.Proc // apiserver, controller-manager, scheduler
}

// Node is one Kubernetes node: a lab host with its runtime and agents.
type Node struct {
	c          *Cluster
	Host       *lab.Host
	Name       string // the Kubernetes node name: the host's name
	Dir        string // its private directories (bound over the paths below)
	Sock       string // containerd's socket
	cgroupRoot string
	Containerd *lab.Proc
	Kubelet    *lab.Proc
	Proxy      *lab.Proc

	containerdArgv, kubeletArgv []string
}

// The paths a node sees as its own (bound from Node.Dir/<name>).
var nodePaths = []struct{ name, target string }{
	{"run-containerd", "/run/containerd"},
	{"netns", "/run/netns"},
	{"cni-bin", "/opt/cni/bin"},
	{"cni-net", "/etc/cni/net.d"},
	{"run-tabby", "/run/tabby"},
	{"log-tabby", "/var/log/tabby"},
	{"kubelet", "/var/lib/kubelet"},
	{"log-pods", "/var/log/pods"},
	{"log-containers", "/var/log/containers"},
	// A real node has /lib/modules (tabby's DaemonSet mounts it for
	// modprobe); this kernel has no modules and the machine no directory.
	{"lib-modules", "/lib/modules"},
}

// BinDir is where make k8s-bins puts the Kubernetes binaries.
func BinDir() string {
	if d := os.Getenv("K8S_BIN_DIR"); d != "" {
		return d
	}
	return "/var/cache/tabby-k8s/v1.37.2"
}

// Start builds the lab and runs the control plane and the nodes (NotReady
// until a CNI configuration is installed). Everything stops and is removed
// at the end of the test.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.BinDir == "" {
		opts.BinDir = BinDir()
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			t.Fatalf("%s missing in %s: run make k8s-bins first", b, opts.BinDir)
		}
	}
	env := lab.NewEnv(t, lab.Options{Hosts: opts.Nodes})
	c := &Cluster{Env: env, t: t, Bin: opts.BinDir, Dir: filepath.Join(env.Lab.Dir, "k8s"), tokens: map[string]string{}}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	apiIP := strings.TrimSuffix(strings.TrimPrefix(env.Lab.EtcdURL, "http://"), fmt.Sprintf(":%d", lab.EtcdPort))
	c.APIServer = fmt.Sprintf("https://%s:%d", apiIP, APIPort)
	var err error
	if c.pki, err = writePKI(c.Dir, net.ParseIP(apiIP), net.ParseIP("10.96.0.1")); err != nil {
		t.Fatal(err)
	}
	c.startControlPlane(apiIP)
	for _, h := range env.Lab.Hosts {
		c.Nodes = append(c.Nodes, c.startNode(h, opts))
	}
	c.Eventually(60*time.Second, func() error {
		if err := c.ControlPlaneRunning(); err != nil {
			return err
		}
		out, err := c.Kubectl("get", "nodes", "-o", "name")
		if err != nil {
			return err
		}
		if n := len(strings.Fields(out)); n != len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes registered", n, len(c.Nodes))
		}
		return nil
	})
	return c
}

// ControlPlaneRunning says whether a control plane process has exited.
func (c *Cluster) ControlPlaneRunning() error {
	for _, p := range c.control {
		if p.Exited() {
			return fmt.Errorf("%s exited:\n%s", filepath.Base(p.Args[0]), lab.Tail(p.Log, 20))
		}
	}
	return nil
}

// user adds an identity to the API server's token file and returns a
// kubeconfig for it.
func (c *Cluster) user(name, group string) string {
	tok := token()
	c.tokens[name] = tok
	f, err := os.OpenFile(filepath.Join(c.Dir, "tokens.csv"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	line := fmt.Sprintf("%s,%s,%s", tok, name, name)
	if group != "" {
		line += fmt.Sprintf(",%q", group)
	}
	if _, err := fmt.Fprintln(f, line); err != nil {
		c.t.Fatal(err)
	}
	path := filepath.Join(c.Dir, strings.ReplaceAll(name, ":", "-")+".kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig(c.APIServer, c.pki.CA, tok)), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return path
}

func (c *Cluster) startControlPlane(ip string) {
	t := c.t
	t.Helper()
	// Every identity the cluster uses, with the bootstrap RBAC roles a real
	// cluster's components have (the Node authorizer for kubelets): tabby's
	// own ClusterRoles are checked as in production, not behind AlwaysAllow.
	c.Kubeconfig = c.user("admin", "system:masters")
	cm := c.user("system:kube-controller-manager", "")
	sched := c.user("system:kube-scheduler", "")
	c.user("system:kube-proxy", "")
	for _, h := range c.Lab.Hosts {
		c.user("system:node:"+h.Name, "system:nodes")
	}
	ul := c.Lab.Underlay
	api := c.Lab.Start(ul, filepath.Join(c.Dir, "kube-apiserver.log"), filepath.Join(c.Bin, "kube-apiserver"),
		"--etcd-servers="+c.Lab.EtcdURL,
		"--etcd-prefix=/registry",
		"--bind-address="+ip, "--advertise-address="+ip, "--secure-port="+strconv.Itoa(APIPort),
		"--tls-cert-file="+c.pki.Server, "--tls-private-key-file="+c.pki.ServerKey,
		"--client-ca-file="+c.pki.CA,
		"--token-auth-file="+filepath.Join(c.Dir, "tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+c.pki.SAPub, "--service-account-signing-key-file="+c.pki.SAKey,
		"--service-cluster-ip-range="+ServiceCIDR,
		"--service-node-port-range=30000-32767",
		"--allow-privileged=true",
		// The lab has no DNS for node names: exec, logs and port-forward go
		// to the kubelet's InternalIP.
		"--kubelet-preferred-address-types=InternalIP",
		"--cert-dir="+filepath.Join(c.Dir, "apiserver-certs"),
		"--profiling=false", "--v=1")
	c.control = append(c.control, api)
	c.Eventually(60*time.Second, func() error {
		if api.Exited() {
			return fmt.Errorf("kube-apiserver exited:\n%s", lab.Tail(api.Log, 30))
		}
		_, err := c.Kubectl("get", "--raw", "/readyz")
		return err
	})
	c.control = append(c.control,
		c.Lab.Start(ul, filepath.Join(c.Dir, "kube-controller-manager.log"), filepath.Join(c.Bin, "kube-controller-manager"),
			"--kubeconfig="+cm, "--authentication-kubeconfig="+cm, "--authorization-kubeconfig="+cm,
			"--leader-elect=false", "--bind-address=127.0.0.1",
			"--service-account-private-key-file="+c.pki.SAKey, "--root-ca-file="+c.pki.CA,
			// Each controller under its own service account, with the bootstrap
			// roles made for them (as kubeadm runs it).
			"--use-service-account-credentials=true",
			"--service-cluster-ip-range="+ServiceCIDR,
			"--profiling=false", "--v=1"),
		c.Lab.Start(ul, filepath.Join(c.Dir, "kube-scheduler.log"), filepath.Join(c.Bin, "kube-scheduler"),
			"--kubeconfig="+sched, "--authentication-kubeconfig="+sched, "--authorization-kubeconfig="+sched,
			"--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false", "--v=1"))
}

func (c *Cluster) startNode(h *lab.Host, opts Options) *Node {
	t := c.t
	t.Helper()
	n := &Node{c: c, Host: h, Name: h.Name, Dir: filepath.Join(c.Dir, h.Name)}
	cc := lab.ContainerdIn(n.Dir) // its files in n.Dir: root, state, runc, opt, the socket
	n.Sock = cc.Socket
	for _, d := range []string{"root", "state", "runc", "opt", "logs", "apiserver"} {
		must(t, os.MkdirAll(filepath.Join(n.Dir, d), 0o755))
	}
	var binds [][2]string
	for _, p := range nodePaths {
		src := filepath.Join(n.Dir, p.name)
		must(t, os.MkdirAll(src, 0o755))
		lab.EnsureMountPoint(t, p.target)
		binds = append(binds, [2]string{src, p.target})
	}
	// A node comes with the standard plugins (loopback is the one CRI
	// itself needs); tabby's install-cni adds its own and portmap.
	for _, p := range []string{"loopback", "host-local", "ptp", "portmap"} {
		must(t, copyFile(filepath.Join("/usr/lib/cni", p), filepath.Join(n.Dir, "cni-bin", p), 0o755))
	}
	cc.SandboxImage = opts.SandboxImage
	// The node's own, bound over these paths in its mount namespace.
	cc.CNIBinDir, cc.CNIConfDir = "/opt/cni/bin", "/etc/cni/net.d"
	cfgPath := filepath.Join(n.Dir, "containerd.toml")
	must(t, cc.Write(cfgPath))
	n.containerdArgv = lab.InMounts(h, binds, "containerd", "--config", cfgPath)
	n.startContainerd()
	// Cleanups run last-registered first: the node's processes and their
	// cgroups go before the lab (and its etcd) does.
	t.Cleanup(n.stop)
	for _, img := range opts.Images {
		if out, err := n.Ctr("images", "import", img); err != nil {
			t.Fatalf("import %s on %s: %v\n%s", img, h.Name, err, out)
		}
	}

	// cgroup v1 here: the kubelet's cgroupRoot must exist in every
	// hierarchy, with cpuset's cpus and mems filled in (an empty cpuset
	// refuses tasks).
	n.cgroupRoot = "/" + c.Lab.ID + "-" + h.Name
	for _, hier := range cgroupHierarchies() {
		d := filepath.Join(hier, n.cgroupRoot)
		must(t, os.MkdirAll(d, 0o755))
		if filepath.Base(hier) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(hier, f))
				must(t, err)
				must(t, os.WriteFile(filepath.Join(d, f), b, 0o644))
			}
		}
	}
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
failSwapOn: false
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
resolvConf: ""
clusterDNS: [%s]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://%s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
maxPods: 250
`, n.cgroupRoot, h.IP, KubeDNSIP, n.Sock)
	kcfgPath := filepath.Join(n.Dir, "kubelet.yaml")
	must(t, os.WriteFile(kcfgPath, []byte(kcfg), 0o644))
	n.kubeletArgv = []string{
		filepath.Join(c.Bin, "kubelet"), "--config=" + kcfgPath,
		"--kubeconfig=" + filepath.Join(c.Dir, "system-node-"+h.Name+".kubeconfig"),
		"--hostname-override=" + h.Name, "--node-ip=" + h.IP,
		"--root-dir=/var/lib/kubelet", "--v=1"}
	n.StartKubelet()
	n.StartProxy()
	return n
}

func (n *Node) startContainerd() {
	n.Containerd = n.c.Lab.StartEntering(filepath.Join(n.Dir, "logs", "containerd.log"), n.containerdArgv...)
	n.c.Eventually(20*time.Second, func() error {
		if n.Containerd.Exited() {
			return fmt.Errorf("containerd on %s exited:\n%s", n.Name, lab.Tail(n.Containerd.Log, 30))
		}
		_, err := n.Ctr("version")
		return err
	})
}

// Reboot is a node's power cycle as its pods see it: kubelet, kube-proxy,
// containerd and every container die at once (SIGKILL), the node's
// mount namespace and with it every pod network namespace is gone, and
// what lives in /run (containerd's and tabby's runtime state, the netns
// mount points) is empty again; /var/lib (kubelet, containerd's root) and
// etcd keep what they had. Then containerd, the kubelet and kube-proxy
// start again and the kubelet brings the node's pods back.
func (n *Node) Reboot() {
	c := n.c
	c.t.Helper()
	for _, p := range []*lab.Proc{n.Kubelet, n.Proxy} {
		_ = p.Kill(syscall.SIGKILL)
	}
	lab.KillShims(n.Sock)
	_ = n.Containerd.Kill(syscall.SIGKILL)
	for _, p := range []*lab.Proc{n.Kubelet, n.Proxy, n.Containerd} {
		_ = p.WaitTimeout(10 * time.Second)
	}
	lab.KillShims(n.Sock)
	// The pod namespaces were mounted only in the node's mount namespace,
	// now gone; their veths went with them. A host's own interfaces and
	// routes stay (a reboot of a real host loses those too, and tabby-node
	// puts its own back; the lab host's uplink is the machine's NIC).
	for _, d := range []string{"run-containerd", "netns", "run-tabby", "state"} {
		dir := filepath.Join(n.Dir, d)
		must(c.t, os.RemoveAll(dir))
		must(c.t, os.MkdirAll(dir, 0o755))
	}
	n.startContainerd()
	n.StartKubelet()
	n.StartProxy()
}

// StartProxy runs kube-proxy on the node (iptables mode), as a process of
// the node like its kubelet.
func (n *Node) StartProxy() {
	c := n.c
	n.Proxy = c.Lab.StartEntering(filepath.Join(n.Dir, "logs", "kube-proxy.log"), lab.JoinMounts(n.Containerd.PID,
		filepath.Join(c.Bin, "kube-proxy"),
		"--kubeconfig="+filepath.Join(c.Dir, "system-kube-proxy.kubeconfig"),
		"--hostname-override="+n.Name, "--proxy-mode=iptables",
		"--cluster-cidr="+PodCIDR,
		// nf_conntrack_max and the TCP timeouts are not per namespace:
		// leave the machine's alone.
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256",
		"--v=1")...)
}

// Ctr runs ctr against the node's containerd (namespace k8s.io).
func (n *Node) Ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return run(ctx, nil, append([]string{"ctr", "--address", n.Sock, "-n", "k8s.io"}, args...)...)
}

// InNode runs argv in the node's network and mount namespaces (what a shell
// on that machine would see).
func (n *Node) InNode(ctx context.Context, argv ...string) (string, error) {
	return run(ctx, nil, lab.JoinMounts(n.Containerd.PID, argv...)...)
}

// WriteCNIConfig puts a CNI configuration on the node as an admin would.
func (n *Node) WriteCNIConfig(name string, body []byte) error {
	dir := filepath.Join(n.Dir, "cni-net")
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, body, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// CNIDir is the node's /etc/cni/net.d as the test sees it.
func (n *Node) CNIDir() string { return filepath.Join(n.Dir, "cni-net") }

// TabbyStateDir is the node's /var/run/tabby as the test sees it.
func (n *Node) TabbyStateDir() string { return filepath.Join(n.Dir, "run-tabby") }

// StopKubelet stops the kubelet (its pods keep running, as on a real node).
func (n *Node) StopKubelet() {
	if n.Kubelet != nil {
		_ = n.Kubelet.Stop(10 * time.Second)
	}
}

// StartKubelet starts the node's kubelet (again).
func (n *Node) StartKubelet() {
	n.Kubelet = n.c.Lab.StartEntering(filepath.Join(n.Dir, "logs", "kubelet.log"), lab.JoinMounts(n.Containerd.PID, n.kubeletArgv...)...)
}

// stop ends the node: kubelet and kube-proxy, every container (their shims
// carry the node's socket on the command line), containerd, then the
// cgroups the kubelet made.
func (n *Node) stop() {
	for _, p := range []*lab.Proc{n.Kubelet, n.Proxy} {
		if p != nil {
			_ = p.Stop(5 * time.Second)
		}
	}
	lab.KillShims(n.Sock)
	if n.Containerd != nil {
		_ = n.Containerd.Stop(5 * time.Second)
	}
	lab.KillShims(n.Sock)
	if n.cgroupRoot == "" {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, hier := range cgroupHierarchies() {
		for {
			err := removeTree(filepath.Join(hier, n.cgroupRoot))
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					fmt.Fprintf(os.Stderr, "cluster: cgroup %s left: %v\n", filepath.Join(hier, n.cgroupRoot), err)
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// Kubectl runs the admin's kubectl in the underlay namespace (the test
// process's own namespace has no route to the cluster).
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return c.KubectlIn(nil, args...)
}

// KubectlIn is Kubectl with stdin.
func (c *Cluster) KubectlIn(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append([]string{"ip", "netns", "exec", c.Lab.Underlay, filepath.Join(c.Bin, "kubectl"), "--kubeconfig", c.Kubeconfig}, args...)
	return run(ctx, stdin, argv...)
}

// MustKubectl is Kubectl that fails the test on error.
func (c *Cluster) MustKubectl(args ...string) string {
	c.t.Helper()
	out, err := c.Kubectl(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// Apply is kubectl apply -f - of manifest.
func (c *Cluster) Apply(manifest []byte) {
	c.t.Helper()
	if out, err := c.KubectlIn(manifest, "apply", "-f", "-"); err != nil {
		c.t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// NodesReady lists the nodes whose Ready condition is True.
func (c *Cluster) NodesReady() ([]string, error) {
	out, err := c.Kubectl("get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	var ready []string
	for _, l := range strings.Fields(out) {
		if name, ok := strings.CutSuffix(l, "=True"); ok {
			ready = append(ready, name)
		}
	}
	sort.Strings(ready)
	return ready, nil
}

// Dump logs the cluster's state and the ends of its logs (for a failed
// test).
func (c *Cluster) Dump() {
	out, _ := c.Kubectl("get", "nodes,pods", "-A", "-o", "wide")
	c.t.Logf("cluster state:\n%s", out)
	ev, _ := c.Kubectl("get", "events", "-A", "--sort-by=.lastTimestamp")
	c.t.Logf("events:\n%s", tailLines(ev, 40))
	for _, p := range c.control {
		c.t.Logf("%s:\n%s", filepath.Base(p.Log), lab.Tail(p.Log, 15))
	}
	// The network's own pods (tabby-node, tabby-kube-controllers): when
	// traffic was lost, their BGP and policy lines say where.
	logs, _ := c.Kubectl("logs", "-n", "kube-system", "-l", "app.kubernetes.io/name=tabby", "--all-containers", "--prefix", "--tail=60", "--max-log-requests=10")
	c.t.Logf("tabby pods' logs:\n%s", logs)
	for _, n := range c.Nodes {
		for _, p := range []*lab.Proc{n.Containerd, n.Kubelet, n.Proxy} {
			if p != nil {
				c.t.Logf("%s %s:\n%s", n.Name, filepath.Base(p.Log), lab.Tail(p.Log, 15))
			}
		}
	}
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// cgroupHierarchies lists the machine's cgroup v1 hierarchies.
func cgroupHierarchies() []string {
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range ents {
		p := filepath.Join("/sys/fs/cgroup", e.Name())
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil && e.Name() != "unified" {
			out = append(out, p)
		}
	}
	return out
}

// removeTree removes a cgroup directory tree, deepest first (cgroupfs
// refuses to remove a directory with children, and files cannot be
// removed).
func removeTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return syscall.Rmdir(dir)
}

func run(ctx context.Context, stdin []byte, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(slices.Clip(argv[min(len(argv), 4):]), " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// UseReferenceCNI installs Debian's ptp + host-local on every node, the
// reference tabby is measured against: node i gets 10.245.i.0/24, and each
// host routes the other nodes' subnets to them over the underlay (what a
// cloud's route table or kube-controller-manager's route controller would
// do). The nodes turn Ready once the conflist is there.
func (c *Cluster) UseReferenceCNI() {
	c.t.Helper()
	for i, n := range c.Nodes {
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"ref","plugins":[
  {"type":"ptp","ipMasq":false,"mtu":1500,
   "ipam":{"type":"host-local","ranges":[[{"subnet":"%s.%d.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/var/lib/kubelet/host-local"}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}`, RefPodPrefix, i+1)
		must(c.t, n.WriteCNIConfig("10-ref.conflist", []byte(conf)))
		for j, m := range c.Nodes {
			if j != i {
				c.Lab.MustExec(n.Host.NS, "ip", "route", "replace", fmt.Sprintf("%s.%d.0/24", RefPodPrefix, j+1), "via", m.Host.IP)
			}
		}
		c.Lab.MustExec(n.Host.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
}
