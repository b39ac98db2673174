package agent

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/node/policy"
	"github.com/tabby-net/tabby/node/watch"
	"github.com/tabby-net/tabby/pkg/model"
)

func (a *Agent) basePrefixes() []string { return BasePrefixes(a.cfg.Name) }

// BasePrefixes are what every node follows. On top of them a node follows
// what its own endpoints need (Followed): the profiles they name, one key
// each, the tags those profiles' rules name, and the member index
// prefixes of the namespaces the policies selecting them name. Policies
// and namespaces (labels) are small: every node follows them. Profiles
// are not: at 10,000 hosts a profile edit sent to every node is 10,000
// events for the ~50 hosts that run the profile's workloads.
func BasePrefixes(host string) []string {
	return []string{model.PoolPrefix, model.NodePrefix, model.BGPConfigKey, model.BGPPeerPrefix,
		model.HostSubtree(host), model.AffinityHostPrefix(host), model.PolicyPrefix, model.NamespacePrefix}
}

// Followed is what a node follows, given the profiles its endpoints name
// and the tags and member prefixes their rules need.
func Followed(host string, profiles, tags, memPrefixes []string) []string {
	want := BasePrefixes(host)
	for _, p := range profiles {
		want = append(want, model.ProfileKey(p))
	}
	for _, t := range tags {
		want = append(want, model.TagMembersPrefix(t))
	}
	return append(want, memPrefixes...)
}

