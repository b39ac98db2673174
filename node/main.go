// tabby-node is the per-host daemon: BGP, routes and tunnels to other hosts'
// blocks, nat-outgoing, and (with profiles) the packet filter.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"syscall"

	"github.com/tabby-net/tabby/node/agent"
	"github.com/tabby-net/tabby/pkg/cliflags"
)

// gcHeadroomBytes is how far the heap may grow past its live part before
// a collection, while that is at least the live part again (GOGC 100).
const gcHeadroomBytes = 16 << 20

// gcPercent is the GOGC that lets a live heap of live bytes grow by
// headroom: 400 while the heap is small (the daemon's default), down to
// Go's 100 as it grows.
func gcPercent(live, headroom uint64) int {
	if live == 0 {
		return 400
	}
	return int(min(max(headroom*100/live, 100), 400))
}

// gcCycle is collected once per GC cycle: its finalizer retunes GOGC.
type gcCycle struct{ _ *byte }

// gcHeadroom retunes GOGC after every collection to gcPercent of the live
// heap. A fixed GOGC 400 made the heap, and the resident set, five times
// the live heap, and the live heap grows with the host list and the
// host's endpoints: at 10,000 hosts a node held 57-68 MB for ~10 MB live.
func gcHeadroom(headroom uint64) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	last := -1
	var arm func()
	arm = func() {
		runtime.SetFinalizer(&gcCycle{}, func(*gcCycle) {
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 {
				if p := gcPercent(sample[0].Value.Uint64(), headroom); p != last {
					debug.SetGCPercent(p)
					last = p
				}
			}
			arm()
		})
	}
	arm()
}

// Version is set at build time.
var Version = "dev"

// env returns the environment's value for a flag, so the DaemonSet and the
// systemd unit can configure the daemon either way (flags win).
func env(name, def string) string { return cliflags.Env(name, def) }

func main() {
	// The daemon's reconciles allocate in bursts while an ADD waits:
	// collecting less often trades a few MB for passes that are not
	// stretched by mark assists. A few MB, not a multiple of the heap:
	// see gcHeadroom. A GOGC the operator set (anything but the default
	// 100) is kept.
	if prev := debug.SetGCPercent(gcPercent(0, gcHeadroomBytes)); prev != 100 {
		debug.SetGCPercent(prev)
	} else {
		gcHeadroom(gcHeadroomBytes)
	}
	prog := cliflags.NewProgram("tabby-node", Version)
	fs := prog.Flags
	host, _ := os.Hostname()
	name := fs.String("name", env("TABBY_NODENAME", host), "this host's name (env TABBY_NODENAME)")
	ip := fs.String("ip", env("TABBY_IP", "autodetect"), "IPv4 underlay address[/prefix], or autodetect (env TABBY_IP)")
	ip6 := fs.String("ip6", env("TABBY_IP6", ""), "IPv6 underlay address/prefix (env TABBY_IP6)")
	as := fs.Uint("as", 0, "AS number of this host (default: the cluster's, 64512)")
	stateDir := fs.String("state-dir", env("TABBY_STATE_DIR", "/var/run/tabby"), "state dir: nodename, status socket, locks (env TABBY_STATE_DIR)")
	metrics := fs.String("metrics-addr", env("TABBY_METRICS_ADDR", "127.0.0.1:9099"), "Prometheus metrics address; empty to disable")
	bgpPort := fs.Int("bgp-port", 179, "BGP port to listen on")
	holdTime := fs.Duration("bgp-hold-time", 0, "BGP hold time: a peer silent this long is down (default 90s, at least 3s)")
	restartTime := fs.Duration("bgp-restart-time", 0, "BGP graceful restart time: how long peers keep this host's routes after its session drops (default 120s)")
	k8sNode := fs.String("k8s-node-ref", env("TABBY_K8S_NODE_REF", ""), "the Kubernetes Node this host is (the DaemonSet sets it from spec.nodeName): tabby-kube-controllers removes the host from etcd when that Node is deleted; empty outside Kubernetes (env TABBY_K8S_NODE_REF)")
	rr := fs.String("route-reflector", env("TABBY_ROUTE_REFLECTOR", ""), "make this host a BGP route reflector with this cluster ID (an IPv4 address), or off; default: as tabbyctl node set left it (env TABBY_ROUTE_REFLECTOR)")
	hostPorts := fs.String("workload-host-ports", env("TABBY_WORKLOAD_HOST_PORTS", ""), "host ports local workloads may reach, e.g. udp:53,tcp:53 (default none)")
	log := prog.Parse(os.Args[1:]).With("node", *name)
	slog.SetDefault(log)
	if *as > 0xffffffff {
		prog.Exit(2, "--as must fit in 32 bits")
	}
	hp, err := agent.ParseHostPorts(*hostPorts)
	if err != nil {
		prog.Exit(2, fmt.Errorf("--workload-host-ports: %w", err))
	}
	a, err := agent.New(agent.Config{Name: *name, IPv4: *ip, IPv6: *ip6, ASN: uint32(*as), StateDir: *stateDir,
		MetricsAddr: *metrics, BGPPort: *bgpPort, BGPHoldTime: *holdTime, BGPRestartTime: *restartTime, Version: Version, Log: log, HostPorts: hp,
		RouteReflector: *rr, K8sNode: *k8sNode, Etcd: prog.Etcd.Config()})
	if err != nil {
		prog.Exit(2, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("starting", "version", Version, "ip", *ip, "bgpPort", strconv.Itoa(*bgpPort))
	if err := a.Run(ctx); err != nil {
		log.Error("tabby-node stopped", "err", err)
		os.Exit(1)
	}
}
