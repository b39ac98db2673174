package k8s

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/k8s/cluster"
)

// benchReplicas is the Deployment make bench applies.
const benchReplicas = 30

// startupRound is one Deployment applied and watched until all its pods
// are Ready.
type startupRound struct {
	allReady time.Duration   // apply to the last pod Ready
	startup  []time.Duration // per pod: created to all containers running
}

// watchEvent is what kubectl get -w -o json --output-watch-events prints.
type watchEvent struct {
	Type   string `json:"type"`
	Object struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Status struct {
			Conditions []struct {
				Type, Status string
			} `json:"conditions"`
			ContainerStatuses []struct {
				State struct {
					Running *struct{} `json:"running"`
				} `json:"state"`
			} `json:"containerStatuses"`
		} `json:"status"`
	} `json:"object"`
}

// podStartup applies a Deployment of benchReplicas agnhost pods and times,
// from one watch of the API server, each pod from its creation (the
// watch's ADDED) to all its containers running: the pod startup SLI of
// Kubernetes' SLOs (images are on the nodes already, so no pull is in it),
// and the apply to the last pod Ready.
func (c *benchCluster) podStartup(t *testing.T, round int) startupRound {
	t.Helper()
	name := fmt.Sprintf("bench%d", round)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", c.Lab.Underlay, filepath.Join(c.Bin, "kubectl"), "--kubeconfig", c.Kubeconfig,
		"-n", "default", "get", "pods", "-l", "app="+name, "-w", "-o", "json", "--output-watch-events")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// The watch is open before the Deployment exists: wait for kubectl to
	// have listed (an empty list prints nothing, so give it its request).
	time.Sleep(500 * time.Millisecond)
	created, running, ready := map[string]time.Time{}, map[string]time.Time{}, map[string]time.Time{}
	start := time.Now()
	c.Apply(fmt.Appendf(nil, `apiVersion: apps/v1
kind: Deployment
metadata: {name: %s, namespace: default}
spec:
  replicas: %d
  selector: {matchLabels: {app: %s}}
  template:
    metadata: {labels: {app: %s}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: netexec
        image: %s
        imagePullPolicy: Never
        args: ["netexec", "--http-port=8080"]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
`, name, benchReplicas, name, name, AgnhostImage))
	dec := json.NewDecoder(bufio.NewReader(out))
	for len(ready) < benchReplicas {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("watch: %v (%d of %d ready)", err, len(ready), benchReplicas)
		}
		now := time.Now()
		p := ev.Object.Metadata.Name
		if _, ok := created[p]; !ok {
			created[p] = now
		}
		st := ev.Object.Status
		if _, ok := running[p]; !ok && len(st.ContainerStatuses) > 0 {
			all := true
			for _, cs := range st.ContainerStatuses {
				all = all && cs.State.Running != nil
			}
			if all {
				running[p] = now
			}
		}
		for _, cond := range st.Conditions {
			if cond.Type == "Ready" && cond.Status == "True" {
				if _, ok := ready[p]; !ok {
					ready[p] = now
				}
			}
		}
	}
	r := startupRound{allReady: time.Since(start)}
	for p, t0 := range created {
		if t1, ok := running[p]; ok {
			r.startup = append(r.startup, t1.Sub(t0))
		}
	}
	c.MustKubectl("-n", "default", "delete", "deployment", name, "--wait=true")
	c.Eventually(2*time.Minute, func() error {
		o, err := c.Kubectl("-n", "default", "get", "pods", "-l", "app="+name, "-o", "name")
		if err == nil && strings.TrimSpace(o) != "" {
			err = fmt.Errorf("pods left: %s", o)
		}
		return err
	})
	return r
}

type benchCluster struct{ *cluster.Cluster }

func quantile(ds []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[int(q*float64(len(s)-1)+0.5)]
}

// TestBenchPodStartup is make bench's cluster row: a 30-pod Deployment in
// the cluster lab with tabby (deployed by its manifest, tabby-node and the
// controllers running, policy in force before each ADD returns) and in the
// same lab with Debian's ptp + host-local, three rounds each; it writes a
// Markdown table to $TABBY_K8S_BENCH_OUT. Only make bench runs it.
func TestBenchPodStartup(t *testing.T) {
	out := os.Getenv("TABBY_K8S_BENCH_OUT")
	if out == "" {
		t.Skip("make bench runs this (TABBY_K8S_BENCH_OUT names its table)")
	}
	const rounds = 3
	results := map[string][]startupRound{}
	var policyRows string
	// One cluster at a time (each subtest's cleanup stops its cluster), so
	// neither pays for the other's daemons.
	for _, cni := range []string{"tabby", "ptp + host-local"} {
		t.Run(cni, func(t *testing.T) {
			var c *cluster.Cluster
			if cni == "tabby" {
				c = newEnv(t, 3).Cluster
			} else {
				testutil.NeedRoot(t)
				c = cluster.Start(t, cluster.Options{Nodes: 3, Images: buildImages(t), SandboxImage: pauseName})
				c.UseReferenceCNI()
				c.Eventually(time.Minute, func() error {
					r, err := c.NodesReady()
					if err == nil && len(r) != len(c.Nodes) {
						err = fmt.Errorf("ready: %v", r)
					}
					return err
				})
				// The same cluster as tabby's but for the CNI: it runs
				// cluster DNS too.
				c.DeployDNS()
			}
			b := &benchCluster{c}
			b.podStartup(t, 0) // warm-up: first sandboxes, image unpack
			for i := 1; i <= rounds; i++ {
				results[cni] = append(results[cni], b.podStartup(t, i))
			}
			if cni == "tabby" {
				policyRows = policyTable(policyEnforcement(t, c, 10))
			}
		})
	}
	if len(results["tabby"]) != rounds || len(results["ptp + host-local"]) != rounds {
		t.Fatalf("rounds missing: %d tabby, %d reference", len(results["tabby"]), len(results["ptp + host-local"]))
	}
	med := func(rs []startupRound, f func(startupRound) time.Duration) time.Duration {
		var ds []time.Duration
		for _, r := range rs {
			ds = append(ds, f(r))
		}
		return quantile(ds, 0.5)
	}
	row := func(label string, f func(startupRound) time.Duration) string {
		a, b := med(results["tabby"], f), med(results["ptp + host-local"], f)
		return fmt.Sprintf("| %s | %.0f | %.0f | %.2fx |\n", label, ms(a), ms(b), float64(a)/float64(b))
	}
	var tbl strings.Builder
	tbl.WriteString("| 30-pod Deployment, 3 nodes (median of 3 rounds) | tabby ms | ptp + host-local ms | ratio |\n|---|---|---|---|\n")
	tbl.WriteString(row("apply to all 30 pods Ready", func(r startupRound) time.Duration { return r.allReady }))
	tbl.WriteString(row("pod startup p50 (created to running)", func(r startupRound) time.Duration { return quantile(r.startup, 0.5) }))
	tbl.WriteString(row("pod startup p99", func(r startupRound) time.Duration { return quantile(r.startup, 0.99) }))
	tbl.WriteString(policyRows)
	t.Logf("\n%s", tbl.String())
	if err := os.WriteFile(out, []byte(tbl.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
