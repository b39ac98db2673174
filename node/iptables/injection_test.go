package iptables

import (
	"strings"
	"testing"

	"github.com/tabby-net/tabby/node/internal/nstest"
)

// What an attacker would put into a name, label, interface or address to
// reach iptables-restore's or ipset restore's input as text of its own.
var injections = []string{
	"x\n-A INPUT -j ACCEPT",
	"x\r\nCOMMIT",
	"x\x00y",
	"10.0.0.1 timeout 0",
	"10.0.0.1\nflush",
	"10.0.0.1,tby1\"",
	"10.0.0.1,tby1'",
	"10.0.0.1 # comment",
	"",
}

// A rule or chain name spanning lines is refused before iptables-restore
// runs: the kernel's tables are as they were, with no TABBY chain and no
// rule of the attacker's.
func TestApplyRefusesInjection(t *testing.T) {
	nstest.Run(t, func() {
		b, ipt := detect4(t)
		for _, bad := range injections[:3] {
			for _, tbl := range []Table{
				{Name: "filter", Chains: []Chain{{Name: "TABBY-FORWARD", Rules: []string{"-s 10.0.0.1/32 -j DROP", "-j " + bad}}}},
				{Name: "filter", Chains: []Chain{{Name: "TABBY-" + bad, Rules: []string{"-j DROP"}}}},
			} {
				err := b.Apply(tbl)
				if err == nil || !strings.Contains(err.Error(), "refused") {
					t.Errorf("Apply with %q: %v, want refused", bad, err)
				}
			}
		}
		if save := sh(t, ipt+"-save", "-t", "filter"); strings.Contains(save, "TABBY") || strings.Contains(save, "-A INPUT") {
			t.Fatalf("after refused applies:\n%s", save)
		}
	})
}

// A set name, type or member that is not one word of `ipset restore`'s
// input is refused, and a sync that holds one changes no set at all.
func TestSyncSetsRefusesInjection(t *testing.T) {
	nstest.Run(t, func() {
		var sets Sets
		good := Set{Name: "tabby-good", Type: "hash:net,iface", Family: V4, Members: []string{"10.0.0.1/32,tby1"}}
		if _, err := sets.Sync(good); err != nil {
			t.Fatal(err)
		}
		grown := good
		grown.Members = []string{"10.0.0.1/32,tby1", "10.0.0.2/32,tby2"}
		for _, bad := range injections {
			for _, s := range []Set{
				{Name: "tabby-bad", Type: "hash:net,iface", Family: V4, Members: []string{bad}},
				{Name: "tabby-bad", Type: "hash:net,iface", Family: V4, Members: []string{"10.0.0.3/32," + bad}},
			} {
				if bad == "" && strings.HasSuffix(s.Members[0], ",") {
					continue // "10.0.0.3/32," is one word; the kernel refuses it on its own
				}
				if _, err := sets.Sync(grown, s); err == nil || !strings.Contains(err.Error(), "refused") {
					t.Errorf("Sync with member %q: %v, want refused", s.Members[0], err)
				}
			}
			if bad == "" {
				continue
			}
			if _, err := sets.Sync(Set{Name: "tabby-" + bad, Type: "hash:net", Family: V4}); err == nil {
				t.Errorf("Sync of set named %q accepted", "tabby-"+bad)
			}
			if _, err := sets.Sync(Set{Name: "tabby-t", Type: "hash:net " + bad, Family: V4}); err == nil {
				t.Errorf("Sync of type %q accepted", "hash:net "+bad)
			}
		}
		if m, _ := currentMembers("tabby-good"); len(m) != 1 {
			t.Fatalf("tabby-good changed by refused syncs: %v", m)
		}
		if names, _ := sets.List(); len(names) != 1 {
			t.Fatalf("sets after refused syncs: %v", names)
		}
	})
}
