package main

// The report's charts (docs/charts.md): PNGs beside report.md, drawn from
// the rows' raw samples and timelines, so `-render DIR` draws them again
// from report.json. A chart whose rows this run lacks (a part skipped, a
// report.json from before samples were kept) is left out; one that fails to
// draw is named in the report with the reason instead of failing the run.

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/tabby-net/tabby/test/plot"
)

// chart is one drawn (or failed) chart of the report.
type chart struct {
	file, caption string
	err           error
}

const (
	refName      = "ptp + host-local"
	deployedName = "tabby deployed (tabby-node, policy on)"
)

// drawCharts draws every chart this report has the data for into dir.
func (rep *Report) drawCharts(dir string) []chart {
	var out []chart
	// A series' colour says which implementation (tabby red, the
	// reference blue) and its dashes which op or phase (solid: ADD, or
	// before; dashed: DEL, or with the extra load).
	const (
		tabbyC, refC, otherC = 0, 2, 1
		solid, dashed        = 0, 1
	)
	type named = struct {
		name, key      string
		colour, dashes int
	}
	cdf := func(file, title, xLabel string, series []named) {
		samples := map[string][]float64{}
		style := map[string]named{}
		for _, s := range series {
			if r := rep.row(s.key); r != nil && len(r.Samples) > 0 {
				samples[s.name], style[s.name] = r.Samples, s
			}
		}
		if len(samples) == 0 {
			return
		}
		// Log x: on this shared machine tails reach 10x the median, and a
		// linear axis would squeeze every curve's body against the left.
		err := plot.CDF(filepath.Join(dir, file), title, xLabel+", log scale", samples, plot.LogX(),
			plot.Style(func(_ int, name string) (int, int) { return style[name].colour, style[name].dashes }))
		out = append(out, chart{file: file, caption: title, err: err})
	}

	// ADD and DEL of the deployed case against ptp + host-local, one chart
	// per load level the run measured.
	for _, m := range rep.cniModes() {
		cdf("latency-"+m.key+".png", "CNI ADD and DEL under cnitool, "+m.label,
			"wall time per call (ms)", []named{
				{deployedName + ", ADD", keyCNI("tabby-node", m.key, "ADD"), tabbyC, solid},
				{deployedName + ", DEL", keyCNI("tabby-node", m.key, "DEL"), tabbyC, dashed},
				{refName + ", ADD", keyCNI("ptp-host-local", m.key, "ADD"), refC, solid},
				{refName + ", DEL", keyCNI("ptp-host-local", m.key, "DEL"), refC, dashed},
			})
	}
	cdf("add-latency-1000-endpoints.png", "ADD before and with 1,000 more endpoints on host2 (sequential)",
		"wall time per ADD (ms)", []named{
			{"tabby deployed, before", keyCNI("tabby-node", modeFew, "ADD"), tabbyC, solid},
			{"tabby deployed, with 1,000 endpoints on its host", keyCNI("tabby-node", modeMany, "ADD"), tabbyC, dashed},
			{refName + " (host1), before", keyCNI("ptp-host-local", modeFew, "ADD"), refC, solid},
			{refName + " (host1), meanwhile", keyCNI("ptp-host-local", modeMany, "ADD"), refC, dashed},
		})
	foreign := "foreign records"
	if r := rep.row(keyCNI("tabby-node", modeEtcdForeign, "ADD")); r != nil && r.Records > 0 {
		foreign = commas(r.Records) + " foreign records"
	}
	cdf("add-latency-foreign-records.png", "ADD before and with "+foreign+" in etcd (sequential)",
		"wall time per ADD (ms)", []named{
			{"tabby deployed, before", keyCNI("tabby-node", modeEtcdBase, "ADD"), tabbyC, solid},
			{"tabby deployed, with " + foreign, keyCNI("tabby-node", modeEtcdForeign, "ADD"), tabbyC, dashed},
			{refName + ", before", keyCNI("ptp-host-local", modeEtcdBase, "ADD"), refC, solid},
			{refName + ", with " + foreign, keyCNI("ptp-host-local", modeEtcdForeign, "ADD"), refC, dashed},
		})
	cdf("pod-latency-cri.png", "Pods through containerd's CRI on host2, one at a time (crictl)",
		"wall time of runp, or of stopp + rmp together (ms)", []named{
			{deployedName + ", runp", keyCRI("tabby-node", "runp"), tabbyC, solid},
			{deployedName + ", stopp + rmp", keyCRI("tabby-node", "stop-rm"), tabbyC, dashed},
			{refName + ", runp", keyCRI("ptp-host-local", "runp"), refC, solid},
			{refName + ", stopp + rmp", keyCRI("ptp-host-local", "stop-rm"), refC, dashed},
		})
	cdf("add-to-first-echo.png", "Reachability: ADD on host2 returns -> first echo answered from host1",
		"time after the ADD returned (ms)", []named{
			{"address in a block host1 already routes", keyNode("add-ping/routed-block"), tabbyC, solid},
			{"address in a new block (learnt over BGP)", keyNode("add-ping/new-block"), otherC, dashed},
		})
	cdf("policy-to-effect.png", "Policy: profile change for a container on host2 -> effect on its echoes to host1",
		"time after tabbyctl returned (ms)", []named{
			{"profile append -> first echo answered", keyPolicy("append"), tabbyC, solid},
			{"profile remove -> first echo lost", keyPolicy("remove"), otherC, dashed},
		})

	for _, r := range rep.Rows {
		t := r.Timeline
		if t == nil || len(t.Series) == 0 {
			continue
		}
		file := "timeline-" + strings.NewReplacer("/", "-", " ", "-").Replace(strings.TrimPrefix(r.Key, "node/")) + ".png"
		opts := []plot.Option{plot.Steps(), plot.Legend(false, false)}
		for _, s := range t.Series {
			if len(s.X) > 50 {
				opts = append(opts, plot.NoPoints())
				break
			}
		}
		err := plot.Lines(filepath.Join(dir, file), t.Title, t.XLabel, t.YLabel, t.Series, opts...)
		out = append(out, chart{file: file, caption: t.Title, err: err})
	}
	for _, c := range out {
		if c.err != nil {
			progress("chart %s not drawn: %v", c.file, c.err)
		}
	}
	return out
}

