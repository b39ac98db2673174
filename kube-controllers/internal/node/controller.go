// Package node retires the tabby host of a Kubernetes Node that is
// deleted: the cluster autoscaler and operators delete Nodes whose
// machines are gone for good, and such a machine made no DELs. Its
// endpoints would stay in other hosts' tag sets, its addresses and blocks
// out of the pools, its record in every node's host list (package
// retire). Only hosts whose tabby-node named its Node (--k8s-node-ref, set
// by the DaemonSet) are retired, never a host registered outside
// Kubernetes.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listers "k8s.io/client-go/listers/core/v1"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrl"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/retire"
	"github.com/tabby-net/tabby/pkg/store"
)

// Reconciler's queue keys are Node names.
type Reconciler struct {
	ctrl.Base[listers.NodeLister]
}

// New registers the node controller's informer with f.
func New(f informers.SharedInformerFactory, kv store.KV, log *slog.Logger) *ctrl.Controller {
	return ctrl.Register("node", kv, log, f.Core().V1().Nodes(), &Reconciler{}, func(n *corev1.Node) string { return n.Name })
}

// Diff names the Nodes that are gone while a host that is them is still
// registered (the controller was away when they were deleted).
func (r *Reconciler) Diff(ctx context.Context) ([]string, int, error) {
	nodes, err := r.Lister.List(labels.Everything())
	if err != nil {
		return nil, 0, err
	}
	if len(nodes) == 0 {
		// A cluster with no Node at all is more likely the wrong API
		// server, or an empty restore, than one whose every machine is
		// gone: retiring every host would cut every workload off.
		r.Log.Warn("no Nodes in the API: removing no host")
		return nil, 0, nil
	}
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		seen[n.Name] = true
	}
	hosts, err := r.hosts(ctx)
	if err != nil {
		return nil, 0, err
	}
	var keys []string
	for node := range hosts {
		if !seen[node] {
			keys = append(keys, node)
		}
	}
	return keys, len(nodes), nil
}

// hosts maps each Node name that registered hosts name to those hosts.
func (r *Reconciler) hosts(ctx context.Context) (map[string][]string, error) {
	records, err := ctrl.List(ctx, r.KV, model.NodePrefix)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, rec := range records {
		var h model.Host
		if err := store.DecodeRecord(rec.Key, rec.Value, &h); err != nil {
			r.Log.Warn("host record", "key", rec.Key, "err", err)
			continue
		}
		if h.K8sNode != "" {
			out[h.K8sNode] = append(out[h.K8sNode], h.Name)
		}
	}
	return out, nil
}

// Sync retires the hosts that are Node name, once the Node is gone.
func (r *Reconciler) Sync(ctx context.Context, name string) error {
	if _, err := r.Lister.Get(name); err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	if nodes, err := r.Lister.List(labels.Everything()); err != nil || len(nodes) == 0 {
		return err // as in Diff: no Node at all is no reason to retire
	}
	hosts, err := r.hosts(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hosts[name] {
		rep, err := retire.Host(ctx, r.KV, h)
		if err != nil {
			errs = append(errs, fmt.Errorf("retire host %s of deleted Node %s: %w", h, name, err))
			continue
		}
		d := rep.IPAM
		r.Log.Info("Node deleted: host removed from etcd", "node", name, "host", h, "endpoints", len(rep.Endpoints),
			"handles", len(d.Released), "blocks", rep.Blocks, "unaffined", d.Unaffined)
	}
	return errors.Join(errs...)
}
