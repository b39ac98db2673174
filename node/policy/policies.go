package policy

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/selector"
)

// Set name prefixes of the policies' sets, one per family: the members of
// a peer selector (s) and the (address, protocol:port) pairs a named port
// resolves to (n).
const (
	PeerSetPrefix4      = "tabby-s4-"
	PeerSetPrefix6      = "tabby-s6-"
	NamedPortSetPrefix4 = "tabby-n4-"
	NamedPortSetPrefix6 = "tabby-n6-"
)

// SetPrefixes are the name prefixes of every set Render makes: the sets
// tabby may destroy once no rule names them.
var SetPrefixes = []string{TagSetPrefix4, TagSetPrefix6, GroupSetPrefix4, GroupSetPrefix6,
	PeerSetPrefix4, PeerSetPrefix6, NamedPortSetPrefix4, NamedPortSetPrefix6}

func familySet(p4, p6, key string, f iptables.Family) string {
	if f == iptables.V6 {
		return p6 + hash(key, 16)
	}
	return p4 + hash(key, 16)
}

// PolicyID names a policy within the rules' keys (never in rule text).
func PolicyID(p *model.Policy) string { return model.PolicyKey(p.Namespace, p.Name) }

// PreparePolicies returns the policies in evaluation order (SortPolicies),
// each a canonical copy (Validate on a copy: the input stays untouched).
// A policy that does not validate keeps its selector and isolates what it
// selects in both directions with no rule: it fails closed.
func PreparePolicies(ps []model.Policy) []model.Policy {
	out := make([]model.Policy, 0, len(ps))
	for i := range ps {
		p := clonePolicy(ps[i])
		if err := p.Validate(); err != nil {
			q := clonePolicy(ps[i])
			q.Types = []string{model.PolicyIngress, model.PolicyEgress}
			q.Ingress, q.Egress = nil, nil
			if s, err := selector.Parse(q.Selector); err == nil {
				q.Selector = s.String()
			}
			p = q
		}
		out = append(out, p)
	}
	model.SortPolicies(out)
	return out
}

func clonePolicy(p model.Policy) model.Policy {
	p.Types = append([]string(nil), p.Types...)
	p.Ingress = cloneRules(p.Ingress)
	p.Egress = cloneRules(p.Egress)
	return p
}

func cloneRules(rs []model.PolicyRule) []model.PolicyRule {
	if rs == nil {
		return nil
	}
	out := make([]model.PolicyRule, len(rs))
	for i, r := range rs {
		r.Ports = append([]model.PolicyPort(nil), r.Ports...)
		peers := make([]model.Peer, len(r.Peers))
		for j, q := range r.Peers {
			q.Except = append([]string(nil), q.Except...)
			if q.NamespaceSelector != nil {
				s := *q.NamespaceSelector
				q.NamespaceSelector = &s
			}
			peers[j] = q
		}
		if r.Peers == nil {
			peers = nil
		}
		r.Peers = peers
		out[i] = r
	}
	return out
}

// Selecting returns, in evaluation order, the prepared policies that
// select an endpoint and have ingress (in) or egress (out) rules.
func Selecting(prepared []model.Policy, e *model.Endpoint) (in, out []*model.Policy) {
	return selectingWith(prepared, parseSelectors(prepared), e)
}

// parseSelectors parses the policies' selectors once for many endpoints
// (nil: unparsable, selects nothing).
func parseSelectors(prepared []model.Policy) []*selector.Selector {
	out := make([]*selector.Selector, len(prepared))
	for i := range prepared {
		if s, err := selector.Parse(prepared[i].Selector); err == nil {
			out[i] = &s
		}
	}
	return out
}

// selectingWith is Selecting with the selectors parsed (as p.Selects).
func selectingWith(prepared []model.Policy, sels []*selector.Selector, e *model.Endpoint) (in, out []*model.Policy) {
	for i := range prepared {
		p := &prepared[i]
		if (p.Namespace != "" && p.Namespace != e.Namespace) || sels[i] == nil || !sels[i].Matches(e.Labels) {
			continue
		}
		if p.Applies(model.PolicyIngress) {
			in = append(in, p)
		}
		if p.Applies(model.PolicyEgress) {
			out = append(out, p)
		}
	}
	return in, out
}

