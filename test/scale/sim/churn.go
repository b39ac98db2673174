package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
	"github.com/tabby-net/tabby/test/scale/load"
)

// ChurnConfig is a write load.
type ChurnConfig struct {
	Workers  int           // writers; each owns the hosts h with h % Workers == its index
	Rate     float64       // writes/s over all workers; 0: as fast as etcd takes them
	Duration time.Duration // how long
	// One write in ProfileEvery is a profile edit (the hosts that run the
	// profile's namespace follow it), one in HostEvery a host leaving or coming back
	// (every host follows the host list); 0 turns either off.
	ProfileEvery, HostEvery int
	Seed                    uint64
	// Stop, when closed, ends the run early (between writes, so that
	// every write's outcome is known).
	Stop <-chan struct{}
}

// ChurnResult is what a churn run did. A write is one transaction: an
// endpoint ADD or DEL (endpoint, tag and member entries, handle and block
// together, as the CNI plugin commits them), a profile edit or a host
// record put or delete.
type ChurnResult struct {
	Writes int `json:"writes"`
	Keys   int `json:"keys"` // keys put or deleted
	// ProfileEdits and HostChanges count those writes among Writes.
	ProfileEdits int           `json:"profile_edits"`
	HostChanges  int           `json:"host_changes"`
	Errors       int           `json:"errors"`
	FirstError   string        `json:"first_error,omitempty"`
	Duration     time.Duration `json:"duration_ns"`
	Rate         float64       `json:"writes_per_s"`
	P50          time.Duration `json:"p50_ns"`
	P99          time.Duration `json:"p99_ns"`
	Max          time.Duration `json:"max_ns"`
	// Latencies are the writes' latencies, sorted, so that runs can be
	// merged (Merge) before their percentiles are taken.
	Latencies []time.Duration `json:"-"`
}

// Merge is the runs as one: their writes, keys and errors added, their
// durations summed, percentiles over all their writes.
func Merge(runs ...ChurnResult) ChurnResult {
	var res ChurnResult
	var all []time.Duration
	for _, r := range runs {
		all = append(all, r.Latencies...)
		res.Keys += r.Keys
		res.Errors += r.Errors
		res.ProfileEdits += r.ProfileEdits
		res.HostChanges += r.HostChanges
		res.Duration += r.Duration
		if res.FirstError == "" {
			res.FirstError = r.FirstError
		}
	}
	return res.withLatencies(all)
}

func (res ChurnResult) withLatencies(all []time.Duration) ChurnResult {
	slices.Sort(all)
	res.Latencies, res.Writes = all, len(all)
	if res.Duration > 0 {
		res.Rate = float64(res.Writes) / res.Duration.Seconds()
	}
	res.P50, res.P99 = load.Percentile(all, 50), load.Percentile(all, 99)
	if len(all) > 0 {
		res.Max = all[len(all)-1]
	}
	return res
}

// Churner writes against a loaded cluster and remembers which of its
// endpoints and hosts it has removed, so that runs can follow each other.
type Churner struct {
	cl *load.Cluster
	kv store.KV

	mu       sync.Mutex
	gone     []map[[2]int]bool // per worker: endpoints currently deleted
	hostGone map[int]bool
	edits    int
}

// NewChurner writes through kv.
func NewChurner(cl *load.Cluster, kv store.KV) *Churner {
	return &Churner{cl: cl, kv: kv, hostGone: map[int]bool{}}
}

// Run writes for cfg.Duration (or until ctx ends).
func (c *Churner) Run(ctx context.Context, cfg ChurnConfig) ChurnResult {
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	c.mu.Lock()
	for len(c.gone) < cfg.Workers {
		c.gone = append(c.gone, map[[2]int]bool{})
	}
	c.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Workers) / cfg.Rate)
	}
	type out struct {
		lat             []time.Duration
		keys            int
		errs            int
		err             error
		profiles, hosts int
	}
	outs := make([]out, cfg.Workers)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
			o := &outs[w]
			next := time.Now().Add(time.Duration(rng.Int64N(int64(max(interval, time.Millisecond)))))
			stopped := func() bool {
				select {
				case <-cfg.Stop:
					return true
				default:
					return rctx.Err() != nil
				}
			}
			for n := 1; !stopped(); n++ {
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						select {
						case <-rctx.Done():
							return
						case <-time.After(d):
						}
					}
					next = next.Add(interval)
				}
				// The write runs under the caller's context, not the run's
				// deadline: a write cut off by the deadline may still commit,
				// and then the churner would not know what etcd holds.
				octx, ocancel := context.WithTimeout(ctx, time.Minute)
				t0 := time.Now()
				var keys int
				var err error
				// Host changes one write out of phase with profile edits:
				// with both at n%k == 0, every multiple of 200 was also one
				// of 100, and no host ever left.
				host := cfg.HostEvery > 0 && (n+1)%cfg.HostEvery == 0
				profile := !host && cfg.ProfileEvery > 0 && n%cfg.ProfileEvery == 0
				switch {
				case host:
					keys, err = c.flipHost(octx, w, cfg.Workers, rng)
				case profile:
					keys, err = c.editProfile(octx, rng)
				default:
					keys, err = c.flipEndpoint(octx, w, cfg.Workers, rng)
				}
				ocancel()
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					o.errs++
					if o.err == nil {
						o.err = err
					}
					continue
				}
				o.lat = append(o.lat, time.Since(t0))
				o.keys += keys
				if profile {
					o.profiles++
				}
				if host {
					o.hosts++
				}
			}
		}(w)
	}
	wg.Wait()
	res := ChurnResult{Duration: time.Since(start)}
	var all []time.Duration
	for _, o := range outs {
		all = append(all, o.lat...)
		res.Keys += o.keys
		res.Errors += o.errs
		res.ProfileEdits += o.profiles
		res.HostChanges += o.hosts
		if o.err != nil && res.FirstError == "" {
			res.FirstError = o.err.Error()
		}
	}
	return res.withLatencies(all)
}

