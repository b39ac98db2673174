package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// The README's example policy, and a global one, in one YAML stream.
const examplePolicies = `# the README's example
name: allow-web
namespace: team-a
order: 100
selector: app=web
types: [ingress]
ingress:
  - ports:
      - protocol: tcp
        port: 80
    peers:
      - selector: role=frontend
        namespaceSelector: team=a
      - cidr: 192.0.2.0/24
        except: [192.0.2.128/25]
---
name: default-deny
selector: ""
types: [ingress, egress]
`

type ctlT struct {
	t   *testing.T
	url string
	dir string
}

func (c ctlT) ok(args ...string) string {
	c.t.Helper()
	code, out, errs := runCtl(c.t, c.url, args...)
	if code != 0 {
		c.t.Fatalf("tabbyctl %v: exit %d: %s%s", args, code, out, errs)
	}
	return out
}

func (c ctlT) fail(want int, msgs []string, args ...string) {
	c.t.Helper()
	code, out, errs := runCtl(c.t, c.url, args...)
	if code != want {
		c.t.Fatalf("tabbyctl %v: exit %d (want %d): %s%s", args, code, want, out, errs)
	}
	for _, m := range msgs {
		if !strings.Contains(errs, m) {
			c.t.Fatalf("tabbyctl %v: stderr %q lacks %q", args, errs, m)
		}
	}
}

func (c ctlT) file(name, content string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// withStdin runs fn with os.Stdin reading s.
func withStdin(t *testing.T, s string, fn func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() { w.WriteString(s); w.Close() }()
	old := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = old; r.Close() }()
	fn()
}

func TestPolicyAddShowRemove(t *testing.T) {
	e := etcdtest.Start(t)
	c := ctlT{t: t, url: e.URL, dir: t.TempDir()}

	out := c.ok("policy", "add", "-f", c.file("p.yaml", examplePolicies))
	if out != "policy team-a/allow-web created\npolicy default-deny (global) created\n" {
		t.Fatalf("add:\n%s", out)
	}
	// Without flags: the global policies.
	out = c.ok("policy", "show")
	if !strings.Contains(out, "default-deny") || strings.Contains(out, "allow-web") ||
		!strings.Contains(out, "NAMESPACE  NAME          ORDER  SELECTOR  TYPES           INGRESS-RULES  EGRESS-RULES  OWNER") {
		t.Fatalf("policy show:\n%s", out)
	}
	out = c.ok("policy", "show", "--all-namespaces")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "(global)") || !strings.Contains(lines[1], "(all)") ||
		!strings.Contains(lines[1], "ingress,egress") || strings.Join(strings.Fields(lines[2]), " ") != "team-a allow-web 100 app=web ingress 1 0 -" {
		t.Fatalf("policy show --all-namespaces (evaluation order):\n%s", out)
	}
	out = c.ok("policy", "show", "--namespace", "team-a")
	if !strings.Contains(out, "allow-web") || strings.Contains(out, "default-deny") {
		t.Fatalf("policy show --namespace team-a:\n%s", out)
	}

	// -o yaml of one policy and -o json of all read back as they are.
	y := c.ok("policy", "show", "allow-web", "--namespace", "team-a", "-o", "yaml")
	var got model.Policy
	if err := yaml.UnmarshalStrict([]byte(y), &got); err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	want, _, err := decodePolicies([]byte(examplePolicies))
	if err != nil {
		t.Fatal(err)
	}
	if err := want[0].Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want[0]) {
		t.Fatalf("stored %+v\nwant %+v", got, want[0])
	}
	if out := c.ok("policy", "add", "-f", c.file("one.yaml", y)); out != "policy team-a/allow-web unchanged\n" {
		t.Fatalf("add of show -o yaml: %s", out)
	}
	j := c.ok("policy", "show", "--all-namespaces", "-o", "json")
	if out := c.ok("policy", "add", "-f", c.file("all.json", j)); out != "policy default-deny (global) unchanged\npolicy team-a/allow-web unchanged\n" {
		t.Fatalf("add of show -o json: %s", out)
	}
	ya := c.ok("policy", "show", "--all-namespaces", "-o", "yaml")
	if out := c.ok("policy", "add", "-f", c.file("all.yaml", ya)); strings.Count(out, "unchanged") != 2 {
		t.Fatalf("add of show -o yaml: %s", out)
	}

	// A change from stdin, in JSON.
	p := want[0]
	p.Order = 50
	b, _ := json.Marshal(p)
	withStdin(t, string(b), func() {
		if out := c.ok("policy", "add", "-f", "-"); out != "policy team-a/allow-web replaced\n" {
			t.Fatalf("add -f -: %s", out)
		}
	})
	if out := c.ok("policy", "show", "allow-web", "--namespace", "team-a"); !strings.Contains(out, " 50 ") {
		t.Fatalf("after replace:\n%s", out)
	}
	if out := c.ok("policy", "show", "allow-web", "--all-namespaces", "-o", "json"); !strings.HasPrefix(out, "[") || !strings.Contains(out, `"order": 50`) {
		t.Fatalf("show NAME --all-namespaces: %s", out)
	}

	c.fail(1, []string{"policy allow-web (global) does not exist", "--namespace"}, "policy", "show", "allow-web")
	c.fail(1, []string{"policy nope (global) does not exist"}, "policy", "remove", "nope")
	c.fail(1, []string{"policy team-a/nope does not exist"}, "policy", "remove", "nope", "--namespace", "team-a")
	c.fail(2, []string{"not both"}, "policy", "show", "--namespace", "a", "--all-namespaces")
	c.fail(2, []string{"-f FILE is required"}, "policy", "add")
	c.fail(2, []string{"not a valid namespace"}, "policy", "show", "--namespace", "_")
	c.fail(1, []string{"no such file"}, "policy", "add", "-f", filepath.Join(c.dir, "missing.yaml"))

	c.ok("policy", "remove", "default-deny")
	c.ok("policy", "remove", "allow-web", "--namespace", "team-a")
	if out := c.ok("policy", "show", "--all-namespaces", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("after remove: %s", out)
	}
}

