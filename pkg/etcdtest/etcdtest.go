// Package etcdtest runs a real etcd in-process on 127.0.0.1 with random ports,
// for tests. Tabby's tests never mock the datastore.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Etcd is one running embedded etcd.
type Etcd struct {
	URL  string
	e    *embed.Etcd
	dir  string
	cfg  *embed.Config
	stop bool
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start runs etcd until the test ends.
func Start(t testing.TB) *Etcd { return start(t, nil) }

// TLSFiles are the PEM files of a test PKI: etcd's server certificate and a
// client certificate, both signed by CA.
type TLSFiles struct{ CA, ServerCert, ServerKey, ClientCert, ClientKey string }

// StartTLS runs etcd that requires TLS with client certificates.
func StartTLS(t testing.TB, f TLSFiles) *Etcd { return start(t, &f) }

func start(t testing.TB, tlsFiles *TLSFiles) *Etcd {
	t.Helper()
	dir := t.TempDir()
	cp, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	pp, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.LogLevel = "fatal" // Close logs harmless errors at "error"
	cfg.Logger = "zap"
	// embed leaves this 0, which makes every request "expensive": its
	// text is rendered for a log line on every call. etcd's own default.
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration
	scheme := "http"
	if tlsFiles != nil {
		scheme = "https"
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: tlsFiles.ServerCert, KeyFile: tlsFiles.ServerKey,
			TrustedCAFile: tlsFiles.CA, ClientCertAuth: true}
	}
	cu, _ := url.Parse(fmt.Sprintf("%s://127.0.0.1:%d", scheme, cp))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pp))
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, pu.String())
	e := &Etcd{URL: cu.String(), dir: dir, cfg: cfg}
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return e
}

func (e *Etcd) start() error {
	var err error
	for i := 0; i < 20; i++ { // the ports can be taken again between probe and bind
		e.e, err = embed.StartEtcd(e.cfg)
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.e.Server.ReadyNotify():
		e.stop = false
		return nil
	case <-time.After(20 * time.Second):
		e.e.Close()
		return fmt.Errorf("etcd did not become ready")
	}
}

// Stop stops etcd (the data stays, Restart brings it back).
func (e *Etcd) Stop() {
	if e.stop {
		return
	}
	e.stop = true
	e.e.Close()
	<-e.e.Server.StopNotify()
}

// Restart starts etcd again on the same ports and data.
func (e *Etcd) Restart(t testing.TB) {
	t.Helper()
	e.Stop()
	// The cluster already exists in the data dir.
	e.cfg.ClusterState = embed.ClusterStateFlagExisting
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
}

// Endpoints returns the client URL as a list.
func (e *Etcd) Endpoints() []string { return []string{e.URL} }
