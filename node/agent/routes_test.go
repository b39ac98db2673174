package agent

import (
	"net"
	"testing"
	"time"

	"github.com/tabby-net/tabby/node/bgp"
)

// TestSameNextHops: a route set that differs only in the peer a route
// came through or in staleness needs no pass; a prefix or next hop
// added, gone or changed does.
func TestSameNextHops(t *testing.T) {
	r := func(p, nh, peer string, stale bool) bgp.Route {
		_, n, _ := net.ParseCIDR(p)
		return bgp.Route{Prefix: n, NextHop: net.ParseIP(nh), Peer: peer, Stale: stale}
	}
	base := []bgp.Route{r("10.1.0.0/26", "198.19.0.5", "198.19.0.1", false), r("10.1.1.0/26", "198.19.0.6", "198.19.0.1", false)}
	for _, c := range []struct {
		name string
		set  []bgp.Route
		same bool
	}{
		{"other reflector, stale", []bgp.Route{r("10.1.0.0/26", "198.19.0.5", "198.19.0.2", true), r("10.1.1.0/26", "198.19.0.6", "198.19.0.1", false)}, true},
		{"next hop changed", []bgp.Route{r("10.1.0.0/26", "198.19.0.7", "198.19.0.1", false), r("10.1.1.0/26", "198.19.0.6", "198.19.0.1", false)}, false},
		{"prefix gone", base[:1], false},
		{"prefix replaced", []bgp.Route{base[0], r("10.1.2.0/26", "198.19.0.6", "198.19.0.1", false)}, false},
		{"nothing", nil, false},
	} {
		if got := sameNextHops(base, c.set); got != c.same {
			t.Errorf("%s: same %v, want %v", c.name, got, c.same)
		}
	}
}

// The periodic passes of nodes started together must drift apart: each
// wait is drawn within a tenth of the period, and not always the same.
func TestJitterSpreadsPeriodicPasses(t *testing.T) {
	d := 30 * time.Second
	seen := map[time.Duration]bool{}
	for range 100 {
		j := jitter(d)
		if j < d-d/10 || j > d+d/10 {
			t.Fatalf("jitter(%v) = %v, outside 27-33 s", d, j)
		}
		seen[j] = true
	}
	if len(seen) < 50 {
		t.Fatalf("jitter drew only %d distinct waits in 100", len(seen))
	}
}
