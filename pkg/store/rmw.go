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

// ReadSet is what one attempt of ReadModifyWrite read. Every key read through
// it (present or absent) is compared at commit, so the writes apply only to the
// exact state the decision was made on.
type ReadSet struct {
	ctx  context.Context
	kv   KV
	vals map[string]*KeyValue // nil value: read and absent
	Rev  int64                // store revision of the first read
	// offline: a speculative attempt that may not read (CommitFrom).
	offline bool
}

// Offline reports whether this is a speculative attempt that may not read.
func (r *ReadSet) Offline() bool { return r.offline }

// Values copies what was read (nil: absent).
func (r *ReadSet) Values() map[string]*KeyValue {
	out := make(map[string]*KeyValue, len(r.vals))
	for k, v := range r.vals {
		out[k] = v
	}
	return out
}

// ErrNeedRead is what a speculative attempt returns when the decision needs
// a key its seed does not hold.
var ErrNeedRead = errors.New("speculative attempt needs a read")

// ModRev returns the mod revision of key as read, or 0 when absent.
func (r *ReadSet) ModRev(key string) int64 {
	if kv := r.vals[key]; kv != nil {
		return kv.ModRev
	}
	return 0
}

// Fetch reads the keys not read yet, all in one round trip.
func (r *ReadSet) Fetch(keys ...string) error {
	var ops []Op
	var want []string
	for _, k := range keys {
		if _, ok := r.vals[k]; ok {
			continue
		}
		ops = append(ops, Get(k))
		want = append(want, k)
	}
	if len(ops) == 0 {
		return nil
	}
	if r.offline {
		return ErrNeedRead
	}
	res, err := r.kv.Txn(r.ctx, nil, ops)
	if err != nil {
		return err
	}
	if r.Rev == 0 {
		r.Rev = res.Revision
	}
	for i, k := range want {
		r.vals[k] = nil
		if len(res.Gets[i]) > 0 {
			v := res.Gets[i][0]
			r.vals[k] = &v
		}
	}
	return nil
}

// Learn records what the caller read of key outside the ReadSet (nil:
// absent), as if it had been read here: the commit compares it like any
// read, so a value that has changed since only fails the attempt. A key
// already read keeps its first value.
func (r *ReadSet) Learn(key string, kv *KeyValue) {
	if _, ok := r.vals[key]; !ok {
		r.vals[key] = kv
	}
}

// Raw returns the key's value (nil when absent), reading it if needed.
func (r *ReadSet) Raw(key string) (*KeyValue, error) {
	if err := r.Fetch(key); err != nil {
		return nil, err
	}
	return r.vals[key], nil
}

// Decode unmarshals key into v, reading it if needed, and reports whether it exists.
func (r *ReadSet) Decode(key string, v any) (bool, error) {
	kv, err := r.Raw(key)
	if err != nil || kv == nil {
		return false, err
	}
	if err := DecodeRecord(key, kv.Value, v); err != nil {
		return true, err
	}
	return true, nil
}

// ErrAbort, returned by a modify function, ends ReadModifyWrite without writing
// and without error.
var ErrAbort = errors.New("abort")

// ReadModifyWrite is the one compare-and-swap loop in tabby. It prefetches
// keys in one round trip, lets modify read more through the ReadSet and return
// the writes, and commits them only if no key modify read has changed; on a
// lost race it starts over from fresh reads. modify may run several times and
// must not have side effects outside its return values.
func ReadModifyWrite(ctx context.Context, kv KV, keys []string, modify func(*ReadSet) ([]Op, error)) (int64, error) {
	return ReadModifyWriteFrom(ctx, kv, nil, keys, modify)
}

// Seed is what a caller already read (key -> value, nil for absent), so the
// first attempt of ReadModifyWriteFrom needs no read round trip for those
// keys. A seed that has gone stale costs one failed compare and a retry from
// fresh reads, never a wrong write.
type Seed map[string]*KeyValue

// SeedFrom records the results of a Txn's gets: keys[i] was read by the i-th get.
func SeedFrom(keys []string, gets [][]KeyValue) Seed {
	s := Seed{}
	for i, k := range keys {
		s[k] = nil
		if i < len(gets) && len(gets[i]) > 0 {
			v := gets[i][0]
			s[k] = &v
		}
	}
	return s
}

// CommitFrom is one speculative attempt with no read at all: modify decides
// on the seed alone (a key it lacks ends the attempt with ErrNeedRead), and
// the writes commit together with the caller's extra gets, guarded by the
// revisions of every seeded key (a stricter guard than needed: any change to
// what the seed says sends the caller the reading way). It reports whether the
// commit happened; a stale seed just means false, and the caller goes the
// reading way. This is how a host's ADD costs one round trip when its own
// cache of its blocks is right, which it nearly always is.
func CommitFrom(ctx context.Context, kv KV, seed Seed, modify func(*ReadSet) ([]Op, error), extra []Op) (*TxnResult, bool, error) {
	rs := &ReadSet{ctx: ctx, kv: kv, vals: map[string]*KeyValue{}, offline: true}
	for k, v := range seed {
		rs.vals[k] = v
	}
	ops, err := modify(rs)
	if errors.Is(err, ErrNeedRead) || errors.Is(err, ErrAbort) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	cmps := make([]Cmp, 0, len(rs.vals))
	for k := range rs.vals {
		cmps = append(cmps, Cmp{Key: k, ModRev: rs.ModRev(k)})
	}
	res, err := kv.Txn(ctx, cmps, append(ops, extra...))
	if err != nil {
		return nil, false, err
	}
	return res, res.Succeeded, nil
}

// ReadModifyWriteFrom is ReadModifyWrite whose first attempt starts from seed.
func ReadModifyWriteFrom(ctx context.Context, kv KV, seed Seed, keys []string, modify func(*ReadSet) ([]Op, error)) (int64, error) {
	for attempt := 0; attempt < MaxAttempts; attempt++ {
		rs := &ReadSet{ctx: ctx, kv: kv, vals: map[string]*KeyValue{}}
		if attempt == 0 {
			for k, v := range seed {
				rs.vals[k] = v
			}
		}
		if err := rs.Fetch(keys...); err != nil {
			return 0, err
		}
		ops, err := modify(rs)
		if errors.Is(err, ErrAbort) {
			return rs.Rev, nil
		}
		if err != nil {
			return 0, err
		}
		if len(ops) == 0 {
			return rs.Rev, nil
		}
		cmps := make([]Cmp, 0, len(rs.vals))
		for k := range rs.vals {
			cmps = append(cmps, Cmp{Key: k, ModRev: rs.ModRev(k)})
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
	_, err := ReadModifyWrite(ctx, kv, []string{key}, func(rs *ReadSet) ([]Op, error) {
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
	if err := DecodeRecord(key, r.Value, v); err != nil {
		return 0, err
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
		if err := DecodeRecord(r.Key, r.Value, &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// ErrFormat marks a stored record this version cannot read (a corrupt value,
// or one written by something else): plugins answer it with code 120.
var ErrFormat = errors.New("unreadable record")

// DecodeJSON unmarshals one stored value.
func DecodeJSON(b []byte, v any) error { return json.Unmarshal(b, v) }

// DecodeRecord unmarshals the value stored at key; a failure names the key
// and wraps ErrFormat.
func DecodeRecord(key string, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: etcd record %s cannot be decoded (%v); repair or delete it", ErrFormat, key, err)
	}
	return nil
}