func policyIDs(ps []*model.Policy) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = PolicyID(p)
	}
	return out
}

// GroupOfEndpoint is an endpoint's policy group given the prepared
// policies: its ordered profiles and the policies that isolate it.
func GroupOfEndpoint(e *model.Endpoint, prepared []model.Policy) string {
	in, out := Selecting(prepared, e)
	return groupKeyID(e.Profiles, policyIDs(in), policyIDs(out))
}

// EndpointGroup is an endpoint's policy group and whether policies
// isolate it (in either direction).
type EndpointGroup struct {
	ID       string
	Isolated bool
}

// EndpointGroups is GroupOfEndpoint for many endpoints, parsing each
// policy's selector once.
func EndpointGroups(eps []model.Endpoint, prepared []model.Policy) []EndpointGroup {
	sels := parseSelectors(prepared)
	out := make([]EndpointGroup, len(eps))
	for i := range eps {
		in, o := selectingWith(prepared, sels, &eps[i])
		out[i] = EndpointGroup{ID: groupKeyID(eps[i].Profiles, policyIDs(in), policyIDs(o)), Isolated: len(in)+len(o) > 0}
	}
	return out
}

// groupKeyID: without policies a group keeps the id it had before
// policies existed (its chains and set are not rebuilt on an upgrade).
func groupKeyID(profiles, in, out []string) string {
	if len(in) == 0 && len(out) == 0 {
		return groupID(profiles)
	}
	return hash("group:"+strings.Join(profiles, ",")+"|in:"+strings.Join(in, ",")+"|out:"+strings.Join(out, ","), 10)
}

func policyChain(id string, d direction) string {
	if d == outbound {
		return "TABBY-QO-" + id
	}
	return "TABBY-QI-" + id
}

// nsScope is the namespaces a peer's selector looks in: all, or names.
type nsScope struct {
	all   bool
	names []string // sorted
	key   string   // what the scope is, unresolved: the peer set's name part
}

// peerNamespaces resolves a selector peer's namespaces.
func peerNamespaces(p *model.Policy, q *model.Peer, namespaces map[string]model.Namespace) nsScope {
	switch {
	case q.NamespaceSelector == nil && p.Namespace != "":
		return nsScope{names: []string{p.Namespace}, key: "ns:" + p.Namespace}
	case q.NamespaceSelector == nil || strings.TrimSpace(*q.NamespaceSelector) == "":
		return nsScope{all: true, key: "ns:*"}
	}
	s, err := selector.Parse(*q.NamespaceSelector)
	sc := nsScope{key: "nssel:" + *q.NamespaceSelector}
	if err != nil {
		return sc // selects no namespace
	}
	sc.key = "nssel:" + s.String()
	for name, n := range namespaces {
		if name != "" && s.Matches(n.Labels) {
			sc.names = append(sc.names, name)
		}
	}
	sort.Strings(sc.names)
	return sc
}

func (s nsScope) has(ns string) bool {
	if s.all {
		return true
	}
	i := sort.SearchStrings(s.names, ns)
	return i < len(s.names) && s.names[i] == ns
}

// policyCtx is what resolving policy rules needs, shared by the families.
type policyCtx struct {
	in    *Input
	sets  map[string]*iptables.Set // by name
	subs  map[string]iptables.Chain
	scope map[string]bool // member namespaces the rules read
	all   bool            // ... or every namespace
}

func newPolicyCtx(in *Input) *policyCtx {
	return &policyCtx{in: in, sets: map[string]*iptables.Set{}, subs: map[string]iptables.Chain{}, scope: map[string]bool{}}
}

// eachMember calls f with every member of the scope's namespaces (the
// result is sorted by the callers: the order does not matter).
func (c *policyCtx) eachMember(sc nsScope, f func(*model.Member)) {
	if sc.all {
		for _, ms := range c.in.Members {
			for i := range ms {
				f(&ms[i])
			}
		}
		return
	}
	for _, ns := range sc.names {
		ms := c.in.Members[ns]
		for i := range ms {
			f(&ms[i])
		}
	}
}

func (c *policyCtx) need(s nsScope) {
	if s.all {
		c.all = true
		return
	}
	for _, n := range s.names {
		c.scope[n] = true
	}
}

