package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// creds are one etcd user's certificate files.
type creds struct{ ca, cert, key string }

func (c creds) flags() []string {
	return []string{"--etcd-ca-cert-file", c.ca, "--etcd-cert-file", c.cert, "--etcd-key-file", c.key}
}

func (c creds) conf() string {
	return fmt.Sprintf(`,"etcd_ca_cert_file":%q,"etcd_cert_file":%q,"etcd_key_file":%q`, c.ca, c.cert, c.key)
}

// secureEnv is a lab whose etcd requires TLS with client certificates and
// has tabby's roles and authentication on: every program authenticates by
// its certificate's CN.
type secureEnv struct {
	*env
	dir        string
	ca, oldCA  *etcdtest.CA
	clientCAs  string // the bundle etcd trusts client certificates with
	admin      creds
	hosts      map[*lab.Host]creds
	hostsIssue map[*lab.Host]*etcdtest.CA
}

func newSecureEnv(t *testing.T, hosts int) *secureEnv {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	s := &secureEnv{dir: dir, hosts: map[*lab.Host]creds{}, hostsIssue: map[*lab.Host]*etcdtest.CA{}}
	var err error
	s.ca, err = etcdtest.NewCA(dir, "ca")
	must(err)
	// Host 1's first certificate comes from a CA that is later retired, so
	// after a rotation only the new certificate can connect.
	s.oldCA, err = etcdtest.NewCA(dir, "ca-old")
	must(err)
	s.clientCAs = filepath.Join(dir, "client-cas.pem")
	must(etcdtest.Bundle(s.clientCAs, s.ca, s.oldCA))
	sc, sk, err := s.ca.Issue("server", "etcd", lab.EtcdIP)
	must(err)
	rc, rk, err := s.ca.Issue("root", "root")
	must(err)
	s.env = newEnv(t, lab.Options{Hosts: hosts, EtcdTLS: &lab.EtcdTLS{ServerCert: sc, ServerKey: sk, CA: s.ca.File,
		ClientCA: s.clientCAs, ClientCert: rc, ClientKey: rk}})
	var names []string
	for i, h := range s.l.Hosts {
		issuer := s.ca
		if i == 0 {
			issuer = s.oldCA
		}
		c, k, err := issuer.Issue(h.Name, "tabby-host-"+h.Name)
		must(err)
		s.hosts[h], s.hostsIssue[h] = creds{s.ca.File, c, k}, issuer
		names = append(names, h.Name)
	}
	ac, ak, err := s.ca.Issue("admin", "tabby-admin")
	must(err)
	s.admin = creds{s.ca.File, ac, ak}
	// As etcd's root (the lab's own client certificate): roles, users, auth on.
	out := s.ctl(s.l.Hosts[0], "auth", "setup", "--host", strings.Join(names, ","), "--enable")
	for _, n := range names {
		if !strings.Contains(out, "tabby-host-"+n) {
			t.Fatalf("auth setup printed no role for %s:\n%s", n, out)
		}
	}
	show := s.ctl(s.l.Hosts[0], "auth", "show")
	if !strings.Contains(show, "readwrite "+model.HostWorkloadPrefix(names[0])+"*") || !strings.Contains(show, "tabby-admin") {
		t.Fatalf("auth show:\n%s", show)
	}
	return s
}

// ctlAs runs tabbyctl in host h's namespace as the user of c.
func (s *secureEnv) ctlAs(h *lab.Host, c creds, args ...string) (string, error) {
	argv := append([]string{testutil.Bin(s.t, "tabbyctl"), "--etcd-endpoints", s.l.EtcdURL}, c.flags()...)
	return s.l.Exec(h.NS, append(argv, args...)...)
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// refused says nil when err is tabbyctl exiting 1 because etcd said
// permission denied.
func refused(err error) error {
	if err == nil {
		return fmt.Errorf("allowed")
	}
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "permission denied") {
		return fmt.Errorf("exit %d, want 1 with permission denied: %v", exitCode(err), err)
	}
	return nil
}