// A file with any invalid policy writes none, and the error names the file,
// the policy and what is wrong.
func TestPolicyAddValidation(t *testing.T) {
	e := etcdtest.Start(t)
	c := ctlT{t: t, url: e.URL, dir: t.TempDir()}
	good := "- name: good\n  selector: app=a\n"
	cases := []struct {
		name, body string
		msgs       []string
	}{
		{"sel.yaml", good + "- name: bad\n  namespace: ns1\n  selector: 'app in (a'\n", []string{"sel.yaml: item 2 (namespace ns1): policy bad:"}},
		{"port.yaml", good + "- name: bad\n  selector: ''\n  ingress:\n  - ports: [{protocol: tcp, port: 70000}]\n", []string{"port.yaml: item 2: policy bad: ingress rule 1: port 70000"}},
		{"cidr.yaml", good + "- name: bad\n  selector: ''\n  egress:\n  - peers: [{cidr: 10.0.0.0/8, selector: a=b}]\n", []string{"policy bad: egress rule 1: peer 1: give a CIDR or selectors, not both"}},
		{"except.json", `[{"name":"good","selector":""},{"name":"bad","selector":"","ingress":[{"peers":[{"except":["10.0.0.0/8"]}]}]}]`, []string{"except.json: item 2: policy bad: ingress rule 1: peer 1: except needs a CIDR"}},
		{"type.yaml", good + "---\nname: bad\nselector: ''\ntypes: [sideways]\n", []string{"type.yaml: document 2: policy bad: type \"sideways\""}},
		{"typo.yaml", good + "- name: bad\n  selecter: app=a\n", []string{"typo.yaml: item 2: policy bad:", `unknown field "selecter"`}},
		{"kind.yaml", good + "- name: bad\n  selector: ''\n  order: first\n", []string{"kind.yaml: item 2: policy bad:", "order"}},
		{"dup.yaml", good + good, []string{"dup.yaml: item 2: policy good (global) is given twice (also at item 1)"}},
		{"noname.yaml", good + "- selector: ''\n", []string{"noname.yaml: item 2: policy name: empty name"}},
		{"ns.yaml", good + "- name: x\n  namespace: _\n  selector: ''\n", []string{`namespace "_" is not a valid name`}},
		{"empty.yaml", "# nothing\n", []string{"holds no policy"}},
		{"scalar.yaml", "just words\n", []string{"want a policy (a mapping) or a list of policies"}},
	}
	for _, tc := range cases {
		path := c.file(tc.name, tc.body)
		c.fail(1, tc.msgs, "policy", "add", "-f", path)
		if out := c.ok("policy", "show", "--all-namespaces", "-o", "json"); strings.TrimSpace(out) != "[]" {
			t.Fatalf("%s: a failed add wrote: %s", tc.name, out)
		}
	}
	withStdin(t, "- name: bad\n  selector: '=x'\n", func() {
		c.fail(1, []string{"stdin: item 1: policy bad:"}, "policy", "add", "-f", "-")
	})
}

