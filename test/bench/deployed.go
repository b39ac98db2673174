package main

// The deployed configuration's extra phase: host2's tabby-node gets 1,000
// more endpoints at once (records only: their interfaces do not exist, but
// each gets its rules and its place in the profile's set), and the deployed
// case's ADD and DEL are measured again beside ptp + host-local.

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/nodestatus"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
	"github.com/tabby-net/tabby/test/lab"
	"github.com/tabby-net/tabby/test/plot"
)

const (
	manyEndpoints = 1000
	manyLabel     = "1,000"
	manyPool      = "10.60.0.0/16" // their addresses: a disabled pool, never handed out
	manyPerTxn    = 50             // endpoints per etcd transaction (2 ops each; etcd allows 128)
)

// waitNodeReady polls the status socket in stateDir until tabby-node has
// loaded its etcd data.
func waitNodeReady(stateDir string, d time.Duration) error {
	var last error
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := nodestatus.Get(ctx, stateDir)
		cancel()
		if err == nil && st.Ready {
			return nil
		}
		last = err
	}
	return fmt.Errorf("tabby-node (state dir %s) not ready after %v: %v", stateDir, d, last)
}

// manyEndpointRows runs cases (ptp + host-local and the deployed case) n/2
// times sequentially on their own, writes manyEndpoints endpoint records of
// host2 (in transactions of manyPerTxn), times until tabby-node reports
// every one ready, runs the cases n times again, removes the records and
// runs the cases the other n/2 times alone.
// The two phases interleave the same cases, so the deployed ADD with and
// without the extra endpoints compare like for like.
func (b *bench) manyEndpointRows(cases []*cniCase, n int) ([]Row, string, error) {
	h := b.hn
	ctx := context.Background()
	// Without the endpoints half before and half after (A B B A), so a
	// machine whose load drifts over the minutes the phases take does not
	// read as a cost of the endpoints.
	progress("deployed case and ptp + host-local alone: %d iterations of ADD+DEL", n/2)
	few, err := b.sequential(cases, n/2, modeFew)
	if err != nil {
		return nil, "", err
	}
	if _, err := b.kv.Txn(ctx, nil, []store.Op{store.Put(model.PoolKey(manyPool), store.MustJSON(model.Pool{
		CIDR: manyPool, BlockSize: 26, IPIPMode: "never", VXLANMode: "never", Disabled: true}))}); err != nil {
		return nil, "", err
	}
	eps := make([]*model.Endpoint, manyEndpoints)
	for i := range eps {
		eps[i] = &model.Endpoint{Host: h.Name, Orchestrator: "cni", Workload: fmt.Sprintf("many%d", i), Name: "eth0",
			ContainerID: fmt.Sprintf("many%d", i), HostInterface: fmt.Sprintf("tbm%011x", i),
			IPv4Nets: []string{fmt.Sprintf("10.60.%d.%d/32", i/250, i%250+1)}, Profiles: []string{nodeProfile}}
	}
	// committed, when set, is told how many endpoints are in etcd after
	// each transaction (the timeline of the write).
	txns := func(next func(*model.Endpoint) []store.Op, committed func(n int)) error {
		for i := 0; i < len(eps); i += manyPerTxn {
			var ops []store.Op
			end := min(i+manyPerTxn, len(eps))
			for _, e := range eps[i:end] {
				ops = append(ops, next(e)...)
			}
			if _, err := b.kv.Txn(ctx, nil, ops); err != nil {
				return err
			}
			if committed != nil {
				committed(end)
			}
		}
		return nil
	}
	progress("deployed case: %s endpoints on %s at once", manyLabel, h.Name)
	wrote := plot.Series{Name: "written to etcd (transaction commits)", X: []float64{0}, Y: []float64{0}}
	seen := plot.Series{Name: "seen ready (/ready, asked one by one after the writes)"}
	t0 := time.Now()
	if err := txns(func(e *model.Endpoint) []store.Op { return workload.Ops(nil, e) }, func(n int) {
		wrote.X, wrote.Y = append(wrote.X, ms(time.Since(t0))), append(wrote.Y, float64(n))
	}); err != nil {
		return nil, "", fmt.Errorf("write endpoints: %w", err)
	}
	written := time.Now()
	for i, e := range eps {
		if err := nodestatus.WaitReady(ctx, b.node.stateDir(h), e.HostInterface, e.ContainerID, 30*time.Second); err != nil {
			return nil, "", fmt.Errorf("endpoint %s not programmed: %w", e.HostInterface, err)
		}
		seen.X, seen.Y = append(seen.X, ms(time.Since(t0))), append(seen.Y, float64(i+1))
	}
	ready := time.Now()
	prog := Row{Key: keyNode("program-1000"), Name: fmt.Sprintf("tabby-node programs %s endpoints written at once (from the last write to every one ready)", manyLabel),
		Section: "node", Mode: "1 host", Op: "program", Unit: "ms", N: 1}
	v := ms(ready.Sub(written))
	prog.P50, prog.P99, prog.Mean, prog.Max = round2(v), round2(v), round2(v), round2(v)
	prog.Note = fmt.Sprintf("written in %d transactions of %d endpoints, %.0f ms; ready = tabby-node's /ready for each endpoint (what the CNI plugin waits for); %.0f ms from the first write",
		(manyEndpoints+manyPerTxn-1)/manyPerTxn, manyPerTxn, ms(written.Sub(t0)), ms(ready.Sub(t0)))
	prog.Timeline = &Timeline{Title: fmt.Sprintf("tabby-node on host2: %s endpoint records written at once", manyLabel),
		XLabel: "time since the first write (ms)", YLabel: "endpoints", Series: []plot.Series{wrote, seen}}

	progress("deployed case with %s endpoints on %s: %d iterations of ADD+DEL", manyLabel, h.Name, n)
	rows, err := b.sequential(cases, n, modeMany)
	if err != nil {
		return nil, "", err
	}
	for i := range rows {
		rows[i].Mode = fmt.Sprintf("sequential, %s endpoints on host2", manyLabel)
	}
	if err := txns(func(e *model.Endpoint) []store.Op { return workload.Ops(e, nil) }, nil); err != nil {
		return nil, "", fmt.Errorf("remove endpoints: %w", err)
	}
	if _, err := b.kv.Txn(ctx, nil, []store.Op{store.Delete(model.PoolKey(manyPool))}); err != nil {
		return nil, "", err
	}
	// The second half without them starts once tabby-node has taken them
	// out of its sets again.
	if err := lab.Eventually(30*time.Second, func() error {
		out, err := b.l.Exec(h.NS, "ipset", "list", "-t")
		if err != nil {
			return err
		}
		if n := setEntries(out); n >= manyEndpoints/10 {
			return fmt.Errorf("%d entries still in host2's ipsets", n)
		}
		return nil
	}); err != nil {
		return nil, "", fmt.Errorf("tabby-node did not remove the %s endpoints: %w", manyLabel, err)
	}
	progress("deployed case and ptp + host-local alone again: %d iterations of ADD+DEL", n-n/2)
	after, err := b.sequential(cases, n-n/2, modeFew)
	if err != nil {
		return nil, "", err
	}
	for i := range few {
		few[i] = mergeRows(few[i], after[i])
		few[i].Mode = fmt.Sprintf("sequential, these two cases alone, half before the %s endpoints and half after", manyLabel)
	}
	note := fmt.Sprintf("%s endpoints: records of host2 with profile %s and addresses in a disabled pool (%s), written straight to etcd; their interfaces do not exist, but tabby-node gives each its rules and set membership. The deployed case and ptp + host-local (host1) run interleaved, alone, half right before the records are written and half after they are removed (and out of tabby-node's sets again), and with them in between (A B B A), so the two compare like for like. The rows without them merge both halves (CPU p50: the mean of the halves' p50s).",
		manyLabel, nodeProfile, manyPool)
	return append(append([]Row{prog}, few...), rows...), note, nil
}

// modeFew and modeMany are the mode keys of the rows measured before and
// with manyEndpoints on host2.
const (
	modeFew  = "seq2"
	modeMany = "seq1000"
)

// setEntries sums the "Number of entries" lines of `ipset list -t`.
func setEntries(out string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Number of entries: "); ok {
			k, _ := strconv.Atoi(strings.TrimSpace(v))
			n += k
		}
	}
	return n
}

// mergeRows is one row of two phases of the same case, mode and op: their
// samples together; the CPU figures are the halves' weighted means.
func mergeRows(a, b Row) Row {
	out := a
	wa, wb := float64(a.N), float64(b.N)
	if wa+wb == 0 {
		return out
	}
	mean := func(x, y float64) float64 { return round2((x*wa + y*wb) / (wa + wb)) }
	out.CPUP50, out.EtcdCPU, out.NodeCPU = mean(a.CPUP50, b.CPUP50), mean(a.EtcdCPU, b.EtcdCPU), mean(a.NodeCPU, b.NodeCPU)
	out.setStats(append(slices.Clone(a.Samples), b.Samples...))
	return out
}
