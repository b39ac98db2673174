package iptables

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/node/internal/nstest"
)

// detect4 is the IPv4 backend and the name of the iptables binary of its
// flavour, for tampering with the rules behind tabby's back.
func detect4(t *testing.T) (*Backend, string) {
	t.Helper()
	b, err := Detect(V4)
	if err != nil {
		t.Fatal(err)
	}
	if b.Mode == "default" {
		return b, "iptables"
	}
	return b, "iptables-" + b.Mode
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
	return string(out)
}

func TestApplyOwnsOnlyItsChains(t *testing.T) {
	nstest.Run(t, func() {
		b, ipt := detect4(t)
		// Someone else's chain and rule.
		sh(t, ipt, "-N", "OTHER")
		sh(t, ipt, "-A", "OTHER", "-j", "RETURN")
		sh(t, ipt, "-A", "FORWARD", "-s", "192.0.2.99/32", "-j", "ACCEPT")
		want := Table{Name: "filter",
			Chains: []Chain{{Name: "TABBY-FORWARD", Rules: []string{"-i tby+ -j TABBY-FROM-WL", "-o tby+ -j DROP"}},
				{Name: "TABBY-FROM-WL", Rules: []string{"-j DROP"}}},
			Hooks: []Hook{{Chain: "FORWARD", Target: "TABBY-FORWARD"}}}
		if err := b.Apply(want); err != nil {
			t.Fatal(err)
		}
		fwd, _ := b.Rules("filter", "FORWARD")
		if len(fwd) != 2 || fwd[0] != "-j TABBY-FORWARD" || fwd[1] != "-s 192.0.2.99/32 -j ACCEPT" {
			t.Fatalf("FORWARD = %q", fwd)
		}
		// Idempotent: nothing to do, no restore run.
		n := b.Changes
		if err := b.Apply(want); err != nil || b.Changes != n {
			t.Fatalf("second Apply ran a restore (%d -> %d): %v", n, b.Changes, err)
		}
		// Tampering: a duplicated hook and an edited tabby chain are repaired.
		sh(t, ipt, "-A", "FORWARD", "-j", "TABBY-FORWARD")
		sh(t, ipt, "-A", "TABBY-FROM-WL", "-j", "ACCEPT")
		if err := b.Apply(want); err != nil {
			t.Fatal(err)
		}
		fwd, _ = b.Rules("filter", "FORWARD")
		if strings.Count(strings.Join(fwd, "\n"), "TABBY-FORWARD") != 1 || fwd[0] != "-j TABBY-FORWARD" {
			t.Fatalf("hook not repaired: %q", fwd)
		}
		if r, _ := b.Rules("filter", "TABBY-FROM-WL"); len(r) != 1 {
			t.Fatalf("tabby chain not repaired: %q", r)
		}
		// Dropping a chain removes it and the jumps into it; others' rules stay.
		want.Chains = want.Chains[:1]
		want.Chains[0].Rules = []string{"-o tby+ -j DROP"}
		if err := b.Apply(want); err != nil {
			t.Fatal(err)
		}
		save := sh(t, ipt+"-save", "-t", "filter")
		if strings.Contains(save, "TABBY-FROM-WL") || !strings.Contains(save, ":OTHER") || !strings.Contains(save, "-A OTHER -j RETURN") || !strings.Contains(save, "192.0.2.99") {
			t.Fatalf("after removing a chain:\n%s", save)
		}
		if err := b.Remove("filter"); err != nil {
			t.Fatal(err)
		}
		if save := sh(t, ipt+"-save", "-t", "filter"); strings.Contains(save, "TABBY") || !strings.Contains(save, "192.0.2.99") {
			t.Fatalf("after Remove:\n%s", save)
		}
	})
}

