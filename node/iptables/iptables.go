// Package iptables writes tabby's own chains and nothing else. Chains whose
// name starts with Prefix belong to tabby and are rewritten whole and
// atomically with iptables-restore --noflush, and only when they differ from
// what the kernel has; everyone else's rules are never flushed, reordered or
// touched. The one exception is a single jump from a built-in chain into
// tabby's chain, inserted once and kept first.
package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
)

// Prefix starts the name of every chain tabby owns.
const Prefix = "TABBY-"

// Family is IPv4 or IPv6.
type Family int

// Families.
const (
	V4 Family = 4
	V6 Family = 6
)

// Backend is one iptables flavour (legacy or nft) for one family.
type Backend struct {
	Family  Family
	Mode    string // "legacy" or "nft"
	save    string
	restore string
	mu      sync.Mutex
	// Changes counts restore runs that changed something, for tests and metrics.
	Changes int
	// known is each table as the last Apply left it (read from the kernel,
	// plus what that Apply wrote), for ApplyKnown.
	known map[string]state
}

// Detect picks the backend the way kube-proxy's iptables-wrapper does: the
// one that already holds more rules wins (that is the one the host's other
// software and kernel path use); with none anywhere, the one `iptables` is.
func Detect(f Family) (*Backend, error) {
	bin := "iptables"
	if f == V6 {
		bin = "ip6tables"
	}
	count := func(mode string) int {
		out, err := exec.Command(bin + "-" + mode + "-save").Output()
		if err != nil {
			return -1
		}
		n := 0
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "-A ") {
				n++
			}
		}
		return n
	}
	legacy, nft := count("legacy"), count("nft")
	mode := ""
	switch {
	case legacy < 0 && nft < 0:
		// No split binaries: use the plain ones.
		if _, err := exec.LookPath(bin + "-restore"); err != nil {
			return nil, fmt.Errorf("no %s-restore: install iptables", bin)
		}
		return &Backend{Family: f, Mode: "default", save: bin + "-save", restore: bin + "-restore"}, nil
	case legacy > nft:
		mode = "legacy"
	case nft > legacy:
		mode = "nft"
	default:
		out, _ := exec.Command(bin, "--version").Output()
		mode = "legacy"
		if strings.Contains(string(out), "nf_tables") {
			mode = "nft"
		}
	}
	return &Backend{Family: f, Mode: mode, save: bin + "-" + mode + "-save", restore: bin + "-" + mode + "-restore"}, nil
}

// Chain is one chain tabby owns, with its rules in order (iptables-save
// syntax without "-A CHAIN").
type Chain struct {
	Name  string
	Rules []string
}

// Hook is the single jump from a built-in chain into a tabby chain.
type Hook struct {
	Chain  string // built-in chain: FORWARD, INPUT, OUTPUT, POSTROUTING ...
	Target string // tabby chain
	Match  string // optional match before -j, e.g. "-i tby+"
}

func (h Hook) rule() string {
	if h.Match != "" {
		return h.Match + " -j " + h.Target
	}
	return "-j " + h.Target
}

// Table is what tabby wants in one table.
type Table struct {
	Name   string // filter, nat, mangle, raw
	Chains []Chain
	Hooks  []Hook
}

// state is what one table holds now: chain -> rules.
type state map[string][]string

// read returns the current rules of a table (every chain, built-in too).
func (b *Backend) read(table string) (state, error) {
	out, err := exec.Command(b.save, "-t", table).Output()
	if err != nil {
		// An empty table in a fresh namespace is not an error for us.
		if ee, ok := err.(*exec.ExitError); ok && len(out) == 0 && len(ee.Stderr) > 0 && !strings.Contains(string(ee.Stderr), "Table does not exist") {
			return nil, fmt.Errorf("%s -t %s: %v: %s", b.save, table, err, ee.Stderr)
		}
	}
	st := state{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, ":"):
			name := strings.Fields(l[1:])[0]
			if _, ok := st[name]; !ok {
				st[name] = nil
			}
		case strings.HasPrefix(l, "-A "):
			f := strings.SplitN(l[3:], " ", 2)
			rule := ""
			if len(f) == 2 {
				rule = f[1]
			}
			st[f[0]] = append(st[f[0]], rule)
		}
	}
	return st, sc.Err()
}

// Rules returns the current rules of one chain (for tests and status).
func (b *Backend) Rules(table, chain string) ([]string, error) {
	st, err := b.read(table)
	if err != nil {
		return nil, err
	}
	return st[chain], nil
}

// equal compares rule lists as iptables-save prints them; case is ignored
// because the legacy backend prints MAC addresses in upper case.
func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !strings.EqualFold(a[i], b[i]) {
			return false
		}
	}
	return true
}

// Apply makes the tables hold exactly the given tabby chains and hooks. It
// writes only chains that differ, removes tabby chains no longer wanted, and
// inserts a hook only where it is missing. One iptables-restore per table
// that changed; nothing runs when nothing changed.
func (b *Backend) Apply(tables ...Table) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range tables {
		if err := b.apply(t); err != nil {
			return fmt.Errorf("iptables %s table: %w", t.Name, err)
		}
	}
	return nil
}

// ApplyKnown is Apply that diffs against the table as tabby's last Apply
// left it instead of reading it back, saving an iptables-save per table on
// the event path (a CNI ADD waits on it). A table not seen yet is read. The
// periodic resync uses Apply, which reads the kernel and so repairs what
// someone else changed meanwhile.
func (b *Backend) ApplyKnown(tables ...Table) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range tables {
		if err := b.applyFrom(t, b.known[t.Name]); err != nil {
			return fmt.Errorf("iptables %s table: %w", t.Name, err)
		}
	}
	return nil
}

