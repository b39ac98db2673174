package policy

import (
	"fmt"
	"testing"

	"github.com/tabby-net/tabby/pkg/model"
)

// go test -bench Render ./node/policy: the cost of rendering a host's rules
// grows with its endpoints only by their set members.
func BenchmarkRender(b *testing.B) {
	for _, n := range []int{10, 1000} {
		in := Input{Profiles: map[string]model.Profile{"A": model.DefaultProfile("A"), "B": model.DefaultProfile("B")}, Tags: map[string][]string{}}
		for i := range n {
			p := []string{"A"}
			if i%2 == 1 {
				p = []string{"B"}
			}
			in.Endpoints = append(in.Endpoints, model.Endpoint{HostInterface: fmt.Sprintf("tby%011x", i), ContainerID: fmt.Sprint(i),
				IPv4Nets: []string{fmt.Sprintf("10.%d.%d.%d/32", i>>16, (i>>8)&255, i&255)}, Profiles: p})
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				Render(in)
			}
		})
	}
}

// go test -bench RenderPolicies ./node/policy: a host of 1000 endpoints
// in 50 namespaces with 200 policies (4 per namespace) and 5000 members.
func BenchmarkRenderPolicies(b *testing.B) {
	in := Input{Profiles: map[string]model.Profile{"A": model.DefaultProfile("A")}, Tags: map[string][]string{},
		Namespaces: map[string]model.Namespace{}, Members: map[string][]model.Member{}}
	for n := range 50 {
		ns := fmt.Sprintf("ns%d", n)
		in.Namespaces[ns] = model.Namespace{Name: ns, Labels: map[string]string{"team": fmt.Sprint(n % 5)}}
		for k := range 4 {
			team := fmt.Sprint(k)
			in.Policies = append(in.Policies, model.Policy{Name: fmt.Sprintf("p%d", k), Namespace: ns, Selector: fmt.Sprintf("app=a%d", k),
				Ingress: []model.PolicyRule{{Ports: []model.PolicyPort{{Protocol: "tcp", Port: 80}, {Protocol: "tcp", Name: "http"}},
					Peers: []model.Peer{{Selector: "role=client"}, {NamespaceSelector: &team, Selector: "role=client"}}}}})
		}
	}
	for i := range 5000 {
		ns := fmt.Sprintf("ns%d", i%50)
		in.Members[ns] = append(in.Members[ns], model.Member{Endpoint: fmt.Sprint(i), Nets: []string{fmt.Sprintf("10.%d.%d.%d/32", 100+i>>16, (i>>8)&255, i&255)},
			Labels: map[string]string{"role": "client", "app": fmt.Sprintf("a%d", i%7)}})
	}
	for i := range 1000 {
		in.Endpoints = append(in.Endpoints, model.Endpoint{HostInterface: fmt.Sprintf("tby%011x", i), ContainerID: fmt.Sprint(i), Namespace: fmt.Sprintf("ns%d", i%50),
			Labels: map[string]string{"app": fmt.Sprintf("a%d", i%7)}, Ports: []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 8080}},
			IPv4Nets: []string{fmt.Sprintf("10.%d.%d.%d/32", i>>16, (i>>8)&255, i&255)}, Profiles: []string{"A"}})
	}
	for b.Loop() {
		Render(in)
	}
}
