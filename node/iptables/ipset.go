package iptables

import (
	"bytes"
	"fmt"
	"os/exec"
	"sort"
	"strings"
)

// Set is an ipset tabby owns (names start with "tabby-").
type Set struct {
	Name    string
	Type    string // hash:net, hash:ip
	Family  Family
	Members []string
}

// SetPrefix starts every ipset tabby owns.
const SetPrefix = "tabby-"

// currentMembers lists a set's members, or nil and false if it does not exist.
func currentMembers(name string) ([]string, bool) {
	out, err := exec.Command("ipset", "list", name, "-output", "save").Output()
	if err != nil {
		return nil, false
	}
	var m []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "add ") {
			f := strings.Fields(l)
			if len(f) >= 3 {
				m = append(m, f[2])
			}
		}
	}
	sort.Strings(m)
	return m, true
}

// SyncSets makes each set hold exactly its members. A changed set is filled
// under a temporary name and swapped in, so a packet never sees it half
// built. It reports how many sets it rewrote.
func SyncSets(sets ...Set) (int, error) {
	changed := 0
	for _, s := range sets {
		if !strings.HasPrefix(s.Name, SetPrefix) || len(s.Name) > 31 {
			return changed, fmt.Errorf("ipset %q: name must start with %s and be at most 31 characters", s.Name, SetPrefix)
		}
		want := append([]string{}, s.Members...)
		sort.Strings(want)
		want = dedup(want)
		have, exists := currentMembers(s.Name)
		if exists && equal(have, want) {
			continue
		}
		fam := "inet"
		if s.Family == V6 {
			fam = "inet6"
		}
		tmp := s.Name + "-t"
		if len(tmp) > 31 {
			tmp = tmp[:31]
		}
		var in bytes.Buffer
		fmt.Fprintf(&in, "create %s %s family %s maxelem 1048576 -exist\n", s.Name, s.Type, fam)
		fmt.Fprintf(&in, "create %s %s family %s maxelem 1048576 -exist\nflush %s\n", tmp, s.Type, fam, tmp)
		for _, m := range want {
			fmt.Fprintf(&in, "add %s %s\n", tmp, m)
		}
		fmt.Fprintf(&in, "swap %s %s\ndestroy %s\n", tmp, s.Name, tmp)
		cmd := exec.Command("ipset", "restore")
		cmd.Stdin = &in
		if out, err := cmd.CombinedOutput(); err != nil {
			return changed, fmt.Errorf("ipset restore %s: %v: %s", s.Name, err, strings.TrimSpace(string(out)))
		}
		changed++
	}
	return changed, nil
}

// DestroySet removes a set tabby no longer needs (it must not be referenced).
func DestroySet(name string) error {
	if !strings.HasPrefix(name, SetPrefix) {
		return fmt.Errorf("ipset %s is not tabby's", name)
	}
	if _, ok := currentMembers(name); !ok {
		return nil
	}
	if out, err := exec.Command("ipset", "destroy", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ipset destroy %s: %v: %s", name, err, out)
	}
	return nil
}

// ListSets returns the names of tabby's sets that exist.
func ListSets() ([]string, error) {
	out, err := exec.Command("ipset", "list", "-name").Output()
	if err != nil {
		return nil, fmt.Errorf("ipset list: %w", err)
	}
	var names []string
	for _, n := range strings.Fields(string(out)) {
		if strings.HasPrefix(n, SetPrefix) {
			names = append(names, n)
		}
	}
	return names, nil
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
