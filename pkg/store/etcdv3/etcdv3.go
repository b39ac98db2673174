// Package etcdv3 is the clientv3 implementation of store.KV, for resident
// programs (tabby-node, tabbyctl) that also need watches. The CNI plugins use
// store.HTTPKV instead to keep gRPC out of their start-up.
package etcdv3

import (
	"context"
	"errors"
	"fmt"
	"github.com/tabby-net/tabby/pkg/store"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GRPCKV is the clientv3 implementation, for resident programs that also watch.
type KV struct {
	Client  *clientv3.Client
	eps     []string
	timeout time.Duration
}

// New dials etcd with clientv3. Dialing is lazy; calls fail with
// ErrUnavailable after the call timeout when etcd is down.
func New(cfg store.Config) (*KV, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("no etcd endpoints configured")
	}
	tlsCfg, err := store.TLSConfig(cfg)
	if err != nil {
		return nil, err
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		Logger:               nopLogger(),
	})
	if err != nil {
		return nil, &store.UnavailableError{Endpoints: cfg.Endpoints, Err: err}
	}
	t := cfg.Timeout
	if t == 0 {
		t = store.DefaultTimeout
	}
	return &KV{Client: c, eps: cfg.Endpoints, timeout: t}, nil
}

func (g *KV) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	// The per-call bound applies even under a longer caller deadline: a dead
	// etcd must surface as an error in seconds, not at the caller's deadline.
	return context.WithTimeout(ctx, g.timeout)
}

func (g *KV) wrap(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout) {
		return &store.UnavailableError{Endpoints: g.eps, Err: err}
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return &store.UnavailableError{Endpoints: g.eps, Err: err}
		}
	}
	return err
}

// Get implements store.KV.
func (g *KV) Get(ctx context.Context, key string) (*store.KeyValue, error) {
	ctx, cancel := g.ctx(ctx)
	defer cancel()
	r, err := g.Client.Get(ctx, key)
	if err != nil {
		return nil, g.wrap(err)
	}
	if len(r.Kvs) == 0 {
		return nil, fmt.Errorf("%s: %w", key, store.ErrNotFound)
	}
	k := r.Kvs[0]
	return &store.KeyValue{Key: string(k.Key), Value: k.Value, ModRev: k.ModRevision, CreateRev: k.CreateRevision}, nil
}

// ListPageSize is how many keys one range request of List returns. A
// prefix that holds a whole cluster's records (a million endpoints) read in
// one request would hold etcd's read transaction and hundreds of MB of
// memory at once, and lift every other client's latency for its duration;
// pages read at the first page's revision give the same consistent
// snapshot.
var ListPageSize = 2000

// List implements store.KV.
func (g *KV) List(ctx context.Context, prefix string, keysOnly bool) ([]store.KeyValue, int64, error) {
	var out []store.KeyValue
	rev, err := store.Walk(ctx, g, prefix, store.WalkOptions{Limit: ListPageSize, KeysOnly: keysOnly, Snapshot: true}, func(p *store.Page) error {
		out = append(out, p.KVs...)
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, rev, nil
}

// ListPage implements store.KV.
func (g *KV) ListPage(ctx context.Context, prefix string, opt store.PageOptions) (*store.Page, error) {
	start, end, limit, err := store.PageRange(prefix, opt)
	if err != nil {
		return nil, err
	}
	opts := []clientv3.OpOption{clientv3.WithRange(string(end)), clientv3.WithLimit(limit)}
	if opt.KeysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if opt.Rev != 0 {
		opts = append(opts, clientv3.WithRev(opt.Rev))
	}
	// The call bound is per page: a long walk is not a dead etcd.
	pctx, cancel := g.ctx(ctx)
	defer cancel()
	r, err := g.Client.Get(pctx, start, opts...)
	if err != nil {
		return nil, g.wrap(err)
	}
	kvs := make([]store.KeyValue, len(r.Kvs))
	for i, k := range r.Kvs {
		kvs[i] = store.KeyValue{Key: string(k.Key), Value: k.Value, ModRev: k.ModRevision, CreateRev: k.CreateRevision}
	}
	return store.NewPage(kvs, r.Header.Revision, r.More, r.Count, opt), nil
}

// Txn implements store.KV.
func (g *KV) Txn(ctx context.Context, cmps []store.Cmp, ops []store.Op) (*store.TxnResult, error) {
	ctx, cancel := g.ctx(ctx)
	defer cancel()
	cs := make([]clientv3.Cmp, len(cmps))
	for i, c := range cmps {
		cs[i] = clientv3.Compare(clientv3.ModRevision(c.Key), "=", c.ModRev)
	}
	rops := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		var opts []clientv3.OpOption
		if o.Prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		switch o.Kind {
		case store.OpPut:
			rops[i] = clientv3.OpPut(o.Key, string(o.Value))
		case store.OpDelete:
			rops[i] = clientv3.OpDelete(o.Key, opts...)
		case store.OpGet:
			rops[i] = clientv3.OpGet(o.Key, opts...)
		}
	}
	r, err := g.Client.Txn(ctx).If(cs...).Then(rops...).Commit()
	if err != nil {
		return nil, g.wrap(err)
	}
	out := &store.TxnResult{Succeeded: r.Succeeded, Revision: r.Header.Revision}
	if r.Succeeded {
		for i, o := range ops {
			if o.Kind != store.OpGet {
				continue
			}
			var kvs []store.KeyValue
			for _, k := range r.Responses[i].GetResponseRange().Kvs {
				kvs = append(kvs, store.KeyValue{Key: string(k.Key), Value: k.Value, ModRev: k.ModRevision, CreateRev: k.CreateRevision})
			}
			out.Gets = append(out.Gets, kvs)
		}
	}
	return out, nil
}

// Close implements store.KV.
func (g *KV) Close() error { return g.Client.Close() }

func nopLogger() *zap.Logger { return zap.NewNop() }

// FromClient wraps an existing client (tests dial etcd inside a lab namespace).
func FromClient(c *clientv3.Client, eps []string) *KV {
	return &KV{Client: c, eps: eps, timeout: store.DefaultTimeout}
}
