package netconf

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/pkg/cnierr"
)

// Labels, profile and workload names that try to carry text of their own
// (a newline and a rule, quotes, a shell substitution, a second CNI_ARGS
// pair) are refused with code 7 at the boundary, from CNI_ARGS and from the
// netconf's args alike.
func TestArgsRefuseInjection(t *testing.T) {
	bad := []string{"x\n-A INPUT -j ACCEPT", "x -A INPUT", `x"y`, "x'y", "$(x)", "`x`", "x#y", "x\ty", "x\x00y"}
	for _, inj := range bad {
		for _, args := range []string{
			"TABBY_LABELS=app=" + inj,
			"TABBY_LABELS=" + inj + "=web",
			"TABBY_LABELS=app=web," + inj,
		} {
			_, err := ParseArgs(args, nil)
			if code(err) != cnierr.BadArgs || !strings.Contains(err.Error(), "label") {
				t.Errorf("%q: %v, want code 7 naming the label", args, err)
			}
		}
		lv, _ := json.Marshal(map[string]map[string]map[string]string{"tabby": {"labels": {"app": inj}}})
		c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tabby","args":` + string(lv) + `}`))
		if err == nil {
			_, err = ParseArgs("", c)
		}
		if code(err) != cnierr.BadArgs && code(err) != cnierr.BadConfig {
			t.Errorf("args.tabby.labels %q: %v, want code 7 (or 4)", inj, err)
		}
	}
	// Names go into etcd keys: no slash, blank or control byte, and the
	// separator of CNI_ARGS cannot hide a second key.
	for _, args := range []string{"TABBY_PROFILES=a\nb", "TABBY_PROFILES=a b", "TABBY_PROFILES=../x", "TABBY_WORKLOAD=w\n-A", "TABBY_WORKLOAD=a/b",
		"TABBY_LABELS=app=web;-A INPUT"} {
		if _, err := ParseArgs(args, nil); code(err) != cnierr.BadArgs {
			t.Errorf("%q: %v, want code 7", args, err)
		}
	}
}
