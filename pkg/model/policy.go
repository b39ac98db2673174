package model

import (
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/pkg/selector"
)

// Keys of the label-and-selector model. Policies live per namespace (the
// global ones under GlobalNamespace); every endpoint has a member record
// indexed by its namespace, so that a node follows only the namespaces its
// local policies' peers name (docs/scale-and-speed.md's scoping rule).
const (
	PolicyPrefix    = Prefix + "policy/"
	NamespacePrefix = Prefix + "namespace/"
	MemberPrefix    = Prefix + "member/"
	K8sPodPrefix    = Prefix + "k8s/pod/"
)

// K8sNamespaceProfilePrefix starts the profile every pod of a Kubernetes
// namespace has (k8s_ns.<namespace>): the CNI plugin gives it, and
// tabby-kube-controllers keeps its rules.
const K8sNamespaceProfilePrefix = "k8s_ns."

// K8sNamespaceProfile is the profile of the pods of namespace ns.
func K8sNamespaceProfile(ns string) string { return K8sNamespaceProfilePrefix + ns }

// GlobalNamespace is the key segment of global policies and of the member
// records of endpoints outside any namespace. It is not a valid Kubernetes
// namespace name, so it cannot collide with one.
const GlobalNamespace = "_"

func nsSegment(ns string) string {
	if ns == "" {
		return GlobalNamespace
	}
	return ns
}

// PolicyKey is the key of policy name in namespace ns ("" for global).
func PolicyKey(ns, name string) string { return PolicyPrefix + nsSegment(ns) + "/" + name }

// NamespaceKey is the record of a namespace's labels.
func NamespaceKey(name string) string { return NamespacePrefix + name }

// MemberNamespacePrefix holds the member records of every endpoint of one
// namespace ("" for endpoints outside any namespace), across hosts.
func MemberNamespacePrefix(ns string) string { return MemberPrefix + nsSegment(ns) + "/" }

// MemberKey is one endpoint's member record.
func MemberKey(ns, host, orchestrator, workload, endpoint string) string {
	return fmt.Sprintf("%s%s/%s/%s/%s", MemberNamespacePrefix(ns), host, orchestrator, workload, endpoint)
}

// K8sPodKey is what the Kubernetes controller knows of a pod that the CNI
// plugin needs at ADD: its labels, named ports and profiles.
func K8sPodKey(ns, pod string) string { return K8sPodPrefix + ns + "/" + pod }

// Policy directions.
const (
	PolicyIngress = "ingress"
	PolicyEgress  = "egress"
)

// Policy is an ordered set of rules that applies to the endpoints its
// selector matches. A namespaced policy applies to endpoints of its
// namespace, and its peers' selectors without a namespace selector mean its
// namespace; a global policy (Namespace "") applies to endpoints of every
// namespace. An endpoint is isolated in a direction once any policy that
// selects it has that type: then only what one of those policies' rules
// allow passes, in Order (lower first, then by name), first match decides.
type Policy struct {
	Name      string       `json:"name"`
	Namespace string       `json:"namespace,omitempty"`
	Order     int          `json:"order,omitempty"`
	Selector  string       `json:"selector"`
	Types     []string     `json:"types"`
	Ingress   []PolicyRule `json:"ingress,omitempty"`
	Egress    []PolicyRule `json:"egress,omitempty"`
	// Owner names who writes the policy ("k8s" for the controller's copies
	// of NetworkPolicies), so that writers leave each other's alone.
	Owner string `json:"owner,omitempty"`
}

// PolicyRule allows (or denies) traffic that matches any of its ports and
// any of its peers; no ports means every port and protocol (or only
// Protocol, when set), no peers means every peer.
type PolicyRule struct {
	Action   string       `json:"action,omitempty"`   // allow (default) or deny
	Protocol string       `json:"protocol,omitempty"` // without ports: tcp, udp, sctp, icmp, icmpv6 or any
	Ports    []PolicyPort `json:"ports,omitempty"`
	Peers    []Peer       `json:"peers,omitempty"` // sources of ingress, destinations of egress
}

