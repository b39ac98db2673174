package main

// The deployed case against the size of etcd (issue 12): the lab's etcd is
// filled with endpoint records of other hosts, each with its tag index
// entry, written as the CNI plugin writes them (pkg/workload.Ops), and the
// deployed ADD on host2 is measured again right after the same cases ran on
// the etcd without them. It runs last in the main lab, and the records are
// removed afterwards.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/workload"
)

const (
	foreignGoal     = 200000         // the count
	foreignPerTxn   = 64             // endpoints per transaction: 2 ops each, etcd's default limit is 128
	foreignWriters  = 4              // transactions in flight
	foreignPerHost  = 100            // endpoints per foreign host
	foreignProfiles = 100            // profiles the foreign endpoints are spread over
	foreignPool     = "10.64.0.0/14" // their addresses: a disabled pool, never handed out
	foreignHost     = "foreign-"     // foreign host names: foreign-00000, ...
	foreignNS       = "fgn-"         // their namespaces' profiles: k8s_ns.fgn-00, ...

	// modeEtcdBase and modeEtcdForeign are the mode keys of the rows
	// measured before and with the foreign records.
	modeEtcdBase    = "seq-etcd-base"
	modeEtcdForeign = "seq-etcd-foreign"
)

// foreignEndpoint is endpoint i of the fill: a Kubernetes pod on host
// foreign-<i/100>, shaped like the records the CNI plugin writes.
func foreignEndpoint(i int) *model.Endpoint {
	host := fmt.Sprintf("%s%05d", foreignHost, i/foreignPerHost)
	ns := fmt.Sprintf("%s%02d", foreignNS, i%foreignProfiles)
	pod := fmt.Sprintf("pod-%06d", i)
	sum := sha256.Sum256(fmt.Appendf(nil, "foreign %d", i))
	cid := hex.EncodeToString(sum[:])
	ip := 10<<24 | 64<<16 | i + 1 // 10.64.0.1 onwards (a /14 holds 262,142)
	return &model.Endpoint{Host: host, Orchestrator: model.OrchestratorK8s, Workload: ns + "." + pod, Name: "eth0",
		ContainerID: cid, Network: "tabby-k8s", Netns: fmt.Sprintf("/var/run/netns/cni-%08x-%04x", i, i%0xffff), IfName: "eth0",
		HostInterface: "tby" + cid[:11], MAC: fmt.Sprintf("ee:ee:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i)),
		IPv4Nets: []string{fmt.Sprintf("%d.%d.%d.%d/32", byte(ip>>24), byte(ip>>16), byte(ip>>8), byte(ip))},
		Profiles: []string{"k8s_ns." + ns}, Handle: model.HandleID("tabby-k8s", cid)}
}

// foreignRows runs cases (ptp + host-local and the deployed case) n times,
// fills etcd with count foreign endpoint records (stopping at
// budget), runs the cases n times again and removes the records.
func (b *bench) foreignRows(cases []*cniCase, n, count int, budget time.Duration) ([]Row, string, error) {
	ctx := context.Background()
	progress("deployed case and ptp + host-local on the etcd without foreign records: %d iterations of ADD+DEL", n)
	base, err := b.sequential(cases, n, modeEtcdBase)
	if err != nil {
		return nil, "", err
	}
	for i := range base {
		base[i].Mode = "sequential, right before the foreign records were written"
	}
	cli := b.l.EtcdClient()
	sizeBefore := etcdDBSize(cli, b.l.EtcdURL)

	if _, err := b.kv.Txn(ctx, nil, []store.Op{store.Put(model.PoolKey(foreignPool), store.MustJSON(model.Pool{
		CIDR: foreignPool, BlockSize: 26, IPIPMode: "never", VXLANMode: "never", Disabled: true}))}); err != nil {
		return nil, "", err
	}
	// Removed whatever happens next: later rows must not see them.
	removed := false
	remove := func() (time.Duration, error) {
		if removed {
			return 0, nil
		}
		removed = true
		t0 := time.Now()
		var ops []store.Op
		for h := range (count + foreignPerHost - 1) / foreignPerHost {
			ops = append(ops, store.Op{Kind: store.OpDelete, Key: model.HostSubtree(fmt.Sprintf("%s%05d", foreignHost, h)), Prefix: true})
		}
		for p := range foreignProfiles {
			ops = append(ops, store.Op{Kind: store.OpDelete, Key: model.TagMembersPrefix(fmt.Sprintf("k8s_ns.%s%02d", foreignNS, p)), Prefix: true})
		}
		ops = append(ops, store.Delete(model.PoolKey(foreignPool)))
		// 16 prefixes (1,600 endpoints or 16 tags of up to 2,000 members)
		// per transaction keeps each one well inside the client's timeout.
		for i := 0; i < len(ops); i += 16 {
			if _, err := b.kv.Txn(ctx, nil, ops[i:min(i+16, len(ops))]); err != nil {
				return 0, fmt.Errorf("remove the foreign records: %w", err)
			}
		}
		return time.Since(t0), nil
	}
	rows, note, err := b.foreignMeasure(ctx, cli, cases, n, count, budget, sizeBefore)
	took, rerr := remove()
	if err != nil || rerr != nil {
		return nil, "", errors.Join(err, rerr)
	}
	note += fmt.Sprintf(" Removed afterwards (range deletes by host and by tag) in %.1f s.", took.Seconds())
	return append(base, rows...), note, nil
}

// foreignMeasure fills etcd and measures the cases with the records there.
func (b *bench) foreignMeasure(ctx context.Context, cli *clientv3.Client, cases []*cniCase, n, count int, budget time.Duration, sizeBefore int64) ([]Row, string, error) {
	txns := (count + foreignPerTxn - 1) / foreignPerTxn
	progress("filling etcd with %d foreign endpoint records (%d transactions of up to %d endpoints, %d in flight; stops after %v)",
		count, txns, foreignPerTxn, foreignWriters, budget)
	var written atomic.Int64
	t0 := time.Now()
	deadline := t0.Add(budget)
	e0 := b.etcd.read()
	err := parallel(foreignWriters, txns, func(t int) error {
		if time.Now().After(deadline) {
			return nil // over budget: the rest is not written
		}
		lo, hi := t*foreignPerTxn, min((t+1)*foreignPerTxn, count)
		ops := make([]store.Op, 0, 2*(hi-lo))
		for i := lo; i < hi; i++ {
			ops = append(ops, workload.Ops(nil, foreignEndpoint(i))...)
		}
		if _, err := b.kv.Txn(ctx, nil, ops); err != nil {
			return fmt.Errorf("foreign records %d-%d: %w", lo, hi-1, err)
		}
		if n := written.Add(int64(hi - lo)); n%20000 < foreignPerTxn {
			progress("  %d written", n)
		}
		return nil
	})
	fill, fillCPU := time.Since(t0), b.etcd.read()-e0
	if err != nil {
		return nil, "", err
	}
	got := int(written.Load())
	// What etcd holds, counted by etcd.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	eps, err1 := cli.Get(cctx, model.HostPrefix+foreignHost, clientv3.WithPrefix(), clientv3.WithCountOnly())
	tags, err2 := cli.Get(cctx, model.TagPrefix+"k8s_ns."+foreignNS, clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err := errors.Join(err1, err2); err != nil {
		return nil, "", fmt.Errorf("count the foreign records: %w", err)
	}
	if eps.Count != int64(got) || tags.Count != int64(got) {
		return nil, "", fmt.Errorf("etcd holds %d foreign endpoints and %d tag entries, %d were written", eps.Count, tags.Count, got)
	}
	sizeAfter := etcdDBSize(cli, b.l.EtcdURL)
	progress("%d foreign endpoint records and their tag entries in %.1f s (%.0f endpoints/s); etcd db %s -> %s",
		got, fill.Seconds(), float64(got)/fill.Seconds(), mb(sizeBefore), mb(sizeAfter))
	quiet := b.waitEtcdQuiet(10 * time.Second)
	if err := waitNodeReady(b.node.stateDir(b.hn), 30*time.Second); err != nil {
		return nil, "", err
	}

	label := commas(got)
	progress("deployed case and ptp + host-local with %s foreign records in etcd: %d iterations of ADD+DEL", label, n)
	rows, err := b.sequential(cases, n, modeEtcdForeign)
	if err != nil {
		return nil, "", err
	}
	for i := range rows {
		rows[i].Mode = fmt.Sprintf("sequential, %s foreign endpoint records in etcd", label)
		rows[i].Records = got
	}
	short := ""
	if got < count {
		short = fmt.Sprintf(" Only %s of the %s asked for fit in the %v fill budget on this machine: the row is for %s.", label, commas(count), budget, label)
	}
	note := fmt.Sprintf("Foreign records: %s endpoint records of %d other hosts (%d each; no node record, so no BGP peer), each with its tag index entry, written by pkg/workload.Ops as the CNI plugin writes them, in transactions of %d endpoints (%d ops), %d in flight, in %.1f s (%.0f endpoints/s, etcd CPU %.1f s); etcd's db %s before, %s after; %s. Their profiles (k8s_ns.%s00-%02d) are none of host2's, so tabby-node follows none of their tags: the row measures what etcd's size costs the ADD, not a larger policy. The deployed case and ptp + host-local (host1) ran interleaved right before the fill and again with the records in etcd (the 'etcd without them' rows also carry everything earlier rows wrote and deleted).%s",
		label, (got+foreignPerHost-1)/foreignPerHost, foreignPerHost, foreignPerTxn, 2*foreignPerTxn, foreignWriters, fill.Seconds(), float64(got)/fill.Seconds(),
		fillCPU.Seconds(), mb(sizeBefore), mb(sizeAfter), quiet, foreignNS, foreignProfiles-1, short)
	return rows, note, nil
}

// waitEtcdQuiet waits until the etcd server uses under 5% of a CPU over
// 250 ms, at most d, and says how long that took.
func (b *bench) waitEtcdQuiet(d time.Duration) string {
	t0 := time.Now()
	for time.Since(t0) < d {
		c0 := b.etcd.read()
		time.Sleep(250 * time.Millisecond)
		if b.etcd.read()-c0 < 12500*time.Microsecond {
			return fmt.Sprintf("etcd idle %.1f s after the last write", time.Since(t0).Seconds())
		}
	}
	return fmt.Sprintf("etcd still busy %v after the last write (measured anyway)", d)
}

func etcdDBSize(cli *clientv3.Client, ep string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, ep)
	if err != nil {
		return -1
	}
	return st.DbSize
}

func mb(n int64) string {
	if n < 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f MB", float64(n)/1e6)
}

// commas writes n with thousands separators: 200000 -> "200,000".
func commas(n int) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
