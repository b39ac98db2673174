package main

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/nodestatus"
)

// serveStatus answers on a status socket in a temp state dir as tabby-node
// would, with st.
func serveStatus(t *testing.T, st nodestatus.Status) string {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, nodestatus.SocketName))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(st)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return dir
}

// An IPv6 packet filter that cannot be enforced is said in so many words,
// with its cause, and so is IPv6 nat-outgoing that is not in force.
func TestNodeStatusShowsIPv6Failures(t *testing.T) {
	cause := "ip6tables unusable on this host: no ip6tables-restore: install iptables; IPv6 endpoint rules cannot be enforced"
	dir := serveStatus(t, nodestatus.Status{Name: "h1", IPv4: "198.19.0.1/24", Ready: true, Settled: true, IPIPSupported: true,
		LastReconcile: time.Now(), IPv6PolicyError: cause, IPv6NATError: "no ip6tables-restore: install iptables"})
	code, out, errs := runCtl(t, "http://127.0.0.1:1", "node", "status", "--state-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errs)
	}
	if !strings.Contains(out, "IPv6 policy: NOT ENFORCED: "+cause) || !strings.Contains(out, "IPv6 nat-outgoing: not in force: no ip6tables-restore") {
		t.Fatalf("node status:\n%s", out)
	}
	code, out, _ = runCtl(t, "http://127.0.0.1:1", "node", "status", "--state-dir", dir, "-o", "json")
	if code != 0 || !strings.Contains(out, `"ipv6PolicyError": "ip6tables unusable`) {
		t.Fatalf("node status -o json: %d\n%s", code, out)
	}
	// A healthy node says nothing about IPv6.
	dir = serveStatus(t, nodestatus.Status{Name: "h1", Ready: true, Settled: true, IPIPSupported: true, LastReconcile: time.Now()})
	if code, out, _ = runCtl(t, "http://127.0.0.1:1", "node", "status", "--state-dir", dir); code != 0 || strings.Contains(out, "IPv6") {
		t.Fatalf("healthy node status: %d\n%s", code, out)
	}
}
