package ipam

// What runs on a host against what etcd says about it: after etcd is
// restored from an older snapshot (the datastore "goes back in time"),
// workloads added since then run without records, and records of
// workloads removed since then name nothing. The host knows what runs: the
// attachment notes its ADDs left in the state dir (see note.go) and its
// tabby veths. CheckHost reports every difference; RepairHost brings etcd
// in line, re-asserting what runs (etcd stays the one source of intent for
// everything else) and releasing what does not.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

// Problem kinds of CheckHost.
const (
	// RunningNoAllocation: a workload runs on the host with an address
	// that etcd has not allocated (to anyone).
	RunningNoAllocation = "running-without-allocation"
	// RunningAddressTaken: a running workload's address is allocated to
	// another handle in etcd. Repair cannot fix it: two workloads would
	// share the address; one of them must be restarted.
	RunningAddressTaken = "running-address-taken"
	// RunningNoEndpoint: a running workload has no endpoint record (or the
	// record at its key is another container's).
	RunningNoEndpoint = "running-without-endpoint"
	// EndpointNotRunning: an endpoint record of the host names a veth the
	// host does not have.
	EndpointNotRunning = "endpoint-not-running"
	// HandleNotRunning: the host's allocation for a workload that runs
	// nowhere on it.
	HandleNotRunning = "handle-not-running"
	// RevisionWentBack: etcd's revision is below one this host's ADDs
	// committed at: etcd was restored without moving its revision forward.
	// tabby's compares by revision (the plugins' host cache and notes,
	// tabby-node's watches) assume revisions only grow, so RepairHost
	// refuses to write until etcd is restored again with a revision bump.
	RevisionWentBack = "revision-went-back"
)

// DefaultGrace spares records younger than this from release: an ADD in
// flight has its records before its veth exists.
const DefaultGrace = 30 * time.Second

// Running is one attachment this host's ADD made and no DEL has undone.
type Running struct {
	Handle   model.Handle
	Endpoint *model.Endpoint // nil when the main plugin wrote none (ptp, bridge)
	Rev      int64           // the etcd revision its ADD committed at
}

// RunningAttachments reads the attachment notes in stateDir. An
// attachment whose endpoint names a veth that present says is gone is
// not running (its container went without a DEL).
func RunningAttachments(stateDir string, present func(ifname string) bool) ([]Running, error) {
	notes, err := readNotes(stateDir)
	if err != nil {
		return nil, err
	}
	var out []Running
	for _, n := range notes {
		var r Running
		found := false
		for _, kv := range n.Wrote {
			r.Rev = max(r.Rev, kv.ModRev)
			switch {
			case kv.Key == n.Handle:
				found = json.Unmarshal(kv.Value, &r.Handle) == nil
			case isEndpointKey(kv.Key):
				var ep model.Endpoint
				if json.Unmarshal(kv.Value, &ep) == nil {
					r.Endpoint = &ep
				}
			}
		}
		if !found || (r.Endpoint != nil && !present(r.Endpoint.HostInterface)) {
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Handle.ID < out[j].Handle.ID })
	return out, nil
}

func isEndpointKey(k string) bool {
	_, _, _, _, ok := model.ParseEndpointKey(k)
	return ok
}

// hostView is what etcd says about one host.
type hostView struct {
	rev       int64                      // etcd's revision at the read
	handles   map[string]*model.Handle   // this host's, by handle ID
	endpoints map[string]*model.Endpoint // this host's, by key
	owner     map[string]string          // allocated address -> handle ID (every block)
}

func readHost(ctx context.Context, kv store.KV, host string) (*hostView, error) {
	v := &hostView{handles: map[string]*model.Handle{}, endpoints: map[string]*model.Endpoint{}, owner: map[string]string{}}
	handles, err := store.ListJSON[model.Handle](ctx, kv, model.HandlePrefix)
	if err != nil {
		return nil, fmt.Errorf("list handles: %w", err)
	}
	for i := range handles {
		if handles[i].Host == host {
			v.handles[handles[i].ID] = &handles[i]
		}
	}
	kvs, rev, err := kv.List(ctx, model.HostWorkloadPrefix(host), false)
	if err != nil {
		return nil, fmt.Errorf("list endpoints of %s: %w", host, err)
	}
	v.rev = rev
	for _, r := range kvs {
		if !isEndpointKey(r.Key) {
			continue
		}
		var ep model.Endpoint
		if store.DecodeJSON(r.Value, &ep) == nil {
			v.endpoints[r.Key] = &ep
		}
	}
	blocks, err := store.ListJSON[model.Block](ctx, kv, model.BlockPrefix)
	if err != nil {
		return nil, fmt.Errorf("list blocks: %w", err)
	}
	for _, b := range blocks {
		_, n, err := net.ParseCIDR(b.CIDR)
		if err != nil {
			continue
		}
		for i, a := range b.Allocations {
			if a != nil {
				v.owner[nthIP(n, i).String()] = a.Handle
			}
		}
	}
	return v, nil
}

