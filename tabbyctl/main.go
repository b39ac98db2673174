// tabbyctl is tabby's command-line tool: pools, profiles and rules,
// policies, containers, nodes, BGP peers and IPAM.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tabby-net/tabby/pkg/cnierr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdauth"
)

// Version is set at build time.
var Version = "dev"

func commands() []*command {
	var cmds []*command
	cmds = append(cmds, poolCommands()...)
	cmds = append(cmds, profileCommands()...)
	cmds = append(cmds, policyCommands()...)
	cmds = append(cmds, containerCommands()...)
	cmds = append(cmds, nodeCommands()...)
	cmds = append(cmds, ipamCommands()...)
	cmds = append(cmds, authCommands()...)
	cmds = append(cmds, &command{path: []string{"version"}, usage: "version", help: "print the version", run: func(c *ctx) error {
		fmt.Fprintln(c.out, "tabbyctl", Version)
		return nil
	}})
	return cmds
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(argv []string) int {
	cmds := commands()
	if len(argv) == 0 || argv[0] == "help" || argv[0] == "--help" || argv[0] == "-h" {
		if len(argv) > 1 && argv[1] == "--markdown" {
			fmt.Print(markdown(cmds))
			return 0
		}
		fmt.Print(helpText(cmds))
		if len(argv) == 0 {
			return 2
		}
		return 0
	}
	c, err := parse(cmds, argv)
	if err == nil && c.has("help") {
		fmt.Printf("usage: tabbyctl %s\n  %s\n", c.cmd.usage, c.cmd.help)
		return 0
	}
	if err == nil {
		err = c.cmd.run(c)
	}
	if err == nil {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(os.Stderr, "tabbyctl: %v\n", err)
		if c != nil {
			fmt.Fprintf(os.Stderr, "usage: tabbyctl %s\n", c.cmd.usage)
		} else {
			fmt.Fprintln(os.Stderr, "run 'tabbyctl help' for the commands")
		}
		return 2
	}
	fmt.Fprintf(os.Stderr, "tabbyctl: %v\n", err)
	if etcdauth.IsPermissionDenied(err) {
		fmt.Fprintln(os.Stderr, "tabbyctl: etcd refused this to the user named by the client certificate's CN (--etcd-cert-file); 'tabbyctl auth show' lists what each role may write")
	}
	if store.IsUnavailable(err) {
		return 3
	}
	return 1
}

// kv connects to etcd from the global flags and environment.
func (c *ctx) kv() (store.KV, error) {
	kv, err := c.etcd().Open()
	if err != nil {
		return nil, err // not a nil *KV in a non-nil interface
	}
	return kv, nil
}

// withKV runs fn with a connected store and a deadline.
func withKV(fn func(context.Context, store.KV, *ctx) error) func(*ctx) error {
	return func(c *ctx) error {
		kv, err := c.kv()
		if err != nil {
			return err
		}
		defer kv.Close()
		cx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := checkSchema(cx, kv, c); err != nil {
			return err
		}
		return fn(cx, kv, c)
	}
}

// checkSchema keeps a binary from writing to a datastore whose schema only
// newer binaries may write (model.EnsureSchema), and writes the schema
// record when there is none. Commands that only read still run against a
// newer schema (records' unknown fields are ignored), with a warning.
func checkSchema(cx context.Context, kv store.KV, c *ctx) error {
	switch c.cmd.path[len(c.cmd.path)-1] {
	case "show", "check", "status":
		s, ok, err := model.ReadSchema(cx, kv)
		if err == nil && ok {
			err = s.Check()
		}
		if err != nil && !store.IsUnavailable(err) {
			fmt.Fprintf(os.Stderr, "tabbyctl: warning: %v\n", err)
		}
		return nil
	}
	_, err := model.EnsureSchema(cx, kv)
	return err
}

func needArgs(c *ctx, n int, what string) error {
	if len(c.args) != n {
		return usagef("want %s", what)
	}
	return nil
}

// codeErr keeps an IPAM error's message as it is: it already says what to do.
func codeErr(err error) error {
	if cnierr.CodeOf(err) != 0 {
		return errors.New(err.Error())
	}
	return err
}

func joinOrDash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}
