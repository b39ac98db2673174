package main

// Pods per second through containerd's CRI (issue 12): Debian's containerd
// 1.6 runs on host2 (tabby-node's host) twice, each with one CNI conflist
// in its conf dir, tabby + tabby-ipam and ptp + host-local, and crictl
// drives a runp, stopp, rmp loop of pod sandboxes on each, in ABBA rounds.
// As in test/runtime, each containerd runs in host2's network namespace and
// a private mount namespace of its own, where /run/containerd and
// /run/netns are directories of the lab: its shims' sockets and its pods'
// network namespaces are its own, and nothing lands in the root namespace.
// The pause image is built here (no registry).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tabby-net/tabby/test/ociimage"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/test/lab"
)

const (
	criPauseImage = ociimage.PauseName
	criNamespace  = "bench-cri"     // the pods' Kubernetes namespace: tabby gives them profile k8s_ns.bench-cri
	criSubnet     = "10.201.0.0/16" // host-local's range for the CRI pods
)

func keyCRI(c, what string) string { return "cri/" + c + "/" + what }

// criTools are the programs the CRI rows need.
type criTools struct{ containerd, runc, ctr, crictl, nsenter, unshare string }

// findCRITools finds them, or says what is missing.
func (b *bench) findCRITools() (criTools, string) {
	var t criTools
	var missing []string
	look := func(dst *string, name, hint string, cands ...string) {
		for _, c := range cands {
			if filepath.IsAbs(c) && isExec(c) {
				*dst = c
				return
			}
		}
		if p, err := exec.LookPath(name); err == nil {
			*dst = p
			return
		}
		missing = append(missing, name+" ("+hint+")")
	}
	look(&t.containerd, "containerd", "make deps installs it")
	look(&t.runc, "runc", "make deps installs it", "/usr/sbin/runc", "/usr/bin/runc")
	look(&t.ctr, "ctr", "make deps installs containerd")
	look(&t.crictl, "crictl", "make tools builds it", filepath.Join(b.p.bin, "tools", "crictl"), filepath.Join(b.p.root, "bin", "tools", "crictl"))
	look(&t.nsenter, "nsenter", "util-linux") // lab.StartEntering runs it from $PATH
	look(&t.unshare, "unshare", "util-linux") // lab.InMounts runs it from $PATH
	if !isExec(filepath.Join(b.p.cniDir, "loopback")) {
		missing = append(missing, "loopback in "+b.p.cniDir+" (containernetworking-plugins; containerd's CRI runs it for every pod)")
	}
	if len(missing) > 0 {
		return t, strings.Join(missing, ", ") + " not found"
	}
	return t, ""
}

// criRuntime is one containerd on host2 with one conflist.
type criRuntime struct {
	key, name string
	dir, sock string
	crictlCfg string
	proc      *lab.Proc
	runp      []float64 // ms per crictl runp (CNI ADD included)
	stopRm    []float64 // ms per crictl stopp + rmp (CNI DEL included)
	pod       []float64 // ms per pod: the three together
	wall      time.Duration
}

// criBench is the CRI rows' state, for their cleanup.
type criBench struct {
	b           *bench
	tools       criTools
	dir         string
	rts         []*criRuntime
	madeRunDir  bool // /run/containerd was created here (as a mount point)
	cleanupOnce sync.Once
	cleanupErr  error
}