// cniMode is a load level of the cnitool rows: "seq" or "c16", "c64".
type cniMode struct{ key, label string }

// cniModes are the load levels at which both the deployed case and ptp +
// host-local have rows, in the report's order (the 1,000-endpoint and
// foreign-record phases have charts of their own).
func (rep *Report) cniModes() []cniMode {
	var modes []cniMode
	seen := map[string]bool{}
	for _, r := range rep.Rows {
		f := strings.Split(r.Key, "/") // cnitool/<case>/<mode>/<op>
		if r.Section != "cnitool" || len(f) != 4 || f[1] != "tabby-node" || seen[f[2]] {
			continue
		}
		if m := f[2]; m == "seq" || strings.HasPrefix(m, "c") {
			if rep.row(keyCNI("ptp-host-local", m, "ADD")) != nil {
				seen[m] = true
				modes = append(modes, cniMode{m, r.Mode})
			}
		}
	}
	return modes
}

// chartsSection is the report's section that shows the charts.
func chartsSection(charts []chart) string {
	if len(charts) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n## Charts\n\nLatency charts are empirical CDFs: a curve's height at x is the fraction of calls that took at most x ms, so the curve further left is faster and a long flat top is the tail. Timelines count what was done by each moment. docs/charts.md says how each is measured.\n\n")
	for _, c := range charts {
		if c.err != nil {
			fmt.Fprintf(&b, "- %s: not drawn: %v\n\n", c.file, c.err)
			continue
		}
		fmt.Fprintf(&b, "![%s](%s)\n\n", c.caption, c.file)
	}
	return b.String()
}
