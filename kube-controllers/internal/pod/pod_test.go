package pod

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrltest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

func pod(ns, name, node string, labels, ann map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: labels, Annotations: ann},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Ports: ports}}}}
}

func TestRecord(t *testing.T) {
	p := pod("x", "a", "", map[string]string{"app": "a"}, map[string]string{AnnotationProfiles: " quarantine, audit ,"},
		corev1.ContainerPort{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{ContainerPort: 9000}, // unnamed: not a named port
		corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP})
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "d", Ports: []corev1.ContainerPort{{Name: "assoc", ContainerPort: 7, Protocol: corev1.ProtocolSCTP}}})
	got, err := Record(p)
	want := model.K8sPod{Namespace: "x", Name: "a", UID: "uid-a", Labels: map[string]string{"app": "a"},
		Ports:    []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 80}, {Name: "dns", Protocol: "udp", Port: 53}, {Name: "assoc", Protocol: "sctp", Port: 7}},
		Profiles: []string{"quarantine", "audit"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v %v\nwant %+v", got, err, want)
	}
	p.Annotations[AnnotationProfiles] = "ok, not/valid"
	got, err = Record(p)
	if err == nil || got.Profiles != nil {
		t.Errorf("bad annotation: got %v %v, want it ignored and said", got.Profiles, err)
	}
}

func endpoint(host, ns, pod string, labels map[string]string) *model.Endpoint {
	return &model.Endpoint{Host: host, Orchestrator: model.OrchestratorK8s, Workload: ns + "." + pod, Name: "eth0",
		ContainerID: "c-" + pod, Network: "k8s-pod-network", IfName: "eth0", HostInterface: "tby" + pod,
		IPv4Nets: []string{"10.0.0.1/32"}, Profiles: []string{"k8s_ns." + ns}, Labels: labels, Namespace: ns}
}

