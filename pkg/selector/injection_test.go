package selector

import (
	"strings"
	"testing"
)

// Attempts to smuggle text into what a node builds from selectors and
// labels (they never reach iptables-restore or ipset input as text, but
// the boundary refuses them anyway, with an error that says what is wrong).
var injections = []string{
	"\n-A INPUT -j ACCEPT", "\r", "\x00", " -A INPUT", ";x", "'x'", `"x"`, "$(x)", "`x`", "#x", "\\x", "\t", " ",
}

func TestParseRefusesInjection(t *testing.T) {
	for _, inj := range injections {
		for _, sel := range []string{"app=web" + inj, "app" + inj + "=web", "app in (a," + "b" + inj + ")", "!" + "app" + inj, inj + "app=web"} {
			if inj == " " || inj == "\t" {
				continue // blanks around words and operators are syntax, as in Kubernetes
			}
			if _, err := Parse(sel); err == nil {
				t.Errorf("Parse(%q) accepted", sel)
			}
		}
	}
}

func TestValidLabelsRefusesInjection(t *testing.T) {
	for _, inj := range injections {
		for _, labels := range []map[string]string{{"app": "web" + inj}, {"app" + inj: "web"}, {"p.io/app" + inj: "x"}, {inj + "p.io/app": "x"}} {
			err := ValidLabels(labels)
			if err == nil {
				t.Errorf("ValidLabels(%q) accepted", labels)
				continue
			}
			if !strings.Contains(err.Error(), "label") {
				t.Errorf("ValidLabels(%q): %v does not say which label", labels, err)
			}
		}
	}
}