func (b *Backend) apply(t Table) error { return b.applyFrom(t, nil) }

func (b *Backend) applyFrom(t Table, cur state) (err error) {
	if cur == nil {
		if cur, err = b.read(t.Name); err != nil {
			return err
		}
	}
	if b.known == nil {
		b.known = map[string]state{}
	}
	// Forget the table on failure: the next Apply must read what is there.
	defer func() {
		if err != nil {
			delete(b.known, t.Name)
		}
	}()
	p := newPlan(cur)
	want, err := p.writeChains(t.Chains)
	if err != nil {
		return err
	}
	p.fixHooks(t.Hooks)
	p.dropStale(want)
	if !p.changes() {
		b.known[t.Name] = p.next
		return nil
	}
	if err := b.restoreNoflush(p.script(t.Name)); err != nil {
		return err
	}
	b.Changes++
	b.known[t.Name] = p.next
	return nil
}

// plan is the iptables-restore input that takes one table from cur to what
// tabby wants, and next, the table as it will be once that input ran.
type plan struct {
	cur, next state
	// heads are chain lines: under --noflush each flushes (or creates) that
	// one chain.
	heads []string
	body  []string
}

func newPlan(cur state) *plan {
	next := state{}
	for k, v := range cur {
		next[k] = v
	}
	return &plan{cur: cur, next: next}
}

func (p *plan) changes() bool { return len(p.heads) > 0 || len(p.body) > 0 }

// writeChains rewrites each wanted chain whose rules differ from the
// kernel's, and returns the set of wanted chains.
func (p *plan) writeChains(chains []Chain) (map[string]bool, error) {
	want := map[string]bool{}
	for _, c := range chains {
		if !strings.HasPrefix(c.Name, Prefix) {
			return nil, fmt.Errorf("chain %s is not tabby's (prefix %s)", c.Name, Prefix)
		}
		if err := oneToken(c.Name); err != nil {
			return nil, fmt.Errorf("chain name: %w", err)
		}
		for _, r := range c.Rules {
			// One rule is one line of iptables-restore input: a line break
			// (or NUL) would start a rule, a chain or a COMMIT of its own.
			if strings.ContainsAny(r, "\n\r\x00") {
				return nil, fmt.Errorf("chain %s: rule %q spans lines: refused, it would inject into iptables-restore's input", c.Name, r)
			}
		}
		want[c.Name] = true
		p.next[c.Name] = c.Rules
		if have, exists := p.cur[c.Name]; exists && equal(have, c.Rules) {
			continue
		}
		p.heads = append(p.heads, fmt.Sprintf(":%s - [0:0]", c.Name))
		for _, r := range c.Rules {
			p.body = append(p.body, fmt.Sprintf("-A %s %s", c.Name, r))
		}
	}
	return want, nil
}

// fixHooks makes each hook one jump, first in its built-in chain. A
// misplaced or duplicated jump (after a crash, or someone's edit) is
// repaired.
func (p *plan) fixHooks(hooks []Hook) {
	for _, h := range hooks {
		hook := h.rule()
		rules := p.cur[h.Chain]
		n := 0
		for _, r := range rules {
			if r == hook {
				n++
			}
		}
		if n == 1 && rules[0] == hook {
			continue
		}
		fixed := []string{hook}
		for _, r := range rules {
			if r != hook {
				fixed = append(fixed, r)
			}
		}
		p.next[h.Chain] = fixed
		for i := 0; i < n; i++ {
			p.body = append(p.body, fmt.Sprintf("-D %s %s", h.Chain, hook))
		}
		p.body = append(p.body, fmt.Sprintf("-I %s 1 %s", h.Chain, hook))
	}
}

// dropStale removes tabby chains that are no longer wanted: first the jumps
// into them from chains that are not tabby's (tabby's own chains that stay
// were rewritten by writeChains), then their rules, then the chains.
func (p *plan) dropStale(want map[string]bool) {
	stale := map[string]bool{}
	var names []string
	for name := range p.cur {
		if strings.HasPrefix(name, Prefix) && !want[name] {
			stale[name] = true
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return
	}
	sort.Strings(names)
	var others []string
	for chain := range p.next {
		if !strings.HasPrefix(chain, Prefix) {
			others = append(others, chain)
		}
	}
	sort.Strings(others)
	for _, chain := range others {
		var keep []string
		for _, r := range p.next[chain] {
			if stale[jumpTarget(r)] {
				p.body = append(p.body, fmt.Sprintf("-D %s %s", chain, r))
				continue
			}
			keep = append(keep, r)
		}
		p.next[chain] = keep
	}
	for _, name := range names {
		p.heads = append(p.heads, fmt.Sprintf(":%s - [0:0]", name))
		p.body = append(p.body, "-X "+name)
		delete(p.next, name)
	}
}

// jumpTarget is the chain a rule jumps (-j) or goes (-g) to, "" if none.
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	target := ""
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			target = f[i+1]
		}
	}
	return target
}

func (p *plan) script(table string) []byte {
	var in bytes.Buffer
	fmt.Fprintf(&in, "*%s\n", table)
	for _, l := range p.heads {
		in.WriteString(l + "\n")
	}
	for _, l := range p.body {
		in.WriteString(l + "\n")
	}
	in.WriteString("COMMIT\n")
	return in.Bytes()
}

func (b *Backend) restoreNoflush(in []byte) error {
	cmd := exec.Command(b.restore, "--noflush", "--wait")
	cmd.Stdin = bytes.NewReader(in)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s\ninput:\n%s", b.restore, err, strings.TrimSpace(string(out)), in)
	}
	return nil
}

// Remove deletes every tabby chain and hook in the table (uninstall).
func (b *Backend) Remove(table string) error {
	return b.Apply(Table{Name: table})
}
