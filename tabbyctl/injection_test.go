package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/pkg/etcdtest"
)

// Selectors, labels and names that try to carry text of their own are
// refused by tabbyctl with an error naming the file, the item and what is
// wrong, and nothing is written.
func TestPolicyAddRefusesInjection(t *testing.T) {
	e := etcdtest.Start(t)
	c := ctlT{t: t, url: e.URL, dir: t.TempDir()}
	for i, inj := range []string{"\n-A INPUT -j ACCEPT", " -A INPUT", ";x", "'x'", `"x"`, "$(x)", "#x", "\x00"} {
		for _, p := range []map[string]any{
			{"name": "p", "selector": "app=web" + inj},
			{"name": "p", "selector": "", "ingress": []any{map[string]any{"peers": []any{map[string]any{"selector": "role=db" + inj}}}}},
			{"name": "p", "selector": "", "egress": []any{map[string]any{"peers": []any{map[string]any{"namespaceSelector": "team" + inj}}}}},
			{"name": "p", "selector": "", "ingress": []any{map[string]any{"ports": []any{map[string]any{"protocol": "tcp", "name": "http" + inj}}}}},
			{"name": "p" + inj, "selector": ""},
		} {
			b, _ := json.Marshal([]any{map[string]any{"name": "good", "selector": "app=a"}, p})
			path := c.file("inj.json", string(b))
			c.fail(1, []string{"inj.json: item 2"}, "policy", "add", "-f", path)
			if out := c.ok("policy", "show", "--all-namespaces", "-o", "json"); strings.TrimSpace(out) != "[]" {
				t.Fatalf("case %d %q: a refused add wrote: %s", i, inj, out)
			}
		}
	}
}

func TestNamesRefuseInjection(t *testing.T) {
	e := etcdtest.Start(t)
	c := ctlT{t: t, url: e.URL, dir: t.TempDir()}
	c.ok("profile", "add", "P")
	for _, inj := range []string{"x\n-A", "x y", "a/b", "x\x00"} {
		c.fail(2, []string{"name"}, "profile", "add", inj)
		c.fail(2, nil, "profile", "P", "rule", "add", "inbound", "allow", "from", "tag", inj)
	}
	if out := c.ok("profile", "show", "-o", "json"); strings.Count(out, `"name"`) != 1 {
		t.Fatalf("profiles after refused adds: %s", out)
	}
	if out := c.ok("profile", "P", "rule", "show"); strings.Contains(out, "x") {
		t.Fatalf("rules after refused adds: %s", out)
	}
}
