package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// fixtureDir holds a dump of every record kind and key as the binaries of
// one commit (its SOURCE file) wrote them in a lab. Later binaries must read
// and operate on it: TestUpgradeFixtureV1 here, TestFixtureV1Decodes in
// pkg/model.
var fixtureDir = filepath.Join(testutil.Root(), "pkg", "model", "testdata", "fixture-v1")

func readFixture(t *testing.T) []model.FixtureRecord {
	t.Helper()
	recs, err := model.ReadFixture(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// fixtureCommit is the commit whose binaries wrote the fixture.
func fixtureCommit(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, "SOURCE"))
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(c)
}

// loadRecords writes recs into etcd as they are (a handful of
// transactions: etcd takes at most 128 operations in one).
func loadRecords(t *testing.T, kv store.KV, recs []model.FixtureRecord) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < len(recs); i += 100 {
		var ops []store.Op
		for _, r := range recs[i:min(i+100, len(recs))] {
			ops = append(ops, store.Put(r.Key, r.Value))
		}
		if _, err := kv.Txn(ctx, nil, ops); err != nil {
			t.Fatalf("load fixture: %v", err)
		}
	}
}

// binariesAt builds tabby's four binaries as they were at commit, from `git
// archive` (the working tree and its index are not touched), into a
// directory the test removes. Unchanged packages come from the build cache.
func binariesAt(t *testing.T, commit string) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		testutil.Missing(t, "git (to build the binaries of %s): %v", commit, err)
	}
	// A shallow clone (CI checkouts often are) lacks the old commit: say
	// so and skip rather than fail on what the checkout cannot give.
	if err := exec.Command("git", "-C", testutil.Root(), "cat-file", "-e", commit+"^{commit}").Run(); err != nil {
		t.Skipf("commit %s is not in this checkout's history (a shallow clone?): cannot build the previous release; clone with full history to run this test", commit)
	}
	src, bin := t.TempDir(), t.TempDir()
	archive := exec.Command("git", "-C", testutil.Root(), "archive", "--format=tar", commit)
	var tarball, errb bytes.Buffer
	archive.Stdout, archive.Stderr = &tarball, &errb
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v: %s", commit, err, errb.String())
	}
	untar := exec.Command("tar", "-x", "-C", src)
	untar.Stdin = &tarball
	if out, err := untar.CombinedOutput(); err != nil {
		t.Fatalf("untar %s: %v: %s", commit, err, out)
	}
	short := commit[:min(8, len(commit))]
	for name, pkg := range map[string]string{"tabby": "cni-plugin", "tabby-ipam": "ipam-plugin", "tabby-node": "node", "tabbyctl": "tabbyctl"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.Version=old-"+short, "-o", filepath.Join(bin, name), "./"+pkg)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s at %s: %v\n%s", name, short, err, out)
		}
	}
	return bin
}

// binSet runs one set of tabby's binaries (a release) in the lab.
type binSet struct {
	e   *env
	dir string
}

func (b binSet) ctl(h *lab.Host, args ...string) (string, error) {
	return b.e.l.Exec(h.NS, append([]string{filepath.Join(b.dir, "tabbyctl"), "--etcd-endpoints", b.e.l.EtcdURL}, args...)...)
}

func (b binSet) mustCtl(h *lab.Host, args ...string) string {
	b.e.t.Helper()
	out, err := b.ctl(h, args...)
	if err != nil {
		b.e.t.Fatalf("tabbyctl (%s) %s: %v", b.dir, strings.Join(args, " "), err)
	}
	return out
}

// node starts this release's tabby-node on h, as lab.Env.StartNode does.
func (b binSet) node(h *lab.Host) *lab.Proc {
	e := b.e
	if err := os.MkdirAll(e.stateDir(h), 0o755); err != nil {
		e.t.Fatal(err)
	}
	return e.l.Start(h.NS, filepath.Join(e.l.Dir, "tabby-node-"+h.Name+".log"), filepath.Join(b.dir, "tabby-node"),
		"--name", h.Name, "--ip", h.CIDR, "--etcd-endpoints", e.l.EtcdURL,
		"--state-dir", e.stateDir(h), "--metrics-addr", "", "--log-level", "debug")
}

