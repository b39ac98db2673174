package sim

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Metrics are the figures of etcd's /metrics (or a proxy's) that the
// harness reports.
type Metrics map[string]float64

// Names read by Scrape: watchers and watch streams etcd serves, its CPU
// and memory, its database size.
var metricNames = []string{
	"etcd_debugging_mvcc_watcher_total",
	"etcd_debugging_mvcc_watch_stream_total",
	"etcd_debugging_mvcc_slow_watcher_total",
	"etcd_mvcc_db_total_size_in_bytes",
	"etcd_mvcc_db_total_size_in_use_in_bytes",
	"etcd_debugging_mvcc_keys_total",
	"process_cpu_seconds_total",
	"process_resident_memory_bytes",
}

// Histograms read by Scrape, bucket by bucket (keys carry the bucket's
// labels: name_bucket{le="0.004"}): the backend's commits, which hold the
// lock every request of that etcd waits on, and the WAL's fsyncs.
var histogramNames = []string{
	"etcd_disk_backend_commit_duration_seconds",
	"etcd_disk_wal_fsync_duration_seconds",
}

// Scrape reads url (http://host:port/metrics) with client.
func Scrape(ctx context.Context, client *http.Client, url string) (Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return Parse(resp.Body)
}

// Parse reads the figures Scrape keeps from a /metrics text.
func Parse(r io.Reader) (Metrics, error) {
	want := map[string]bool{}
	for _, n := range metricNames {
		want[n] = true
	}
	for _, n := range histogramNames {
		want[n+"_sum"], want[n+"_count"] = true, true
	}
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		base, _, _ := strings.Cut(name, "{")
		if !want[name] && !(strings.HasSuffix(base, "_bucket") && want[strings.TrimSuffix(base, "_bucket")+"_sum"]) {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			m[name] = f
		}
	}
	return m, sc.Err()
}

// Dist is what a histogram counted between two scrapes.
type Dist struct {
	N      int     `json:"n"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"` // the upper bound of the highest bucket reached
}

// Between is the histogram name's observations from before to after, its
// quantiles interpolated within buckets as Prometheus' histogram_quantile
// does (the bucket's bounds are all a histogram knows).
func Between(before, after Metrics, name string) Dist {
	type bucket struct{ le, n float64 }
	var bs []bucket
	prefix := name + `_bucket{le="`
	for k, v := range after {
		le, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		bound, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64)
		if err != nil {
			continue
		}
		bs = append(bs, bucket{bound, v - before[k]})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	d := Dist{N: int(after[name+"_count"] - before[name+"_count"])}
	if d.N <= 0 || len(bs) == 0 {
		return Dist{}
	}
	d.MeanMs = (after[name+"_sum"] - before[name+"_sum"]) / float64(d.N) * 1000
	q := func(p float64) float64 {
		rank := p * float64(d.N)
		lo, below := 0.0, 0.0
		for _, b := range bs {
			if b.n >= rank {
				if math.IsInf(b.le, 1) {
					return lo * 1000
				}
				if b.n == below {
					return b.le * 1000
				}
				return (lo + (b.le-lo)*(rank-below)/(b.n-below)) * 1000
			}
			lo, below = b.le, b.n
		}
		return lo * 1000
	}
	d.P50Ms, d.P99Ms = q(0.5), q(0.99)
	for _, b := range bs {
		if b.n >= float64(d.N) {
			d.MaxMs = b.le * 1000
			if math.IsInf(b.le, 1) {
				d.MaxMs = -1
			}
			break
		}
	}
	return d
}
