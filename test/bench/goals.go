package main

// The goals of the issues, held against one run's rows: one verdict per goal
// per run, "met" or "NOT met" with the figure that decided it, or "not
// measured" when the run has no row for it. The report's goal columns and
// the README's performance table (readme-table.md) both come from here.

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Verdict is one goal judged on one run.
type Verdict struct {
	Config string `json:"config"` // the configuration measured
	Goal   string `json:"goal"`
	Figure string `json:"figure"` // what this run measured
	Status string `json:"status"` // met, NOT met, not measured
	Row    string `json:"row,omitempty"`
}

const (
	met         = "met"
	notMet      = "NOT met"
	notMeasured = "not measured"

	cfgDeployed = "tabby + tabby-ipam, tabby-node enforcing policy (deployed)"
	cfgNoNode   = "tabby + tabby-ipam, no tabby-node on the host"
	cfgPtpIPAM  = "ptp + tabby-ipam"
	cfgStartup  = "plugin processes"
	cfgNode     = "tabby-node, 10-host lab"
	cfgPolicy   = "policy, 2-host lab"

	startupGoalMs = 3.0 // docs/scale-and-speed.md: tabby and tabby-ipam start in under 3 ms
	newBlockGoal  = 1000.0
)

func status(ok bool) string {
	if ok {
		return met
	}
	return notMet
}

