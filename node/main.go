// tabby-node is the per-host daemon: BGP, routes and tunnels to other hosts'
// blocks, nat-outgoing, and (with profiles) the packet filter.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/tabby-net/tabby/node/agent"
	"github.com/tabby-net/tabby/pkg/store"
)

// Version is set at build time.
var Version = "dev"

// env returns the environment's value for a flag, so the DaemonSet and the
// systemd unit can configure the daemon either way (flags win).
func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func main() {
	fs := flag.NewFlagSet("tabby-node", flag.ContinueOnError)
	host, _ := os.Hostname()
	name := fs.String("name", env("TABBY_NODENAME", host), "this host's name (env TABBY_NODENAME)")
	ip := fs.String("ip", env("TABBY_IP", "autodetect"), "IPv4 underlay address[/prefix], or autodetect (env TABBY_IP)")
	ip6 := fs.String("ip6", env("TABBY_IP6", ""), "IPv6 underlay address/prefix (env TABBY_IP6)")
	as := fs.Uint("as", 0, "AS number of this host (default: the cluster's, 64512)")
	eps := fs.String("etcd-endpoints", env("ETCD_ENDPOINTS", "http://127.0.0.1:2379"), "etcd URLs, comma separated (env ETCD_ENDPOINTS)")
	ca := fs.String("etcd-ca-cert-file", env("ETCD_CA_CERT_FILE", ""), "etcd CA file (env ETCD_CA_CERT_FILE)")
	cert := fs.String("etcd-cert-file", env("ETCD_CERT_FILE", ""), "etcd client certificate (env ETCD_CERT_FILE)")
	key := fs.String("etcd-key-file", env("ETCD_KEY_FILE", ""), "etcd client key (env ETCD_KEY_FILE)")
	stateDir := fs.String("state-dir", env("TABBY_STATE_DIR", "/var/run/tabby"), "state dir: nodename, status socket, locks (env TABBY_STATE_DIR)")
	metrics := fs.String("metrics-addr", env("TABBY_METRICS_ADDR", "127.0.0.1:9099"), "Prometheus metrics address; empty to disable")
	bgpPort := fs.Int("bgp-port", 179, "BGP port to listen on")
	hostPorts := fs.String("workload-host-ports", env("TABBY_WORKLOAD_HOST_PORTS", ""), "host ports local workloads may reach, e.g. udp:53,tcp:53 (default none)")
	logLevel := fs.String("log-level", env("TABBY_LOG_LEVEL", "info"), "debug, info, warn or error")
	version := fs.Bool("version", false, "print the version")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *version {
		fmt.Println("tabby-node", Version)
		return
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "tabby-node: --log-level %q: use debug, info, warn or error\n", *logLevel)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("node", *name)
	slog.SetDefault(log)
	if *as > 0xffffffff {
		fmt.Fprintln(os.Stderr, "tabby-node: --as must fit in 32 bits")
		os.Exit(2)
	}
	hp, err := agent.ParseHostPorts(*hostPorts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tabby-node: --workload-host-ports:", err)
		os.Exit(2)
	}
	var endpoints []string
	for _, e := range strings.Split(*eps, ",") {
		if e = strings.TrimSpace(e); e != "" {
			endpoints = append(endpoints, e)
		}
	}
	a, err := agent.New(agent.Config{Name: *name, IPv4: *ip, IPv6: *ip6, ASN: uint32(*as), StateDir: *stateDir,
		MetricsAddr: *metrics, BGPPort: *bgpPort, Version: Version, Log: log, HostPorts: hp,
		Etcd: store.Config{Endpoints: endpoints, CAFile: *ca, CertFile: *cert, KeyFile: *key}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "tabby-node:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("starting", "version", Version, "ip", *ip, "bgpPort", strconv.Itoa(*bgpPort))
	if err := a.Run(ctx); err != nil {
		log.Error("tabby-node stopped", "err", err)
		os.Exit(1)
	}
}
