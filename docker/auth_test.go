package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdauth"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// tabby-docker under etcd's authentication, with the certificate of user
// tabby-docker-h1 (docs/security.md): a Docker network's whole life works
// (pool, profile, address, endpoint, teardown); a host's plain role may not
// make the pool, and h1's docker certificate may not write h2's endpoint.
func TestUnderEtcdAuth(t *testing.T) {
	dir := t.TempDir()
	ca, err := etcdtest.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	sc, sk, _ := ca.Issue("server", "etcd", "127.0.0.1")
	e := etcdtest.StartTLS(t, etcdtest.TLSFiles{CA: ca.File, ServerCert: sc, ServerKey: sk})
	open := func(file, cn string) *etcdv3.KV {
		c, k, err := ca.Issue(file, cn)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := etcdv3.New(store.Config{Endpoints: e.Endpoints(), CAFile: ca.File, CertFile: c, KeyFile: k})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kv.Close() })
		return kv
	}
	root := open("root", etcdauth.RootUser)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dr, _ := etcdauth.Docker("h1")
	hr, _ := etcdauth.Host("h1")
	if err := etcdauth.Apply(ctx, root.Client, dr, hr); err != nil {
		t.Fatal(err)
	}
	if err := etcdauth.Enable(ctx, root.Client); err != nil {
		t.Fatal(err)
	}

	h1 := newHost(t, open("docker-h1", etcdauth.DockerPrefix+"h1"), "h1", names{"n1": "net1"})
	var p ipam.RequestPoolResponse
	h1.must("/IpamDriver.RequestPool", ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.5.0.0/16"}, &p)
	h1.must("/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: "n1", IPv4Data: ipv4Data("10.5.0.0/16")}, nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := root.Get(ctx, model.ProfileKey("net1")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("profile net1 not created under auth")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var a ipam.RequestAddressResponse
	h1.must("/IpamDriver.RequestAddress", ipam.RequestAddressRequest{PoolID: p.PoolID}, &a)
	var ce network.CreateEndpointResponse
	h1.must("/NetworkDriver.CreateEndpoint", network.CreateEndpointRequest{NetworkID: "n1", EndpointID: "e1",
		Interface: &network.EndpointInterface{Address: a.Address}}, &ce)
	if k := keys(t, root, model.HostWorkloadPrefix("h1")); len(k) != 1 {
		t.Fatalf("h1's endpoint: %v", k)
	}

	// h1's docker certificate, claiming to be h2: neither h2's network
	// record nor an endpoint of h2.
	h1kv := open("docker-h1b", etcdauth.DockerPrefix+"h1")
	as2 := newHost(t, h1kv, "h2", names{"n1": "net1"})
	if msg := as2.call("/NetworkDriver.CreateNetwork", network.CreateNetworkRequest{NetworkID: "n1", IPv4Data: ipv4Data("10.5.0.0/16")}, nil); !strings.Contains(msg, "permission denied") {
		t.Fatalf("h1's certificate creating h2's network: %q", msg)
	}
	if err := store.PutJSON(ctx, h1kv, model.EndpointKey("h2", "docker", "e2", "eth0"), model.Endpoint{}); !etcdauth.IsPermissionDenied(err) {
		t.Fatalf("h1's certificate writing h2's endpoint: %v", err)
	}
	if k := keys(t, root, model.Prefix+"docker/network/h2/"); len(k) != 0 {
		t.Fatalf("h2's network written with h1's certificate: %v", k)
	}
	// The host's own role (its plugins' and tabby-node's) makes no pool.
	plain := newHost(t, open("host-h1", etcdauth.HostUserPrefix+"h1"), "h1", nil)
	if msg := plain.call("/IpamDriver.RequestPool", ipam.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.6.0.0/16"}, &p); !strings.Contains(msg, "permission denied") {
		t.Fatalf("RequestPool with the host role: %q", msg)
	}

	h1.must("/NetworkDriver.DeleteEndpoint", network.DeleteEndpointRequest{NetworkID: "n1", EndpointID: "e1"}, nil)
	h1.must("/IpamDriver.ReleaseAddress", ipam.ReleaseAddressRequest{PoolID: p.PoolID, Address: strings.Split(a.Address, "/")[0]}, nil)
	h1.must("/NetworkDriver.DeleteNetwork", network.DeleteNetworkRequest{NetworkID: "n1"}, nil)
	h1.must("/IpamDriver.ReleasePool", ipam.ReleasePoolRequest{PoolID: p.PoolID}, nil)
	for _, pfx := range []string{model.PoolPrefix, model.ProfilePrefix, model.HostPrefix, model.BlockPrefix, model.HandlePrefix, dockerPrefix} {
		if k := keys(t, root, pfx); len(k) != 0 {
			t.Fatalf("left under %s: %v", pfx, k)
		}
	}
}
