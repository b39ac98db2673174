package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
)

// runCtl runs tabbyctl in-process and returns exit code, stdout and stderr.
func runCtl(t *testing.T, eps string, args ...string) (int, string, string) {
	t.Helper()
	oldOut, oldErr := os.Stdout, os.Stderr
	ro, wo, _ := os.Pipe()
	re, we, _ := os.Pipe()
	os.Stdout, os.Stderr = wo, we
	var bo, be bytes.Buffer
	done := make(chan struct{}, 2)
	go func() { io.Copy(&bo, ro); done <- struct{}{} }()
	go func() { io.Copy(&be, re); done <- struct{}{} }()
	if args[0] != "help" {
		args = append([]string{"--etcd-endpoints", eps}, args...)
	}
	code := run(args)
	wo.Close()
	we.Close()
	<-done
	<-done
	os.Stdout, os.Stderr = oldOut, oldErr
	return code, bo.String(), be.String()
}

func TestPoolsProfilesPeers(t *testing.T) {
	e := etcdtest.Start(t)
	ok := func(args ...string) string {
		t.Helper()
		code, out, errs := runCtl(t, e.URL, args...)
		if code != 0 {
			t.Fatalf("tabbyctl %v: exit %d: %s%s", args, code, out, errs)
		}
		return out
	}
	fail := func(want int, msg string, args ...string) {
		t.Helper()
		code, out, errs := runCtl(t, e.URL, args...)
		if code != want || !strings.Contains(errs, msg) {
			t.Fatalf("tabbyctl %v: exit %d (want %d), stderr %q (want %q) %s", args, code, want, errs, msg, out)
		}
	}
	ok("pool", "add", "10.0.0.0/16", "--ipip", "--nat-outgoing")
	ok("pool", "add", "fd00:1::/64", "--vxlan=cross-subnet")
	out := ok("pool", "show")
	if !strings.Contains(out, "10.0.0.0/16") || !strings.Contains(out, "/26") || !strings.Contains(out, "fd00:1::/64") {
		t.Fatalf("pool show:\n%s", out)
	}
	var pools []map[string]any
	if err := json.Unmarshal([]byte(ok("pool", "show", "-o", "json")), &pools); err != nil || len(pools) != 2 || pools[0]["ipipMode"] != "always" {
		t.Fatalf("pool show -o json: %v %v", pools, err)
	}
	if y := ok("pool", "show", "-o", "yaml"); !strings.Contains(y, "natOutgoing: true") {
		t.Fatalf("yaml: %s", y)
	}
	fail(1, "overlaps", "pool", "add", "10.0.1.0/24")
	fail(2, "use always, cross-subnet or never", "pool", "add", "10.1.0.0/16", "--ipip=sometimes")
	fail(2, "unknown flag", "pool", "add", "10.1.0.0/16", "--colour")
	fail(2, "unknown command", "pool", "paint")

	ok("profile", "add", "PROF_A")
	fail(1, "already exists", "profile", "add", "PROF_A")
	ok("profile", "PROF_A", "rule", "add", "inbound", "--at", "1", "deny", "from", "tag", "X", "tcp", "port", "80")
	ok("profile", "PROF_A", "rule", "add", "outbound", "deny", "to", "cidr", "198.51.100.0/24")
	out = ok("profile", "PROF_A", "rule", "show")
	for _, want := range []string{"inbound    1  deny from tag X tcp port 80", "inbound    2  allow from tag PROF_A", "outbound   2  deny to cidr 198.51.100.0/24"} {
		if !strings.Contains(out, want) {
			t.Fatalf("rule show lacks %q:\n%s", want, out)
		}
	}
	fail(2, "port needs tcp or udp", "profile", "PROF_A", "rule", "add", "inbound", "allow", "port", "80")
	fail(2, "want P or P:Q", "profile", "PROF_A", "rule", "add", "inbound", "allow", "tcp", "port", "99999")
	fail(1, "no rule 9", "profile", "PROF_A", "rule", "remove", "inbound", "9")
	ok("profile", "PROF_A", "rule", "remove", "inbound", "1")
	fail(1, "does not exist", "profile", "NOPE", "rule", "show")
	ok("profile", "remove", "PROF_A")

	ok("bgp", "peer", "add", "198.19.0.100", "--as", "64513")
	ok("bgp", "peer", "add", "198.19.0.101", "--as", "64514", "--host", "h1")
	if out := ok("bgp", "peer", "show"); !strings.Contains(out, "host h1") || !strings.Contains(out, "global") {
		t.Fatalf("peer show:\n%s", out)
	}
	ok("bgp", "peer", "remove", "198.19.0.101", "--host", "h1")
	fail(2, "--as N is required", "bgp", "peer", "add", "198.19.0.9")
	if out := ok("bgp", "config", "set", "--mesh", "off", "--as", "65000"); !strings.Contains(out, "AS 65000, full mesh false") {
		t.Fatal(out)
	}
	fail(1, "is not a CIDR", "ipam", "release", "--block", "nonsense")
	fail(1, "whose blocks are /26", "ipam", "release", "--block", "10.0.3.0/24")
	fail(2, "not both", "ipam", "release", "--block", "10.0.3.0/26", "--ip", "10.0.3.1")
	ok("ipam", "check")
	ok("pool", "remove", "10.0.0.0/16")
	if out := ok("ipam", "show", "--ip", "fd00:1::5"); !strings.Contains(out, "free") {
		t.Fatal(out)
	}
	if code, out, _ := runCtl(t, e.URL, "help", "--markdown"); code != 0 || !strings.Contains(out, "| `tabbyctl pool add CIDR") {
		t.Fatalf("help --markdown: %d %s", code, out)
	}
}

func TestEtcdDownExitCode(t *testing.T) {
	e := etcdtest.Start(t)
	e.Stop()
	code, _, errs := runCtl(t, e.URL, "pool", "show")
	if code != 3 || !strings.Contains(errs, "unreachable") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

// The argument parser never panics and always resolves to a command or a usage error.
func FuzzParseArgs(f *testing.F) {
	f.Add("pool add 10.0.0.0/16 --ipip --nat-outgoing")
	f.Add("profile P rule add inbound --at 2 deny from tag X tcp port 80:90")
	f.Add("container conA profile append A B -o json")
	f.Add("--etcd-endpoints http://x:1 bgp peer add 1.2.3.4 --as=65000")
	f.Add("policy add -f - --force")
	f.Add("policy add --filename=p.yaml -o json")
	f.Add("policy show web --namespace team-a -o yaml")
	f.Add("policy show --all-namespaces --namespace")
	f.Add("policy remove web --namespace=team-a --force")
	f.Add("container show --labels --host h1")
	cmds := commands()
	f.Fuzz(func(t *testing.T, line string) {
		c, err := parse(cmds, strings.Fields(line))
		if err == nil && c.cmd == nil {
			t.Fatal("no command and no error")
		}
		if err == nil && strings.HasPrefix(c.cmd.path[0], "profile") && len(c.cmd.path) == 4 {
			_, _ = parseRule(c.args[min(1, len(c.args)):])
		}
	})
}