// usedProfiles are the profiles endpoints name, sorted, once each.
func usedProfiles(eps []model.Endpoint) []string {
	seen := map[string]bool{}
	var out []string
	for i := range eps {
		for _, p := range eps[i].Profiles {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	sort.Strings(out)
	return out
}

// readProfiles decodes the followed profiles (a profile not yet loaded,
// not in etcd or undecodable is absent) and the revision of each one's key.
func (a *Agent) readProfiles(names []string) (map[string]model.Profile, map[string]int64) {
	profiles := make(map[string]model.Profile, len(names))
	revs := make(map[string]int64, len(names))
	for _, n := range names {
		// Value and revision read in one instant: a pass must never
		// record a newer revision than the rules it rendered.
		k := model.ProfileKey(n)
		byKey, rev := watch.DecodeRev[model.Profile](a.cache, k, nil)
		if p, ok := byKey[k]; ok {
			p.Name = n // the key's name, whatever the record says
			profiles[n], revs[k] = p, rev[k]
		}
	}
	return profiles, revs
}

// policyInputs reads the policies and namespaces from the cache. A
// policy's namespace and name are its key's: a record cannot claim another
// namespace (or to be global) by what it holds.
func (a *Agent) policyInputs() ([]model.Policy, map[string]model.Namespace) {
	byKey := watch.Decode[model.Policy](a.cache, model.PolicyPrefix, nil)
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	pols := make([]model.Policy, 0, len(keys))
	for _, k := range keys {
		p := byKey[k]
		ns, name, _ := strings.Cut(strings.TrimPrefix(k, model.PolicyPrefix), "/")
		if ns == model.GlobalNamespace {
			ns = ""
		}
		p.Namespace, p.Name = ns, name
		pols = append(pols, p)
	}
	nss := map[string]model.Namespace{}
	for k, n := range watch.Decode[model.Namespace](a.cache, model.NamespacePrefix, nil) {
		name := strings.TrimPrefix(k, model.NamespacePrefix)
		n.Name = name
		nss[name] = n
	}
	return pols, nss
}

// memberPrefixes are the member index prefixes to follow for a scope.
func memberPrefixes(names []string, all bool) []string {
	if all {
		return []string{model.MemberPrefix}
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, model.MemberNamespacePrefix(n))
	}
	return out
}

// memberNamespace is the namespace of a member record's key ("" outside
// any).
func memberNamespace(k string) string {
	ns, _, _ := strings.Cut(strings.TrimPrefix(k, model.MemberPrefix), "/")
	if ns == model.GlobalNamespace {
		return ""
	}
	return ns
}

// readiness tracks which endpoints' rules are in force, for the CNI
// plugin's wait, and which endpoints' rules cannot be and why, so that
// their wait ends at once with the cause instead of a timeout.
type readiness struct {
	mu      sync.Mutex
	applied map[string]string   // host interface -> container ID
	refused map[string]*refusal // host interface -> why its rules are not in force
	changed chan struct{}       // closed and replaced on every change
}

// refusal says that tabby-node cannot put an endpoint's rules in force on
// this host as it is: waiting longer would not help.
type refusal struct {
	iface, container string
	cause            error
}

func (r *refusal) Error() string {
	return fmt.Sprintf("rules for %s (container %s) cannot be put in force: %v", r.iface, r.container, r.cause)
}

func (r *refusal) Unwrap() error { return r.cause }

func newReadiness() *readiness {
	return &readiness{applied: map[string]string{}, changed: make(chan struct{})}
}

// patch marks ifaces in ready in force (for their containers) after
// forgetting the ifaces in drop: the incremental pass's update.
func (r *readiness) patch(ready map[string]string, drop []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// In place: the map is readiness's own (set copies), and a copy here
	// would make every ADD's patch cost as much as the host's endpoints.
	for _, k := range drop {
		delete(r.applied, k)
	}
	for k, v := range ready {
		r.applied[k] = v
		delete(r.refused, k)
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *readiness) set(applied map[string]string, refused map[string]*refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A copy: patch changes it in place, and applied is the render's.
	r.applied, r.refused = maps.Clone(applied), refused
	if r.applied == nil {
		r.applied = map[string]string{}
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// has reports whether iface carries container's rules now.
func (r *readiness) has(iface, container string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied[iface] == container
}

// refreshEndpoint reads one of this host's endpoint records and its
// profiles' tag entries (written in the same transaction) from etcd in one
// round trip, ahead of the watch: a CNI ADD is waiting for its rules, and
// the reconcile loop wakes on the change. The record read decides what is
// programmed; the profile names only choose which tag keys to read along.
// A failure only means the watch brings them, a little later.
//
// Most of the time the watch is not behind: the plugin commits the record
// before it creates the veth, and by the time it asks, the record (of this
// container) and its tag entries are here. Then there is nothing to read,
// and under many ADDs at once the read would be etcd CPU that every other
// ADD waits behind.
func (a *Agent) refreshEndpoint(ctx context.Context, key, iface, container string, profiles []string) {
	rest, ok := strings.CutPrefix(key, model.HostWorkloadPrefix(a.cfg.Name))
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 4 || parts[2] != "endpoint" {
		a.log.Warn("ready: not an endpoint key of this host; waiting for the watch", "key", key)
		return
	}
	keys := []string{key}
	for _, p := range profiles {
		if model.ValidName(p) == nil {
			keys = append(keys, model.TagMemberKey(p, a.cfg.Name, parts[0], parts[1], parts[3]))
		}
	}
	if e, ok := watch.DecodeKey[model.Endpoint](a.cache, model.HostSubtree(a.cfg.Name), key); ok && e.ContainerID == container && e.HostInterface == iface &&
		a.cache.Holds(append(keys, model.MemberKeyOf(&e))...) {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := a.cache.Refresh(rctx, keys...); err != nil {
		a.log.Warn("ready: read ahead of the watch failed; waiting for it", "key", key, "err", err)
		return
	}
	// Its member record (same transaction), when this host's rules read
	// its namespace's members: Refresh reads it only if it is followed.
	if e, ok := watch.DecodeKey[model.Endpoint](a.cache, model.HostSubtree(a.cfg.Name), key); ok {
		if _, err := a.cache.Refresh(rctx, model.MemberKeyOf(&e)); err != nil {
			a.log.Warn("ready: read ahead of the watch failed; waiting for it", "key", model.MemberKeyOf(&e), "err", err)
		}
	}
}

// wait blocks until iface carries container's rules, or ctx ends, or the
// rules are known not to be enforceable (a *refusal).
func (r *readiness) wait(ctx context.Context, iface, container string) error {
	for {
		r.mu.Lock()
		ok := r.applied[iface] == container
		no := r.refused[iface]
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return nil
		}
		if no != nil && no.container == container {
			return no
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rules for %s (container %s) not in force: %w", iface, container, ctx.Err())
		case <-ch:
		}
	}
}

// syncPolicy renders and applies the packet filter for this host's
// endpoints. It first makes the cache follow exactly the tags the rules
// name; rules are marked ready only once those tags are loaded.
//
// A render from a cache still loading what the rules name (the first pass
// after a restart, a profile that starts naming a tag) is not applied:
// it lacks members, and applying it would take working rules out of the
// kernel (a restarted daemon emptied a tag's set for ~50 ms, dropping new
// connections between running workloads). The kernel keeps what it has
// (new interfaces stay dropped: no rules, no traffic) until the load
// wakes the next pass. It reports whether the rules it applied are
// complete.
func (a *Agent) syncPolicy(v *view, p pass) (complete bool, err error) {
	a.inc.valid = false
	// Change counts first: a change after them makes the next incremental
	// pass fall back to a full one, never miss it.
	gens := map[string]uint64{model.PolicyPrefix: a.cache.Gen(model.PolicyPrefix), model.NamespacePrefix: a.cache.Gen(model.NamespacePrefix)}
	pols, nss := a.policyInputs()
	prepared := policy.PreparePolicies(pols)
	scope, all := policy.MemberScope(v.endpoints, prepared, nss)
	memPrefixes := memberPrefixes(scope, all)
	names := usedProfiles(v.endpoints)
	profiles, profRevs := a.readProfiles(names)
	tags := policy.Referenced(profiles, names)
	a.cache.SetPrefixes(Followed(a.cfg.Name, names, tags, memPrefixes)...)
	// Loaded before they are read: otherwise the rules may lack members
	// and must not be reported ready (the load wakes another pass).
	if !a.cache.Synced() {
		return false, nil
	}
	members := map[string][]model.Member{}
	for _, pre := range memPrefixes {
		gens[pre] = a.cache.Gen(pre)
		recs := watch.Decode[model.Member](a.cache, pre, nil)
		keys := make([]string, 0, len(recs))
		for k := range recs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ns := memberNamespace(k)
			members[ns] = append(members[ns], recs[k])
		}
	}
	tagMembers := map[string][]string{}
	tagRecs := map[string]tagRecord{}
	for _, t := range tags {
		recs, revs := watch.DecodeRev[model.TagMember](a.cache, model.TagMembersPrefix(t), nil)
		for k, m := range recs {
			nets := policy.ValidNets(m.Nets) // a forged entry costs only itself
			tagMembers[t] = append(tagMembers[t], nets...)
			tagRecs[k] = tagRecord{tag: t, nets: nets, rev: revs[k]}
		}
		sort.Strings(tagMembers[t])
	}
	out := policy.Render(policy.Input{Endpoints: v.endpoints, Profiles: profiles, Tags: tagMembers, HostPorts: a.cfg.HostPorts,
		Policies: prepared, Namespaces: nss, Members: members})
	applied, refused, err := a.applyPolicy(out, v.endpoints, p)
	if err != nil {
		return false, err
	}
	if !a.cache.Synced() {
		return false, nil // followed anew while rendering: the load wakes a pass
	}
	a.ready.set(applied, refused)
	a.inc.rebuild(v, tags, profRevs, tagRecs, prepared, gens)
	return true, nil
}

// applyPolicy programs rendered rules and says whose rules are in force.
// IPv6 fails closed: when the IPv6 table cannot be programmed, endpoints
// with an IPv6 address are refused with the cause while IPv4-only ones are
// still ready, and the status says why. An error means nothing could be
// relied on (sets or the IPv4 table).
func (a *Agent) applyPolicy(out policy.Output, eps []model.Endpoint, p pass) (applied map[string]string, refused map[string]*refusal, err error) {
	// Sets before the rules that name them; stale sets after.
	if err := p.syncSets(out.Sets...); err != nil {
		return nil, nil, err
	}
	if err := p.apply(a.ipt4, out.Filter4); err != nil {
		return nil, nil, err
	}
	v6 := a.ip6tablesErr
	if a.ipt6 != nil {
		if err := p.apply(a.ipt6, out.Filter6); err != nil {
			v6 = fmt.Errorf("IPv6 rules not applied: %w", err)
		}
	}
	if v6 != nil {
		v6 = fmt.Errorf("%w; IPv6 endpoint rules cannot be enforced", v6)
	}
	a.noteV6("IPv6 packet filter", &a.status.IPv6PolicyError, v6)
	a.destroyStaleSets(out.Sets, p)
	applied, refused = out.Ready, map[string]*refusal{}
	if v6 != nil {
		applied = map[string]string{}
		for iface, c := range out.Ready {
			applied[iface] = c
		}
		for _, e := range eps {
			if len(e.IPv6Nets) > 0 {
				delete(applied, e.HostInterface)
				refused[e.HostInterface] = &refusal{iface: e.HostInterface, container: e.ContainerID, cause: v6}
			}
		}
	}
	return applied, refused, nil
}

// destroyStaleSets removes tag, group, peer and named port sets no rule
// names any more (the rules that named them are gone by now).
func (a *Agent) destroyStaleSets(keep []iptables.Set, p pass) {
	wanted := map[string]bool{}
	for _, s := range keep {
		wanted[s.Name] = true
	}
	existing, err := p.listSets()
	if err != nil {
		a.log.Warn("cannot list ipsets; stale ones stay until the next pass", "err", err)
		return
	}
	for _, s := range existing {
		ours := false
		for _, pre := range policy.SetPrefixes {
			ours = ours || strings.HasPrefix(s, pre)
		}
		if ours && !wanted[s] {
			if err := a.sets.Destroy(s); err != nil {
				a.log.Warn("stale ipset", "set", s, "err", err)
			}
		}
	}
}

// noteV6 records in the status whether an IPv6 part works (err nil) or
// why not, and logs only when that changes: a broken ip6tables would
// otherwise log at every reconcile.
func (a *Agent) noteV6(what string, field *string, err error) {
	a.mu.Lock()
	was := *field
	*field = ""
	if err != nil {
		*field = err.Error()
	}
	a.mu.Unlock()
	switch {
	case err != nil && was == "":
		a.log.Error(what+" not in force", "err", err)
	case err == nil && was != "":
		a.log.Info(what + " in force again")
	}
}

// parseHostPorts reads "udp:53,tcp:8080" (the --workload-host-ports flag).
func ParseHostPorts(s string) ([]policy.HostPort, error) {
	var out []policy.HostPort
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		proto, port, ok := strings.Cut(item, ":")
		var n int
		if _, err := fmt.Sscanf(port, "%d", &n); !ok || err != nil || n < 1 || n > 65535 || (proto != "tcp" && proto != "udp") {
			return nil, fmt.Errorf("host port %q: want tcp:N or udp:N", item)
		}
		out = append(out, policy.HostPort{Protocol: proto, Port: n})
	}
	return out, nil
}

// readyTimeout bounds one /ready request.
const readyTimeout = 30 * time.Second
