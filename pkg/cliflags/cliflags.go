// Package cliflags is the command-line contract tabby's programs share:
// where etcd is and how to reach it, and the log level. The flag names and
// their environment variables are what deployments (the systemd unit, the
// DaemonSet, scripts) set, so they are written once, here. A flag's
// environment variable is its default: the command line wins.
package cliflags

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// DefaultEtcdEndpoints is etcd on this host, where the etcd flags say nothing.
const DefaultEtcdEndpoints = "http://127.0.0.1:2379"

// Env returns the environment's value of name, or def when it is unset or
// empty.
func Env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Flag is one shared flag that takes a value, described for any parser
// (tabbyctl has its own).
type Flag struct {
	Name    string
	Env     string
	Default string
	Help    string
}

// Usage is the help text, naming the environment variable.
func (f Flag) Usage() string { return fmt.Sprintf("%s (env %s)", f.Help, f.Env) }

// The etcd flags, in the order help lists them.
var (
	FlagEtcdEndpoints = Flag{Name: "etcd-endpoints", Env: "ETCD_ENDPOINTS", Default: DefaultEtcdEndpoints, Help: "etcd URLs, comma separated"}
	FlagEtcdCA        = Flag{Name: "etcd-ca-cert-file", Env: "ETCD_CA_CERT_FILE", Help: "CA file for etcd TLS"}
	FlagEtcdCert      = Flag{Name: "etcd-cert-file", Env: "ETCD_CERT_FILE", Help: "client certificate for etcd"}
	FlagEtcdKey       = Flag{Name: "etcd-key-file", Env: "ETCD_KEY_FILE", Help: "client key for etcd"}
	EtcdFlags         = []Flag{FlagEtcdEndpoints, FlagEtcdCA, FlagEtcdCert, FlagEtcdKey}
)

// FlagLogLevel is the daemons' log level.
var FlagLogLevel = Flag{Name: "log-level", Env: "TABBY_LOG_LEVEL", Default: "info", Help: "debug, info, warn or error"}

// Etcd is where etcd is and the TLS files to reach it with.
type Etcd struct {
	Endpoints string // comma separated
	CAFile    string
	CertFile  string
	KeyFile   string
}

func (e *Etcd) fields() []*string { return []*string{&e.Endpoints, &e.CAFile, &e.CertFile, &e.KeyFile} }

// Register adds the etcd flags to fs, each defaulting to its environment
// variable.
func (e *Etcd) Register(fs *flag.FlagSet) {
	for i, p := range e.fields() {
		f := EtcdFlags[i]
		fs.StringVar(p, f.Name, Env(f.Env, f.Default), f.Usage())
	}
}

// EtcdFrom reads the etcd settings for a parser other than package flag:
// lookup returns a flag's value and whether it was given; the environment,
// then the default, stand in for a flag not given.
func EtcdFrom(lookup func(name string) (string, bool)) Etcd {
	var e Etcd
	for i, p := range e.fields() {
		f := EtcdFlags[i]
		if v, ok := lookup(f.Name); ok {
			*p = v
		} else {
			*p = Env(f.Env, f.Default)
		}
	}
	return e
}

// Config is the store configuration e describes.
func (e Etcd) Config() store.Config {
	var eps []string
	for _, s := range strings.Split(e.Endpoints, ",") {
		if s = strings.TrimSpace(s); s != "" {
			eps = append(eps, s)
		}
	}
	return store.Config{Endpoints: eps, CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile}
}

// Open connects to etcd (lazily: an etcd that is down shows on first use).
func (e Etcd) Open() (*etcdv3.KV, error) {
	kv, err := etcdv3.New(e.Config())
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", e.Endpoints, err)
	}
	return kv, nil
}

// Log is the logging flags' values.
type Log struct {
	Level string
}

// Register adds --log-level to fs, defaulting to TABBY_LOG_LEVEL.
func (l *Log) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.Level, FlagLogLevel.Name, Env(FlagLogLevel.Env, FlagLogLevel.Default), FlagLogLevel.Usage())
}

// Logger is a text logger to w at the level the flags say; an unknown level
// is a usage error.
func (l Log) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.Level)); err != nil {
		return nil, fmt.Errorf("--%s %q: use debug, info, warn or error", FlagLogLevel.Name, l.Level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})), nil
}

// Program is a daemon's command line: its own flags on Flags, and the
// shared ones (etcd, --log-level, --version) registered by NewProgram.
type Program struct {
	Name    string // as in messages: tabby-node
	Version string
	Flags   *flag.FlagSet
	Etcd    Etcd
	Log     Log
	version bool
}

// NewProgram starts the command line of program name.
func NewProgram(name, version string) *Program {
	p := &Program{Name: name, Version: version, Flags: flag.NewFlagSet(name, flag.ContinueOnError)}
	p.Etcd.Register(p.Flags)
	p.Log.Register(p.Flags)
	p.Flags.BoolVar(&p.version, "version", false, "print the version")
	return p
}

// Parse reads the command line and returns the logger it asks for. It does
// not return on --version (exit 0) or on a usage error (exit 2).
func (p *Program) Parse(args []string) *slog.Logger {
	if err := p.Flags.Parse(args); err != nil {
		os.Exit(2) // the flag package has said why
	}
	if p.version {
		fmt.Println(p.Name, p.Version)
		os.Exit(0)
	}
	log, err := p.Log.Logger(os.Stderr)
	if err != nil {
		p.Exit(2, err)
	}
	return log
}

// Exit prints "NAME: err" to stderr and exits with code.
func (p *Program) Exit(code int, err any) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", p.Name, err)
	os.Exit(code)
}
