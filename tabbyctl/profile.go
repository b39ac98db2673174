package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

func profileCommands() []*command {
	return []*command{
		{path: []string{"profile", "add"}, usage: "profile add NAME", help: "create a profile: members reach each other and send anywhere", run: withKV(profileAdd)},
		{path: []string{"profile", "remove"}, usage: "profile remove NAME", help: "remove a profile no endpoint uses", run: withKV(profileRemove)},
		{path: []string{"profile", "show"}, usage: "profile show [NAME]", help: "list profiles, or one profile's rules", run: withKV(profileShow)},
		{path: []string{"profile", "NAME", "rule", "add"}, usage: "profile NAME rule add inbound|outbound [--at N] allow|deny [from tag T|cidr C] [to tag T|cidr C] [tcp|udp|icmp] [port P[:Q]]",
			help: "add a rule (at the end, or at position N counting from 1)", flags: []flagSpec{{name: "at", value: true}}, run: withKV(ruleAdd)},
		{path: []string{"profile", "NAME", "rule", "remove"}, usage: "profile NAME rule remove inbound|outbound N", help: "remove rule N (as 'rule show' numbers it)", run: withKV(ruleRemove)},
		{path: []string{"profile", "NAME", "rule", "show"}, usage: "profile NAME rule show", help: "show a profile's rules in order", run: withKV(ruleShow)},
	}
}

func profileAdd(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 1, "one profile NAME"); err != nil {
		return err
	}
	name := c.args[0]
	if err := model.ValidName(name); err != nil {
		return usagef("profile name: %v", err)
	}
	p := model.DefaultProfile(name)
	res, err := kv.Txn(cx, []store.Cmp{{Key: model.ProfileKey(name), ModRev: 0}}, []store.Op{store.Put(model.ProfileKey(name), store.MustJSON(p))})
	if err != nil {
		return err
	}
	if !res.Succeeded {
		return fmt.Errorf("profile %s already exists", name)
	}
	fmt.Fprintf(c.out, "profile %s added\n", name)
	return nil
}

func profileRemove(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 1, "one profile NAME"); err != nil {
		return err
	}
	name := c.args[0]
	// The tag index lists exactly the endpoints that carry the profile.
	members, _, err := kv.List(cx, model.TagMembersPrefix(name), true)
	if err != nil {
		return err
	}
	if len(members) > 0 {
		var eps []string
		for _, m := range members {
			eps = append(eps, strings.TrimPrefix(m.Key, model.TagMembersPrefix(name)))
		}
		return fmt.Errorf("profile %s is used by %d endpoints (%s); remove it from them first ('tabbyctl container NAME profile remove %s')",
			name, len(eps), strings.Join(eps, ", "), name)
	}
	if _, err := kv.Get(cx, model.ProfileKey(name)); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("profile %s does not exist", name)
		}
		return err
	}
	if _, err := kv.Txn(cx, nil, []store.Op{store.Delete(model.ProfileKey(name))}); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "profile %s removed\n", name)
	return nil
}

