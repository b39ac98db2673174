package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabby-net/tabby/pkg/ifaddr"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// tabby-ipam as the ipam of Debian's ptp and bridge, driven by cnitool: the
// containers get addresses from the tabby pool and reach each other. ptp
// keeps the explicit "result":"block"; bridge has a bare ipam section and
// gets block shape because its main plugin is not tabby; "result":"host"
// under ptp is the explicit override the other way.
func TestIPAMUnderReferencePlugins(t *testing.T) {
	cnitool := testutil.Tool(t, "cnitool", filepath.Join(testutil.Root(), "bin", "tools", "cnitool"))
	testutil.Tool(t, "ptp", "/usr/lib/cni/ptp")
	testutil.Tool(t, "bridge", "/usr/lib/cni/bridge")
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	ipamConf := fmt.Sprintf(`"ipam":{"type":"tabby-ipam","etcd_endpoints":%q,"nodename":%q,"state_dir":%q%%s}`, e.l.EtcdURL, h.Name, e.stateDir(h))
	for _, tc := range []struct{ name, plugin, ipamExtra string }{
		{"ptp", `"type":"ptp","ipMasq":false`, `,"result":"block"`},
		{"bridge", `"type":"bridge","bridge":"ipambr0","isGateway":true`, ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(e.dir, tc.name)
			os.MkdirAll(dir, 0o755)
			conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net-%s",%s,%s}`, tc.name, tc.plugin, fmt.Sprintf(ipamConf, tc.ipamExtra))
			os.WriteFile(filepath.Join(dir, "10-net.conf"), []byte(conf), 0o644)
			env := append(os.Environ(), "NETCONFPATH="+dir, "CNI_PATH="+e.cniPath())
			var ips, names []string
			for i := 0; i < 2; i++ {
				name, path := e.l.AddContainer(h, fmt.Sprintf("%s%d", tc.name, i))
				cmd := e.l.Command(h.NS, cnitool, "add", "net-"+tc.name, path)
				cmd.Env = env
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("cnitool add: %v\n%s", err, out)
				}
				var r current.Result
				if err := json.Unmarshal(out, &r); err != nil || len(r.IPs) != 1 {
					t.Fatalf("result: %v\n%s", err, out)
				}
				ip := r.IPs[0].Address.IP
				if !strings.HasPrefix(ip.String(), "10.0.") {
					t.Fatalf("address %s not from the tabby pool", ip)
				}
				if ones, _ := r.IPs[0].Address.Mask.Size(); ones == 32 {
					t.Fatalf("%s answered in host shape (%s) under %s", "tabby-ipam", r.IPs[0].Address.String(), tc.name)
				}
				ips, names = append(ips, ip.String()), append(names, name)
			}
			if err := e.l.Ping(names[0], ips[1]); err != nil {
				t.Fatal(err)
			}
			if err := e.l.Ping(names[1], ips[0]); err != nil {
				t.Fatal(err)
			}
			// And the host, through the gateway on the host side.
			if err := e.l.Ping(names[0], h.IP); err != nil {
				t.Fatal(err)
			}
			for i := range names {
				cmd := e.l.Command(h.NS, cnitool, "del", "net-"+tc.name, filepath.Join("/run/netns", names[i]))
				cmd.Env = env
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("cnitool del: %v\n%s", err, out)
				}
			}
			if err := e.Leftovers(h); err != nil {
				t.Fatal(err)
			}
		})
	}
	// "result":"host" overrides the default the other way: under ptp,
	// tabby-ipam answers the /32 behind tabby's link-local gateway.
	t.Run("host-override", func(t *testing.T) {
		conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net-host","type":"ptp",%s}`, fmt.Sprintf(ipamConf, `,"result":"host"`))
		_, path := e.l.AddContainer(h, "hostshape")
		call := testutil.Call{Command: "ADD", ContainerID: "hostshape", Netns: path, IfName: "eth0", Path: e.cniPath(),
			Conf: []byte(conf), Wrap: []string{"ip", "netns", "exec", h.NS}}
		ipamBin := filepath.Join(e.bin, "tabby-ipam")
		o := testutil.Run(ipamBin, call)
		if o.ExitCode != 0 {
			t.Fatalf("tabby-ipam ADD: code %d: %s\n%s", o.ErrCode, o.ErrMsg, o.Stderr)
		}
		var r current.Result
		if err := json.Unmarshal(o.Stdout, &r); err != nil || len(r.IPs) != 1 {
			t.Fatalf("result: %v\n%s", err, o.Stdout)
		}
		if ones, _ := r.IPs[0].Address.Mask.Size(); ones != 32 || !r.IPs[0].Gateway.Equal(ifaddr.GatewayIPv4) {
			t.Fatalf(`"result":"host" under ptp: %s gateway %s, want a /32 behind %s`, r.IPs[0].Address.String(), r.IPs[0].Gateway, ifaddr.GatewayIPv4)
		}
		call.Command = "DEL"
		if o := testutil.Run(ipamBin, call); o.ExitCode != 0 {
			t.Fatalf("tabby-ipam DEL: code %d: %s", o.ErrCode, o.ErrMsg)
		}
		if err := e.Leftovers(h); err != nil {
			t.Fatal(err)
		}
	})
}

