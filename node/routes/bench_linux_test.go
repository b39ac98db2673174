package routes

import (
	"net"
	"testing"
	"time"
)

// BenchmarkSync10k: one host with 10,000 remote blocks (direct and VXLAN
// halves). Reports the first Sync (everything added), a no-op Sync (the
// steady state after each BGP change: list and compare), and a Sync that
// changes one route.
func BenchmarkSync10k(b *testing.B) {
	for range b.N {
		benchSync(b)
	}
}

func benchSync(b *testing.B) {
	p := newPair(b)
	m, err := New(Options{NetNSPath: p.a.path, NodeIP: net.ParseIP("198.19.0.1"), VXLANTunnelAddr: net.ParseIP("10.0.1.0")})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	const n = 10000
	remotes := make([]Remote, n)
	for i := range remotes {
		r := Remote{
			Prefix:  &net.IPNet{IP: net.IPv4(10, byte(64+i/1024), byte(i%1024/4), byte(i%4*64)).To4(), Mask: net.CIDRMask(26, 32)},
			Gateway: net.IPv4(198, 19, 0, 2),
		}
		if i%2 == 1 {
			r.Encap = VXLAN
			r.TunnelAddr = r.Prefix.IP
			r.VTEPMAC = net.HardwareAddr{0x02, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
			r.Gateway = net.IPv4(198, 19, byte(1+i/250), byte(i%250+1))
		}
		remotes[i] = r
	}
	for _, step := range []string{"first", "noop", "one-change"} {
		if step == "one-change" {
			remotes[0].Gateway = net.IPv4(198, 19, 0, 3)
		}
		c := m.Changes()
		start := time.Now()
		if err := m.Sync(Local{}, remotes); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), step+"-ms")
		b.Logf("%s Sync of %d remotes: %v, %d changes", step, n, time.Since(start), m.Changes()-c)
	}
}
