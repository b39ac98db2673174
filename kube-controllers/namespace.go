package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// Annotations on a Namespace that choose its pods' isolation.
const (
	// AnnotationIsolation "namespace": pods of the namespace accept
	// traffic only from each other (the seed's profile semantics); absent:
	// Kubernetes' default, pods are not isolated.
	AnnotationIsolation = "tabby.io/isolation"
	// AnnotationAllowFrom lists other namespaces, comma separated, whose
	// pods an isolated namespace also accepts.
	AnnotationAllowFrom = "tabby.io/allow-from-namespaces"
)

// NamespaceProfilePrefix starts the profile the CNI plugin gives every pod
// of a namespace: k8s_ns.<namespace>. This controller owns those profiles
// and no others.
const NamespaceProfilePrefix = "k8s_ns."

// namespaceProfile is the profile the pods of ns get. An annotation it
// cannot read isolates the namespace (fail closed) and is reported.
func namespaceProfile(ns *corev1.Namespace) (model.Profile, error) {
	name := NamespaceProfilePrefix + ns.Name
	allowAll := model.Profile{Name: name,
		Inbound:  []model.Rule{{Action: model.ActionAllow}},
		Outbound: []model.Rule{{Action: model.ActionAllow}}}
	iso, hasIso := ns.Annotations[AnnotationIsolation]
	from, hasFrom := ns.Annotations[AnnotationAllowFrom]
	if !hasIso {
		if hasFrom {
			return model.DefaultProfile(name), fmt.Errorf("namespace %s: %s needs %s: namespace; isolating it meanwhile", ns.Name, AnnotationAllowFrom, AnnotationIsolation)
		}
		return allowAll, nil
	}
	p := model.DefaultProfile(name)
	if strings.TrimSpace(iso) != "namespace" {
		return p, fmt.Errorf("namespace %s: %s %q: the value is \"namespace\" (or no annotation); isolating it meanwhile", ns.Name, AnnotationIsolation, iso)
	}
	for _, o := range strings.Split(from, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if err := model.ValidName(NamespaceProfilePrefix + o); err != nil {
			return model.DefaultProfile(name), fmt.Errorf("namespace %s: %s: %q: %v; isolating it meanwhile", ns.Name, AnnotationAllowFrom, o, err)
		}
		p.Inbound = append(p.Inbound, model.Rule{Action: model.ActionAllow, SrcTag: NamespaceProfilePrefix + o})
	}
	return p, nil
}

// NamespaceController keeps the k8s_ns.<namespace> profiles in etcd equal
// to the cluster's namespaces. One worker owns the writes, so a namespace's
// profile is never written by two goroutines at once.
type NamespaceController struct {
	kv     store.KV
	log    *slog.Logger
	lister listers.NamespaceLister
	synced cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[string]
	// caughtUp is set once the first full pass has been written.
	caughtUp atomic.Bool
	// Resync is how often every namespace and every k8s_ns.* profile is
	// compared again (the safety net for writes lost to an etcd outage or
	// made by hand).
	Resync time.Duration
}

// NewNamespaceController registers the controller's informer with f.
func NewNamespaceController(f informers.SharedInformerFactory, kv store.KV, log *slog.Logger) *NamespaceController {
	inf := f.Core().V1().Namespaces()
	c := &NamespaceController{kv: kv, log: log.With("controller", "namespace"), lister: inf.Lister(),
		synced: inf.Informer().HasSynced,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "namespaces"}),
		Resync: 5 * time.Minute}
	enqueue := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			c.queue.Add(ns.Name)
		} else if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			if ns, ok := d.Obj.(*corev1.Namespace); ok {
				c.queue.Add(ns.Name)
			}
		}
	}
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, n any) { enqueue(n) },
		DeleteFunc: enqueue,
	})
	return c
}

// CaughtUp says whether every namespace's profile has been written once
// since start.
func (c *NamespaceController) CaughtUp() bool { return c.caughtUp.Load() }

// Run works until ctx ends.
func (c *NamespaceController) Run(ctx context.Context) {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced) {
		return
	}
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	// The first full pass runs before the worker starts, so "caught up"
	// means every namespace known at start has its profile.
	for {
		n, err := c.fullPass(ctx)
		if err == nil {
			c.log.Info("synced namespaces", "namespaces", n)
			c.caughtUp.Store(true)
			break
		}
		c.log.Warn("first sync failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		if _, err := c.fullPass(ctx); err != nil {
			c.log.Warn("periodic sync", "err", err)
		}
	}, c.Resync)
	for c.next(ctx) {
	}
}

func (c *NamespaceController) next(ctx context.Context) bool {
	name, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(name)
	if err := c.sync(ctx, name); err != nil {
		c.log.Warn("sync namespace", "namespace", name, "err", err)
		c.queue.AddRateLimited(name)
		return true
	}
	c.queue.Forget(name)
	return true
}

// fullPass syncs every namespace and removes profiles of namespaces that
// are gone (deleted while the controller was down).
func (c *NamespaceController) fullPass(ctx context.Context) (int, error) {
	nss, err := c.lister.List(everything)
	if err != nil {
		return 0, err
	}
	want := map[string]bool{}
	for _, ns := range nss {
		want[ns.Name] = true
		if err := c.sync(ctx, ns.Name); err != nil {
			return 0, err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	kvs, _, err := c.kv.List(cctx, model.ProfilePrefix+NamespaceProfilePrefix, true)
	if err != nil {
		return 0, fmt.Errorf("list namespace profiles: %w", err)
	}
	for _, kv := range kvs {
		ns := strings.TrimPrefix(kv.Key, model.ProfilePrefix+NamespaceProfilePrefix)
		if !want[ns] {
			if err := c.sync(ctx, ns); err != nil {
				return 0, err
			}
		}
	}
	return len(nss), nil
}

// sync makes namespace name's profile what the namespace says, writing
// only when it differs.
func (c *NamespaceController) sync(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	key := model.ProfileKey(NamespaceProfilePrefix + name)
	ns, err := c.lister.Get(name)
	if apierrors.IsNotFound(err) {
		if _, err := c.kv.Get(ctx, key); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return fmt.Errorf("read %s: %w", key, err)
		}
		if _, err := c.kv.Txn(ctx, nil, []store.Op{store.Delete(key)}); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		c.log.Info("namespace gone: profile deleted", "namespace", name)
		return nil
	}
	if err != nil {
		return err
	}
	want, perr := namespaceProfile(ns)
	if perr != nil {
		c.log.Warn("namespace annotation", "namespace", name, "err", perr)
	}
	var cur model.Profile
	if _, err := store.GetJSON(ctx, c.kv, key, &cur); err == nil && reflect.DeepEqual(normalize(cur), normalize(want)) {
		return nil
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if err := store.PutJSON(ctx, c.kv, key, want); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	c.log.Info("namespace profile written", "namespace", name, "inbound", len(want.Inbound))
	return nil
}

// normalize makes nil and empty rule lists compare equal.
func normalize(p model.Profile) model.Profile {
	if len(p.Inbound) == 0 {
		p.Inbound = nil
	}
	if len(p.Outbound) == 0 {
		p.Outbound = nil
	}
	return p
}
