package model

import (
	"strings"
	"testing"
)

func TestPolicyValidate(t *testing.T) {
	all := ""
	p := Policy{Name: "web", Namespace: "x", Selector: "app = web", Egress: []PolicyRule{{Ports: []PolicyPort{{Port: 80}}}},
		Ingress: []PolicyRule{{Peers: []Peer{{Selector: "pod in (b,a)", NamespaceSelector: &all}, {CIDR: "10.0.0.7/24", Except: []string{"10.0.0.5/32"}}},
			Ports: []PolicyPort{{Protocol: "UDP", Name: "serve-80-udp"}, {Port: 80, EndPort: 90}}}}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.Selector != "app=web" || strings.Join(p.Types, ",") != "ingress,egress" || p.Ingress[0].Action != ActionAllow ||
		p.Ingress[0].Peers[0].Selector != "pod in (a,b)" || p.Ingress[0].Peers[1].CIDR != "10.0.0.0/24" ||
		p.Ingress[0].Ports[0].Protocol != "udp" || p.Ingress[0].Ports[1].Protocol != "tcp" {
		t.Fatalf("not canonical: %+v", p)
	}
	if !p.Selects("x", map[string]string{"app": "web"}) || p.Selects("y", map[string]string{"app": "web"}) || !p.Applies(PolicyEgress) {
		t.Fatal("Selects/Applies")
	}
	for _, c := range []struct {
		p    Policy
		want string
	}{
		{Policy{Name: "a/b"}, "policy name"},
		{Policy{Name: "a", Selector: "app in x"}, "want '('"},
		{Policy{Name: "a", Types: []string{"inbound"}}, "want ingress or egress"},
		{Policy{Name: "a", Ingress: []PolicyRule{{Action: "log"}}}, "want allow or deny"},
		{Policy{Name: "a", Ingress: []PolicyRule{{Ports: []PolicyPort{{Port: 70000}}}}}, "1..65535"},
		{Policy{Name: "a", Ingress: []PolicyRule{{Ports: []PolicyPort{{Port: 90, EndPort: 80}}}}}, "port range"},
		{Policy{Name: "a", Ingress: []PolicyRule{{Ports: []PolicyPort{{Name: "Http"}}}}}, "port name"},
		{Policy{Name: "a", Ingress: []PolicyRule{{Peers: []Peer{{CIDR: "10.0.0.0/8", Selector: "a"}}}}}, "not both"},
		{Policy{Name: "a", Ingress: []PolicyRule{{Peers: []Peer{{CIDR: "10.0.0.0/8", Except: []string{"fd00::/64"}}}}}}, "family"},
		{Policy{Name: "a", Namespace: "_"}, "namespace"},
	} {
		if err := c.p.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
	}
	if PolicyKey("", "p") != "/tabby/v1/policy/_/p" || MemberKey("x", "h", "k8s", "x.a", "eth0") != "/tabby/v1/member/x/h/k8s/x.a/eth0" {
		t.Fatal("keys")
	}
}
