package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"

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
	srv := &http.Server{Handler: mux}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("status socket", "err", err)
		}
	}()
	return func() { srv.Close() }, nil
}

// Status returns a copy of the daemon's status.
func (a *Agent) Status() nodestatus.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Peers = append([]nodestatus.Peer{}, s.Peers...)
	return s
}
