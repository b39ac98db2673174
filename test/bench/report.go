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

	"github.com/tabby-net/tabby/test/plot"
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
	CPUP50 float64 `json:"cpu_p50_ms,omitempty"`
	// NodeCPU is tabby-node's CPU time per ADD+DEL iteration of a
	// sequential phase (the deployed case only).
	NodeCPU float64 `json:"node_cpu_ms_per_iteration,omitempty"`
	EtcdCPU float64 `json:"etcd_cpu_ms_per_call,omitempty"`

	// Ratios to another row of the same mode and op (ptp + host-local).
	RatioTo  string   `json:"ratio_to,omitempty"` // that row's key
	RatioP50 *float64 `json:"ratio_p50,omitempty"`
	RatioP99 *float64 `json:"ratio_p99,omitempty"`

	SizeBytes    int64   `json:"size_bytes,omitempty"`
	InitPackages int     `json:"init_packages,omitempty"` // packages with an init
	InitDoneMs   float64 `json:"init_done_ms,omitempty"`  // p50 of when the last init ended, since process start
	Note         string  `json:"note,omitempty"`
	// Foreign-record rows (foreign.go): how many endpoint records of
	// other hosts etcd held.
	Records int `json:"records,omitempty"`
	// Node rows (node_rows.go): the unit of the values.
	Unit string `json:"unit,omitempty"`
	// Goal is the verdict of the goals judged on this row (judge).
	Goal string `json:"goal,omitempty"`
	// Samples are the row's values in the order measured (setStats), kept
	// so that charts.go can draw their distribution, also on -render.
	Samples []float64 `json:"samples,omitempty"`
	// Timeline is a count over time behind the row (charts.go draws it):
	// e.g. endpoints written and ready after the 1,000 are written.
	Timeline *Timeline `json:"timeline,omitempty"`
}

// Timeline is a chart of counts over time: each series' X is ms since the
// event the row starts at, Y the count reached then.
type Timeline struct {
	Title  string        `json:"title"`
	XLabel string        `json:"x_label"`
	YLabel string        `json:"y_label"`
	Series []plot.Series `json:"series"`
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
	r.Samples = slices.Clone(ms)
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

// ratio sets r's ratios to base.
func (r *Row) ratio(base *Row) {
	if base == nil || base.P50 == 0 || base.P99 == 0 {
		return
	}
	p50, p99 := round2(r.P50/base.P50), round2(r.P99/base.P99)
	r.RatioTo, r.RatioP50, r.RatioP99 = base.Key, &p50, &p99
}

// Report is everything one run produced.
type Report struct {
	Meta     map[string]string `json:"meta"`
	Rows     []Row             `json:"rows"`
	Verdicts []Verdict         `json:"verdicts"` // the goals, judged on this run (judge)
	Notes    []string          `json:"notes"`    // setup facts and warnings
	// Skipped says why a part of the bench did not run ("cri", "foreign"):
	// its goals say not measured, with the reason.
	Skipped map[string]string `json:"skipped,omitempty"`
}

func (rep *Report) skip(part, why string) {
	if rep.Skipped == nil {
		rep.Skipped = map[string]string{}
	}
	rep.Skipped[part] = why
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

// write stores report.md, report.json and readme-table.md in dir and
// returns the markdown report.
func (rep *Report) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create output dir: %w", err)
	}
	md := rep.markdown(rep.drawCharts(dir))
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
	if err := os.WriteFile(filepath.Join(dir, readmeTableFile), []byte(rep.readmeTable()), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", readmeTableFile, err)
	}
	return md, nil
}

var sectionTitles = []struct{ id, title string }{
	{"cnitool", "CNI ADD/DEL under cnitool (wall time per call; ratios to ptp + host-local of the same mode and op)"},
	{"direct", "Plugins executed directly (no cnitool), in the host namespace"},
	{"ipam", "IPAM library in-process (pkg/ipam against the lab's etcd; connection kept open)"},
	{"startup", "Process start-up baseline"},
}

