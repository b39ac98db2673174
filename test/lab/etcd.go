package lab

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/pkg/store"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdPort is the client port of the lab's etcd.
const EtcdPort = 2379

// EtcdIP is the address StartEtcd listens on (the underlay bridge): the
// IP a server certificate for the lab's etcd must name.
const EtcdIP = "198.19.0.254"

// EtcdTLS are the PEM files of a lab etcd that requires TLS with client
// certificates (Options.EtcdTLS). The files are read again at every start,
// so a test can rotate them and restart etcd.
type EtcdTLS struct {
	ServerCert, ServerKey string // etcd's own certificate, for EtcdIP
	CA                    string // what clients trust etcd's certificate with
	ClientCA              string // what client certificates must chain to ("" = CA)
	// ClientCert and ClientKey are the test process's identity (EtcdClient,
	// Env.Ctl): once etcd's auth is on, the user their CN names.
	ClientCert, ClientKey string
}

// StartEtcd runs etcd-lab in the underlay namespace, listening on the
// underlay bridge address so every host reaches it, waits until it serves,
// and sets l.EtcdURL. Close stops it. Calling StartEtcd again after the
// returned process was stopped restarts etcd on the same data, which is how
// tests restart the datastore.
func (l *Lab) StartEtcd() *Proc {
	l.tb.Helper()
	scheme := "http"
	if l.opts.EtcdTLS != nil {
		scheme = "https"
	}
	return l.StartEtcdIn(l.Underlay, fmt.Sprintf("%s://%s:%d", scheme, fmt.Sprintf(underlay4, 0, gwOctet), EtcdPort))
}

// StartEtcdIn is StartEtcd for another namespace and client URL (which
// must be an address of that namespace). The lab runs one etcd at a time;
// its data directory is kept per namespace.
func (l *Lab) StartEtcdIn(ns, clientURL string) *Proc {
	l.tb.Helper()
	p, err := l.startEtcd(ns, clientURL)
	if err != nil {
		l.tb.Fatalf("lab: %v", err)
	}
	return p
}

// EtcdCommand is the command line of an etcd-lab with args, as the lab
// runs its own: with Options.EtcdEnv and Options.EtcdArgs. For a test that
// runs a second etcd beside the lab's.
func (l *Lab) EtcdCommand(args ...string) ([]string, error) {
	bin, err := EtcdLabBinary()
	if err != nil {
		return nil, err
	}
	return l.etcdCommand(append([]string{bin}, args...)), nil
}

// etcdCommand adds the lab's etcd flags and environment to argv.
func (l *Lab) etcdCommand(argv []string) []string {
	argv = append(argv, l.opts.EtcdArgs...)
	if len(l.opts.EtcdEnv) > 0 {
		argv = append(append([]string{"env"}, l.opts.EtcdEnv...), argv...)
	}
	return argv
}

func (l *Lab) startEtcd(ns, url string) (*Proc, error) {
	if ns == "" {
		return nil, fmt.Errorf("start etcd: empty namespace")
	}
	l.mu.Lock()
	prev := l.etcd
	l.mu.Unlock()
	if prev != nil && !prev.Exited() {
		return nil, fmt.Errorf("start etcd: already running (pid %d)", prev.PID)
	}
	bin, err := EtcdLabBinary()
	if err != nil {
		return nil, err
	}
	logfile := filepath.Join(l.Dir, "etcd-"+ns+".log")

	// etcd-lab's stdout comes to us through a pipe until READY; after that
	// it is copied to the log, so the pipe never fills up.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	args := []string{bin, "--listen-client", url, "--data-dir", filepath.Join(l.Dir, "etcd-"+ns), "--name", "lab"}
	if t := l.opts.EtcdTLS; t != nil {
		ca := t.ClientCA
		if ca == "" {
			ca = t.CA
		}
		args = append(args, "--cert-file", t.ServerCert, "--key-file", t.ServerKey, "--trusted-ca-file", ca, "--client-cert-auth")
	}
	args = l.etcdCommand(args)
	p, err := l.start(ns, logfile, w, args...)
	w.Close() // the child has its own copy
	if err != nil {
		r.Close()
		return nil, err
	}
	ready := make(chan struct{})
	go func() {
		defer r.Close() // at EOF: etcd-lab has exited
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				close(ready)
				break
			}
		}
		// Keep reading to EOF whatever happens: a closed pipe would kill
		// etcd-lab with SIGPIPE at its next write.
		var out io.Writer = io.Discard
		if log, err := os.OpenFile(logfile, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			defer log.Close()
			out = log
		}
		for sc.Scan() {
			fmt.Fprintln(out, sc.Text())
		}
	}()

	select {
	case <-ready:
	case <-p.done:
		return nil, fmt.Errorf("etcd-lab exited before READY: %v\n%s", p.err, Tail(logfile, 20))
	case <-time.After(60 * time.Second):
		_ = p.Stop(5 * time.Second)
		return nil, fmt.Errorf("etcd-lab not READY after 60s\n%s", Tail(logfile, 20))
	}
	l.mu.Lock()
	l.etcd, l.etcdNS = p, ns
	l.EtcdURL = url
	l.mu.Unlock()
	return p, nil
}

