package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/ociimage"
)

// TestReferenceCluster brings the cluster up with ptp + host-local: nodes
// NotReady until the conflist is there, then Ready, and a Deployment's pods
// Running on every node with addresses of their node's subnet.
func TestReferenceCluster(t *testing.T) {
	testutil.NeedRoot(t)
	if _, err := os.Stat(filepath.Join(BinDir(), "kubelet")); err != nil {
		testutil.Missing(t, "Kubernetes binaries in %s (make k8s-bins)", BinDir())
	}
	dir := t.TempDir()
	pause, err := ociimage.BuildPause(testutil.Root(), dir)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := ociimage.BuildBusybox(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := Start(t, Options{Nodes: 2, Images: []string{pause.Tar, bb.Tar}, SandboxImage: pause.Name})
	t.Cleanup(func() {
		if t.Failed() {
			c.Dump()
		}
	})
	if r, err := c.NodesReady(); err != nil || len(r) != 0 {
		t.Fatalf("Ready without CNI: %v %v", r, err)
	}
	c.UseReferenceCNI()
	c.Eventually(time.Minute, func() error {
		r, err := c.NodesReady()
		if err == nil && len(r) != len(c.Nodes) {
			err = fmt.Errorf("ready: %v", r)
		}
		return err
	})
	c.Apply([]byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: bb, namespace: default}
spec:
  replicas: 4
  selector: {matchLabels: {app: bb}}
  template:
    metadata: {labels: {app: bb}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: bb, image: ` + ociimage.BusyboxName + `, imagePullPolicy: Never, command: ["sleep", "3600"]}
`))
	c.Eventually(2*time.Minute, func() error {
		out, err := c.Kubectl("get", "pods", "-l", "app=bb", "-o", `jsonpath={range .items[*]}{.status.phase} {.status.podIP} {.spec.nodeName}{"\n"}{end}`)
		if err != nil {
			return err
		}
		if strings.Count(out, "Running") != 4 {
			return fmt.Errorf("pods:\n%s", out)
		}
		t.Logf("pods:\n%s", out)
		return nil
	})
}
