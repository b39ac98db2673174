package ctrl

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
)

type fakeRec struct {
	mu       sync.Mutex
	diffs    int
	diffErr  int // Diff fails this many times first
	keys     []string
	synced   []string
	failOnce map[string]bool
}

func (f *fakeRec) Diff(context.Context) ([]string, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.diffs++
	if f.diffErr > 0 {
		f.diffErr--
		return nil, 0, errors.New("etcd down")
	}
	return append([]string(nil), f.keys...), len(f.keys), nil
}

func (f *fakeRec) Sync(_ context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failOnce[key] {
		delete(f.failOnce, key)
		return errors.New("conflict")
	}
	f.synced = append(f.synced, key)
	return nil
}

func (f *fakeRec) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, k := range f.synced {
		if k == key {
			n++
		}
	}
	return n
}

// TestRun: the first pass is retried until Diff answers and its keys are
// synced before the controller is caught up; a failed key is retried; the
// periodic pass queues what Diff finds.
func TestRun(t *testing.T) {
	f := &fakeRec{diffErr: 2, keys: []string{"a", "b"}, failOnce: map[string]bool{"q": true}}
	c := New("test", slog.New(slog.NewTextHandler(io.Discard, nil)), f)
	c.RetryDelay = 10 * time.Millisecond
	c.Resync = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !c.CaughtUp() {
		if time.Now().After(deadline) {
			t.Fatal("never caught up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if f.count("a") < 1 || f.count("b") < 1 {
		t.Errorf("caught up before the first pass's keys were synced: %v", f.synced)
	}
	c.Enqueue("q") // fails once, then is retried
	for f.count("q") < 1 || f.count("a") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("retry or periodic pass missing: %v", f.synced)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

func TestSame(t *testing.T) {
	for _, c := range []struct {
		stored string
		want   model.K8sPod
		same   bool
	}{
		{`{"namespace":"x","name":"a","uid":"u","labels":{"b":"2","a":"1"}}`, model.K8sPod{Namespace: "x", Name: "a", UID: "u", Labels: map[string]string{"a": "1", "b": "2"}}, true},
		{`{"namespace":"x","name":"a","uid":"u","labels":{},"ports":[]}`, model.K8sPod{Namespace: "x", Name: "a", UID: "u"}, true},
		{`{"namespace":"x","name":"a","uid":"u"}`, model.K8sPod{Namespace: "x", Name: "a", UID: "v"}, false},
		{`not json`, model.K8sPod{}, false},
	} {
		if got := Same([]byte(c.stored), c.want); got != c.same {
			t.Errorf("Same(%s, %+v) = %v", c.stored, c.want, got)
		}
	}
}
