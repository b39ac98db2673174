package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// ip6tablesNames are the ip6tables commands tabby-node may run (the plain
// ones and both split flavours).
var ip6tablesNames = []string{"ip6tables", "ip6tables-save", "ip6tables-restore",
	"ip6tables-legacy", "ip6tables-legacy-save", "ip6tables-legacy-restore",
	"ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore"}

// noIP6TablesPath is a PATH for tabby-node under which ip6tables cannot be
// used, while iptables and ipset work. missing: the ip6tables commands are
// not there at all (PATH holds only links to iptables, xtables and ipset);
// otherwise every ip6tables command is found first and exits 1 without a
// word, as a broken install would.
func noIP6TablesPath(t *testing.T, missing bool) string {
	t.Helper()
	dir := t.TempDir()
	if !missing {
		for _, n := range ip6tablesNames {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir + ":" + os.Getenv("PATH")
	}
	for _, sbin := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		ents, _ := os.ReadDir(sbin)
		for _, ent := range ents {
			n := ent.Name()
			if strings.HasPrefix(n, "ip6tables") ||
				!(strings.HasPrefix(n, "iptables") || strings.HasPrefix(n, "xtables") || strings.HasPrefix(n, "ipset")) {
				continue
			}
			if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
				continue
			}
			if err := os.Symlink(filepath.Join(sbin, n), filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "iptables-restore")); err != nil {
		testutil.Missing(t, "iptables not found (make deps installs it)")
	}
	return dir
}

// startNodeNoIP6Tables runs tabby-node on h as StartNode does (dual-stack:
// with the host's IPv6 address), under a PATH where ip6tables is unusable.
func (e *env) startNodeNoIP6Tables(h *lab.Host, path string) *lab.Proc {
	e.t.Helper()
	envBin, err := exec.LookPath("env")
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.MkdirAll(e.stateDir(h), 0o755); err != nil {
		e.t.Fatal(err)
	}
	return e.l.Start(h.NS, filepath.Join(e.l.Dir, "tabby-node-"+h.Name+".log"), envBin, "PATH="+path,
		testutil.Bin(e.t, "tabby-node"), "--name", h.Name, "--ip", h.CIDR, "--ip6", h.IP6+"/64",
		"--etcd-endpoints", e.l.EtcdURL, "--state-dir", e.stateDir(h), "--metrics-addr", "", "--log-level", "debug")
}

