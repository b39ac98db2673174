package selector

import (
	"strings"
	"testing"
)

func TestParseAndMatch(t *testing.T) {
	web := map[string]string{"app": "web", "tier": "front"}
	db := map[string]string{"app": "db", "debug": ""}
	none := map[string]string{}
	for _, c := range []struct {
		sel       string
		canonical string
		web, db   bool
		none      bool
	}{
		{"", "", true, true, true},
		{"app=web", "app=web", true, false, false},
		{"app == web", "app=web", true, false, false},
		{"app!=web", "app!=web", false, true, true},
		{"tier in (front, back)", "tier in (back,front)", true, false, false},
		{"tier notin (front)", "tier notin (front)", false, true, true},
		{"debug", "debug", false, true, false},
		{"!debug", "!debug", true, false, true},
		{"app in (web,db), !debug", "app in (db,web),!debug", true, false, false},
		{"tier=front,app=web,app=web", "app=web,tier=front", true, false, false},
		{"example.com/team=a", "example.com/team=a", false, false, false},
		{"app=", "app=", false, false, false},
		{"debug in ()", "debug in ()", false, true, false},
		{"debug in (,)", "debug in ()", false, true, false},
	} {
		s, err := Parse(c.sel)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.sel, err)
		}
		if s.String() != c.canonical {
			t.Errorf("Parse(%q).String() = %q, want %q", c.sel, s.String(), c.canonical)
		}
		if got := s.Matches(web); got != c.web {
			t.Errorf("%q matches web = %v", c.sel, got)
		}
		if got := s.Matches(db); got != c.db {
			t.Errorf("%q matches db = %v", c.sel, got)
		}
		if got := s.Matches(none); got != c.none {
			t.Errorf("%q matches {} = %v", c.sel, got)
		}
		again, err := Parse(s.String())
		if err != nil || again.String() != s.String() {
			t.Errorf("canonical %q does not read back: %v %q", s.String(), err, again.String())
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ sel, want string }{
		{"app in web", "want '('"},
		{"app in (a", "want ',' or ')'"},
		{"app like x", "want =, ==, !=, in or notin"},
		{"app=web;x", "not allowed"},
		{"app=web x=y", "want ','"},
		{"-app=x", "start and end"},
		{"a b", "want =, ==, !=, in or notin"},
		{"app=" + strings.Repeat("x", 64), "1..63"},
		{"UPPER.example/x=y", "not a DNS subdomain"},
		{"!", "want a label key"},
		{",", "want a label key"},
		{"x=\"a\"", "not allowed"},
	} {
		_, err := Parse(c.sel)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", c.sel, err, c.want)
		}
	}
}

func TestFromMapAndAnd(t *testing.T) {
	s, err := FromMap(map[string]string{"b": "2", "a": "1"})
	if err != nil || s.String() != "a=1,b=2" {
		t.Fatalf("FromMap = %q, %v", s, err)
	}
	if got := s.And(MustParse("!c")).String(); got != "a=1,b=2,!c" {
		t.Fatalf("And = %q", got)
	}
	if _, err := FromMap(map[string]string{"a": "x y"}); err == nil {
		t.Fatal("a value with a space passed")
	}
	if _, err := New(Requirement{Key: "a", Op: In}); err == nil {
		t.Fatal("in without values passed")
	}
}

// Whatever the input, Parse either refuses it or gives a selector whose
// canonical text reads back to itself and holds only safe characters.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "app=web", "a in (b,c),!d", "x notin (y)", "k", "a!=b", "p.io/k==v"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := Parse(text)
		if err != nil {
			return
		}
		c := s.String()
		again, err := Parse(c)
		if err != nil || again.String() != c {
			t.Fatalf("%q -> %q does not read back: %v %q", text, c, err, again.String())
		}
		for _, r := range c {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=!,() ", r)) {
				t.Fatalf("%q -> %q holds %q", text, c, r)
			}
		}
	})
}
