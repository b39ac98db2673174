package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/tabby-net/tabby/node/bgp"
	"github.com/tabby-net/tabby/pkg/nodestatus"
)

// serveStatus answers on <state_dir>/tabby-node.sock.
func (a *Agent) serveStatus() (func(), error) {
	sock := filepath.Join(a.cfg.StateDir, nodestatus.SocketName)
	_ = os.Remove(sock) // a socket left by a killed predecessor
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a.Status())
	})
	// The CNI plugin's ADD waits here until the endpoint's rules are in force.
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		d, err := time.ParseDuration(q.Get("timeout"))
		if err != nil || d <= 0 || d > readyTimeout {
			d = readyTimeout
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		// The plugin names the endpoint record it has just committed: read
		// it (and its tag entries) now instead of waiting for the watch to
		// bring it, so its rules go in at once.
		if key := q.Get("key"); key != "" && !a.ready.has(q.Get("iface"), q.Get("container")) {
			a.refreshEndpoint(ctx, key, q.Get("iface"), q.Get("container"), q["profile"])
		}
		if err := a.ready.wait(ctx, q.Get("iface"), q.Get("container")); err != nil {
			code := http.StatusGatewayTimeout
			var no *refusal
			if errors.As(err, &no) {
				code = http.StatusServiceUnavailable
			}
			// The body is the plugin's error message: it carries the cause.
			http.Error(w, err.Error(), code)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("status socket", "err", err)
		}
	}()
	return func() { srv.Close() }, nil
}

// Status returns the daemon's status; BGP sessions are read live, since
// they change without any reconcile.
func (a *Agent) Status() nodestatus.Status {
	a.mu.Lock()
	s := a.status
	sp := a.speaker
	a.mu.Unlock()
	s.Peers = nil
	if sp != nil {
		s.Peers = peerStatus(sp.Peers())
	}
	return s
}

// peersEstablished counts BGP sessions that are up, for the metrics.
func (a *Agent) peersEstablished() float64 {
	a.mu.Lock()
	sp := a.speaker
	a.mu.Unlock()
	if sp == nil {
		return 0
	}
	n := 0
	for _, p := range sp.Peers() {
		if p.Established() {
			n++
		}
	}
	return float64(n)
}

func peerStatus(ps []bgp.PeerStatus) []nodestatus.Peer {
	out := []nodestatus.Peer{}
	for _, p := range ps {
		out = append(out, nodestatus.Peer{Address: p.Address, Kind: p.Kind, State: p.State, Since: p.Since, Received: p.Received})
	}
	return out
}
