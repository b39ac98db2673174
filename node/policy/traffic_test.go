package policy

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/tabby-net/tabby/node/internal/nstest"
	"github.com/tabby-net/tabby/node/iptables"
	"github.com/tabby-net/tabby/pkg/dataplane"
	"github.com/tabby-net/tabby/pkg/model"
	"github.com/tabby-net/tabby/pkg/testutil"
)

// trafficWorkload is a container netns wired as the CNI plugin wires it.
type trafficWorkload struct {
	ep   model.Endpoint
	path string
}

func newWorkload(t *testing.T, name, ns_ string, labels map[string]string, v4, v6 string, ports []model.NamedPort) *trafficWorkload {
	t.Helper()
	path := testutil.NetNS(t)
	veth := dataplane.HostVethName(name)
	addrs := []net.IPNet{{IP: net.ParseIP(v4), Mask: net.CIDRMask(32, 32)}, {IP: net.ParseIP(v6), Mask: net.CIDRMask(128, 128)}}
	res, err := dataplane.Setup(dataplane.Config{NetnsPath: path, IfName: "eth0", HostVeth: veth, Addrs: addrs})
	if err != nil {
		t.Fatal(err)
	}
	return &trafficWorkload{path: path, ep: model.Endpoint{Host: "h", Orchestrator: "k8s", Workload: ns_ + "." + name, Name: "eth0", ContainerID: name,
		HostInterface: res.HostVeth, IPv4Nets: []string{v4 + "/32"}, IPv6Nets: []string{v6 + "/128"}, Profiles: []string{"P"},
		Namespace: ns_, Labels: labels, Ports: ports}}
}

// listen accepts TCP connections on port, on both families, in w's netns.
func (w *trafficWorkload) listen(t *testing.T, port int) {
	t.Helper()
	err := ns.WithNetNSPath(w.path, func(ns.NetNS) error {
		for _, a := range []string{w.ep.IPv4Nets[0], w.ep.IPv6Nets[0]} {
			ip, _, _ := net.ParseCIDR(a)
			l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), fmt.Sprint(port)))
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// connects reports whether a TCP connection from w to dst:port is set up.
// A dropped SYN is a timeout; the allowed ones answer in well under it.
func (w *trafficWorkload) connects(t *testing.T, dst *trafficWorkload, port int, v6 bool) bool {
	t.Helper()
	addr := dst.ep.IPv4Nets[0]
	if v6 {
		addr = dst.ep.IPv6Nets[0]
	}
	ip, _, _ := net.ParseCIDR(addr)
	ok := false
	err := ns.WithNetNSPath(w.path, func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), fmt.Sprint(port)), 700*time.Millisecond)
		if err == nil {
			ok = true
			c.Close()
		} else if !strings.Contains(err.Error(), "timeout") {
			return err // refused or unreachable: not what a filter does
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// Real traffic between workloads on one host: web is isolated for
// ingress by a policy that allows only clients (app=client) of its
// namespace to its named port http; client is isolated for egress to
// 10.77.0.0/16 except other's address; the profile P still denies tcp 7000
// inbound for everyone.
func TestPolicyTraffic(t *testing.T) {
	nstest.Run(t, func() {
		for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// A host has an IPv4 address of its own (the source of its ARP
		// requests to workloads).
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.0.2.1"), Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Fatal(err)
		}
		web := newWorkload(t, "web", "prod", map[string]string{"app": "web"}, "10.77.0.1", "fd77::1", []model.NamedPort{{Name: "http", Protocol: "tcp", Port: 8080}})
		client := newWorkload(t, "client", "prod", map[string]string{"app": "client"}, "10.77.0.2", "fd77::2", nil)
		other := newWorkload(t, "other", "prod", map[string]string{"app": "other"}, "10.77.0.3", "fd77::3", nil)
		stranger := newWorkload(t, "stranger", "dev", map[string]string{"app": "client"}, "10.77.0.4", "fd77::4", nil)
		all := []*trafficWorkload{web, client, other, stranger}
		for _, w := range all {
			w.listen(t, 8080)
			w.listen(t, 9090)
			w.listen(t, 7000)
		}
		prof := model.Profile{Name: "P", Inbound: []model.Rule{{Action: "deny", Protocol: "tcp", DstPorts: "7000"}, {Action: "allow"}}, Outbound: []model.Rule{{Action: "allow"}}}
		in := Input{Profiles: map[string]model.Profile{"P": prof}, Tags: map[string][]string{},
			Namespaces: map[string]model.Namespace{"prod": {Name: "prod"}, "dev": {Name: "dev"}}, Members: map[string][]model.Member{},
			Policies: []model.Policy{
				{Name: "web", Namespace: "prod", Selector: "app=web", Types: []string{"ingress"}, Ingress: []model.PolicyRule{
					{Ports: []model.PolicyPort{{Protocol: "tcp", Name: "http"}, {Protocol: "tcp", Port: 7000}}, Peers: []model.Peer{{Selector: "app=client"}}}}},
				{Name: "client", Namespace: "prod", Selector: "app=client", Types: []string{"egress"}, Egress: []model.PolicyRule{
					{Peers: []model.Peer{{CIDR: "10.77.0.0/16", Except: []string{"10.77.0.3/32"}}, {CIDR: "fd77::/64", Except: []string{"fd77::3/128"}}}}}},
			}}
		for _, w := range all {
			in.Endpoints = append(in.Endpoints, w.ep)
			m := model.MemberOf(&w.ep)
			in.Members[w.ep.Namespace] = append(in.Members[w.ep.Namespace], m)
		}
		out := Render(in)
		if _, err := iptables.SyncSets(out.Sets...); err != nil {
			t.Fatal(err)
		}
		for _, tab := range []struct {
			f iptables.Family
			t iptables.Table
		}{{iptables.V4, out.Filter4}, {iptables.V6, out.Filter6}} {
			b, err := iptables.Detect(tab.f)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Apply(tab.t); err != nil {
				t.Fatal(err)
			}
		}
		for _, v6 := range []bool{false, true} {
			for _, c := range []struct {
				from, to *trafficWorkload
				port     int
				want     bool
				why      string
			}{
				{client, web, 8080, true, "allowed peer to the named port"},
				{client, web, 9090, false, "allowed peer, another port"},
				{other, web, 8080, false, "a peer the policy does not name"},
				{stranger, web, 8080, false, "app=client of another namespace"},
				{client, web, 7000, false, "the policy allows it, the profile denies it"},
				{web, other, 9090, true, "web is not isolated for egress"},
				{other, client, 9090, true, "client is not isolated for ingress"},
				{client, other, 9090, false, "client's egress: the CIDR's exception"},
				{client, stranger, 9090, true, "client's egress: in the CIDR"},
				{stranger, other, 9090, true, "no policy selects either"},
			} {
				if got := c.from.connects(t, c.to, c.port, v6); got != c.want {
					t.Errorf("IPv6 %v: %s -> %s:%d connects %v, want %v (%s)", v6, c.from.ep.ContainerID, c.to.ep.ContainerID, c.port, got, c.want, c.why)
				}
			}
		}
	})
}
