package cluster

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/testutil"
)

// TestReferenceCluster brings the cluster up with ptp + host-local: nodes
// NotReady until the conflist is there, then Ready, and a Deployment's pods
// Running on every node with addresses of their node's subnet.
func TestReferenceCluster(t *testing.T) {
	testutil.NeedRoot(t)
	imgs := os.Getenv("TABBY_K8S_SMOKE_IMAGES") // pause.tar,busybox.tar
	if imgs == "" {
		t.Skip("TABBY_K8S_SMOKE_IMAGES unset")
	}
	c := Start(t, Options{Nodes: 2, Images: strings.Split(imgs, ","), SandboxImage: "localhost/crl-pause:lab"})
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
      - {name: bb, image: localhost/crl-busybox:lab, imagePullPolicy: Never, command: ["sleep", "3600"]}
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
