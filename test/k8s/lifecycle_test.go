package k8s

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/k8s/cluster"
)

// endpointsOf lists tabby's endpoint records named prefix...: name -> "IP
// on host".
func (e *env) endpointsOf(prefix string) (map[string]string, error) {
	out, err := e.Ctl(e.Lab.Hosts[0], "container", "show")
	if err != nil {
		return nil, err
	}
	eps := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && strings.HasPrefix(f[0], prefix) {
			if _, dup := eps[f[0]]; dup {
				return nil, fmt.Errorf("two endpoints named %s:\n%s", f[0], out)
			}
			eps[f[0]] = strings.TrimSuffix(f[2], "/32") + " on " + f[1]
		}
	}
	return eps, nil
}

// consistent checks that tabby's endpoints are exactly the pods, with the
// pods' addresses, and that IPAM has nothing leaked.
func (e *env) consistent(ps []pod) error {
	eps, err := e.endpointsOf("default/web-")
	if err != nil {
		return err
	}
	if len(eps) != len(ps) {
		return fmt.Errorf("%d endpoints for %d pods: %v", len(eps), len(ps), eps)
	}
	for _, p := range ps {
		if ep := eps["default/"+p.Name]; ep != p.IP+" on "+p.Node {
			return fmt.Errorf("pod %s has %s on %s, its endpoint %q", p.Name, p.IP, p.Node, ep)
		}
	}
	if out, err := e.Ctl(e.Lab.Hosts[0], "ipam", "check"); err != nil {
		return fmt.Errorf("ipam check: %v\n%s", err, out)
	}
	return nil
}

// TestKubeletRestartAndNodeReboot: a kubelet restart changes nothing; a
// node's reboot (every process and pod namespace gone at once, /run
// emptied) ends with the node's pods back under new sandboxes, each with
// one clean endpoint under its own name, nothing leaked, and traffic
// across nodes.
func TestKubeletRestartAndNodeReboot(t *testing.T) {
	e := newEnv(t, 3)
	e.Apply(webManifest(9))
	ps := e.waitPods("default", "app=web", 9, 2*time.Minute)
	e.Eventually(30*time.Second, func() error { return e.consistent(ps) })

	n2 := e.Nodes[1]
	n2.StopKubelet()
	n2.StartKubelet()
	e.Eventually(time.Minute, func() error {
		r, err := e.NodesReady()
		if err == nil && len(r) != len(e.Nodes) {
			err = fmt.Errorf("ready: %v", r)
		}
		return err
	})
	after := e.waitPods("default", "app=web", 9, time.Minute)
	for i := range ps {
		if ps[i] != after[i] {
			t.Errorf("kubelet restart changed pod %+v into %+v", ps[i], after[i])
		}
	}
	if err := e.consistent(after); err != nil {
		t.Error(err)
	}

	n3 := e.Nodes[2]
	before, err := e.sandboxes(n3.Name)
	if err != nil || len(before) == 0 {
		t.Fatalf("sandboxes on %s: %v %v", n3.Name, before, err)
	}
	n3.Reboot()
	// The pods come back under their names with new sandboxes (their
	// endpoints' container IDs change; their addresses may not, as the
	// old ones are released first); the old sandboxes' endpoints and
	// addresses go.
	e.Eventually(3*time.Minute, func() error {
		now, err := e.sandboxes(n3.Name)
		if err != nil {
			return err
		}
		for name, id := range before {
			if now[name] == id || now[name] == "" {
				return fmt.Errorf("%s: sandbox %q after reboot, %q before", name, now[name], id)
			}
		}
		ps, err := e.pods("default", "app=web")
		if err != nil {
			return err
		}
		if len(ps) != 9 {
			return fmt.Errorf("%d pods running", len(ps))
		}
		return e.consistent(ps)
	})
	ps = e.waitPods("default", "app=web", 9, time.Minute)
	byNode := map[string]pod{}
	for _, p := range ps {
		byNode[p.Node] = p
	}
	for _, from := range ps {
		if from.Node != n3.Name {
			continue
		}
		for node, to := range byNode {
			if node == n3.Name {
				continue
			}
			if out, err := e.exec(from, "/agnhost", "connect", to.IP+":8080", "--timeout=3s"); err != nil {
				t.Errorf("after reboot, %s (%s) -> %s (%s): %v %s", from.Name, from.Node, to.Name, to.Node, err, out)
			}
		}
		break
	}
}