// criRows measures pods per second through CRI with tabby and with ptp +
// host-local. skip is non-empty (and nothing was run) when a tool is
// missing.
func (b *bench) criRows(pods int) (rows []Row, note, skip string, err error) {
	tools, skip := b.findCRITools()
	if skip != "" {
		progress("CRI rows not measured: %s", skip)
		return nil, "", skip, nil
	}
	cb := &criBench{b: b, tools: tools, dir: filepath.Join(b.l.Dir, "cri")}
	b.s.Cleanup(func() { _ = cb.cleanup() }) // also when the run dies on the way
	defer func() {
		if cerr := cb.cleanup(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	return cb.run(pods)
}

func (cb *criBench) run(pods int) ([]Row, string, string, error) {
	b, h := cb.b, cb.b.hn
	progress("CRI: building the pause image, starting two containerds on %s", h.Name)
	t0 := time.Now()
	image, err := cb.pauseImage()
	if err != nil {
		return nil, "", "", err
	}
	binDir := filepath.Join(cb.dir, "cni-bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, "", "", err
	}
	for name, src := range map[string]string{
		"tabby": filepath.Join(b.p.bin, "tabby"), "tabby-ipam": filepath.Join(b.p.bin, "tabby-ipam"),
		"ptp": filepath.Join(b.p.cniDir, "ptp"), "host-local": filepath.Join(b.p.cniDir, "host-local"),
		"loopback": filepath.Join(b.p.cniDir, "loopback"),
	} {
		if err := os.Symlink(src, filepath.Join(binDir, name)); err != nil {
			return nil, "", "", err
		}
	}
	if err := b.node.ctl("profile", "add", "k8s_ns."+criNamespace); err != nil {
		return nil, "", "", err
	}
	hostLocalData := filepath.Join(cb.dir, "host-local")
	confs := []struct {
		key, name string
		plugin    map[string]any
	}{
		{"tabby-node", "tabby + tabby-ipam, tabby-node enforcing policy (deployed)", map[string]any{
			"type": "tabby", "etcd_endpoints": b.l.EtcdURL, "nodename": h.Name, "state_dir": b.node.stateDir(h),
			"log_file": filepath.Join(b.work, "tabby-cri-"+h.Name+".log"), "log_level": "info", "ipam": map[string]any{"type": "tabby-ipam"}}},
		{"ptp-host-local", "ptp + host-local", map[string]any{"type": "ptp", "ipMasq": false, "ipam": map[string]any{
			"type": "host-local", "ranges": [][]map[string]string{{{"subnet": criSubnet}}},
			"routes": []map[string]string{{"dst": "0.0.0.0/0"}}, "dataDir": hostLocalData}}},
	}
	if _, err := os.Stat("/run/containerd"); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir("/run/containerd", 0o755); err != nil {
			return nil, "", "", err
		}
		cb.madeRunDir = true
	}
	for i, c := range confs {
		rt, err := cb.start(c.key, c.name, strconv.Itoa(i), binDir, c.plugin)
		if err != nil {
			return nil, "", "", err
		}
		cb.rts = append(cb.rts, rt)
	}
	for _, rt := range cb.rts {
		if err := cb.ready(rt); err != nil {
			return nil, "", "", err
		}
		if _, err := cb.ctl(rt, cb.tools.ctr, "--address", rt.sock, "-n", "k8s.io", "images", "import", image); err != nil {
			return nil, "", "", fmt.Errorf("import the pause image: %w", err)
		}
	}
	setup := time.Since(t0)

	// One untimed pod on each, which also checks that its conflist is the
	// one in use.
	for _, rt := range cb.rts {
		want := "10.0."
		if rt.key == "ptp-host-local" {
			want = "10.201."
		}
		if err := cb.warmUp(rt, want); err != nil {
			return nil, "", "", err
		}
	}
	// ABBA: four rounds, the middle two in reverse order.
	per := []int{(pods + 3) / 4, (pods + 2) / 4, (pods + 1) / 4, pods / 4}
	n := 0
	for round, k := range per {
		order := slices.Clone(cb.rts)
		if round == 1 || round == 2 {
			slices.Reverse(order)
		}
		for _, rt := range order {
			if k == 0 {
				continue
			}
			progress("CRI round %d: %d pods (runp, stopp, rmp) with %s", round+1, k, rt.name)
			if err := cb.loop(rt, n, k); err != nil {
				return nil, "", "", err
			}
		}
		n += k
	}
	if err := cb.leftovers(hostLocalData); err != nil {
		return nil, "", "", err
	}

	var rows []Row
	for _, rt := range cb.rts {
		name := rt.name + ", containerd CRI"
		rate := float64(len(rt.pod)) / rt.wall.Seconds()
		r := Row{Key: keyCRI(rt.key, "pods"), Name: name, Section: "cri", Mode: "sequential", Op: "pods/s", Unit: "pods/s", N: len(rt.pod),
			P50: round2(rate), P99: round2(rate), Mean: round2(rate), Max: round2(rate),
			Note: fmt.Sprintf("%d pods (runp, stopp, rmp each) in %.2f s", len(rt.pod), rt.wall.Seconds())}
		rows = append(rows, r)
		for _, s := range []struct {
			what, op string
			v        []float64
		}{{"pod", "runp+stopp+rmp", rt.pod}, {"runp", "runp", rt.runp}, {"stop-rm", "stopp+rmp", rt.stopRm}} {
			r := Row{Key: keyCRI(rt.key, s.what), Name: name, Section: "cri", Mode: "sequential", Op: s.op, Unit: "ms"}
			r.setStats(s.v)
			rows = append(rows, r)
		}
	}
	// tabby against ptp + host-local; for pods/s higher is better.
	for i := range rows {
		if f := strings.Split(rows[i].Key, "/"); f[1] == "tabby-node" {
			base := &Row{}
			for j := range rows {
				if rows[j].Key == keyCRI("ptp-host-local", f[2]) {
					base = &rows[j]
				}
			}
			rows[i].ratio(base)
		}
	}
	note := fmt.Sprintf("CRI rows: Debian's containerd (%s) run twice on host2 (tabby-node's host), each in host2's network namespace and a private mount namespace of its own, with one conflist in its CNI conf dir: tabby + tabby-ipam (the pods' namespace %s gives them profile k8s_ns.%s, so every runp returns once tabby-node has the pod's rules in force) or ptp + host-local (%s, ipMasq false). crictl (%s) runs a pod sandbox from a pod config (the pause image built here), then stopp and rmp, one pod at a time; %d pods per runtime in four ABBA rounds; pods/s is pods over the loop's wall time, crictl's own process starts included (the same for both). One untimed pod per runtime ran first. Setup (image, two containerds, import) took %.1f s.",
		containerdVersion(cb.tools.containerd), criNamespace, criNamespace, criSubnet, cb.tools.crictl, pods, setup.Seconds())
	return rows, note, "", nil
}

// start writes runtime key's conflist and config and starts its containerd.
func (cb *criBench) start(key, name, short, binDir string, plugin map[string]any) (*criRuntime, error) {
	b, h := cb.b, cb.b.hn
	rt := &criRuntime{key: key, name: name, dir: filepath.Join(cb.dir, short)}
	rt.sock = filepath.Join(rt.dir, "containerd.sock")
	for _, d := range []string{"run", "netns", "root", "state", "runc", "logs", "conf", "opt"} {
		if err := os.MkdirAll(filepath.Join(rt.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	list, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "bench-cri-" + key, "plugins": []any{plugin}})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(rt.dir, "conf", "10-"+key+".conflist"), list, 0o644); err != nil {
		return nil, err
	}
	cc := lab.ContainerdIn(rt.dir)
	cc.DebugLevel = "warn"
	cc.SandboxImage, cc.RuncBinary = criPauseImage, cb.tools.runc
	cc.CNIBinDir, cc.CNIConfDir = binDir, filepath.Join(rt.dir, "conf")
	cfgPath := filepath.Join(rt.dir, "containerd.toml")
	if err := cc.Write(cfgPath); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(rt.dir, "crictl.yaml"), fmt.Appendf(nil,
		"runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\ndebug: false\n", rt.sock, rt.sock), 0o644); err != nil {
		return nil, err
	}
	rt.crictlCfg = filepath.Join(rt.dir, "crictl.yaml")
	// host2's network namespace and a private mount namespace with the
	// runtime's own /run/containerd and /run/netns.
	rt.proc = b.l.StartEntering(filepath.Join(rt.dir, "logs", "containerd.log"), lab.InMounts(h,
		[][2]string{{filepath.Join(rt.dir, "run"), "/run/containerd"}, {filepath.Join(rt.dir, "netns"), "/run/netns"}},
		cb.tools.containerd, "--config", cfgPath)...)
	return rt, nil
}