// Issue 11, end to end: tabby-node runs on a host where ip6tables cannot be
// used. It stays up and serves IPv4, but fails closed for IPv6:
//   - `tabbyctl node status` says IPv6 policy is not enforced, and why;
//   - a dual-stack ADD through the real tabby plugin fails at once with
//     code 110 and a message naming ip6tables, and leaves nothing behind
//     (no veth, no interface in the container, no endpoint record, no
//     handle, no block or affinity);
//   - an IPv4-only ADD on the same host succeeds with its policy in force:
//     a container outside its profile that probes it from before the ADD
//     never gets an answer, one inside the profile reaches it at once.
func TestIPv6PolicyFailsClosedEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		missing bool
	}{
		{"ip6tables failing", false},
		{"ip6tables missing", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, lab.Options{Hosts: 1})
			h := e.l.Hosts[0]
			e.pool("10.0.0.0/16")
			e.pool("fd00:10::/64")
			e.ctl(h, "profile", "add", "ISO")
			e.ctl(h, "profile", "add", "OUT")
			node := e.startNodeNoIP6Tables(h, noIP6TablesPath(t, tc.missing))
			e.waitReady(h)

			// The status says so, before any workload asks.
			eventually(t, 15*time.Second, func() error {
				if node.Exited() {
					return lab.GiveUp(fmt.Errorf("tabby-node exited: %v", node.Wait()))
				}
				st, err := e.status(h)
				if err != nil {
					return err
				}
				if !strings.Contains(st.IPv6PolicyError, "ip6tables") {
					return fmt.Errorf("status IPv6PolicyError = %q, want the ip6tables problem", st.IPv6PolicyError)
				}
				return nil
			})
			out := e.ctl(h, "node", "status", "--state-dir", e.stateDir(h))
			if !strings.Contains(out, "IPv6 policy: NOT ENFORCED") || !strings.Contains(out, "ip6tables") {
				t.Fatalf("tabbyctl node status does not show the IPv6 problem:\n%s", out)
			}
			t.Logf("tabbyctl node status:\n%s", out)

			// A dual-stack ADD, configured as conf/10-tabby-dualstack.conflist.
			dsNS, dsPath := e.l.AddContainer(h, "ds")
			ds := e.conf(h, "1.0.0", `,"profiles":["ISO"]`, `,"assign_ipv4":true,"assign_ipv6":true`)
			o := e.plugin(h, "ADD", "ds", dsPath, "eth0", "", ds)
			if o.ExitCode == 0 {
				t.Fatalf("a dual-stack ADD succeeded on a host whose IPv6 filter cannot be programmed:\n%s", o.Stdout)
			}
			if o.ErrCode != int(cnierr.PolicyNotInForce) || !strings.Contains(o.ErrMsg, "ip6tables") {
				t.Fatalf("dual-stack ADD: code %d (%q), want %d naming ip6tables\n%s", o.ErrCode, o.ErrMsg, cnierr.PolicyNotInForce, o.Stderr)
			}
			// The node's refusal ends the wait; it does not run into the
			// plugin's 10 s policy timeout.
			if o.Took > 5*time.Second {
				t.Fatalf("the dual-stack ADD took %v: it waited for a timeout instead of the node's refusal", o.Took)
			}
			t.Logf("dual-stack ADD: code %d after %v: %s", o.ErrCode, o.Took.Round(time.Millisecond), o.ErrMsg)
			e.assertClean(h)
			if links := e.l.MustExec(dsNS, "ip", "-o", "link", "show"); strings.Count(strings.TrimSpace(links), "\n") != 0 || !strings.Contains(links, " lo:") {
				t.Fatalf("the container keeps interfaces after the failed ADD:\n%s", links)
			}
			for _, fam := range []string{"-4", "-6"} {
				if r := e.l.MustExec(h.NS, "ip", fam, "route", "show"); strings.Contains(r, "tby") {
					t.Fatalf("workload route left after the failed ADD:\n%s", r)
				}
			}
			if st, err := e.status(h); err != nil || !strings.Contains(st.IPv6PolicyError, "ip6tables") {
				t.Fatalf("status after the failed ADD: %+v %v", st, err)
			}

			// IPv4-only on the same host: served, with policy in force.
			inside, _ := e.container(h, "inside", "TABBY_PROFILES=ISO")
			outside, _ := e.container(h, "outside", "TABBY_PROFILES=OUT")
			const ip = "10.0.9.1"
			_, v4Path := e.l.AddContainer(h, "v4")
			pr := e.startProbe(outside, ip)
			// The probe is sending before the ADD starts: the host has seen
			// a packet of it.
			eventually(t, 5*time.Second, func() error {
				if out, _ := e.l.Exec(h.NS, "conntrack", "-L", "-p", "icmp", "-d", ip); !strings.Contains(out, "dst="+ip) {
					return fmt.Errorf("no probe packet for %s seen on the host yet", ip)
				}
				return nil
			})
			v4 := e.conf(h, "1.0.0", `,"profiles":["ISO"]`, "")
			o = e.plugin(h, "ADD", "v4", v4Path, "eth0", "IP="+ip, v4)
			if got := addrOf(t, o); got != ip {
				t.Fatalf("IPv4-only ADD got %s, want %s", got, ip)
			}
			// In force now: the first ping from inside the profile answers.
			if err := e.l.Ping(inside, ip); err != nil {
				t.Fatalf("right after its ADD returned, %s is not reachable from inside its profile: %v", ip, err)
			}
			if got := pr.stop(t); got != 0 {
				t.Fatalf("%s answered %d probes from outside its profile", ip, got)
			}
			if err := e.quickPing(outside, ip); err == nil {
				t.Fatalf("%s answers a ping from outside its profile", ip)
			}
			if ep := e.endpoint(h, "cni", "v4"); ep == nil || len(ep.IPv6Nets) != 0 {
				t.Fatalf("endpoint record of the IPv4-only container: %+v", ep)
			}
			if node.Exited() {
				t.Fatalf("tabby-node exited: %v", node.Wait())
			}

			// DEL everything; nothing is left.
			for _, c := range []struct {
				cid  string
				conf []byte
			}{{"inside", e.conf(h, "", "", "")}, {"outside", e.conf(h, "", "", "")}, {"v4", v4}} {
				path := filepath.Join("/run/netns", e.l.ID+"-"+h.Name+"-"+c.cid)
				if o := e.plugin(h, "DEL", c.cid, path, "eth0", "", c.conf); o.ExitCode != 0 {
					t.Fatalf("DEL %s: code %d: %s", c.cid, o.ErrCode, o.ErrMsg)
				}
			}
			// The failed container's DEL, as a runtime sends after a failed
			// ADD, is a no-op that succeeds.
			if o := e.plugin(h, "DEL", "ds", dsPath, "eth0", "", ds); o.ExitCode != 0 {
				t.Fatalf("DEL of the failed dual-stack container: code %d: %s", o.ErrCode, o.ErrMsg)
			}
			e.assertClean(h)
			if k := e.keys(model.HostWorkloadPrefix(h.Name)); len(k) != 0 {
				t.Fatalf("endpoints left: %v", k)
			}
		})
	}
}
