package node

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrltest"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func node(name string) *corev1.Node { return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}} }

// An API server with no Node at all (the wrong cluster, an empty restore)
// retires nothing.
func TestNodeControllerNoNodesRetiresNothing(t *testing.T) {
	ctx, kv := ctrltest.Store(t)
	if err := store.PutJSON(ctx, kv, model.NodeKey("w1"), model.Host{Name: "w1", IPv4: "198.19.0.9/24", K8sNode: "w1"}); err != nil {
		t.Fatal(err)
	}
	f := informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)
	r := &Reconciler{}
	r.KV, r.Lister, r.Log = kv, f.Core().V1().Nodes().Lister(), slog.New(slog.DiscardHandler)
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	if keys, _, err := r.Diff(ctx); err != nil || len(keys) != 0 {
		t.Fatalf("diff: %v %v, want no key", keys, err)
	}
	if err := r.Sync(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	if h, err := ctrltest.Get[model.Host](ctx, kv, model.NodeKey("w1")); err != nil || h == nil {
		t.Fatalf("host w1 removed with no Node in the API: %v %v", h, err)
	}
}

// TestNodeController runs the controller against a fake API server and a
// real etcd: a host whose Node is deleted is removed from etcd with its
// address and block; a host whose Node was deleted while the controller
// was away goes at its first pass; a host registered outside Kubernetes,
// and one whose Node is still there, stay.
func TestNodeController(t *testing.T) {
	ctx, kv := ctrltest.Store(t)
	if _, err := ipam.AddPool(ctx, kv, model.Pool{CIDR: "10.7.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	register := func(host, k8sNode string) {
		t.Helper()
		if err := store.PutJSON(ctx, kv, model.NodeKey(host), model.Host{Name: host, IPv4: "198.19.0.9/24", K8sNode: k8sNode}); err != nil {
			t.Fatal(err)
		}
		a := &ipam.IPAM{KV: kv, Host: host}
		if _, _, err := a.Assign(ctx, ipam.Request{Network: "tabby-tunnel", ContainerID: "vxlan-" + host, IPv4: true}); err != nil {
			t.Fatal(err)
		}
	}
	register("w1", "w1")
	register("w2", "w2")
	register("gone-before", "gone-before") // its Node was deleted before the start
	register("bare", "")                   // a host outside Kubernetes
	exists := func(host string) bool {
		t.Helper()
		h, err := ctrltest.Get[model.Host](ctx, kv, model.NodeKey(host))
		if err != nil {
			t.Fatal(err)
		}
		return h != nil
	}
	blocks := func(host string) int {
		t.Helper()
		kvs, _, err := kv.List(ctx, model.AffinityHostPrefix(host), true)
		if err != nil {
			t.Fatal(err)
		}
		return len(kvs)
	}

	cs := fake.NewSimpleClientset(node("w1"), node("w2"))
	ctrltest.Run(t, ctx, cs, kv, New)
	if exists("gone-before") || blocks("gone-before") != 0 {
		t.Fatal("a host whose Node was gone at the start is still registered, or holds its block")
	}
	if err := cs.CoreV1().Nodes().Delete(context.Background(), "w2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "w2 removed", func() error {
		if exists("w2") || blocks("w2") != 0 {
			return fmt.Errorf("w2 still registered or affine to a block")
		}
		return nil
	})
	for _, h := range []string{"w1", "bare"} {
		if !exists(h) || blocks(h) != 1 {
			t.Errorf("host %s was touched", h)
		}
	}
	if kvs, _, err := kv.List(ctx, model.HandleKey("tabby-tunnel", "vxlan-w2"), true); err != nil || len(kvs) != 0 {
		t.Errorf("w2's tunnel address is still held: %v %v", kvs, err)
	}
}