// The conflist host-local users write, with tabby-ipam in host-local's
// place: Debian's ptp and bridge with a bare ipam section (no "result").
// Three hosts, twenty concurrent ADDs on each (sixty at once) per plugin:
// every ADD succeeds, every address is distinct, answered in block shape
// (the block's prefix, its first address as the gateway) and inside a block
// whose affinity is its own host; the containers on a host reach each other
// (ptp through the host's routes, bridge across the bridge). Then sixty
// concurrent DELs leave no handle, block or affinity.
func TestIPAMBareUnderPTPAndBridge(t *testing.T) {
	testutil.Tool(t, "ptp", "/usr/lib/cni/ptp")
	testutil.Tool(t, "bridge", "/usr/lib/cni/bridge")
	const perHost = 20
	e := newEnv(t, lab.Options{Hosts: 3})
	e.pool("10.0.0.0/16")
	for _, tc := range []struct{ name, plugin string }{
		{"ptp", `"type":"ptp","ipMasq":false`},
		{"bridge", `"type":"bridge","bridge":"ipambr0","isGateway":true,"ipMasq":false`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			network := "bare-" + tc.name
			type ctr struct {
				h            *lab.Host
				cid, ns, nsp string
				addr         net.IPNet
				gw           net.IP
				hostIface    string
			}
			var ctrs []*ctr
			confs := map[*lab.Host][]byte{}
			for _, h := range e.l.Hosts {
				// Exactly what a host-local user writes, with tabby-ipam's
				// datastore settings in place of host-local's range.
				confs[h] = fmt.Appendf(nil, `{"cniVersion":"1.0.0","name":%q,%s,"log_file":%q,"log_level":"debug",
				  "ipam":{"type":"tabby-ipam","etcd_endpoints":%q,"nodename":%q,"state_dir":%q}}`,
					network, tc.plugin, e.CNILog(h), e.l.EtcdURL, h.Name, e.stateDir(h))
				for i := range perHost {
					name := fmt.Sprintf("%s%d", tc.name, i)
					ns, nsp := e.l.AddContainer(h, name)
					ctrs = append(ctrs, &ctr{h: h, cid: fmt.Sprintf("%s-%s-%d", tc.name, h.Name, i), ns: ns, nsp: nsp})
				}
			}
			run := func(c *ctr, cmd string) testutil.Outcome {
				return testutil.Run("/usr/lib/cni/"+tc.name, testutil.Call{Command: cmd, ContainerID: c.cid, Netns: c.nsp, IfName: "eth0",
					Path: e.cniPath(), Conf: confs[c.h], Wrap: []string{"ip", "netns", "exec", c.h.NS}, Timeout: 2 * time.Minute})
			}
			// All sixty at once.
			start := make(chan struct{})
			var wg sync.WaitGroup
			errs := make([]error, len(ctrs))
			for i, c := range ctrs {
				wg.Go(func() {
					<-start
					o := run(c, "ADD")
					if o.ExitCode != 0 {
						errs[i] = fmt.Errorf("%s ADD %s on %s: exit %d code %d: %s\n%s", tc.name, c.cid, c.h.Name, o.ExitCode, o.ErrCode, o.ErrMsg, o.Stderr)
						return
					}
					var r current.Result
					if err := json.Unmarshal(o.Stdout, &r); err != nil || len(r.IPs) != 1 {
						errs[i] = fmt.Errorf("%s ADD %s: result: %v\n%s", tc.name, c.cid, err, o.Stdout)
						return
					}
					c.addr, c.gw = r.IPs[0].Address, r.IPs[0].Gateway
					for _, ifc := range r.Interfaces {
						if ifc.Sandbox == "" && ifc.Name != "ipambr0" {
							c.hostIface = ifc.Name
						}
					}
				})
			}
			t0 := time.Now()
			close(start)
			wg.Wait()
			if err := joinErrs(errs); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d concurrent %s ADDs in %v", len(ctrs), tc.name, time.Since(t0).Round(time.Millisecond))

			// Distinct, in block shape, in a block affine to the container's
			// own host, held by the container's handle.
			blocks := ipamBlocks(t, e)
			affs := ipamAffinities(t, e)
			seen := map[string]string{}
			for _, c := range ctrs {
				ip := c.addr.IP.String()
				if other, dup := seen[ip]; dup {
					t.Fatalf("%s given to both %s and %s", ip, other, c.cid)
				}
				seen[ip] = c.cid
				var blk *model.Block
				var bn *net.IPNet
				for _, b := range blocks {
					if _, n, err := net.ParseCIDR(b.CIDR); err == nil && n.Contains(c.addr.IP) {
						blk, bn = b, n
					}
				}
				if blk == nil {
					t.Fatalf("%s (%s on %s) is in no block in etcd", ip, c.cid, c.h.Name)
				}
				if blk.Affinity != c.h.Name {
					t.Fatalf("%s (%s on %s) is in block %s affine to %q", ip, c.cid, c.h.Name, blk.CIDR, blk.Affinity)
				}
				if a, ok := affs[model.AffinityKey(c.h.Name, blk.CIDR)]; !ok || a.Host != c.h.Name || a.Block != blk.CIDR {
					t.Fatalf("block %s of %s: affinity record %+v (present %v)", blk.CIDR, c.h.Name, a, ok)
				}
				if ord := ordinal(bn, c.addr.IP); ord < 0 || ord >= len(blk.Allocations) || blk.Allocations[ord] == nil ||
					blk.Allocations[ord].Handle != model.HandleID(network, c.cid) || blk.Allocations[ord].Host != c.h.Name {
					t.Fatalf("%s in block %s is not held by %s on %s: %+v", ip, blk.CIDR, model.HandleID(network, c.cid), c.h.Name, blk.Allocations)
				}
				if c.addr.Mask.String() != bn.Mask.String() || !c.gw.Equal(bn.IP) {
					t.Fatalf("%s ADD %s answered %s gateway %s: want block shape %s gateway %s", tc.name, c.cid, c.addr.String(), c.gw, bn, bn.IP)
				}
				var hd model.Handle
				if err := getJSON(e, model.HandleKey(network, c.cid), &hd); err != nil {
					t.Fatal(err)
				}
				if !slices.Contains(hd.IPs, ip) || hd.Host != c.h.Name || hd.Plugin != tc.name {
					t.Fatalf("handle of %s: %+v", c.cid, hd)
				}
			}

			// The path between containers of one host: ptp routes each
			// container's address on the host to its own veth; bridge reaches
			// them all across the bridge.
			for _, c := range ctrs {
				out, err := e.l.Exec(c.h.NS, "ip", "-o", "-4", "route", "get", c.addr.IP.String())
				if err != nil {
					t.Fatal(err)
				}
				want := "dev " + c.hostIface + " "
				if tc.name == "bridge" {
					want = "dev ipambr0 "
				}
				if c.hostIface == "" || !strings.Contains(out, want) {
					t.Fatalf("%s on %s: the host routes %s by %q, want %q", tc.name, c.h.Name, c.addr.IP, strings.TrimSpace(out), want)
				}
				if tc.name == "bridge" {
					if out, err := e.l.Exec(c.h.NS, "ip", "-o", "link", "show", "dev", c.hostIface); err != nil || !strings.Contains(out, "master ipambr0") {
						t.Fatalf("%s of %s is not a port of the bridge: %v %s", c.hostIface, c.cid, err, out)
					}
				}
			}
			// Each container pings the next one on its host (a ring: every
			// container sends and answers), the first also its host.
			sem := make(chan struct{}, 8)
			for i, c := range ctrs {
				next := ctrs[i/perHost*perHost+(i+1)%perHost]
				wg.Go(func() {
					sem <- struct{}{}
					defer func() { <-sem }()
					errs[i] = lab.Eventually(10*time.Second, func() error { return e.l.Ping(c.ns, next.addr.IP.String()) })
					if errs[i] == nil && i%perHost == 0 {
						errs[i] = lab.Eventually(10*time.Second, func() error { return e.l.Ping(c.ns, c.h.IP) })
					}
				})
			}
			wg.Wait()
			if err := joinErrs(errs); err != nil {
				t.Fatal(err)
			}

			// All sixty DELs at once; then nothing of tabby's is left.
			start = make(chan struct{})
			for i, c := range ctrs {
				wg.Go(func() {
					<-start
					errs[i] = nil
					if o := run(c, "DEL"); o.ExitCode != 0 {
						errs[i] = fmt.Errorf("%s DEL %s on %s: exit %d code %d: %s\n%s", tc.name, c.cid, c.h.Name, o.ExitCode, o.ErrCode, o.ErrMsg, o.Stderr)
					}
				})
			}
			close(start)
			wg.Wait()
			if err := joinErrs(errs); err != nil {
				t.Fatal(err)
			}
			if err := e.Leftovers(e.l.Hosts...); err != nil {
				t.Fatal(err)
			}
			// ptp and bridge removed their veths (the bridge itself stays,
			// as it does with host-local).
			for _, h := range e.l.Hosts {
				out, err := e.l.Exec(h.NS, "ip", "-o", "link", "show", "type", "veth")
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
					if l != "" && !strings.Contains(l, " eth0@") {
						t.Fatalf("veth left on %s after DEL: %s", h.Name, l)
					}
				}
			}
		})
	}
}

