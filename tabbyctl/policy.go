package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
)

// ownerK8s is the Owner of the Kubernetes controller's copies of
// NetworkPolicies: tabbyctl leaves them alone unless --force.
const ownerK8s = "k8s"

// txnChunk bounds the policies written by one transaction (etcd allows 128
// operations per transaction, reads and compares included).
const txnChunk = 60

func policyCommands() []*command {
	nsFlag := flagSpec{name: "namespace", value: true, help: "the policy's namespace (none: global)"}
	forceFlag := flagSpec{name: "force", help: "also overwrite or remove a policy the Kubernetes controller owns"}
	return []*command{
		{path: []string{"policy", "add"}, usage: "policy add -f FILE|- [--force]",
			help:  "create or replace policies from YAML or JSON (one policy or a list; - reads stdin); all are checked before any is written",
			flags: []flagSpec{{name: "f", value: true, help: "file to read, - for stdin"}, {name: "filename", value: true, help: "same as -f"}, forceFlag},
			run:   withKV(policyAdd)},
		{path: []string{"policy", "show"}, usage: "policy show [NAME] [--namespace NS|--all-namespaces]",
			help:  "list policies in evaluation order (default: the global ones), or one policy; -o yaml or json prints what 'policy add -f' reads back",
			flags: []flagSpec{nsFlag, {name: "all-namespaces", help: "policies of every namespace and the global ones"}}, run: withKV(policyShow)},
		{path: []string{"policy", "remove"}, usage: "policy remove NAME [--namespace NS] [--force]", help: "remove a policy (global unless --namespace)",
			flags: []flagSpec{nsFlag, forceFlag}, run: withKV(policyRemove)},
	}
}

// policyName is how messages name a policy: ns/name, or name (global).
func policyName(ns, name string) string {
	if ns == "" {
		return name + " (global)"
	}
	return ns + "/" + name
}

// namespaceFlag reads --namespace ("" or absent: global).
func namespaceFlag(c *ctx) (string, error) {
	ns := c.flag("namespace", "")
	if ns != "" {
		if err := model.ValidName(ns); err != nil || ns == model.GlobalNamespace {
			return "", usagef("--namespace %q is not a valid namespace name (leave it out for global policies)", ns)
		}
	}
	return ns, nil
}

// docSep splits a YAML stream into its documents.
var docSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// decodePolicies reads one policy or a list of policies, in YAML (one or
// more documents) or JSON, with model.Policy's JSON field names; an unknown
// field is an error, so that a misspelt one does not silently widen a
// policy. Errors name where in the input they are (document, item).
func decodePolicies(data []byte) ([]model.Policy, []string, error) {
	var docs [][]byte
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		// JSON: one value or several in a row.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		for {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err == io.EOF {
				break
			} else if err != nil {
				return nil, nil, fmt.Errorf("document %d: %w", len(docs)+1, err)
			}
			docs = append(docs, raw)
		}
	} else {
		for _, d := range docSep.Split(string(data), -1) {
			j, err := yaml.YAMLToJSON([]byte(d))
			if err != nil {
				return nil, nil, fmt.Errorf("document %d: %w", len(docs)+1, err)
			}
			docs = append(docs, j) // "null" for an empty document
		}
	}
	var out []model.Policy
	var where []string
	for i, d := range docs {
		d = bytes.TrimSpace(d)
		loc := ""
		if len(docs) > 1 {
			loc = fmt.Sprintf("document %d", i+1)
		}
		switch {
		case len(d) == 0 || string(d) == "null":
			continue
		case d[0] == '[':
			var items []json.RawMessage
			if err := json.Unmarshal(d, &items); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", orInput(loc), err)
			}
			for k, it := range items {
				l := strings.TrimPrefix(loc+", item "+strconv.Itoa(k+1), ", ")
				p, err := decodePolicy(it)
				if err != nil {
					return nil, nil, fmt.Errorf("%s: %w", l, err)
				}
				out, where = append(out, p), append(where, l)
			}
		case d[0] == '{':
			p, err := decodePolicy(d)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", orInput(loc), err)
			}
			out, where = append(out, p), append(where, loc)
		default:
			return nil, nil, fmt.Errorf("%s: want a policy (a mapping) or a list of policies, not %.20s", orInput(loc), d)
		}
	}
	return out, where, nil
}