// add runs this release's CNI plugin (and its tabby-ipam) for an ADD in a
// new container namespace; it returns the namespace's name and the address.
func (b binSet) add(h *lab.Host, name, args string, conf []byte) (string, string) {
	e := b.e
	e.t.Helper()
	ns, nsPath := e.l.AddContainer(h, name)
	o := testutil.Run(filepath.Join(b.dir, "tabby"), testutil.Call{Command: "ADD", ContainerID: "ctr-" + name, Netns: nsPath,
		IfName: "eth0", Args: args, Conf: conf, Path: b.dir + ":/usr/lib/cni", Wrap: []string{"ip", "netns", "exec", h.NS}})
	return ns, addrOf(e.t, o)
}

func (e *env) waitNodeReady(h *lab.Host, p *lab.Proc) {
	e.t.Helper()
	e.Eventually(30*time.Second, func() error {
		if p.Exited() {
			return lab.GiveUp(fmt.Errorf("tabby-node on %s exited: %v\n%s", h.Name, p.Wait(), lab.Tail(p.Log, 20)))
		}
		st, err := e.status(h)
		if err != nil || !st.Ready {
			return fmt.Errorf("tabby-node on %s not ready (%v)", h.Name, err)
		}
		return nil
	})
}

const fixturePolicies = `
name: web-ingress
order: 100
selector: app=web
types: [ingress]
ingress:
  - ports:
      - protocol: tcp
        port: 80
      - protocol: tcp
        port: 8000
        endPort: 8080
      - protocol: tcp
        name: http
    peers:
      - selector: role=frontend
        namespaceSelector: team=a
      - cidr: 192.0.2.0/24
        except: [192.0.2.128/25]
  - action: deny
    protocol: udp
---
name: team-a-egress
namespace: team-a
selector: ""
types: [egress]
egress:
  - peers:
      - selector: app in (db,cache)
`

