package etcdtest

import "testing"

// PKI writes a throwaway CA, a server certificate for 127.0.0.1 and a client
// certificate into dir.
func PKI(t testing.TB, dir string) TLSFiles {
	t.Helper()
	ca, err := NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	f := TLSFiles{CA: ca.File}
	// etcd's JSON gateway (which the CNI plugins use) dials etcd's own gRPC
	// port with the server certificate, so with client-certificate auth
	// that certificate must also be good for client auth: Issue makes every
	// certificate good for both.
	if f.ServerCert, f.ServerKey, err = ca.Issue("server", "server", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if f.ClientCert, f.ClientKey, err = ca.Issue("client", "client", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	return f
}