func orInput(loc string) string {
	if loc == "" {
		return "input"
	}
	return loc
}

func decodePolicy(b []byte) (model.Policy, error) {
	var p model.Policy
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		if p.Name != "" {
			return p, fmt.Errorf("policy %s: %w", p.Name, err)
		}
		return p, err
	}
	if dec.More() {
		return p, fmt.Errorf("trailing data after the policy")
	}
	return p, nil
}

// readPolicyFile reads, decodes and validates every policy of a file;
// errors name the file, the policy and the field.
func readPolicyFile(path string) ([]model.Policy, error) {
	var data []byte
	var err error
	label := path
	if path == "-" {
		label = "stdin"
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	ps, where, err := decodePolicies(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("%s holds no policy", label)
	}
	seen := map[string]string{}
	for i := range ps {
		p := &ps[i]
		loc := label
		if where[i] != "" {
			loc += ": " + where[i]
		}
		if p.Namespace != "" {
			loc += " (namespace " + p.Namespace + ")"
		}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", loc, err)
		}
		k := model.PolicyKey(p.Namespace, p.Name)
		if prev, dup := seen[k]; dup {
			return nil, fmt.Errorf("%s: policy %s is given twice (also at %s)", loc, policyName(p.Namespace, p.Name), prev)
		}
		seen[k] = orInput(where[i])
	}
	return ps, nil
}

func k8sOwnedErr(p *model.Policy, verb string) error {
	return fmt.Errorf("policy %s is owned by k8s (the Kubernetes controller's copy of a NetworkPolicy, which it keeps in step: change the NetworkPolicy instead); --force %s it anyway",
		policyName(p.Namespace, p.Name), verb)
}

func policyAdd(cx context.Context, kv store.KV, c *ctx) error {
	if len(c.args) != 0 {
		return usagef("policy add takes no words, only -f FILE (got %q)", strings.Join(c.args, " "))
	}
	path := c.flag("f", c.flag("filename", ""))
	if path == "" {
		return usagef("-f FILE is required (- reads stdin)")
	}
	ps, err := readPolicyFile(path)
	if err != nil {
		return err
	}
	force := c.has("force")
	// Check every stored policy first, so that a refusal writes nothing.
	keys := make([]string, len(ps))
	for i := range ps {
		keys[i] = model.PolicyKey(ps[i].Namespace, ps[i].Name)
	}
	for start := 0; start < len(keys) && !force; start += txnChunk {
		part := keys[start:min(start+txnChunk, len(keys))]
		ops := make([]store.Op, len(part))
		for i, k := range part {
			ops[i] = store.Get(k)
		}
		res, err := kv.Txn(cx, nil, ops)
		if err != nil {
			return err
		}
		for _, got := range res.Gets {
			for _, r := range got {
				var old model.Policy
				if store.DecodeRecord(r.Key, r.Value, &old) == nil && old.Owner == ownerK8s {
					return k8sOwnedErr(&old, "overwrites")
				}
			}
		}
	}
	// Then write, each chunk in one transaction guarded by what it read
	// (one chunk for any file of a sane size: all or nothing).
	var report []string
	for start := 0; start < len(ps); start += txnChunk {
		chunk := ps[start:min(start+txnChunk, len(ps))]
		keys := keys[start : start+len(chunk)]
		var lines []string
		_, err := store.ReadModifyWrite(cx, kv, keys, func(rs *store.ReadSet) ([]store.Op, error) {
			lines = lines[:0]
			var ops []store.Op
			for i := range chunk {
				p := &chunk[i]
				raw, err := rs.Raw(keys[i])
				if err != nil {
					return nil, err
				}
				b := store.MustJSON(p)
				verb := "created"
				if raw != nil {
					var old model.Policy
					if err := store.DecodeRecord(keys[i], raw.Value, &old); err == nil && old.Owner == ownerK8s && !force {
						return nil, k8sOwnedErr(&old, "overwrites")
					}
					verb = "replaced"
					if bytes.Equal(raw.Value, b) {
						lines = append(lines, fmt.Sprintf("policy %s unchanged", policyName(p.Namespace, p.Name)))
						continue
					}
				}
				lines = append(lines, fmt.Sprintf("policy %s %s", policyName(p.Namespace, p.Name), verb))
				ops = append(ops, store.Put(keys[i], b))
			}
			return ops, nil
		})
		if err != nil {
			if len(report) > 0 {
				fmt.Fprintln(c.out, strings.Join(report, "\n"))
			}
			return err
		}
		report = append(report, lines...)
	}
	fmt.Fprintln(c.out, strings.Join(report, "\n"))
	return nil
}

