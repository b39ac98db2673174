package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The README's reference is generated from the command table; a stale copy fails.
func TestREADMEReferenceIsCurrent(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), markdown(commands())) {
		t.Fatal("README.md's tabbyctl reference is stale: run 'make docs'")
	}
}

// The README's example policy is one that 'policy add' takes.
func TestREADMEPolicyExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Policies and selectors\n")
	if !ok {
		t.Fatal("README.md has no section Policies and selectors")
	}
	_, ex, ok := strings.Cut(sec, "```yaml\n")
	ex, _, ok2 := strings.Cut(ex, "```")
	if !ok || !ok2 {
		t.Fatal("Policies and selectors has no YAML example")
	}
	ps, _, err := decodePolicies([]byte(ex))
	if err != nil || len(ps) != 1 {
		t.Fatalf("README example: %v %v", ps, err)
	}
	if err := ps[0].Validate(); err != nil {
		t.Fatalf("README example: %v", err)
	}
	want, _, _ := decodePolicies([]byte(examplePolicies))
	_ = want[0].Validate()
	if !reflect.DeepEqual(ps[0], want[0]) {
		t.Fatalf("the README example and the tests' differ:\n%+v\n%+v", ps[0], want[0])
	}
}