// addSet records a set (idempotent: equal keys give equal sets).
func (c *policyCtx) addSet(s iptables.Set) string {
	if _, ok := c.sets[s.Name]; !ok {
		c.sets[s.Name] = &s
	}
	return s.Name
}

// peerSet is the set of a selector peer's members for one family.
func (c *policyCtx) peerSet(p *model.Policy, q *model.Peer, f iptables.Family) (string, nsScope) {
	sc := peerNamespaces(p, q, c.in.Namespaces)
	sel, err := selector.Parse(q.Selector)
	canon := q.Selector
	if err == nil {
		canon = sel.String()
	}
	name := familySet(PeerSetPrefix4, PeerSetPrefix6, "peer|"+sc.key+"|sel:"+canon, f)
	if _, ok := c.sets[name]; ok {
		return name, sc
	}
	var members []string
	if err == nil {
		c.eachMember(sc, func(m *model.Member) {
			if sel.Matches(m.Labels) {
				members = append(members, netsOf(m.Nets, f)...)
			}
		})
	}
	c.addSet(iptables.Set{Name: name, Type: "hash:net", Family: f, Members: sortedUnique(members)})
	return name, sc
}

// egressPortSet is the set of (address, proto:port) of the members a
// named port resolves to on the destination side: those of the selector
// peer (q nil: every member of every namespace) that declare it. Empty:
// "" (the line matches nothing).
func (c *policyCtx) egressPortSet(p *model.Policy, q *model.Peer, port model.PolicyPort, f iptables.Family) string {
	var sc nsScope
	var sel selector.Selector
	key := "*"
	if q != nil {
		sc = peerNamespaces(p, q, c.in.Namespaces)
		s, err := selector.Parse(q.Selector)
		if err != nil {
			return ""
		}
		sel = s
		key = sc.key + "|sel:" + s.String()
	} else {
		sc = nsScope{all: true}
		sel = selector.Everything()
	}
	name := familySet(NamedPortSetPrefix4, NamedPortSetPrefix6, "out|"+key+"|"+port.Protocol+"|"+port.Name, f)
	if s, ok := c.sets[name]; ok {
		if len(s.Members) == 0 {
			return ""
		}
		return name
	}
	var members []string
	c.eachMember(sc, func(m *model.Member) {
		if !sel.Matches(m.Labels) {
			return
		}
		for _, np := range m.Ports {
			if np.Name == port.Name && strings.EqualFold(np.Protocol, port.Protocol) && np.Port > 0 && np.Port <= 65535 {
				members = append(members, ipPorts(m.Nets, f, port.Protocol, np.Port)...)
			}
		}
	})
	c.sets[name] = &iptables.Set{Name: name, Type: "hash:ip,port", Family: f, Members: sortedUnique(members)}
	if len(members) == 0 {
		return ""
	}
	return name
}

// ingressPortSet is the set of (address, proto:port) of the group's own
// endpoints that declare the named port.
func (c *policyCtx) ingressPortSet(g *group, port model.PolicyPort, f iptables.Family) string {
	name := familySet(NamedPortSetPrefix4, NamedPortSetPrefix6, "in|"+g.id+"|"+port.Protocol+"|"+port.Name, f)
	if s, ok := c.sets[name]; ok {
		if len(s.Members) == 0 {
			return ""
		}
		return name
	}
	var members []string
	for _, e := range g.members {
		for _, np := range e.Ports {
			if np.Name == port.Name && strings.EqualFold(np.Protocol, port.Protocol) && np.Port > 0 && np.Port <= 65535 {
				members = append(members, ipPorts(e.Nets(), f, port.Protocol, np.Port)...)
			}
		}
	}
	c.sets[name] = &iptables.Set{Name: name, Type: "hash:ip,port", Family: f, Members: sortedUnique(members)}
	if len(members) == 0 {
		return ""
	}
	return name
}

func netsOf(nets []string, f iptables.Family) []string {
	var out []string
	for _, n := range nets {
		if _, _, err := net.ParseCIDR(n); err != nil {
			continue
		}
		if familyOf(n) == f {
			out = append(out, n)
		}
	}
	return out
}

// ipPorts are hash:ip,port members as ipset prints them (10.0.0.1,tcp:80).
func ipPorts(nets []string, f iptables.Family, proto string, port int) []string {
	var out []string
	for _, n := range netsOf(nets, f) {
		ip, _, _ := net.ParseCIDR(n)
		out = append(out, fmt.Sprintf("%s,%s:%d", ip, strings.ToLower(proto), port))
	}
	return out
}

