package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	tipam "github.com/tabby-net/tabby/pkg/ipam"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
	"github.com/tabby-net/tabby/pkg/testutil"
)

// These tests speak the plugin protocol over HTTP to the real handler, with
// a real etcd; only Join and Leave (netlink) are left to test/runtime.

type names map[string]string

func (n names) NetworkName(_ context.Context, id string) (string, error) {
	if s, ok := n[id]; ok {
		return s, nil
	}
	return "", fmt.Errorf("no such network %s", id)
}

type host struct {
	t   *testing.T
	d   *Driver
	srv *httptest.Server
}

func newKV(t *testing.T) store.KV {
	e := etcdtest.Start(t)
	kv, err := etcdv3.New(store.Config{Endpoints: []string{e.URL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return kv
}

func newHost(t *testing.T, kv store.KV, name string, docker names) *host {
	d := &Driver{KV: kv, Nodename: name, StateDir: t.TempDir(), PolicyTimeout: time.Second, Docker: docker,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	srv := httptest.NewServer(NewHandler(d))
	t.Cleanup(func() { srv.Close(); d.Close() })
	return &host{t: t, d: d, srv: srv}
}

// call POSTs req to path; it returns the plugin's error message, if any.
func (h *host) call(path string, req, resp any) string {
	h.t.Helper()
	b, _ := json.Marshal(req)
	res, err := http.Post(h.srv.URL+path, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(b))
	if err != nil {
		h.t.Fatalf("%s: %v", path, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		var e struct{ Err string }
		if json.Unmarshal(body, &e) != nil || e.Err == "" {
			h.t.Fatalf("%s: status %d: %s", path, res.StatusCode, body)
		}
		return e.Err
	}
	if resp != nil {
		if err := json.Unmarshal(body, resp); err != nil {
			h.t.Fatalf("%s: decode %s: %v", path, body, err)
		}
	}
	return ""
}

func (h *host) must(path string, req, resp any) {
	h.t.Helper()
	if e := h.call(path, req, resp); e != "" {
		h.t.Fatalf("%s: %s", path, e)
	}
}

func keys(t *testing.T, kv store.KV, prefix string) []string { return testutil.Keys(t, kv, prefix) }

func TestActivateNamesBothDrivers(t *testing.T) {
	h := newHost(t, newKV(t), "h1", nil)
	var m struct{ Implements []string }
	h.must("/Plugin.Activate", struct{}{}, &m)
	if strings.Join(m.Implements, ",") != "NetworkDriver,IpamDriver" {
		t.Fatalf("Implements %v", m.Implements)
	}
	var caps network.CapabilitiesResponse
	h.must("/NetworkDriver.GetCapabilities", struct{}{}, &caps)
	if caps.Scope != "local" {
		t.Fatalf("network capabilities %+v", caps)
	}
	var as ipam.AddressSpacesResponse
	h.must("/IpamDriver.GetDefaultAddressSpaces", struct{}{}, &as)
	if as.LocalDefaultAddressSpace != LocalAddressSpace {
		t.Fatalf("address spaces %+v", as)
	}
}

// Two hosts create the same network: one pool, created on first use and
// removed with the last network; addresses come and go with handles.
func TestIPAMSharedPoolLifecycle(t *testing.T) {
	kv := newKV(t)
	h1, h2 := newHost(t, kv, "h1", nil), newHost(t, kv, "h2", nil)
	var p1, p2 ipam.RequestPoolResponse
	h1.must("/IpamDriver.RequestPool", ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.5.0.0/16",
		Options: map[string]string{"tabby.nat-outgoing": "true"}}, &p1)
	h2.must("/IpamDriver.RequestPool", ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.5.0.0/16"}, &p2)
	if p1.Pool != "10.5.0.0/16" || p1.Data["com.docker.network.gateway"] != "0.0.0.0/0" || p1.PoolID == p2.PoolID {
		t.Fatalf("pools %+v %+v", p1, p2)
	}
	pools, err := tipam.Pools(context.Background(), kv)
	if err != nil || len(pools) != 1 || !pools[0].NATOutgoing || pools[0].BlockSize != model.DefaultBlockV4 {
		t.Fatalf("pools %+v %v", pools, err)
	}
	var a1, a2, a3 ipam.RequestAddressResponse
	h1.must("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p1.PoolID, Address: "10.5.0.5"}, &a1)
	if a1.Address != "10.5.0.5/32" {
		t.Fatalf("static address %+v", a1)
	}
	if e := h2.call("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p2.PoolID, Address: "10.5.0.5"}, &a2); !strings.Contains(e, "10.5.0.5") {
		t.Fatalf("address in use: %q", e)
	}
	if e := h1.call("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p1.PoolID, Address: "10.6.0.1"}, &a2); !strings.Contains(e, "outside") {
		t.Fatalf("address outside the subnet: %q", e)
	}
	h2.must("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p2.PoolID}, &a2)
	h2.must("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p2.PoolID}, &a3)
	if a2.Address == a3.Address || !strings.HasPrefix(a2.Address, "10.5.") {
		t.Fatalf("auto addresses %s %s", a2.Address, a3.Address)
	}
	al, _, err := tipam.Lookup(context.Background(), kv, []byte{10, 5, 0, 5})
	if err != nil || al == nil || al.Network != "docker-"+strings.Split(p1.PoolID, "/")[1] || al.Host != "h1" {
		t.Fatalf("allocation of 10.5.0.5: %+v %v", al, err)
	}
	// Releases are idempotent; the gateway placeholder is ignored; another
	// network's address is left alone.
	h1.must("/IpamDriver.ReleaseAddress", ipam.ReleaseAddressRequest{PoolID: p1.PoolID, Address: "10.5.0.5"}, nil)
	h1.must("/IpamDriver.ReleaseAddress", ipam.ReleaseAddressRequest{PoolID: p1.PoolID, Address: "10.5.0.5"}, nil)
	h1.must("/IpamDriver.ReleaseAddress", ipam.ReleaseAddressRequest{PoolID: p1.PoolID, Address: "0.0.0.0"}, nil)
	h1.must("/IpamDriver.ReleaseAddress", ipam.ReleaseAddressRequest{PoolID: p1.PoolID, Address: strings.Split(a2.Address, "/")[0]}, nil)
	if al, _, _ := tipam.Lookup(context.Background(), kv, []byte{10, 5, 0, 5}); al != nil {
		t.Fatalf("10.5.0.5 still allocated: %+v", al)
	}
	h2.must("/IpamDriver.ReleaseAddress", ipam.ReleaseAddressRequest{PoolID: p2.PoolID, Address: strings.Split(a2.Address, "/")[0]}, nil)
	h1.must("/IpamDriver.ReleasePool", ipam.ReleasePoolRequest{PoolID: p1.PoolID}, nil)
	if k := keys(t, kv, model.PoolPrefix); len(k) != 1 {
		t.Fatalf("pool removed while host2 uses it: %v", k)
	}
	// a3 was never released: the pool's release takes it with it.
	h2.must("/IpamDriver.ReleasePool", ipam.ReleasePoolRequest{PoolID: p2.PoolID}, nil)
	for _, p := range []string{model.PoolPrefix, model.BlockPrefix, model.AffinityPrefix, model.HandlePrefix, dockerPrefix} {
		if k := keys(t, kv, p); len(k) != 0 {
			t.Fatalf("left under %s: %v", p, k)
		}
	}
}

// A pool an operator made is used and never removed; --ipam-opt then
// changes nothing.
func TestIPAMOperatorPoolKept(t *testing.T) {
	kv := newKV(t)
	if _, err := tipam.AddPool(context.Background(), kv, model.Pool{CIDR: "10.7.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, kv, "h1", nil)
	var p ipam.RequestPoolResponse
	h.must("/IpamDriver.RequestPool", ipam.RequestPoolRequest{Pool: "10.7.0.0/16", Options: map[string]string{"tabby.vxlan": "always"}}, &p)
	h.must("/IpamDriver.ReleasePool", ipam.ReleasePoolRequest{PoolID: p.PoolID}, nil)
	pools, _ := tipam.Pools(context.Background(), kv)
	if len(pools) != 1 || pools[0].VXLANMode != model.EncapNever {
		t.Fatalf("operator's pool changed or removed: %+v", pools)
	}
	// Without --subnet: any enabled pool.
	h.must("/IpamDriver.RequestPool", ipam.RequestPoolRequest{}, &p)
	var a ipam.RequestAddressResponse
	h.must("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p.PoolID}, &a)
	if p.Pool != "0.0.0.0/0" || !strings.HasPrefix(a.Address, "10.7.") {
		t.Fatalf("any pool: %+v %+v", p, a)
	}
	h.must("/IpamDriver.ReleasePool", ipam.ReleasePoolRequest{PoolID: p.PoolID}, nil)
	if k := keys(t, kv, model.HandlePrefix); len(k) != 0 {
		t.Fatalf("handles left: %v", k)
	}
}

func TestIPAMRefusals(t *testing.T) {
	kv := newKV(t)
	h := newHost(t, kv, "h1", nil)
	var p ipam.RequestPoolResponse
	for _, c := range []struct {
		req  ipam.RequestPoolRequest
		want string
	}{
		{ipam.RequestPoolRequest{}, "no enabled IPv4 pool"},
		{ipam.RequestPoolRequest{Pool: "10.0.0.0/16", SubPool: "10.0.1.0/24"}, "--ip-range"},
		{ipam.RequestPoolRequest{Pool: "10.0.0.0/16", Options: map[string]string{"tabby.bogus": "1"}}, "tabby.bogus"},
		{ipam.RequestPoolRequest{Pool: "10.0.0.0/16", Options: map[string]string{"tabby.block-size": "8"}}, "block size"},
		{ipam.RequestPoolRequest{Pool: "fd00::/64"}, "not an IPv4"},
	} {
		if e := h.call("/IpamDriver.RequestPool", c.req, &p); !strings.Contains(e, c.want) {
			t.Errorf("RequestPool %+v: %q, want %q", c.req, e, c.want)
		}
	}
	h.must("/IpamDriver.RequestPool", ipam.RequestPoolRequest{Pool: "10.0.0.0/16"}, &p)
	var a ipam.RequestAddressResponse
	e := h.call("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p.PoolID, Address: "10.0.0.1",
		Options: map[string]string{"RequestAddressType": "com.docker.network.gateway"}}, &a)
	if !strings.Contains(e, "--gateway") {
		t.Fatalf("gateway request: %q", e)
	}
	// An overlapping subnet is refused with the pool to use instead.
	if e := h.call("/IpamDriver.RequestPool", ipam.RequestPoolRequest{Pool: "10.0.0.0/24"}, &p); !strings.Contains(e, "overlaps tabby pool 10.0.0.0/16") {
		t.Fatalf("overlap: %q", e)
	}
}

func ipv4Data(pool string) []*network.IPAMData {
	return []*network.IPAMData{{AddressSpace: LocalAddressSpace, Pool: pool, Gateway: "0.0.0.0/0"}}
}

// The network's profile is named after it (learned from Docker), shared by
// the same network on every host, and goes with the last one.
func TestNetworkProfileLifecycle(t *testing.T) {
	kv := newKV(t)
	h1 := newHost(t, kv, "h1", names{"n1": "net1"})
	h2 := newHost(t, kv, "h2", names{"n2": "net1"})
	h1.must("/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: "n1", IPv4Data: ipv4Data("10.5.0.0/16")}, nil)
	// The background lookup gives the network its profile before any endpoint.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := kv.Get(context.Background(), model.ProfileKey("net1")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("profile net1 not created after CreateNetwork")
		}
		time.Sleep(10 * time.Millisecond)
	}
	h2.must("/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: "n2", IPv4Data: ipv4Data("10.5.0.0/16")}, nil)
	var ce network.CreateEndpointResponse
	h2.must("/NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: "n2", EndpointID: "e2",
		Interface: &network.EndpointInterface{Address: "10.5.0.9/32"}}, &ce)
	if ce.Interface == nil || ce.Interface.MacAddress == "" {
		t.Fatalf("no MAC handed to Docker: %+v", ce.Interface)
	}
	// Locally administered unicast, so it never clashes with a NIC's.
	if mac, err := net.ParseMAC(ce.Interface.MacAddress); err != nil || mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
		t.Fatalf("MAC handed to Docker %q is not locally administered unicast", ce.Interface.MacAddress)
	}
	var ep model.Endpoint
	if _, err := store.GetJSON(context.Background(), kv, model.EndpointKey("h2", "docker", "e2", "eth0"), &ep); err != nil {
		t.Fatal(err)
	}
	if strings.Join(ep.Profiles, ",") != "net1" || ep.MAC != ce.Interface.MacAddress || ep.IPv4Nets[0] != "10.5.0.9/32" || !strings.HasPrefix(ep.HostInterface, "tby") {
		t.Fatalf("endpoint %+v", ep)
	}
	var own Owner
	if _, err := store.GetJSON(context.Background(), kv, profileOwnerKey("net1"), &own); err != nil || len(own.Refs) != 2 {
		t.Fatalf("owner %+v %v", own, err)
	}
	// A MAC Docker already has is kept and not handed back.
	h1.must("/NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: "n1", EndpointID: "e1",
		Interface: &network.EndpointInterface{Address: "10.5.0.8/32", MacAddress: "02:42:0a:05:00:08"}}, &ce)
	if ce.Interface != nil {
		t.Fatalf("MAC handed back: %+v", ce.Interface)
	}
	// Removing a network with an endpoint left behind takes the endpoint too.
	h1.must("/NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: "n1"}, nil)
	if k := keys(t, kv, model.HostWorkloadPrefix("h1")); len(k) != 0 {
		t.Fatalf("h1 endpoints left: %v", k)
	}
	if _, err := kv.Get(context.Background(), model.ProfileKey("net1")); err != nil {
		t.Fatalf("profile removed while h2's network uses it: %v", err)
	}
	h2.must("/NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: "n2", EndpointID: "e2"}, nil)
	h2.must("/NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: "n2"}, nil)
	for _, p := range []string{model.ProfilePrefix, model.TagPrefix, model.HostPrefix, dockerPrefix} {
		if k := keys(t, kv, p); len(k) != 0 {
			t.Fatalf("left under %s: %v", p, k)
		}
	}
}

// -o tabby.profile names the profile; an operator's profile is kept.
func TestNetworkExplicitProfile(t *testing.T) {
	kv := newKV(t)
	p := model.DefaultProfile("web")
	if err := store.PutJSON(context.Background(), kv, model.ProfileKey("web"), &p); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, kv, "h1", nil)
	opts := map[string]interface{}{"com.docker.network.generic": map[string]interface{}{"tabby.profile": "web"}}
	h.must("/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: "n1", Options: opts, IPv4Data: ipv4Data("10.5.0.0/16")}, nil)
	h.must("/NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: "n1", EndpointID: "e1",
		Interface: &network.EndpointInterface{Address: "10.5.0.8/32"}}, nil)
	var ep model.Endpoint
	if _, err := store.GetJSON(context.Background(), kv, model.EndpointKey("h1", "docker", "e1", "eth0"), &ep); err != nil || ep.Profiles[0] != "web" {
		t.Fatalf("endpoint %+v %v", ep, err)
	}
	h.must("/NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: "n1", EndpointID: "e1"}, nil)
	h.must("/NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: "n1"}, nil)
	if _, err := kv.Get(context.Background(), model.ProfileKey("web")); err != nil {
		t.Fatalf("operator's profile removed: %v", err)
	}
	for _, c := range []struct {
		req  network.CreateNetworkRequest
		want string
	}{
		{network.CreateNetworkRequest{NetworkID: "x", IPv4Data: []*network.IPAMData{{AddressSpace: "LocalDefault", Pool: "172.18.0.0/16"}}}, "--ipam-driver tabby"},
		{network.CreateNetworkRequest{NetworkID: "x", Options: map[string]interface{}{"com.docker.network.generic": map[string]interface{}{"tabby.nope": "1"}}}, "tabby.nope"},
	} {
		if e := h.call("/NetworkDriver.CreateNetwork", c.req, nil); !strings.Contains(e, c.want) {
			t.Errorf("CreateNetwork %+v: %q, want %q", c.req, e, c.want)
		}
	}
	// Without a name from Docker (no API) the endpoint says how to fix it.
	h.must("/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: "n3", IPv4Data: ipv4Data("10.5.0.0/16")}, nil)
	if e := h.call("/NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: "n3", EndpointID: "e3",
		Interface: &network.EndpointInterface{Address: "10.5.0.8/32"}}, nil); !strings.Contains(e, "tabby.profile") {
		t.Fatalf("no name: %q", e)
	}
	h.must("/NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: "n3"}, nil)
}

func TestPoolIDRoundTrip(t *testing.T) {
	for _, p := range []PoolID{{Nonce: "ab", CIDR: "10.0.0.0/16"}, {Nonce: "cd", CIDR: "fd00::/64", V6: true}, {Nonce: "ef"}, {Nonce: "01", V6: true}} {
		q, err := parsePoolID(p.String())
		if err != nil || q != p {
			t.Errorf("%s: %+v %v", p, q, err)
		}
	}
	for _, s := range []string{"", "tabby", "tabby//10.0.0.0/16", "x/ab/10.0.0.0/16", "tabby/ab/10.0.0.1/16"} {
		if _, err := parsePoolID(s); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
}