// A policy the Kubernetes controller owns is neither overwritten nor removed
// without --force, and a file holding one writes nothing.
func TestPolicyK8sOwned(t *testing.T) {
	e := etcdtest.Start(t)
	c := ctlT{t: t, url: e.URL, dir: t.TempDir()}
	kv, err := etcdv3.New(store.Config{Endpoints: []string{e.URL}})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	np := model.Policy{Name: "np-web", Namespace: "team-a", Selector: "app=web", Types: []string{"ingress"}, Owner: ownerK8s}
	if err := store.PutJSON(context.Background(), kv, model.PolicyKey("team-a", "np-web"), np); err != nil {
		t.Fatal(err)
	}
	if out := c.ok("policy", "show", "--namespace", "team-a"); !strings.Contains(out, " k8s") {
		t.Fatalf("owner column:\n%s", out)
	}
	edit := "- name: mine\n  namespace: team-a\n  selector: ''\n- name: np-web\n  namespace: team-a\n  selector: app=db\n"
	path := c.file("edit.yaml", edit)
	c.fail(1, []string{"policy team-a/np-web is owned by k8s", "NetworkPolicy", "--force overwrites it"}, "policy", "add", "-f", path)
	if out := c.ok("policy", "show", "--all-namespaces"); strings.Contains(out, "mine") || !strings.Contains(out, "app=web") {
		t.Fatalf("a refused add wrote:\n%s", out)
	}
	c.fail(1, []string{"policy team-a/np-web is owned by k8s", "--force removes it"}, "policy", "remove", "np-web", "--namespace", "team-a")
	if out := c.ok("policy", "add", "-f", path, "--force"); out != "policy team-a/mine created\npolicy team-a/np-web replaced\n" {
		t.Fatalf("add --force: %s", out)
	}
	if out := c.ok("policy", "show", "np-web", "--namespace", "team-a"); !strings.Contains(out, "app=db") {
		t.Fatalf("after add --force:\n%s", out)
	}
	// The owner came from the file (none): an operator's policy now.
	c.ok("policy", "remove", "np-web", "--namespace", "team-a")
	if err := store.PutJSON(context.Background(), kv, model.PolicyKey("team-a", "np-web"), np); err != nil {
		t.Fatal(err)
	}
	c.ok("policy", "remove", "np-web", "--namespace", "team-a", "--force")
	if out := c.ok("policy", "show", "--namespace", "team-a", "-o", "yaml"); !strings.Contains(out, "name: mine") || strings.Contains(out, "np-web") {
		t.Fatalf("after remove --force:\n%s", out)
	}
}