// judge computes rep.Verdicts and writes each into its row's Goal column.
func (rep *Report) judge() {
	rep.Verdicts = nil
	for i := range rep.Rows {
		rep.Rows[i].Goal = ""
	}
	add := func(v Verdict) { rep.Verdicts = append(rep.Verdicts, v) }
	missing := func(cfg, goal, why string) { add(Verdict{Config: cfg, Goal: goal, Figure: why, Status: notMeasured}) }

	// ratio: p50 of key over p50 of ptp + host-local in the same mode.
	ratio := func(cfg, goal, key string, limit float64) {
		r := rep.row(key)
		if r == nil || r.RatioP50 == nil {
			missing(cfg, goal, "no such row in this run")
			return
		}
		base := rep.row(r.RatioTo)
		add(Verdict{Config: cfg, Goal: goal, Row: key, Status: status(*r.RatioP50 <= limit),
			Figure: fmt.Sprintf("%.2fx (%.2f ms vs %.2f ms)", *r.RatioP50, r.P50, base.P50)})
	}
	// concurrent: ratio for every concurrent level the run measured.
	concurrent := func(cfg, what, c, op string, limit float64, want ...int) {
		var levels []int
		for _, r := range rep.Rows {
			f := strings.Split(r.Key, "/")
			if r.Section == "cnitool" && len(f) == 4 && f[1] == c && f[3] == op && strings.HasPrefix(f[2], "c") {
				if n, err := strconv.Atoi(f[2][1:]); err == nil {
					levels = append(levels, n)
				}
			}
		}
		slices.Sort(levels)
		for _, n := range want {
			if !slices.Contains(levels, n) {
				missing(cfg, fmt.Sprintf("%s p50, %d concurrent: <= %.1fx ptp + host-local", what, n, limit), "not run at this level")
			}
		}
		for _, n := range levels {
			ratio(cfg, fmt.Sprintf("%s p50, %d concurrent: <= %.1fx ptp + host-local", what, n, limit), keyCNI(c, "c"+strconv.Itoa(n), op), limit)
		}
	}
	// stat: one statistic of a row against an absolute limit.
	stat := func(cfg, goal, key, which string, less bool, limit float64, unit string) {
		r := rep.row(key)
		if r == nil || r.N == 0 {
			missing(cfg, goal, "no such row in this run")
			return
		}
		v := map[string]float64{"p50": r.P50, "p99": r.P99, "max": r.Max}[which]
		ok := v < limit
		if !less {
			ok = v >= limit
		}
		fig := fmt.Sprintf("%s %.2f %s (n = %d)", which, v, unit, r.N)
		if r.N == 1 {
			fig = fmt.Sprintf("%.2f %s", v, unit)
		}
		add(Verdict{Config: cfg, Goal: goal, Row: key, Status: status(ok), Figure: fig})
	}
	// minRatio: a row's own ratio (to its reference path) against a floor.
	minRatio := func(cfg, goal, key string, floor float64, ref string) {
		r := rep.row(key)
		if r == nil || r.RatioP50 == nil {
			missing(cfg, goal, "no such row in this run")
			return
		}
		add(Verdict{Config: cfg, Goal: goal, Row: key, Status: status(*r.RatioP50 >= floor),
			Figure: fmt.Sprintf("%.2f of %s (%.2f %s)", *r.RatioP50, ref, r.P50, r.Unit)})
	}

	// The deployed configuration (issue 12).
	ratio(cfgDeployed, "ADD p50, sequential: <= 1.2x ptp + host-local", keyCNI("tabby-node", "seq", "ADD"), 1.2)
	concurrent(cfgDeployed, "ADD", "tabby-node", "ADD", 1.0, 16, 64)
	if r := rep.row(keyCNI("tabby-node", "seq", "ADD")); r != nil && r.N > 0 {
		add(Verdict{Config: cfgDeployed, Goal: "ADD p99 <= 2x its p50 (sequential)", Row: r.Key, Status: status(r.P99 <= 2*r.P50),
			Figure: fmt.Sprintf("p99 %.2f ms = %.2fx p50 %.2f ms", r.P99, r.P99/r.P50, r.P50)})
	} else {
		missing(cfgDeployed, "ADD p99 <= 2x its p50 (sequential)", "no such row in this run")
	}
	ratio(cfgDeployed, "DEL p50, sequential: <= 1.0x ptp + host-local", keyCNI("tabby-node", "seq", "DEL"), 1.0)
	{
		goal := fmt.Sprintf("ADD p50 with %s endpoints on the host: <= 1.1x the same ADD on the empty host", manyLabel)
		// The baseline is the phase right before, with the same cases.
		r, e := rep.row(keyCNI("tabby-node", modeMany, "ADD")), rep.row(keyCNI("tabby-node", modeFew, "ADD"))
		if r == nil || e == nil || e.P50 == 0 {
			missing(cfgDeployed, goal, "no such row in this run")
		} else {
			x := r.P50 / e.P50
			add(Verdict{Config: cfgDeployed, Goal: goal, Row: r.Key, Status: status(x <= 1.1),
				Figure: fmt.Sprintf("%.2fx (%.2f ms vs %.2f ms)", x, r.P50, e.P50)})
		}
	}
	stat(cfgDeployed, fmt.Sprintf("%s endpoints written at once all programmed: < 2 s", manyLabel), keyNode("program-1000"), "max", true, 2000, "ms")
	{
		// The baseline is the same cases right before the fill.
		goal := "ADD p50 with 200,000 foreign endpoint records in etcd: <= 1.1x the same ADD on the etcd without them"
		r, e := rep.row(keyCNI("tabby-node", modeEtcdForeign, "ADD")), rep.row(keyCNI("tabby-node", modeEtcdBase, "ADD"))
		switch {
		case rep.Skipped["foreign"] != "":
			missing(cfgDeployed, goal, rep.Skipped["foreign"])
		case r == nil || e == nil || e.P50 == 0:
			missing(cfgDeployed, goal, "no such row in this run")
		default:
			if r.Records != foreignGoal {
				// The goal names the count this run wrote.
				goal = fmt.Sprintf("ADD p50 with %s foreign endpoint records in etcd (the issue asks 200,000): <= 1.1x the same ADD on the etcd without them", commas(r.Records))
			}
			x := r.P50 / e.P50
			fig := fmt.Sprintf("%.2fx (%.2f ms vs %.2f ms)", x, r.P50, e.P50)
			pr, pe := rep.row(keyCNI("ptp-host-local", modeEtcdForeign, "ADD")), rep.row(keyCNI("ptp-host-local", modeEtcdBase, "ADD"))
			if pr != nil && pe != nil && pe.P50 > 0 {
				fig += fmt.Sprintf("; ptp + host-local in the same phases %.2fx", pr.P50/pe.P50)
			}
			add(Verdict{Config: cfgDeployed, Goal: goal, Row: r.Key, Status: status(x <= 1.1), Figure: fig})
		}
	}
	{
		goal := "pods per second through containerd CRI (crictl runp + stopp + rmp, 64 pods): >= 1.0x ptp + host-local"
		r := rep.row(keyCRI("tabby-node", "pods"))
		switch {
		case rep.Skipped["cri"] != "":
			missing(cfgDeployed, goal, rep.Skipped["cri"])
		case r == nil || r.RatioP50 == nil:
			missing(cfgDeployed, goal, "no such row in this run")
		default:
			if r.N != 64 {
				goal = strings.Replace(goal, "64 pods", fmt.Sprintf("%d pods (the issue asks 64)", r.N), 1)
			}
			base := rep.row(r.RatioTo)
			add(Verdict{Config: cfgDeployed, Goal: goal, Row: r.Key, Status: status(*r.RatioP50 >= 1.0),
				Figure: fmt.Sprintf("%.2fx (%.2f vs %.2f pods/s)", *r.RatioP50, r.P50, base.P50)})
		}
	}

	// Without tabby-node (issue 4) and tabby-ipam under ptp (issue 3).
	ratio(cfgNoNode, "ADD p50, sequential: <= 1.0x ptp + host-local", keyCNI("tabby", "seq", "ADD"), 1.0)
	concurrent(cfgNoNode, "ADD", "tabby", "ADD", 1.0, 16)
	ratio(cfgPtpIPAM, "ADD p50, sequential: <= 1.3x ptp + host-local", keyCNI("ptp-tabby-ipam", "seq", "ADD"), 1.3)
	concurrent(cfgPtpIPAM, "ADD", "ptp-tabby-ipam", "ADD", 1.3, 16)

	// Start-up (docs/scale-and-speed.md): the whole process start, not only
	// the Go package init.
	for _, bin := range []string{"tabby", "tabby-ipam"} {
		goal := fmt.Sprintf("%s process start (VERSION, exec'd directly) p50: < %.0f ms", bin, startupGoalMs)
		r := rep.row(keyStartup(bin))
		if r == nil || r.N == 0 {
			missing(cfgStartup, goal, "no such row in this run")
			continue
		}
		ref := ""
		for _, o := range []string{"ptp", "noop"} {
			if v, ok := rep.p50(keyStartup(o)); ok {
				ref += fmt.Sprintf("; %s %.2f ms", map[string]string{"ptp": "Debian's ptp", "noop": "a no-op Go plugin"}[o], v)
			}
		}
		add(Verdict{Config: cfgStartup, Goal: goal, Row: r.Key, Status: status(r.P50 < startupGoalMs), Figure: fmt.Sprintf("%.2f ms%s", r.P50, ref)})
	}

	// tabby-node (issue 5) and policy (issue 6).
	stat(cfgNode, "a new block on one host reachable from another after the ADD returns: < 1 s, every time", keyNode("add-ping/new-block"), "max", true, newBlockGoal, "ms")
	stat(cfgNode, fmt.Sprintf("tabby-node idle RSS: < %d MB, every daemon", rssGoalMB), keyNode("rss"), "max", true, rssGoalMB, "MB")
	minRatio(cfgNode, fmt.Sprintf("TCP across hosts, direct routing: >= %.2f of the same path built by hand", throughputMin), keyNode("tcp/tabby-direct"), throughputMin, "by hand")
	minRatio(cfgNode, fmt.Sprintf("TCP across hosts, VXLAN: >= %.2f of the same path built by hand", throughputMin), keyNode("tcp/tabby-vxlan"), throughputMin, "by hand")
	stat(cfgPolicy, fmt.Sprintf("packet filter reconcile from nothing, 1,000 endpoints and 100 profiles: < %.0f s", reconcileGoal/1000), keyPolicy("reconcile-cold"), "max", true, reconcileGoal, "ms")
	stat(cfgPolicy, fmt.Sprintf("profile append to effect on another host: < %.0f s", appendGoal/1000), keyPolicy("append"), "max", true, appendGoal, "ms")
	minRatio(cfgPolicy, fmt.Sprintf("64-byte UDP with 1,000 vs 10 endpoints per host: >= %.2f (close to 1)", ppsRatioMin), keyPolicy("pps-1000"), ppsRatioMin, "10 endpoints")
	minRatio(cfgPolicy, "64-byte UDP with 1,000 policies selecting every endpoint vs none: >= 0.95", keyPolicy("pps-1000-policies"), 0.95, "no policy")
	minRatio(cfgPolicy, fmt.Sprintf("TCP with policy on (1,000 endpoints per host) vs hooks removed: >= %.2f", policyTputMin), keyPolicy("tcp-on-off"), policyTputMin, "hooks removed")

	for _, v := range rep.Verdicts {
		if r := rep.row(v.Row); r != nil && v.Row != "" && v.Status != notMeasured {
			if r.Goal != "" {
				r.Goal += "; "
			}
			r.Goal += v.Goal + ": " + v.Status
		}
	}
}