func joinErrs(errs []error) error {
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	if len(msgs) > 5 {
		msgs = append(msgs[:5], fmt.Sprintf("... and %d more", len(msgs)-5))
	}
	return fmt.Errorf("%s", strings.Join(msgs, "\n"))
}

// ipamBlocks reads every IPAM block from etcd.
func ipamBlocks(t *testing.T, e *env) []*model.Block {
	t.Helper()
	kvs, _, err := e.KV.List(context.Background(), model.BlockPrefix, false)
	if err != nil {
		t.Fatal(err)
	}
	var out []*model.Block
	for _, kv := range kvs {
		b := &model.Block{}
		if err := json.Unmarshal(kv.Value, b); err != nil {
			t.Fatalf("block %s: %v", kv.Key, err)
		}
		out = append(out, b)
	}
	return out
}

// ipamAffinities reads every block affinity from etcd, by key.
func ipamAffinities(t *testing.T, e *env) map[string]model.Affinity {
	t.Helper()
	kvs, _, err := e.KV.List(context.Background(), model.AffinityPrefix, false)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]model.Affinity{}
	for _, kv := range kvs {
		var a model.Affinity
		if err := json.Unmarshal(kv.Value, &a); err != nil {
			t.Fatalf("affinity %s: %v", kv.Key, err)
		}
		out[kv.Key] = a
	}
	return out
}

// getJSON reads one etcd key into v.
func getJSON(e *env, key string, v any) error {
	kv, err := e.KV.Get(context.Background(), key)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return json.Unmarshal(kv.Value, v)
}

// ordinal is ip's index in block n, or -1.
func ordinal(n *net.IPNet, ip net.IP) int {
	if !n.Contains(ip) {
		return -1
	}
	b4, i4 := n.IP.To4(), ip.To4()
	if b4 == nil || i4 == nil {
		return -1
	}
	return int(uint32(i4[0])<<24|uint32(i4[1])<<16|uint32(i4[2])<<8|uint32(i4[3])) -
		int(uint32(b4[0])<<24|uint32(b4[1])<<16|uint32(b4[2])<<8|uint32(b4[3]))
}
