// Package policy turns endpoints and profiles into iptables chains and
// ipsets. It is pure: the same inputs give the same rules, byte for byte, so
// the daemon can diff against the kernel and apply only what changed.
//
// Packet path (filter table; the same in ip6tables):
//
//	FORWARD -> TABBY-FORWARD: traffic in or out of a tby* interface goes to TABBY-WL-FWD
//	TABBY-WL-FWD: established/related accepted at once (the fast path),
//	    invalid dropped, then the sender's outbound policy (TABBY-FROM-WL
//	    dispatch), then the receiver's inbound policy (TABBY-TO-WL
//	    dispatch), then accept.
//	dispatch: endpoints with the same ordered profiles share a policy
//	    group: one ipset (hash:net,iface) of its members' (address,
//	    interface) pairs and one chain per direction. The dispatch has a
//	    rule per group, matching the set by source address and incoming
//	    interface (from) or destination address and outgoing interface
//	    (to): that match is also the anti-spoofing check. A packet of an
//	    interface in no set is dropped (fail closed). A new endpoint is an
//	    ipset add, so programming it costs the same on a host with a
//	    thousand endpoints as on an empty one; only a new group adds rules.
//	group chain: each profile's chain in order; a profile's allow sets the
//	    accept mark and returns, a deny drops; no match in any profile: drop.
//	    In a direction the group's policies isolate, a profile's allow goes
//	    on (-g) to the group's policy stage instead of returning.
//	policy stage (TABBY-QI-<group> inbound = ingress, TABBY-QO-<group>
//	    outbound = egress): the rules of the policies that select the
//	    group's endpoints and have that type, in evaluation order
//	    (model.SortPolicies); the first matching rule decides (allow:
//	    return, the packet passes; deny: drop); no match: drop. A rule's
//	    alternatives (ports x peers) are lines that set the mark, then one
//	    verdict line tests it. Peers by selector are ipsets of member
//	    addresses (tabby-s4-/tabby-s6-<hash of the peer>), a CIDR with
//	    exceptions a sub-chain TABBY-QX-<hash> (exceptions return first, so
//	    an address in both the CIDR and an exception is not matched), named
//	    ports hash:ip,port sets (tabby-n4-/tabby-n6-) of the endpoints that
//	    declare them (ingress: the group's own; egress: the peer's members).
//	INPUT -> TABBY-INPUT: a workload reaches its own host only for what the
//	    host needs to serve it (IPv6 neighbour discovery; ARP is not IP) and
//	    the ports the operator allows; replies to the host's own
//	    connections pass.
//
// Host-to-workload traffic (kubelet-style health checks) is not filtered.
//
// Composition of profiles and policies: a packet passes a direction only if
// the endpoint's profiles allow it (exactly as without policies) and, when
// a policy that selects the endpoint has that direction's type (the
// endpoint is isolated in it), one of those policies' rules allows it.
// Profiles always apply: a profile's deny still denies, and an endpoint
// with no profile passes nothing, policies or not. A direction no selecting
// policy isolates is decided by the profiles alone. Endpoints with the same
// ordered profiles and the same isolating policies per direction form one
// policy group and share its chains; a group without policies keeps the id
// it had before policies existed. Label keys and values never reach rule
// text: every set and chain name is a hash.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/pkg/model"
)

// Mark is the packet mark bit a profile's allow sets.
const Mark = "0x10000/0x10000"

// Chain names.
const (
	ChainForward  = "TABBY-FORWARD"
	ChainWLFwd    = "TABBY-WL-FWD"
	ChainFromWL   = "TABBY-FROM-WL"
	ChainToWL     = "TABBY-TO-WL"
	ChainInput    = "TABBY-INPUT"
	ChainWLToHost = "TABBY-WL-TO-HOST"
)

// HostPort is a port on the host that workloads may reach (e.g. udp 53).
type HostPort struct {
	Protocol string
	Port     int
}

// Input is everything the rules depend on.
type Input struct {
	Endpoints []model.Endpoint         // this host's
	Profiles  map[string]model.Profile // by name
	Tags      map[string][]string      // tag -> member CIDRs (all hosts)
	HostPorts []HostPort
	// Policies are every policy (Render selects the ones that apply to
	// local endpoints); Namespaces the namespaces' labels by name; Members
	// the member records, by namespace ("" outside any), of at least the
	// namespaces MemberScope names.
	Policies   []model.Policy
	Namespaces map[string]model.Namespace
	Members    map[string][]model.Member
}