// EtcdClient returns a client of the lab's etcd for the test process
// itself. Its connections are made inside etcd's own namespace: the test
// process lives in the root namespace, which has no route to l.EtcdURL (a
// plain client would send its packets out of eth0). Close closes it.
func (l *Lab) EtcdClient() *clientv3.Client {
	l.tb.Helper()
	if l.EtcdURL == "" {
		l.tb.Fatalf("lab: EtcdClient before StartEtcd")
	}
	var tlsCfg *tls.Config
	if t := l.opts.EtcdTLS; t != nil {
		var err error
		tlsCfg, err = store.TLSConfig(store.Config{CAFile: t.CA, CertFile: t.ClientCert, KeyFile: t.ClientKey})
		if err != nil {
			l.tb.Fatalf("lab: etcd client TLS: %v", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{l.EtcdURL},
		TLS:         tlsCfg,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return l.DialContext(ctx, l.etcdNS, "tcp", addr)
		})},
	})
	if err != nil {
		l.tb.Fatalf("lab: etcd client: %v", err)
	}
	l.mu.Lock()
	l.closers = append(l.closers, func() { cli.Close() })
	l.mu.Unlock()
	return cli
}

var etcdBin struct {
	once sync.Once
	path string
	err  error
}

// EtcdLabBinary returns the path of the etcd-lab binary: $TABBY_BIN_DIR/
// etcd-lab if that exists, else one built from this source tree with
// `go build` into the user's cache directory (a no-op after the first
// build unless the sources changed). bin/ of the repository is not used
// on its own: a binary from an older build would silently be tested.
func EtcdLabBinary() (string, error) {
	etcdBin.once.Do(func() {
		if d := os.Getenv("TABBY_BIN_DIR"); d != "" {
			if p := filepath.Join(d, "etcd-lab"); isExecutable(p) {
				etcdBin.path = p
				return
			}
		}
		etcdBin.path, etcdBin.err = buildEtcdLab()
	})
	return etcdBin.path, etcdBin.err
}

func buildEtcdLab() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "tabby-lab")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build etcd-lab: %w", err)
	}
	out := filepath.Join(dir, "etcd-lab")
	// Test binaries of several packages run at once; one go build at a
	// time writes the shared output.
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("build etcd-lab: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("build etcd-lab: %w", err)
	}
	cmd := exec.Command("go", "build", "-o", out, "github.com/tabby-net/tabby/test/etcd-lab")
	// Build from this package's source directory so the module is found
	// whatever the working directory (the demo runs from the repo root).
	if _, file, _, ok := runtime.Caller(0); ok {
		if st, err := os.Stat(filepath.Dir(file)); err == nil && st.IsDir() {
			cmd.Dir = filepath.Dir(file)
		}
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build etcd-lab (or set TABBY_BIN_DIR): %w: %s", err, b)
	}
	return out, nil
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
