package k8s

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// netpolSuite is Kubernetes' own NetworkPolicy suite
// (test/e2e/network/netpol): namespaces x, y and z with pods a, b and c
// serving TCP and UDP on 80 and 81, the whole reachability matrix probed
// for every policy, run by TestUpstreamNetworking. SCTPConnectivity is skipped (no SCTP in this kernel);
// the two cases that check that SCTP rules do not open TCP still run.
var netpolSuite = suite{name: "Netpol", focus: `Netpol`, skip: `SCTPConnectivity`, want: 48, timeout: 60 * time.Minute, procs: 3}

// TestNetworkPolicyTabbyCases are tabby's own cases next to the upstream
// suite: a pod that a policy isolates has no window between its ADD and its
// rules, and profiles and NetworkPolicies on one pod compose as the README
// says (both must allow).
func TestNetworkPolicyTabbyCases(t *testing.T) {
	e := newEnv(t, 3)
	n := e.Nodes
	e.Apply(nsServer("np-a", n[0].Name, ""))
	e.Apply(nsServer("np-b", n[1].Name, ""))
	srvA := e.waitPods("np-a", "app=srv", 1, 2*time.Minute)[0]
	srvB := e.waitPods("np-b", "app=srv", 1, 2*time.Minute)[0]

	// 1. No window: a pod selected by a deny-all-egress policy tries to
	// reach a server as the very first thing its first container does,
	// right after its sandbox's ADD returned. If its rules came later,
	// that first try would get through.
	e.Apply([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: np-b}
spec:
  podSelector: {matchLabels: {role: locked}}
  policyTypes: [Egress]
`))
	for i, node := range n {
		name := fmt.Sprintf("locked-%d", i)
		e.Apply(firstTryPod(name, "locked", node.Name, srvA.IP))
		var logs string
		e.Eventually(2*time.Minute, func() error {
			out, err := e.Kubectl("-n", "np-b", "logs", name)
			if err != nil || !strings.Contains(out, "FIRST-TRY") {
				return fmt.Errorf("%s has not tried yet: %v %s", name, err, out)
			}
			logs = out
			return nil
		})
		if !strings.Contains(logs, "FIRST-TRY-BLOCKED") {
			t.Fatalf("%s on %s reached %s before its policy was in force:\n%s", name, node.Name, srvA.IP, logs)
		}
	}
	// The same pod without the label goes through: the block above was the
	// policy, not the network.
	e.Apply(firstTryPod("free", "free", n[2].Name, srvA.IP))
	e.Eventually(2*time.Minute, func() error {
		out, err := e.Kubectl("-n", "np-b", "logs", "free")
		if err != nil || !strings.Contains(out, "FIRST-TRY-REACHED") {
			return fmt.Errorf("unlabelled pod: %v %s", err, out)
		}
		return nil
	})

	// 2. Composition: a policy cannot widen what the namespace's profile
	// allows. np-a isolated by annotation (its profile admits only np-a);
	// a NetworkPolicy in np-a admitting np-b does not let np-b in...
	expect := func(what string, from, to pod, want bool) {
		t.Helper()
		e.expectReach(what, from, to, want)
	}
	expect("open namespaces, no policy", srvB, srvA, true)
	e.MustKubectl("annotate", "namespace", "np-a", "tabby.io/isolation=namespace")
	e.Apply([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: np-a}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: np-b}}}]
`))
	expect("profile isolates, policy admits: profile wins", srvB, srvA, false)
	// ... until the profile admits np-b too; then the policy decides.
	e.MustKubectl("annotate", "namespace", "np-a", "tabby.io/allow-from-namespaces=np-b")
	expect("profile and policy both admit", srvB, srvA, true)
	// And a policy narrows what an open profile allows.
	e.MustKubectl("annotate", "namespace", "np-a", "tabby.io/isolation-", "tabby.io/allow-from-namespaces-")
	e.MustKubectl("-n", "np-a", "delete", "networkpolicy", "from-b")
	e.Apply([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: np-a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`))
	expect("open profile, deny-all policy", srvB, srvA, false)
	// Label changes on a running pod take effect: a policy admitting only
	// role=client, and srvB labelled so.
	e.Apply([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: np-a}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]
`))
	expect("before the label", srvB, srvA, false)
	start := time.Now()
	e.MustKubectl("-n", "np-b", "label", "pod", srvB.Name, "role=client")
	expect("after the label", srvB, srvA, true)
	t.Logf("label change to enforcement (kubectl label, then probes until allowed): %s", time.Since(start).Round(time.Millisecond))
	e.MustKubectl("-n", "np-b", "label", "pod", srvB.Name, "role-")
	expect("label removed", srvB, srvA, false)
}

// firstTryPod is a pod in np-b labelled role=<role> whose one container
// tries, as the very first thing it does, to reach ip:8080 and says
// whether that first try got through.
func firstTryPod(name, role, node, ip string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: np-b, labels: {role: %s}}
spec:
  nodeName: %s
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: first
    image: %s
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "if /agnhost connect %s:8080 --timeout=3s; then echo FIRST-TRY-REACHED; else echo FIRST-TRY-BLOCKED; fi"]
`, name, role, node, AgnhostImage, ip)
}