// Output is what to program.
type Output struct {
	Filter4, Filter6 iptables.Table
	Sets             []iptables.Set
	// Tags are the tags the rules reference: the prefixes the daemon must
	// follow in etcd's tag index.
	Tags []string
	// MemberNamespaces are the namespaces whose member records the rules
	// read (AllMembers: every namespace's): the member index prefixes the
	// daemon must follow.
	MemberNamespaces []string
	AllMembers       bool
	// Ready lists, per host interface, the container ID whose rules this
	// output holds (for the CNI plugin's wait).
	Ready map[string]string
}

func hash(s string, n int) string {
	h := sha256.Sum256([]byte(s))
	return strings.ToUpper(hex.EncodeToString(h[:]))[:n]
}

// SetName is the ipset of a tag's members for one family.
func SetName(tag string, f iptables.Family) string {
	if f == iptables.V6 {
		return TagSetPrefix6 + hash(tag, 16)
	}
	return TagSetPrefix4 + hash(tag, 16)
}

// Set name prefixes of tags' member sets, one per family: the sets tabby
// may destroy once no rule names them.
const (
	TagSetPrefix4 = "tabby-t4-"
	TagSetPrefix6 = "tabby-t6-"
)

// direction is which way a packet crosses a workload's interface, from the
// workload's point of view.
type direction int

const (
	inbound  direction = iota // to the workload
	outbound                  // from the workload
)

func profileChain(name string, d direction) string {
	if d == inbound {
		return "TABBY-PI-" + hash(name, 16)
	}
	return "TABBY-PO-" + hash(name, 16)
}

// group is the policy group of endpoints with one ordered profile list
// and the same policies isolating them, per direction.
type group struct {
	id       string // hash of the profile and policy lists
	profiles []string
	in, out  []*model.Policy // isolating policies, in evaluation order
	members  []*model.Endpoint
}

func groupID(profiles []string) string { return hash("group:"+strings.Join(profiles, ","), 10) }

// GroupOf is the policy group of an endpoint with these ordered profiles.
func GroupOf(profiles []string) string { return groupID(profiles) }

// GroupMembers are an endpoint's members of its group's set for one family.
func GroupMembers(e *model.Endpoint, f iptables.Family) []string {
	nets := e.IPv4Nets
	if f == iptables.V6 {
		nets = e.IPv6Nets
	}
	out := make([]string, 0, len(nets))
	for _, n := range nets {
		out = append(out, n+","+e.HostInterface)
	}
	return out
}

func groupChain(id string, d direction) string {
	if d == outbound {
		return "TABBY-WF-" + id
	}
	return "TABBY-WT-" + id
}

// Set name prefixes of the policy groups' member sets, one per family.
const (
	GroupSetPrefix4 = "tabby-w4-"
	GroupSetPrefix6 = "tabby-w6-"
)

// GroupSetName is a policy group's member set for one family.
func GroupSetName(id string, f iptables.Family) string {
	if f == iptables.V6 {
		return GroupSetPrefix6 + strings.ToLower(id)
	}
	return GroupSetPrefix4 + strings.ToLower(id)
}

// groups sorts endpoints into their policy groups, ordered by id.
func groups(eps []model.Endpoint) []*group { return groupsWith(eps, nil) }

