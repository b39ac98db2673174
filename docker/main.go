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
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tabby-net/tabby/pkg/cliflags"
)

// Version is set at build time.
var Version = "dev"

// DefaultSocket is where dockerd looks for the plugin named "tabby".
const DefaultSocket = "/run/docker/plugins/tabby.sock"

// env returns the environment's value for a flag (flags win).
func env(name, def string) string { return cliflags.Env(name, def) }

func main() {
	prog := cliflags.NewProgram("tabby-docker", Version)
	fs := prog.Flags
	socket := fs.String("socket", env("TABBY_DOCKER_SOCKET", DefaultSocket), "plugin socket dockerd discovers (env TABBY_DOCKER_SOCKET)")
	nodename := fs.String("nodename", env("TABBY_NODENAME", ""), "this host's name; empty: what tabby-node wrote to <state-dir>/nodename, else the hostname (env TABBY_NODENAME)")
	stateDir := fs.String("state-dir", env("TABBY_STATE_DIR", "/var/run/tabby"), "tabby-node's state dir: node name, MTU, status socket (env TABBY_STATE_DIR)")
	dockerHost := fs.String("docker-host", env("DOCKER_HOST", "unix:///var/run/docker.sock"), "Docker API, to learn network names (env DOCKER_HOST)")
	mtu := fs.Int("mtu", 0, "workload MTU; 0: the uplink MTU less the pool's encapsulation")
	policyTimeout := fs.Duration("policy-timeout", 10*time.Second, "how long Join waits for tabby-node to put the endpoint's rules in force")
	orphanGrace := fs.Duration("orphan-grace", 2*time.Minute, "a network record Docker does not know is removed once this old (checked at start and this often)")
	log := prog.Parse(os.Args[1:])
	slog.SetDefault(log)

	kv, err := prog.Etcd.Open()
	if err != nil {
		prog.Exit(2, err)
	}
	defer kv.Close()
	api, err := newDockerAPI(*dockerHost)
	if err != nil {
		prog.Exit(2, fmt.Errorf("--docker-host: %w", err))
	}
	d := &Driver{KV: kv, Nodename: *nodename, StateDir: *stateDir, MTU: *mtu, PolicyTimeout: *policyTimeout,
		Docker: api, Log: log}

	ln, err := listenUnix(*socket)
	if err != nil {
		prog.Exit(1, err)
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
	// A CreateNetwork whose answer a crash lost leaves a record dockerd
	// never deletes.
	go d.sweepEvery(ctx, *orphanGrace)
	log.Info("tabby-docker serving", "version", Version, "socket", *socket, "etcd", prog.Etcd.Config().Endpoints, "stateDir", *stateDir)
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
