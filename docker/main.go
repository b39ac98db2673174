// tabby-docker is a libnetwork remote network driver and remote IPAM driver
// for Docker, on one plugin socket (/run/docker/plugins/tabby.sock), so that
//
//	docker network create --driver tabby --ipam-driver tabby --subnet 10.0.0.0/16 net1
//	docker run --net net1 --ip 10.0.0.5 ...
//
// gives containers tabby endpoints: addresses from a tabby pool (created on
// first use), a veth named tby... on the host with proxy ARP and a /32 route,
// the endpoint record in etcd, and the network's profile (named after the
// network) in force before the container starts. It runs next to tabby-node
// on every Docker host; see the README's "Runtimes" section.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// Version is set at build time.
var Version = "dev"

// DefaultSocket is where dockerd looks for the plugin named "tabby".
const DefaultSocket = "/run/docker/plugins/tabby.sock"

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func main() {
	fs := flag.NewFlagSet("tabby-docker", flag.ContinueOnError)
	socket := fs.String("socket", env("TABBY_DOCKER_SOCKET", DefaultSocket), "plugin socket dockerd discovers (env TABBY_DOCKER_SOCKET)")
	eps := fs.String("etcd-endpoints", env("ETCD_ENDPOINTS", "http://127.0.0.1:2379"), "etcd URLs, comma separated (env ETCD_ENDPOINTS)")
	ca := fs.String("etcd-ca-cert-file", env("ETCD_CA_CERT_FILE", ""), "etcd CA file (env ETCD_CA_CERT_FILE)")
	cert := fs.String("etcd-cert-file", env("ETCD_CERT_FILE", ""), "etcd client certificate (env ETCD_CERT_FILE)")
	key := fs.String("etcd-key-file", env("ETCD_KEY_FILE", ""), "etcd client key (env ETCD_KEY_FILE)")
	nodename := fs.String("nodename", env("TABBY_NODENAME", ""), "this host's name; empty: what tabby-node wrote to <state-dir>/nodename, else the hostname (env TABBY_NODENAME)")
	stateDir := fs.String("state-dir", env("TABBY_STATE_DIR", "/var/run/tabby"), "tabby-node's state dir: node name, MTU, status socket (env TABBY_STATE_DIR)")
	dockerHost := fs.String("docker-host", env("DOCKER_HOST", "unix:///var/run/docker.sock"), "Docker API, to learn network names (env DOCKER_HOST)")
	mtu := fs.Int("mtu", 0, "workload MTU; 0: the uplink MTU less the pool's encapsulation")
	policyTimeout := fs.Duration("policy-timeout", 10*time.Second, "how long Join waits for tabby-node to put the endpoint's rules in force")
	logLevel := fs.String("log-level", env("TABBY_LOG_LEVEL", "info"), "debug, info, warn or error")
	version := fs.Bool("version", false, "print the version")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *version {
		fmt.Println("tabby-docker", Version)
		return
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "tabby-docker: --log-level %q: use debug, info, warn or error\n", *logLevel)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)

	var endpoints []string
	for _, e := range strings.Split(*eps, ",") {
		if e = strings.TrimSpace(e); e != "" {
			endpoints = append(endpoints, e)
		}
	}
	kv, err := etcdv3.New(store.Config{Endpoints: endpoints, CAFile: *ca, CertFile: *cert, KeyFile: *key})
	if err != nil {
		fmt.Fprintln(os.Stderr, "tabby-docker:", err)
		os.Exit(2)
	}
	defer kv.Close()
	api, err := newDockerAPI(*dockerHost)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tabby-docker: --docker-host:", err)
		os.Exit(2)
	}
	d := &Driver{KV: kv, Nodename: *nodename, StateDir: *stateDir, MTU: *mtu, PolicyTimeout: *policyTimeout,
		Docker: api, Log: log}

	ln, err := listenUnix(*socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tabby-docker:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: NewHandler(d), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("tabby-docker serving", "version", Version, "socket", *socket, "etcd", endpoints, "stateDir", *stateDir)
	err = srv.Serve(ln)
	// The socket file goes with the daemon: dockerd must not find a dead one.
	_ = os.Remove(*socket)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("tabby-docker stopped", "err", err)
		os.Exit(1)
	}
	d.Close()
	log.Info("tabby-docker stopped")
}

// listenUnix listens on path, replacing a stale socket file (one that no
// process answers on) but refusing to steal a live one.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process (another tabby-docker?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
