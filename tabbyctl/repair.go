package main

// This host against etcd: `ipam check --state-dir DIR` adds to the
// cluster-wide check what runs on this host and etcd does not know (or
// knows and nothing runs), and `ipam repair` brings etcd in line. Both are
// for after etcd was restored from an older snapshot; run them on every
// host (docs/reliability-partitions.md has the procedure).

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/store"
)

var hostFlags = []flagSpec{
	{name: "state-dir", value: true, help: "this host's tabby state dir (default /var/run/tabby): the attachment notes of its ADDs"},
	{name: "host", value: true, help: "this host's name (default: <state-dir>/nodename, as tabby-node wrote it)"},
	{name: "grace", value: true, help: "records younger than this are never taken for a workload that does not run (an ADD in flight; default 30s)"},
}

// grace is the --grace flag.
func grace(c *ctx) (time.Duration, error) {
	s := c.flag("grace", "")
	if s == "" {
		return ipam.DefaultGrace, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, usagef("--grace %q: want a duration such as 30s", s)
	}
	return d, nil
}

func ipamRepairCommand() *command {
	return &command{path: []string{"ipam", "repair"}, usage: "ipam repair [--state-dir DIR] [--host NAME] [--grace D] [--dry-run]",
		help:  "on this host, after etcd was restored from an older snapshot: allocate running workloads' addresses and write their records again, release those of workloads that do not run here (exit 1 when something is left)",
		flags: append(append([]flagSpec{}, hostFlags...), flagSpec{name: "dry-run", help: "only say what it would do"}), run: withKV(ipamRepair)}
}

// thisHost is the host whose state dir the flags name, and its name.
func thisHost(c *ctx) (stateDir, host string, err error) {
	stateDir = c.flag("state-dir", os.Getenv("TABBY_STATE_DIR"))
	if stateDir == "" {
		stateDir = "/var/run/tabby"
	}
	host = c.flag("host", "")
	if host == "" {
		b, err := os.ReadFile(filepath.Join(stateDir, "nodename"))
		if err != nil {
			return "", "", usagef("no --host and no nodename in %s (%v): give --host NAME", stateDir, err)
		}
		host = strings.TrimSpace(string(b))
	}
	return stateDir, host, nil
}

// vethPresent reports whether this namespace has the interface: tabbyctl
// runs on the host, where the workloads' host veths are.
func vethPresent(name string) bool {
	if name == "" {
		return false
	}
	_, err := net.InterfaceByName(name)
	return err == nil
}

// hostProblems is what runs on this host against etcd.
func hostProblems(cx context.Context, kv store.KV, c *ctx) ([]ipam.Problem, error) {
	stateDir, host, err := thisHost(c)
	if err != nil {
		return nil, err
	}
	g, err := grace(c)
	if err != nil {
		return nil, err
	}
	running, err := ipam.RunningAttachments(stateDir, vethPresent)
	if err != nil {
		return nil, err
	}
	return ipam.CheckHost(cx, kv, host, running, vethPresent, g)
}

func ipamRepair(cx context.Context, kv store.KV, c *ctx) error {
	stateDir, host, err := thisHost(c)
	if err != nil {
		return err
	}
	g, err := grace(c)
	if err != nil {
		return err
	}
	running, err := ipam.RunningAttachments(stateDir, vethPresent)
	if err != nil {
		return err
	}
	a := &ipam.IPAM{KV: kv, Host: host, LockDir: stateDir}
	acts, err := a.RepairHost(cx, running, vethPresent, g, c.has("dry-run"))
	if err != nil {
		return codeErr(err)
	}
	var rows [][]string
	left := 0
	for _, x := range acts {
		status := "ok"
		if x.Err != "" {
			status, left = "failed: "+x.Err, left+1
		} else if x.Kind == ipam.RunningAddressTaken {
			left++
		}
		rows = append(rows, []string{x.Kind, x.IP, x.Handle, x.Done, status})
	}
	if c.format == "table" {
		fmt.Fprintf(c.out, "host %s: %d running attachments, %d actions\n", host, len(running), len(acts))
		if len(rows) == 0 {
			return nil
		}
	}
	if acts == nil {
		acts = []ipam.Action{}
	}
	if err := c.emit(acts, []string{"PROBLEM", "IP", "HANDLE", "ACTION", "STATUS"}, rows); err != nil {
		return err
	}
	if left > 0 {
		return fmt.Errorf("%d problems left", left)
	}
	return nil
}
