package sim

import (
	"math"
	"strings"
	"testing"
)

func TestBetweenHistogramScrapes(t *testing.T) {
	const h = "etcd_disk_backend_commit_duration_seconds"
	before, err := Parse(strings.NewReader(`# HELP x
` + h + `_bucket{le="0.001"} 10
` + h + `_bucket{le="0.002"} 10
` + h + `_bucket{le="0.004"} 10
` + h + `_bucket{le="+Inf"} 10
` + h + `_sum 0.005
` + h + `_count 10
etcd_debugging_mvcc_keys_total 7
unrelated_bucket{le="1"} 3
`))
	if err != nil {
		t.Fatal(err)
	}
	if before["etcd_debugging_mvcc_keys_total"] != 7 || len(before) != 7 {
		t.Fatalf("parsed %v", before)
	}
	// 100 more commits: 50 under 1 ms, 49 in (1, 2], 1 in (2, 4].
	after := Metrics{
		h + `_bucket{le="0.001"}`: 60, h + `_bucket{le="0.002"}`: 109, h + `_bucket{le="0.004"}`: 110, h + `_bucket{le="+Inf"}`: 110,
		h + "_sum": 0.005 + 0.15, h + "_count": 110,
	}
	d := Between(before, after, h)
	if d.N != 100 || math.Abs(d.MeanMs-1.5) > 1e-9 {
		t.Fatalf("n %d mean %v", d.N, d.MeanMs)
	}
	if math.Abs(d.P50Ms-1.0) > 1e-9 || math.Abs(d.P99Ms-2.0) > 1e-9 || d.MaxMs != 4 {
		t.Fatalf("p50 %v p99 %v max %v", d.P50Ms, d.P99Ms, d.MaxMs)
	}
	if (Between(before, before, h) != Dist{}) {
		t.Fatal("no observations should be the zero Dist")
	}
}
