package bgp

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// BenchmarkLearn10k: A originates 10,000 /26 blocks (a 10,000-host mesh's
// worth); B learns them. Reports how long A's Advertise, B's first
// complete snapshot and one RIB listing (what each coalesced change costs)
// take.
func BenchmarkLearn10k(b *testing.B) {
	const n = 10000
	prefixes := make([]*net.IPNet, n)
	for i := range prefixes {
		prefixes[i] = &net.IPNet{IP: net.IPv4(10, byte(64+i/1024), byte(i%1024/4), byte(i%4*64)).To4(), Mask: net.CIDRMask(26, 32)}
	}
	for range b.N {
		runLearn(b, prefixes)
	}
}

func runLearn(b *testing.B, prefixes []*net.IPNet) {
	cfgA := Config{RouterID: "127.0.0.1", ListenAddrs: []string{"127.0.0.1"}, ListenPort: benchPort(b, "127.0.0.1"), ConnectRetry: time.Second}
	cfgB := Config{RouterID: "127.0.0.2", ListenAddrs: []string{"127.0.0.2"}, ListenPort: benchPort(b, "127.0.0.2"), ConnectRetry: time.Second}
	a, err := New(cfgA)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Stop()
	s, err := New(cfgB)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Stop()

	start := time.Now()
	if err := a.Advertise(prefixes); err != nil {
		b.Fatal(err)
	}
	adv := time.Since(start)
	start = time.Now()
	_ = a.SetPeers([]Peer{{Address: "127.0.0.2", Port: cfgB.ListenPort}})
	_ = s.SetPeers([]Peer{{Address: "127.0.0.1", Port: cfgA.ListenPort, Passive: true}})
	var got []Route
	for set := range s.Routes() {
		if got = set; len(set) == len(prefixes) {
			break
		}
	}
	learn := time.Since(start)
	start = time.Now()
	_ = s.call(func() error { _, err := s.bestRoutes(nil); return err })
	list := time.Since(start)
	b.ReportMetric(adv.Seconds(), "advertise-s")
	b.ReportMetric(learn.Seconds(), "learn-s")
	b.ReportMetric(float64(list.Milliseconds()), "list-ms")
	if len(got) != len(prefixes) {
		b.Fatalf("learned %d", len(got))
	}
	fmt.Printf("advertise %d: %v; session up to full snapshot: %v; one RIB listing: %v\n", len(prefixes), adv, learn, list)
}

func benchPort(b *testing.B, addr string) int32 {
	l, err := net.Listen("tcp4", addr+":0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}