func TestSyncSets(t *testing.T) {
	nstest.Run(t, func() {
		var sets Sets
		s := Set{Name: "tabby-test", Type: "hash:net", Family: V4, Members: []string{"10.0.0.0/16", "10.1.0.0/16", "10.2.0.1/32"}}
		if n, err := sets.Sync(s); err != nil || n != 1 {
			t.Fatalf("create: %d %v", n, err)
		}
		if n, err := sets.Sync(s); err != nil || n != 0 {
			t.Fatalf("idempotent: %d %v", n, err)
		}
		s.Members = []string{"10.1.0.0/16"}
		if n, err := sets.Sync(s); err != nil || n != 1 {
			t.Fatalf("update: %d %v", n, err)
		}
		if m, _ := currentMembers("tabby-test"); len(m) != 1 || m[0] != "10.1.0.0/16" {
			t.Fatalf("members %v", m)
		}
		if names, _ := sets.List(); len(names) != 1 {
			t.Fatalf("sets %v (the temporary set must be gone)", names)
		}
		if err := sets.Destroy("tabby-test"); err != nil {
			t.Fatal(err)
		}
		if names, _ := sets.Known(); len(names) != 0 {
			t.Fatalf("known sets after Destroy: %v", names)
		}
	})
}

// ApplyKnown trusts what the last Apply left (no read); Apply reads the
// kernel and repairs what someone else changed in between.
func TestApplyKnownAndRepair(t *testing.T) {
	nstest.Run(t, func() {
		b, ipt := detect4(t)
		tbl := Table{Name: "filter", Chains: []Chain{{Name: "TABBY-X", Rules: []string{"-j DROP"}}},
			Hooks: []Hook{{Chain: "FORWARD", Target: "TABBY-X"}}}
		if err := b.Apply(tbl); err != nil {
			t.Fatal(err)
		}
		tbl.Chains[0].Rules = []string{"-s 10.0.0.1/32 -j DROP", "-j RETURN"}
		if err := b.ApplyKnown(tbl); err != nil {
			t.Fatal(err)
		}
		if r, _ := b.Rules("filter", "TABBY-X"); len(r) != 2 {
			t.Fatalf("ApplyKnown did not write the change: %q", r)
		}
		n := b.Changes
		if err := b.ApplyKnown(tbl); err != nil || b.Changes != n {
			t.Fatalf("ApplyKnown rewrote an unchanged table (%v)", err)
		}
		// Someone deletes tabby's hook: the event path does not notice,
		// the periodic Apply puts it back.
		sh(t, ipt, "-D", "FORWARD", "-j", "TABBY-X")
		if err := b.ApplyKnown(tbl); err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(tbl); err != nil {
			t.Fatal(err)
		}
		if fwd, _ := b.Rules("filter", "FORWARD"); len(fwd) != 1 || fwd[0] != "-j TABBY-X" {
			t.Fatalf("hook not repaired by the full Apply: %q", fwd)
		}
		// Sets: the known path skips unchanged sets too.
		var sets Sets
		s := Set{Name: "tabby-k", Type: "hash:net", Family: V4, Members: []string{"10.0.0.1/32"}}
		if c, err := sets.Sync(s); err != nil || c != 1 {
			t.Fatalf("%d %v", c, err)
		}
		if c, err := sets.SyncKnown(s); err != nil || c != 0 {
			t.Fatalf("known: %d %v", c, err)
		}
		s.Members = append(s.Members, "10.0.0.2/32")
		if c, err := sets.SyncKnown(s); err != nil || c != 1 {
			t.Fatalf("known change: %d %v", c, err)
		}
		if m, _ := currentMembers("tabby-k"); len(m) != 2 {
			t.Fatalf("members %v", m)
		}
		// Someone empties the set: the event path trusts what it wrote,
		// the periodic Sync reads the kernel and refills it.
		sh(t, "ipset", "flush", "tabby-k")
		if c, err := sets.SyncKnown(s); err != nil || c != 0 {
			t.Fatalf("known after tampering: %d %v", c, err)
		}
		if c, err := sets.Sync(s); err != nil || c != 1 {
			t.Fatalf("full after tampering: %d %v", c, err)
		}
		if err := sets.Destroy("tabby-k"); err != nil {
			t.Fatal(err)
		}
	})
}

