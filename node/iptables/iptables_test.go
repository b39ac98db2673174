package iptables

import (
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// inNS runs f in a fresh network namespace: iptables and ipset are per netns,
// so nothing here touches the machine's own firewall.
func inNS(t *testing.T, f func()) {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Close(); testutils.UnmountNS(n) }()
	if err := n.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		f()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
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
	inNS(t, func() {
		b, err := Detect(V4)
		if err != nil {
			t.Fatal(err)
		}
		ipt := "iptables-" + b.Mode
		if b.Mode == "default" {
			ipt = "iptables"
		}
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
	inNS(t, func() {
		s := Set{Name: "tabby-test", Type: "hash:net", Family: V4, Members: []string{"10.0.0.0/16", "10.1.0.0/16", "10.2.0.1/32"}}
		if n, err := SyncSets(s); err != nil || n != 1 {
			t.Fatalf("create: %d %v", n, err)
		}
		if n, err := SyncSets(s); err != nil || n != 0 {
			t.Fatalf("idempotent: %d %v", n, err)
		}
		s.Members = []string{"10.1.0.0/16"}
		if n, err := SyncSets(s); err != nil || n != 1 {
			t.Fatalf("update: %d %v", n, err)
		}
		if m, _ := currentMembers("tabby-test"); len(m) != 1 || m[0] != "10.1.0.0/16" {
			t.Fatalf("members %v", m)
		}
		if names, _ := ListSets(); len(names) != 1 {
			t.Fatalf("sets %v (the temporary set must be gone)", names)
		}
		if err := DestroySet("tabby-test"); err != nil {
			t.Fatal(err)
		}
	})
}

// ApplyKnown trusts what the last Apply left (no read); Apply reads the
// kernel and repairs what someone else changed in between.
func TestApplyKnownAndRepair(t *testing.T) {
	inNS(t, func() {
		b, err := Detect(V4)
		if err != nil {
			t.Fatal(err)
		}
		ipt := "iptables-" + b.Mode
		if b.Mode == "default" {
			ipt = "iptables"
		}
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
		s := Set{Name: "tabby-k", Type: "hash:net", Family: V4, Members: []string{"10.0.0.1/32"}}
		if c, err := SyncSets(s); err != nil || c != 1 {
			t.Fatalf("%d %v", c, err)
		}
		if c, err := SyncSetsKnown(s); err != nil || c != 0 {
			t.Fatalf("known: %d %v", c, err)
		}
		s.Members = append(s.Members, "10.0.0.2/32")
		if c, err := SyncSetsKnown(s); err != nil || c != 1 {
			t.Fatalf("known change: %d %v", c, err)
		}
		if m, _ := currentMembers("tabby-k"); len(m) != 2 {
			t.Fatalf("members %v", m)
		}
		DestroySet("tabby-k")
	})
}
