package k8s

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/test/k8s/cluster"
)

// policyRound is, per client node, how long a policy change took to show
// in that client's probes.
type policyRound struct{ apply, remove []time.Duration }

// uptime is the kernel's uptime in seconds: the clock the probe pods
// stamp their attempts with (/proc/uptime is not namespaced), at 10 ms.
func uptime(t *testing.T) float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	f, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// policyEnforcement measures `kubectl apply` of a NetworkPolicy to its
// enforcement on every node, and its deletion to traffic passing again:
// a server pod on each node, a client on each node probing the server on
// the next node in a loop (each attempt stamped when it starts); the
// latency of a node is from just before kubectl apply (delete) to the
// start of its client's first attempt that was dropped (that passed).
// The probe loop's period (an agnhost start, ~20-40 ms) bounds the
// resolution.
func policyEnforcement(t *testing.T, c *cluster.Cluster, rounds int) []policyRound {
	t.Helper()
	var m strings.Builder
	m.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: pbench}\n")
	for i, n := range c.Nodes {
		fmt.Fprintf(&m, `---
apiVersion: v1
kind: Pod
metadata: {name: srv-%d, namespace: pbench, labels: {role: srv}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: netexec, image: %s, imagePullPolicy: Never, args: ["netexec", "--http-port=8080"]}
`, i, n.Name, AgnhostImage)
	}
	c.Apply([]byte(m.String()))
	e := &env{Cluster: c, t: t}
	srv := e.waitPods("pbench", "role=srv", len(c.Nodes), 2*time.Minute)
	byNode := map[string]pod{}
	for _, p := range srv {
		byNode[p.Node] = p
	}
	m.Reset()
	for i, n := range c.Nodes {
		target := byNode[c.Nodes[(i+1)%len(c.Nodes)].Name]
		fmt.Fprintf(&m, `---
apiVersion: v1
kind: Pod
metadata: {name: cli-%d, namespace: pbench, labels: {role: cli}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - name: probe
    image: %s
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "while true; do read up rest < /proc/uptime; if /agnhost connect %s:8080 --timeout=0.3s 2>/dev/null; then echo \"$up ok\"; else echo \"$up no\"; fi; done"]
`, i, n.Name, AgnhostImage, target.IP)
	}
	c.Apply([]byte(m.String()))
	e.waitPods("pbench", "role=cli", len(c.Nodes), 2*time.Minute)
	// firstSince: per client, the stamp of its first attempt at or after
	// since whose outcome is want.
	firstSince := func(since float64, want string) (map[int]float64, error) {
		got := map[int]float64{}
		for i := range c.Nodes {
			out, err := c.Kubectl("-n", "pbench", "logs", fmt.Sprintf("cli-%d", i), "--tail=400")
			if err != nil {
				return nil, err
			}
			for _, l := range strings.Split(out, "\n") {
				f := strings.Fields(l)
				if len(f) != 2 {
					continue
				}
				u, err := strconv.ParseFloat(f[0], 64)
				if err == nil && u >= since && f[1] == want {
					got[i] = u
					break
				}
			}
			if _, ok := got[i]; !ok {
				return nil, fmt.Errorf("cli-%d: no %q attempt yet", i, want)
			}
		}
		return got, nil
	}
	wait := func(since float64, want string) []time.Duration {
		var got map[int]float64
		c.Eventually(30*time.Second, func() (err error) {
			got, err = firstSince(since, want)
			return err
		})
		var ds []time.Duration
		for _, u := range got {
			ds = append(ds, time.Duration((u-since)*float64(time.Second)))
		}
		return ds
	}
	const deny = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: pbench}
spec:
  podSelector: {matchLabels: {role: srv}}
  policyTypes: [Ingress]
`
	wait(uptime(t), "ok")
	var out []policyRound
	for r := 0; r < rounds; r++ {
		var pr policyRound
		u0 := uptime(t)
		c.Apply([]byte(deny))
		pr.apply = wait(u0, "no")
		u1 := uptime(t)
		c.MustKubectl("-n", "pbench", "delete", "networkpolicy", "deny")
		pr.remove = wait(u1, "ok")
		out = append(out, pr)
	}
	c.MustKubectl("delete", "namespace", "pbench", "--wait=false")
	return out
}

// policyTable is the Markdown rows of the enforcement bench.
func policyTable(rs []policyRound) string {
	var apply, remove []time.Duration
	for _, r := range rs {
		apply = append(apply, r.apply...)
		remove = append(remove, r.remove...)
	}
	sort.Slice(apply, func(i, j int) bool { return apply[i] < apply[j] })
	sort.Slice(remove, func(i, j int) bool { return remove[i] < remove[j] })
	var b strings.Builder
	fmt.Fprintf(&b, "\n| NetworkPolicy change to effect on every node (%d rounds x 3 nodes) | p50 ms | p99 ms |\n|---|---|---|\n", len(rs))
	fmt.Fprintf(&b, "| `kubectl apply` of a deny policy to the first dropped probe | %.0f | %.0f |\n", ms(quantile(apply, 0.5)), ms(quantile(apply, 0.99)))
	fmt.Fprintf(&b, "| `kubectl delete` of it to the first passing probe | %.0f | %.0f |\n", ms(quantile(remove, 0.5)), ms(quantile(remove, 0.99)))
	return b.String()
}