// etcd with TLS, client certificates and authentication, end to end in a
// 2-host lab: tabby-node, CNI ADD/DEL (through cnitool and directly) and
// tabbyctl work with the hosts' and the admin's certificates; host 1's
// certificate is refused a pool, a profile, host 2's endpoint and a write
// as host 2; host 1's tabby-node keeps working across a certificate
// rotation that retires its old CA, without a restart; nothing prints key
// material; the state dirs are 0700 with 0600 files.
func TestSecurityEtcdTLSAuth(t *testing.T) {
	cnitool := testutil.Tool(t, "cnitool", filepath.Join(testutil.Root(), "bin", "tools", "cnitool"))
	s := newSecureEnv(t, 2)
	h1, h2 := s.l.Hosts[0], s.l.Hosts[1]
	c1, c2 := s.hosts[h1], s.hosts[h2]

	// Nobody without a certificate, nor with one whose CN is no user.
	if out, err := s.l.Exec(h1.NS, testutil.Bin(t, "tabbyctl"), "--etcd-endpoints", s.l.EtcdURL, "--etcd-ca-cert-file", s.ca.File, "pool", "show"); err == nil {
		t.Fatalf("tabbyctl without a client certificate listed pools:\n%s", out)
	}
	sc, sk, err := s.ca.Issue("stranger", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ctlAs(h1, creds{s.ca.File, sc, sk}, "pool", "show"); refused(err) != nil {
		t.Fatalf("a CN that is no user: %v", refused(err))
	}

	// The admin's certificate does the operator's work.
	for _, args := range [][]string{{"pool", "add", "10.0.0.0/16"}, {"profile", "add", "P"}} {
		if out, err := s.ctlAs(h1, s.admin, args...); err != nil {
			t.Fatalf("admin: tabbyctl %v: %v\n%s", args, err, out)
		}
	}

	// tabby-node on each host with its own certificate.
	procs := map[*lab.Host]*lab.Proc{}
	for _, h := range s.l.Hosts {
		procs[h] = s.startNode(h, s.hosts[h].flags()...)
	}
	for _, h := range s.l.Hosts {
		s.WaitPeers(h, 1, 60*time.Second, procs[h])
		eventually(t, 30*time.Second, func() error {
			if st, err := s.status(h); err != nil || !st.Ready {
				return fmt.Errorf("tabby-node on %s not ready (%v)", h.Name, err)
			}
			return nil
		})
		if k := s.keys(model.NodeKey(h.Name)); len(k) != 1 {
			t.Fatalf("tabby-node on %s wrote no host record", h.Name)
		}
	}

	// CNI ADD and DEL through cnitool on host 1, with host 1's certificate.
	confDir := filepath.Join(s.dir, "net.d")
	if err := os.MkdirAll(confDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := s.conf(h1, "1.0.0", `,"profiles":["P"]`+c1.conf(), "")
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby-net","plugins":[%s]}`, conf)
	if err := os.WriteFile(filepath.Join(confDir, "10-tabby.conflist"), []byte(list), 0o600); err != nil {
		t.Fatal(err)
	}
	nsA, pathA := s.l.AddContainer(h1, "a")
	tool := func(verb string) (string, error) {
		cmd := s.l.Command(h1.NS, cnitool, verb, "tabby-net", pathA)
		cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+s.cniPath(), "CNI_ARGS=TABBY_WORKLOAD=a")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := tool("add"); err != nil {
		t.Fatalf("cnitool add on host1 with its certificate: %v\n%s", err, out)
	}
	if k := s.keys(model.HostWorkloadPrefix(h1.Name) + "cni/a/"); len(k) != 1 {
		t.Fatalf("endpoint of a: %v", k)
	}
	// Host 2's own ADD with its own certificate; they reach each other.
	_, pathB := s.l.AddContainer(h2, "b")
	conf2 := s.conf(h2, "", `,"profiles":["P"]`+c2.conf(), "")
	ipB := addrOf(t, s.plugin(h2, "ADD", "ctr-b", pathB, "eth0", "TABBY_WORKLOAD=b", conf2))
	eventually(t, 10*time.Second, func() error { return s.l.Ping(nsA, ipB) })

	// Host 1's certificate reads everything tabbyctl shows...
	for _, args := range [][]string{{"container", "show"}, {"pool", "show"}, {"profile", "show"}, {"node", "show"}, {"ipam", "check"}} {
		if out, err := s.ctlAs(h1, c1, args...); err != nil {
			t.Fatalf("host1's certificate: tabbyctl %v: %v\n%s", args, err, out)
		}
	}
	// ...but may not write what is not host 1's.
	for _, args := range [][]string{
		{"pool", "add", "10.9.0.0/16"},
		{"pool", "add", "10.0.0.0/16", "--disabled"}, // rewrite the pool in use
		{"profile", "add", "Q"},
		{"profile", "P", "rule", "add", "inbound", "allow"},
		{"container", "b", "profile", "set"}, // host 2's endpoint
		{"bgp", "config", "set", "--as", "65000"},
	} {
		if err := refused(func() error { _, err := s.ctlAs(h1, c1, args...); return err }()); err != nil {
			t.Errorf("host1's certificate: tabbyctl %v: %v", args, err)
		}
	}
	// A plugin on host 1 claiming to be host 2 is refused and leaves nothing.
	_, pathX := s.l.AddContainer(h1, "x")
	as2 := s.conf(h2, "", `,"profiles":["P"]`+c1.conf(), "")
	as2 = []byte(strings.Replace(string(as2), fmt.Sprintf("%q", s.stateDir(h2)), fmt.Sprintf("%q", s.stateDir(h1)), 1))
	if o := s.plugin(h1, "ADD", "ctr-x", pathX, "eth0", "TABBY_WORKLOAD=x", as2); o.ExitCode == 0 || !strings.Contains(string(o.Stdout), "permission denied") {
		t.Fatalf("ADD on host1 as host2 with host1's certificate: exit %d %s", o.ExitCode, o.Stdout)
	}
	if k := s.keys(model.HostWorkloadPrefix(h2.Name) + "cni/x/"); len(k) != 0 {
		t.Fatalf("host1 wrote an endpoint of host2: %v", k)
	}
	if out, _ := s.l.Exec(h1.NS, "ip", "-o", "link", "show"); strings.Count(out, "tby") != 1 {
		t.Fatalf("refused ADD left a veth on host1:\n%s", out)
	}
	// Host 2's endpoint and the pool are as they were.
	if ep := s.endpoint(h2, "cni", "b"); strings.Join(ep.Profiles, ",") != "P" {
		t.Fatalf("host2's endpoint after host1's attempts: profiles %v", ep.Profiles)
	}
	if out, err := s.ctlAs(h1, s.admin, "pool", "show"); err != nil || strings.Contains(out, "10.9.0.0") || strings.Contains(out, "true") {
		t.Fatalf("pools after host1's attempts: %v\n%s", err, out)
	}

	// Rotation: host 1's certificate files get a certificate of the current
	// CA, and etcd (restarted, which drops every connection) no longer
	// trusts the old CA. host 1's tabby-node, not restarted, reconnects
	// with the new files: an ADD, which waits for tabby-node to read the
	// endpoint from etcd and program it, succeeds.
	oldCert, oldKey := c1.cert+".old", c1.key+".old"
	copyFile(t, c1.cert, oldCert)
	copyFile(t, c1.key, oldKey)
	if _, _, err := s.ca.Issue(h1.Name, "tabby-host-"+h1.Name); err != nil {
		t.Fatal(err)
	}
	if err := etcdtest.Bundle(s.clientCAs, s.ca); err != nil {
		t.Fatal(err)
	}
	if err := s.Etcd.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop etcd: %v", err)
	}
	s.Etcd = s.l.StartEtcd()
	if _, err := s.ctlAs(h1, creds{s.ca.File, oldCert, oldKey}, "pool", "show"); err == nil {
		t.Fatal("etcd still accepts host1's retired certificate")
	}
	_, pathC := s.l.AddContainer(h1, "c")
	eventually(t, 30*time.Second, func() error {
		o := s.plugin(h1, "ADD", "ctr-c", pathC, "eth0", "TABBY_WORKLOAD=c", s.conf(h1, "", `,"profiles":["P"]`+c1.conf(), ""))
		if o.ExitCode != 0 {
			return fmt.Errorf("ADD on host1 after rotation: exit %d %s", o.ExitCode, o.Stdout)
		}
		return nil
	})
	if procs[h1].Exited() {
		t.Fatal("tabby-node on host1 exited during the rotation")
	}

	// DEL through cnitool, and the others; everything is gone.
	if out, err := tool("del"); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	for _, o := range []testutil.Outcome{
		s.plugin(h1, "DEL", "ctr-c", pathC, "eth0", "TABBY_WORKLOAD=c", s.conf(h1, "", c1.conf(), "")),
		s.plugin(h1, "DEL", "ctr-x", pathX, "eth0", "TABBY_WORKLOAD=x", s.conf(h1, "", c1.conf(), "")),
		s.plugin(h2, "DEL", "ctr-b", pathB, "eth0", "TABBY_WORKLOAD=b", conf2),
	} {
		if o.ExitCode != 0 {
			t.Fatalf("DEL: exit %d %s", o.ExitCode, o.Stdout)
		}
	}
	if err := s.Leftovers(h1, h2); err != nil {
		t.Fatal(err)
	}

	// Logs: no key or certificate material, whatever the level (debug).
	logs := []string{s.CNILog(h1), s.CNILog(h2)}
	for _, h := range s.l.Hosts {
		logs = append(logs, filepath.Join(s.l.Dir, "tabby-node-"+h.Name+".log"))
	}
	keyPEM, _ := os.ReadFile(c1.key)
	keyBody := strings.Split(strings.TrimSpace(string(keyPEM)), "\n")[1]
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("log %s: %v", f, err)
		}
		for _, bad := range []string{"PRIVATE KEY", "BEGIN CERTIFICATE", keyBody} {
			if strings.Contains(string(b), bad) {
				t.Errorf("log %s holds %q", f, bad)
			}
		}
	}

	// State dirs: tabby-node and the plugins keep them 0700, files 0600.
	for _, h := range s.l.Hosts {
		checkPrivate(t, s.stateDir(h))
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkPrivate fails unless dir is 0700 and every regular file in it 0600
// (sockets and subdirectories aside: those are root's by their parent).
func checkPrivate(t *testing.T, dir string) {
	t.Helper()
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Mode().Perm(); m != 0o700 {
		t.Errorf("state dir %s is %o, want 700", dir, m)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile (a temporary file)
		}
		files++
		if m := fi.Mode().Perm(); m&0o077 != 0 {
			t.Errorf("%s is %o, want 600", filepath.Join(dir, e.Name()), m)
		}
	}
	if files == 0 {
		t.Errorf("state dir %s holds no file: nothing was checked", dir)
	}
}

