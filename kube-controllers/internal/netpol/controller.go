package netpol

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listers "k8s.io/client-go/listers/networking/v1"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrl"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Reconciler keeps the k8s-owned policies equal to the NetworkPolicies.
// Its queue keys are policy keys (model.PolicyKey), so that a k8s-owned
// policy that no NetworkPolicy can have made (another name, the global
// namespace) is a key too, and goes.
type Reconciler struct {
	ctrl.Base[listers.NetworkPolicyLister]
}

// New registers the NetworkPolicy controller's informer with f.
func New(f informers.SharedInformerFactory, kv store.KV, log *slog.Logger) *ctrl.Controller {
	return ctrl.Register("networkpolicy", kv, log, f.Networking().V1().NetworkPolicies(), &Reconciler{},
		func(np *networkingv1.NetworkPolicy) string { return Key(np.Namespace, np.Name) })
}

// ours says whether a stored policy is this controller's to change: one
// whose Owner is k8s. A record that does not decode is nobody's we know.
func ours(cur *store.KeyValue) bool {
	var p model.Policy
	return store.DecodeRecord(cur.Key, cur.Value, &p) == nil && p.Owner == Owner
}

// splitKey names the NetworkPolicy whose copy lives at key, if one could.
func splitKey(key string) (ns, name string, ok bool) {
	ns, pname, ok := strings.Cut(strings.TrimPrefix(key, model.PolicyPrefix), "/")
	if !ok || ns == model.GlobalNamespace || !strings.HasPrefix(pname, NamePrefix) {
		return "", "", false
	}
	return ns, strings.TrimPrefix(pname, NamePrefix), true
}

// Diff compares the stored policies with the NetworkPolicies: the key of a
// NetworkPolicy whose copy is missing or differs, and of a k8s-owned
// policy with no NetworkPolicy, is returned.
func (r *Reconciler) Diff(ctx context.Context) ([]string, int, error) {
	nps, err := r.Lister.List(labels.Everything())
	if err != nil {
		return nil, 0, err
	}
	stored, err := ctrl.List(ctx, r.KV, model.PolicyPrefix)
	if err != nil {
		return nil, 0, err
	}
	keys := map[string]bool{}
	want := map[string]bool{}
	for _, np := range nps {
		k := Key(np.Namespace, np.Name)
		want[k] = true
		p, _ := Translate(np)
		if cur, ok := stored[k]; !ok || !ctrl.Same(cur.Value, p) {
			keys[k] = true
		}
	}
	for k, cur := range stored {
		if !want[k] && ours(&cur) {
			keys[k] = true
		}
	}
	return slices.Sorted(maps.Keys(keys)), len(nps), nil
}

// Sync writes the copy of the NetworkPolicy whose key this is, or deletes
// a k8s-owned policy at key when there is no such NetworkPolicy.
func (r *Reconciler) Sync(ctx context.Context, key string) error {
	var np *networkingv1.NetworkPolicy
	if ns, name, ok := splitKey(key); ok {
		var err error
		np, err = r.Lister.NetworkPolicies(ns).Get(name)
		if apierrors.IsNotFound(err) {
			np = nil
		} else if err != nil {
			return err
		}
	}
	if np == nil {
		gone, err := ctrl.Delete(ctx, r.KV, key, ours)
		if errors.Is(err, ctrl.ErrNotOurs) {
			return nil
		}
		if gone {
			r.Log.Info("policy deleted: no such NetworkPolicy", "key", key)
		}
		return err
	}
	p, terr := Translate(np)
	if terr != nil {
		r.Log.Error("networkpolicy not translated; isolating its pods instead", "networkpolicy", np.Namespace+"/"+np.Name, "err", terr)
	}
	wrote, err := ctrl.Put(ctx, r.KV, key, p, ours)
	if errors.Is(err, ctrl.ErrNotOurs) {
		// Not retried: the record's owner must remove it (tabbyctl policy
		// remove); its next change or the next resync tries again.
		r.Log.Error("networkpolicy not written: a policy of another owner has its name", "networkpolicy", np.Namespace+"/"+np.Name, "key", key)
		return nil
	}
	if err != nil {
		return err
	}
	if wrote {
		r.Log.Info("policy written", "networkpolicy", np.Namespace+"/"+np.Name, "types", p.Types, "ingress", len(p.Ingress), "egress", len(p.Egress))
	}
	return nil
}
