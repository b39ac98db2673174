package netconf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/pkg/cnierr"
)

func code(err error) cnierr.Code { return cnierr.CodeOf(err) }

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"n","type":"tabby","etcd_endpoints":"http://a:1, http://b:2",
	  "profiles":["P"],"ipam":{"type":"tabby-ipam","assign_ipv6":true,"ipv6_pools":["fd00::/64"]},
	  "runtimeConfig":{"ips":["10.0.0.9/16"]},"args":{"tabby":{"profiles":["Q"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.AssignV4() || !c.IPAM.AssignIPv6 || len(c.EtcdConfig().EndpointList()) != 2 {
		t.Fatalf("%+v", c)
	}
	a, err := ParseArgs("IP=fd00::5;TABBY_WORKLOAD=conA;TABBY_PROFILES=A,B", c)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.IPs) != 2 || a.Workload != "conA" || len(a.Profiles) != 3 {
		t.Fatalf("%+v", a)
	}
	k, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=x;FOO=bar", nil)
	if err != nil || k.Orchestrator != "k8s" || k.Workload != "default.web" || k.Profiles[0] != "k8s_ns.default" {
		t.Fatalf("k8s args: %+v %v", k, err)
	}
}

func TestParseBad(t *testing.T) {
	for _, tc := range []struct {
		conf string
		code cnierr.Code
	}{
		{`{`, cnierr.BadConfig},
		{`{"cniVersion":"1.0.0","type":"tabby"}`, cnierr.BadConfig},
		{`{"name":"a/b"}`, cnierr.BadConfig},
		{`{"name":"n","mtu":70000}`, cnierr.BadConfig},
		{`{"name":"n","profiles":["a b"]}`, cnierr.BadConfig},
		{`{"name":"n","ipam":{"ipv4_pools":["10.0.0.1/8"]}}`, cnierr.BadConfig},
		{`{"name":"n","ipam":{"result":"weird"}}`, cnierr.BadConfig},
		{`{"name":"n","log_file":"tabby.log"}`, cnierr.BadConfig},
		{`{"name":"n","log_file":"../var/log/x"}`, cnierr.BadConfig},
	} {
		if _, err := Parse([]byte(tc.conf)); code(err) != tc.code {
			t.Errorf("%s: got %v, want code %d", tc.conf, err, tc.code)
		}
	}
	for _, args := range []string{"IP", "IP=300.1.1.1", "FOO=1", "IP=10.0.0.1,10.0.0.2", "TABBY_WORKLOAD=a/b",
		"TABBY_ORCHESTRATOR=mesos", "K8S_POD_NAME=x", "TABBY_PROFILES=a/b"} {
		if _, err := ParseArgs(args, nil); code(err) != cnierr.BadArgs {
			t.Errorf("CNI_ARGS %q: got %v, want code %d", args, err, cnierr.BadArgs)
		}
	}
}

// Fuzz the untrusted inputs: no panic, and an error is always a coded Error.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"tabby","ipam":{"type":"tabby-ipam"}}`), "IP=10.0.0.1;TABBY_WORKLOAD=x")
	f.Add([]byte(`{"name":"n","runtimeConfig":{"ips":["fd00::1/64"]}}`), "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b")
	f.Add([]byte(`[]`), ";;=;")
	f.Add([]byte(`{"name":"n","args":{"tabby":{"labels":{"app":"web"}}}}`), "TABBY_LABELS=a=b,c,d=;K8S_POD_UID=u")
	f.Fuzz(func(t *testing.T, conf []byte, args string) {
		c, err := Parse(conf)
		if err != nil {
			if code(err) == 0 {
				t.Fatalf("uncoded error %v", err)
			}
			c = nil
		}
		a, err := ParseArgs(args, c)
		if err != nil {
			if code(err) == 0 {
				t.Fatalf("uncoded args error %v", err)
			}
			return
		}
		for _, ip := range a.IPs {
			if ip == nil {
				t.Fatal("nil IP accepted")
			}
		}
	})
}

func TestNodeFromFileRequired(t *testing.T) {
	dir := t.TempDir()
	c := &NetConf{StateDir: dir, NodenameFileRequired: true}
	var nn *NoNodenameError
	if _, err := c.Node(); !errors.As(err, &nn) || !strings.Contains(err.Error(), filepath.Join(dir, "nodename")) {
		t.Fatalf("no file, required: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nodename"), []byte("node-7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Node(); err != nil || n != "node-7" {
		t.Fatalf("file: %q %v", n, err)
	}
	c2 := &NetConf{StateDir: t.TempDir()}
	if h, _ := os.Hostname(); h != "" {
		if n, err := c2.Node(); err != nil || n != h {
			t.Fatalf("not required: %q %v, want the hostname %q", n, err, h)
		}
	}
	c3, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tabby","etcd_endpoints":"http://127.0.0.1:2379","nodename_file_required":true,"state_dir":"` + dir + `"}`))
	if err != nil || !c3.NodenameFileRequired {
		t.Fatalf("parse: %+v %v", c3, err)
	}
}

func TestParseLabels(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tabby","args":{"tabby":{"labels":{"team":"a"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseArgs("TABBY_LABELS=app=web, tier=front,debug", c)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Labels) != 4 || a.Labels["app"] != "web" || a.Labels["tier"] != "front" || a.Labels["debug"] != "" || a.Labels["team"] != "a" {
		t.Fatalf("labels %v", a.Labels)
	}
	for _, bad := range []string{"TABBY_LABELS=a=b,a=c", "TABBY_LABELS=a b=c", "TABBY_LABELS=a=$(x)", "TABBY_LABELS=-a=b"} {
		if _, err := ParseArgs(bad, nil); code(err) != cnierr.BadArgs {
			t.Errorf("%s: %v, want code 7", bad, err)
		}
	}
}
