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