// groupsWith is groups given the prepared policies.
func groupsWith(eps []model.Endpoint, prepared []model.Policy) []*group {
	byList := map[string]*group{} // most endpoints share a few lists: hash each once
	var out []*group
	sels := parseSelectors(prepared)
	for i := range eps {
		e := &eps[i]
		in, outP := selectingWith(prepared, sels, e)
		inIDs, outIDs := policyIDs(in), policyIDs(outP)
		list := strings.Join(e.Profiles, ",") + "|" + strings.Join(inIDs, ",") + "|" + strings.Join(outIDs, ",")
		g, ok := byList[list]
		if !ok {
			g = &group{id: groupKeyID(e.Profiles, inIDs, outIDs), profiles: e.Profiles, in: in, out: outP}
			byList[list] = g
			out = append(out, g)
		}
		g.members = append(g.members, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// members are a group's (address,interface) pairs for one family, as
// ipset prints them.
func (g *group) setMembers(f iptables.Family) []string {
	out := make([]string, 0, len(g.members))
	for _, e := range g.members {
		out = append(out, GroupMembers(e, f)...)
	}
	return out
}

// Referenced returns the tags named by the rules of the given profiles.
func Referenced(profiles map[string]model.Profile, names []string) []string {
	seen := map[string]bool{}
	for _, n := range names {
		p, ok := profiles[n]
		if !ok {
			continue
		}
		for _, r := range append(append([]model.Rule{}, p.Inbound...), p.Outbound...) {
			if r.SrcTag != "" {
				seen[r.SrcTag] = true
			}
			if r.DstTag != "" {
				seen[r.DstTag] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for t := range seen {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Render computes the chains and sets.
func Render(in Input) Output {
	out := Output{Ready: make(map[string]string, len(in.Endpoints))}
	eps := append([]model.Endpoint{}, in.Endpoints...)
	sort.Slice(eps, func(i, j int) bool { return eps[i].HostInterface < eps[j].HostInterface })
	used := map[string]bool{}
	var usedNames []string
	for _, e := range eps {
		for _, p := range e.Profiles {
			if !used[p] {
				used[p] = true
				usedNames = append(usedNames, p)
			}
		}
	}
	sort.Strings(usedNames)
	out.Tags = Referenced(in.Profiles, usedNames)
	gs := groupsWith(eps, PreparePolicies(in.Policies))
	pc := newPolicyCtx(&in)
	for _, g := range gs {
		pc.scopeOf(g)
	}
	out.MemberNamespaces, out.AllMembers = pc.scopeList(), pc.all
	out.Filter4 = renderFamily(in, gs, usedNames, iptables.V4, pc)
	out.Filter6 = renderFamily(in, gs, usedNames, iptables.V6, pc)
	for _, tag := range out.Tags {
		var m4, m6 []string
		for _, c := range ValidNets(in.Tags[tag]) {
			if strings.Contains(c, ":") {
				m6 = append(m6, c)
			} else {
				m4 = append(m4, c)
			}
		}
		out.Sets = append(out.Sets,
			iptables.Set{Name: SetName(tag, iptables.V4), Type: "hash:net", Family: iptables.V4, Members: m4},
			iptables.Set{Name: SetName(tag, iptables.V6), Type: "hash:net", Family: iptables.V6, Members: m6})
	}
	for _, g := range gs {
		for _, f := range []iptables.Family{iptables.V4, iptables.V6} {
			out.Sets = append(out.Sets, iptables.Set{Name: GroupSetName(g.id, f), Type: "hash:net,iface", Family: f, Members: g.setMembers(f)})
		}
	}
	names := make([]string, 0, len(pc.sets))
	for n := range pc.sets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		out.Sets = append(out.Sets, *pc.sets[n])
	}
	for _, e := range eps {
		out.Ready[e.HostInterface] = e.ContainerID
	}
	return out
}

func renderFamily(in Input, gs []*group, profiles []string, fam iptables.Family, pc *policyCtx) iptables.Table {
	ct := "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
	inv := "-m conntrack --ctstate INVALID -j DROP"
	chains := []iptables.Chain{
		{Name: ChainForward, Rules: []string{"-i tby+ -j " + ChainWLFwd, "-o tby+ -j " + ChainWLFwd}},
		{Name: ChainWLFwd, Rules: []string{ct, inv, "-i tby+ -j " + ChainFromWL, "-o tby+ -j " + ChainToWL, "-j ACCEPT"}},
		{Name: ChainInput, Rules: []string{"-i tby+ -j " + ChainWLToHost}},
	}
	toHost := []string{ct, inv}
	if fam == iptables.V6 {
		// Router solicitation, neighbour solicitation and advertisement,
		// numbered as iptables-save prints them.
		for _, t := range []string{"133", "135", "136"} {
			toHost = append(toHost, "-p ipv6-icmp -m icmp6 --icmpv6-type "+t+" -j ACCEPT")
		}
	}
	for _, hp := range in.HostPorts {
		toHost = append(toHost, fmt.Sprintf("-p %s -m %s --dport %d -j ACCEPT", hp.Protocol, hp.Protocol, hp.Port))
	}
	toHost = append(toHost, "-j DROP")
	chains = append(chains, iptables.Chain{Name: ChainWLToHost, Rules: toHost})

	for _, dir := range []struct {
		chain, match string
		d            direction
	}{{ChainFromWL, "src,src", outbound}, {ChainToWL, "dst,dst", inbound}} {
		var rules []string
		for _, g := range gs {
			rules = append(rules, fmt.Sprintf("-m set --match-set %s %s -g %s", GroupSetName(g.id, fam), dir.match, groupChain(g.id, dir.d)))
		}
		rules = append(rules, "-j DROP") // a tby interface tabby has no policy for (yet)
		chains = append(chains, iptables.Chain{Name: dir.chain, Rules: rules})
	}
	pc.subs = map[string]iptables.Chain{}
	for _, g := range gs {
		chains = append(chains, groupChains(g, in.Profiles)...)
		if len(g.out) > 0 {
			chains = append(chains, pc.policyStage(g, outbound, fam))
		}
		if len(g.in) > 0 {
			chains = append(chains, pc.policyStage(g, inbound, fam))
		}
	}
	subs := make([]string, 0, len(pc.subs))
	for n := range pc.subs {
		subs = append(subs, n)
	}
	sort.Strings(subs)
	for _, n := range subs {
		chains = append(chains, pc.subs[n])
	}
	for _, name := range profiles {
		p, ok := in.Profiles[name]
		if !ok {
			continue // a profile named on an endpoint but not defined: matches nothing
		}
		chains = append(chains,
			iptables.Chain{Name: profileChain(name, inbound), Rules: ruleLines(p.Inbound, fam)},
			iptables.Chain{Name: profileChain(name, outbound), Rules: ruleLines(p.Outbound, fam)})
	}
	return iptables.Table{Name: "filter", Chains: chains, Hooks: []iptables.Hook{
		{Chain: "FORWARD", Target: ChainForward},
		{Chain: "INPUT", Target: ChainInput},
	}}
}

// groupChains are a policy group's chains: its profiles in order, each
// direction, then drop. A profile's allow passes the packet on: out of the
// chain, or, in a direction the group's policies isolate, to the group's
// policy stage, which then decides.
func groupChains(g *group, profiles map[string]model.Profile) []iptables.Chain {
	clear := "-j MARK --set-xmark 0x0/0x10000"
	from, to := []string{clear}, []string{clear}
	pass := func(d direction, isolated bool) string {
		if isolated {
			return "-m mark --mark " + Mark + " -g " + policyChain(g.id, d)
		}
		return "-m mark --mark " + Mark + " -j RETURN"
	}
	for _, p := range g.profiles {
		if _, ok := profiles[p]; !ok {
			continue // named but not defined: matches nothing
		}
		from = append(from, "-j "+profileChain(p, outbound), pass(outbound, len(g.out) > 0))
		to = append(to, "-j "+profileChain(p, inbound), pass(inbound, len(g.in) > 0))
	}
	from = append(from, "-j DROP")
	to = append(to, "-j DROP")
	return []iptables.Chain{
		{Name: groupChain(g.id, outbound), Rules: from},
		{Name: groupChain(g.id, inbound), Rules: to},
	}
}

// ruleLines renders a profile's rules (of one direction) for one family. A
// rule whose CIDR is of the other family does not apply in this table.
func ruleLines(rules []model.Rule, fam iptables.Family) []string {
	var out []string
	for _, r := range rules {
		m, ok := match(r, fam)
		if !ok {
			continue
		}
		if r.Action == model.ActionDeny {
			out = append(out, strings.TrimSpace(m+" -j DROP"))
			continue
		}
		out = append(out, strings.TrimSpace(m+" -j MARK --set-xmark "+Mark), "-m mark --mark "+Mark+" -j RETURN")
	}
	return out
}

func familyOf(cidr string) iptables.Family {
	if strings.Contains(cidr, ":") {
		return iptables.V6
	}
	return iptables.V4
}

// match renders a rule's match in the order iptables-save prints it
// (addresses, protocol, then matches as given), so that rules read back from
// the kernel compare equal and an unchanged profile is never rewritten.
func match(r model.Rule, fam iptables.Family) (string, bool) {
	var parts []string
	for _, c := range []struct {
		net, flag string
	}{{r.SrcNet, "-s"}, {r.DstNet, "-d"}} {
		if c.net == "" {
			continue
		}
		if familyOf(c.net) != fam {
			return "", false
		}
		if _, _, err := net.ParseCIDR(c.net); err != nil {
			return "", false
		}
		parts = append(parts, c.flag+" "+c.net)
	}
	switch r.Protocol {
	case "":
	case "icmp", "icmpv6":
		if fam == iptables.V6 {
			parts = append(parts, "-p ipv6-icmp")
		} else {
			parts = append(parts, "-p icmp")
		}
	default:
		parts = append(parts, "-p "+r.Protocol)
	}
	if r.SrcTag != "" {
		parts = append(parts, "-m set --match-set "+SetName(r.SrcTag, fam)+" src")
	}
	if r.DstTag != "" {
		parts = append(parts, "-m set --match-set "+SetName(r.DstTag, fam)+" dst")
	}
	if r.DstPorts != "" && (r.Protocol == "tcp" || r.Protocol == "udp") {
		parts = append(parts, "-m "+r.Protocol+" --dport "+r.DstPorts)
	}
	return strings.Join(parts, " "), true
}

// ValidNets keeps the entries that are CIDRs. Tag and member index entries
// are written by every host (etcd cannot narrow them to their writer), so a
// forged entry must cost nothing but itself: anything else would reach
// ipset's input, where iptables.Sets refuses it and with it the whole
// pass, for every workload of the host.
func ValidNets(nets []string) []string {
	out := nets[:0:0]
	for _, n := range nets {
		if _, _, err := net.ParseCIDR(n); err == nil && !strings.ContainsAny(n, " \t\r\n") {
			out = append(out, n)
		}
	}
	return out
}
