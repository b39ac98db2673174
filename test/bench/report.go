package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Row is one line of the report. Timing rows carry milliseconds per call;
// binary rows carry the Go init time of one process start (the sum of the
// "ms clock" of every package init that GODEBUG=inittrace=1 prints).
type Row struct {
	Key     string  `json:"key"`            // stable ID: section/case/mode/op
	Name    string  `json:"name"`           // what ran, for people
	Section string  `json:"section"`        // cnitool, direct, ipam, startup, binary
	Mode    string  `json:"mode,omitempty"` // "sequential" or "16 concurrent"
	Op      string  `json:"op,omitempty"`   // ADD, DEL, VERSION, init
	N       int     `json:"n"`
	P50     float64 `json:"p50_ms"`
	P99     float64 `json:"p99_ms"`
	Mean    float64 `json:"mean_ms"`
	Max     float64 `json:"max_ms"`
	// CPU time (user+system) of the process and the children it waited
	// for, p50; and the etcd server's CPU time per call (mean).
	CPUP50  float64 `json:"cpu_p50_ms,omitempty"`
	EtcdCPU float64 `json:"etcd_cpu_ms_per_call,omitempty"`

	// Ratios to another row of the same mode and op (ptp + host-local).
	RatioTo  string   `json:"ratio_to,omitempty"` // that row's key
	RatioP50 *float64 `json:"ratio_p50,omitempty"`
	RatioP99 *float64 `json:"ratio_p99,omitempty"`
	GoalP50  *float64 `json:"goal_ratio_p50_max,omitempty"` // from the issues
	GoalMet  *bool    `json:"goal_met,omitempty"`

	SizeBytes    int64   `json:"size_bytes,omitempty"`
	InitPackages int     `json:"init_packages,omitempty"` // packages with an init
	InitDoneMs   float64 `json:"init_done_ms,omitempty"`  // p50 of when the last init ended, since process start
	Note         string  `json:"note,omitempty"`
	// Node rows (node_rows.go): the unit of the values, and a goal's verdict.
	Unit string `json:"unit,omitempty"`
	Goal string `json:"goal,omitempty"`
}

