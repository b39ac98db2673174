// Package nodestatus is the contract of tabby-node's status socket, shared by
// the daemon (server) and by tabbyctl and the CNI plugin (clients). It has
// no dependencies beyond the standard library, so the plugin stays small.
package nodestatus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SocketName is the status socket's file name in the state dir.
const SocketName = "tabby-node.sock"

// Peer is one BGP session.
type Peer struct {
	Address  string    `json:"address"`
	Kind     string    `json:"kind"` // mesh, global, node
	State    string    `json:"state"`
	Since    time.Time `json:"since"`
	Received int       `json:"received"`
}

// Status is what `tabbyctl node status` shows.
type Status struct {
	Name            string    `json:"name"`
	IPv4            string    `json:"ipv4"`
	Version         string    `json:"version"`
	Ready           bool      `json:"ready"`   // etcd data loaded and the packet filter rendered from it in force
	Settled         bool      `json:"settled"` // BGP converged after start; stale routes may go
	IPIPSupported   bool      `json:"ipipSupported"`
	Peers           []Peer    `json:"peers"`
	Blocks          []string  `json:"blocks"`
	Routes          int       `json:"routes"`
	Unserved        []string  `json:"unserved,omitempty"` // prefixes this host cannot route (IPIP without kernel support)
	LastReconcile   time.Time `json:"lastReconcile"`
	ReconcileMillis float64   `json:"reconcileMillis"`
	Errors          []string  `json:"errors,omitempty"`
	// IPv6PolicyError is why IPv6 endpoint rules cannot be enforced on this
	// host (e.g. ip6tables unusable); empty while they can. While it is
	// set, endpoints with an IPv6 address are never reported ready, so
	// their ADD fails (fail closed).
	IPv6PolicyError string `json:"ipv6PolicyError,omitempty"`
	// IPv6NATError is why IPv6 nat-outgoing is not in force; empty while it
	// is (or no IPv6 pool asks for it).
	IPv6NATError string `json:"ipv6NatError,omitempty"`
}

// Client talks to a daemon's status socket.
func Client(stateDir string) *http.Client {
	sock := filepath.Join(stateDir, SocketName)
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 5 * time.Second}
}

// Get reads the status of the daemon whose state dir is stateDir.
func Get(ctx context.Context, stateDir string) (*Status, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://tabby-node/status", nil)
	res, err := Client(stateDir).Do(req)
	if err != nil {
		return nil, fmt.Errorf("tabby-node status socket in %s: %w (is tabby-node running with --state-dir %s?)", stateDir, err, stateDir)
	}
	defer res.Body.Close()
	var s Status
	if err := json.NewDecoder(res.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("decode status: %w", err)
	}
	return &s, nil
}

// Installed reports whether a node daemon has run with this state dir (its
// socket file is there). Hosts without tabby-node have no policy to wait for.
func Installed(stateDir string) bool {
	_, err := os.Stat(filepath.Join(stateDir, SocketName))
	return err == nil
}

// ErrDaemonDown means the socket exists but nobody answers, or the daemon
// went away (or hung) before it answered: try again later.
var ErrDaemonDown = errors.New("tabby-node is not running on this host")

// WaitReady blocks until the daemon has the rules of the endpoint on host
// interface iface (for container) in force, or timeout passes.
func WaitReady(ctx context.Context, stateDir, iface, container string, timeout time.Duration) error {
	return WaitEndpoint(ctx, stateDir, Endpoint{Iface: iface, Container: container}, timeout)
}

// Endpoint names what an ADD waits for: the rules of host interface Iface
// for container Container. Key and Profiles, when set, name the endpoint
// record the caller has just committed and its profiles (whose tag entries
// were written with it): the daemon reads them at once instead of waiting
// for its watch to bring them.
type Endpoint struct {
	Key, Iface, Container string
	Profiles              []string
}

// WaitEndpoint is WaitReady for an endpoint the caller has just recorded.
func WaitEndpoint(ctx context.Context, stateDir string, ep Endpoint, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	defer cancel()
	q := url.Values{"iface": {ep.Iface}, "container": {ep.Container}, "timeout": {timeout.String()}}
	if ep.Key != "" {
		q.Set("key", ep.Key)
		q["profile"] = ep.Profiles
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://tabby-node/ready?"+q.Encode(), nil)
	c := Client(stateDir)
	c.Timeout = timeout + 2*time.Second
	res, err := c.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w (%v)", ErrDaemonDown, err)
		}
		// It took the request and never answered: killed or hung. A daemon
		// that is up answers by itself when the wait runs out.
		return fmt.Errorf("%w: it did not answer while we waited for the endpoint's rules (%v)", ErrDaemonDown, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("tabby-node: %s", strings.TrimSpace(string(b)))
	}
	return nil
}