// ready waits until rt's containerd serves CRI with its network ready (its
// conflist loaded).
func (cb *criBench) ready(rt *criRuntime) error {
	var last error
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if rt.proc.Exited() {
			return fmt.Errorf("containerd for %s exited: %v\n%s", rt.name, rt.proc.Wait(), lab.Tail(rt.proc.Log, 30))
		}
		out, err := cb.crictl(rt, "info", "-o", "json")
		if err != nil {
			last = err
			continue
		}
		var info struct {
			Status struct {
				Conditions []struct {
					Type   string `json:"type"`
					Status bool   `json:"status"`
				} `json:"conditions"`
			} `json:"status"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			last = fmt.Errorf("crictl info: %w", err)
			continue
		}
		last = fmt.Errorf("CRI network not ready: %s", bytes.TrimSpace(out))
		for _, c := range info.Status.Conditions {
			if c.Type == "NetworkReady" && c.Status {
				return nil
			}
		}
	}
	return fmt.Errorf("containerd for %s not ready after 30 s: %v\n%s", rt.name, last, lab.Tail(rt.proc.Log, 30))
}

// crictl runs crictl against rt in host2's namespace (no network: a unix
// socket) and returns its stdout.
func (cb *criBench) crictl(rt *criRuntime, args ...string) ([]byte, error) {
	_, out, err := cb.b.run(cb.b.hn, append([]string{cb.tools.crictl, "--config", rt.crictlCfg}, args...), cb.b.env, nil)
	return out, err
}

// ctl runs another client (ctr) in host2's namespace.
func (cb *criBench) ctl(_ *criRuntime, argv ...string) ([]byte, error) {
	_, out, err := cb.b.run(cb.b.hn, argv, cb.b.env, nil)
	return out, err
}

// podConfig writes pod i's sandbox config and returns its path.
func (cb *criBench) podConfig(rt *criRuntime, i int) (string, error) {
	name := fmt.Sprintf("p%s-%d", rt.key[:3], i)
	body, err := json.Marshal(map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": criNamespace, "uid": "uid-" + name, "attempt": 0},
		"hostname":      name,
		"log_directory": filepath.Join(rt.dir, "logs", name),
		"linux":         map[string]any{},
	})
	if err != nil {
		return "", err
	}
	path := filepath.Join(rt.dir, name+".json")
	return path, os.WriteFile(path, body, 0o644)
}

// warmUp runs one pod untimed and checks its address.
func (cb *criBench) warmUp(rt *criRuntime, wantPrefix string) error {
	cfg, err := cb.podConfig(rt, -1)
	if err != nil {
		return err
	}
	out, err := cb.crictl(rt, "runp", cfg)
	if err != nil {
		return fmt.Errorf("%s: first pod: %w\n%s", rt.name, err, lab.Tail(rt.proc.Log, 20))
	}
	id := strings.TrimSpace(string(out))
	insp, err := cb.crictl(rt, "inspectp", "-o", "json", id)
	if err != nil {
		return err
	}
	var st struct {
		Status struct {
			Network struct{ IP string } `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal(insp, &st); err != nil || !strings.HasPrefix(st.Status.Network.IP, wantPrefix) {
		return fmt.Errorf("%s: first pod has address %q, want one in %s* (%v)", rt.name, st.Status.Network.IP, wantPrefix, err)
	}
	for _, op := range []string{"stopp", "rmp"} {
		if _, err := cb.crictl(rt, op, id); err != nil {
			return err
		}
	}
	return nil
}

// loop runs pods first..first+k-1 on rt, one at a time: runp, stopp, rmp.
func (cb *criBench) loop(rt *criRuntime, first, k int) error {
	cfgs := make([]string, k)
	for i := range k {
		var err error
		if cfgs[i], err = cb.podConfig(rt, first+i); err != nil {
			return err
		}
	}
	crictl := []string{cb.tools.crictl, "--config", rt.crictlCfg}
	t0 := time.Now()
	for _, cfg := range cfgs {
		s1, out, err := cb.b.run(cb.b.hn, append(slices.Clone(crictl), "runp", cfg), cb.b.env, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", rt.name, err)
		}
		id := strings.TrimSpace(string(out))
		s2, _, err := cb.b.run(cb.b.hn, append(slices.Clone(crictl), "stopp", id), cb.b.env, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", rt.name, err)
		}
		s3, _, err := cb.b.run(cb.b.hn, append(slices.Clone(crictl), "rmp", id), cb.b.env, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", rt.name, err)
		}
		rt.runp = append(rt.runp, ms(s1.wall))
		rt.stopRm = append(rt.stopRm, ms(s2.wall+s3.wall))
		rt.pod = append(rt.pod, ms(s1.wall+s2.wall+s3.wall))
	}
	rt.wall += time.Since(t0)
	return nil
}

// leftovers checks that every pod is gone with its network: no pod left
// in either runtime, no host-local lease, no endpoint of a CRI pod.
func (cb *criBench) leftovers(hostLocalData string) error {
	for _, rt := range cb.rts {
		out, err := cb.crictl(rt, "pods", "-q")
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			return fmt.Errorf("%s: pods left after stopp and rmp: %s", rt.name, s)
		}
		if ents, _ := os.ReadDir(filepath.Join(rt.dir, "netns")); len(ents) > 0 {
			return fmt.Errorf("%s: pod network namespaces left: %d", rt.name, len(ents))
		}
	}
	var leases []string
	_ = filepath.WalkDir(hostLocalData, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), "10.") {
			leases = append(leases, d.Name())
		}
		return nil
	})
	if len(leases) > 0 {
		return fmt.Errorf("host-local leases left after every CRI pod was removed: %v", leases)
	}
	kvs, _, err := cb.b.kv.List(context.Background(), model.HostWorkloadPrefix(cb.b.hn.Name)+model.OrchestratorK8s+"/", true)
	if err != nil {
		return err
	}
	if len(kvs) > 0 {
		return fmt.Errorf("%d endpoint records of CRI pods left (first: %s)", len(kvs), kvs[0].Key)
	}
	return nil
}