func TestContainerShowLabels(t *testing.T) {
	e := etcdtest.Start(t)
	c := ctlT{t: t, url: e.URL}
	kv, err := etcdv3.New(store.Config{Endpoints: []string{e.URL}})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	eps := []model.Endpoint{
		{Host: "h1", Orchestrator: model.OrchestratorK8s, Workload: "team-a.web-1", Name: "eth0", HostInterface: "tby1", IPv4Nets: []string{"10.0.0.1/32"},
			Profiles: []string{"k8s_ns.team-a"}, Namespace: "team-a", Labels: map[string]string{"tier": "front", "app": "web"}},
		{Host: "h1", Orchestrator: model.OrchestratorCNI, Workload: "conA", Name: "eth0", HostInterface: "tby2", IPv4Nets: []string{"10.0.0.2/32"}},
	}
	for i := range eps {
		if err := store.PutJSON(context.Background(), kv, eps[i].Key(), &eps[i]); err != nil {
			t.Fatal(err)
		}
	}
	out := c.ok("container", "show", "--labels")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME NAMESPACE HOST ADDRESSES INTERFACE PROFILES LABELS" ||
		strings.Join(strings.Fields(lines[1]), " ") != "conA - h1 10.0.0.2/32 tby2 - -" ||
		strings.Join(strings.Fields(lines[2]), " ") != "team-a/web-1 team-a h1 10.0.0.1/32 tby1 k8s_ns.team-a app=web,tier=front" {
		t.Fatalf("container show --labels:\n%s", out)
	}
	if out := c.ok("container", "show"); strings.Contains(out, "LABELS") || strings.Contains(out, "app=web") {
		t.Fatalf("container show:\n%s", out)
	}
	var recs []model.Endpoint
	if err := json.Unmarshal([]byte(c.ok("container", "show", "--labels", "-o", "json")), &recs); err != nil || len(recs) != 2 ||
		recs[1].Labels["tier"] != "front" || recs[1].Namespace != "team-a" {
		t.Fatalf("container show -o json: %+v %v", recs, err)
	}
	if y := c.ok("container", "show", "-o", "yaml"); !strings.Contains(y, "tier: front") {
		t.Fatalf("container show -o yaml:\n%s", y)
	}
}

// YAML streams, JSON streams and lists all decode, and errors say where.
func TestDecodePolicies(t *testing.T) {
	for _, in := range []string{
		"---\nname: a\nselector: ''\n---\n---\nname: b\nselector: ''\n",
		"- name: a\n  selector: ''\n- name: b\n  selector: ''\n",
		`{"name":"a","selector":""} {"name":"b","selector":""}`,
		"[{\"name\":\"a\",\"selector\":\"\"},\n\t{\"name\":\"b\",\"selector\":\"\"}]",
		"name: a\nselector: ''\n--- # next\n[{name: b, selector: ''}]\n",
	} {
		ps, _, err := decodePolicies([]byte(in))
		if err != nil || len(ps) != 2 || ps[0].Name != "a" || ps[1].Name != "b" {
			t.Fatalf("%q: %+v %v", in, ps, err)
		}
	}
	if _, _, err := decodePolicies([]byte("name: a\n---\n- name: b\n- {name: c, bogus: 1}\n")); err == nil || !strings.Contains(err.Error(), "document 2, item 2: policy c:") {
		t.Fatalf("error: %v", err)
	}
}

// Whatever decodes and validates survives the round trip through the YAML
// that 'policy show -o yaml' prints, unchanged.
func FuzzDecodePolicies(f *testing.F) {
	f.Add(examplePolicies)
	f.Add(`[{"name":"a","selector":"x notin (1,2),!y","ingress":[{"ports":[{"protocol":"UDP","port":53,"endPort":54},{"name":"dns"}]}]}]`)
	f.Add("name: a\nselector: ''\negress: [{peers: [{cidr: 10.1.2.3/8, except: [10.1.0.0/16]}]}]\n")
	f.Fuzz(func(t *testing.T, in string) {
		ps, _, err := decodePolicies([]byte(in))
		if err != nil {
			return
		}
		var valid []model.Policy
		for _, p := range ps {
			if p.Validate() == nil {
				valid = append(valid, p)
			}
		}
		if len(valid) == 0 {
			return
		}
		y, err := yaml.Marshal(valid)
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := decodePolicies(y)
		if err != nil {
			t.Fatalf("%v\n%s", err, y)
		}
		for i := range back {
			if err := back[i].Validate(); err != nil {
				t.Fatalf("%v\n%s", err, y)
			}
		}
		if !reflect.DeepEqual(json.RawMessage(store.MustJSON(back)), json.RawMessage(store.MustJSON(valid))) {
			t.Fatalf("round trip changed:\n%s\n%s", store.MustJSON(valid), store.MustJSON(back))
		}
	})
}