// PolicyPort is a port, a range (Port..EndPort) or a named port, which
// resolves per destination endpoint from the ports its workload declares.
type PolicyPort struct {
	Protocol string `json:"protocol"` // tcp, udp or sctp
	Port     int    `json:"port,omitempty"`
	EndPort  int    `json:"endPort,omitempty"`
	Name     string `json:"name,omitempty"`
}

// Peer is either endpoints chosen by labels or addresses. Selector chooses
// endpoints by their labels (empty: all) within the namespaces that
// NamespaceSelector chooses by theirs; a nil NamespaceSelector means the
// policy's own namespace (every namespace for a global policy), an empty
// one every namespace. CIDR with Except chooses addresses instead.
type Peer struct {
	Selector          string   `json:"selector,omitempty"`
	NamespaceSelector *string  `json:"namespaceSelector,omitempty"`
	CIDR              string   `json:"cidr,omitempty"`
	Except            []string `json:"except,omitempty"`
}

// NamedPort is a port a workload declares by name (a container port).
type NamedPort struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"` // tcp, udp or sctp
	Port     int    `json:"port"`
}

// Namespace is a namespace's labels, which namespace selectors match.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Member is one endpoint's entry in its namespace's member index: what a
// node on another host needs to put it in selector sets.
type Member struct {
	Endpoint string            `json:"endpoint"` // endpoint key
	Nets     []string          `json:"nets"`
	Labels   map[string]string `json:"labels,omitempty"`
	Ports    []NamedPort       `json:"ports,omitempty"`
}

