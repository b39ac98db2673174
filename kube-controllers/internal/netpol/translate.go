// Package netpol writes every Kubernetes NetworkPolicy (networking.k8s.io/v1)
// as a model.Policy owned by "k8s", and removes the k8s-owned policies
// whose NetworkPolicy is gone. Policies written by anyone else are never
// touched.
package netpol

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/selector"
)

const (
	// Owner marks the policies this controller writes.
	Owner = "k8s"
	// NamePrefix starts the name of a NetworkPolicy's copy.
	NamePrefix = "knp."
	// Order puts NetworkPolicies after policies of lower order.
	Order = 1000
)

// PolicyName is the name of NetworkPolicy name's copy.
func PolicyName(name string) string { return NamePrefix + name }

// Key is the etcd key of the copy of NetworkPolicy ns/name.
func Key(ns, name string) string { return model.PolicyKey(ns, PolicyName(name)) }

// Selector is a label selector in tabby's selector syntax, canonical.
func Selector(s *metav1.LabelSelector) (string, error) {
	if s == nil {
		return "", nil
	}
	var reqs []selector.Requirement
	for k, v := range s.MatchLabels {
		reqs = append(reqs, selector.Requirement{Key: k, Op: selector.Equals, Values: []string{v}})
	}
	for _, e := range s.MatchExpressions {
		var op selector.Op
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			op = selector.In
		case metav1.LabelSelectorOpNotIn:
			op = selector.NotIn
		case metav1.LabelSelectorOpExists:
			op = selector.Exists
		case metav1.LabelSelectorOpDoesNotExist:
			op = selector.DoesNotExist
		default:
			return "", fmt.Errorf("label %s: operator %q is not In, NotIn, Exists or DoesNotExist", e.Key, e.Operator)
		}
		reqs = append(reqs, selector.Requirement{Key: e.Key, Op: op, Values: append([]string(nil), e.Values...)})
	}
	sel, err := selector.New(reqs...)
	if err != nil {
		return "", err
	}
	return sel.String(), nil
}

// Types are the policy's types as Kubernetes defaults them: policyTypes
// lower-cased, or when none are given, ingress, and egress if there are
// egress rules.
func Types(np *networkingv1.NetworkPolicy) []string {
	if len(np.Spec.PolicyTypes) == 0 {
		t := []string{model.PolicyIngress}
		if len(np.Spec.Egress) > 0 {
			t = append(t, model.PolicyEgress)
		}
		return t
	}
	var out []string
	for _, t := range np.Spec.PolicyTypes {
		out = append(out, strings.ToLower(string(t)))
	}
	return out
}

func ports(in []networkingv1.NetworkPolicyPort) ([]model.PolicyPort, error) {
	var out []model.PolicyPort
	for _, p := range in {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		// No port: every port of the protocol (model: Port 0).
		q := model.PolicyPort{Protocol: strings.ToLower(string(proto))}
		if p.Port != nil {
			switch p.Port.Type {
			case intstr.Int:
				q.Port = int(p.Port.IntVal)
			case intstr.String:
				q.Name = p.Port.StrVal
			default:
				return nil, fmt.Errorf("port %v: neither a number nor a name", p.Port)
			}
		}
		if p.EndPort != nil {
			if p.Port == nil || p.Port.Type != intstr.Int {
				return nil, fmt.Errorf("endPort %d needs a numeric port", *p.EndPort)
			}
			q.EndPort = int(*p.EndPort)
		}
		out = append(out, q)
	}
	return out, nil
}

