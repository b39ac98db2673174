package agent

import (
	"net"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/node/policy"
	"github.com/tabby-net/tabby/node/watch"
	"github.com/tabby-net/tabby/pkg/model"
)

// incremental is what the last full policy pass programmed, per key, so
// that the next event-driven pass can program only what changed: a new
// endpoint of an existing policy group is a set member or two and a tag
// member, whatever the number of endpoints on the host. Anything it cannot
// patch (a profile changed, a new group or tag, the IPv6 filter in doubt)
// falls back to the full render, which rebuilds this state. The reconcile
// loop's goroutine owns it.
type incremental struct {
	valid bool
	eps   map[string]incEndpoint // endpoint key -> what it contributed
	// groups with chains in force, and the profiles and tags the rules
	// were rendered from (their revisions).
	groups   map[string]bool
	profiles map[string]int64 // profile key -> revision
	used     map[string]bool  // profiles local endpoints named
	tags     []string         // tags the rules reference, sorted
	members  map[string]incTag
	count    map[string]int // tag set member -> how many tag records hold it
	perTag   map[string]int // tag -> how many of its records members holds
	blocks   []*net.IPNet   // this host's blocks at the last full pass
	// policies are the prepared policies the groups were computed with;
	// gens the change counts of the policy, namespace and followed member
	// prefixes at that pass: any change there needs a full pass.
	policies []model.Policy
	gens     map[string]uint64
	isolated map[string]bool // groups with a policy stage
	// borrowedChanged: a patch added or removed an endpoint with an address
	// outside the host's blocks, whose /32 BGP must (un)advertise.
	borrowedChanged bool
}

// borrowed reports whether any of e's addresses is outside blocks.
func borrowed(e *model.Endpoint, blocks []*net.IPNet) bool {
	for _, n := range e.Nets() {
		ip, _, err := net.ParseCIDR(n)
		if err != nil {
			continue
		}
		in := false
		for _, b := range blocks {
			if b.Contains(ip) {
				in = true
				break
			}
		}
		if !in {
			return true
		}
	}
	return false
}

type incEndpoint struct {
	rev              int64
	borrowed         bool // has an address outside this host's blocks (BGP advertises it)
	namedPorts       bool // declares named ports in an isolated group: in its named port sets
	group            string
	m4, m6           []string
	iface, container string
}

type incTag struct {
	rev  int64
	set4 string
	set6 string
	nets []string
}

// tagRecord is a tag member record as a full pass read it.
type tagRecord struct {
	tag  string
	nets []string
	rev  int64
}

// rebuild records what a full pass programmed, with the revisions of what
// it was rendered from.
func (in *incremental) rebuild(v *view, tags []string, profRevs map[string]int64, recs map[string]tagRecord, prepared []model.Policy, gens map[string]uint64) {
	*in = incremental{valid: true, blocks: v.blocks, eps: make(map[string]incEndpoint, len(v.endpoints)), groups: map[string]bool{}, profiles: profRevs,
		used: map[string]bool{}, tags: tags, members: make(map[string]incTag, len(recs)), count: map[string]int{}, perTag: map[string]int{},
		policies: prepared, gens: gens, isolated: map[string]bool{}}
	groups := policy.EndpointGroups(v.endpoints, prepared)
	for i := range v.endpoints {
		e := &v.endpoints[i]
		g := groups[i].ID
		in.isolated[g] = groups[i].Isolated
		in.groups[g] = true
		for _, p := range e.Profiles {
			in.used[p] = true
		}
		in.eps[e.Key()] = incEndpoint{rev: v.epRevs[e.Key()], borrowed: borrowed(e, v.blocks), group: g, namedPorts: in.isolated[g] && len(e.Ports) > 0,
			m4: policy.GroupMembers(e, iptables.V4),
			m6: policy.GroupMembers(e, iptables.V6), iface: e.HostInterface, container: e.ContainerID}
	}
	for k, r := range recs {
		it := incTag{rev: r.rev, set4: policy.SetName(r.tag, iptables.V4), set6: policy.SetName(r.tag, iptables.V6), nets: r.nets}
		in.members[k] = it
		in.perTag[r.tag]++
		for _, n := range r.nets {
			in.count[tagMember(it, n)]++
		}
	}
}

