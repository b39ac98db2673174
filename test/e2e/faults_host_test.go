package e2e

// Host-level faults (project issue 16): a reboot (every container netns
// gone, the host's kernel state gone, its state dir kept), the state dir
// full, and etcd over its space quota.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// setConf returns conf with its top-level keys set to the values given.
func setConf(t *testing.T, conf []byte, kv map[string]any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return b
}

// ipamClean is nil when tabbyctl ipam check finds no problem.
func (e *env) ipamClean(h *lab.Host) error {
	out, err := e.ctlErr(h, "ipam", "check")
	if err != nil {
		return fmt.Errorf("tabbyctl ipam check: %v\n%s", err, out)
	}
	return nil
}

// TestHostReboot: host1 with six containers reboots: its containers'
// namespaces and its whole kernel state (interfaces, routes, iptables,
// ipsets) are gone, its state dir is kept. tabby-node starts again and
// the runtime runs CNI GC with no valid attachment (it knows no sandbox
// any more): no record, address, handle or block of host1 is left, host1
// has no workload route or blackhole and host2 no route to host1's old
// block; host2's container never noticed, and a new container on host1
// reaches it.
func TestHostReboot(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 2})
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	e.pool("10.0.0.0/16")
	e.ctl(h1, "profile", "add", "P")
	e.netExtra = `,"profiles":["P"]`
	procs := e.StartNodes()
	_ = procs
	ns2, ip2 := e.container(h2, "stay", "")
	var gone []string
	for i := range 6 {
		ns, ip := e.container(h1, fmt.Sprintf("r%d", i), "")
		gone = append(gone, ns)
		if i == 0 {
			e.pingEventually(ns2, ip, 10*time.Second)
		}
	}
	oldBlocks := e.nmBlocks(h1.Name)
	if len(oldBlocks) == 0 {
		t.Fatal("host1 has no block")
	}
	stateFiles := func() []string {
		var fs []string
		_ = filepath.Walk(e.stateDir(h1), func(p string, _ os.FileInfo, _ error) error { fs = append(fs, p); return nil })
		return fs
	}
	before := len(stateFiles())

	// The reboot (it kills tabby-node with everything else on host1).
	_ = procs
	for _, ns := range gone {
		if err := e.l.RemoveContainer(ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.l.RebootHost(h1); err != nil {
		t.Fatal(err)
	}
	if out := e.l.MustExec(h1.NS, "ip", "-o", "link"); strings.Contains(out, "tby") {
		t.Fatalf("after the reboot host1 still has veths:\n%s", out)
	}
	t.Logf("host1 rebooted: %d files kept in its state dir, %d container namespaces gone", before, len(gone))
	node := e.startNode(h1)
	e.WaitPeers(h1, 1, 60*time.Second, node)
	e.waitReady(h1)

	// The runtime's GC: it knows no sandbox on host1 any more.
	gc := setConf(t, e.conf(h1, "", e.netExtra, ""), map[string]any{"cni.dev/valid-attachments": []any{}})
	if o := e.plugin(h1, "GC", "", "", "", "", gc); o.ExitCode != 0 {
		t.Fatalf("GC after the reboot: %d %s %s", o.ExitCode, o.Stdout, o.Stderr)
	}
	e.Eventually(15*time.Second, func() error {
		if k := e.keys(model.HostWorkloadPrefix(h1.Name)); len(k) != 0 {
			return fmt.Errorf("endpoints of host1 left: %v", k)
		}
		if hs := e.keys(model.HandlePrefix); len(hs) != 1 || !strings.HasSuffix(hs[0], "/stay") {
			return fmt.Errorf("handles left: %v (want only host2's)", hs)
		}
		if b := e.nmBlocks(h1.Name); len(b) != 0 {
			return fmt.Errorf("host1 still owns blocks %v", b)
		}
		if err := e.ipamClean(h1); err != nil {
			return err
		}
		r1, err := e.l.Exec(h1.NS, "ip", "-4", "route", "show", "proto", "80")
		if err != nil {
			return err
		}
		for _, b := range oldBlocks {
			if strings.Contains(r1, b) {
				return fmt.Errorf("host1 keeps a route to its old block %s:\n%s", b, r1)
			}
		}
		if strings.Contains(r1, "scope link") {
			return fmt.Errorf("host1 keeps a workload route:\n%s", r1)
		}
		r2, err := e.l.Exec(h2.NS, "ip", "-4", "route", "show", "proto", "80")
		if err != nil {
			return err
		}
		for _, b := range oldBlocks {
			if strings.Contains(r2, b) {
				return fmt.Errorf("host2 keeps a route to host1's old block %s:\n%s", b, r2)
			}
		}
		sets, err := e.l.Exec(h1.NS, "ipset", "list")
		if err != nil {
			return err
		}
		if strings.Contains(sets, ",tby") {
			return fmt.Errorf("host1 keeps policy set members:\n%s", sets)
		}
		return nil
	})
	// Life goes on: a new container on host1 and host2's old one reach
	// each other.
	ns1, ip1 := e.container(h1, "after", "")
	e.pingEventually(ns1, ip2, 10*time.Second)
	e.pingEventually(ns2, ip1, 10*time.Second)
}

// fullDir is a state dir on a tmpfs of its own in a private mount
// namespace (a slave of the root one, so container netns made later show
// in it too; held by a sleeping process that the lab's cleanup kills, which
// also unmounts it): only the plugins run through wrap see it.
type fullDir struct {
	e    *env
	dir  string
	wrap []string // nsenter into the mount namespace, then ip netns exec
	pid  string
}

func (e *env) newFullDir(h *lab.Host, size string) *fullDir {
	e.t.Helper()
	dir := filepath.Join(e.Dir, "full-"+h.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	p := e.l.Start(h.NS, "", "unshare", "--mount", "--propagation", "slave", "sh", "-c",
		"mount -t tmpfs -o size="+size+",nr_inodes=64 tabby-full "+dir+" && exec sleep 3600")
	f := &fullDir{e: e, dir: dir, pid: strconv.Itoa(p.PID)}
	f.wrap = []string{"nsenter", "-t", f.pid, "-m", "ip", "netns", "exec", h.NS}
	e.Eventually(10*time.Second, func() error {
		out, err := f.sh("grep tabby-full /proc/self/mounts")
		if err != nil || !strings.Contains(out, dir) {
			return fmt.Errorf("tmpfs on %s not mounted yet: %v", dir, err)
		}
		return nil
	})
	return f
}

// sh runs a shell command in the state dir's mount namespace.
func (f *fullDir) sh(cmd string) (string, error) {
	out, err := f.e.l.Exec(f.e.l.Hosts[0].NS, "nsenter", "-t", f.pid, "-m", "sh", "-c", cmd)
	return out, err
}

// fill takes every block of the tmpfs, and with inodes every inode too.
func (f *fullDir) fill(inodes bool) {
	f.e.t.Helper()
	cmd := "dd if=/dev/zero of=" + f.dir + "/fill bs=4k 2>/dev/null"
	if inodes {
		cmd += "; i=0; while touch " + f.dir + "/fill$i 2>/dev/null; do i=$((i+1)); done"
	}
	f.sh(cmd)
	col := "avail"
	if inodes {
		col = "iavail"
	}
	if out, _ := f.sh("df -k --output=" + col + " " + f.dir + " | tail -1"); strings.TrimSpace(out) != "0" {
		f.e.t.Fatalf("tmpfs not full: %s %s", col, out)
	}
}

func (f *fullDir) free() {
	f.e.t.Helper()
	if out, err := f.sh("rm -f " + f.dir + "/fill*"); err != nil {
		f.e.t.Fatalf("free the tmpfs: %v %s", err, out)
	}
}

// leftovers lists files a plugin left half-written in the state dir.
func (f *fullDir) leftovers() string {
	out, _ := f.sh("cd " + f.dir + " && find . -name '.*.*' -type f")
	return strings.TrimSpace(out)
}

// TestStateDirFull: the state dir (a 256 KiB tmpfs with 64 inodes) fills
// up. Everything in it is a cache that etcd's revisions verify (the host
// lock aside), so a host whose lock file exists keeps working: ADD and DEL
// succeed and nothing torn is left. A state dir where the lock cannot be
// made (a fresh one on the full disk) makes ADD fail with a message naming
// it and leave nothing; once space returns ADD works.
func TestStateDirFull(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	f := e.newFullDir(h, "256k")
	conf := setConf(t, e.conf(h, "", "", ""), map[string]any{"state_dir": f.dir})
	run := func(cmd, cid, ns string, c []byte) testutil.Outcome {
		return testutil.Run(filepath.Join(e.bin, "tabby"), testutil.Call{Command: cmd, ContainerID: cid, Netns: ns,
			Path: e.cniPath(), Conf: c, Wrap: f.wrap})
	}
	_, ns0 := e.l.AddContainer(h, "f0")
	_, ns1 := e.l.AddContainer(h, "f1")
	_, ns2 := e.l.AddContainer(h, "f2")
	addrOf(t, run("ADD", "f0", ns0, conf)) // the lock and caches exist

	f.fill(false)
	o := run("ADD", "f1", ns1, conf)
	if o.ExitCode != 0 {
		t.Fatalf("ADD with the state dir full (its lock there): %d %s", o.ErrCode, o.ErrMsg)
	}
	for _, c := range []string{"f0", "f1"} {
		ns := map[string]string{"f0": ns0, "f1": ns1}[c]
		if o := run("DEL", c, ns, conf); o.ExitCode != 0 {
			t.Fatalf("DEL %s with the state dir full: %d %s", c, o.ErrCode, o.ErrMsg)
		}
	}
	if l := f.leftovers(); l != "" {
		t.Errorf("half-written files left in the full state dir:\n%s", l)
	}
	// A state dir that cannot even hold the lock.
	f.fill(true)
	fresh := setConf(t, conf, map[string]any{"state_dir": filepath.Join(f.dir, "fresh")})
	o = run("ADD", "f2", ns2, fresh)
	if o.ExitCode == 0 || !strings.Contains(o.ErrMsg, filepath.Join(f.dir, "fresh")) {
		t.Fatalf("ADD with no room for the state dir: exit %d code %d %q, want an error naming the state dir", o.ExitCode, o.ErrCode, o.ErrMsg)
	}
	t.Logf("ADD with no room for its state dir: code %d: %s", o.ErrCode, o.ErrMsg)
	if err := e.Leftovers(h); err != nil {
		t.Fatalf("after the failed ADD: %v", err)
	}
	f.free()
	addrOf(t, run("ADD", "f2", ns2, fresh))
	if o := run("DEL", "f2", ns2, fresh); o.ExitCode != 0 {
		t.Fatalf("DEL: %s", o.ErrMsg)
	}
	if l := f.leftovers(); l != "" {
		t.Errorf("half-written files left in the state dir:\n%s", l)
	}
	e.assertClean(h)
	if err := e.ipamClean(h); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdQuotaFull: etcd with a 16 MiB backend quota is filled until it
// raises its NOSPACE alarm. ADD fails with code 11 (try again later: the
// runtime retries, and it succeeds once the operator has made room) and a
// message that says etcd is out of space, leaving nothing; DEL of a running
// container fails the same way and is retried. After compaction, defrag and
// disarming the alarm, both work.
func TestEtcdQuotaFull(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	// The lab's etcd again, on a fresh data dir with a small quota.
	if err := e.Etcd.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	bin, err := lab.EtcdLabBinary()
	if err != nil {
		t.Fatal(err)
	}
	e.l.Start(e.l.Underlay, "", bin, "--listen-client", e.l.EtcdURL, "--data-dir", filepath.Join(e.l.Dir, "etcd-quota"),
		"--name", "lab", "--quota-backend-bytes", strconv.Itoa(16<<20))
	cli := e.l.EtcdClient()
	e.Eventually(30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "/ready")
		return err
	})
	e.pool("10.0.0.0/16")
	conf := e.conf(h, "", "", "")
	_, ns0 := e.l.AddContainer(h, "q0")
	_, ns1 := e.l.AddContainer(h, "q1")
	addrOf(t, e.plugin(h, "ADD", "q0", ns0, "eth0", "", conf))

	// Fill until NOSPACE.
	ctx := context.Background()
	val := strings.Repeat("x", 512<<10)
	var fillErr error
	for i := 0; i < 200 && fillErr == nil; i++ {
		_, fillErr = cli.Put(ctx, fmt.Sprintf("/fill/%d", i), val)
	}
	if fillErr == nil || !strings.Contains(fillErr.Error(), "space") {
		t.Fatalf("etcd never ran out of space: %v", fillErr)
	}
	alarms, err := cli.AlarmList(ctx)
	if err != nil || len(alarms.Alarms) == 0 {
		t.Fatalf("no alarm raised: %v %v", alarms, err)
	}
	t.Logf("etcd full: %v", fillErr)

	o := e.plugin(h, "ADD", "q1", ns1, "eth0", "", conf)
	if cnierr.Code(o.ErrCode) != cnierr.TryAgain || !strings.Contains(o.ErrMsg, "space") {
		t.Fatalf("ADD with etcd full: exit %d code %d %q, want 11 saying etcd is out of space", o.ExitCode, o.ErrCode, o.ErrMsg)
	}
	t.Logf("ADD with etcd full: code %d: %s", o.ErrCode, o.ErrMsg)
	if k := e.keys(model.HostWorkloadPrefix(h.Name) + "cni/q1/"); len(k) != 0 {
		t.Fatalf("the failed ADD left its endpoint: %v", k)
	}
	if out, _ := e.l.Exec(filepath.Base(ns1), "ip", "-o", "link", "show", "eth0"); strings.Contains(out, "eth0") {
		t.Fatal("the failed ADD left its interface")
	}
	if hs := e.keys(model.HandlePrefix); len(hs) != 1 {
		t.Fatalf("handles after the failed ADD: %v", hs)
	}
	o = e.plugin(h, "DEL", "q0", ns0, "eth0", "", conf)
	if o.ExitCode != 0 {
		if cnierr.Code(o.ErrCode) != cnierr.TryAgain || !strings.Contains(o.ErrMsg, "space") {
			t.Fatalf("DEL with etcd full: exit %d code %d %q, want success or 11 saying etcd is out of space", o.ExitCode, o.ErrCode, o.ErrMsg)
		}
		t.Logf("DEL with etcd full: code %d: %s", o.ErrCode, o.ErrMsg)
	}

	// The operator makes room: delete, compact, defragment, disarm.
	if _, err := cli.Delete(ctx, "/fill/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	st, err := cli.Status(ctx, e.l.EtcdURL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, st.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Defragment(ctx, e.l.EtcdURL); err != nil {
		t.Fatal(err)
	}
	for _, a := range alarms.Alarms {
		if _, err := cli.AlarmDisarm(ctx, (*clientv3.AlarmMember)(a)); err != nil {
			t.Fatal(err)
		}
	}
	// The runtime's retries now succeed.
	if o := e.plugin(h, "DEL", "q0", ns0, "eth0", "", conf); o.ExitCode != 0 {
		t.Fatalf("DEL after recovery: %s", o.ErrMsg)
	}
	addrOf(t, e.plugin(h, "ADD", "q1", ns1, "eth0", "", conf))
	if err := e.ipamClean(h); err != nil {
		t.Fatal(err)
	}
	if o := e.plugin(h, "DEL", "q1", ns1, "eth0", "", conf); o.ExitCode != 0 {
		t.Fatalf("DEL: %s", o.ErrMsg)
	}
	e.assertClean(h)
}
