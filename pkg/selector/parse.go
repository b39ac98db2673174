package selector

import (
	"fmt"
	"strings"
)

// Parse reads a selector in Kubernetes' string syntax (see the package
// comment). Whitespace around names and operators is ignored; "" selects
// everything. Errors say where the text went wrong.
func Parse(text string) (Selector, error) {
	p := &parser{s: text}
	var reqs []Requirement
	p.space()
	if p.eof() {
		return Everything(), nil
	}
	for {
		r, err := p.requirement()
		if err != nil {
			return Selector{}, fmt.Errorf("selector %q: %w", text, err)
		}
		reqs = append(reqs, r)
		p.space()
		if p.eof() {
			break
		}
		if !p.take(",") {
			return Selector{}, fmt.Errorf("selector %q: at %d: want ',' between requirements, found %q", text, p.i, p.rest(8))
		}
		p.space()
	}
	s, err := New(reqs...)
	if err != nil {
		return Selector{}, fmt.Errorf("selector %q: %w", text, err)
	}
	return s, nil
}

// MustParse is Parse for selectors written in the code.
func MustParse(text string) Selector {
	s, err := Parse(text)
	if err != nil {
		panic(err)
	}
	return s
}

type parser struct {
	s string
	i int
}

func (p *parser) eof() bool { return p.i >= len(p.s) }

func (p *parser) rest(n int) string {
	r := p.s[p.i:]
	if len(r) > n {
		r = r[:n] + "..."
	}
	return r
}

func (p *parser) space() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *parser) take(tok string) bool {
	if strings.HasPrefix(p.s[p.i:], tok) {
		p.i += len(tok)
		return true
	}
	return false
}

// word reads a key or value: everything up to a delimiter. The characters
// are checked later by ValidKey and ValidValue, with clearer errors.
func (p *parser) word() string {
	start := p.i
	for p.i < len(p.s) && !strings.ContainsRune(" \t,()=!", rune(p.s[p.i])) {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *parser) requirement() (Requirement, error) {
	if p.take("!") {
		p.space()
		k := p.word()
		if k == "" {
			return Requirement{}, fmt.Errorf("at %d: want a label key after '!'", p.i)
		}
		return Requirement{Key: k, Op: DoesNotExist}, nil
	}
	k := p.word()
	if k == "" {
		return Requirement{}, fmt.Errorf("at %d: want a label key, found %q", p.i, p.rest(8))
	}
	p.space()
	switch {
	case p.eof() || p.s[p.i] == ',':
		return Requirement{Key: k, Op: Exists}, nil
	case p.take("!="):
		p.space()
		return Requirement{Key: k, Op: NotEquals, Values: []string{p.word()}}, nil
	case p.take("=="), p.take("="):
		p.space()
		return Requirement{Key: k, Op: Equals, Values: []string{p.word()}}, nil
	}
	op := p.word()
	var o Op
	switch op {
	case "in":
		o = In
	case "notin":
		o = NotIn
	default:
		return Requirement{}, fmt.Errorf("at %d: after key %q want =, ==, !=, in or notin, found %q", p.i-len(op), k, op+p.rest(8))
	}
	p.space()
	if !p.take("(") {
		return Requirement{}, fmt.Errorf("at %d: want '(' after %s", p.i, op)
	}
	var vals []string
	p.space()
	if p.take(")") {
		// As Kubernetes reads it: the one value "" (the canonical text of
		// a requirement whose only value is empty).
		return Requirement{Key: k, Op: o, Values: []string{""}}, nil
	}
	for {
		p.space()
		vals = append(vals, p.word())
		p.space()
		if p.take(")") {
			break
		}
		if !p.take(",") {
			return Requirement{}, fmt.Errorf("at %d: want ',' or ')' in the values of %s, found %q", p.i, k, p.rest(8))
		}
	}
	return Requirement{Key: k, Op: o, Values: vals}, nil
}
