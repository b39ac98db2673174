package etcdauth_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tabby-net/tabby/pkg/etcdtest"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/store/etcdauth"
	"github.com/tabby-net/tabby/pkg/store/etcdv3"
)

// authEtcd is an etcd that requires client certificates, with tabby's
// roles for hosts h1 and h2 and authentication on.
type authEtcd struct {
	e    *etcdtest.Etcd
	ca   *etcdtest.CA
	root *clientv3.Client
}

func startAuthEtcd(t *testing.T) *authEtcd {
	t.Helper()
	dir := t.TempDir()
	ca, err := etcdtest.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	sc, sk, err := ca.Issue("server", "etcd", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	e := etcdtest.StartTLS(t, etcdtest.TLSFiles{CA: ca.File, ServerCert: sc, ServerKey: sk})
	a := &authEtcd{e: e, ca: ca}
	rc, rk := a.issue(t, "root", etcdauth.RootUser)
	tlsCfg, err := store.TLSConfig(store.Config{CAFile: ca.File, CertFile: rc, KeyFile: rk})
	if err != nil {
		t.Fatal(err)
	}
	a.root, err = clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.root.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h1, _ := etcdauth.Host("h1")
	h2, _ := etcdauth.Host("h2")
	if err := etcdauth.Apply(ctx, a.root, etcdauth.Admin(), etcdauth.KubeControllersRole(), h1, h2); err != nil {
		t.Fatal(err)
	}
	// A second Apply changes nothing and fails on nothing (idempotent).
	if err := etcdauth.Apply(ctx, a.root, h1); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if err := etcdauth.Enable(ctx, a.root); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *authEtcd) issue(t *testing.T, file, cn string) (string, string) {
	t.Helper()
	c, k, err := a.ca.Issue(file, cn)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

// lean is the CNI plugins' client with the certificate files of user cn.
func (a *authEtcd) lean(t *testing.T, file, cn string) store.KV {
	t.Helper()
	c, k := a.issue(t, file, cn)
	kv, err := store.NewGRPC(store.Config{Endpoints: a.e.Endpoints(), CAFile: a.ca.File, CertFile: c, KeyFile: k, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return kv
}

func put(kv store.KV, key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := kv.Txn(ctx, nil, []store.Op{store.Put(key, []byte(`{}`))})
	return err
}

// What a host's certificate may write, as etcd itself decides it: its own
// endpoints and node record and the shared IPAM and index keys, never
// another host's endpoints or node record, pools, profiles, policies or
// BGP settings. Every key is also checked against Role.Writable, so the
// table 'tabbyctl auth show' prints is what etcd enforces.
func TestHostRoleInEtcd(t *testing.T) {
	a := startAuthEtcd(t)
	h1 := a.lean(t, "h1", etcdauth.HostUserPrefix+"h1")
	role, _ := etcdauth.Host("h1")
	cases := []struct {
		key  string
		want bool
	}{
		{model.EndpointKey("h1", "cni", "w", "eth0"), true},
		{model.NodeKey("h1"), true},
		{model.BlockKey("10.0.0.0/16", "10.0.0.0/26"), true},
		{model.AffinityKey("h2", "10.0.0.0/26"), true}, // shared: see Host
		{model.HandleKey("net", "cid"), true},
		{model.TagMemberKey("P", "h1", "cni", "w", "eth0"), true},
		{model.MemberKey("ns", "h1", "cni", "w", "eth0"), true},
		{model.EndpointKey("h2", "cni", "w", "eth0"), false},
		{model.HostBGPPeerKey("h1", "192.0.2.1"), false},
		{model.NodeKey("h2"), false},
		{model.NodeKey("h1x"), false},
		{model.PoolKey("10.0.0.0/16"), false},
		{model.ProfileKey("P"), false},
		{model.PolicyKey("", "p"), false},
		{model.NamespaceKey("ns"), false},
		{model.BGPConfigKey, false},
		{model.GlobalBGPPeerKey("192.0.2.1"), false},
		{"/other/key", false},
	}
	for _, c := range cases {
		err := put(h1, c.key)
		if got := err == nil; got != c.want {
			t.Errorf("h1 writes %s: error %v, want allowed=%v", c.key, err, c.want)
		}
		if !c.want && !etcdauth.IsPermissionDenied(err) {
			t.Errorf("h1 writes %s: %v, want permission denied", c.key, err)
		}
		if role.Writable(c.key) != c.want {
			t.Errorf("Role.Writable(%s) = %v, etcd says %v", c.key, !c.want, c.want)
		}
	}
	// A host added later, with auth already on ('auth setup --host h3
	// --enable' again, as root): its role works, and nothing fails.
	h3, _ := etcdauth.Host("h3")
	if err := etcdauth.Apply(context.Background(), a.root, h3); err != nil {
		t.Fatalf("apply with auth on: %v", err)
	}
	if err := etcdauth.Enable(context.Background(), a.root); err != nil {
		t.Fatalf("enable again: %v", err)
	}
	if err := put(a.lean(t, "h3", etcdauth.HostUserPrefix+"h3"), model.NodeKey("h3")); err != nil {
		t.Errorf("h3 added later writes its node record: %v", err)
	}
	// Reading is allowed everywhere under the prefix (pools, profiles...).
	if _, _, err := h1.List(context.Background(), model.PoolPrefix, false); err != nil {
		t.Errorf("h1 lists pools: %v", err)
	}
	// A certificate whose CN is no user is refused even reads.
	stranger := a.lean(t, "stranger", "nobody")
	if _, _, err := stranger.List(context.Background(), model.PoolPrefix, false); !etcdauth.IsPermissionDenied(err) {
		t.Errorf("unknown CN lists pools: %v, want permission denied", err)
	}
	// The admin writes pools; kube-controllers write k8s_ns. profiles only.
	if err := put(a.lean(t, "admin", etcdauth.AdminUser), model.PoolKey("10.0.0.0/16")); err != nil {
		t.Errorf("admin writes a pool: %v", err)
	}
	kc := a.lean(t, "kc", etcdauth.KubeControllers)
	if err := put(kc, model.ProfileKey(model.K8sNamespaceProfile("ns"))); err != nil {
		t.Errorf("kube-controllers write a namespace profile: %v", err)
	}
	if err := put(kc, model.ProfileKey("ops")); !etcdauth.IsPermissionDenied(err) {
		t.Errorf("kube-controllers write profile ops: %v, want permission denied", err)
	}
}

// tabby-docker's role is its host's plus pools, profiles and its own
// bookkeeping: a Docker network create makes a pool and a profile.
func TestDockerRoleInEtcd(t *testing.T) {
	a := startAuthEtcd(t)
	d, _ := etcdauth.Docker("h1")
	if err := etcdauth.Apply(context.Background(), a.root, d); err != nil {
		t.Fatal(err)
	}
	kv := a.lean(t, "docker-h1", etcdauth.DockerPrefix+"h1")
	for key, want := range map[string]bool{
		model.PoolKey("10.1.0.0/16"):                   true,
		model.ProfileKey("docker-net"):                 true,
		model.Prefix + "docker/network/h1/abc":         true,
		model.Prefix + "docker/network/h2/abc":         false,
		model.Prefix + "docker/pool/10.1.0.0-16":       true,
		model.EndpointKey("h1", "docker", "c", "eth0"): true,
		model.EndpointKey("h2", "docker", "c", "eth0"): false,
		model.PolicyKey("", "p"):                       false,
		model.NodeKey("h2"):                            false,
	} {
		err := put(kv, key)
		if (err == nil) != want || (!want && !etcdauth.IsPermissionDenied(err)) {
			t.Errorf("tabby-docker-h1 writes %s: %v, want allowed=%v", key, err, want)
		}
		if d.Writable(key) != want {
			t.Errorf("Role.Writable(%s) = %v, etcd says %v", key, !want, want)
		}
	}
}

func TestCheckHost(t *testing.T) {
	for _, h := range []string{"", "a/b", "h1/", ".h", "h\n", "h 1", "-h"} {
		if _, err := etcdauth.Host(h); err == nil {
			t.Errorf("host name %q accepted", h)
		}
	}
	for _, h := range []string{"h1", "node-1.example.com", "a"} {
		if _, err := etcdauth.Host(h); err != nil {
			t.Errorf("host name %q: %v", h, err)
		}
	}
}

// A client certificate rotated on disk is used on the next connection,
// without a new client: both the plugins' client and clientv3 (tabby-node,
// tabby-docker) start as h1, the files are replaced by h2's certificate, and
// once etcd restarts (dropping the connections) the same clients act as h2.
func TestRotatedCertificateIsUsed(t *testing.T) {
	a := startAuthEtcd(t)
	c, k := a.issue(t, "rot", etcdauth.HostUserPrefix+"h1")
	cfg := store.Config{Endpoints: a.e.Endpoints(), CAFile: a.ca.File, CertFile: c, KeyFile: k, Timeout: 3 * time.Second}
	lean, err := store.NewGRPC(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lean.Close()
	v3, err := etcdv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	clients := map[string]store.KV{"grpc": lean, "clientv3": v3}
	for name, kv := range clients {
		if err := put(kv, model.NodeKey("h1")); err != nil {
			t.Fatalf("%s as h1 writes node/h1: %v", name, err)
		}
		if err := put(kv, model.NodeKey("h2")); !etcdauth.IsPermissionDenied(err) {
			t.Fatalf("%s as h1 writes node/h2: %v, want permission denied", name, err)
		}
	}
	a.issue(t, "rot", etcdauth.HostUserPrefix+"h2") // same files, new identity
	a.e.Restart(t)
	for name, kv := range clients {
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := put(kv, model.NodeKey("h2"))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after rotation to h2 still cannot write node/h2: %v", name, err)
			}
			if !etcdauth.IsPermissionDenied(err) && !store.IsUnavailable(err) && !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("%s: %v", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := put(kv, model.NodeKey("h1")); !etcdauth.IsPermissionDenied(err) {
			t.Fatalf("%s as h2 writes node/h1: %v, want permission denied", name, err)
		}
	}
}

// A half-rotated pair (a new certificate with the old key) keeps the
// certificate that worked instead of failing the handshake.
func TestHalfRotatedPairKeepsOld(t *testing.T) {
	a := startAuthEtcd(t)
	c, k := a.issue(t, "half", etcdauth.HostUserPrefix+"h1")
	_, k2 := a.issue(t, "other", etcdauth.HostUserPrefix+"h2")
	tlsCfg, err := store.TLSConfig(store.Config{CAFile: a.ca.File, CertFile: c, KeyFile: k})
	if err != nil {
		t.Fatal(err)
	}
	first, err := tlsCfg.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	// Put the other pair's key in place of h1's: the files no longer match.
	if err := copyFile(k2, k); err != nil {
		t.Fatal(err)
	}
	got, err := tlsCfg.GetClientCertificate(nil)
	if err != nil || got != first {
		t.Fatalf("mismatched pair: %v (same certificate: %v), want the old certificate kept", err, got == first)
	}
	if _, err := store.TLSConfig(store.Config{CAFile: a.ca.File, CertFile: c, KeyFile: k}); err == nil {
		t.Fatal("a mismatched pair at start was accepted")
	}
}

// copyFile overwrites in place (size and mtime change), as an in-place
// rotation does.
func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
}