// currentMembers lists a set's members as the kernel has them.
func currentMembers(name string) ([]string, bool) {
	sets, err := currentSets()
	if err != nil {
		return nil, false
	}
	m, ok := sets[name]
	return m, ok
}

// Two Sets values keep separate views: one's sync does not make the other
// believe a set is in place.
func TestSetsAreIndependentValues(t *testing.T) {
	nstest.Run(t, func() {
		var a, b Sets
		s := Set{Name: "tabby-v", Type: "hash:net", Family: V4, Members: []string{"10.9.0.0/16"}}
		if c, err := a.Sync(s); err != nil || c != 1 {
			t.Fatalf("a: %d %v", c, err)
		}
		if names, _ := a.Known(); len(names) != 1 {
			t.Fatalf("a knows %v", names)
		}
		sh(t, "ipset", "destroy", "tabby-v")
		// b has never synced: its Known reads the kernel, and its
		// SyncKnown recreates the set a still believes in.
		if names, _ := b.Known(); len(names) != 0 {
			t.Fatalf("b knows %v", names)
		}
		if c, err := b.SyncKnown(s); err != nil || c != 1 {
			t.Fatalf("b: %d %v", c, err)
		}
		if m, ok := currentMembers("tabby-v"); !ok || len(m) != 1 {
			t.Fatalf("members %v %v", m, ok)
		}
	})
}

// The plan for a table deletes exactly the jumps into stale chains: a jump
// into a kept chain whose name merely starts like a stale one stays, a
// duplicated hook is made one, and stale chains are flushed and removed.
func TestPlanStaleJumpsAndHooks(t *testing.T) {
	cur := state{
		"FORWARD":     {"-j TABBY-FWD", "-i tby1+ -g TABBY-A-1", "-j TABBY-A", "-s 192.0.2.1/32 -j ACCEPT", "-j TABBY-FWD"},
		"INPUT":       {"-i tby+ -j TABBY-A"},
		"TABBY-FWD":   {"-j TABBY-A"},
		"TABBY-A":     {"-j DROP"},
		"TABBY-A-1":   {"-j RETURN"},
		"OTHER-CHAIN": {"-j RETURN"},
	}
	p := newPlan(cur)
	want, err := p.writeChains([]Chain{{Name: "TABBY-FWD", Rules: []string{"-j TABBY-A-1"}}, {Name: "TABBY-A-1", Rules: []string{"-j RETURN"}}})
	if err != nil {
		t.Fatal(err)
	}
	p.fixHooks([]Hook{{Chain: "FORWARD", Target: "TABBY-FWD"}})
	p.dropStale(want)
	got := string(p.script("filter"))
	wantScript := strings.Join([]string{
		"*filter",
		":TABBY-FWD - [0:0]",
		":TABBY-A - [0:0]",
		"-A TABBY-FWD -j TABBY-A-1",
		"-D FORWARD -j TABBY-FWD",
		"-D FORWARD -j TABBY-FWD",
		"-I FORWARD 1 -j TABBY-FWD",
		"-D FORWARD -j TABBY-A",
		"-D INPUT -i tby+ -j TABBY-A",
		"-X TABBY-A",
		"COMMIT",
	}, "\n") + "\n"
	if got != wantScript {
		t.Fatalf("script:\n%s\nwant:\n%s", got, wantScript)
	}
	if f := strings.Join(p.next["FORWARD"], "|"); f != "-j TABBY-FWD|-i tby1+ -g TABBY-A-1|-s 192.0.2.1/32 -j ACCEPT" {
		t.Fatalf("next FORWARD = %s", f)
	}
	if _, ok := p.next["TABBY-A"]; ok || len(p.next["INPUT"]) != 0 || len(p.next["OTHER-CHAIN"]) != 1 {
		t.Fatalf("next = %v", p.next)
	}
}
