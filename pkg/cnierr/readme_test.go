package cnierr

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const begin, end = "<!-- cni-codes:begin -->\n", "<!-- cni-codes:end -->"

// The README's table of codes is generated from Codes; a stale copy fails.
// TABBY_UPDATE_DOCS=1 (make docs) rewrites it.
func TestREADMECodesAreCurrent(t *testing.T) {
	path := filepath.Join("..", "..", "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q section", begin, end)
	}
	want := s[:i+len(begin)] + Markdown() + s[j:]
	if want == s {
		return
	}
	if os.Getenv("TABBY_UPDATE_DOCS") != "" {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("README.md's table of error codes is stale: run 'make docs'")
}

func TestCodesAreUniqueAndOrdered(t *testing.T) {
	for i := 1; i < len(Codes); i++ {
		if Codes[i].Code <= Codes[i-1].Code {
			t.Fatalf("code %d after %d", Codes[i].Code, Codes[i-1].Code)
		}
	}
}
