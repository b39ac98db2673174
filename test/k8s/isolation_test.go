package k8s

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// nsServer is a namespace with one agnhost netexec pod.
func nsServer(ns, node string, annotations string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Namespace
metadata:
  name: %s
  annotations: {%s}
---
apiVersion: v1
kind: Pod
metadata: {name: srv, namespace: %s, labels: {app: srv}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - name: netexec
    image: %s
    imagePullPolicy: Never
    args: ["netexec", "--http-port=8080", "--udp-port=8081"]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
`, ns, annotations, ns, node, AgnhostImage)
}

// TestNamespaceIsolation: the seed's isolation for pods, chosen by
// namespace annotations through tabby-kube-controllers: pods of an
// isolated namespace reach each other across nodes but nothing else
// reaches them, a namespace it allows gets in, and taking the annotation
// off opens it again, on running pods.
func TestNamespaceIsolation(t *testing.T) {
	e := newEnv(t, 3)
	n := e.Nodes
	e.Apply(nsServer("tenant-a", n[0].Name, `tabby.io/isolation: namespace`))
	e.Apply([]byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: peer, namespace: tenant-a}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: netexec, image: %s, imagePullPolicy: Never, args: ["netexec", "--http-port=8080"]}
`, n[1].Name, AgnhostImage)))
	e.Apply(nsServer("tenant-b", n[2].Name, ""))
	e.Apply(nsServer("tenant-c", n[1].Name, ""))
	srvA := e.waitPods("tenant-a", "app=srv", 1, 2*time.Minute)[0]
	srvB := e.waitPods("tenant-b", "app=srv", 1, 2*time.Minute)[0]
	srvC := e.waitPods("tenant-c", "app=srv", 1, 2*time.Minute)[0]
	var peer pod
	e.Eventually(time.Minute, func() error {
		ps, err := e.pods("tenant-a", "!app")
		if err == nil && len(ps) != 1 {
			err = fmt.Errorf("peer not running: %v", ps)
		}
		if err == nil {
			peer = ps[0]
		}
		return err
	})
	expect := func(what string, from, to pod, want bool) {
		t.Helper()
		e.expectReach(what, from, to, want)
	}
	expect("same isolated namespace, across nodes", peer, srvA, true)
	expect("other namespace into an isolated one", srvB, srvA, false)
	expect("isolated namespace out to another", srvA, srvB, true)
	expect("two open namespaces", srvB, srvC, true)

	e.MustKubectl("annotate", "namespace", "tenant-a", "tabby.io/allow-from-namespaces=tenant-b")
	expect("allowed namespace", srvB, srvA, true)
	expect("still not allowed", srvC, srvA, false)

	e.MustKubectl("annotate", "namespace", "tenant-a", "tabby.io/isolation-", "tabby.io/allow-from-namespaces-")
	expect("annotation removed", srvC, srvA, true)

	// A pod's own profiles (annotation tabby.io/profiles, read at its ADD)
	// come before its namespace's: a quarantine profile that denies all
	// inbound closes that pod in an open namespace, and only that pod.
	e.MustCtl(e.Lab.Hosts[0], "profile", "add", "quarantine")
	e.MustCtl(e.Lab.Hosts[0], "profile", "quarantine", "rule", "add", "inbound", "--at", "1", "deny")
	e.Apply([]byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: quarantined, namespace: tenant-c, labels: {app: q}, annotations: {tabby.io/profiles: quarantine}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: netexec, image: %s, imagePullPolicy: Never, args: ["netexec", "--http-port=8080"]}
`, n[2].Name, AgnhostImage)))
	q := e.waitPods("tenant-c", "app=q", 1, 2*time.Minute)[0]
	expect("quarantined pod", srvB, q, false)
	expect("quarantined pod's neighbour", srvB, srvC, true)
	expect("quarantined pod sends", q, srvB, true)

	e.deletedNodeRetired()
}

// deletedNodeRetired: every tabby-node of the DaemonSet records the Node
// it is, and tabby-kube-controllers (its RBAC, informer and etcd role as
// deployed) removes the tabby host of a Node that is deleted: a Node
// object with no machine behind it, whose host holds a tunnel address.
func (e *env) deletedNodeRetired() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, n := range e.Nodes {
		var h model.Host
		if _, err := store.GetJSON(ctx, e.KV, model.NodeKey(n.Name), &h); err != nil || h.K8sNode != n.Name {
			e.t.Fatalf("host record of Node %s: k8sNode %q (%v), want the Node's name", n.Name, h.K8sNode, err)
		}
	}
	e.Apply([]byte("apiVersion: v1\nkind: Node\nmetadata: {name: ghost}\n"))
	if err := store.PutJSON(ctx, e.KV, model.NodeKey("ghost"), model.Host{Name: "ghost", IPv4: "198.19.0.200/24", K8sNode: "ghost"}); err != nil {
		e.t.Fatal(err)
	}
	if _, _, err := (&ipam.IPAM{KV: e.KV, Host: "ghost"}).Assign(ctx, ipam.Request{Network: "tabby-tunnel", ContainerID: "vxlan-ghost", IPv4: true}); err != nil {
		e.t.Fatal(err)
	}
	e.MustKubectl("delete", "node", "ghost", "--wait=false")
	start := time.Now()
	e.Eventually(30*time.Second, func() error {
		for _, p := range []string{model.NodeKey("ghost"), model.AffinityHostPrefix("ghost"), model.HandleKey("tabby-tunnel", "vxlan-ghost")} {
			if kvs, _, err := e.KV.List(ctx, p, true); err != nil || len(kvs) != 0 {
				return fmt.Errorf("deleted Node ghost: %d keys under %s (%v)", len(kvs), p, err)
			}
		}
		return nil
	})
	e.t.Logf("deleted Node's host removed from etcd %v after kubectl delete node", time.Since(start).Round(time.Millisecond))
}

// expectReach waits until from reaches to's port 8080 (TCP) or not, as
// want says. Profile and policy changes propagate through etcd to every
// node: wait for the expected state (15 s at most), then it holds.
func (e *env) expectReach(what string, from, to pod, want bool) {
	e.t.Helper()
	e.Eventually(15*time.Second, func() error {
		_, err := e.exec(from, "/agnhost", "connect", to.IP+":8080", "--timeout=2s")
		if (err == nil) != want {
			return fmt.Errorf("%s: %s/%s -> %s/%s reachable=%v, want %v", what, from.Namespace, from.Name, to.Namespace, to.Name, err == nil, want)
		}
		return nil
	})
}
