package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/testutil"
	"github.com/tabby-net/tabby/test/lab"
)

// tabby-ipam as the ipam of Debian's ptp and bridge, driven by cnitool: the
// containers get addresses from the tabby pool and reach each other.
func TestIPAMUnderReferencePlugins(t *testing.T) {
	cnitool := testutil.Tool(t, "cnitool", filepath.Join(testutil.Root(), "bin", "tools", "cnitool"))
	testutil.Tool(t, "ptp", "/usr/lib/cni/ptp")
	e := newEnv(t, lab.Options{Hosts: 1})
	h := e.l.Hosts[0]
	e.pool("10.0.0.0/16")
	ipamConf := fmt.Sprintf(`"ipam":{"type":"tabby-ipam","etcd_endpoints":%q,"nodename":%q,"state_dir":%q%%s}`, e.l.EtcdURL, h.Name, e.stateDir(h))
	for _, tc := range []struct{ name, plugin, ipamExtra string }{
		{"ptp", `"type":"ptp","ipMasq":false`, `,"result":"block"`},
		{"bridge", `"type":"bridge","bridge":"tbybr0","isGateway":true`, `,"result":"block"`},
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
			if k := e.keys(model.HandlePrefix); len(k) != 0 {
				t.Fatalf("handles left: %v", k)
			}
		})
	}
}
