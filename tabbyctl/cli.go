package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"

	"github.com/tabby-net/tabby/pkg/cliflags"
)

// A command is one line of the tabbyctl grammar. The table of commands is the
// single source of the parser, the help text and the README reference.
type command struct {
	path  []string // fixed words; "NAME" marks a positional inside the path (container NAME profile ...)
	usage string
	help  string
	flags []flagSpec
	run   func(*ctx) error
}

type flagSpec struct {
	name     string
	value    bool // takes a value (--as N or --as=N)
	optional bool // value only with '=' (--ipip or --ipip=cross-subnet)
	help     string
}

var globalFlags = append(etcdFlags(),
	flagSpec{name: "o", value: true, help: "output: table, json or yaml"},
	flagSpec{name: "output", value: true, help: "same as -o"},
	flagSpec{name: "help", help: "this help"},
)

// etcdFlags are the etcd flags every tabby program takes, with the same
// names and environment variables.
func etcdFlags() []flagSpec {
	var out []flagSpec
	for _, f := range cliflags.EtcdFlags {
		out = append(out, flagSpec{name: f.Name, value: true, help: f.Usage()})
	}
	return out
}

// etcd is where the global flags, else the environment, say etcd is.
func (c *ctx) etcd() cliflags.Etcd {
	return cliflags.EtcdFrom(func(name string) (string, bool) {
		v, ok := c.flags[name]
		return v, ok
	})
}

// usageError means the command line is wrong; exit code 2.
type usageError struct{ msg string }

func (u *usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

type ctx struct {
	cmd    *command
	args   []string // positionals after the fixed path
	names  []string // positionals inside the path (NAME)
	flags  map[string]string
	out    io.Writer
	format string
}

func (c *ctx) has(name string) bool { _, ok := c.flags[name]; return ok }

func (c *ctx) flag(name, def string) string {
	if v, ok := c.flags[name]; ok {
		return v
	}
	return def
}

// parse matches argv against the command table. Flags may come anywhere.
func parse(cmds []*command, argv []string) (*ctx, error) {
	flags := map[string]string{}
	var words []string
	var rawFlags []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if a == "--" {
			words = append(words, argv[i+1:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 && !isNumber(a) {
			rawFlags = append(rawFlags, a)
			// A value may follow as the next word; resolved below once the
			// command (and so the flag's kind) is known.
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue(cmds, name) && i+1 < len(argv) {
				rawFlags = append(rawFlags, argv[i+1])
				i++
			}
			continue
		}
		words = append(words, a)
	}
	var best *command
	var names []string
	for _, cmd := range cmds {
		if n, ok := matchPath(cmd.path, words); ok && (best == nil || len(cmd.path) > len(best.path)) {
			best, names = cmd, n
		}
	}
	if best == nil {
		if len(words) == 0 {
			return nil, usagef("no command given")
		}
		return nil, usagef("unknown command %q", strings.Join(words, " "))
	}
	specs := append(append([]flagSpec{}, globalFlags...), best.flags...)
	for i := 0; i < len(rawFlags); i++ {
		name, val, hasVal := strings.Cut(strings.TrimLeft(rawFlags[i], "-"), "=")
		spec := findFlag(specs, name)
		if spec == nil {
			return nil, usagef("unknown flag --%s for '%s'", name, strings.Join(best.path, " "))
		}
		switch {
		case spec.value && !spec.optional && !hasVal:
			if i+1 >= len(rawFlags) {
				return nil, usagef("flag --%s needs a value", name)
			}
			val = rawFlags[i+1]
			i++
		case !spec.value && hasVal:
			return nil, usagef("flag --%s takes no value", name)
		}
		flags[name] = val
	}
	c := &ctx{cmd: best, args: words[len(best.path):], names: names, flags: flags, out: os.Stdout}
	c.format = c.flag("o", c.flag("output", "table"))
	if c.format != "table" && c.format != "json" && c.format != "yaml" {
		return nil, usagef("-o %s: use table, json or yaml", c.format)
	}
	return c, nil
}

func isNumber(s string) bool {
	for _, r := range s[1:] {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func takesValue(cmds []*command, name string) bool {
	if f := findFlag(globalFlags, name); f != nil {
		return f.value && !f.optional
	}
	for _, c := range cmds {
		if f := findFlag(c.flags, name); f != nil {
			return f.value && !f.optional
		}
	}
	return false
}

func findFlag(specs []flagSpec, name string) *flagSpec {
	for i := range specs {
		if specs[i].name == name {
			return &specs[i]
		}
	}
	return nil
}

func matchPath(path, words []string) ([]string, bool) {
	if len(words) < len(path) {
		return nil, false
	}
	var names []string
	for i, p := range path {
		if p == "NAME" {
			names = append(names, words[i])
			continue
		}
		if p != words[i] {
			return nil, false
		}
	}
	return names, true
}

// emit prints v as json/yaml, or the table for table output.
func (c *ctx) emit(v any, header []string, rows [][]string) error {
	switch c.format {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(c.out, string(b))
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		fmt.Fprint(c.out, string(b))
	default:
		tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, strings.Join(header, "\t"))
		for _, r := range rows {
			fmt.Fprintln(tw, strings.Join(r, "\t"))
		}
		tw.Flush()
	}
	return nil
}

// helpText is generated from the command table.
func helpText(cmds []*command) string {
	var b strings.Builder
	b.WriteString("tabbyctl: manage a tabby network (pools, profiles, policies, containers, nodes, BGP, IPAM)\n\nCommands:\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "  tabbyctl %s\n      %s\n", c.usage, c.help)
	}
	b.WriteString("\nGlobal flags:\n")
	for _, f := range globalFlags {
		v := ""
		if f.value {
			v = " VALUE"
		}
		fmt.Fprintf(&b, "  --%s%s\t%s\n", f.name, v, f.help)
	}
	return b.String()
}

// Markdown renders the reference for the README (tabbyctl help --markdown).
func markdown(cmds []*command) string {
	var b strings.Builder
	b.WriteString("| command | what it does |\n|---|---|\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "| `tabbyctl %s` | %s |\n", strings.ReplaceAll(c.usage, "|", "\\|"), strings.ReplaceAll(c.help, "|", "\\|"))
	}
	b.WriteString("\nGlobal flags: ")
	var gs []string
	for _, f := range globalFlags {
		gs = append(gs, "`--"+f.name+"` ("+f.help+")")
	}
	sort.Strings(gs)
	b.WriteString(strings.Join(gs, ", ") + ".\n")
	return b.String()
}