// sandboxes maps the web pods' endpoints on node to their container
// (sandbox) IDs.
func (e *env) sandboxes(node string) (map[string]string, error) {
	out, err := e.Ctl(e.Lab.Hosts[0], "-o", "json", "container", "show", "--host", node)
	if err != nil {
		return nil, err
	}
	var eps []struct {
		Workload    string `json:"workload"`
		ContainerID string `json:"containerID"`
	}
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		return nil, fmt.Errorf("container show: %w", err)
	}
	m := map[string]string{}
	for _, ep := range eps {
		if strings.HasPrefix(ep.Workload, "default.web-") {
			m[ep.Workload] = ep.ContainerID
		}
	}
	return m, nil
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pinger pings dst every 10 ms from inside pod src's network namespace
// (iputils ping, run through the node's mount namespace where CRI mounted
// the pod's namespace).
type pinger struct {
	src, dst pod
	cmd      *exec.Cmd
	out      strings.Builder
}

func (e *env) startPing(src, dst pod) *pinger {
	e.t.Helper()
	out, err := e.Ctl(e.Lab.Hosts[0], "-o", "json", "container", "show")
	if err != nil {
		e.t.Fatal(err)
	}
	netns := regexp.MustCompile(`"workload":\s*"default\.` + regexp.QuoteMeta(src.Name) + `"[^}]*?"netns":\s*"([^"]+)"`).FindStringSubmatch(out)
	if netns == nil {
		e.t.Fatalf("no netns for %s in\n%s", src.Name, out)
	}
	var n *cluster.Node
	for _, x := range e.Nodes {
		if x.Name == src.Node {
			n = x
		}
	}
	p := &pinger{src: src, dst: dst}
	// The pod's namespace is mounted in the node's mount namespace only.
	p.cmd = exec.Command("nsenter", "-t", strconv.Itoa(n.Containerd.PID), "--mount",
		"ip", "netns", "exec", filepath.Base(netns[1]), "ping", "-n", "-q", "-i", "0.01", "-W", "1", dst.IP)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// stop ends the ping and returns sent and received.
func (p *pinger) stop() (int, int, error) {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	m := pingSummary.FindStringSubmatch(p.out.String())
	if m == nil {
		return 0, 0, fmt.Errorf("ping %s -> %s: no summary in %q", p.src.Name, p.dst.Name, p.out.String())
	}
	s, _ := strconv.Atoi(m[1])
	r, _ := strconv.Atoi(m[2])
	return s, r, nil
}

// TestTabbyNodeRestartsLoseNothing: pods on every node ping pods on the
// next node every 10 ms while `kubectl rollout restart daemonset/tabby-node`
// replaces tabby-node on every node, then while one tabby-node pod is
// deleted: not one packet is lost.
func TestTabbyNodeRestartsLoseNothing(t *testing.T) {
	e := newEnv(t, 3)
	e.Apply(webManifest(3))
	ps := e.waitPods("default", "app=web", 3, 2*time.Minute)
	byNode := map[string]pod{}
	for _, p := range ps {
		byNode[p.Node] = p
	}
	if len(byNode) != 3 {
		t.Fatalf("pods not spread: %v", ps)
	}
	round := func(what string, disrupt func()) {
		var pings []*pinger
		for i, n := range e.Nodes {
			pings = append(pings, e.startPing(byNode[n.Name], byNode[e.Nodes[(i+1)%len(e.Nodes)].Name]))
		}
		time.Sleep(time.Second) // traffic flowing before the disruption
		disrupt()
		time.Sleep(2 * time.Second) // and after it
		for _, p := range pings {
			s, r, err := p.stop()
			t.Logf("%s: %s (%s) -> %s (%s): %d sent, %d received", what, p.src.Name, p.src.Node, p.dst.Name, p.dst.Node, s, r)
			if err != nil || s < 100 || r != s {
				t.Errorf("%s: %s -> %s lost %d of %d packets (%v)", what, p.src.Node, p.dst.Node, s-r, s, err)
			}
		}
	}
	round("rollout restart", func() {
		e.MustKubectl("-n", "kube-system", "rollout", "restart", "daemonset/tabby-node")
		if out, err := e.Kubectl("-n", "kube-system", "rollout", "status", "daemonset/tabby-node", "--timeout=3m"); err != nil {
			t.Fatalf("rollout: %v\n%s", err, out)
		}
	})
	round("pod delete", func() {
		name := strings.TrimSpace(e.MustKubectl("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/component=node",
			"--field-selector=spec.nodeName="+e.Nodes[1].Name, "-o", "jsonpath={.items[0].metadata.name}"))
		e.MustKubectl("-n", "kube-system", "delete", "pod", name, "--wait=true")
		e.waitTabby()
	})
}