func peers(in []networkingv1.NetworkPolicyPeer) ([]model.Peer, error) {
	var out []model.Peer
	for _, p := range in {
		var q model.Peer
		switch {
		case p.IPBlock != nil:
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				return nil, fmt.Errorf("a peer with ipBlock cannot also have selectors")
			}
			q.CIDR = p.IPBlock.CIDR
			q.Except = append([]string(nil), p.IPBlock.Except...)
			if len(q.Except) == 0 {
				q.Except = nil
			}
		case p.PodSelector == nil && p.NamespaceSelector == nil:
			return nil, fmt.Errorf("a peer needs podSelector, namespaceSelector or ipBlock")
		default:
			s, err := Selector(p.PodSelector)
			if err != nil {
				return nil, fmt.Errorf("podSelector: %w", err)
			}
			q.Selector = s
			if p.NamespaceSelector != nil {
				ns, err := Selector(p.NamespaceSelector)
				if err != nil {
					return nil, fmt.Errorf("namespaceSelector: %w", err)
				}
				q.NamespaceSelector = &ns
			}
		}
		out = append(out, q)
	}
	return out, nil
}

func rule(ps []networkingv1.NetworkPolicyPort, qs []networkingv1.NetworkPolicyPeer) (model.PolicyRule, error) {
	r := model.PolicyRule{Action: model.ActionAllow}
	var err error
	if r.Ports, err = ports(ps); err != nil {
		return r, err
	}
	r.Peers, err = peers(qs)
	return r, err
}

// translate is the NetworkPolicy as a policy, not yet validated.
func translate(np *networkingv1.NetworkPolicy) (model.Policy, error) {
	p := model.Policy{Name: PolicyName(np.Name), Namespace: np.Namespace, Order: Order, Owner: Owner, Types: Types(np)}
	var err error
	if p.Selector, err = Selector(&np.Spec.PodSelector); err != nil {
		return p, fmt.Errorf("podSelector: %w", err)
	}
	for i, in := range np.Spec.Ingress {
		r, err := rule(in.Ports, in.From)
		if err != nil {
			return p, fmt.Errorf("ingress rule %d: %w", i+1, err)
		}
		p.Ingress = append(p.Ingress, r)
	}
	for i, eg := range np.Spec.Egress {
		r, err := rule(eg.Ports, eg.To)
		if err != nil {
			return p, fmt.Errorf("egress rule %d: %w", i+1, err)
		}
		p.Egress = append(p.Egress, r)
	}
	return p, nil
}

// Translate is the policy to write for np, validated and canonical. When
// np cannot be translated or the result does not validate, it returns the
// reason and, to write instead, a policy that denies everything in the
// directions np names to the pods it selects (to every pod of its
// namespace when even its pod selector cannot be read): a translation
// failure never drops isolation.
func Translate(np *networkingv1.NetworkPolicy) (model.Policy, error) {
	p, err := translate(np)
	if err == nil {
		if err = p.Validate(); err == nil {
			// Rules of a direction the policy does not have are never used.
			if !p.Applies(model.PolicyIngress) {
				p.Ingress = nil
			}
			if !p.Applies(model.PolicyEgress) {
				p.Egress = nil
			}
			return p, nil
		}
	}
	return DenyAll(np), fmt.Errorf("networkpolicy %s/%s: %w; written as deny-all for its types until fixed", np.Namespace, np.Name, err)
}

// DenyAll is np's fail-closed stand-in: no rules for the types np names
// (both when one of them is not ingress or egress), for the pods its
// selector chooses, or all the namespace's pods when that is unreadable.
func DenyAll(np *networkingv1.NetworkPolicy) model.Policy {
	p := model.Policy{Name: PolicyName(np.Name), Namespace: np.Namespace, Order: Order, Owner: Owner}
	if s, err := Selector(&np.Spec.PodSelector); err == nil {
		if sel, err := selector.Parse(s); err == nil {
			p.Selector = sel.String()
		}
	}
	in, eg := false, false
	for _, t := range Types(np) {
		switch t {
		case model.PolicyIngress:
			in = true
		case model.PolicyEgress:
			eg = true
		default:
			in, eg = true, true
		}
	}
	if in {
		p.Types = append(p.Types, model.PolicyIngress)
	}
	if eg {
		p.Types = append(p.Types, model.PolicyEgress)
	}
	return p
}
