// Package selector parses and evaluates label selectors with the syntax and
// semantics of Kubernetes label selectors, so that a policy written for a
// Kubernetes NetworkPolicy and one written by hand for tabbyctl mean the
// same thing:
//
//	app=web            the label app is web (also app==web)
//	app!=web           app is absent or is not web
//	tier in (a,b)      tier is a or b
//	tier notin (a,b)   tier is absent or is neither a nor b
//	debug              the label debug exists (any value)
//	!debug             the label debug does not exist
//
// Requirements are joined by commas and all must hold; the empty selector
// selects everything. A Selector's String is canonical (requirements and
// values sorted), so equal selectors have equal strings: the node names
// one ipset per distinct selector by it.
package selector

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Op is a requirement's operator.
type Op string

// Operators, as Kubernetes' LabelSelectorRequirement spells them.
const (
	Equals       Op = "="
	NotEquals    Op = "!="
	In           Op = "in"
	NotIn        Op = "notin"
	Exists       Op = "exists"
	DoesNotExist Op = "!"
)

// Requirement is one condition on one label.
type Requirement struct {
	Key    string
	Op     Op
	Values []string // one for = and !=, one or more for in and notin, none otherwise
}

// Selector is a conjunction of requirements; no requirement selects all.
type Selector struct {
	reqs []Requirement
}

// Everything selects every label set.
func Everything() Selector { return Selector{} }

// New builds a selector from requirements after checking each.
func New(reqs ...Requirement) (Selector, error) {
	out := make([]Requirement, 0, len(reqs))
	for _, r := range reqs {
		r.Values = append([]string(nil), r.Values...)
		if err := r.check(); err != nil {
			return Selector{}, err
		}
		sort.Strings(r.Values)
		r.Values = slices.Compact(r.Values)
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Op < out[j].Op
	})
	return Selector{reqs: dedupReqs(out)}, nil
}

// FromMap is the selector of matchLabels: every key has that value.
func FromMap(m map[string]string) (Selector, error) {
	reqs := make([]Requirement, 0, len(m))
	for k, v := range m {
		reqs = append(reqs, Requirement{Key: k, Op: Equals, Values: []string{v}})
	}
	return New(reqs...)
}

// And is the selector that requires both s and o.
func (s Selector) And(o Selector) Selector {
	out, _ := New(append(append([]Requirement{}, s.reqs...), o.reqs...)...) // both were checked
	return out
}

// Requirements returns the selector's requirements in canonical order.
func (s Selector) Requirements() []Requirement { return append([]Requirement(nil), s.reqs...) }

// Empty reports whether s selects everything.
func (s Selector) Empty() bool { return len(s.reqs) == 0 }

// Matches reports whether the labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s.reqs {
		if !r.matches(labels) {
			return false
		}
	}
	return true
}

func (r Requirement) matches(labels map[string]string) bool {
	v, ok := labels[r.Key]
	switch r.Op {
	case Exists:
		return ok
	case DoesNotExist:
		return !ok
	case Equals, In:
		return ok && contains(r.Values, v)
	case NotEquals, NotIn:
		return !ok || !contains(r.Values, v)
	}
	return false
}

func contains(sorted []string, v string) bool {
	i := sort.SearchStrings(sorted, v)
	return i < len(sorted) && sorted[i] == v
}

// String is the canonical text of the selector, which Parse reads back.
func (s Selector) String() string {
	parts := make([]string, 0, len(s.reqs))
	for _, r := range s.reqs {
		parts = append(parts, r.String())
	}
	return strings.Join(parts, ",")
}

// String is the requirement's canonical text.
func (r Requirement) String() string {
	switch r.Op {
	case Exists:
		return r.Key
	case DoesNotExist:
		return "!" + r.Key
	case Equals, NotEquals:
		return r.Key + string(r.Op) + r.Values[0]
	default:
		return r.Key + " " + string(r.Op) + " (" + strings.Join(r.Values, ",") + ")"
	}
}

func (r Requirement) check() error {
	if err := ValidKey(r.Key); err != nil {
		return err
	}
	for _, v := range r.Values {
		if err := ValidValue(v); err != nil {
			return fmt.Errorf("label %s: %w", r.Key, err)
		}
	}
	n := len(r.Values)
	switch r.Op {
	case Equals, NotEquals:
		if n != 1 {
			return fmt.Errorf("label %s: %s takes one value, not %d", r.Key, r.Op, n)
		}
	case In, NotIn:
		if n == 0 {
			return fmt.Errorf("label %s: %s needs at least one value", r.Key, r.Op)
		}
	case Exists, DoesNotExist:
		if n != 0 {
			return fmt.Errorf("label %s: %s takes no values", r.Key, opName(r.Op))
		}
	default:
		return fmt.Errorf("label %s: unknown operator %q (want =, !=, in, notin, exists or !)", r.Key, r.Op)
	}
	return nil
}

func opName(o Op) string {
	if o == DoesNotExist {
		return "!key (does not exist)"
	}
	return string(o)
}

func dedupReqs(rs []Requirement) []Requirement {
	out := rs[:0]
	for i, r := range rs {
		if i > 0 && r.String() == rs[i-1].String() {
			continue
		}
		out = append(out, r)
	}
	return out
}

// ValidKey checks a label key as Kubernetes does: an optional DNS-subdomain
// prefix and a slash, then a name of at most 63 characters of letters,
// digits, '-', '_' and '.', starting and ending alphanumeric. Keys end up
// in ipset comments and iptables-restore input, so nothing else passes.
func ValidKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if hasPrefix {
		if prefix == "" || len(prefix) > 253 {
			return fmt.Errorf("label key %q: the prefix before / must be a DNS subdomain of 1..253 characters", k)
		}
		for _, part := range strings.Split(prefix, ".") {
			if !isDNSLabel(part) {
				return fmt.Errorf("label key %q: prefix %q is not a DNS subdomain (lower-case letters, digits, '-' and '.')", k, prefix)
			}
		}
	}
	if name == "" && !hasPrefix {
		name = k
	}
	if err := validName(name); err != nil {
		return fmt.Errorf("label key %q: %w", k, err)
	}
	return nil
}

// ValidValue checks a label value: empty, or a name as in ValidKey.
func ValidValue(v string) error {
	if v == "" {
		return nil
	}
	if err := validName(v); err != nil {
		return fmt.Errorf("label value %q: %w", v, err)
	}
	return nil
}

func validName(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("must be 1..63 characters")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '_' && c != '.' {
			return fmt.Errorf("%q is not allowed (letters, digits, '-', '_' and '.' only)", c)
		}
		if !alnum && (i == 0 || i == len(s)-1) {
			return fmt.Errorf("must start and end with a letter or digit")
		}
	}
	return nil
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(s)-1
		if !ok {
			return false
		}
	}
	return true
}

// ValidLabels checks every key and value of a label set.
func ValidLabels(labels map[string]string) error {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := ValidKey(k); err != nil {
			return err
		}
		if err := ValidValue(labels[k]); err != nil {
			return fmt.Errorf("label %s: %w", k, err)
		}
	}
	return nil
}
