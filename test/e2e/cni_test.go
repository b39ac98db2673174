package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/store"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

func addrOf(t *testing.T, o testutil.Outcome) string {
	t.Helper()
	if o.ExitCode != 0 {
		t.Fatalf("ADD failed (exit %d): %s %s", o.ExitCode, o.Stdout, o.Stderr)
	}
	var r current.Result
	if err := json.Unmarshal(o.Stdout, &r); err != nil || len(r.IPs) == 0 {
		t.Fatalf("result %s: %v", o.Stdout, err)
	}
	return r.IPs[0].Address.IP.String()
}

// One host, two containers: addresses, host reachability, container to
// container through the host's routes, the etcd record; DEL leaves nothing.
func TestCNIOneHost(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	conf := e.conf(h, "", `,"profiles":["P1"]`, "")
	_, nsA := e.l.AddContainer(h, "a")
	_, nsB := e.l.AddContainer(h, "b")
	nsAName, nsBName := filepath.Base(nsA), filepath.Base(nsB)
	ipA := addrOf(t, e.plugin(h, "ADD", "ctr-a", nsA, "eth0", "TABBY_WORKLOAD=conA;TABBY_PROFILES=P2", conf))
	ipB := addrOf(t, e.plugin(h, "ADD", "ctr-b", nsB, "eth0", "IP=10.0.0.77", conf))
	if ipB != "10.0.0.77" {
		t.Fatalf("static IP: got %s", ipB)
	}
	// Inside the container: /32, link route to 169.254.1.1, default via it.
	if out := e.l.MustExec(nsAName, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, ipA+"/32") {
		t.Fatalf("container address:\n%s", out)
	}
	if out := e.l.MustExec(nsAName, "ip", "route"); !strings.Contains(out, "default via 169.254.1.1 dev eth0") || !strings.Contains(out, "169.254.1.1 dev eth0 scope link") {
		t.Fatalf("container routes:\n%s", out)
	}
	// The host side: tby veth with proxy ARP, a /32 route.
	ep := e.endpoint(h, "cni", "conA")
	if !strings.HasPrefix(ep.HostInterface, "tby") || len(ep.HostInterface) != 14 {
		t.Fatalf("host interface %q", ep.HostInterface)
	}
	if v := strings.TrimSpace(e.l.MustExec(h.NS, "cat", "/proc/sys/net/ipv4/conf/"+ep.HostInterface+"/proxy_arp")); v != "1" {
		t.Fatalf("proxy_arp = %s", v)
	}
	if out := e.l.MustExec(h.NS, "ip", "route", "show", ipA+"/32"); !strings.Contains(out, "dev "+ep.HostInterface) {
		t.Fatalf("host route: %s", out)
	}
	if strings.Join(ep.Profiles, ",") != "P1,P2" || ep.ContainerID != "ctr-a" || ep.IPv4Nets[0] != ipA+"/32" || ep.MAC == "" {
		t.Fatalf("endpoint record %+v", ep)
	}
	if k := e.keys(model.TagMembersPrefix("P2")); len(k) != 1 {
		t.Fatalf("tag index for P2: %v", k)
	}
	// Reachability: host side, then container to container.
	if err := e.l.Ping(nsAName, h.IP); err != nil {
		t.Fatal(err)
	}
	if err := e.l.Ping(nsAName, ipB); err != nil {
		t.Fatal(err)
	}
	if err := e.l.Ping(nsBName, ipA); err != nil {
		t.Fatal(err)
	}
	// A repeated ADD answers from what is there: same address, one veth.
	if again := addrOf(t, e.plugin(h, "ADD", "ctr-a", nsA, "eth0", "TABBY_WORKLOAD=conA;TABBY_PROFILES=P2", conf)); again != ipA {
		t.Fatalf("repeated ADD gave %s, want %s", again, ipA)
	}
	if n := strings.Count(e.l.MustExec(h.NS, "ip", "-o", "link"), "tby"); n != 2 {
		t.Fatalf("%d veths after a repeated ADD, want 2", n)
	}
	// CHECK passes on a healthy container and names the fault on a broken one.
	prev := e.plugin(h, "ADD", "ctr-a", nsA, "eth0", "TABBY_WORKLOAD=conA;TABBY_PROFILES=P2", conf).Stdout
	checkConf := withPrev(t, conf, prev)
	if o := e.plugin(h, "CHECK", "ctr-a", nsA, "eth0", "TABBY_WORKLOAD=conA;TABBY_PROFILES=P2", checkConf); o.ExitCode != 0 {
		t.Fatalf("CHECK: %s", o.Stdout)
	}
	e.l.MustExec(nsAName, "ip", "route", "del", "default")
	if o := e.plugin(h, "CHECK", "ctr-a", nsA, "eth0", "TABBY_WORKLOAD=conA;TABBY_PROFILES=P2", checkConf); o.ExitCode == 0 || !strings.Contains(o.ErrMsg, "default") {
		t.Fatalf("CHECK with the default route gone: %d %s", o.ExitCode, o.ErrMsg)
	}
	// DEL, twice, and DEL of a container whose netns is gone.
	for i := 0; i < 2; i++ {
		if o := e.plugin(h, "DEL", "ctr-a", nsA, "eth0", "TABBY_WORKLOAD=conA", conf); o.ExitCode != 0 {
			t.Fatalf("DEL %d: %s", i, o.Stdout)
		}
	}
	if err := e.l.RemoveContainer(nsBName); err != nil {
		t.Fatal(err)
	}
	if o := e.plugin(h, "DEL", "ctr-b", nsB, "eth0", "", conf); o.ExitCode != 0 {
		t.Fatalf("DEL with netns gone: %s", o.Stdout)
	}
	e.assertClean(h)
}

