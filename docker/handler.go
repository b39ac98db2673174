package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/docker/go-plugins-helpers/sdk"
)

// Manifest is the plugin's answer to /Plugin.Activate: one plugin named
// "tabby" is both the network driver and the IPAM driver, so that
// `--driver tabby --ipam-driver tabby` both find it on one socket.
const Manifest = `{"Implements": ["NetworkDriver", "IpamDriver"]}`

// NewHandler serves both libnetwork protocols on one socket.
//
// go-plugins-helpers gives each protocol its own handler, each answering
// /Plugin.Activate with a manifest that names only its own protocol, and
// each serving only on a listener of its own. dockerd activates a plugin
// once per name and keeps that manifest, so a single "tabby" plugin must
// name both. The library's handlers are kept whole (their routes, request
// decoding and error encoding) and each is served on an in-process
// listener; this front answers the activation itself and hands every other
// request to the handler of its protocol over an in-memory connection.
func NewHandler(d *Driver) http.Handler {
	netL, ipamL := newPipeListener(), newPipeListener()
	go func() { _ = network.NewHandler(&NetworkDriver{d}).Serve(netL) }()
	go func() { _ = ipam.NewHandler(&IPAMDriver{d}).Serve(ipamL) }()
	netP, ipamP := netL.proxy(), ipamL.proxy()
	return logRequests(d, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/Plugin.Activate":
			w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
			fmt.Fprintln(w, Manifest)
		case strings.HasPrefix(p, "/NetworkDriver."):
			netP.ServeHTTP(w, r)
		case strings.HasPrefix(p, "/IpamDriver."):
			ipamP.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	}))
}

// logRequests logs every call at debug level, with its duration.
func logRequests(d *Driver, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rw, r)
		d.Log.Debug("call", "path", r.URL.Path, "status", rw.code, "took", time.Since(start).Round(time.Microsecond))
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) { s.code = code; s.ResponseWriter.WriteHeader(code) }

// pipeListener is a net.Listener whose connections are made in process
// with net.Pipe.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// proxy forwards requests to the handler served on l.
func (l *pipeListener) proxy() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "tabby"
			r.Out.Host = "tabby"
		},
		Transport: &http.Transport{DialContext: l.dial, MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, `{"Err":%q}`+"\n", "tabby-docker: "+strings.TrimSpace(err.Error()))
		},
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "in-process" }
