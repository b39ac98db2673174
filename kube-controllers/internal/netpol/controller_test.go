package netpol

import (
	"fmt"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrltest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// TestNetworkPolicyController runs the controller against a fake API
// server and a real etcd. At start: a k8s-owned policy whose NetworkPolicy
// was deleted while the controller was down goes, one that is out of date
// is rewritten in place (never deleted first), one already right is not
// written, policies of other owners stay, even one at a NetworkPolicy's
// name. Later: create, update and delete follow.
func TestNetworkPolicyController(t *testing.T) {
	ctx, kv := ctrltest.Store(t)

	denyIn := networkingv1.NetworkPolicySpec{PolicyTypes: ingress}
	right, _ := Translate(np("right", denyIn))
	outdated := pol("outdated", "old=1", []string{"ingress"}, nil, nil)
	stale := pol("gone", "", []string{"ingress"}, nil, nil)
	staleGlobal := model.Policy{Name: "whatever", Owner: Owner, Types: []string{"egress"}}
	users := model.Policy{Name: "users", Namespace: "x", Types: []string{"ingress"}}
	squatter := model.Policy{Name: "knp.taken", Namespace: "x", Types: []string{"egress"}, Owner: "someone"}
	for k, p := range map[string]model.Policy{
		Key("x", "right"): right, Key("x", "outdated"): outdated, Key("x", "gone"): stale,
		model.PolicyKey("", "whatever"): staleGlobal, model.PolicyKey("x", "users"): users, Key("x", "taken"): squatter,
	} {
		if err := store.PutJSON(ctx, kv, k, p); err != nil {
			t.Fatal(err)
		}
	}
	rev := func(key string) int64 {
		r, err := kv.Get(ctx, key)
		if err != nil {
			return 0
		}
		return r.ModRev
	}
	revRight, revOutdated, revUsers, revTaken := rev(Key("x", "right")), rev(Key("x", "outdated")), rev(model.PolicyKey("x", "users")), rev(Key("x", "taken"))

	cs := fake.NewSimpleClientset(np("right", denyIn), np("outdated", denyIn), np("taken", denyIn))
	ctrltest.Run(t, ctx, cs, kv, New)

	is := func(key string, want *model.Policy) error {
		got, err := ctrltest.Get[model.Policy](ctx, kv, key)
		if err != nil {
			return err
		}
		if want == nil {
			if got != nil {
				return fmt.Errorf("%s: still %s", key, js(got))
			}
			return nil
		}
		if got == nil || js(got) != js(want) {
			return fmt.Errorf("%s: got %s, want %s", key, js(got), js(want))
		}
		return nil
	}
	wantOutdated := pol("outdated", "", []string{"ingress"}, nil, nil)
	for k, want := range map[string]*model.Policy{
		Key("x", "right"): &right, Key("x", "outdated"): &wantOutdated, Key("x", "gone"): nil,
		model.PolicyKey("", "whatever"): nil, model.PolicyKey("x", "users"): &users, Key("x", "taken"): &squatter,
	} {
		if err := is(k, want); err != nil {
			t.Errorf("after first sync: %v", err)
		}
	}
	if rev(Key("x", "right")) != revRight || rev(model.PolicyKey("x", "users")) != revUsers || rev(Key("x", "taken")) != revTaken {
		t.Errorf("a policy that was right, or not the controller's, was written")
	}
	// Rewritten in place: one write (a delete and re-create would show as
	// a fresh create revision).
	if r, err := kv.Get(ctx, Key("x", "outdated")); err != nil || r.ModRev == revOutdated || r.CreateRev > revOutdated {
		t.Errorf("outdated policy not rewritten in place: %+v %v", r, err)
	}

	// Created, updated, deleted.
	spec := networkingv1.NetworkPolicySpec{PodSelector: *sel(map[string]string{"pod": "a"}), PolicyTypes: ingress,
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(map[string]string{"pod": "b"})}}}}}
	n, err := cs.NetworkingV1().NetworkPolicies("x").Create(ctx, np("allow-b", spec), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := pol("allow-b", "pod=a", []string{"ingress"}, []model.PolicyRule{{Action: allow, Peers: []model.Peer{{Selector: "pod=b"}}}}, nil)
	ctrltest.Eventually(t, "created", func() error { return is(Key("x", "allow-b"), &want) })
	n.Spec.Ingress[0].From[0].PodSelector = sel(map[string]string{"pod": "c"})
	if _, err := cs.NetworkingV1().NetworkPolicies("x").Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want.Ingress[0].Peers[0].Selector = "pod=c"
	ctrltest.Eventually(t, "updated", func() error { return is(Key("x", "allow-b"), &want) })
	for _, name := range []string{"allow-b", "taken"} {
		if err := cs.NetworkingV1().NetworkPolicies("x").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctrltest.Eventually(t, "deleted", func() error { return is(Key("x", "allow-b"), nil) })
	// The one worker takes keys in order: once a policy created after the
	// deletes is written, the delete of "taken" has been handled.
	if _, err := cs.NetworkingV1().NetworkPolicies("x").Create(ctx, np("last", denyIn), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	last, _ := Translate(np("last", denyIn))
	ctrltest.Eventually(t, "last", func() error { return is(Key("x", "last"), &last) })
	// The squatter is still not ours to delete.
	if err := is(Key("x", "taken"), &squatter); err != nil {
		t.Error(err)
	}
}
