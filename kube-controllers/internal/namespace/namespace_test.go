package namespace

import (
	"fmt"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrltest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func ns(name string, ann map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
}

func TestNamespaceProfile(t *testing.T) {
	all := model.Profile{Name: "k8s_ns.a", Inbound: []model.Rule{{Action: "allow"}}, Outbound: []model.Rule{{Action: "allow"}}}
	iso := model.DefaultProfile("k8s_ns.a")
	isoFrom := model.DefaultProfile("k8s_ns.a")
	isoFrom.Inbound = append(isoFrom.Inbound, model.Rule{Action: "allow", SrcTag: "k8s_ns.b"}, model.Rule{Action: "allow", SrcTag: "k8s_ns.c"})
	for _, c := range []struct {
		ann     map[string]string
		want    model.Profile
		wantErr bool
	}{
		{nil, all, false},
		{map[string]string{"other": "x"}, all, false},
		{map[string]string{AnnotationIsolation: "namespace"}, iso, false},
		{map[string]string{AnnotationIsolation: "namespace", AnnotationAllowFrom: "b, c,"}, isoFrom, false},
		// Unreadable: isolated (fail closed), and said.
		{map[string]string{AnnotationIsolation: "nope"}, iso, true},
		{map[string]string{AnnotationAllowFrom: "b"}, iso, true},
		{map[string]string{AnnotationIsolation: "namespace", AnnotationAllowFrom: "b/../x"}, iso, true},
	} {
		got, err := Render(ns("a", c.ann))
		if (err != nil) != c.wantErr || !Equal(got, c.want) {
			t.Errorf("%v: got %+v, %v; want %+v (error %v)", c.ann, got, err, c.want, c.wantErr)
		}
	}
}

// TestNamespaceController runs the controller against a fake API server
// and a real etcd: profiles follow namespaces created, annotated and
// deleted; a stale k8s_ns.* profile left from before the start goes; a
// profile of tabby's own users is never touched.
func TestNamespaceController(t *testing.T) {
	ctx, kv := ctrltest.Store(t)
	mine := model.DefaultProfile("PROF_A")
	stale := model.DefaultProfile("k8s_ns.gone")
	for _, p := range []model.Profile{mine, stale} {
		if err := store.PutJSON(ctx, kv, model.ProfileKey(p.Name), p); err != nil {
			t.Fatal(err)
		}
	}
	cs := fake.NewSimpleClientset(ns("default", nil), ns("kube-system", nil))
	ctrltest.Run(t, ctx, cs, kv, New)

	profile := func(name string) (*model.Profile, error) {
		return ctrltest.Get[model.Profile](ctx, kv, model.ProfileKey(name))
	}
	// Caught up means written: no waiting past this point for the start's namespaces.
	for _, n := range []string{"default", "kube-system"} {
		if p, err := profile("k8s_ns." + n); err != nil || p == nil || len(p.Inbound) != 1 || p.Inbound[0].SrcTag != "" {
			t.Errorf("k8s_ns.%s after first sync: %+v %v", n, p, err)
		}
	}
	if p, err := profile("k8s_ns.gone"); err != nil || p != nil {
		t.Errorf("stale k8s_ns.gone still there: %+v %v", p, err)
	}

	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns("tenant", map[string]string{AnnotationIsolation: "namespace"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "isolated tenant profile", func() error {
		p, err := profile("k8s_ns.tenant")
		if err == nil && (p == nil || !Equal(*p, model.DefaultProfile("k8s_ns.tenant"))) {
			err = fmt.Errorf("got %+v", p)
		}
		return err
	})
	// Annotation removed: back to not isolated.
	if _, err := cs.CoreV1().Namespaces().Update(ctx, ns("tenant", nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "tenant not isolated", func() error {
		p, err := profile("k8s_ns.tenant")
		if err == nil && (p == nil || len(p.Inbound) != 1 || p.Inbound[0].SrcTag != "") {
			err = fmt.Errorf("got %+v", p)
		}
		return err
	})
	if err := cs.CoreV1().Namespaces().Delete(ctx, "tenant", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "tenant profile deleted", func() error {
		p, err := profile("k8s_ns.tenant")
		if err == nil && p != nil {
			err = fmt.Errorf("still %+v", p)
		}
		return err
	})
	if p, err := profile("PROF_A"); err != nil || p == nil || !reflect.DeepEqual(*p, mine) {
		t.Errorf("PROF_A touched: %+v %v", p, err)
	}
}