func (rep *Report) markdown(charts []chart) string {
	var b strings.Builder
	b.WriteString("# tabby benchmark\n\n")
	for _, k := range slices.Sorted(maps.Keys(rep.Meta)) {
		fmt.Fprintf(&b, "- %s: %s\n", k, rep.Meta[k])
	}
	for _, s := range sectionTitles {
		b.WriteString(rep.table(s.id, s.title,
			"| what | mode | op | n | p50 ms | p99 ms | CPU p50 ms | etcd CPU ms/call | ratio p50 | ratio p99 | goal | note |\n"+
				"|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|",
			func(r Row) string {
				return fmt.Sprintf("| %s | %s | %s | %d | %.2f | %.2f | %s | %s | %s | %s | %s | %s |",
					r.Name, r.Mode, r.Op, r.N, r.P50, r.P99, fmtMs(r.CPUP50), fmtMs(r.EtcdCPU),
					fmtRatio(r.RatioP50), fmtRatio(r.RatioP99), r.Goal, r.Note)
			}))
	}
	b.WriteString(rep.binaryTable())
	b.WriteString(rep.criTable())
	b.WriteString(rep.nodeTable())
	b.WriteString(rep.goals())
	b.WriteString(rep.breakdown())
	b.WriteString(chartsSection(charts))
	if len(rep.Notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// table is the report section of the rows of one section: a title, the
// table's header and alignment lines, and one line per row; "" when the
// run has none.
func (rep *Report) table(section, title, header string, line func(r Row) string) string {
	var b strings.Builder
	for _, r := range rep.Rows {
		if r.Section != section {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "\n## %s\n\n%s\n", title, header)
		}
		b.WriteString(line(r) + "\n")
	}
	return b.String()
}

func (rep *Report) binaryTable() string {
	return rep.table("binary", "Binaries (size; Go package init per process start, GODEBUG=inittrace=1)",
		"| binary | size MB | packages with init | init sum p50 ms | init sum p99 ms | last init ends at p50 ms | runs |\n"+
			"|---|--:|--:|--:|--:|--:|--:|",
		func(r Row) string {
			return fmt.Sprintf("| %s | %.1f | %d | %.2f | %.2f | %.2f | %d |",
				r.Name, float64(r.SizeBytes)/1e6, r.InitPackages, r.P50, r.P99, r.InitDoneMs, r.N)
		})
}

// criTable is the report section of the CRI rows.
func (rep *Report) criTable() string {
	return rep.table("cri", "Pods through containerd CRI on host2 (crictl runp, stopp, rmp; ratios tabby / ptp + host-local: for pods/s higher is better)",
		"| what | op | n | p50 | p99 | max | unit | ratio p50 | goal | note |\n"+
			"|---|---|--:|--:|--:|--:|---|--:|---|---|",
		func(r Row) string {
			return fmt.Sprintf("| %s | %s | %d | %.2f | %.2f | %.2f | %s | %s | %s | %s |",
				r.Name, r.Op, r.N, r.P50, r.P99, r.Max, r.Unit, fmtRatio(r.RatioP50), r.Goal, r.Note)
		})
}

// nodeTable is the report section of the node rows.
func (rep *Report) nodeTable() string {
	return rep.table("node", "tabby-node: reachability, BGP convergence, memory, throughput",
		"| what | mode | n | p50 | p99 | max | unit | ratio | goal | note |\n"+
			"|---|---|--:|--:|--:|--:|---|--:|---|---|",
		func(r Row) string {
			return fmt.Sprintf("| %s | %s | %d | %.2f | %.2f | %.2f | %s | %s | %s | %s |",
				r.Name, r.Mode, r.N, r.P50, r.P99, r.Max, r.Unit, fmtRatio(r.RatioP50), r.Goal, r.Note)
		})
}

func (rep *Report) goals() string {
	var b strings.Builder
	b.WriteString("\n## Goals (from the issues; one verdict each, from this run alone)\n\n")
	for _, v := range rep.Verdicts {
		fmt.Fprintf(&b, "- %s: %s: %s: %s\n", v.Config, v.Goal, v.Figure, v.Status)
	}
	return b.String()
}

// breakdown estimates where tabby's ADD goes from differences of medians.
func (rep *Report) breakdown() string {
	lines := rep.breakdownLines()
	if len(lines) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n## Where tabby's ADD goes (sequential p50s and their differences: estimates)\n\n")
	for _, l := range lines {
		fmt.Fprintf(&b, "- %s\n", l)
	}
	return b.String()
}

// breakdownLines splits tabby's ADD by differences of this run's sequential
// medians. Medians do not subtract exactly: these are estimates. Each line
// subtracts only rows of what ran in the call it splits (tabby runs
// tabby-ipam's code in process unless "ipam_exec" is set), and is left out
// when a row it needs is missing.
func (rep *Report) breakdownLines() []string {
	get := func(keys ...string) ([]float64, bool) {
		var out []float64
		for _, k := range keys {
			v, ok := rep.p50(k)
			if !ok {
				return nil, false
			}
			out = append(out, v)
		}
		return out, true
	}
	var lines []string
	if v, ok := get(keyCNI("tabby-node", "seq", "ADD"), keyCNI("tabby", "seq", "ADD")); ok {
		lines = append(lines, fmt.Sprintf("deployed ADD under cnitool %.2f ms, the same ADD on a host without tabby-node %.2f ms: ~%.2f ms is the wait until tabby-node has the workload's rules in force",
			v[0], v[1], v[0]-v[1]))
	}
	if v, ok := get(keyCNI("noop", "seq", "ADD"), keyStartup("noop"), keyCNI("tabby", "seq", "ADD"), keyDirect("tabby", "ADD")); ok {
		lines = append(lines, fmt.Sprintf("cnitool itself (no-op plugin under cnitool %.2f ms minus no-op exec'd %.2f ms): ~%.2f ms of tabby's %.2f ms under cnitool; tabby exec'd directly: %.2f ms",
			v[0], v[1], v[0]-v[1], v[2], v[3]))
	}
	if v, ok := get(keyDirect("tabby", "ADD"), keyStartup("tabby"), keyIPAM("http", "assign")); ok {
		lines = append(lines, fmt.Sprintf("tabby exec'd directly, IPAM in process (one process): %.2f ms = process start (VERSION exec) %.2f ms + pkg/ipam Assign over the HTTP store on an open connection %.2f ms + %s for the rest (netconf, host lock, etcd connection, endpoint record in the allocation's transaction, uplink MTU, veth and route netlink work)",
			v[0], v[1], v[2], rest(v[0]-v[1]-v[2])))
	}
	if v, ok := get(keyDirect("tabby-exec", "ADD"), keyDirect("tabby", "ADD"), keyDirect("tabby-ipam", "ADD"), keyStartup("tabby-ipam"), keyIPAM("http", "assign")); ok {
		lines = append(lines, fmt.Sprintf("tabby delegating to the tabby-ipam binary (\"ipam_exec\": true): %.2f ms, %+.2f ms against IPAM in process; tabby-ipam exec'd alone: %.2f ms = process start %.2f ms + library work %.2f ms + %s netconf, host lock and etcd connection",
			v[0], v[0]-v[1], v[2], v[3], v[4], rest(v[2]-v[3]-v[4])))
	}
	var cpu []string
	for _, c := range []string{"ptp-host-local", "ptp-tabby-ipam", "tabby", "tabby-node"} {
		if r := rep.row(keyCNI(c, "seq", "ADD")); r != nil {
			if r.NodeCPU > 0 {
				cpu = append(cpu, fmt.Sprintf("%s %.2f + %.2f ms (and tabby-node %.2f ms per ADD+DEL)", r.Name, r.CPUP50, r.EtcdCPU, r.NodeCPU))
			} else {
				cpu = append(cpu, fmt.Sprintf("%s %.2f + %.2f ms", r.Name, r.CPUP50, r.EtcdCPU))
			}
		}
	}
	if len(cpu) > 0 {
		lines = append(lines, fmt.Sprintf("CPU per sequential ADD (the call's processes, p50, + the etcd server's, mean; tabby-node's shown apart), which bounds throughput once callers outnumber CPUs: %s",
			strings.Join(cpu, "; ")))
	}
	return lines
}

// rest formats what is left of a median after subtracting others.
func rest(v float64) string {
	if v < 0 {
		return fmt.Sprintf("~0 ms (%.2f: medians do not subtract exactly)", v)
	}
	return fmt.Sprintf("~%.2f ms", v)
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