// flipEndpoint deletes one of worker w's endpoints, or adds back one it
// deleted: one transaction with the block's slot, the handle, the endpoint
// and its index entries, guarded by the block's revision.
func (c *Churner) flipEndpoint(ctx context.Context, w, workers int, rng *rand.Rand) (int, error) {
	c.mu.Lock()
	gone := c.gone[w]
	c.mu.Unlock()
	h := w + workers*rng.IntN(max(1, (c.cl.Hosts-w+workers-1)/workers))
	if h >= c.cl.Hosts || c.cl.EndpointsOf(h) == 0 {
		return 0, nil
	}
	s := rng.IntN(c.cl.EndpointsOf(h))
	// Half the time put back one that is gone, so the cluster keeps its size.
	if len(gone) > 0 && rng.IntN(2) == 0 {
		for k := range gone {
			h, s = k[0], k[1]
			break
		}
	}
	del := !gone[[2]int{h, s}]
	hd := c.cl.Handle(h, s)
	bkey := hd.Blocks[0]
	ord := c.cl.Ordinal(h, s)
	var nkeys int
	_, err := store.ReadModifyWrite(ctx, c.kv, []string{bkey}, func(rs *store.ReadSet) ([]store.Op, error) {
		var b model.Block
		ok, err := rs.Decode(bkey, &b)
		if err != nil {
			return nil, err
		}
		if !ok || ord >= len(b.Allocations) {
			return nil, fmt.Errorf("churn: block %s missing", bkey)
		}
		var ops []store.Op
		if del {
			b.Allocations[ord] = nil
			ops = append(workload.Ops(c.cl.Endpoint(h, s), nil), store.Delete(model.HandleKey(hd.Network, hd.ContainerID)))
		} else {
			e := c.cl.Endpoint(h, s)
			b.Allocations[ord] = &model.Allocation{Handle: hd.ID, Network: hd.Network, Host: hd.Host, Workload: e.Workload}
			ops = c.cl.EndpointOps(h, s)
		}
		ops = append(ops, store.Put(bkey, store.MustJSON(b)))
		nkeys = len(ops)
		return ops, nil
	})
	if err != nil {
		return 0, err
	}
	if del {
		gone[[2]int{h, s}] = true
	} else {
		delete(gone, [2]int{h, s})
	}
	return nkeys, nil
}

// editProfile changes one profile's rules.
func (c *Churner) editProfile(ctx context.Context, rng *rand.Rand) (int, error) {
	c.mu.Lock()
	c.edits++
	v := c.edits
	c.mu.Unlock()
	name := model.K8sNamespaceProfile(c.cl.Namespace(rng.IntN(c.cl.Profiles)))
	_, err := c.kv.Txn(ctx, nil, []store.Op{store.Put(model.ProfileKey(name), store.MustJSON(load.ProfileVersion(name, v)))})
	return 1, err
}

// flipHost takes one of worker w's hosts' record away (the host left) or
// puts it back (it came back).
func (c *Churner) flipHost(ctx context.Context, w, workers int, rng *rand.Rand) (int, error) {
	h := w + workers*rng.IntN(max(1, (c.cl.Hosts-w+workers-1)/workers))
	if h >= c.cl.Hosts {
		return 0, nil
	}
	c.mu.Lock()
	gone := c.hostGone[h]
	c.mu.Unlock()
	op := store.Delete(model.NodeKey(c.cl.Host(h)))
	if gone {
		op = store.Put(model.NodeKey(c.cl.Host(h)), store.MustJSON(c.cl.HostRecord(h)))
	}
	if _, err := c.kv.Txn(ctx, nil, []store.Op{op}); err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.hostGone[h] = !gone
	c.mu.Unlock()
	return 1, nil
}

// Restore puts back every endpoint and host the churner removed.
func (c *Churner) Restore(ctx context.Context) error {
	var errs []error
	for w := range c.gone {
		for k := range c.gone[w] {
			if err := c.putBack(ctx, k[0], k[1]); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(c.gone[w], k)
		}
	}
	for h, gone := range c.hostGone {
		if gone {
			if _, err := c.kv.Txn(ctx, nil, []store.Op{store.Put(model.NodeKey(c.cl.Host(h)), store.MustJSON(c.cl.HostRecord(h)))}); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(c.hostGone, h)
		}
	}
	return errors.Join(errs...)
}

func (c *Churner) putBack(ctx context.Context, h, s int) error {
	hd := c.cl.Handle(h, s)
	bkey, ord := hd.Blocks[0], c.cl.Ordinal(h, s)
	_, err := store.ReadModifyWrite(ctx, c.kv, []string{bkey}, func(rs *store.ReadSet) ([]store.Op, error) {
		var b model.Block
		if _, err := rs.Decode(bkey, &b); err != nil {
			return nil, err
		}
		if ord >= len(b.Allocations) {
			return nil, fmt.Errorf("restore: block %s missing", bkey)
		}
		b.Allocations[ord] = &model.Allocation{Handle: hd.ID, Network: hd.Network, Host: hd.Host, Workload: hd.Workload}
		return append(c.cl.EndpointOps(h, s), store.Put(bkey, store.MustJSON(b))), nil
	})
	return err
}
