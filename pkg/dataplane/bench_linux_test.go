package dataplane

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// BenchmarkSetupTeardown measures one ADD's and one DEL's netlink work.
// Besides ns/op (Setup+Teardown) it reports setup-ms and teardown-ms.
func BenchmarkSetupTeardown(b *testing.B) {
	for _, bc := range []struct {
		name string
		ips  []string
	}{
		{"ipv4", []string{"10.66.0.1/32"}},
		{"dual", []string{"10.66.0.1/32", "fd00:66::1/128"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			host := newHost(b)
			c := newContainer(b, "bench", bc.ips...)
			var setupDur, teardownDur time.Duration
			n := 0
			err := host.Do(func(ns.NetNS) error {
				for b.Loop() {
					n++
					t0 := time.Now()
					if _, err := Setup(c.cfg); err != nil {
						return err
					}
					t1 := time.Now()
					if err := Teardown(c.cfg.NetnsPath, c.cfg.IfName, c.cfg.HostVeth); err != nil {
						return err
					}
					setupDur += t1.Sub(t0)
					teardownDur += time.Since(t1)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(setupDur.Microseconds())/1000/float64(n), "setup-ms")
			b.ReportMetric(float64(teardownDur.Microseconds())/1000/float64(n), "teardown-ms")
		})
	}
}

// BenchmarkSetupTeardownParallel16 runs 16 workloads at once in one host
// namespace, as a node starting many pods would; ns/op is wall time per
// Setup+Teardown pair across all of them.
func BenchmarkSetupTeardownParallel16(b *testing.B) {
	const workers = 16
	host := newHost(b)
	cs := make([]*container, workers)
	for i := range cs {
		cs[i] = newContainer(b, fmt.Sprintf("pbench-%d", i), fmt.Sprintf("10.66.1.%d/32", i+1))
	}
	var (
		mu                    sync.Mutex
		setupDur, teardownDur time.Duration
		ops                   int
	)
	b.ResetTimer()
	per := (b.N + workers - 1) / workers
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for _, c := range cs {
		wg.Go(func() {
			var s, d time.Duration
			err := host.Do(func(ns.NetNS) error {
				for range per {
					t0 := time.Now()
					if _, err := Setup(c.cfg); err != nil {
						return err
					}
					t1 := time.Now()
					if err := Teardown(c.cfg.NetnsPath, c.cfg.IfName, c.cfg.HostVeth); err != nil {
						return err
					}
					s += t1.Sub(t0)
					d += time.Since(t1)
				}
				return nil
			})
			if err != nil {
				errs <- err
			}
			mu.Lock()
			setupDur += s
			teardownDur += d
			ops += per
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(setupDur.Microseconds())/1000/float64(ops), "setup-ms")
	b.ReportMetric(float64(teardownDur.Microseconds())/1000/float64(ops), "teardown-ms")
}
