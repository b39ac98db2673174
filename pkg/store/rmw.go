package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// MaxAttempts bounds how often a read-modify-write retries after losing a race.
const MaxAttempts = 100

// ReadSet is what ReadModifyWrite read: key -> value (absent keys are missing).
type ReadSet map[string]*KeyValue

// Rev returns the mod revision of key, or 0 when it did not exist.
func (r ReadSet) Rev(key string) int64 {
	if kv := r[key]; kv != nil {
		return kv.ModRev
	}
	return 0
}

// Decode unmarshals key into v and reports whether it existed.
func (r ReadSet) Decode(key string, v any) (bool, error) {
	kv := r[key]
	if kv == nil {
		return false, nil
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return true, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

// ErrAbort, returned by a modify function, ends ReadModifyWrite without writing
// and without error.
var ErrAbort = errors.New("abort")

// ReadModifyWrite is the one compare-and-swap loop in tabby: it reads keys in
// one round trip, asks modify for the writes, and commits them only if none of
// the keys changed since the read; on a lost race it reads again. modify may
// be called several times and must not have side effects.
func ReadModifyWrite(ctx context.Context, kv KV, keys []string, modify func(ReadSet) ([]Op, error)) (int64, error) {
	gets := make([]Op, len(keys))
	for i, k := range keys {
		gets[i] = Get(k)
	}
	for attempt := 0; attempt < MaxAttempts; attempt++ {
		res, err := kv.Txn(ctx, nil, gets)
		if err != nil {
			return 0, err
		}
		rs := ReadSet{}
		for i, k := range keys {
			if len(res.Gets[i]) > 0 {
				v := res.Gets[i][0]
				rs[k] = &v
			}
		}
		ops, err := modify(rs)
		if errors.Is(err, ErrAbort) {
			return res.Revision, nil
		}
		if err != nil {
			return 0, err
		}
		if len(ops) == 0 {
			return res.Revision, nil
		}
		cmps := make([]Cmp, len(keys))
		for i, k := range keys {
			cmps[i] = Cmp{Key: k, ModRev: rs.Rev(k)}
		}
		out, err := kv.Txn(ctx, cmps, ops)
		if err != nil {
			return 0, err
		}
		if out.Succeeded {
			return out.Revision, nil
		}
		// Lost a race: back off a little, with jitter, so that many writers on
		// one key do not retry in lockstep.
		d := time.Duration(rand.IntN(1+attempt*2)) * time.Millisecond
		select {
		case <-ctx.Done():
			return 0, &UnavailableError{Err: ctx.Err()}
		case <-time.After(d):
		}
	}
	return 0, ErrConflict
}

// Update reads one JSON record, lets fn change it, and writes it back if
// nobody changed it meanwhile. fn gets exists=false for a missing key; it
// returns the new value, or nil to delete the key, or ErrAbort to leave it.
func Update[T any](ctx context.Context, kv KV, key string, fn func(cur *T, exists bool) (*T, error)) error {
	_, err := ReadModifyWrite(ctx, kv, []string{key}, func(rs ReadSet) ([]Op, error) {
		cur := new(T)
		exists, err := rs.Decode(key, cur)
		if err != nil {
			return nil, err
		}
		next, err := fn(cur, exists)
		if err != nil {
			return nil, err
		}
		if next == nil {
			if !exists {
				return nil, nil
			}
			return []Op{Delete(key)}, nil
		}
		b, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		return []Op{Put(key, b)}, nil
	})
	return err
}

// GetJSON reads one record into v.
func GetJSON(ctx context.Context, kv KV, key string, v any) (int64, error) {
	r, err := kv.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(r.Value, v); err != nil {
		return 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return r.ModRev, nil
}

// PutJSON writes v unconditionally; only for records with a single writer.
func PutJSON(ctx context.Context, kv KV, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = kv.Txn(ctx, nil, []Op{Put(key, b)})
	return err
}

// MustJSON marshals records tabby itself defines; they cannot fail to encode.
func MustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err))
	}
	return b
}

// ListJSON decodes every record under prefix with decode.
func ListJSON[T any](ctx context.Context, kv KV, prefix string) ([]T, error) {
	kvs, _, err := kv.List(ctx, prefix, false)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(kvs))
	for _, r := range kvs {
		var v T
		if err := json.Unmarshal(r.Value, &v); err != nil {
			return nil, fmt.Errorf("decode %s: %w", r.Key, err)
		}
		out = append(out, v)
	}
	return out, nil
}