// Text that tries to reach iptables-restore or ipset input through a
// workload's labels (its arguments, or a forged pod record) is refused at
// the CNI boundary with code 7 and leaves nothing; forged index entries in
// etcd (which every host may write) with such text never reach the
// kernel's rules or sets, and tabby-node goes on programming the rest.
func TestSecurityInjectionRefused(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	e.ctl(h, "profile", "add", "P")
	e.StartNodes()
	ctx := context.Background()
	const inj = "x\n-A INPUT -j ACCEPT"
	conf := e.conf(h, "", `,"profiles":["P"],"k8s_pod_record_required":true`, "")

	_, ns := e.l.AddContainer(h, "evil")
	for _, args := range []string{
		"TABBY_WORKLOAD=evil;TABBY_LABELS=app=" + strings.ReplaceAll(inj, "\n", "%0A"),
		"TABBY_WORKLOAD=evil;TABBY_LABELS=app=web -A INPUT -j ACCEPT",
		"TABBY_WORKLOAD=evil;TABBY_LABELS=app='web'",
		"TABBY_WORKLOAD=evil;TABBY_LABELS=app=$(reboot)",
	} {
		if o := e.plugin(h, "ADD", "ctr-evil", ns, "eth0", args, conf); o.ErrCode != 7 || !strings.Contains(o.ErrMsg, "label") {
			t.Fatalf("ADD with %q: exit %d %s", args, o.ExitCode, o.Stdout)
		}
	}
	// A pod record whose labels the API server would never have passed.
	rec := model.K8sPod{Namespace: "x", Name: "a", UID: "u1", Labels: map[string]string{"app": inj}}
	if err := store.PutJSON(ctx, e.kv, model.K8sPodKey("x", "a"), rec); err != nil {
		t.Fatal(err)
	}
	k8s := "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_UID=u1;K8S_POD_INFRA_CONTAINER_ID=ctr-evil"
	if o := e.plugin(h, "ADD", "ctr-evil", ns, "eth0", k8s, conf); o.ErrCode != 7 || !strings.Contains(o.ErrMsg, "label") {
		t.Fatalf("ADD with a forged pod record: exit %d %s", o.ExitCode, o.Stdout)
	}
	e.assertClean(h)

	// Two honest workloads of profile P get their rules and reach each other.
	_, a := e.l.AddContainer(h, "a")
	_, b := e.l.AddContainer(h, "b")
	ok := e.conf(h, "", `,"profiles":["P"]`, "")
	addrOf(t, e.plugin(h, "ADD", "ctr-a", a, "eth0", "TABBY_WORKLOAD=a", ok))
	ipB := addrOf(t, e.plugin(h, "ADD", "ctr-b", b, "eth0", "TABBY_WORKLOAD=b", ok))
	eventually(t, 10*time.Second, func() error { return e.l.Ping(filepath.Base(a), ipB) })

	// Forged index entries, written while they run (the daemon's event
	// path): a member of tag P and of namespace _ whose addresses carry
	// text of their own.
	forged := model.TagMember{Endpoint: "forged", Nets: []string{"10.0.0.99/32\nflush", "10.0.0.98/32 timeout 1", "10.0.0.97/32"}}
	if err := store.PutJSON(ctx, e.kv, model.TagMemberKey("P", "hostx", "cni", "forged", "eth0"), forged); err != nil {
		t.Fatal(err)
	}
	if err := store.PutJSON(ctx, e.kv, model.MemberKey("", "hostx", "cni", "forged", "eth0"),
		model.Member{Endpoint: "forged", Nets: forged.Nets, Labels: map[string]string{"app": inj}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		sets, err := e.l.Exec(h.NS, "ipset", "save")
		if err != nil {
			return err
		}
		if !strings.Contains(sets, "10.0.0.97") {
			return fmt.Errorf("the forged entry's valid address is not in tag P's set yet:\n%s", sets)
		}
		return nil
	})
	// tabby-node still programs new workloads (a full pass, not only events).
	_, c := e.l.AddContainer(h, "c")
	ipC := addrOf(t, e.plugin(h, "ADD", "ctr-c", c, "eth0", "TABBY_WORKLOAD=c", ok))
	eventually(t, 10*time.Second, func() error { return e.l.Ping(filepath.Base(a), ipC) })
	eventually(t, 10*time.Second, func() error {
		st, err := e.status(h)
		if err != nil {
			return err
		}
		if len(st.Errors) != 0 {
			return fmt.Errorf("tabby-node's errors after forged entries: %v", st.Errors)
		}
		return nil
	})
	sets := e.l.MustExec(h.NS, "ipset", "save")
	rules := e.l.MustExec(h.NS, "iptables-save")
	for _, bad := range []string{"flush", "timeout", "10.0.0.99", "10.0.0.98"} {
		if strings.Contains(sets, bad) {
			t.Errorf("ipset save holds %q:\n%s", bad, sets)
		}
	}
	if strings.Contains(rules, "-A INPUT -j ACCEPT") {
		t.Errorf("iptables-save holds the injected rule:\n%s", rules)
	}
}