func (e *env) endpoint(h *lab.Host, orch, wl string) *model.Endpoint {
	e.t.Helper()
	var ep model.Endpoint
	if _, err := store.GetJSON(context.Background(), e.kv, model.EndpointKey(h.Name, orch, wl, "eth0"), &ep); err != nil {
		e.t.Fatalf("endpoint %s/%s: %v", orch, wl, err)
	}
	return &ep
}

func withPrev(t *testing.T, conf, prev []byte) []byte {
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	var p any
	if err := json.Unmarshal(prev, &p); err != nil {
		t.Fatal(err)
	}
	m["prevResult"] = p
	b, _ := json.Marshal(m)
	return b
}

// 50 concurrent ADDs then 50 concurrent DELs on one host.
func TestCNIConcurrent50(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	conf := e.conf(h, "", "", "")
	const n = 50
	paths := make([]string, n)
	for i := range paths {
		_, paths[i] = e.l.AddContainer(h, fmt.Sprintf("c%d", i))
	}
	ips := make([]string, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			o := e.plugin(h, "ADD", fmt.Sprintf("ctr%d", i), paths[i], "eth0", "", conf)
			if o.ExitCode != 0 {
				t.Errorf("ADD %d: %s", i, o.Stdout)
				return
			}
			var r current.Result
			if json.Unmarshal(o.Stdout, &r) == nil && len(r.IPs) > 0 {
				ips[i] = r.IPs[0].Address.IP.String()
			}
		}(i)
	}
	wg.Wait()
	t.Logf("%d concurrent ADDs took %v", n, time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		return
	}
	seen := map[string]bool{}
	for _, ip := range ips {
		if seen[ip] || net.ParseIP(ip) == nil {
			t.Fatalf("bad or duplicate address %q", ip)
		}
		seen[ip] = true
	}
	// Every container reaches its neighbour through the host.
	if err := e.l.Ping(filepath.Base(paths[0]), ips[n-1]); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if o := e.plugin(h, "DEL", fmt.Sprintf("ctr%d", i), paths[i], "eth0", "", conf); o.ExitCode != 0 {
				t.Errorf("DEL %d: %s", i, o.Stdout)
			}
		}(i)
	}
	wg.Wait()
	e.assertClean(h)
}

// Failure paths: each a clear error with the spec's code, nothing left behind.
func TestCNIFailuresLeaveNothing(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/30", "--block-size", "30")
	conf := e.conf(h, "", "", "")
	_, ns := e.l.AddContainer(h, "f")
	cases := []struct {
		name, netns, ifname, args string
		conf                      []byte
		code                      int
	}{
		{"IPAM fails: address outside pools", ns, "eth0", "IP=172.31.0.1", conf, 102},
		{"IPAM fails: unknown pool", ns, "eth0", "", e.conf(h, "", "", `,"ipv4_pools":["10.9.0.0/16"]`), 102},
		{"netns path missing", "/run/netns/does-not-exist", "eth0", "", conf, 7},
		{"interface name taken", ns, "lo", "", conf, 7},
		{"bad CNI_ARGS", ns, "eth0", "IP=10.0.0.999", conf, 7},
		{"bad netconf", ns, "eth0", "", []byte(`{"cniVersion":"1.1.0","name":"x","type":"tabby","mtu":-5,"ipam":{"type":"tabby-ipam"}}`), 4},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := e.plugin(h, "ADD", fmt.Sprintf("fail%d", i), c.netns, c.ifname, c.args, c.conf)
			if o.ErrCode != c.code {
				t.Fatalf("code %d (%s), want %d", o.ErrCode, o.ErrMsg, c.code)
			}
			t.Logf("code %d: %s", o.ErrCode, o.ErrMsg)
			e.assertClean(h)
		})
	}
	// etcd down: code 11 within 5 s, and nothing on the host.
	t.Run("etcd down", func(t *testing.T) {
		bad := e.conf(h, "", "", "")
		bad = []byte(strings.Replace(string(bad), e.l.EtcdURL, "http://198.19.0.254:1", 1))
		o := e.plugin(h, "ADD", "down", ns, "eth0", "", bad)
		if o.ErrCode != 11 || o.Took > 5*time.Second {
			t.Fatalf("code %d after %v: %s", o.ErrCode, o.Took, o.ErrMsg)
		}
		e.assertClean(h)
	})
}

