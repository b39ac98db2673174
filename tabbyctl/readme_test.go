package main

import (
	"os"
	"path/filepath"
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
