package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tabby-net/tabby/pkg/store"
)

// SchemaKey holds the version of the layout and records in this datastore.
// The first tabby-node or writing tabbyctl that finds it absent writes it.
const SchemaKey = Prefix + "schema"

// The schema this binary writes, and the oldest reader that can still work
// on what it writes. Rules for changing them (docs/upgrades-limits.md):
//   - adding an optional field whose loss is harmless when an older binary
//     rewrites the record (old binaries ignore it on read, and drop it when
//     they re-encode) changes neither;
//   - a change an older binary would misread, or whose field must never be
//     dropped by an older writer, raises SchemaVersion and SchemaMinReader
//     together; the new binaries keep writing the old form until an
//     explicit migration, run once every binary is upgraded, rewrites the
//     records and the schema record;
//   - a new key kind that older binaries can ignore raises SchemaVersion only.
//
// A binary reads and writes when SchemaMinReader of the store <= its own
// SchemaVersion; otherwise it refuses to write and tabby-node refuses to run.
const (
	SchemaVersion   = 1
	SchemaMinReader = 1
)

// Schema is the record at SchemaKey.
type Schema struct {
	// Version is the newest schema any binary has written to this store.
	Version int `json:"version"`
	// MinReader is the oldest schema version a binary may understand and
	// still write here.
	MinReader int `json:"minReader"`
}

// CurrentSchema is what this binary writes when it finds none.
func CurrentSchema() Schema { return Schema{Version: SchemaVersion, MinReader: SchemaMinReader} }

// ErrSchemaTooNew means the datastore was written by a newer tabby whose
// records this binary may misread or damage: upgrade the binary.
var ErrSchemaTooNew = errors.New("datastore schema is newer than this binary understands")

// Check says whether a binary of schema SchemaVersion may write to a store
// whose schema record is s.
func (s Schema) Check() error {
	if s.Version < 1 || s.MinReader < 1 || s.MinReader > s.Version {
		return fmt.Errorf("%w: etcd record %s holds version %d, minReader %d; repair it (this binary writes %s)",
			store.ErrFormat, SchemaKey, s.Version, s.MinReader, CurrentSchema().JSON())
	}
	if s.MinReader > SchemaVersion {
		return fmt.Errorf("%w: %s says version %d, readable from version %d on, and this binary understands version %d; upgrade it (see docs/upgrades-limits.md: tabby-node daemons first, then the plugins and tabbyctl)",
			ErrSchemaTooNew, SchemaKey, s.Version, s.MinReader, SchemaVersion)
	}
	return nil
}

// JSON is the record as stored.
func (s Schema) JSON() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ReadSchema returns the stored schema; exists is false when there is none
// (a datastore that no binary with schema support has written yet).
func ReadSchema(ctx context.Context, kv store.KV) (s Schema, exists bool, err error) {
	r, err := kv.Get(ctx, SchemaKey)
	if errors.Is(err, store.ErrNotFound) {
		return Schema{}, false, nil
	}
	if err != nil {
		return Schema{}, false, fmt.Errorf("read %s: %w", SchemaKey, err)
	}
	if err := store.DecodeRecord(SchemaKey, r.Value, &s); err != nil {
		return Schema{}, false, err
	}
	return s, true, nil
}

// EnsureSchema is what a writer runs before its first write: it writes
// CurrentSchema when the store has none (a create-if-absent transaction,
// so concurrent first writers agree), raises Version (never MinReader)
// when this binary's is newer, and returns an error wrapping
// ErrSchemaTooNew when this binary may not write here.
func EnsureSchema(ctx context.Context, kv store.KV) (Schema, error) {
	var out Schema
	err := store.Update(ctx, kv, SchemaKey, func(cur *Schema, exists bool) (*Schema, error) {
		if !exists {
			out = CurrentSchema()
			return &out, nil
		}
		out = *cur
		if err := cur.Check(); err != nil {
			return nil, err
		}
		if cur.Version >= SchemaVersion {
			return nil, store.ErrAbort
		}
		// An older store used by a newer binary: record that a newer
		// writer has been here. MinReader stays: raising it would stop
		// every older binary still running in a rolling upgrade, so it is
		// an explicit migration step once all of them are upgraded.
		out.Version = SchemaVersion
		return &out, nil
	})
	if errors.Is(err, store.ErrAbort) {
		err = nil
	}
	if err != nil {
		return out, fmt.Errorf("datastore schema: %w", err)
	}
	return out, nil
}
