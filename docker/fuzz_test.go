package main

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// fuzzPaths are the calls whose bodies FuzzHandler sends: the ones that
// touch only etcd. Join, Leave and the deletes create or remove
// interfaces in the caller's network namespace, which a fuzzer must not.
var fuzzPaths = []string{
	"/IpamDriver.RequestPool", "/IpamDriver.ReleasePool", "/IpamDriver.RequestAddress", "/IpamDriver.ReleaseAddress",
	"/NetworkDriver.CreateNetwork", "/NetworkDriver.CreateEndpoint", "/NetworkDriver.EndpointOperInfo",
}

// FuzzHandler sends arbitrary bodies to tabby-docker's plugin API, as a
// misbehaving or hostile caller of its socket could: every answer is a
// JSON document (but the protocol library's 400 for a body it cannot
// decode), an error carries its message in Err, and
// no request panics the handler (a panic in a protocol handler would show
// as a broken proxy: 502).
func FuzzHandler(f *testing.F) {
	// One driver and etcd for the whole run: starting etcd per input
	// would make the fuzzer measure etcd's start.
	e := etcdtest.Start(f)
	kv, err := etcdv3.New(store.Config{Endpoints: []string{e.URL}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { kv.Close() })
	d := &Driver{KV: kv, Nodename: "fuzz", StateDir: f.TempDir(), PolicyTimeout: 100 * time.Millisecond, Docker: names{"n1": "net1"},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	srv := httptest.NewServer(NewHandler(d))
	f.Cleanup(func() { srv.CloseClientConnections(); srv.Close(); d.Close() })
	for i, seed := range []string{
		`{"Pool":"10.9.0.0/24","Options":{},"V6":false}`,
		`{"PoolID":"tabby:10.9.0.0/24","Address":"10.9.0.7","Options":{}}`,
		`{"NetworkID":"n1","Options":{"com.docker.network.generic":{"tabby.profile":"x"}},"IPv4Data":[{"Pool":"10.9.0.0/24","Gateway":"10.9.0.1/24"}]}`,
		`{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.9.0.9/24"}}`,
		`{"PoolID":"tabby:10.9.0.0/24"}`, `[]`, `{"Pool":"::/0","V6":true}`, `{"NetworkID":"../../x"}`, ``,
	} {
		f.Add(uint8(i), []byte(seed))
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := fuzzPaths[int(which)%len(fuzzPaths)]
		res, err := http.Post(srv.URL+path, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer res.Body.Close()
		out, _ := io.ReadAll(res.Body)
		if res.StatusCode == http.StatusBadGateway {
			t.Fatalf("%s %q: the protocol handler failed (panic?): %s", path, body, out)
		}
		if res.StatusCode == http.StatusBadRequest {
			// The protocol library's own answer to a body it cannot decode
			// (plain text, as dockerd expects of it); it never reaches tabby.
			if len(bytes.TrimSpace(out)) == 0 {
				t.Fatalf("%s %q: 400 without a reason", path, body)
			}
			return
		}
		var doc map[string]any
		if err := json.Unmarshal(out, &doc); err != nil {
			t.Fatalf("%s %q: status %d, answer is not JSON: %q", path, body, res.StatusCode, out)
		}
		if res.StatusCode != http.StatusOK {
			if e, _ := doc["Err"].(string); e == "" {
				t.Fatalf("%s %q: status %d without an Err: %s", path, body, res.StatusCode, out)
			}
		}
	})
}
