package netpol

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tabby-net/tabby/pkg/model"
)

func ptr[T any](v T) *T { return &v }

func np(name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name}, Spec: spec}
}

func sel(m map[string]string, exprs ...metav1.LabelSelectorRequirement) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: m, MatchExpressions: exprs}
}

func port(proto corev1.Protocol, p *intstr.IntOrString, end *int32) networkingv1.NetworkPolicyPort {
	q := networkingv1.NetworkPolicyPort{Port: p, EndPort: end}
	if proto != "" {
		q.Protocol = &proto
	}
	return q
}

var (
	ingress = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egress  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	both    = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	allow   = model.ActionAllow
)

func pol(name, selector string, types []string, in, eg []model.PolicyRule) model.Policy {
	return model.Policy{Name: "knp." + name, Namespace: "x", Order: 1000, Owner: "k8s", Selector: selector, Types: types, Ingress: in, Egress: eg}
}

// TestTranslate covers the forms of the upstream netpol suite
// (test/e2e/network/netpol/network_policy.go).
func TestTranslate(t *testing.T) {
	in, eg, ie := []string{"ingress"}, []string{"egress"}, []string{"ingress", "egress"}
	for _, c := range []struct {
		name    string
		spec    networkingv1.NetworkPolicySpec
		want    model.Policy
		wantErr bool
	}{
		{name: "deny-all-ingress", // podSelector {}, ingress []
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress},
			want: pol("deny-all-ingress", "", in, nil, nil)},
		{name: "allow-all-ingress", // ingress [{}]
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress, Ingress: []networkingv1.NetworkPolicyIngressRule{{}}},
			want: pol("allow-all-ingress", "", in, []model.PolicyRule{{Action: allow}}, nil)},
		{name: "deny-all-egress", // policyTypes Egress only
			spec: networkingv1.NetworkPolicySpec{PodSelector: *sel(map[string]string{"pod": "a"}), PolicyTypes: egress},
			want: pol("deny-all-egress", "pod=a", eg, nil, nil)},
		{name: "egress-ports-only", // egress to port 53 UDP and TCP, any peer
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: egress, Egress: []networkingv1.NetworkPolicyEgressRule{{
				Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, ptr(intstr.FromInt32(53)), nil), port("", ptr(intstr.FromInt32(53)), nil)}}}},
			want: pol("egress-ports-only", "", eg, nil, []model.PolicyRule{{Action: allow,
				Ports: []model.PolicyPort{{Protocol: "udp", Port: 53}, {Protocol: "tcp", Port: 53}}}})},
		{name: "ns-and-pod", // namespaceSelector and podSelector in one peer
			spec: networkingv1.NetworkPolicySpec{PodSelector: *sel(map[string]string{"pod": "a"}), PolicyTypes: ingress,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: sel(map[string]string{"ns": "y"}), PodSelector: sel(map[string]string{"pod": "b"})}}}}},
			want: pol("ns-and-pod", "pod=a", in, []model.PolicyRule{{Action: allow,
				Peers: []model.Peer{{Selector: "pod=b", NamespaceSelector: ptr("ns=y")}}}}, nil)},
		{name: "ns-only-and-pod-only", // two peers: every pod of namespaces ns=y; pods pod=b of x
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: sel(map[string]string{"ns": "y"})}, {PodSelector: sel(map[string]string{"pod": "b"})}}}}},
			want: pol("ns-only-and-pod-only", "", in, []model.PolicyRule{{Action: allow,
				Peers: []model.Peer{{NamespaceSelector: ptr("ns=y")}, {Selector: "pod=b"}}}}, nil)},
		{name: "all-namespaces", // namespaceSelector {}
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel(nil)}}}}},
			want: pol("all-namespaces", "", in, []model.PolicyRule{{Action: allow, Peers: []model.Peer{{NamespaceSelector: ptr("")}}}}, nil)},
		{name: "match-expressions", // NotIn, DoesNotExist, In, Exists
			spec: networkingv1.NetworkPolicySpec{
				PodSelector: *sel(nil, metav1.LabelSelectorRequirement{Key: "pod", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"b", "a"}},
					metav1.LabelSelectorRequirement{Key: "example.com/tier", Operator: metav1.LabelSelectorOpDoesNotExist}),
				PolicyTypes: ingress,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: sel(nil, metav1.LabelSelectorRequirement{Key: "ns", Operator: metav1.LabelSelectorOpIn, Values: []string{"y", "z"}}),
					PodSelector:       sel(map[string]string{"app": "c"}, metav1.LabelSelectorRequirement{Key: "role", Operator: metav1.LabelSelectorOpExists})}}}}},
			want: pol("match-expressions", "!example.com/tier,pod notin (a,b)", in, []model.PolicyRule{{Action: allow,
				Peers: []model.Peer{{Selector: "app=c,role", NamespaceSelector: ptr("ns in (y,z)")}}}}, nil)},
		{name: "ipblock-except", // egress to a CIDR except a part, host bits accepted
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: egress, Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.1.2.3/16", Except: []string{"10.1.9.0/24", "10.1.2.3/32"}}},
				{IPBlock: &networkingv1.IPBlock{CIDR: "fd00::/64"}}}}}},
			want: pol("ipblock-except", "", eg, nil, []model.PolicyRule{{Action: allow,
				Peers: []model.Peer{{CIDR: "10.1.0.0/16", Except: []string{"10.1.2.3/32", "10.1.9.0/24"}}, {CIDR: "fd00::/64"}}}})},
		{name: "named-port",
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress, Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{port("", ptr(intstr.FromString("serve-80-tcp")), nil), port(corev1.ProtocolUDP, ptr(intstr.FromString("serve-81-udp")), nil)}}}},
			want: pol("named-port", "", in, []model.PolicyRule{{Action: allow,
				Ports: []model.PolicyPort{{Protocol: "tcp", Name: "serve-80-tcp"}, {Protocol: "udp", Name: "serve-81-udp"}}}}, nil)},
		{name: "end-port",
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: egress, Egress: []networkingv1.NetworkPolicyEgressRule{{
				Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, ptr(intstr.FromInt32(80)), ptr(int32(81)))},
				To:    []networkingv1.NetworkPolicyPeer{{PodSelector: sel(map[string]string{"pod": "b"})}}}}},
			want: pol("end-port", "", eg, nil, []model.PolicyRule{{Action: allow,
				Ports: []model.PolicyPort{{Protocol: "tcp", Port: 80, EndPort: 81}}, Peers: []model.Peer{{Selector: "pod=b"}}}})},
		{name: "sctp-udp", // protocols, and a port with no number: the whole protocol
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress, Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolSCTP, ptr(intstr.FromInt32(80)), nil), port(corev1.ProtocolUDP, nil, nil), port("", nil, nil)}}}},
			want: pol("sctp-udp", "", in, []model.PolicyRule{{Action: allow,
				Ports: []model.PolicyPort{{Protocol: "sctp", Port: 80}, {Protocol: "udp"}, {Protocol: "tcp"}}}}, nil)},
		{name: "both-types", // ingress and egress, two rules in one direction
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: both,
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(map[string]string{"pod": "b"})}}},
					{Ports: []networkingv1.NetworkPolicyPort{port("", ptr(intstr.FromInt32(81)), nil)}}}},
			want: pol("both-types", "", ie, []model.PolicyRule{{Action: allow, Peers: []model.Peer{{Selector: "pod=b"}}},
				{Action: allow, Ports: []model.PolicyPort{{Protocol: "tcp", Port: 81}}}}, nil)},
		{name: "default-types-egress", // no policyTypes: ingress, and egress since there are egress rules
			spec: networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{}}},
			want: pol("default-types-egress", "", ie, nil, []model.PolicyRule{{Action: allow}})},
		{name: "default-types", // no policyTypes, no egress: ingress only
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{}}},
			want: pol("default-types", "", in, []model.PolicyRule{{Action: allow}}, nil)},
		{name: "unused-direction", // egress rules of an ingress-only policy are dropped
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress, Egress: []networkingv1.NetworkPolicyEgressRule{{}}},
			want: pol("unused-direction", "", in, nil, nil)},

		// Fails closed: deny-all for the types it names, to the pods it selects.
		{name: "bad-except",
			spec: networkingv1.NetworkPolicySpec{PodSelector: *sel(map[string]string{"pod": "a"}), PolicyTypes: egress, Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"nope"}}}}}}},
			want: pol("bad-except", "pod=a", eg, nil, nil), wantErr: true},
		{name: "bad-operator", // unreadable pod selector: every pod of the namespace
			spec: networkingv1.NetworkPolicySpec{PodSelector: *sel(nil, metav1.LabelSelectorRequirement{Key: "a", Operator: "Near"}), PolicyTypes: both,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{}}},
			want: pol("bad-operator", "", ie, nil, nil), wantErr: true},
		{name: "bad-type",
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Sideways"}, Ingress: []networkingv1.NetworkPolicyIngressRule{{}}},
			want: pol("bad-type", "", ie, nil, nil), wantErr: true},
		{name: "named-end-port",
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress, Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{port("", ptr(intstr.FromString("http")), ptr(int32(90)))}}}},
			want: pol("named-end-port", "", in, nil, nil), wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Translate(np(c.name, c.spec))
			if (err != nil) != c.wantErr {
				t.Errorf("error %v, want error: %v", err, c.wantErr)
			}
			g, w := js(got), js(c.want)
			if g != w {
				t.Errorf("got  %s\nwant %s", g, w)
			}
			// What is written is valid and canonical: validating again changes nothing.
			if !c.wantErr {
				again := got
				if err := again.Validate(); err != nil || js(again) != g {
					t.Errorf("not canonical: %v %s", err, js(again))
				}
			}
		})
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
