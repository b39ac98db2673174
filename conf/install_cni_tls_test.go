package conf_test

import (
	"os"
	"path/filepath"
	"testing"
)

// This node's own certificate in the host's /etc/tabby/pki (mounted at
// ETCD_TLS_HOST_DIR) is not copied: the conflist names the host's files, so
// the plugins read a rotated certificate at their next call. The CA from the
// Secret is still copied.
func TestInstallCNIHostCertificateNotCopied(t *testing.T) {
	r := newCNIRun(t)
	hostDir := filepath.Join(r.root, "pki")
	if err := os.MkdirAll(hostDir, 0o700); err != nil {
		t.Fatal(err)
	}
	r.write(filepath.Join(hostDir, "etcd-cert"), "-----BEGIN CERTIFICATE-----\n", 0o600)
	r.write(filepath.Join(hostDir, "etcd-key"), "-----BEGIN EC PRIVATE KEY-----\n", 0o600)
	r.mustRun(map[string]string{
		"ETCD_TLS_HOST_DIR":      hostDir,
		"HOST_ETCD_TLS_HOST_DIR": "/etc/tabby/pki",
		"ETCD_CERT_FILE":         filepath.Join(hostDir, "etcd-cert"),
		"ETCD_KEY_FILE":          filepath.Join(hostDir, "etcd-key"),
	})
	c := r.conflist()
	if c["etcd_cert_file"] != "/etc/tabby/pki/etcd-cert" || c["etcd_key_file"] != "/etc/tabby/pki/etcd-key" {
		t.Errorf("conflist names %v and %v, want the host's /etc/tabby/pki files", c["etcd_cert_file"], c["etcd_key_file"])
	}
	if c["etcd_ca_cert_file"] != "/etc/cni/net.d/tabby-tls/etcd-ca" {
		t.Errorf("etcd_ca_cert_file %v, want the host's copy", c["etcd_ca_cert_file"])
	}
	for _, f := range []string{"etcd-cert", "etcd-key"} {
		if _, err := os.Stat(filepath.Join(r.net, "tabby-tls", f)); err == nil {
			t.Errorf("%s was copied; the host's own file should be named", f)
		}
	}
}
