package ipam

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// An attachment note is what this host's ADD wrote for one attachment (its
// handle and the caller's records, e.g. the endpoint), with the revision of
// the commit. It lets the DEL decide from what it already knows and commit
// in one round trip, guarded by those revisions: a note gone stale (the
// record was edited since, another host touched the block) costs one failed
// compare and the reading path, never a wrong release. Notes live in the
// state dir beside the host cache, only under the host lock, one small file
// per attachment, removed by its DEL (or by GC for attachments that never
// get one).
type attachmentNote struct {
	Handle string           `json:"handle"`
	Wrote  []store.KeyValue `json:"wrote"`
}

const notesDir = "notes"

func (a *IPAM) notePath(hkey string) string {
	sum := sha256.Sum256([]byte(hkey))
	return filepath.Join(a.LockDir, notesDir, hex.EncodeToString(sum[:16])+".json")
}

// saveNote keeps what the commit at rev wrote, blocks and affinities aside:
// the release reads blocks from the host cache, which every commit keeps
// current, and never reads affinities.
func (a *IPAM) saveNote(hkey string, ops []store.Op, rev int64) {
	if a.LockDir == "" {
		return
	}
	n := attachmentNote{Handle: hkey}
	for _, op := range ops {
		if op.Kind != store.OpPut || strings.HasPrefix(op.Key, model.BlockPrefix) || strings.HasPrefix(op.Key, model.AffinityPrefix) {
			continue
		}
		n.Wrote = append(n.Wrote, store.KeyValue{Key: op.Key, Value: op.Value, ModRev: rev})
	}
	b, err := json.Marshal(n)
	if err != nil {
		return
	}
	p := a.notePath(hkey)
	// No rename: a note torn by a crash does not decode and is ignored.
	if err := os.WriteFile(p, b, 0o600); err != nil && os.IsNotExist(err) {
		if os.MkdirAll(filepath.Dir(p), 0o700) == nil {
			_ = os.WriteFile(p, b, 0o600)
		}
	}
}

// noteSeed returns the seed of a release of hkey that also reads keys,
// from the attachment's note and the host cache, or nil when they do not
// hold everything the release reads.
func (a *IPAM) noteSeed(hkey string, keys []string, c *hostCache) store.Seed {
	if a.LockDir == "" {
		return nil
	}
	b, err := os.ReadFile(a.notePath(hkey))
	if err != nil {
		return nil
	}
	var n attachmentNote
	if json.Unmarshal(b, &n) != nil || n.Handle != hkey {
		return nil
	}
	seed := store.Seed{}
	for i := range n.Wrote {
		seed[n.Wrote[i].Key] = &n.Wrote[i]
	}
	for _, k := range append([]string{hkey}, keys...) {
		if seed[k] == nil {
			return nil
		}
	}
	// Only what the release reads, so that nothing else is compared.
	out := store.Seed{}
	for _, k := range append([]string{hkey}, keys...) {
		out[k] = seed[k]
	}
	var h model.Handle
	if store.DecodeRecord(hkey, seed[hkey].Value, &h) != nil {
		return nil
	}
	cached := map[string]*store.KeyValue{}
	if c != nil {
		for i := range c.Blocks {
			cached[c.Blocks[i].Key] = c.Blocks[i].kv()
		}
	}
	for _, bk := range h.Blocks {
		kv := cached[bk]
		if kv == nil {
			return nil
		}
		out[bk] = kv
	}
	return out
}

func (a *IPAM) dropNote(hkey string) {
	if a.LockDir != "" {
		_ = os.Remove(a.notePath(hkey))
	}
}

// notedHandles lists the handle keys of this host's attachment notes.
func (a *IPAM) notedHandles() []string {
	if a.LockDir == "" {
		return nil
	}
	notes, _ := readNotes(a.LockDir)
	out := make([]string, 0, len(notes))
	for _, n := range notes {
		out = append(out, n.Handle)
	}
	return out
}

// readNotes reads the attachment notes in stateDir, leaving out those a
// crash tore (their ADD never returned) and those a DEL removed meanwhile.
func readNotes(stateDir string) ([]attachmentNote, error) {
	files, err := filepath.Glob(filepath.Join(stateDir, notesDir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("attachment notes in %s: %w", stateDir, err)
	}
	var out []attachmentNote
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("attachment note: %w", err)
		}
		var n attachmentNote
		if json.Unmarshal(b, &n) != nil || n.Handle == "" {
			continue
		}
		out = append(out, n)
	}
	return out, nil
}
