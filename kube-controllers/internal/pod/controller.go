package pod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listers "k8s.io/client-go/listers/core/v1"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrl"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Reconciler keeps the K8sPod records and the pods' endpoints' labels and
// named ports. Its queue keys are "namespace/pod".
type Reconciler struct {
	ctrl.Base[listers.PodLister]
}

// New registers the pod controller's informer with f. Pods are many; the
// informer keeps them without their managed fields.
func New(f informers.SharedInformerFactory, kv store.KV, log *slog.Logger) *ctrl.Controller {
	inf := f.Core().V1().Pods()
	_ = inf.Informer().SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(metav1.Object); ok {
			m.SetManagedFields(nil)
		}
		return obj, nil
	})
	c := ctrl.Register("pod", kv, log, inf, &Reconciler{}, func(p *corev1.Pod) string { return p.Namespace + "/" + p.Name })
	c.Workers = 4
	return c
}

// wanted says whether a pod gets a record: every pod but those on the
// host's network, which have no endpoint.
func wanted(p *corev1.Pod) bool { return !p.Spec.HostNetwork }

// endpointDiffers reports whether an endpoint's labels or named ports are
// not the pod's.
func endpointDiffers(ep *model.Endpoint, rec *model.K8sPod) bool {
	return !maps.Equal(ep.Labels, rec.Labels) || !slices.Equal(ep.Ports, rec.Ports)
}

// Diff compares the K8sPod records, and the labels and named ports of the
// pods' endpoints and member records, with the pods: a pod whose record is
// missing or differs, a record whose pod is gone (or on the host network),
// and a pod with an endpoint or member record that drifted are keys.
// Endpoints are read once per node that runs pods, not once per pod.
func (r *Reconciler) Diff(ctx context.Context) ([]string, int, error) {
	pods, err := r.Lister.List(labels.Everything())
	if err != nil {
		return nil, 0, err
	}
	records, err := ctrl.List(ctx, r.KV, model.K8sPodPrefix)
	if err != nil {
		return nil, 0, err
	}
	keys := map[string]bool{}
	want := map[string]bool{}
	byNode := map[string]map[string]*model.K8sPod{} // node -> "ns.pod" -> record
	n := 0
	for _, p := range pods {
		if !wanted(p) {
			continue
		}
		n++
		k := model.K8sPodKey(p.Namespace, p.Name)
		want[k] = true
		rec, _ := Record(p)
		if cur, ok := records[k]; !ok || !ctrl.Same(cur.Value, rec) {
			keys[p.Namespace+"/"+p.Name] = true
		}
		if node := p.Spec.NodeName; node != "" {
			if byNode[node] == nil {
				byNode[node] = map[string]*model.K8sPod{}
			}
			byNode[node][p.Namespace+"."+p.Name] = &rec
		}
	}
	for k := range records {
		if !want[k] {
			keys[strings.TrimPrefix(k, model.K8sPodPrefix)] = true
		}
	}
	if len(byNode) > 0 {
		members, err := ctrl.List(ctx, r.KV, model.MemberPrefix)
		if err != nil {
			return nil, 0, err
		}
		for node, recs := range byNode {
			eps, err := ctrl.List(ctx, r.KV, model.HostWorkloadPrefix(node)+model.OrchestratorK8s+"/")
			if err != nil {
				return nil, 0, err
			}
			for k, v := range eps {
				_, orch, wl, _, ok := model.ParseEndpointKey(k)
				rec := recs[wl]
				if !ok || orch != model.OrchestratorK8s || rec == nil {
					continue
				}
				var ep model.Endpoint
				if store.DecodeRecord(k, v.Value, &ep) != nil {
					continue
				}
				m, ok := members[model.MemberKeyOf(&ep)]
				if endpointDiffers(&ep, rec) || !ok || !ctrl.Same(m.Value, model.MemberOf(&ep)) {
					keys[rec.Namespace+"/"+rec.Name] = true
				}
			}
		}
	}
	return slices.Sorted(maps.Keys(keys)), n, nil
}

// Sync makes pod key's record what the pod says (or removes it when the
// pod is gone), then brings the labels and named ports of the pod's
// endpoints on its node, and their member records, in step.
func (r *Reconciler) Sync(ctx context.Context, key string) error {
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		return nil
	}
	rk := model.K8sPodKey(ns, name)
	p, err := r.Lister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) || err == nil && !wanted(p) {
		return ctrl.Remove(ctx, r.KV, r.Log, rk, "pod record deleted", "pod", key)
	}
	if err != nil {
		return err
	}
	rec, aerr := Record(p)
	if aerr != nil {
		r.Log.Warn("pod annotation", "pod", key, "err", aerr)
	}
	if err := ctrl.Write(ctx, r.KV, r.Log, rk, rec, "pod record written", "pod", key, "labels", len(rec.Labels), "ports", len(rec.Ports), "profiles", len(rec.Profiles)); err != nil {
		return err
	}
	if p.Spec.NodeName == "" {
		return nil
	}
	return r.syncEndpoints(ctx, p.Spec.NodeName, &rec)
}

// syncEndpoints fixes the labels and named ports of the pod's endpoints on
// host: each endpoint and its member record are written in one transaction
// that compares the endpoint's revision, so a CNI ADD or DEL in between is
// never overwritten; on a lost race the endpoint is read again.
func (r *Reconciler) syncEndpoints(ctx context.Context, host string, rec *model.K8sPod) error {
	ctx, cancel := context.WithTimeout(ctx, ctrl.CallTimeout)
	defer cancel()
	prefix := WorkloadPrefix(host, rec.Namespace, rec.Name)
	kvs, _, err := r.KV.List(ctx, prefix, false)
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	var errs []error
	for _, kv := range kvs {
		if _, _, _, _, ok := model.ParseEndpointKey(kv.Key); !ok {
			continue
		}
		if err := r.syncEndpoint(ctx, kv, rec); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Reconciler) syncEndpoint(ctx context.Context, cur store.KeyValue, rec *model.K8sPod) error {
	for range 10 {
		var ep model.Endpoint
		if err := store.DecodeRecord(cur.Key, cur.Value, &ep); err != nil {
			// Not a record this controller can fix; the node reports it.
			r.Log.Warn("endpoint unreadable; left alone", "key", cur.Key, "err", err)
			return nil
		}
		mk := model.MemberKeyOf(&ep)
		if !endpointDiffers(&ep, rec) {
			// The endpoint is right; its member record may still lag.
			m, err := r.KV.Get(ctx, mk)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("read %s: %w", mk, err)
			}
			if err == nil && ctrl.Same(m.Value, model.MemberOf(&ep)) {
				return nil
			}
		}
		ep.Labels, ep.Ports = rec.Labels, rec.Ports
		res, err := r.KV.Txn(ctx, []store.Cmp{{Key: cur.Key, ModRev: cur.ModRev}},
			[]store.Op{store.Put(cur.Key, store.MustJSON(&ep)), store.Put(mk, store.MustJSON(model.MemberOf(&ep)))})
		if err != nil {
			return fmt.Errorf("write %s: %w", cur.Key, err)
		}
		if res.Succeeded {
			r.Log.Info("endpoint labels written", "endpoint", cur.Key, "labels", len(ep.Labels), "ports", len(ep.Ports))
			return nil
		}
		next, err := r.KV.Get(ctx, cur.Key)
		if errors.Is(err, store.ErrNotFound) {
			return nil // deleted meanwhile (CNI DEL)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", cur.Key, err)
		}
		cur = *next
	}
	return fmt.Errorf("write %s: %w", cur.Key, store.ErrConflict)
}
