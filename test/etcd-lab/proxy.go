package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"google.golang.org/grpc"
)

// runProxy serves etcd's gRPC proxy: the KV, Watch, Lease, Cluster and
// Maintenance services of `etcd grpc-proxy start`, built from the same
// package, without its TLS, namespace, leasing and resolver options
// (the lab needs none of them). The watch service is the point: watchers
// of one range from compatible revisions are served by one upstream watch.
func runProxy(args []string) error {
	fs := flag.NewFlagSet("grpc-proxy", flag.ContinueOnError)
	endpoints := fs.String("endpoints", "http://127.0.0.1:2379", "comma-separated etcd URLs to proxy")
	listen := fs.String("listen", "127.0.0.1:23790", "host:port to serve clients on")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var muted atomic.Bool
	lg, err := newLogger(*logLevel, &muted)
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      lg,
		// As etcd's proxy: no size limit between proxy and etcd beyond
		// what etcd itself enforces.
		MaxCallRecvMsgSize: math.MaxInt32,
	})
	if err != nil {
		return fmt.Errorf("proxy client: %w", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err = cli.Get(ctx, "_", clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("proxy: etcd at %s: %w", *endpoints, err)
	}

	kvp, _ := grpcproxy.NewKvProxy(cli)
	watchp, _ := grpcproxy.NewWatchProxy(cli.Ctx(), lg, cli)
	clusterp, _ := grpcproxy.NewClusterProxy(lg, cli, "", "")
	leasep, _ := grpcproxy.NewLeaseProxy(cli.Ctx(), cli)
	srv := grpc.NewServer(grpc.MaxConcurrentStreams(math.MaxUint32), grpc.MaxRecvMsgSize(math.MaxInt32), grpc.MaxSendMsgSize(math.MaxInt32))
	pb.RegisterKVServer(srv, kvp)
	pb.RegisterWatchServer(srv, watchp)
	pb.RegisterClusterServer(srv, clusterp)
	pb.RegisterLeaseServer(srv, leasep)
	pb.RegisterMaintenanceServer(srv, grpcproxy.NewMaintenanceProxy(cli))
	pb.RegisterAuthServer(srv, grpcproxy.NewAuthProxy(cli))

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("proxy listen: %w", err)
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	fmt.Printf("READY http://%s\n", l.Addr())
	select {
	case <-sigc:
		srv.Stop()
		return nil
	case err := <-errc:
		return fmt.Errorf("proxy serve: %w", err)
	}
}
