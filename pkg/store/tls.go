package store

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// TLSConfig builds the client TLS settings from the etcd_*_file options.
// The client certificate is not loaded once: every TLS handshake asks
// GetClientCertificate, which reads the files again when they changed, so a
// rotated certificate (cert-manager, a kubelet-updated Secret volume, a
// cron job) is used on the next connection without restarting the program.
// The CA file is read once: etcd's own certificate is verified against the
// CAs trusted at start (rotate a CA by adding the new one to the bundle
// first).
func TLSConfig(cfg Config) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s holds no PEM certificate", cfg.CAFile)
		}
		c.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("etcd client TLS needs both a cert file and a key file")
	}
	if cfg.CertFile != "" {
		r := &certReloader{certFile: cfg.CertFile, keyFile: cfg.KeyFile}
		// Load now so that a wrong path or a mismatched pair is a
		// configuration error at start, not a failed handshake later.
		if _, err := r.load(); err != nil {
			return nil, err
		}
		c.GetClientCertificate = r.get
	}
	return c, nil
}

// certReloader holds the client certificate and reads its files again when
// either one's identity (device, inode, size, mtime) changes.
type certReloader struct {
	certFile, keyFile string

	mu    sync.Mutex
	stamp [2]fileStamp
	cert  *tls.Certificate
}

type fileStamp struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

func stampOf(path string) (fileStamp, error) {
	st, err := os.Stat(path) // follows symlinks: Secret volumes swap a ..data link
	if err != nil {
		return fileStamp{}, err
	}
	s := fileStamp{size: st.Size(), mtime: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(sys.Dev), uint64(sys.Ino)
	}
	return s, nil
}

// load returns the current certificate, reading the files if they changed.
func (r *certReloader) load() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs, err1 := stampOf(r.certFile)
	ks, err2 := stampOf(r.keyFile)
	if err1 == nil && err2 == nil && r.cert != nil && r.stamp == [2]fileStamp{cs, ks} {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		if r.cert != nil {
			// A rotation caught half-way (the new certificate written, its
			// key not yet) or a file briefly missing: keep presenting the
			// certificate that worked; the next handshake looks again.
			return r.cert, nil
		}
		return nil, fmt.Errorf("load etcd client certificate: %w", err)
	}
	r.cert, r.stamp = &cert, [2]fileStamp{cs, ks}
	return r.cert, nil
}

func (r *certReloader) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.load()
}