// Driven by cnitool with the conflist from conf/ (portmap chained after
// tabby), and by tabbyctl container add/remove.
func TestCNIToolAndTabbyctl(t *testing.T) {
	cnitool := testutil.Tool(t, "cnitool", filepath.Join(testutil.Root(), "bin", "tools", "cnitool"))
	testutil.Tool(t, "portmap", "/usr/lib/cni/portmap")
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	// The shipped conflist, pointed at the lab's etcd and this host's state.
	raw, err := os.ReadFile(filepath.Join(testutil.Root(), "conf", "10-tabby.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	p0 := list["plugins"].([]any)[0].(map[string]any)
	p0["etcd_endpoints"], p0["nodename"], p0["state_dir"] = e.l.EtcdURL, h.Name, e.stateDir(h)
	p0["log_file"] = filepath.Join(e.dir, "cni.log")
	confDir := filepath.Join(e.dir, "net.d")
	os.MkdirAll(confDir, 0o755)
	b, _ := json.Marshal(list)
	confFile := filepath.Join(confDir, "10-tabby.conflist")
	os.WriteFile(confFile, b, 0o644)

	nsName, nsPath := e.l.AddContainer(h, "web")
	cmd := e.l.Command(h.NS, cnitool, "add", "tabby-net", nsPath)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+e.cniPath(),
		"CNI_ARGS=TABBY_WORKLOAD=web", `CAP_ARGS={"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}`)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var r current.Result
	if err := json.Unmarshal(out, &r); err != nil || len(r.IPs) != 1 {
		t.Fatalf("cnitool result: %v\n%s", err, out)
	}
	// portmap got tabby's result: the host port reaches the container.
	e.l.ServeTCP(nsName, 80)
	_, client := e.l.AddContainer(h, "client")
	e.pluginAddFor(h, "client", client)
	eventually(t, 3*time.Second, func() error { return e.l.TCPConnect(filepath.Base(client), h.IP, 8080) })

	del := e.l.Command(h.NS, cnitool, "del", "tabby-net", nsPath)
	del.Env = cmd.Env
	if out, err := del.CombinedOutput(); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	e.plugin(h, "DEL", "client", client, "eth0", "", e.conf(h, "", "", ""))

	// tabbyctl container add / show / remove with the same conflist.
	_, conA := e.l.AddContainer(h, "conA")
	e.ctl(h, "container", "add", "conA", "10.0.0.1", "--netns", conA, "--conf", confFile)
	if show := e.ctl(h, "container", "show"); !strings.Contains(show, "conA") || !strings.Contains(show, "10.0.0.1/32") {
		t.Fatalf("container show:\n%s", show)
	}
	if err := e.l.Ping(filepath.Base(conA), h.IP); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctlErr(h, "container", "add", "conX", "10.0.0.1", "--netns", conA, "--conf", confFile); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("second container with 10.0.0.1: %v", err)
	}
	e.ctl(h, "profile", "add", "PROF_A")
	e.ctl(h, "container", "conA", "profile", "append", "PROF_A")
	if ep := e.endpoint(h, "cni", "conA"); strings.Join(ep.Profiles, ",") != "PROF_A" {
		t.Fatalf("profiles %v", ep.Profiles)
	}
	if _, err := e.ctlErr(h, "profile", "remove", "PROF_A"); err == nil || !strings.Contains(err.Error(), "conA") {
		t.Fatalf("removing a used profile must refuse and name conA: %v", err)
	}
	e.ctl(h, "container", "conA", "profile", "remove", "PROF_A")
	e.ctl(h, "container", "remove", "conA", "--conf", confFile)
	e.assertClean(h)
}

func (e *env) pluginAddFor(h *lab.Host, cid, ns string) string {
	return addrOf(e.t, e.plugin(h, "ADD", cid, ns, "eth0", "", e.conf(h, "", "", "")))
}

// Every supported CNI version gets a result in its own format.
func TestCNIVersions(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		_, ns := e.l.AddContainer(h, "v"+strings.ReplaceAll(v, ".", ""))
		conf := e.conf(h, v, "", "")
		o := e.plugin(h, "ADD", "ver"+v, ns, "eth0", "", conf)
		var res struct {
			CNIVersion string `json:"cniVersion"`
			IPs        []any  `json:"ips"`
		}
		if o.ExitCode != 0 || json.Unmarshal(o.Stdout, &res) != nil || res.CNIVersion != v || len(res.IPs) != 1 {
			t.Fatalf("version %s: %s", v, o.Stdout)
		}
		if o := e.plugin(h, "DEL", "ver"+v, ns, "eth0", "", conf); o.ExitCode != 0 {
			t.Fatalf("DEL %s: %s", v, o.Stdout)
		}
	}
	e.assertClean(h)
}