// callRow computes a row from process samples.
func callRow(key, name, section, mode, op string, samples []sample) Row {
	r := Row{Key: key, Name: name, Section: section, Mode: mode, Op: op}
	var wall, cpu []float64
	var etcd time.Duration
	for _, s := range samples {
		wall, cpu, etcd = append(wall, ms(s.wall)), append(cpu, ms(s.cpu)), etcd+s.etcd
	}
	r.setStats(wall)
	if len(cpu) > 0 {
		slices.Sort(cpu)
		r.CPUP50 = round2(percentile(cpu, 50))
		r.EtcdCPU = round2(ms(etcd) / float64(len(samples)))
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *Row) setStats(ms []float64) {
	r.N = len(ms)
	if r.N == 0 {
		return
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	r.P50, r.P99 = round2(percentile(s, 50)), round2(percentile(s, 99))
	r.Mean, r.Max = round2(sum/float64(len(s))), round2(s[len(s)-1])
}

// percentile is the nearest-rank percentile of sorted values: with n=200,
// p99 is the 198th value; with n<100 it is the maximum.
func percentile(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

// ratio sets r's ratios to base; goal > 0 is the largest acceptable p50 ratio.
func (r *Row) ratio(base *Row, goal float64) {
	if base == nil || base.P50 == 0 || base.P99 == 0 {
		return
	}
	p50, p99 := round2(r.P50/base.P50), round2(r.P99/base.P99)
	r.RatioTo, r.RatioP50, r.RatioP99 = base.Key, &p50, &p99
	if goal > 0 {
		met := p50 <= goal
		r.GoalP50, r.GoalMet = &goal, &met
	}
}

// Report is everything one run produced.
type Report struct {
	Meta  map[string]string `json:"meta"`
	Rows  []Row             `json:"rows"`
	Notes []string          `json:"notes"` // setup facts and warnings
}

func (rep *Report) row(key string) *Row {
	for i := range rep.Rows {
		if rep.Rows[i].Key == key {
			return &rep.Rows[i]
		}
	}
	return nil
}

func (rep *Report) p50(key string) (float64, bool) {
	if r := rep.row(key); r != nil && r.N > 0 {
		return r.P50, true
	}
	return 0, false
}

// write stores report.md and report.json in dir and returns the markdown.
func (rep *Report) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create output dir: %w", err)
	}
	md := rep.markdown()
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644); err != nil {
		return "", fmt.Errorf("write report.md: %w", err)
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode report.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(js, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("write report.json: %w", err)
	}
	return md, nil
}

var sectionTitles = []struct{ id, title string }{
	{"cnitool", "CNI ADD/DEL under cnitool (wall time per call; ratios to ptp + host-local of the same mode and op)"},
	{"direct", "Plugins executed directly (no cnitool), in the host namespace"},
	{"ipam", "IPAM library in-process (pkg/ipam against the lab's etcd; connection kept open)"},
	{"startup", "Process start-up baseline"},
}

func (rep *Report) markdown() string {
	var b strings.Builder
	b.WriteString("# tabby benchmark\n\n")
	for _, k := range slices.Sorted(maps.Keys(rep.Meta)) {
		fmt.Fprintf(&b, "- %s: %s\n", k, rep.Meta[k])
	}
	for _, s := range sectionTitles {
		var rows []Row
		for _, r := range rep.Rows {
			if r.Section == s.id {
				rows = append(rows, r)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n## %s\n\n", s.title)
		b.WriteString("| what | mode | op | n | p50 ms | p99 ms | CPU p50 ms | etcd CPU ms/call | ratio p50 | ratio p99 | goal (p50) | note |\n")
		b.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|\n")
		for _, r := range rows {
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %.2f | %.2f | %s | %s | %s | %s | %s | %s |\n",
				r.Name, r.Mode, r.Op, r.N, r.P50, r.P99, fmtMs(r.CPUP50), fmtMs(r.EtcdCPU),
				fmtRatio(r.RatioP50), fmtRatio(r.RatioP99), fmtGoal(&r), r.Note)
		}
	}
	b.WriteString(rep.binaryTable())
	b.WriteString(rep.nodeTable())
	b.WriteString(rep.goals())
	b.WriteString(rep.breakdown())
	if len(rep.Notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

func (rep *Report) binaryTable() string {
	var b strings.Builder
	for _, r := range rep.Rows {
		if r.Section != "binary" {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\n## Binaries (size; Go package init per process start, GODEBUG=inittrace=1)\n\n")
			b.WriteString("| binary | size MB | packages with init | init sum p50 ms | init sum p99 ms | last init ends at p50 ms | runs |\n")
			b.WriteString("|---|--:|--:|--:|--:|--:|--:|\n")
		}
		fmt.Fprintf(&b, "| %s | %.1f | %d | %.2f | %.2f | %.2f | %d |\n",
			r.Name, float64(r.SizeBytes)/1e6, r.InitPackages, r.P50, r.P99, r.InitDoneMs, r.N)
	}
	return b.String()
}

func (rep *Report) goals() string {
	var b strings.Builder
	for _, r := range rep.Rows {
		if r.GoalMet == nil {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\n## Goals (from the issues; p50 ratios to ptp + host-local)\n\n")
		}
		verdict := "MISSED"
		if *r.GoalMet {
			verdict = "met"
		}
		fmt.Fprintf(&b, "- %s %s, %s: %.2f (goal <= %.2f): %s\n", r.Name, r.Op, r.Mode, *r.RatioP50, *r.GoalP50, verdict)
	}
	return b.String()
}

// breakdown estimates where tabby's ADD goes from differences of medians.
// Medians do not subtract exactly; these are estimates, not measurements.
func (rep *Report) breakdown() string {
	get := func(key string) float64 { v, _ := rep.p50(key); return v }
	need := []string{keyCNI("tabby", "seq", "ADD"), keyDirect("tabby", "ADD"), keyDirect("tabby-ipam", "ADD"),
		keyStartup("tabby"), keyStartup("tabby-ipam"), keyCNI("noop", "seq", "ADD"), keyStartup("noop"), keyIPAM("http", "assign")}
	for _, k := range need {
		if _, ok := rep.p50(k); !ok {
			return ""
		}
	}
	viaCNI, direct, ipamProc := get(need[0]), get(need[1]), get(need[2])
	tabbyStart, ipamStart, noopCNI, noopStart, lib := get(need[3]), get(need[4]), get(need[5]), get(need[6]), get(need[7])
	var b strings.Builder
	b.WriteString("\n## Where tabby's ADD goes (sequential p50s and their differences: estimates)\n\n")
	fmt.Fprintf(&b, "- tabby + tabby-ipam ADD under cnitool: %.2f ms\n", viaCNI)
	fmt.Fprintf(&b, "- cnitool itself (no-op plugin under cnitool %.2f ms minus no-op exec %.2f ms): ~%.2f ms; tabby ADD exec'd directly: %.2f ms\n",
		noopCNI, noopStart, noopCNI-noopStart, direct)
	fmt.Fprintf(&b, "- tabby-ipam ADD process (exec'd directly): %.2f ms, of which process start (VERSION exec) %.2f ms and IPAM library work on an open connection %.2f ms; the rest (~%.2f ms) is config parsing, the host lock, TCP connect and request overhead\n",
		ipamProc, ipamStart, lib, ipamProc-ipamStart-lib)
	fmt.Fprintf(&b, "- tabby's own process minus its IPAM delegate: ~%.2f ms, of which process start %.2f ms; leaves ~%.2f ms for its etcd reads and endpoint write, the uplink MTU lookup and the veth/route netlink work\n",
		direct-ipamProc, tabbyStart, direct-ipamProc-tabbyStart)
	var cpu []string
	for _, c := range []string{"ptp-host-local", "ptp-tabby-ipam", "tabby"} {
		if r := rep.row(keyCNI(c, "seq", "ADD")); r != nil {
			cpu = append(cpu, fmt.Sprintf("%s %.2f + %.2f ms", r.Name, r.CPUP50, r.EtcdCPU))
		}
	}
	fmt.Fprintf(&b, "- CPU per sequential ADD (all processes of the call, p50, + the etcd server's, mean), which bounds throughput once callers outnumber CPUs: %s\n",
		strings.Join(cpu, "; "))
	return b.String()
}

func fmtMs(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", v)
}

func fmtRatio(p *float64) string {
	if p == nil {
		return ""
	}
	return fmt.Sprintf("%.2f", *p)
}

func fmtGoal(r *Row) string {
	if r.GoalMet == nil {
		return ""
	}
	if *r.GoalMet {
		return fmt.Sprintf("<= %.1f met", *r.GoalP50)
	}
	return fmt.Sprintf("<= %.1f **MISSED**", *r.GoalP50)
}
