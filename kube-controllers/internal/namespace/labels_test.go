package namespace

import (
	"errors"
	"fmt"
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrltest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func labeled(name string, l map[string]string) *corev1.Namespace {
	l = maps.Clone(l)
	if l == nil {
		l = map[string]string{}
	}
	l["kubernetes.io/metadata.name"] = name
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

// TestNamespaceLabels: every namespace has its labels' record; a record
// left from a namespace deleted while the controller was down goes at
// start, one that is out of date is fixed, and labels changed or a
// namespace deleted later follow.
func TestNamespaceLabels(t *testing.T) {
	ctx, kv := ctrltest.Store(t)
	for _, n := range []model.Namespace{{Name: "gone", Labels: map[string]string{"a": "b"}}, {Name: "y", Labels: map[string]string{"old": "1"}}} {
		if err := store.PutJSON(ctx, kv, model.NamespaceKey(n.Name), n); err != nil {
			t.Fatal(err)
		}
	}
	cs := fake.NewSimpleClientset(labeled("x", map[string]string{"ns": "x"}), labeled("y", map[string]string{"ns": "y"}))
	ctrltest.Run(t, ctx, cs, kv, New)

	record := func(name string) (*model.Namespace, error) {
		return ctrltest.Get[model.Namespace](ctx, kv, model.NamespaceKey(name))
	}
	is := func(name string, want map[string]string) error {
		n, err := record(name)
		switch {
		case err != nil:
			return err
		case want == nil && n != nil:
			return fmt.Errorf("%s: still %+v", name, n)
		case want != nil && (n == nil || n.Name != name || !maps.Equal(n.Labels, want)):
			return fmt.Errorf("%s: got %+v, want labels %v", name, n, want)
		}
		return nil
	}
	for name, want := range map[string]map[string]string{
		"x":    {"ns": "x", "kubernetes.io/metadata.name": "x"},
		"y":    {"ns": "y", "kubernetes.io/metadata.name": "y"},
		"gone": nil,
	} {
		if err := is(name, want); err != nil {
			t.Errorf("after first sync: %v", err)
		}
	}
	if _, err := cs.CoreV1().Namespaces().Update(ctx, labeled("x", map[string]string{"ns": "x", "team": "blue"}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "x relabeled", func() error {
		return is("x", map[string]string{"ns": "x", "team": "blue", "kubernetes.io/metadata.name": "x"})
	})
	if err := cs.CoreV1().Namespaces().Delete(ctx, "y", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrltest.Eventually(t, "y gone", func() error {
		if err := is("y", nil); err != nil {
			return err
		}
		if _, err := kv.Get(ctx, model.ProfileKey("k8s_ns.y")); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("profile k8s_ns.y: %v", err)
		}
		return nil
	})
}
