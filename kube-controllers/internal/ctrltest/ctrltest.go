// Package ctrltest is what the controllers' tests share: a real etcd and a
// store client on it, a controller run against a fake API server until it
// has caught up, and waiting for a condition.
package ctrltest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrl"
	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// Store starts an etcd for the test and returns a client on it and a
// context, both ended when the test ends.
func Store(t *testing.T) (context.Context, store.KV) {
	t.Helper()
	e := etcdtest.Start(t)
	kv, err := etcdv3.New(store.Config{Endpoints: e.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx, kv
}

// Run makes a controller with newCtrl (a package's New) on cs and kv,
// runs it until ctx ends and waits until it has caught up.
func Run(t *testing.T, ctx context.Context, cs kubernetes.Interface, kv store.KV,
	newCtrl func(informers.SharedInformerFactory, store.KV, *slog.Logger) *ctrl.Controller) *ctrl.Controller {
	t.Helper()
	f := informers.NewSharedInformerFactory(cs, 0)
	c := newCtrl(f, kv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	f.Start(ctx.Done())
	go c.Run(ctx)
	Eventually(t, "caught up", func() error {
		if !c.CaughtUp() {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	return c
}

// Get reads the record at key as a T: nil (and no error) when there is
// none.
func Get[T any](ctx context.Context, kv store.KV, key string) (*T, error) {
	var v T
	if _, err := store.GetJSON(ctx, kv, key, &v); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	return &v, nil
}

// Eventually calls f until it returns nil, failing the test with what and
// f's last error after 10 s.
func Eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