func policyShow(cx context.Context, kv store.KV, c *ctx) error {
	if len(c.args) > 1 {
		return usagef("want at most one policy NAME")
	}
	all := c.has("all-namespaces")
	if all && c.has("namespace") {
		return usagef("give --namespace NS or --all-namespaces, not both")
	}
	ns, err := namespaceFlag(c)
	if err != nil {
		return err
	}
	if len(c.args) == 1 && !all {
		var p model.Policy
		if _, err := store.GetJSON(cx, kv, model.PolicyKey(ns, c.args[0]), &p); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("policy %s does not exist%s", policyName(ns, c.args[0]), namespaceHint(ns))
			}
			return err
		}
		return c.emit(p, policyHeader, [][]string{policyRow(p)})
	}
	prefix := model.PolicyPrefix
	if !all {
		prefix = strings.TrimSuffix(model.PolicyKey(ns, "x"), "x")
	}
	ps, err := store.ListJSON[model.Policy](cx, kv, prefix)
	if err != nil {
		return err
	}
	if len(c.args) == 1 {
		kept := ps[:0]
		for _, p := range ps {
			if p.Name == c.args[0] {
				kept = append(kept, p)
			}
		}
		if len(kept) == 0 {
			return fmt.Errorf("no policy %s in any namespace", c.args[0])
		}
		ps = kept
	}
	model.SortPolicies(ps)
	var rows [][]string
	for _, p := range ps {
		rows = append(rows, policyRow(p))
	}
	return c.emit(ps, policyHeader, rows)
}

func namespaceHint(ns string) string {
	if ns == "" {
		return " (a namespaced one needs --namespace NS; --all-namespaces lists every one)"
	}
	return ""
}

var policyHeader = []string{"NAMESPACE", "NAME", "ORDER", "SELECTOR", "TYPES", "INGRESS-RULES", "EGRESS-RULES", "OWNER"}

func policyRow(p model.Policy) []string {
	ns, sel, owner := p.Namespace, p.Selector, p.Owner
	if ns == "" {
		ns = "(global)"
	}
	if sel == "" {
		sel = "(all)"
	}
	if owner == "" {
		owner = "-"
	}
	return []string{ns, p.Name, strconv.Itoa(p.Order), sel, joinOrDash(p.Types), strconv.Itoa(len(p.Ingress)), strconv.Itoa(len(p.Egress)), owner}
}

func policyRemove(cx context.Context, kv store.KV, c *ctx) error {
	if err := needArgs(c, 1, "one policy NAME"); err != nil {
		return err
	}
	ns, err := namespaceFlag(c)
	if err != nil {
		return err
	}
	name := c.args[0]
	err = store.Update(cx, kv, model.PolicyKey(ns, name), func(p *model.Policy, exists bool) (*model.Policy, error) {
		if !exists {
			return nil, fmt.Errorf("policy %s does not exist%s", policyName(ns, name), namespaceHint(ns))
		}
		if p.Owner == ownerK8s && !c.has("force") {
			if p.Name == "" {
				p.Namespace, p.Name = ns, name
			}
			return nil, k8sOwnedErr(p, "removes")
		}
		return nil, nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "policy %s removed\n", policyName(ns, name))
	return nil
}