func profileShow(cx context.Context, kv store.KV, c *ctx) error {
	if len(c.args) == 1 {
		c.names = c.args
		return ruleShow(cx, kv, c)
	}
	ps, err := store.ListJSON[model.Profile](cx, kv, model.ProfilePrefix)
	if err != nil {
		return err
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	var rows [][]string
	for _, p := range ps {
		rows = append(rows, []string{p.Name, strconv.Itoa(len(p.Inbound)), strconv.Itoa(len(p.Outbound))})
	}
	return c.emit(ps, []string{"NAME", "INBOUND-RULES", "OUTBOUND-RULES"}, rows)
}

// parseRule reads "allow|deny [from tag T|cidr C] [to tag T|cidr C] [tcp|udp|icmp] [port P[:Q]]".
func parseRule(words []string) (model.Rule, error) {
	var r model.Rule
	if len(words) == 0 || (words[0] != model.ActionAllow && words[0] != model.ActionDeny) {
		return r, usagef("a rule starts with allow or deny")
	}
	r.Action = words[0]
	for i := 1; i < len(words); i++ {
		w := words[i]
		next := func() (string, error) {
			if i+1 >= len(words) {
				return "", usagef("%q needs a value", w)
			}
			i++
			return words[i], nil
		}
		switch w {
		case "from", "to":
			kind, err := next()
			if err != nil {
				return r, err
			}
			val, err := next()
			if err != nil {
				return r, err
			}
			switch kind {
			case "tag":
				if err := model.ValidName(val); err != nil {
					return r, usagef("tag: %v", err)
				}
			case "cidr":
				n, err := parseCIDROrIP(val)
				if err != nil {
					return r, usagef("%v", err)
				}
				val = n
			default:
				return r, usagef("%s takes 'tag T' or 'cidr C', not %q", w, kind)
			}
			switch {
			case w == "from" && kind == "tag":
				r.SrcTag = val
			case w == "from":
				r.SrcNet = val
			case kind == "tag":
				r.DstTag = val
			default:
				r.DstNet = val
			}
		case "tcp", "udp", "icmp", "icmpv6":
			if r.Protocol != "" {
				return r, usagef("two protocols in one rule")
			}
			r.Protocol = w
		case "port":
			p, err := next()
			if err != nil {
				return r, err
			}
			if err := validPorts(p); err != nil {
				return r, err
			}
			r.DstPorts = p
		default:
			return r, usagef("unexpected %q in rule; see 'tabbyctl help'", w)
		}
	}
	if r.DstPorts != "" && r.Protocol != "tcp" && r.Protocol != "udp" {
		return r, usagef("port needs tcp or udp")
	}
	return r, nil
}

func parseCIDROrIP(s string) (string, error) {
	if ip := net.ParseIP(s); ip != nil {
		if ip.To4() != nil {
			return ip.String() + "/32", nil
		}
		return ip.String() + "/128", nil
	}
	n, err := model.CanonicalCIDR(s)
	if err != nil {
		return "", err
	}
	return n.String(), nil
}

func validPorts(p string) error {
	lo, hi, rng := strings.Cut(p, ":")
	a, err := strconv.Atoi(lo)
	if err != nil || a < 0 || a > 65535 {
		return usagef("port %q: want P or P:Q with 0..65535", p)
	}
	if rng {
		b, err := strconv.Atoi(hi)
		if err != nil || b < a || b > 65535 {
			return usagef("port range %q: want P:Q with P <= Q <= 65535", p)
		}
	}
	return nil
}

func direction(s string) (bool, error) {
	switch s {
	case "inbound":
		return true, nil
	case "outbound":
		return false, nil
	}
	return false, usagef("direction must be inbound or outbound, not %q", s)
}

func updateProfile(cx context.Context, kv store.KV, name string, fn func(*model.Profile) error) error {
	return store.Update(cx, kv, model.ProfileKey(name), func(p *model.Profile, exists bool) (*model.Profile, error) {
		if !exists {
			return nil, fmt.Errorf("profile %s does not exist; create it with 'tabbyctl profile add %s'", name, name)
		}
		return p, fn(p)
	})
}

func ruleAdd(cx context.Context, kv store.KV, c *ctx) error {
	if len(c.args) < 2 {
		return usagef("want inbound|outbound and a rule")
	}
	in, err := direction(c.args[0])
	if err != nil {
		return err
	}
	r, err := parseRule(c.args[1:])
	if err != nil {
		return err
	}
	at := 0
	if s := c.flag("at", ""); s != "" {
		if at, err = strconv.Atoi(s); err != nil || at < 1 {
			return usagef("--at %q: want a position from 1", s)
		}
	}
	err = updateProfile(cx, kv, c.names[0], func(p *model.Profile) error {
		rules := &p.Outbound
		if in {
			rules = &p.Inbound
		}
		if at == 0 || at > len(*rules) {
			*rules = append(*rules, r)
		} else {
			*rules = append((*rules)[:at-1], append([]model.Rule{r}, (*rules)[at-1:]...)...)
		}
		return p.CheckRuleCount()
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "rule added to %s %s\n", c.names[0], c.args[0])
	return nil
}

func ruleRemove(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 2, "inbound|outbound and a rule number"); err != nil {
		return err
	}
	in, err := direction(c.args[0])
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(c.args[1])
	if err != nil || n < 1 {
		return usagef("rule number %q: want 1 or more", c.args[1])
	}
	err = updateProfile(cx, kv, c.names[0], func(p *model.Profile) error {
		rules := &p.Outbound
		if in {
			rules = &p.Inbound
		}
		if n > len(*rules) {
			return fmt.Errorf("profile %s has %d %s rules, no rule %d", c.names[0], len(*rules), c.args[0], n)
		}
		*rules = append((*rules)[:n-1], (*rules)[n:]...)
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "rule %d removed from %s %s\n", n, c.names[0], c.args[0])
	return nil
}

// RuleString renders a rule in the syntax 'rule add' reads.
func ruleString(r model.Rule) string {
	s := []string{r.Action}
	if r.SrcTag != "" {
		s = append(s, "from tag "+r.SrcTag)
	}
	if r.SrcNet != "" {
		s = append(s, "from cidr "+r.SrcNet)
	}
	if r.DstTag != "" {
		s = append(s, "to tag "+r.DstTag)
	}
	if r.DstNet != "" {
		s = append(s, "to cidr "+r.DstNet)
	}
	if r.Protocol != "" {
		s = append(s, r.Protocol)
	}
	if r.DstPorts != "" {
		s = append(s, "port "+r.DstPorts)
	}
	return strings.Join(s, " ")
}

func ruleShow(cx context.Context, kv store.KV, c *ctx) error {
	var p model.Profile
	if _, err := store.GetJSON(cx, kv, model.ProfileKey(c.names[0]), &p); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("profile %s does not exist", c.names[0])
		}
		return err
	}
	var rows [][]string
	for i, r := range p.Inbound {
		rows = append(rows, []string{"inbound", strconv.Itoa(i + 1), ruleString(r)})
	}
	for i, r := range p.Outbound {
		rows = append(rows, []string{"outbound", strconv.Itoa(i + 1), ruleString(r)})
	}
	return c.emit(p, []string{"DIRECTION", "N", "RULE"}, rows)
}