// CheckHost compares what runs on host (running, and the veths present
// says exist) with etcd, and returns every difference. Records younger
// than grace are not reported as not running.
func CheckHost(ctx context.Context, kv store.KV, host string, running []Running, present func(ifname string) bool, grace time.Duration) ([]Problem, error) {
	v, err := readHost(ctx, kv, host)
	if err != nil {
		return nil, err
	}
	return v.problems(host, running, present, time.Now().Add(-grace)), nil
}

// problems compares; records created after born are spared.
func (v *hostView) problems(host string, running []Running, present func(string) bool, born time.Time) []Problem {
	var out []Problem
	if r := newest(running); v.rev > 0 && r > v.rev {
		out = append(out, Problem{Kind: RevisionWentBack, Host: host,
			Detail: fmt.Sprintf("etcd is at revision %d, below %d, which an ADD on this host committed at: etcd was restored without --bump-revision; restore it again with 'etcdutl snapshot restore --bump-revision 1000000000 --mark-compacted' before repairing", v.rev, r)})
	}
	runs := map[string]bool{}   // handle IDs
	runsEP := map[string]bool{} // endpoint keys
	gone := map[string]bool{}   // handles of endpoints reported not running
	for _, r := range running {
		h := r.Handle
		runs[h.ID] = true
		for _, ip := range h.IPs {
			switch owner := v.owner[ip]; {
			case owner == "":
				out = append(out, Problem{Kind: RunningNoAllocation, IP: ip, Handle: h.ID, Host: host,
					Detail: "workload " + h.Workload + " runs with this address, which etcd has not allocated; 'tabbyctl ipam repair' allocates it again"})
			case owner != h.ID:
				out = append(out, Problem{Kind: RunningAddressTaken, IP: ip, Handle: h.ID, Host: host,
					Detail: "workload " + h.Workload + " runs with this address, which etcd has given to " + owner + "; restart one of the two workloads"})
			}
		}
		if r.Endpoint == nil {
			continue
		}
		key := r.Endpoint.Key()
		runsEP[key] = true
		if ep := v.endpoints[key]; ep == nil || ep.ContainerID != r.Endpoint.ContainerID {
			out = append(out, Problem{Kind: RunningNoEndpoint, IP: firstIP(r.Endpoint), Handle: h.ID, Host: host,
				Detail: "workload " + h.Workload + " runs (veth " + r.Endpoint.HostInterface + ") without its endpoint record " + key + "; 'tabbyctl ipam repair' writes it again"})
		}
	}
	keys := make([]string, 0, len(v.endpoints))
	for k := range v.endpoints {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ep := v.endpoints[k]
		if runsEP[k] || present(ep.HostInterface) || v.young(ep.Handle, born) {
			continue
		}
		gone[ep.Handle] = true
		out = append(out, Problem{Kind: EndpointNotRunning, IP: firstIP(ep), Handle: ep.Handle, Host: host,
			Detail: "endpoint " + k + " names veth " + ep.HostInterface + ", which this host does not have; 'tabbyctl ipam repair' removes it and releases its addresses"})
	}
	ids := make([]string, 0, len(v.handles))
	for id := range v.handles {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		h := v.handles[id]
		if runs[id] || gone[id] || v.young(id, born) || v.endpointRuns(id, present) {
			continue
		}
		out = append(out, Problem{Kind: HandleNotRunning, IP: strings.Join(h.IPs, ","), Handle: id, Host: host,
			Detail: "addresses of workload " + h.Workload + ", which does not run on this host; 'tabbyctl ipam repair' releases them"})
	}
	return out
}

// young reports whether the handle was created after born.
func (v *hostView) young(id string, born time.Time) bool {
	h := v.handles[id]
	return h != nil && time.Unix(h.Created, 0).After(born)
}

// endpointRuns reports whether an endpoint record of the handle names a
// veth that exists (a workload added before attachment notes existed).
func (v *hostView) endpointRuns(id string, present func(string) bool) bool {
	for _, ep := range v.endpoints {
		if ep.Handle == id && present(ep.HostInterface) {
			return true
		}
	}
	return false
}

// newest is the highest revision the running attachments were committed at.
func newest(running []Running) int64 {
	var r int64
	for _, x := range running {
		r = max(r, x.Rev)
	}
	return r
}

func firstIP(ep *model.Endpoint) string {
	for _, n := range ep.Nets() {
		ip, _, _ := net.ParseCIDR(n)
		return ip.String()
	}
	return ""
}

