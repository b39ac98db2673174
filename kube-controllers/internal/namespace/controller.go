package namespace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listers "k8s.io/client-go/listers/core/v1"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrl"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Record is the namespace's labels as namespace selectors match them
// (the API's labels, kubernetes.io/metadata.name included).
func Record(ns *corev1.Namespace) model.Namespace {
	return model.Namespace{Name: ns.Name, Labels: ns.Labels}
}

// Reconciler keeps, per namespace, the profile k8s_ns.<namespace> and the
// model.Namespace record at model.NamespaceKey. Its queue keys are
// namespace names.
type Reconciler struct {
	ctrl.Base[listers.NamespaceLister]
}

// New registers the namespace controller's informer with f.
func New(f informers.SharedInformerFactory, kv store.KV, log *slog.Logger) *ctrl.Controller {
	return ctrl.Register("namespace", kv, log, f.Core().V1().Namespaces(), &Reconciler{}, func(ns *corev1.Namespace) string { return ns.Name })
}

// Diff compares the k8s_ns.* profiles and the namespace records with the
// namespaces: a namespace whose records differ or are missing, and one
// that is gone but still has a record, is a key to sync.
func (r *Reconciler) Diff(ctx context.Context) ([]string, int, error) {
	nss, err := r.Lister.List(labels.Everything())
	if err != nil {
		return nil, 0, err
	}
	profiles, err := ctrl.List(ctx, r.KV, model.ProfileKey(ProfilePrefix))
	if err != nil {
		return nil, 0, err
	}
	records, err := ctrl.List(ctx, r.KV, model.NamespacePrefix)
	if err != nil {
		return nil, 0, err
	}
	var keys []string
	seen := map[string]bool{}
	for _, ns := range nss {
		seen[ns.Name] = true
		p, _ := Render(ns)
		pk, nk := model.ProfileKey(ProfileName(ns.Name)), model.NamespaceKey(ns.Name)
		if cur, ok := profiles[pk]; !ok || !ctrl.Same(cur.Value, p) {
			keys = append(keys, ns.Name)
		} else if cur, ok := records[nk]; !ok || !ctrl.Same(cur.Value, Record(ns)) {
			keys = append(keys, ns.Name)
		}
	}
	stale := map[string]bool{}
	for k := range profiles {
		stale[strings.TrimPrefix(k, model.ProfileKey(ProfilePrefix))] = true
	}
	for k := range records {
		stale[strings.TrimPrefix(k, model.NamespacePrefix)] = true
	}
	for name := range stale {
		if !seen[name] {
			keys = append(keys, name)
		}
	}
	return keys, len(nss), nil
}

// Sync makes namespace name's profile and record what the namespace says,
// or removes them when it is gone.
func (r *Reconciler) Sync(ctx context.Context, name string) error {
	pk, nk := model.ProfileKey(ProfileName(name)), model.NamespaceKey(name)
	ns, err := r.Lister.Get(name)
	if apierrors.IsNotFound(err) {
		var errs []error
		for _, k := range []string{pk, nk} {
			if err := ctrl.Remove(ctx, r.KV, r.Log, k, "namespace gone: record deleted", "namespace", name, "key", k); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	if err != nil {
		return err
	}
	p, perr := Render(ns)
	if perr != nil {
		r.Log.Warn("namespace annotation", "namespace", name, "err", perr)
	}
	if err := ctrl.Write(ctx, r.KV, r.Log, pk, p, "namespace profile written", "namespace", name, "inbound", len(p.Inbound)); err != nil {
		return err
	}
	if err := ctrl.Write(ctx, r.KV, r.Log, nk, Record(ns), "namespace labels written", "namespace", name, "labels", len(ns.Labels)); err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}