// K8sPod is what the controller records of a pod for the CNI plugin.
type K8sPod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	UID       string            `json:"uid"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ports     []NamedPort       `json:"ports,omitempty"`
	Profiles  []string          `json:"profiles,omitempty"` // from the tabby.io/profiles annotation
}

// MemberOf is the member record of an endpoint.
func MemberOf(e *Endpoint) Member {
	return Member{Endpoint: e.Key(), Nets: e.Nets(), Labels: e.Labels, Ports: e.Ports}
}

// MemberKeyOf is the key of the endpoint's member record.
func MemberKeyOf(e *Endpoint) string {
	return MemberKey(e.Namespace, e.Host, e.Orchestrator, e.Workload, e.Name)
}

// Applies reports whether the policy has rules for direction dir.
func (p *Policy) Applies(dir string) bool {
	for _, t := range p.Types {
		if t == dir {
			return true
		}
	}
	return false
}

// Selects reports whether the policy applies to an endpoint of namespace
// ns with these labels. An unparsable selector selects nothing (Validate
// refuses it before it is stored).
func (p *Policy) Selects(ns string, labels map[string]string) bool {
	if p.Namespace != "" && p.Namespace != ns {
		return false
	}
	s, err := selector.Parse(p.Selector)
	return err == nil && s.Matches(labels)
}

var protocols = map[string]bool{"": true, "tcp": true, "udp": true, "sctp": true, "icmp": true, "icmpv6": true}

// Validate checks a policy and puts it in canonical form (selectors
// canonical, types sorted, default actions); errors say what to fix.
func (p *Policy) Validate() error {
	if err := ValidName(p.Name); err != nil {
		return fmt.Errorf("policy name: %w", err)
	}
	if p.Namespace != "" {
		if err := ValidName(p.Namespace); err != nil || p.Namespace == GlobalNamespace {
			return fmt.Errorf("policy %s: namespace %q is not a valid name", p.Name, p.Namespace)
		}
	}
	s, err := selector.Parse(p.Selector)
	if err != nil {
		return fmt.Errorf("policy %s: %w", p.Name, err)
	}
	p.Selector = s.String()
	seen := map[string]bool{}
	for _, t := range p.Types {
		if t != PolicyIngress && t != PolicyEgress {
			return fmt.Errorf("policy %s: type %q: want ingress or egress", p.Name, t)
		}
		seen[t] = true
	}
	if len(p.Types) == 0 {
		// As Kubernetes defaults policyTypes: ingress always, egress when
		// egress rules are given.
		seen[PolicyIngress] = true
		if len(p.Egress) > 0 {
			seen[PolicyEgress] = true
		}
	}
	p.Types = p.Types[:0]
	for _, t := range []string{PolicyIngress, PolicyEgress} {
		if seen[t] {
			p.Types = append(p.Types, t)
		}
	}
	for dir, rules := range map[string][]PolicyRule{PolicyIngress: p.Ingress, PolicyEgress: p.Egress} {
		for i := range rules {
			if err := rules[i].validate(); err != nil {
				return fmt.Errorf("policy %s: %s rule %d: %w", p.Name, dir, i+1, err)
			}
		}
	}
	return nil
}

func (r *PolicyRule) validate() error {
	if r.Action == "" {
		r.Action = ActionAllow
	}
	if r.Action != ActionAllow && r.Action != ActionDeny {
		return fmt.Errorf("action %q: want allow or deny", r.Action)
	}
	r.Protocol = strings.ToLower(r.Protocol)
	if !protocols[r.Protocol] {
		return fmt.Errorf("protocol %q: want tcp, udp, sctp, icmp or icmpv6", r.Protocol)
	}
	for i := range r.Ports {
		q := &r.Ports[i]
		q.Protocol = strings.ToLower(q.Protocol)
		if q.Protocol == "" {
			q.Protocol = "tcp"
		}
		if q.Protocol != "tcp" && q.Protocol != "udp" && q.Protocol != "sctp" {
			return fmt.Errorf("port %d: protocol %q: want tcp, udp or sctp", i+1, q.Protocol)
		}
		switch {
		case q.Name != "":
			if q.Port != 0 || q.EndPort != 0 {
				return fmt.Errorf("port %q: a named port takes no number", q.Name)
			}
			if err := validPortName(q.Name); err != nil {
				return err
			}
		case q.Port < 0 || q.Port > 65535:
			return fmt.Errorf("port %d: want 1..65535", q.Port)
		case q.EndPort != 0 && (q.Port == 0 || q.EndPort < q.Port || q.EndPort > 65535):
			return fmt.Errorf("port range %d..%d: want port <= endPort <= 65535", q.Port, q.EndPort)
		}
	}
	for i := range r.Peers {
		if err := r.Peers[i].validate(); err != nil {
			return fmt.Errorf("peer %d: %w", i+1, err)
		}
	}
	return nil
}

func (q *Peer) validate() error {
	if q.CIDR != "" {
		if q.Selector != "" || q.NamespaceSelector != nil {
			return fmt.Errorf("give a CIDR or selectors, not both")
		}
		n, err := CanonicalCIDR(q.CIDR)
		if err != nil {
			// Kubernetes accepts an ipBlock with host bits set; so do we.
			_, n2, err2 := net.ParseCIDR(strings.TrimSpace(q.CIDR))
			if err2 != nil {
				return err
			}
			n = n2
		}
		q.CIDR = n.String()
		for i, e := range q.Except {
			_, en, err := net.ParseCIDR(strings.TrimSpace(e))
			if err != nil {
				return fmt.Errorf("except %q is not a CIDR", e)
			}
			if (en.IP.To4() == nil) != (n.IP.To4() == nil) {
				return fmt.Errorf("except %s is not of the family of %s", en, n)
			}
			q.Except[i] = en.String()
		}
		sort.Strings(q.Except)
		return nil
	}
	if len(q.Except) > 0 {
		return fmt.Errorf("except needs a CIDR")
	}
	s, err := selector.Parse(q.Selector)
	if err != nil {
		return err
	}
	q.Selector = s.String()
	if q.NamespaceSelector != nil {
		ns, err := selector.Parse(*q.NamespaceSelector)
		if err != nil {
			return fmt.Errorf("namespace %w", err)
		}
		c := ns.String()
		q.NamespaceSelector = &c
	}
	return nil
}

// validPortName checks a named port as Kubernetes does (IANA service name:
// at most 15 lower-case letters, digits and '-', with a letter).
func validPortName(s string) error {
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9', c == '-' && i > 0 && i < len(s)-1:
		default:
			return fmt.Errorf("port name %q: lower-case letters, digits and '-' only", s)
		}
	}
	if s == "" || len(s) > 15 || !letter {
		return fmt.Errorf("port name %q: 1..15 characters with at least one letter", s)
	}
	return nil
}

// SortPolicies orders policies as they are evaluated: by Order, then
// namespace and name.
func SortPolicies(ps []Policy) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Order != b.Order {
			return a.Order < b.Order
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}
