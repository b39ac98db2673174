// Package ctrl is the plumbing the controllers of tabby-kube-controllers
// share: informer events turned into queue keys, one work queue per
// controller, a first full comparison of etcd against the informer caches
// before the controller counts as caught up, the same comparison again
// every resync period, and compare-and-write helpers for etcd records.
//
// A controller supplies a Reconciler. Sync makes the records of one queue
// key agree with the cache (writing only what differs); Diff compares every
// record the controller owns in etcd against the caches and names the keys
// that differ or are stale, so that a restart or an outage is repaired key
// by key, never by deleting everything first.
package ctrl

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/tabby-net/tabby/pkg/store"
)

// Reconciler is what a controller does with its keys.
type Reconciler interface {
	// Sync makes etcd's records of key agree with the informer cache.
	Sync(ctx context.Context, key string) error
	// Diff compares every record the controller owns in etcd with the
	// informer caches and returns the keys whose records differ, are
	// missing or are stale, and how many objects the caches hold.
	Diff(ctx context.Context) (keys []string, objects int, err error)
}

// Controller runs a Reconciler.
type Controller struct {
	name     string
	log      *slog.Logger
	r        Reconciler
	synced   []cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	caughtUp atomic.Bool
	// Resync is how often everything is compared again: the safety net
	// for writes lost to an etcd outage or records changed by hand.
	Resync time.Duration
	// Workers is how many keys are synced at once (never the same key
	// twice at once: the queue guarantees that).
	Workers int
	// RetryDelay is the pause between failed attempts at the first pass.
	RetryDelay time.Duration
}

// RateLimiter retries a failed key after 5 ms, doubling up to 30 s (not
// the client-go default's 1000 s: after an etcd outage every key should be
// retried soon).
func RateLimiter() workqueue.TypedRateLimiter[string] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, 30*time.Second)
}

// New makes a controller named name (for logs and the queue's metrics).
func New(name string, log *slog.Logger, r Reconciler) *Controller {
	return &Controller{name: name, log: log.With("controller", name), r: r,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(RateLimiter(),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
		Resync: 5 * time.Minute, Workers: 1, RetryDelay: 2 * time.Second}
}

// Log is the controller's logger.
func (c *Controller) Log() *slog.Logger { return c.log }

// Watch feeds inf's events to the queue: keyOf turns an object (already
// unwrapped from a DeletedFinalStateUnknown) into its queue keys. The
// controller waits for inf's cache before its first pass.
func (c *Controller) Watch(inf cache.SharedIndexInformer, keyOf func(obj any) []string) {
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		for _, k := range keyOf(obj) {
			c.queue.Add(k)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, n any) { enqueue(n) },
		DeleteFunc: enqueue,
	})
	c.synced = append(c.synced, inf.HasSynced)
}

// Base is what a controller's Reconciler holds (embedded): the store, the
// lister of its informer's cache and the controller's logger. Register
// fills it in.
type Base[L any] struct {
	KV     store.KV
	Lister L
	Log    *slog.Logger
}

func (b *Base[L]) base() *Base[L] { return b }

// Informer is a typed informer of client-go's informer factories.
type Informer[L any] interface {
	Informer() cache.SharedIndexInformer
	Lister() L
}

// Register makes the controller named name for r (a Reconciler embedding
// Base, which it fills in with kv, inf's lister and the controller's
// logger) and feeds it inf's events: an object of type T is the one key
// keyOf names, other objects are no key.
func Register[L, T any](name string, kv store.KV, log *slog.Logger, inf Informer[L], r interface {
	Reconciler
	base() *Base[L]
}, keyOf func(T) string) *Controller {
	c := New(name, log, r)
	*r.base() = Base[L]{KV: kv, Lister: inf.Lister(), Log: c.Log()}
	c.Watch(inf.Informer(), func(obj any) []string {
		if o, ok := obj.(T); ok {
			return []string{keyOf(o)}
		}
		return nil
	})
	return c
}

// Enqueue asks for key to be synced.
func (c *Controller) Enqueue(key string) { c.queue.Add(key) }

// CaughtUp says whether the first full pass has been written.
func (c *Controller) CaughtUp() bool { return c.caughtUp.Load() }

// Run works until ctx ends. The first pass syncs every key Diff names
// before the workers start, so "caught up" means etcd held what the caches
// said at that point; later passes only queue the keys they find.
func (c *Controller) Run(ctx context.Context) {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		n, fixed, err := c.firstPass(ctx)
		if err == nil {
			c.log.Info("synced", "objects", n, "fixed", fixed)
			c.caughtUp.Store(true)
			break
		}
		c.log.Warn("first sync failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.RetryDelay):
		}
	}
	if c.Resync > 0 {
		go c.resyncLoop(ctx)
	}
	workers := max(c.Workers, 1)
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for c.next(ctx) {
			}
		}()
	}
	for range workers {
		<-done
	}
}

// resyncLoop compares everything again every Resync and queues the keys
// that differ; the workers write them.
func (c *Controller) resyncLoop(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		// The first pass just ran: skip the immediate call.
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.Resync):
		}
		keys, _, err := c.r.Diff(ctx)
		if err != nil {
			c.log.Warn("periodic sync", "err", err)
			return
		}
		if len(keys) > 0 {
			c.log.Info("periodic sync: records differ", "keys", len(keys))
		}
		for _, k := range keys {
			c.queue.Add(k)
		}
	}, 0)
}

func (c *Controller) firstPass(ctx context.Context) (int, int, error) {
	keys, n, err := c.r.Diff(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, k := range keys {
		if err := c.r.Sync(ctx, k); err != nil {
			return 0, 0, err
		}
	}
	return n, len(keys), nil
}

func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.r.Sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			c.log.Warn("sync", "key", key, "err", err)
			c.queue.AddRateLimited(key)
		}
		return true
	}
	c.queue.Forget(key)
	return true
}
