package policy

import (
	"strings"
	"testing"

	"github.com/tabby-net/tabby/node/internal/nstest"
	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/pkg/model"
)

func sample() Input {
	a := model.DefaultProfile("PROF_A")
	a.Inbound = append([]model.Rule{{Action: "deny", Protocol: "tcp", DstPorts: "80", SrcTag: "X"}}, a.Inbound...)
	a.Outbound = append([]model.Rule{{Action: "deny", DstNet: "198.51.100.0/24", Protocol: "icmp"}, {Action: "allow", DstNet: "fd00:9::/64"}}, a.Outbound...)
	return Input{
		Endpoints: []model.Endpoint{
			{HostInterface: "tby0123456789a", ContainerID: "c1", MAC: "0a:58:0a:00:00:01", IPv4Nets: []string{"10.0.0.1/32"}, IPv6Nets: []string{"fd00::1/128"}, Profiles: []string{"PROF_A", "MISSING"}},
			{HostInterface: "tbyf123456789a", ContainerID: "c2", MAC: "0a:58:0a:00:00:02", IPv4Nets: []string{"10.0.0.2/32"}},
			{HostInterface: "tby0fffffffffa", ContainerID: "c3", IPv4Nets: []string{"10.0.0.3/32"}}, // no profile
		},
		Profiles:  map[string]model.Profile{"PROF_A": a, "UNUSED": model.DefaultProfile("UNUSED")},
		Tags:      map[string][]string{"PROF_A": {"10.0.0.1/32", "10.9.0.7/32", "fd00::1/128"}, "X": {"10.0.5.5/32"}},
		HostPorts: []HostPort{{Protocol: "udp", Port: 53}},
	}
}

func TestRenderShape(t *testing.T) {
	out := Render(sample())
	if strings.Join(out.Tags, ",") != "PROF_A,X" {
		t.Fatalf("tags %v", out.Tags)
	}
	// 2 tags and 2 policy groups (PROF_A+MISSING, none), per family.
	if len(out.Sets) != 8 || out.Ready["tbyf123456789a"] != "c2" {
		t.Fatalf("sets %d ready %v", len(out.Sets), out.Ready)
	}
	chains := map[string][]string{}
	for _, c := range out.Filter4.Chains {
		chains[c.Name] = c.Rules
	}
	if _, ok := chains[profileChain("UNUSED", inbound)]; ok {
		t.Fatal("a profile no local endpoint uses got chains")
	}
	// A group's chain: its defined profiles in order (MISSING skipped), drop.
	a := groupID([]string{"PROF_A", "MISSING"})
	fw := chains[groupChain(a, outbound)]
	if len(fw) != 4 || fw[1] != "-j "+profileChain("PROF_A", outbound) || fw[3] != "-j DROP" {
		t.Fatalf("group from chain %q", fw)
	}
	// A workload with no profile: its group's chain drops everything.
	if fp := chains[groupChain(groupID(nil), outbound)]; len(fp) != 2 || fp[1] != "-j DROP" {
		t.Fatalf("no-profile chain %q", fp)
	}
	// Dispatch: a rule per group matching (address, interface), fail closed.
	top := chains[ChainFromWL]
	if len(top) != 3 || top[len(top)-1] != "-j DROP" || !strings.Contains(strings.Join(top, "\n"), "--match-set "+GroupSetName(a, iptables.V4)+" src,src -g "+groupChain(a, outbound)) {
		t.Fatalf("dispatch %q", top)
	}
	// Anti-spoofing is membership: the member is the address on its interface.
	for _, s := range out.Sets {
		if s.Name == GroupSetName(a, iptables.V4) && (len(s.Members) != 1 || s.Members[0] != "10.0.0.1/32,tby0123456789a") {
			t.Fatalf("group set %+v", s)
		}
	}
	// The v6 table skips the v4-only CIDR rule and keeps the v6 one.
	po6 := strings.Join(func() []string {
		for _, c := range out.Filter6.Chains {
			if c.Name == profileChain("PROF_A", outbound) {
				return c.Rules
			}
		}
		return nil
	}(), "\n")
	if strings.Contains(po6, "198.51.100.0") || !strings.Contains(po6, "fd00:9::/64") {
		t.Fatalf("v6 outbound:\n%s", po6)
	}
}

// The rendered rules load into both iptables families, and read back equal
// to what was rendered: a second Apply changes nothing.
func TestRenderedRulesApplyAndAreCanonical(t *testing.T) {
	nstest.Run(t, func() {
		applyTwice(t, Render(sample()), nil)
	})
}

// applyTwice loads out's sets and both families' filter tables into the
// kernel, then again: the second time must change nothing. loaded (nil:
// none) sees each family's backend and table after the first Apply.
func applyTwice(t *testing.T, out Output, loaded func(f iptables.Family, b *iptables.Backend, tab iptables.Table)) {
	t.Helper()
	var sets iptables.Sets
	if _, err := sets.Sync(out.Sets...); err != nil {
		t.Fatal(err)
	}
	if n, err := sets.Sync(out.Sets...); err != nil || n != 0 {
		t.Fatalf("re-syncing unchanged sets rewrote %d (%v)", n, err)
	}
	for _, fam := range []struct {
		f iptables.Family
		t iptables.Table
	}{{iptables.V4, out.Filter4}, {iptables.V6, out.Filter6}} {
		b, err := iptables.Detect(fam.f)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(fam.t); err != nil {
			t.Fatal(err)
		}
		if loaded != nil {
			loaded(fam.f, b, fam.t)
		}
		before := b.Changes
		if err := b.Apply(fam.t); err != nil {
			t.Fatal(err)
		}
		if b.Changes != before {
			for _, c := range fam.t.Chains {
				have, _ := b.Rules("filter", c.Name)
				if strings.Join(have, "\n") != strings.Join(c.Rules, "\n") {
					t.Errorf("chain %s reads back as\n%s\nnot\n%s", c.Name, strings.Join(have, "\n"), strings.Join(c.Rules, "\n"))
				}
			}
			t.Fatalf("IPv%d: re-applying unchanged rules rewrote chains", fam.f)
		}
	}
}

// Set names are kernel state that outlives a restart: the same tag must
// name the same set after an upgrade, or every set is rebuilt.
func TestSetNamesAreStable(t *testing.T) {
	if n := SetName("PROF_A", iptables.V4); n != "tabby-t4-2C6AB79952441D66" {
		t.Fatalf("v4 set %s", n)
	}
	if n := SetName("PROF_A", iptables.V6); n != "tabby-t6-2C6AB79952441D66" {
		t.Fatalf("v6 set %s", n)
	}
}