// TestWriteFixtureV1 is the generator of pkg/model/testdata/fixture-v1, not
// a check: with TABBY_WRITE_FIXTURE=DIR (and TABBY_FIXTURE_COMMIT, default
// HEAD) it builds that commit's binaries, makes every kind of record with
// them in a 2-host lab, and dumps /tabby/v1/ into DIR. Run once per schema
// version; the dump is committed and never regenerated for that version.
func TestWriteFixtureV1(t *testing.T) {
	out := os.Getenv("TABBY_WRITE_FIXTURE")
	if out == "" {
		t.Skip("the fixture generator: set TABBY_WRITE_FIXTURE=DIR (and TABBY_FIXTURE_COMMIT) to run it")
	}
	commit := os.Getenv("TABBY_FIXTURE_COMMIT")
	if commit == "" {
		commit = "HEAD"
	}
	full, err := exec.Command("git", "-C", testutil.Root(), "rev-parse", commit).Output()
	if err != nil {
		t.Fatalf("git rev-parse %s: %v", commit, err)
	}
	commit = strings.TrimSpace(string(full))
	e := newEnv(t, lab.Options{Hosts: 2})
	b := binSet{e: e, dir: binariesAt(t, commit)}
	h1, h2 := e.l.Hosts[0], e.l.Hosts[1]
	for _, h := range e.l.Hosts {
		e.waitNodeReady(h, b.node(h))
	}
	b.mustCtl(h1, "pool", "add", "10.0.0.0/16", "--nat-outgoing")
	b.mustCtl(h1, "pool", "add", "10.1.0.0/16", "--vxlan=cross-subnet")
	b.mustCtl(h1, "pool", "add", "fd00:10::/64")
	b.mustCtl(h1, "pool", "add", "10.9.0.0/24", "--block-size", "28", "--disabled")
	b.mustCtl(h1, "profile", "add", "web")
	b.mustCtl(h1, "profile", "add", "db")
	b.mustCtl(h1, "profile", "add", model.K8sNamespaceProfile("team-a"))
	b.mustCtl(h1, "profile", "db", "rule", "add", "inbound", "allow", "from", "tag", "web", "tcp", "port", "5432")
	b.mustCtl(h1, "profile", "web", "rule", "add", "inbound", "--at", "1", "deny", "from", "cidr", "192.0.2.0/24", "udp", "port", "53:60")
	b.mustCtl(h1, "profile", "web", "rule", "add", "outbound", "--at", "1", "allow", "to", "tag", "db", "icmp")
	b.mustCtl(h1, "bgp", "config", "set", "--as", "64512", "--mesh", "on")
	b.mustCtl(h1, "bgp", "peer", "add", "198.19.0.200", "--as", "64600")
	b.mustCtl(h1, "bgp", "peer", "add", "198.19.0.201", "--as", "64601", "--host", h1.Name)
	pol := filepath.Join(e.dir, "fixture-policies.yaml")
	if err := os.WriteFile(pol, []byte(fixturePolicies), 0o644); err != nil {
		t.Fatal(err)
	}
	b.mustCtl(h1, "policy", "add", "-f", pol)
	// What tabby-kube-controllers writes (its own types, from pkg/model).
	ctx := context.Background()
	for k, v := range map[string]any{
		model.NamespaceKey("team-a"): model.Namespace{Name: "team-a", Labels: map[string]string{"team": "a", "kubernetes.io/metadata.name": "team-a"}},
		model.K8sPodKey("team-a", "web-0"): model.K8sPod{Namespace: "team-a", Name: "web-0", UID: "uid-web-0",
			Labels: map[string]string{"app": "web", "role": "frontend"}, Ports: []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 80}},
			Profiles: []string{"web"}},
		model.PolicyKey("team-a", "knp.default-deny"): model.Policy{Name: "knp.default-deny", Namespace: "team-a", Selector: "",
			Types: []string{model.PolicyIngress}, Owner: "k8s"},
	} {
		if err := store.PutJSON(ctx, e.kv, k, v); err != nil {
			t.Fatal(err)
		}
	}
	direct := `,"ipv4_pools":["10.0.0.0/16"]`
	_, ip1 := b.add(h1, "c1", "TABBY_WORKLOAD=c1;TABBY_LABELS=app=web,tier=front", e.conf(h1, "", `,"profiles":["web"]`, direct))
	b.add(h2, "c2", "TABBY_WORKLOAD=c2;TABBY_PROFILES=db", e.conf(h2, "", "", `,"assign_ipv6":true,"ipv4_pools":["10.1.0.0/16"]`))
	b.add(h1, "web0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0;K8S_POD_UID=uid-web-0;K8S_POD_INFRA_CONTAINER_ID=ctr-web-0",
		e.conf(h1, "", `,"k8s_pod_record_required":true`, direct))
	// An address of host1's block held by host2 (borrowed).
	borrowed := net.ParseIP(ip1).To4()
	borrowed[3] += 5
	b.add(h2, "borrow", "TABBY_WORKLOAD=borrow;IP="+borrowed.String(), e.conf(h2, "", `,"profiles":["web","db"]`, ""))

	kvs, _, err := e.kv.List(ctx, model.Prefix, false)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.WriteString("[\n")
	for i, kv := range kvs {
		k, _ := json.Marshal(kv.Key)
		var v bytes.Buffer
		if err := json.Compact(&v, kv.Value); err != nil {
			t.Fatalf("%s is not JSON: %v", kv.Key, err)
		}
		sep := ","
		if i == len(kvs)-1 {
			sep = ""
		}
		fmt.Fprintf(&buf, "{\"key\":%s,\"value\":%s}%s\n", k, v.Bytes(), sep)
	}
	buf.WriteString("]\n")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "records.json"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("%s\nwritten %s by TestWriteFixtureV1 (test/e2e/upgrade_fixture_test.go) with the binaries of that commit: %d keys\n",
		commit, time.Now().UTC().Format(time.RFC3339), len(kvs))
	if err := os.WriteFile(filepath.Join(out, "SOURCE"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d records to %s", len(kvs), out)
}
