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
	kv     store.KV
	log    *slog.Logger
	lister listers.NamespaceLister
}

// New registers the namespace controller's informer with f.
func New(f informers.SharedInformerFactory, kv store.KV, log *slog.Logger) *ctrl.Controller {
	inf := f.Core().V1().Namespaces()
	r := &Reconciler{kv: kv, lister: inf.Lister()}
	c := ctrl.New("namespace", log, r)
	r.log = c.Log()
	c.Watch(inf.Informer(), func(obj any) []string {
		if ns, ok := obj.(*corev1.Namespace); ok {
			return []string{ns.Name}
		}
		return nil
	})
	return c
}

// Diff compares the k8s_ns.* profiles and the namespace records with the
// namespaces: a namespace whose records differ or are missing, and one
// that is gone but still has a record, is a key to sync.
func (r *Reconciler) Diff(ctx context.Context) ([]string, int, error) {
	nss, err := r.lister.List(labels.Everything())
	if err != nil {
		return nil, 0, err
	}
	profiles, err := ctrl.List(ctx, r.kv, model.ProfileKey(ProfilePrefix))
	if err != nil {
		return nil, 0, err
	}
	records, err := ctrl.List(ctx, r.kv, model.NamespacePrefix)
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
	ns, err := r.lister.Get(name)
	if apierrors.IsNotFound(err) {
		var errs []error
		for _, k := range []string{pk, nk} {
			if gone, err := ctrl.Delete(ctx, r.kv, k, nil); err != nil {
				errs = append(errs, err)
			} else if gone {
				r.log.Info("namespace gone: record deleted", "namespace", name, "key", k)
			}
		}
		return errors.Join(errs...)
	}
	if err != nil {
		return err
	}
	p, perr := Render(ns)
	if perr != nil {
		r.log.Warn("namespace annotation", "namespace", name, "err", perr)
	}
	if wrote, err := ctrl.Put(ctx, r.kv, pk, p, nil); err != nil {
		return err
	} else if wrote {
		r.log.Info("namespace profile written", "namespace", name, "inbound", len(p.Inbound))
	}
	if wrote, err := ctrl.Put(ctx, r.kv, nk, Record(ns), nil); err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	} else if wrote {
		r.log.Info("namespace labels written", "namespace", name, "labels", len(ns.Labels))
	}
	return nil
}
