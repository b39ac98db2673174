package ctrl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tabby-net/tabby/pkg/store"
)

// CallTimeout bounds one key's reads and writes.
const CallTimeout = 10 * time.Second

// attempts bounds the compare-and-write retries of one key.
const attempts = 10

// ErrNotOurs is returned when a guard refuses to let a record be changed.
var ErrNotOurs = errors.New("the record belongs to someone else; left alone")

// Guard says whether the stored record cur may be replaced or deleted.
type Guard func(cur *store.KeyValue) bool

// Same reports whether the stored value cur, read back as a T, is want.
// Both go through one JSON encoding, so a missing and an empty list or map
// (omitted alike) and a map's key order compare equal; a value that does
// not decode is never the same.
func Same[T any](cur []byte, want T) bool {
	var v T
	if err := json.Unmarshal(cur, &v); err != nil {
		return false
	}
	a, err1 := json.Marshal(v)
	b, err2 := json.Marshal(want)
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}

// Put makes key hold want. It writes only when the stored value differs
// (Same), compares the revision it read so that a concurrent change is
// never overwritten unseen, and retries on a lost race. guard (nil: any)
// may refuse to replace an existing record: ErrNotOurs. It reports whether
// it wrote.
func Put[T any](ctx context.Context, kv store.KV, key string, want T, guard Guard) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	val, err := json.Marshal(want)
	if err != nil {
		return false, err
	}
	for range attempts {
		cur, err := kv.Get(ctx, key)
		var rev int64
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return false, fmt.Errorf("read %s: %w", key, err)
		default:
			if Same(cur.Value, want) {
				return false, nil
			}
			if guard != nil && !guard(cur) {
				return false, ErrNotOurs
			}
			rev = cur.ModRev
		}
		r, err := kv.Txn(ctx, []store.Cmp{{Key: key, ModRev: rev}}, []store.Op{store.Put(key, val)})
		if err != nil {
			return false, fmt.Errorf("write %s: %w", key, err)
		}
		if r.Succeeded {
			return true, nil
		}
	}
	return false, fmt.Errorf("write %s: %w", key, store.ErrConflict)
}

// Delete removes key if it exists and guard (nil: any) lets it, comparing
// the revision it read. It reports whether it deleted; a refusal is
// ErrNotOurs.
func Delete(ctx context.Context, kv store.KV, key string, guard Guard) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	for range attempts {
		cur, err := kv.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read %s: %w", key, err)
		}
		if guard != nil && !guard(cur) {
			return false, ErrNotOurs
		}
		r, err := kv.Txn(ctx, []store.Cmp{{Key: key, ModRev: cur.ModRev}}, []store.Op{store.Delete(key)})
		if err != nil {
			return false, fmt.Errorf("delete %s: %w", key, err)
		}
		if r.Succeeded {
			return true, nil
		}
	}
	return false, fmt.Errorf("delete %s: %w", key, store.ErrConflict)
}

// Write is Put of a record of any owner that logs msg (with args) when it
// wrote.
func Write[T any](ctx context.Context, kv store.KV, log *slog.Logger, key string, want T, msg string, args ...any) error {
	wrote, err := Put(ctx, kv, key, want, nil)
	if wrote {
		log.Info(msg, args...)
	}
	return err
}

// Remove is Delete of a record of any owner that logs msg (with args) when
// it deleted.
func Remove(ctx context.Context, kv store.KV, log *slog.Logger, key string, msg string, args ...any) error {
	gone, err := Delete(ctx, kv, key, nil)
	if gone {
		log.Info(msg, args...)
	}
	return err
}

// List reads every record under prefix into a map by key.
func List(ctx context.Context, kv store.KV, prefix string) (map[string]store.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	kvs, _, err := kv.List(ctx, prefix, false)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make(map[string]store.KeyValue, len(kvs))
	for _, r := range kvs {
		out[r.Key] = r
	}
	return out, nil
}
