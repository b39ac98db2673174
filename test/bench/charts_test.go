package main

import (
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/test/plot"
)

func timedRow(key, mode string, v ...float64) Row {
	f := strings.Split(key, "/")
	r := Row{Key: key, Name: f[1], Section: strings.Split(key, "/")[0], Mode: mode, Op: f[len(f)-1]}
	r.setStats(v)
	return r
}

// TestReportCharts writes a report from rows as the bench makes them and
// checks what a reader of report.md gets: the PNGs it links exist and
// decode, charts without data are left out, a chart that cannot be drawn is
// named with the reason, and -render (from report.json) draws them again.
func TestReportCharts(t *testing.T) {
	dir := t.TempDir()
	join := timedRow(keyNode("bgp-join"), "full mesh", 310, 320, 330)
	join.Timeline = &Timeline{Title: "join", XLabel: "ms", YLabel: "hosts",
		Series: []plot.Series{{Name: "hosts", X: []float64{0, 310, 320, 330}, Y: []float64{0, 1, 2, 3}}}}
	bad := Row{Key: keyNode("program-1000"), Section: "node", N: 1, Timeline: &Timeline{Title: "bad",
		Series: []plot.Series{{Name: "short", X: []float64{1, 2}, Y: []float64{1}}}}}
	rep := &Report{Meta: map[string]string{"date": "test"}, Rows: []Row{
		timedRow(keyCNI("tabby-node", "seq", "ADD"), "sequential", 20, 21, 22, 40),
		timedRow(keyCNI("tabby-node", "seq", "DEL"), "sequential", 10, 11, 12),
		timedRow(keyCNI("ptp-host-local", "seq", "ADD"), "sequential", 15, 16, 30),
		timedRow(keyCNI("ptp-host-local", "seq", "DEL"), "sequential", 8, 9, 9.5),
		// c16 has no reference row: no chart for it.
		timedRow(keyCNI("tabby-node", "c16", "ADD"), "16 concurrent", 50, 60),
		join, bad,
	}}
	rep.judge() // as run does; -render judges again
	if _, err := rep.write(dir); err != nil {
		t.Fatalf("write: %v", err)
	}
	check := func() string {
		t.Helper()
		md, err := os.ReadFile(filepath.Join(dir, "report.md"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"latency-seq.png", "timeline-bgp-join.png"} {
			if !strings.Contains(string(md), "]("+f+")") {
				t.Errorf("report.md does not link %s", f)
			}
			fh, err := os.Open(filepath.Join(dir, f))
			if err != nil {
				t.Fatalf("linked chart missing: %v", err)
			}
			_, err = png.Decode(fh)
			fh.Close()
			if err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
		for _, f := range []string{"latency-c16.png", "add-latency-1000-endpoints.png"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err == nil || strings.Contains(string(md), f) {
				t.Errorf("%s drawn or linked without its rows", f)
			}
		}
		if !strings.Contains(string(md), "timeline-program-1000.png: not drawn:") || !strings.Contains(string(md), "2 X values but 1 Y values") {
			t.Errorf("report.md does not say why the broken timeline was not drawn:\n%s", md)
		}
		return string(md)
	}
	first := check()

	// -render: report.json keeps the samples, so the charts come back.
	for _, f := range []string{"latency-seq.png", "timeline-bgp-join.png", "report.md"} {
		os.Remove(filepath.Join(dir, f))
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if r := back.row(keyCNI("ptp-host-local", "seq", "ADD")); r == nil || len(r.Samples) != 3 || r.Samples[2] != 30 {
		t.Fatalf("report.json lost the samples: %+v", r)
	}
	if err := rerender(dir); err != nil {
		t.Fatalf("rerender: %v", err)
	}
	if again := check(); again != first {
		t.Errorf("report.md differs after -render")
	}
}