// tagMember is a tag member's key in count: its set and address.
func tagMember(it incTag, n string) string {
	if familyOf(n) == iptables.V6 {
		return it.set6 + " " + n
	}
	return it.set4 + " " + n
}

func familyOf(cidr string) iptables.Family {
	for i := 0; i < len(cidr); i++ {
		if cidr[i] == ':' {
			return iptables.V6
		}
	}
	return iptables.V4
}

// patchPolicy programs what changed since the last pass with set members
// alone and reports whether it could; false means a full pass is needed.
func (a *Agent) patchPolicy() bool {
	in := &a.inc
	if !in.valid || !a.cache.Synced() {
		return false
	}
	v6ok := a.ipt6 != nil && !a.v6PolicyBroken()
	// The profiles the rules were rendered from: any of them written,
	// created or deleted since needs a full pass.
	n := 0
	for p := range in.used {
		k := model.ProfileKey(p)
		same := true
		a.cache.Each(k, func(_ string, rev int64) {
			n++
			same = in.profiles[k] == rev
		})
		if !same {
			return false
		}
	}
	if n != len(in.profiles) {
		return false
	}
	// Policies, namespaces, followed member records: a full pass.
	for pre, g := range in.gens {
		if a.cache.Gen(pre) != g {
			return false
		}
	}
	type change struct{ add, del []string }
	changes := map[string]*change{}
	at := func(set string) *change {
		c := changes[set]
		if c == nil {
			c = &change{}
			changes[set] = c
		}
		return c
	}
	// Endpoints: what is new, changed or gone. The scan allocates nothing
	// unless something changed: it runs on every pass of a busy host.
	sub := model.HostSubtree(a.cfg.Name)
	var changed []string
	known := 0
	a.cache.Each(sub, func(k string, rev int64) {
		if !isEndpointKey(k) {
			return
		}
		old, ok := in.eps[k]
		if ok {
			known++
		}
		if !ok || old.rev != rev {
			changed = append(changed, k)
		}
	})
	var gone []string
	if known < len(in.eps) {
		live := map[string]bool{}
		a.cache.Each(sub, func(k string, _ int64) { live[k] = true })
		for k := range in.eps {
			if !live[k] {
				gone = append(gone, k)
			}
		}
	}
	next := map[string]incEndpoint{}
	for _, k := range changed {
		e, ok := watch.DecodeKey[model.Endpoint](a.cache, sub, k)
		if !ok {
			return false
		}
		g := policy.GroupOfEndpoint(&e, in.policies)
		if !in.groups[g] {
			return false // a new group: its chains and set come from a full pass
		}
		if in.isolated[g] && len(e.Ports) > 0 {
			return false // its named ports go in its group's sets: a full pass
		}
		for _, p := range e.Profiles {
			if !in.used[p] {
				return false // its profile's chains and tags are not rendered yet
			}
		}
		if len(e.IPv6Nets) > 0 && !v6ok {
			return false // the full pass refuses it, with the cause
		}
		next[k] = incEndpoint{group: g, borrowed: borrowed(&e, in.blocks), m4: policy.GroupMembers(&e, iptables.V4), m6: policy.GroupMembers(&e, iptables.V6),
			iface: e.HostInterface, container: e.ContainerID}
	}
	rev := map[string]int64{}
	if len(changed) > 0 {
		a.cache.Each(sub, func(k string, r int64) {
			if _, ok := next[k]; ok {
				rev[k] = r
			}
		})
	}
	// Tag members of the tags the rules reference.
	tagNext := map[string]incTag{}
	var tagGone []string
	for _, t := range in.tags {
		prefix := model.TagMembersPrefix(t)
		var tchanged []string
		seen := 0
		a.cache.Each(prefix, func(k string, r int64) {
			old, ok := in.members[k]
			if ok {
				seen++
			}
			if !ok || old.rev != r {
				tchanged = append(tchanged, k)
			}
		})
		if seen < in.perTag[t] {
			live := map[string]bool{}
			a.cache.Each(prefix, func(k string, _ int64) { live[k] = true })
			for k := range in.members {
				if strings.HasPrefix(k, prefix) && !live[k] {
					tagGone = append(tagGone, k)
				}
			}
		}
		for _, k := range tchanged {
			m, ok := watch.DecodeKey[model.TagMember](a.cache, prefix, k)
			if !ok {
				return false
			}
			tagNext[k] = incTag{set4: policy.SetName(t, iptables.V4), set6: policy.SetName(t, iptables.V6), nets: policy.ValidNets(m.Nets)}
		}
		if len(tchanged) > 0 {
			a.cache.Each(prefix, func(k string, r int64) {
				if it, ok := tagNext[k]; ok {
					it.rev = r
					tagNext[k] = it
				}
			})
		}
	}
	if len(changed) == 0 && len(gone) == 0 && len(tagNext) == 0 && len(tagGone) == 0 {
		return true
	}
	// The set changes, group members first.
	var drop []string
	for _, k := range append(gone, changed...) {
		if old, ok := in.eps[k]; ok && old.namedPorts {
			return false // it leaves its group's named port sets: a full pass
		}
	}
	for _, k := range append(gone, changed...) {
		old, ok := in.eps[k]
		if !ok {
			continue
		}
		at(policy.GroupSetName(old.group, iptables.V4)).del = append(at(policy.GroupSetName(old.group, iptables.V4)).del, old.m4...)
		at(policy.GroupSetName(old.group, iptables.V6)).del = append(at(policy.GroupSetName(old.group, iptables.V6)).del, old.m6...)
		drop = append(drop, old.iface)
		in.borrowedChanged = in.borrowedChanged || old.borrowed
	}
	for k, e := range next {
		in.borrowedChanged = in.borrowedChanged || e.borrowed
		at(policy.GroupSetName(e.group, iptables.V4)).add = append(at(policy.GroupSetName(e.group, iptables.V4)).add, e.m4...)
		at(policy.GroupSetName(e.group, iptables.V6)).add = append(at(policy.GroupSetName(e.group, iptables.V6)).add, e.m6...)
		_ = k
	}
	// A tag set member stays while any tag record still holds it. The
	// counts change in place: if a patch fails the state is dropped and the
	// next pass is a full one.
	count := in.count
	tagDel := func(it incTag) {
		for _, n := range it.nets {
			m := tagMember(it, n)
			if count[m]--; count[m] == 0 {
				set := it.set4
				if familyOf(n) == iptables.V6 {
					set = it.set6
				}
				at(set).del = append(at(set).del, n)
			}
		}
	}
	for _, k := range tagGone {
		tagDel(in.members[k])
	}
	for k, it := range tagNext {
		if old, ok := in.members[k]; ok {
			tagDel(old)
		}
		for _, n := range it.nets {
			m := tagMember(it, n)
			if count[m]++; count[m] == 1 {
				set := it.set4
				if familyOf(n) == iptables.V6 {
					set = it.set6
				}
				at(set).add = append(at(set).add, n)
			}
		}
	}
	names := make([]string, 0, len(changes))
	for s := range changes {
		names = append(names, s)
	}
	// Deletions before additions would open nothing either way; sorted for
	// a stable order.
	sort.Strings(names)
	for _, s := range names {
		c := changes[s]
		if len(c.add) == 0 && len(c.del) == 0 {
			continue
		}
		if err := a.sets.Patch(s, c.add, c.del); err != nil {
			a.log.Info("incremental policy pass failed; a full pass follows", "err", err)
			in.valid = false
			return false
		}
	}
	// In force: record it, then tell the waiting ADDs.
	for _, k := range gone {
		delete(in.eps, k)
	}
	for k, e := range next {
		e.rev = rev[k]
		in.eps[k] = e
	}
	for _, k := range tagGone {
		delete(in.members, k)
		in.perTag[tagOfKey(k)]--
	}
	for k, it := range tagNext {
		if _, ok := in.members[k]; !ok {
			in.perTag[tagOfKey(k)]++
		}
		in.members[k] = it
	}
	ready := map[string]string{}
	for _, e := range next {
		ready[e.iface] = e.container
	}
	a.ready.patch(ready, drop)
	return true
}

// v6PolicyBroken: the IPv6 filter did not apply at the last full pass.
func (a *Agent) v6PolicyBroken() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status.IPv6PolicyError != ""
}

// tagOfKey is the tag of a tag member key (tag/<tag>/...).
func tagOfKey(k string) string {
	rest := strings.TrimPrefix(k, model.TagPrefix)
	t, _, _ := strings.Cut(rest, "/")
	return t
}