// cleanup removes pods still there (their CNI DEL included), stops both
// containerds and their shims, and removes /run/containerd if it was made
// here. Once; also registered with the script for a run that dies.
func (cb *criBench) cleanup() error {
	cb.cleanupOnce.Do(func() {
		var errs []error
		for _, rt := range cb.rts {
			if !rt.proc.Exited() {
				if out, err := cb.crictl(rt, "pods", "-q"); err == nil {
					for _, id := range strings.Fields(string(out)) {
						_, _ = cb.crictl(rt, "stopp", id)
						_, _ = cb.crictl(rt, "rmp", "-f", id)
					}
				}
			}
			_ = rt.proc.Stop(10 * time.Second)
			if pids := lab.KillShims(rt.sock); len(pids) > 0 {
				errs = append(errs, fmt.Errorf("%s: containerd shims left running, killed: %v", rt.name, pids))
			}
		}
		if cb.madeRunDir {
			_ = os.Remove("/run/containerd") // only when empty
		}
		cb.cleanupErr = errors.Join(errs...)
	})
	return cb.cleanupErr
}

func containerdVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "version unknown"
	}
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return strings.TrimSpace(string(out))
}

// pauseImage writes the pause image (test/ociimage) as a tarball for ctr
// images import.
func (cb *criBench) pauseImage() (string, error) {
	if err := os.MkdirAll(cb.dir, 0o755); err != nil {
		return "", err
	}
	img, err := ociimage.BuildPause(cb.b.p.root, cb.dir)
	return img.Tar, err
}
