// Command etcd-lab runs a one-member embedded etcd for tabby's test lab and
// demo. It is meant to run inside the lab's underlay network namespace, so
// that every simulated host reaches it on the underlay bridge address:
//
//	etcd-lab --listen-client http://198.19.0.254:2379 --data-dir DIR [--name lab]
//
// With --cert-file and --key-file (and https:// client URLs) it serves TLS;
// --trusted-ca-file with --client-cert-auth requires client certificates,
// and etcd then takes a client's user from its certificate's CN once
// authentication is enabled (tabbyctl auth setup --enable).
//
// It prints "READY <client-url>" on stdout once etcd serves requests and
// exits cleanly (status 0) on SIGTERM or SIGINT. Logs go to stderr at level
// warn, so a healthy run is silent.
//
// Its backend quota defaults to 8 GiB (etcd's suggested maximum) and a
// transaction may hold 2,048 operations, so that the scale harness
// (test/scale) can load 1,000,000 workloads' records; lab data is thrown
// away after every run, so the room costs nothing.
//
//	etcd-lab grpc-proxy --endpoints URL --listen ADDR
//
// runs etcd's own gRPC proxy (go.etcd.io/etcd/server/v3/proxy/grpcproxy,
// the code behind `etcd grpc-proxy`) in front of that etcd: identical
// watches of its clients share one watch upstream. It also prints READY.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "etcd-lab: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) > 1 && os.Args[1] == "grpc-proxy" {
		return runProxy(os.Args[2:])
	}
	listen := flag.String("listen-client", "http://127.0.0.1:2379", "comma-separated client URLs to listen on (and advertise)")
	dataDir := flag.String("data-dir", "", "data directory (required)")
	name := flag.String("name", "lab", "member name")
	peer := flag.String("listen-peer", "", "peer URL; default http://127.0.0.1:<free port>")
	logLevel := flag.String("log-level", "warn", "etcd log level: debug, info, warn, error")
	certFile := flag.String("cert-file", "", "server certificate for https:// client URLs")
	keyFile := flag.String("key-file", "", "server key")
	caFile := flag.String("trusted-ca-file", "", "CA bundle that client certificates must chain to")
	clientCertAuth := flag.Bool("client-cert-auth", false, "require a client certificate signed by --trusted-ca-file")
	readyTimeout := flag.Duration("ready-timeout", time.Minute, "give up if etcd is not ready within this time")
	quota := flag.Int64("quota-backend-bytes", 8<<30, "backend size quota (bytes)")
	maxTxnOps := flag.Uint("max-txn-ops", 2048, "most operations in one transaction")
	maxRequest := flag.Uint("max-request-bytes", 8<<20, "largest request (bytes)")
	pprof := flag.Bool("enable-pprof", false, "serve Go's profiles at the client URL + /debug/pprof/ (the scale harness profiles etcd under load)")
	flag.Parse()
	if *dataDir == "" {
		return fmt.Errorf("--data-dir is required")
	}

	clientURLs, err := parseURLs(*listen)
	if err != nil {
		return fmt.Errorf("--listen-client: %w", err)
	}
	if *peer == "" {
		p, err := freeLoopbackPort()
		if err != nil {
			return fmt.Errorf("pick peer port: %w", err)
		}
		*peer = fmt.Sprintf("http://127.0.0.1:%d", p)
	}
	peerURLs, err := parseURLs(*peer)
	if err != nil {
		return fmt.Errorf("--listen-peer: %w", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = clientURLs
	cfg.AdvertiseClientUrls = clientURLs
	cfg.ListenPeerUrls = peerURLs
	cfg.AdvertisePeerUrls = peerURLs
	cfg.InitialCluster = cfg.InitialClusterFromName(*name)
	if *certFile != "" || *keyFile != "" || *caFile != "" || *clientCertAuth {
		if *certFile == "" || *keyFile == "" {
			return fmt.Errorf("TLS needs both --cert-file and --key-file")
		}
		if *clientCertAuth && *caFile == "" {
			return fmt.Errorf("--client-cert-auth needs --trusted-ca-file")
		}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: *certFile, KeyFile: *keyFile,
			TrustedCAFile: *caFile, ClientCertAuth: *clientCertAuth}
		cfg.ClientAutoTLS = false
	}
	cfg.QuotaBackendBytes = *quota
	cfg.MaxTxnOps = *maxTxnOps
	cfg.MaxRequestBytes = *maxRequest
	cfg.EnablePprof = *pprof
	// embed leaves this 0, which makes every request "expensive": etcd-lab
	// logged each one, its content rendered as text, before answering it
	// (485 MB of log for the scale harness's load). etcd's own default.
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration
	var closing atomic.Bool
	lg, err := newLogger(*logLevel, &closing)
	if err != nil {
		return err
	}
	cfg.LogLevel = *logLevel
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	// Lab data is thrown away after every run: skipping fsync makes the
	// many small transactions of the e2e tests much faster.
	cfg.UnsafeNoFsync = true

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer func() {
		// Closing makes etcd's servers log their own shutdown as errors
		// ("mux: server closed", ...); nothing is wrong, so say nothing.
		closing.Store(true)
		e.Close()
	}()

	// Register for signals before READY so a signal sent right after it is
	// never lost to the default (non-clean) action.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)

	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("etcd failed before ready: %w", err)
	case sig := <-sigc:
		fmt.Fprintf(os.Stderr, "etcd-lab: %v before ready, stopping\n", sig)
		return nil
	case <-time.After(*readyTimeout):
		return fmt.Errorf("etcd not ready after %v", *readyTimeout)
	}
	fmt.Printf("READY %s\n", clientURLs[0].String())

	select {
	case <-sigc:
		return nil // deferred Close stops etcd cleanly
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}

func parseURLs(s string) ([]url.URL, error) {
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		if u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("%q: want scheme://host:port", part)
		}
		out = append(out, *u)
	}
	return out, nil
}

// freeLoopbackPort asks the kernel for an unused port. The port is released
// before etcd binds it; in the lab's private namespace nothing else races
// for it.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// newLogger is etcd's usual JSON logger on stderr, except that it drops
// everything once closing is set.
func newLogger(level string, closing *atomic.Bool) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	zc.OutputPaths = []string{"stderr"}
	zc.ErrorOutputPaths = []string{"stderr"}
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	lg, err := zc.Build(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return mutableCore{Core: c, mute: closing}
	}))
	if err != nil {
		return nil, fmt.Errorf("build logger: %w", err)
	}
	return lg, nil
}

type mutableCore struct {
	zapcore.Core
	mute *atomic.Bool
}

func (c mutableCore) With(f []zapcore.Field) zapcore.Core {
	return mutableCore{Core: c.Core.With(f), mute: c.mute}
}

func (c mutableCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.mute.Load() {
		return ce
	}
	return c.Core.Check(e, ce)
}
