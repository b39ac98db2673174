// Package retire removes a host that is gone for good from the datastore:
// its endpoints (with their tag entries), the addresses it holds, its
// blocks and affinities, its own BGP peers and its record. Hosts come and
// go in a large cluster (autoscaling, replaced machines); a host that left
// without its DELs keeps its blocks and addresses out of the pools, its
// record in every node's host list and its endpoints in others' tag sets,
// until something removes them. `tabbyctl node remove` and
// tabby-kube-controllers (when a Kubernetes Node is deleted) call Host.
//
// The host's tabby-node must be stopped first: a running one registers the
// host again (its endpoints and addresses stay gone).
package retire

import (
	"context"
	"errors"
	"fmt"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

// Report is what Host removed.
type Report struct {
	Host string `json:"host"`
	// Registered: the host's record was there (and is gone now).
	Registered bool `json:"registered"`
	// Endpoints are the endpoint records removed.
	Endpoints []string `json:"endpoints"`
	// Blocks is how many blocks the host had; all but IPAM.Unaffined
	// went back to their pools (with the endpoints' addresses, or after).
	Blocks int `json:"blocks"`
	// IPAM is what became of what the endpoints did not name.
	IPAM ipam.Disowned `json:"ipam"`
	// Keys counts the other keys of the host's removed (its BGP peers).
	Keys int `json:"keys"`
}

// Empty reports whether there was nothing of the host to remove.
func (r *Report) Empty() bool {
	d := r.IPAM
	return !r.Registered && len(r.Endpoints) == 0 && r.Keys == 0 && r.Blocks == 0 &&
		len(d.Released) == 0 && len(d.Dropped) == 0 && len(d.Unaffined) == 0 && d.Cleared == 0
}

// deleteBatch bounds one transaction's deletes of the host's other keys.
const deleteBatch = 128

// Host removes everything of host's from the datastore. Each step is its
// own transaction and the record goes last, so running it again after a
// failure (or a kill) part way finishes the job.
func Host(ctx context.Context, kv store.KV, host string) (*Report, error) {
	if err := model.ValidName(host); err != nil {
		return nil, fmt.Errorf("host %q: %w", host, err)
	}
	rep := &Report{Host: host, Endpoints: []string{}}
	// Endpoints first, each with its handle, as its DEL would: the tag
	// entries that put its addresses in other hosts' rules go with it,
	// and so do addresses it borrowed from other hosts' blocks.
	sub, _, err := kv.List(ctx, model.HostSubtree(host), false)
	if err != nil {
		return nil, fmt.Errorf("records of %s: %w", host, err)
	}
	affs, _, err := kv.List(ctx, model.AffinityHostPrefix(host), true)
	if err != nil {
		return nil, fmt.Errorf("blocks of %s: %w", host, err)
	}
	rep.Blocks = len(affs)
	var others []string
	for _, r := range sub {
		if _, _, _, _, ok := model.ParseEndpointKey(r.Key); !ok {
			others = append(others, r.Key)
			continue
		}
		var e model.Endpoint
		if err := store.DecodeRecord(r.Key, r.Value, &e); err != nil {
			return rep, err
		}
		if err := forgetEndpoint(ctx, kv, host, r.Key, &e); err != nil {
			return rep, fmt.Errorf("endpoint %s: %w", r.Key, err)
		}
		rep.Endpoints = append(rep.Endpoints, r.Key)
	}
	d, err := ipam.Disown(ctx, kv, host)
	if d != nil {
		rep.IPAM = *d
	}
	if err != nil {
		return rep, err
	}
	for len(others) > 0 {
		n := min(len(others), deleteBatch)
		var ops []store.Op
		for _, k := range others[:n] {
			ops = append(ops, store.Delete(k))
		}
		if _, err := kv.Txn(ctx, nil, ops); err != nil {
			return rep, fmt.Errorf("records of %s: %w", host, err)
		}
		rep.Keys += n
		others = others[n:]
	}
	res, err := kv.Txn(ctx, nil, []store.Op{store.Get(model.NodeKey(host)), store.Delete(model.NodeKey(host))})
	if err != nil {
		return rep, fmt.Errorf("record of %s: %w", host, err)
	}
	rep.Registered = len(res.Gets) > 0 && len(res.Gets[0]) > 0
	return rep, nil
}

// forgetEndpoint releases the endpoint's handle and removes the record
// (with its tag and member entries) in one transaction, as the CNI DEL
// does. The handle is released only if it is this host's.
func forgetEndpoint(ctx context.Context, kv store.KV, host, key string, e *model.Endpoint) error {
	forget := func(rs *store.ReadSet) ([]store.Op, error) {
		var prev model.Endpoint
		found, err := rs.Decode(key, &prev)
		if err != nil || !found {
			return nil, err
		}
		return workload.Ops(&prev, nil), nil
	}
	if e.Network == "" || e.ContainerID == "" {
		// No handle to name (a record written by hand): the record only.
		_, err := workload.Delete(ctx, kv, key, "")
		return err
	}
	a := &ipam.IPAM{KV: kv, Host: host}
	if err := a.ReleaseWith(ctx, e.Network, e.ContainerID, []string{key}, forget); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}