// IPAM through CNI delegation: tabby-ipam exec'd ("ipam_exec") and Debian's
// host-local, both under tabby.
func TestCNIDelegatedIPAM(t *testing.T) {
	testutil.Tool(t, "host-local", "/usr/lib/cni/host-local")
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	hl := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby-net","type":"tabby","etcd_endpoints":%q,"nodename":%q,"state_dir":%q,
	  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.77.0.0/24"}]],"dataDir":%q}}`, e.l.EtcdURL, h.Name, e.stateDir(h), filepath.Join(e.dir, "hl"))
	for _, tc := range []struct {
		name   string
		conf   []byte
		prefix string
	}{
		{"tabby-ipam exec'd", e.conf(h, "", `,"ipam_exec":true`, ""), "10.0."},
		{"host-local", []byte(hl), "10.77.0."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nsName, ns := e.l.AddContainer(h, "d"+strings.ReplaceAll(tc.name[:4], "-", ""))
			ip := addrOf(t, e.plugin(h, "ADD", "del-"+tc.name[:4], ns, "eth0", "TABBY_WORKLOAD=w", tc.conf))
			if !strings.HasPrefix(ip, tc.prefix) {
				t.Fatalf("address %s, want one from %s", ip, tc.prefix)
			}
			if err := e.l.Ping(nsName, h.IP); err != nil {
				t.Fatal(err)
			}
			if ep := e.endpoint(h, "cni", "w"); ep.IPv4Nets[0] != ip+"/32" {
				t.Fatalf("endpoint %+v", ep)
			}
			if o := e.plugin(h, "DEL", "del-"+tc.name[:4], ns, "eth0", "TABBY_WORKLOAD=w", tc.conf); o.ExitCode != 0 {
				t.Fatalf("DEL: %s", o.Stdout)
			}
			e.assertClean(h)
		})
	}
}

// GC: the tabby plugin removes this network's endpoints (veth, record) and
// addresses that no valid attachment names, and keeps the rest.
func TestCNIGC(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	conf := e.conf(h, "", "", "")
	_, keepNS := e.l.AddContainer(h, "keep")
	_, goneNS := e.l.AddContainer(h, "gone")
	addrOf(t, e.plugin(h, "ADD", "keep", keepNS, "eth0", "", conf))
	addrOf(t, e.plugin(h, "ADD", "gone", goneNS, "eth0", "", conf))
	gc := withPrev(t, conf, []byte("null"))
	var m map[string]any
	json.Unmarshal(gc, &m)
	delete(m, "prevResult")
	m["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "keep", "ifname": "eth0"}}
	gc, _ = json.Marshal(m)
	if o := e.plugin(h, "GC", "", "", "", "", gc); o.ExitCode != 0 {
		t.Fatalf("GC: %s %s", o.Stdout, o.Stderr)
	}
	eps := e.keys(model.HostWorkloadPrefix(h.Name))
	if len(eps) != 1 || !strings.Contains(eps[0], "/keep/") {
		t.Fatalf("endpoints after GC: %v", eps)
	}
	if n := strings.Count(e.l.MustExec(h.NS, "ip", "-o", "link"), "tby"); n != 1 {
		t.Fatalf("%d veths after GC, want 1", n)
	}
	if hs := e.keys(model.HandlePrefix); len(hs) != 1 || !strings.HasSuffix(hs[0], "/keep") {
		t.Fatalf("handles after GC: %v", hs)
	}
	e.plugin(h, "DEL", "keep", keepNS, "eth0", "", conf)
	e.assertClean(h)
}

// STATUS: fine with etcd and a pool with room; code 11 when etcd is away.
func TestCNIStatus(t *testing.T) {
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	conf := e.conf(h, "", "", "")
	if o := e.plugin(h, "STATUS", "", "", "", "", conf); o.ExitCode == 0 {
		t.Fatal("STATUS passed with no pool")
	}
	e.pool("10.0.0.0/16")
	if o := e.plugin(h, "STATUS", "", "", "", "", conf); o.ExitCode != 0 {
		t.Fatalf("STATUS: %s", o.Stdout)
	}
	bad := []byte(strings.Replace(string(conf), e.l.EtcdURL, "http://198.19.0.254:1", 1))
	if o := e.plugin(h, "STATUS", "", "", "", "", bad); o.ErrCode != 11 {
		t.Fatalf("STATUS with etcd unreachable: code %d %s", o.ErrCode, o.ErrMsg)
	}
}