// Action is one change RepairHost made (or, dry, would make).
type Action struct {
	Kind   string `json:"kind"` // the problem it answers
	Handle string `json:"handle,omitempty"`
	IP     string `json:"ip,omitempty"`
	Done   string `json:"done"`
	Err    string `json:"error,omitempty"`
}

// RepairHost brings etcd in line with what runs on the host whose state dir
// is a.LockDir: it allocates running workloads' addresses again and writes
// their endpoint records (as their ADD did), and releases the addresses and
// records of workloads that do not run on it. It never touches the kernel,
// so running workloads keep their traffic; addresses that etcd has given
// to another workload meanwhile are left for a person to decide. Records
// younger than grace are not released; dry reports without writing.
func (a *IPAM) RepairHost(ctx context.Context, running []Running, present func(ifname string) bool, grace time.Duration, dry bool) ([]Action, error) {
	v, err := readHost(ctx, a.KV, a.Host)
	if err != nil {
		return nil, err
	}
	probs := v.problems(a.Host, running, present, time.Now().Add(-grace))
	for _, p := range probs {
		if p.Kind == RevisionWentBack {
			return nil, errors.New(p.Detail)
		}
	}
	var out []Action
	fixed := map[string]bool{} // handle IDs done
	byID := map[string]Running{}
	for _, r := range running {
		byID[r.Handle.ID] = r
	}
	for _, p := range probs {
		if fixed[p.Handle] && p.Kind != RunningAddressTaken {
			continue
		}
		act := Action{Kind: p.Kind, Handle: p.Handle, IP: p.IP}
		var err error
		switch p.Kind {
		case RunningNoAllocation, RunningNoEndpoint:
			act.Done = "re-asserted the running workload's allocation and endpoint record"
			if !dry {
				err = a.reassert(ctx, byID[p.Handle], v)
			}
		case RunningAddressTaken:
			act.Done = "left alone: the address is another workload's in etcd; restart one of the two"
		case EndpointNotRunning:
			ep := v.endpoints[endpointKeyOf(v, p)]
			act.Done = "removed the endpoint record and released its addresses"
			if !dry && ep != nil {
				if err = a.Release(ctx, ep.Network, ep.ContainerID); err == nil {
					_, err = workload.Delete(ctx, a.KV, ep.Key(), ep.ContainerID)
				}
			}
		case HandleNotRunning:
			h := v.handles[p.Handle]
			act.Done = "released the addresses"
			if !dry && h != nil {
				err = a.Release(ctx, h.Network, h.ContainerID)
			}
		}
		if err != nil {
			act.Err = err.Error()
		}
		fixed[p.Handle] = true
		out = append(out, act)
	}
	return out, nil
}

// endpointKeyOf finds the endpoint key a problem of kind EndpointNotRunning
// is about (its handle, and its first address).
func endpointKeyOf(v *hostView, p Problem) string {
	for k, ep := range v.endpoints {
		if ep.Handle == p.Handle && firstIP(ep) == p.IP {
			return k
		}
	}
	return ""
}

// reassert writes a running attachment's allocation (the same addresses,
// under the same handle) and endpoint record, in one transaction as its
// ADD did; when the allocation is there, only the record.
func (a *IPAM) reassert(ctx context.Context, r Running, v *hostView) error {
	h := r.Handle
	if v.handles[h.ID] == nil {
		var ips []net.IP
		for _, s := range h.IPs {
			ips = append(ips, net.ParseIP(s))
		}
		req := Request{Network: h.Network, ContainerID: h.ContainerID, IfName: h.IfName, Workload: h.Workload, Plugin: h.Plugin, Static: ips}
		var pre []store.Op
		if r.Endpoint != nil {
			key := r.Endpoint.Key()
			pre = []store.Op{store.Get(key)}
			req.Also = func(rs *store.ReadSet, _ []Assigned) ([]store.Op, error) {
				var prev model.Endpoint
				found, err := rs.Decode(key, &prev)
				if err != nil {
					return nil, err
				}
				next := *r.Endpoint
				if !found {
					return workload.Ops(nil, &next), nil
				}
				return workload.Ops(&prev, &next), nil
			}
		}
		res, err := a.AssignWith(ctx, req, pre)
		if err != nil {
			return fmt.Errorf("allocate %v for %s again: %w", h.IPs, h.ID, err)
		}
		if res.Created || r.Endpoint == nil {
			return nil
		}
	}
	if r.Endpoint == nil {
		return nil
	}
	ep := *r.Endpoint
	if err := workload.Put(ctx, a.KV, &ep); err != nil {
		return fmt.Errorf("write endpoint %s again: %w", ep.Key(), err)
	}
	return nil
}
