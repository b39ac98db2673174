// tabby-kube-controllers keeps tabby's records in etcd in step with a
// Kubernetes cluster: every Namespace's profile k8s_ns.<namespace>, which
// the CNI plugin gives the namespace's pods, and its labels (namespace
// selectors); every pod's labels, named ports and profiles, which the CNI
// plugin reads at ADD, and its endpoints' labels after that; every
// NetworkPolicy as a policy; and it removes from etcd the tabby host of a
// Node that is deleted (its endpoints, addresses, blocks and record). It
// runs as a one-replica
// Deployment (conf/k8s/tabby.yaml); one at a time is enough because every
// write is idempotent and compared before it is made, and a second replica
// briefly running during a rollout writes the same values.
package main

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tabby-net/tabby/kube-controllers/internal/ctrl"
	"github.com/tabby-net/tabby/kube-controllers/internal/namespace"
	"github.com/tabby-net/tabby/kube-controllers/internal/netpol"
	"github.com/tabby-net/tabby/kube-controllers/internal/node"
	"github.com/tabby-net/tabby/kube-controllers/internal/pod"
	"github.com/tabby-net/tabby/pkg/cliflags"
)

// Version is set at build time.
var Version = "dev"

func main() {
	prog := cliflags.NewProgram("tabby-kube-controllers", Version)
	fs := prog.Flags
	kubeconfig := fs.String("kubeconfig", cliflags.Env("KUBECONFIG", ""), "kubeconfig file; empty: the pod's in-cluster config (env KUBECONFIG)")
	health := fs.String("health-addr", cliflags.Env("TABBY_HEALTH_ADDR", "127.0.0.1:9098"), "address of /healthz (200 once caught up); empty to disable (env TABBY_HEALTH_ADDR)")
	resync := fs.Duration("resync", 5*time.Minute, "how often everything is compared again")
	log := prog.Parse(os.Args[1:])
	slog.SetDefault(log)

	var cfg *rest.Config
	var err error
	if *kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		prog.Exit(2, err)
	}
	cfg.UserAgent = "tabby-kube-controllers/" + Version
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		prog.Exit(2, err)
	}
	kv, err := prog.Etcd.Open()
	if err != nil {
		prog.Exit(2, err)
	}
	defer kv.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	f := informers.NewSharedInformerFactory(cs, *resync)
	ctrls := []*ctrl.Controller{namespace.New(f, kv, log), pod.New(f, kv, log), netpol.New(f, kv, log), node.New(f, kv, log)}
	for _, c := range ctrls {
		c.Resync = *resync
	}
	caughtUp := func() bool {
		for _, c := range ctrls {
			if !c.CaughtUp() {
				return false
			}
		}
		return true
	}
	if *health != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if !caughtUp() {
				http.Error(w, "not caught up", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		srv := &http.Server{Addr: *health, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
				log.Error("health server", "err", err)
			}
		}()
		defer srv.Close()
	}
	f.Start(ctx.Done())
	log.Info("started", "version", Version)
	var wg sync.WaitGroup
	for _, c := range ctrls {
		wg.Go(func() { c.Run(ctx) })
	}
	wg.Wait()
	f.Shutdown()
	log.Info("stopped")
}