// readmeTableFile is the README's performance table, written by every run.
const readmeTableFile = "readme-table.md"

// readmeTable is the markdown fragment make bench-readme splices into the
// README: the run, then one line per goal, the deployed configuration
// first, then where the ADD time goes.
func (rep *Report) readmeTable() string {
	var b strings.Builder
	b.WriteString("<!-- generated by `make bench` (test/bench) into bench/out/readme-table.md; `make bench-readme` puts it here -->\n")
	run := "`make bench`"
	if f := rep.Meta["flags"]; f != "" {
		run = "`go run ./test/bench " + f + "` (not make bench's settings)"
	}
	fmt.Fprintf(&b, "One run of %s: %s, source %s; %s; %s.\n", run, rep.Meta["date"], rep.Meta["source"], rep.Meta["machine"], rep.Meta["settings"])
	if inc := rep.Meta["incomplete"]; inc != "" {
		fmt.Fprintf(&b, "**This run did not finish** (%s): what it did not reach says not measured.\n", inc)
	}
	b.WriteString("Ratios are p50 against Debian's ptp + host-local measured in the same run, interleaved.\n\n")
	b.WriteString("| configuration | goal | this run | verdict |\n|---|---|---|---|\n")
	for _, v := range rep.Verdicts {
		st := v.Status
		if st == notMet {
			st = "**NOT met**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", v.Config, v.Goal, v.Figure, st)
	}
	if lines := rep.breakdownLines(); len(lines) > 0 {
		b.WriteString("\nWhere the ADD time goes (differences of this run's sequential medians: estimates):\n\n")
		for _, l := range lines {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	return b.String()
}
