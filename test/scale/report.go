package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tabby-net/tabby/test/plot"
)

// Goals of issue 15.
const (
	goalWrites      = 500.0 // writes/s sustained with 10,000 hosts watching
	goalEnforceP99  = 1000.0
	goalAddRatio    = 1.1
	goalColdStart   = 1.0 // s
	goalOthersRatio = 2.0
)

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func (r *runner) write() error {
	rep := r.rep
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.o.out, "report.json"), b, 0o644); err != nil {
		return err
	}
	md := renderMD(rep)
	if err := os.WriteFile(filepath.Join(r.o.out, "report.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := charts(rep, r.o.out); err != nil {
		progress("charts: %v", err)
	}
	progress("report in %s", r.o.out)
	return nil
}

func mb(b float64) string { return fmt.Sprintf("%.0f MB", b/1e6) }

func renderMD(rep *Report) string {
	var w strings.Builder
	c := rep.Cluster
	fmt.Fprintf(&w, "# Scale simulation (make bench-scale)\n\nRun of %s, %.0f s. Cluster: %d hosts, %d workloads, %d profiles (namespaces), %d namespaces per host, pool %s of /%d blocks.\n\n",
		rep.Started.Format(time.RFC3339), rep.Seconds, c.Hosts, c.Endpoints, c.Profiles, c.NSPerHost, c.Pool, c.BlockSize)
	w.WriteString("| goal | figure | verdict |\n|---|---|---|\n")
	if fr := lastRow(rep.Fanout, "direct"); fr != nil {
		fmt.Fprintf(&w, "| >= 500 writes/s with %d hosts watching (direct to etcd) | %.0f writes/s (p99 %.0f ms) | %s |\n", fr.Hosts, fr.Churn.Rate, ms(fr.Churn.P99), verdict(fr.Churn.Rate >= goalWrites))
	}
	if fr := lastRow(rep.Fanout, "proxy"); fr != nil {
		fmt.Fprintf(&w, "| >= 500 writes/s with %d hosts watching (through %d gRPC proxies) | %.0f writes/s (p99 %.0f ms) | %s |\n", fr.Hosts, fr.Proxies, fr.Churn.Rate, ms(fr.Churn.P99), verdict(fr.Churn.Rate >= goalWrites))
	}
	if e := rep.Enforce; e != nil && e.N > 0 {
		fmt.Fprintf(&w, "| profile change to enforcement p99 < 1 s, hosts watching | p50 %.0f ms, p99 %.0f ms (%d changes, %d not seen) | %s |\n", e.P50, e.P99, e.N, e.Failed, verdict(e.P99 < goalEnforceP99 && e.Failed == 0))
	}
	if a, f := rep.TurnsEmpty, rep.TurnsFull; a != nil && f != nil && a.N > 0 && f.N > 0 {
		fmt.Fprintf(&w, "| ADD on the full datastore <= 1.1x empty (two datastores, ADDs in turns in one series) | p50 %.1f vs %.1f ms (%.2fx), p99 %.1f vs %.1f ms (%.2fx); %d ADDs each, %d and %d failed; ptp + host-local in the same turns p50 %.1f, p99 %.1f ms | %s |\n",
			f.P50, a.P50, f.P50/a.P50, f.P99, a.P99, f.P99/a.P99, f.N, f.Failed, a.Failed, rep.TurnsRef.P50, rep.TurnsRef.P99,
			verdict(f.Failed == 0 && a.Failed == 0 && f.P50/a.P50 <= goalAddRatio && f.P99/a.P99 <= goalAddRatio))
	}
	if a, f := rep.TurnsEmpty, rep.TurnsProxy; a != nil && f != nil && a.N > 0 && f.N > 0 {
		fmt.Fprintf(&w, "| the same, the full datastore's plugin through a gRPC proxy (the sizing guide's deployment at this size), the empty one's direct | p50 %.1f vs %.1f ms (%.2fx), p99 %.1f vs %.1f ms (%.2fx); %d ADDs, %d failed | %s |\n",
			f.P50, a.P50, f.P50/a.P50, f.P99, a.P99, f.P99/a.P99, f.N, f.Failed,
			verdict(f.Failed == 0 && a.Failed == 0 && f.P50/a.P50 <= goalAddRatio && f.P99/a.P99 <= goalAddRatio))
	}
	if a, f := rep.AddEmpty, rep.AddFull; a != nil && f != nil && a.N > 0 && f.N > 0 {
		fmt.Fprintf(&w, "| ADD on the full datastore <= 1.1x empty, the empty one timed before the load | p50 %.1f vs %.1f ms (%.2fx), p99 %.1f vs %.1f ms (%.2fx) | %s |\n",
			f.P50, a.P50, f.P50/a.P50, f.P99, a.P99, f.P99/a.P99, verdict(f.P50/a.P50 <= goalAddRatio && f.P99/a.P99 <= goalAddRatio))
		if ra, rf := rep.RefEmpty, rep.RefFull; ra != nil && rf != nil && ra.N > 0 && rf.N > 0 {
			// The same ratio over the reference's own: what the full
			// datastore costs tabby beyond what the machine did to every ADD.
			p50 := (f.P50 / a.P50) / (rf.P50 / ra.P50)
			p99 := (f.P99 / a.P99) / (rf.P99 / ra.P99)
			fmt.Fprintf(&w, "| the same, over ptp + host-local's own change (ADDs taken in turns with tabby's) | ptp + host-local p50 %.1f vs %.1f ms (%.2fx), p99 %.1f vs %.1f ms (%.2fx); tabby over it: p50 %.2fx, p99 %.2fx | %s |\n",
				rf.P50, ra.P50, rf.P50/ra.P50, rf.P99, ra.P99, rf.P99/ra.P99, p50, p99, verdict(p50 <= goalAddRatio && p99 <= goalAddRatio))
		}
	}
	if cs := rep.ColdFull; cs != nil {
		fmt.Fprintf(&w, "| tabby-node cold start on the full datastore < 1 s | %.2f s (empty: %.2f s) | %s |\n", cs.ReadySeconds, rep.ColdEmpty.ReadySeconds, verdict(cs.ReadySeconds < goalColdStart))
		fmt.Fprintf(&w, "| tabby-node RSS independent of other hosts | %s full vs %s empty | %s |\n", mb(float64(cs.RSSBytes)), mb(float64(rep.ColdEmpty.RSSBytes)),
			verdict(float64(cs.RSSBytes) <= 1.25*float64(rep.ColdEmpty.RSSBytes)))
	}
	if ip := rep.IPAM; ip != nil {
		fmt.Fprintf(&w, "| ipam check on the full datastore within minutes, others' p99 <= 2x | %.1f s reading at %.0f keys/s; others' write p99 %.1f ms with the check reading vs %.1f ms held (%d reading windows between held ones; %.1fx, p50 %.1fx) | %s |\n",
			ip.CheckSeconds, ip.CheckRate, ms(ip.DuringCheck.P99), ms(ip.CheckHeld.P99), ip.CheckWindows, ratio(ip.DuringCheck.P99, ip.CheckHeld.P99), ratio(ip.DuringCheck.P50, ip.CheckHeld.P50),
			verdict(ip.CheckError == "" && ip.CheckSeconds < 900 && ratio(ip.DuringCheck.P99, ip.CheckHeld.P99) <= goalOthersRatio))
		fmt.Fprintf(&w, "| IPAM GC on the full datastore within minutes, others' p99 <= 2x | %.1f s; others' write p99 %.1f ms (%.1fx) | %s |\n",
			ip.GCSeconds, ms(ip.DuringGC.P99), ratio(ip.DuringGC.P99, ip.Baseline.P99),
			verdict(ip.GCError == "" && ip.GCSeconds < 300 && ratio(ip.DuringGC.P99, ip.Baseline.P99) <= goalOthersRatio))
	}
	for _, d := range rep.Dial {
		if d.First["full"] == nil || d.First["empty"] == nil {
			continue
		}
		fmt.Fprintf(&w, "\nThe plugin's etcd client calling each datastore in turns from %s (%d rounds, a transaction like IPAM's): the first call, which opens the connection, p50 %.2f vs %.2f ms, p99 %.2f vs %.2f ms (full vs empty); a second p50 %.2f vs %.2f ms, p99 %.2f vs %.2f ms.\n",
			d.From, d.First["full"].N, d.First["full"].P50, d.First["empty"].P50, d.First["full"].P99, d.First["empty"].P99,
			d.Warm["full"].P50, d.Warm["empty"].P50, d.Warm["full"].P99, d.Warm["empty"].P99)
	}
	if f, e := rep.TurnsDisk["full"], rep.TurnsDisk["empty"]; f != nil && e != nil {
		fmt.Fprintf(&w, "\nEach etcd's disk over the ADDs in turns (full vs empty; etcd's histograms, so quantiles are bucket-interpolated): backend commits, which hold the lock every request to that etcd waits on, %d vs %d, mean %.2f vs %.2f ms, p50 %.2f vs %.2f, p99 %.2f vs %.2f; WAL fsyncs %d vs %d, mean %.2f vs %.2f ms, p99 %.2f vs %.2f.\n",
			f.Commit.N, e.Commit.N, f.Commit.MeanMs, e.Commit.MeanMs, f.Commit.P50Ms, e.Commit.P50Ms, f.Commit.P99Ms, e.Commit.P99Ms,
			f.WALFsync.N, e.WALFsync.N, f.WALFsync.MeanMs, e.WALFsync.MeanMs, f.WALFsync.P99Ms, e.WALFsync.P99Ms)
	}
	if l := rep.Load; l != nil {
		fmt.Fprintf(&w, "\n## Load\n\n%d keys in %d transactions (%s of keys and values) in %.1f s (%.0f keys/s); etcd db %s (in use %s), etcd RSS %s after the load.\n",
			l.Stats.Keys, l.Stats.Txns, mb(float64(l.Stats.Bytes)), l.Stats.Duration.Seconds(), float64(l.Stats.Keys)/l.Stats.Duration.Seconds(),
			mb(l.Metrics["etcd_mvcc_db_total_size_in_bytes"]), mb(l.Metrics["etcd_mvcc_db_total_size_in_use_in_bytes"]), mb(l.Metrics["process_resident_memory_bytes"]))
	}
	if len(rep.Fanout) > 0 {
		fmt.Fprintf(&w, "\n## Watch fan-out\n\nEach step: etcd's history compacted (as a cluster's compactor keeps it), the simulated hosts joined (one Get per prefix, then a watch from its revision), then the churn ran (endpoint ADD/DEL transactions, 1 in 100 writes a profile edit, 1 in 200 a host leaving or coming back) as fast as etcd took it (%d writers, closed loop). Hosts joining read the shared prefixes (host list, profiles, namespaces, tags) whole up to the first %s of them, count-only after that (same requests, same watches; see the join columns for the cost of whole reads).\n\n", fanoutWriters(rep), fullReadsText(rep))
		w.WriteString("| mode | hosts | join s | host watches | etcd watchers | etcd watch streams | writes/s | write p50 ms | write p99 ms | events/s to hosts | etcd CPU s | proxies CPU s | simulator + writers CPU s | etcd RSS | etcd db | hosts reading whole at join | read at join | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, f := range rep.Fanout {
			mode := f.Mode
			if f.Proxies > 0 {
				mode = fmt.Sprintf("%d proxy", f.Proxies)
			}
			fmt.Fprintf(&w, "| %s | %d | %.1f | %d | %.0f | %.0f | %.0f | %.1f | %.1f | %.0f | %.1f | %.1f | %.1f | %s | %s | %d | %s | %d |\n", mode, f.Hosts, f.JoinSeconds, f.Watches,
				f.EtcdWatchers, f.EtcdStreams, f.Churn.Rate, ms(f.Churn.P50), ms(f.Churn.P99), f.EventsPerSec, f.EtcdCPU, f.ProxyCPU, f.SimCPU, mb(f.EtcdRSS), mb(f.EtcdDB), f.FullReads, mb(float64(f.ReadBytes)), f.Churn.Errors)
		}
	}
	for _, l := range []struct {
		name string
		v    *Latencies
	}{{"CNI ADD, empty datastore", rep.AddEmpty}, {"CNI ADD, full datastore", rep.AddFull},
		{"ptp + host-local ADD, beside the empty datastore", rep.RefEmpty}, {"ptp + host-local ADD, beside the full datastore", rep.RefFull},
		{"CNI ADD in turns: full datastore", rep.TurnsFull}, {"CNI ADD in turns: empty datastore (its own etcd and tabby-node)", rep.TurnsEmpty},
		{"CNI ADD in turns: ptp + host-local", rep.TurnsRef}, {"CNI ADD in turns: full datastore through a gRPC proxy", rep.TurnsProxy},
		{"profile change to enforcement, empty datastore", rep.EnforceEmpty}, {"profile change to enforcement, full datastore, hosts watching", rep.Enforce}} {
		if l.v != nil {
			if l.name == "CNI ADD, empty datastore" {
				w.WriteString("\n## Latencies\n\n| series | n | p50 ms | p99 ms | failed | machine busy cores | tabby-node CPU ms per ADD+DEL |\n|---|---|---|---|---|---|---|\n")
			}
			fmt.Fprintf(&w, "| %s | %d | %.1f | %.1f | %d | %.2f | %.2f |\n", l.name, l.v.N, l.v.P50, l.v.P99, l.v.Failed, l.v.BusyCores, l.v.NodeCPUms)
		}
	}
	if a, f, _ := rep.adds(); a != nil && f != nil && len(a.Steps) > 0 && len(f.Steps) > 0 {
		w.WriteString("\nThe ADD's steps (ms each, from the plugin's debug log; the rest of an ADD is the plugin's process start under `ip netns exec`, its netconf and its etcd connection):\n\n| step | empty p50 | full p50 | empty p99 | full p99 |\n|---|---|---|---|---|\n")
		for _, st := range []string{"identity", "ipam_lock", "ipam_decide", "ipam_txn", "ipam", "mtu", "veth", "endpoint", "policy"} {
			fmt.Fprintf(&w, "| %s | %.2f | %.2f | %.2f | %.2f |\n", st, a.Steps[st], f.Steps[st], a.Steps99[st], f.Steps99[st])
		}
	}
	if len(rep.AddCurve) > 0 {
		w.WriteString("\n## ADD as the datastore fills\n\nEach point: CNI ADDs with that many workloads in etcd, ptp + host-local's in turns with them (the two ends are the empty and the full datastore's series above; `-stages`, `-stage-adds`; add-vs-workloads.png).\n\n| workloads in etcd | n | tabby p50 ms | tabby p99 ms | ptp + host-local p50 ms | p99 ms | tabby / ptp p50 |\n|---|---|---|---|---|---|---|\n")
		for _, pt := range rep.AddCurve {
			if pt.Tabby == nil || pt.Ref == nil {
				continue
			}
			fmt.Fprintf(&w, "| %d | %d | %.1f | %.1f | %.1f | %.1f | %.2f |\n", pt.Workloads, pt.Tabby.N, pt.Tabby.P50, pt.Tabby.P99, pt.Ref.P50, pt.Ref.P99, pt.Tabby.P50/pt.Ref.P50)
		}
	}
	if ip := rep.IPAM; ip != nil {
		fmt.Fprintf(&w, "\n## ipam check and GC\n\ncheck at %.0f keys/s: %.1f s reading (%.1f s with the held windows), heap peak %s, %+v %s; GC: %.1f s, %d released %s. Others' writes at %.0f/s: alone before p50 %.1f / p99 %.1f ms; check reading %.1f / %.1f ms (%d writes), check held %.1f / %.1f ms (%d writes), in alternating windows of %v and %v; during GC %.1f / %.1f ms.\n",
			ip.CheckRate, ip.CheckSeconds, ip.CheckWallSeconds, mb(float64(ip.CheckHeapPeak)), ip.CheckReport, ip.CheckError, ip.GCSeconds, ip.GCReleased, ip.GCError, ip.Baseline.Rate,
			ms(ip.Baseline.P50), ms(ip.Baseline.P99), ms(ip.DuringCheck.P50), ms(ip.DuringCheck.P99), ip.DuringCheck.Writes,
			ms(ip.CheckHeld.P50), ms(ip.CheckHeld.P99), ip.CheckHeld.Writes, checkReading, checkHeld, ms(ip.DuringGC.P50), ms(ip.DuringGC.P99))
	}
	if len(rep.Notes) > 0 {
		w.WriteString("\n## Machine load during the run\n\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(&w, "- %s\n", n)
		}
	}
	if len(rep.Errors) > 0 {
		w.WriteString("\n## Errors\n\n")
		for _, e := range rep.Errors {
			fmt.Fprintf(&w, "- %s\n", e)
		}
	}
	return w.String()
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func lastRow(rows []FanoutRow, mode string) *FanoutRow {
	var out *FanoutRow
	for i := range rows {
		if rows[i].Mode == mode {
			out = &rows[i]
		}
	}
	return out
}

func charts(rep *Report, dir string) error {
	var errs []string
	if len(rep.Fanout) > 0 {
		var rate, cpu, watchers []plot.Series
		for _, mode := range []string{"direct", "proxy"} {
			r := plot.Series{Name: mode}
			c := plot.Series{Name: mode}
			wt := plot.Series{Name: mode}
			for _, f := range rep.Fanout {
				if f.Mode == mode {
					r.X, r.Y = append(r.X, float64(f.Hosts)), append(r.Y, f.Churn.Rate)
					c.X, c.Y = append(c.X, float64(f.Hosts)), append(c.Y, f.EtcdCPU/f.Churn.Duration.Seconds())
					wt.X, wt.Y = append(wt.X, float64(f.Hosts)), append(wt.Y, f.EtcdWatchers)
				}
			}
			if len(r.X) > 0 {
				rate, cpu, watchers = append(rate, r), append(cpu, c), append(watchers, wt)
			}
		}
		if err := plot.Lines(filepath.Join(dir, "writes-vs-hosts.png"), "Sustained writes with hosts watching", "simulated hosts watching", "writes/s", rate); err != nil {
			errs = append(errs, err.Error())
		}
		if err := plot.Lines(filepath.Join(dir, "etcd-cpu-vs-hosts.png"), "etcd CPU under the churn", "simulated hosts watching", "etcd cores busy", cpu); err != nil {
			errs = append(errs, err.Error())
		}
		if err := plot.Lines(filepath.Join(dir, "etcd-watchers-vs-hosts.png"), "Watchers etcd serves", "simulated hosts watching", "etcd watchers", watchers); err != nil {
			errs = append(errs, err.Error())
		}
	}
	add := map[string][]float64{}
	empty, full, ref := rep.adds()
	if empty != nil && len(empty.Samples) > 0 {
		add["empty datastore"] = empty.Samples
	}
	if full != nil && len(full.Samples) > 0 {
		add[fmt.Sprintf("%d workloads", rep.Cluster.Endpoints)] = full.Samples
	}
	if ref != nil && len(ref.Samples) > 0 {
		add["ptp + host-local"] = ref.Samples
	}
	if len(add) > 0 {
		if err := plot.CDF(filepath.Join(dir, "add-latency-cdf.png"), "CNI ADD (tabby-node enforcing)", "ms", add); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(rep.AddCurve) > 1 {
		series := []plot.Series{{Name: "tabby p50"}, {Name: "tabby p99"}, {Name: "ptp + host-local p50"}, {Name: "ptp + host-local p99"}}
		for _, pt := range rep.AddCurve {
			if pt.Tabby == nil || pt.Ref == nil || pt.Tabby.N == 0 || pt.Ref.N == 0 {
				continue
			}
			x := float64(pt.Workloads)
			for i, y := range []float64{pt.Tabby.P50, pt.Tabby.P99, pt.Ref.P50, pt.Ref.P99} {
				series[i].X, series[i].Y = append(series[i].X, x), append(series[i].Y, y)
			}
		}
		if err := plot.Lines(filepath.Join(dir, "add-vs-workloads.png"), "CNI ADD as the datastore fills", "workloads in etcd", "ms", series); err != nil {
			errs = append(errs, err.Error())
		}
	}
	enf := map[string][]float64{}
	if rep.EnforceEmpty != nil && len(rep.EnforceEmpty.Samples) > 0 {
		enf["empty datastore"] = rep.EnforceEmpty.Samples
	}
	if rep.Enforce != nil && len(rep.Enforce.Samples) > 0 {
		enf["full, hosts watching"] = rep.Enforce.Samples
	}
	if len(enf) > 0 {
		if err := plot.CDF(filepath.Join(dir, "enforce-cdf.png"), "Profile change to enforcement", "ms", enf); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// adds is the ADD series the report's steps table and chart show: those
// taken in turns on two datastores when the run has them, else the empty
// and full series timed apart (with the reference beside the full one).
func (rep *Report) adds() (empty, full, ref *Latencies) {
	if rep.TurnsEmpty != nil && rep.TurnsFull != nil {
		return rep.TurnsEmpty, rep.TurnsFull, rep.TurnsRef
	}
	return rep.AddEmpty, rep.AddFull, rep.RefFull
}

func fanoutWriters(rep *Report) int { return rep.Writers }

func fullReadsText(rep *Report) string {
	if rep.FullReads <= 0 {
		return "all"
	}
	return fmt.Sprint(rep.FullReads)
}