func sortedUnique(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// scopeOf records which member namespaces a group's policies read.
func (c *policyCtx) scopeOf(g *group) {
	for _, dir := range []struct {
		ps     []*model.Policy
		egress bool
	}{{g.in, false}, {g.out, true}} {
		for _, p := range dir.ps {
			rules := p.Ingress
			if dir.egress {
				rules = p.Egress
			}
			for _, r := range rules {
				named := false
				for _, q := range r.Ports {
					named = named || q.Name != ""
				}
				if dir.egress && named && len(r.Peers) == 0 {
					c.all = true
				}
				for i := range r.Peers {
					q := &r.Peers[i]
					if q.CIDR != "" {
						if dir.egress && named {
							c.all = true
						}
						continue
					}
					c.need(peerNamespaces(p, q, c.in.Namespaces))
				}
			}
		}
	}
}

// MemberScope says which namespaces' member records the rules of these
// endpoints need (all: every namespace's), given the prepared policies and
// the namespaces' labels: what the node must follow in etcd.
func MemberScope(eps []model.Endpoint, prepared []model.Policy, namespaces map[string]model.Namespace) (names []string, all bool) {
	in := &Input{Endpoints: eps, Namespaces: namespaces}
	c := newPolicyCtx(in)
	for _, g := range groupsWith(eps, prepared) {
		c.scopeOf(g)
	}
	return c.scopeList(), c.all
}

func (c *policyCtx) scopeList() []string {
	if c.all {
		return nil
	}
	out := make([]string, 0, len(c.scope))
	for n := range c.scope {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// policyStage is a group's policy chain for one direction and family: the
// rules of its policies in order; a rule's match lines set the mark, then
// the rule's verdict line (allow: return, the packet passes this check;
// deny: drop); no rule matched: drop.
func (c *policyCtx) policyStage(g *group, d direction, f iptables.Family) iptables.Chain {
	lines := []string{"-j MARK --set-xmark 0x0/0x10000"}
	ps := g.in
	if d == outbound {
		ps = g.out
	}
	for _, p := range ps {
		rules := p.Ingress
		if d == outbound {
			rules = p.Egress
		}
		for i := range rules {
			r := &rules[i]
			m := c.ruleMatches(g, p, r, d, f)
			if len(m) == 0 {
				continue // matches nothing in this family
			}
			lines = append(lines, m...)
			if r.Action == model.ActionDeny {
				lines = append(lines, "-m mark --mark "+Mark+" -j DROP")
			} else {
				lines = append(lines, "-m mark --mark "+Mark+" -j RETURN")
			}
		}
	}
	lines = append(lines, "-j DROP")
	return iptables.Chain{Name: policyChain(g.id, d), Rules: lines}
}

// peerMatch is one peer of a rule in one family: an address match that
// iptables-save prints first (addr), a set match (set), or a sub-chain
// that sets the mark (sub, for a CIDR with exceptions).
type peerMatch struct {
	addr, set, sub string
	peer           *model.Peer // nil: any peer
}

// portMatch is one port alternative: the protocol and what follows it.
type portMatch struct {
	proto string // "-p tcp" or ""
	match string // "-m tcp --dport 80", "-m multiport --dports ...", "" (every port)
	named *model.PolicyPort
}

func (c *policyCtx) ruleMatches(g *group, p *model.Policy, r *model.PolicyRule, d direction, f iptables.Family) []string {
	addrFlag, setDir := "-s", "src"
	if d == outbound {
		addrFlag, setDir = "-d", "dst"
	}
	var peers []peerMatch
	if len(r.Peers) == 0 {
		peers = []peerMatch{{}}
	}
	for i := range r.Peers {
		q := &r.Peers[i]
		if q.CIDR != "" {
			_, n, err := net.ParseCIDR(q.CIDR)
			if err != nil || familyOf(q.CIDR) != f {
				continue // of the other family: not in this table
			}
			var except []string
			for _, e := range q.Except {
				if _, en, err := net.ParseCIDR(e); err == nil && familyOf(e) == f {
					except = append(except, en.String())
				}
			}
			if len(except) == 0 {
				peers = append(peers, peerMatch{addr: addrFlag + " " + n.String(), peer: q})
				continue
			}
			sort.Strings(except)
			name := "TABBY-QX-" + hash(addrFlag+"|"+n.String()+"|"+strings.Join(except, ","), 16)
			if _, ok := c.subs[name]; !ok {
				var rs []string
				for _, e := range except {
					rs = append(rs, addrFlag+" "+e+" -j RETURN")
				}
				rs = append(rs, addrFlag+" "+n.String()+" -j MARK --set-xmark "+Mark)
				c.subs[name] = iptables.Chain{Name: name, Rules: rs}
			}
			peers = append(peers, peerMatch{sub: name, peer: q})
			continue
		}
		set, _ := c.peerSet(p, q, f)
		peers = append(peers, peerMatch{set: "-m set --match-set " + set + " " + setDir, peer: q})
	}
	if len(peers) == 0 {
		return nil
	}
	ports := portMatches(r, f)
	var out []string
	for _, pm := range peers {
		for _, po := range ports {
			portPart := po.match
			if po.named != nil {
				var set string
				if d == inbound {
					set = c.ingressPortSet(g, *po.named, f)
				} else {
					var q *model.Peer
					if pm.peer != nil && pm.peer.CIDR == "" {
						q = pm.peer
					}
					set = c.egressPortSet(p, q, *po.named, f)
				}
				if set == "" {
					continue // nothing declares it: matches nothing
				}
				portPart = "-m set --match-set " + set + " dst,dst"
			}
			parts := []string{pm.addr, po.proto, pm.set, portPart}
			target := "-j MARK --set-xmark " + Mark
			if pm.sub != "" {
				target = "-j " + pm.sub
			}
			var nonEmpty []string
			for _, s := range append(parts, target) {
				if s != "" {
					nonEmpty = append(nonEmpty, s)
				}
			}
			out = append(out, strings.Join(nonEmpty, " "))
		}
	}
	return out
}

// portMatches are a rule's port alternatives in one family, as
// iptables-save prints them.
func portMatches(r *model.PolicyRule, f iptables.Family) []portMatch {
	if len(r.Ports) == 0 {
		switch r.Protocol {
		case "", "any":
			return []portMatch{{}}
		case "icmp", "icmpv6":
			if f == iptables.V6 {
				return []portMatch{{proto: "-p ipv6-icmp"}}
			}
			return []portMatch{{proto: "-p icmp"}}
		default:
			return []portMatch{{proto: "-p " + r.Protocol}}
		}
	}
	// Numbered ports grouped by protocol, in order of first appearance;
	// a protocol given without a port means all its ports.
	var protos []string
	nums := map[string][]string{}
	whole := map[string]bool{}
	var named []portMatch
	for i := range r.Ports {
		q := r.Ports[i]
		proto := strings.ToLower(q.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		if q.Name != "" {
			q.Protocol = proto
			named = append(named, portMatch{proto: "-p " + proto, named: &q})
			continue
		}
		if _, ok := nums[proto]; !ok && !whole[proto] {
			protos = append(protos, proto)
		}
		if q.Port == 0 {
			whole[proto] = true
			continue
		}
		s := strconv.Itoa(q.Port)
		if q.EndPort > q.Port {
			s += ":" + strconv.Itoa(q.EndPort)
		}
		nums[proto] = append(nums[proto], s)
	}
	var out []portMatch
	for _, proto := range protos {
		if whole[proto] {
			out = append(out, portMatch{proto: "-p " + proto})
			continue
		}
		ps := nums[proto]
		if len(ps) == 1 {
			out = append(out, portMatch{proto: "-p " + proto, match: "-m " + proto + " --dport " + ps[0]})
			continue
		}
		// multiport takes at most 15 ports, a range counting as two.
		var chunk []string
		slots := 0
		flush := func() {
			if len(chunk) > 0 {
				out = append(out, portMatch{proto: "-p " + proto, match: "-m multiport --dports " + strings.Join(chunk, ",")})
			}
			chunk, slots = nil, 0
		}
		for _, s := range ps {
			n := 1
			if strings.Contains(s, ":") {
				n = 2
			}
			if slots+n > 15 {
				flush()
			}
			chunk = append(chunk, s)
			slots += n
		}
		flush()
	}
	return append(out, named...)
}
