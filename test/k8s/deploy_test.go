package k8s

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/k8s/cluster"
)

// webManifest is a Deployment of agnhost netexec (HTTP on 8080, UDP echo
// on 8081) spread over the nodes, a ClusterIP Service for it (TCP 80 and a
// DNS-style UDP 53) and a NodePort Service.
func webManifest(replicas int) []byte {
	return fmt.Appendf(nil, `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: %d
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: netexec
        image: %s
        imagePullPolicy: Never
        args: ["netexec", "--http-port=8080", "--udp-port=8081"]
        ports: [{containerPort: 8080}, {containerPort: 8081, protocol: UDP}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, targetPort: 8081, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
`, replicas, AgnhostImage)
}

// waitPods waits until n pods of selector are Running and Ready.
func (e *env) waitPods(ns, selector string, n int, d time.Duration) []pod {
	e.t.Helper()
	var ps []pod
	e.Eventually(d, func() error {
		out, err := e.Kubectl("-n", ns, "get", "pods", "-l", selector,
			"-o", `jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return err
		}
		if r := strings.Count(out, "True"); r != n || len(strings.Fields(out)) != n {
			return fmt.Errorf("%d of %d pods ready (%d listed)", r, n, len(strings.Fields(out)))
		}
		ps, err = e.pods(ns, selector)
		return err
	})
	return ps
}

// TestDeploymentAcrossNodes: a 30-pod Deployment through kubelet, CRI and
// tabby; pod to pod across nodes (ICMP and TCP), ClusterIP with backends on
// other nodes (TCP and UDP), NodePort from another host; then scale down:
// every released address is back, ipam check is clean.
func TestDeploymentAcrossNodes(t *testing.T) {
	e := newEnv(t, 3)
	e.Apply(webManifest(30))
	ps := e.waitPods("default", "app=web", 30, 3*time.Minute)

	seen := map[string]string{}
	perNode := map[string][]pod{}
	for _, p := range ps {
		if !inPool(p.IP) {
			t.Errorf("pod %s has %s, not from tabby's pool %s", p.Name, p.IP, cluster.PodCIDR)
		}
		if other, dup := seen[p.IP]; dup {
			t.Errorf("pods %s and %s share %s", p.Name, other, p.IP)
		}
		seen[p.IP] = p.Name
		perNode[p.Node] = append(perNode[p.Node], p)
	}
	if len(perNode) != len(e.Nodes) {
		t.Fatalf("pods on %d nodes, want all %d", len(perNode), len(e.Nodes))
	}
	// The endpoints in etcd are the pods, by Kubernetes' names.
	out := e.MustCtl(e.Lab.Hosts[0], "container", "show")
	for _, p := range ps {
		if !strings.Contains(out, "default/"+p.Name) {
			t.Errorf("tabbyctl container show lacks default/%s:\n%s", p.Name, out)
			break
		}
	}

	// Pod to pod, every ordered pair of nodes: ICMP and TCP.
	for _, a := range e.Nodes {
		for _, b := range e.Nodes {
			if a == b {
				continue
			}
			src, dst := perNode[a.Name][0], perNode[b.Name][0]
			if out, err := e.exec(src, "ping", "-c1", "-W2", dst.IP); err != nil {
				t.Errorf("ping %s (%s) -> %s (%s): %v\n%s", src.Name, a.Name, dst.Name, b.Name, err, out)
			}
			if out, err := e.exec(src, "/agnhost", "connect", dst.IP+":8080", "--timeout=3s"); err != nil {
				t.Errorf("tcp %s (%s) -> %s:8080 (%s): %v\n%s", src.Name, a.Name, dst.IP, b.Name, err, out)
			}
		}
	}

	svcIP := strings.TrimSpace(e.MustKubectl("-n", "default", "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"))
	client := perNode[e.Nodes[0].Name][0]
	nodeOf := map[string]string{}
	for _, p := range ps {
		nodeOf[p.Name] = p.Node
	}
	// ClusterIP: keep asking until answers came from pods on every node
	// (kube-proxy picks backends at random), TCP (HTTP) and UDP. The client
	// pod dials through netexec's /dial, as the upstream suite's probes do.
	for _, proto := range []string{"http", "udp"} {
		port := 80
		if proto == "udp" {
			port = 53
		}
		reached := map[string]bool{}
		for i := 0; i < 60 && len(reached) < len(e.Nodes); i++ {
			names, err := e.dial(client, proto, svcIP, port)
			if err != nil || len(names) != 1 {
				t.Errorf("%s to ClusterIP %s:%d from %s: %v %v", proto, svcIP, port, client.Name, names, err)
				break
			}
			if n := nodeOf[names[0]]; n != "" {
				reached[n] = true
			} else {
				t.Errorf("%s to ClusterIP %s answered %q, not a backend's name", proto, svcIP, names[0])
				break
			}
		}
		if len(reached) != len(e.Nodes) {
			t.Errorf("%s ClusterIP %s from %s reached backends on %v only", proto, svcIP, client.Node, reached)
		}
	}

	// NodePort, from another host's own namespace (not a pod).
	from, to := e.Nodes[2].Host, e.Nodes[0].Host
	if out, err := e.httpGet(from.NS, fmt.Sprintf("http://%s:30080/hostname", to.IP)); err != nil || nodeOf[strings.TrimSpace(out)] == "" {
		t.Errorf("NodePort %s:30080 from %s: %q %v", to.IP, from.Name, out, err)
	}

	// Both orders of start-up: kube-proxy restarted after tabby-node (it
	// started first above), then tabby-node restarted after kube-proxy;
	// each time both keep their chains and Services still work.
	n1 := e.Nodes[0]
	_ = n1.Proxy.Stop(10 * time.Second)
	n1.StartProxy()
	e.checkChains(n1)
	e.Eventually(time.Minute, func() error {
		_, err := e.dial(client, "http", svcIP, 80)
		return err
	})
	name := strings.TrimSpace(e.MustKubectl("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/component=node",
		"--field-selector=spec.nodeName="+n1.Name, "-o", "jsonpath={.items[0].metadata.name}"))
	e.MustKubectl("-n", "kube-system", "delete", "pod", name, "--wait=true")
	e.waitTabby()
	e.checkChains(n1)
	if _, err := e.dial(client, "http", svcIP, 80); err != nil {
		t.Errorf("ClusterIP after tabby-node restarted on %s: %v", n1.Name, err)
	}

	// Scale down: the kubelets run CNI DEL, tabby releases.
	e.MustKubectl("-n", "default", "scale", "deployment", "web", "--replicas=3")
	e.waitPods("default", "app=web", 3, 2*time.Minute)
	e.Eventually(time.Minute, func() error {
		out, err := e.Ctl(e.Lab.Hosts[0], "container", "show")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "default/web-"); n != 3 {
			return fmt.Errorf("%d endpoints of web left, want 3:\n%s", n, out)
		}
		return nil
	})
	if out, err := e.Ctl(e.Lab.Hosts[0], "ipam", "check"); err != nil {
		t.Errorf("ipam check after scale down: %v\n%s", err, out)
	}
}

// checkChains waits until node n's filter and nat tables hold both
// kube-proxy's and tabby's chains, hooked where each puts them.
func (e *env) checkChains(n *cluster.Node) {
	e.t.Helper()
	e.Eventually(time.Minute, func() error {
		var missing []string
		for _, c := range []struct{ table, want string }{
			{"filter", "-A FORWARD -j TABBY-FORWARD"},
			{"filter", "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"},
			{"nat", "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"},
			{"nat", "-N TABBY-POSTROUTING"},
		} {
			out, err := e.Lab.Exec(n.Host.NS, "iptables", "-t", c.table, "-S")
			if err != nil {
				return err
			}
			if !strings.Contains(out, c.want) {
				missing = append(missing, c.table+": "+c.want)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%s lacks %v", n.Name, missing)
		}
		return nil
	})
}
