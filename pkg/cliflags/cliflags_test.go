package cliflags

import (
	"bytes"
	"flag"
	"slices"
	"strings"
	"testing"
)

// The flag names and environment variables are a contract with
// deployments: they must not drift.
func TestEtcdFlagsContract(t *testing.T) {
	want := map[string]string{"etcd-endpoints": "ETCD_ENDPOINTS", "etcd-ca-cert-file": "ETCD_CA_CERT_FILE",
		"etcd-cert-file": "ETCD_CERT_FILE", "etcd-key-file": "ETCD_KEY_FILE"}
	if len(EtcdFlags) != len(want) {
		t.Fatalf("%d etcd flags", len(EtcdFlags))
	}
	for _, f := range EtcdFlags {
		if want[f.Name] != f.Env || !strings.HasSuffix(f.Usage(), "(env "+f.Env+")") {
			t.Errorf("flag %+v", f)
		}
	}
	if FlagLogLevel.Name != "log-level" || FlagLogLevel.Env != "TABBY_LOG_LEVEL" {
		t.Errorf("log flag %+v", FlagLogLevel)
	}
}

// The environment is the default; the command line wins.
func TestRegisterEnvAndFlags(t *testing.T) {
	t.Setenv("ETCD_ENDPOINTS", "http://e1:2379, http://e2:2379")
	t.Setenv("ETCD_CA_CERT_FILE", "/env/ca.pem")
	t.Setenv("ETCD_CERT_FILE", "")
	t.Setenv("ETCD_KEY_FILE", "")
	t.Setenv("TABBY_LOG_LEVEL", "debug")
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var e Etcd
	var l Log
	e.Register(fs)
	l.Register(fs)
	if err := fs.Parse([]string{"--etcd-cert-file", "/flag/cert.pem", "--etcd-key-file=/flag/key.pem"}); err != nil {
		t.Fatal(err)
	}
	c := e.Config()
	if !slices.Equal(c.Endpoints, []string{"http://e1:2379", "http://e2:2379"}) || c.CAFile != "/env/ca.pem" ||
		c.CertFile != "/flag/cert.pem" || c.KeyFile != "/flag/key.pem" {
		t.Fatalf("config %+v", c)
	}
	if l.Level != "debug" {
		t.Fatalf("level %q", l.Level)
	}
	var buf bytes.Buffer
	log, err := l.Logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello")
	if !strings.Contains(buf.String(), "hello") {
		t.Fatalf("debug level not applied: %q", buf.String())
	}
	if _, err := (Log{Level: "loud"}).Logger(&buf); err == nil || !strings.Contains(err.Error(), `--log-level "loud"`) {
		t.Fatalf("bad level: %v", err)
	}
}

// Without flags or environment, etcd is on this host.
func TestEtcdFromDefaults(t *testing.T) {
	for _, f := range EtcdFlags {
		t.Setenv(f.Env, "")
	}
	t.Setenv("ETCD_KEY_FILE", "/env/key.pem")
	e := EtcdFrom(func(name string) (string, bool) {
		if name == "etcd-ca-cert-file" {
			return "/flag/ca.pem", true
		}
		return "", false
	})
	if e.Endpoints != DefaultEtcdEndpoints || e.CAFile != "/flag/ca.pem" || e.CertFile != "" || e.KeyFile != "/env/key.pem" {
		t.Fatalf("%+v", e)
	}
	kv, err := e.Open()
	if err == nil {
		kv.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "/flag/ca.pem") {
		t.Fatalf("a CA file that does not exist: %v", err)
	}
}
