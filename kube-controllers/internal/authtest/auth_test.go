// Package authtest runs every controller of tabby-kube-controllers against
// an etcd with TLS and authentication, as user tabby-kube-controllers (its
// certificate's CN): the role docs/security.md gives it is enough for all
// they write, and no more.
package authtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrltest"
	"github.com/tabby-net/tabby/kube-controllers/internal/namespace"
	"github.com/tabby-net/tabby/kube-controllers/internal/netpol"
	"github.com/tabby-net/tabby/kube-controllers/internal/node"
	"github.com/tabby-net/tabby/kube-controllers/internal/pod"
	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdauth"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/pkg/workload"
)

func TestControllersUnderEtcdAuth(t *testing.T) {
	dir := t.TempDir()
	ca, err := etcdtest.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	sc, sk, _ := ca.Issue("server", "etcd", "127.0.0.1")
	e := etcdtest.StartTLS(t, etcdtest.TLSFiles{CA: ca.File, ServerCert: sc, ServerKey: sk})
	open := func(file, cn string) *etcdv3.KV {
		c, k, err := ca.Issue(file, cn)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := etcdv3.New(store.Config{Endpoints: e.Endpoints(), CAFile: ca.File, CertFile: c, KeyFile: k})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kv.Close() })
		return kv
	}
	root := open("root", etcdauth.RootUser)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := etcdauth.Apply(ctx, root.Client, etcdauth.KubeControllersRole()); err != nil {
		t.Fatal(err)
	}
	if err := etcdauth.Enable(ctx, root.Client); err != nil {
		t.Fatal(err)
	}
	// The endpoint of pod x/a on node n1, as that node's CNI plugin wrote it.
	ep := &model.Endpoint{Host: "n1", Orchestrator: model.OrchestratorK8s, Workload: "x.a", Name: "eth0",
		ContainerID: "c-a", Network: "k8s-pod-network", IfName: "eth0", HostInterface: "tbya",
		IPv4Nets: []string{"10.0.0.1/32"}, Profiles: []string{"k8s_ns.x"}, Namespace: "x"}
	if err := workload.Put(ctx, root, ep); err != nil {
		t.Fatal(err)
	}
	// Host n2, whose Node is gone, with the tunnel address its daemon took.
	if err := store.PutJSON(ctx, root, model.NodeKey("n2"), model.Host{Name: "n2", IPv4: "198.19.0.2/24", K8sNode: "n2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ipam.AddPool(ctx, root, model.Pool{CIDR: "10.1.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := (&ipam.IPAM{KV: root, Host: "n2"}).Assign(ctx, ipam.Request{Network: "tabby-tunnel", ContainerID: "vxlan-n2", IPv4: true}); err != nil {
		t.Fatal(err)
	}

	kv := open("kc", etcdauth.KubeControllers)
	cs := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, // n2's Node is gone
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "a"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a", UID: types.UID("uid-a"), Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c"}}}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
	)
	ctrltest.Run(t, ctx, cs, kv, namespace.New)
	ctrltest.Run(t, ctx, cs, kv, pod.New)
	ctrltest.Run(t, ctx, cs, kv, netpol.New)
	ctrltest.Run(t, ctx, cs, kv, node.New)

	ctrltest.Eventually(t, "every record written as tabby-kube-controllers", func() error {
		for _, key := range []string{model.ProfileKey(model.K8sNamespaceProfile("x")), model.NamespaceKey("x"),
			model.K8sPodKey("x", "a"), netpol.Key("x", "deny")} {
			if _, err := root.Get(ctx, key); err != nil {
				return fmt.Errorf("%s: %v", key, err)
			}
		}
		got, err := workload.Get(ctx, root, ep.Key())
		if err != nil {
			return err
		}
		if got.Labels["app"] != "web" {
			return fmt.Errorf("endpoint labels %v", got.Labels)
		}
		for _, p := range []string{model.NodeKey("n2"), model.AffinityHostPrefix("n2"), model.BlockPrefix, model.HandlePrefix} {
			if kvs, _, err := root.List(ctx, p, true); err != nil || len(kvs) != 0 {
				return fmt.Errorf("deleted Node n2's host: %d keys left under %s (%v)", len(kvs), p, err)
			}
		}
		return nil
	})
	// And no more: pools, other profiles, BGP settings are not its to write.
	for _, key := range []string{model.PoolKey("10.0.0.0/16"), model.ProfileKey("ops"), model.BGPConfigKey, model.BGPPeerPrefix + "198.19.0.99"} {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		err := store.PutJSON(cctx, kv, key, map[string]string{})
		ccancel()
		if !etcdauth.IsPermissionDenied(err) {
			t.Errorf("tabby-kube-controllers writes %s: %v, want permission denied", key, err)
		}
	}
}
