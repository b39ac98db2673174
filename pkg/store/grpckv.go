package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GRPCKV is the clientv3 implementation, for resident programs that also watch.
type GRPCKV struct {
	Client  *clientv3.Client
	eps     []string
	timeout time.Duration
}

// NewGRPC dials etcd with clientv3. Dialing is lazy; calls fail with
// ErrUnavailable after the call timeout when etcd is down.
func NewGRPC(cfg Config) (*GRPCKV, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("no etcd endpoints configured")
	}
	tlsCfg, err := tlsConfig(cfg)
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
		return nil, &UnavailableError{Endpoints: cfg.Endpoints, Err: err}
	}
	t := cfg.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	return &GRPCKV{Client: c, eps: cfg.Endpoints, timeout: t}, nil
}

func (g *GRPCKV) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, g.timeout)
}

func (g *GRPCKV) wrap(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout) {
		return &UnavailableError{Endpoints: g.eps, Err: err}
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return &UnavailableError{Endpoints: g.eps, Err: err}
		}
	}
	return err
}

// Get implements KV.
func (g *GRPCKV) Get(ctx context.Context, key string) (*KeyValue, error) {
	ctx, cancel := g.ctx(ctx)
	defer cancel()
	r, err := g.Client.Get(ctx, key)
	if err != nil {
		return nil, g.wrap(err)
	}
	if len(r.Kvs) == 0 {
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	k := r.Kvs[0]
	return &KeyValue{Key: string(k.Key), Value: k.Value, ModRev: k.ModRevision, CreateRev: k.CreateRevision}, nil
}

// List implements KV.
func (g *GRPCKV) List(ctx context.Context, prefix string, keysOnly bool) ([]KeyValue, int64, error) {
	ctx, cancel := g.ctx(ctx)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	r, err := g.Client.Get(ctx, prefix, opts...)
	if err != nil {
		return nil, 0, g.wrap(err)
	}
	out := make([]KeyValue, len(r.Kvs))
	for i, k := range r.Kvs {
		out[i] = KeyValue{Key: string(k.Key), Value: k.Value, ModRev: k.ModRevision, CreateRev: k.CreateRevision}
	}
	return out, r.Header.Revision, nil
}

// Txn implements KV.
func (g *GRPCKV) Txn(ctx context.Context, cmps []Cmp, ops []Op) (*TxnResult, error) {
	ctx, cancel := g.ctx(ctx)
	defer cancel()
	cs := make([]clientv3.Cmp, len(cmps))
	for i, c := range cmps {
		cs[i] = clientv3.Compare(clientv3.ModRevision(c.Key), "=", c.ModRev)
	}
	os := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		var opts []clientv3.OpOption
		if o.Prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		switch o.Kind {
		case OpPut:
			os[i] = clientv3.OpPut(o.Key, string(o.Value))
		case OpDelete:
			os[i] = clientv3.OpDelete(o.Key, opts...)
		case OpGet:
			os[i] = clientv3.OpGet(o.Key, opts...)
		}
	}
	r, err := g.Client.Txn(ctx).If(cs...).Then(os...).Commit()
	if err != nil {
		return nil, g.wrap(err)
	}
	out := &TxnResult{Succeeded: r.Succeeded, Revision: r.Header.Revision}
	if r.Succeeded {
		for i, o := range ops {
			if o.Kind != OpGet {
				continue
			}
			var kvs []KeyValue
			for _, k := range r.Responses[i].GetResponseRange().Kvs {
				kvs = append(kvs, KeyValue{Key: string(k.Key), Value: k.Value, ModRev: k.ModRevision, CreateRev: k.CreateRevision})
			}
			out.Gets = append(out.Gets, kvs)
		}
	}
	return out, nil
}

// Close implements KV.
func (g *GRPCKV) Close() error { return g.Client.Close() }

func nopLogger() *zap.Logger { return zap.NewNop() }