// TestPodController runs the controller against a fake API server and a
// real etcd: records for every pod not on the host network (scheduled or
// not), stale records gone at start, drifted endpoint labels fixed at
// start, a label change carried to the endpoint and its member record in
// one transaction within well under a second, a deleted pod's record gone.
func TestPodController(t *testing.T) {
	ctx, kv := ctrltest.Store(t)

	// Before the start: a record of a pod deleted meanwhile, one of a host
	// network pod, an endpoint of x/a with labels out of date, an endpoint
	// of x/b already right, and an endpoint of a pod that is not known.
	for _, r := range []model.K8sPod{{Namespace: "x", Name: "gone", UID: "u"}, {Namespace: "x", Name: "hn", UID: "u"}} {
		if err := store.PutJSON(ctx, kv, model.K8sPodKey(r.Namespace, r.Name), r); err != nil {
			t.Fatal(err)
		}
	}
	epA := endpoint("n1", "x", "a", map[string]string{"app": "old"})
	epB := endpoint("n1", "x", "b", map[string]string{"app": "b"})
	epC := endpoint("n1", "x", "stranger", map[string]string{"app": "s"})
	for _, ep := range []*model.Endpoint{epA, epB, epC} {
		if err := workload.Put(ctx, kv, ep); err != nil {
			t.Fatal(err)
		}
	}
	revOf := func(key string) int64 {
		r, err := kv.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return r.ModRev
	}
	revB, revC := revOf(epB.Key()), revOf(epC.Key())

	http := corev1.ContainerPort{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}
	hn := pod("x", "hn", "n1", nil, nil)
	hn.Spec.HostNetwork = true
	cs := fake.NewSimpleClientset(
		pod("x", "a", "n1", map[string]string{"app": "a"}, nil, http),
		pod("x", "b", "n1", map[string]string{"app": "b"}, nil),
		pod("x", "pending", "", map[string]string{"app": "p"}, nil), // not scheduled yet
		hn)
	ctrltest.Run(t, ctx, cs, kv, New)

	record := func(ns, name string) (*model.K8sPod, error) {
		return ctrltest.Get[model.K8sPod](ctx, kv, model.K8sPodKey(ns, name))
	}
	// labelsAre checks an endpoint and its member record.
	labelsAre := func(ep *model.Endpoint, want map[string]string, ports []model.NamedPort) error {
		var got model.Endpoint
		if _, err := store.GetJSON(ctx, kv, ep.Key(), &got); err != nil {
			return err
		}
		var m model.Member
		if _, err := store.GetJSON(ctx, kv, model.MemberKeyOf(ep), &m); err != nil {
			return err
		}
		if !maps.Equal(got.Labels, want) || !slices.Equal(got.Ports, ports) {
			return fmt.Errorf("endpoint %s: labels %v ports %v, want %v %v", ep.Key(), got.Labels, got.Ports, want, ports)
		}
		if !maps.Equal(m.Labels, want) || !slices.Equal(m.Ports, ports) || m.Endpoint != ep.Key() {
			return fmt.Errorf("member of %s: %+v, want labels %v ports %v", ep.Key(), m, want, ports)
		}
		if got.ContainerID != ep.ContainerID || !slices.Equal(got.IPv4Nets, ep.IPv4Nets) || got.HostInterface != ep.HostInterface {
			return fmt.Errorf("endpoint %s: other fields changed: %+v", ep.Key(), got)
		}
		return nil
	}
	httpPort := []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 80}}
	for _, n := range []string{"a", "b", "pending"} {
		if r, err := record("x", n); err != nil || r == nil || r.UID != "uid-"+n {
			t.Errorf("record of x/%s after first sync: %+v %v", n, r, err)
		}
	}
	for _, n := range []string{"gone", "hn"} {
		if r, err := record("x", n); err != nil || r != nil {
			t.Errorf("stale record of x/%s after first sync: %+v %v", n, r, err)
		}
	}
	if err := labelsAre(epA, map[string]string{"app": "a"}, httpPort); err != nil {
		t.Errorf("after first sync: %v", err)
	}
	if revOf(epB.Key()) != revB || revOf(epC.Key()) != revC {
		t.Errorf("endpoints that were right, or of no known pod, were written")
	}

	// A label change reaches the endpoint and its member record fast.
	p, err := cs.CoreV1().Pods("x").Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels = map[string]string{"app": "a", "role": "db"}
	start := time.Now()
	if _, err := cs.CoreV1().Pods("x").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "relabeled endpoint", func() error {
		return labelsAre(epA, map[string]string{"app": "a", "role": "db"}, httpPort)
	})
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("label change took %s to reach etcd", d)
	}
	if r, err := record("x", "a"); err != nil || r == nil || r.Labels["role"] != "db" {
		t.Errorf("record of x/a: %+v %v", r, err)
	}
	// A named port added: endpoint and member follow too.
	p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP})
	if _, err := cs.CoreV1().Pods("x").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "named port on endpoint", func() error {
		return labelsAre(epA, map[string]string{"app": "a", "role": "db"}, append(httpPort, model.NamedPort{Name: "metrics", Protocol: "tcp", Port: 9090}))
	})

	// Scheduled later: the CNI plugin writes the endpoint with the labels
	// it read; a later event finds them drifted and fixes them.
	epP := endpoint("n2", "x", "pending", map[string]string{"app": "stale"})
	if err := workload.Put(ctx, kv, epP); err != nil {
		t.Fatal(err)
	}
	pp, err := cs.CoreV1().Pods("x").Get(ctx, "pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pp.Spec.NodeName = "n2"
	if _, err := cs.CoreV1().Pods("x").Update(ctx, pp, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "scheduled pod's endpoint", func() error { return labelsAre(epP, map[string]string{"app": "p"}, nil) })

	// Deleted: the record goes; the endpoint is the CNI plugin's to remove.
	if err := cs.CoreV1().Pods("x").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "record of deleted pod gone", func() error {
		r, err := record("x", "a")
		if err == nil && r != nil {
			err = fmt.Errorf("still %+v", r)
		}
		return err
	})
	if _, err := kv.Get(ctx, epA.Key()); err != nil {
		t.Errorf("endpoint of the deleted pod: %v", err)
	}
}
