package routes

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestIPIPSupported: the probe agrees with iproute2 in a scratch namespace
// (false on this test machine, whose kernel has no ipip). The reference
// tunnel has a remote: one without would clash with the namespace's tunl0
// (same any/any parameters, EEXIST) wherever ipip exists.
func TestIPIPSupported(t *testing.T) {
	requireRoot(t)
	h := newHost(t, "probe")
	out, err := exec.Command("ip", "-n", h.name, "link", "add", "probe0", "type", "ipip", "remote", "192.0.2.1").CombinedOutput()
	want := err == nil
	got, perr := probeIPIP()
	t.Logf("ip link add type ipip: %v %s; probe: %v (%v)", err, strings.TrimSpace(string(out)), got, perr)
	if got != want {
		t.Errorf("IPIPSupported() = %v, iproute2 says %v", got, want)
	}
	if IPIPSupported() != got {
		t.Error("IPIPSupported and probeIPIP disagree")
	}
}

func TestBuildIPIP(t *testing.T) {
	l := BuildIPIPLink(1480)
	if l.Name != "tunl0" || l.MTU != 1480 || l.Type() != "ipip" || l.Local != nil || l.Remote != nil {
		t.Errorf("BuildIPIPLink: %+v", l)
	}
	r := Remote{Prefix: cidr(t, "10.0.2.0/26"), Gateway: net.ParseIP("198.19.0.2").To4(), Encap: IPIP}
	rt := BuildIPIPRoute(r, 7)
	if rt.Dst.String() != "10.0.2.0/26" || !rt.Gw.Equal(r.Gateway) || rt.LinkIndex != 7 ||
		rt.Flags&int(netlink.FLAG_ONLINK) == 0 || rt.Protocol != 80 || rt.Table != 254 || rt.Type != 0 {
		t.Errorf("BuildIPIPRoute: %+v", rt)
	}
	if err := checkRemote(r); err != nil {
		t.Errorf("checkRemote(IPIP v4): %v", err)
	}
	a := BuildTunnelAddr(net.ParseIP("10.0.1.1"))
	if a.IPNet.String() != "10.0.1.1/32" {
		t.Errorf("BuildTunnelAddr: %v", a)
	}
}

func TestBuildVXLAN(t *testing.T) {
	o, err := Options{NodeIP: net.ParseIP("198.19.0.1"), VXLANMAC: mac(t, macA)}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	l := BuildVXLANLink(o, 3, 1450)
	if l.Name != "vxlan.tabby" || l.VxlanId != 4096 || l.Port != 4789 || l.Learning || l.VtepDevIndex != 3 ||
		!l.SrcAddr.Equal(net.ParseIP("198.19.0.1")) || l.MTU != 1450 || l.HardwareAddr.String() != macA || l.Type() != "vxlan" {
		t.Errorf("BuildVXLANLink: %+v", l)
	}
	r := Remote{Prefix: cidr(t, "fd00:2::/122"), Gateway: net.ParseIP("198.19.0.2"), Encap: VXLAN,
		TunnelAddr: net.ParseIP("fd00:2::"), VTEPMAC: mac(t, macB)}
	if rt := BuildVXLANRoute(r, 9); !rt.Gw.Equal(r.TunnelAddr) || rt.LinkIndex != 9 || rt.Flags&int(netlink.FLAG_ONLINK) == 0 || rt.Family != 10 {
		t.Errorf("BuildVXLANRoute: %+v", rt)
	}
	if n := BuildVXLANNeigh(r, 9); n.State != netlink.NUD_PERMANENT || !n.IP.Equal(r.TunnelAddr) || n.HardwareAddr.String() != macB || n.Family != 10 {
		t.Errorf("BuildVXLANNeigh: %+v", n)
	}
	if f := BuildVXLANFDB(r, 9); f.Family != 7 || f.Flags != netlink.NTF_SELF || !f.IP.Equal(r.Gateway) || f.HardwareAddr.String() != macB {
		t.Errorf("BuildVXLANFDB: %+v", f)
	}
	m1, m2 := DeriveVTEPMAC("node-1"), DeriveVTEPMAC("node-1")
	if m1.String() != m2.String() || m1[0]&0x03 != 0x02 || DeriveVTEPMAC("node-2").String() == m1.String() {
		t.Errorf("DeriveVTEPMAC: %s %s", m1, DeriveVTEPMAC("node-2"))
	}
}

// TestIPIPSync: where the kernel has ipip, workloads reach each other
// through tunl0; where it has not (this machine), Sync reports the missing
// device and still installs the routes that do not need it.
func TestIPIPSync(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	ipipTo := func(n string) Remote {
		return Remote{Prefix: cidr(t, "10.0."+n+".0/26"), Gateway: net.ParseIP("198.19.0." + n), Encap: IPIP}
	}
	direct := Remote{Prefix: cidr(t, "10.0.12.0/26"), Gateway: net.ParseIP("198.19.0.2")}
	mA := newManager(t, p.a, Options{NodeIP: net.ParseIP("198.19.0.1"), IPIPTunnelAddr: net.ParseIP("10.0.1.1")})
	errA := mA.Sync(localBlocks(t, "1"), []Remote{ipipTo("2"), direct})

	if !IPIPSupported() {
		if errA == nil || !strings.Contains(errA.Error(), "tunl0") {
			t.Fatalf("Sync with IPIP on a kernel without ipip: err = %v, want one about tunl0", errA)
		}
		if rs := routeTo(t, p.a.handle(t), "10.0.12.0/26"); len(rs) != 1 {
			t.Errorf("the direct route was not installed: %+v", rs)
		}
		t.Logf("no ipip in this kernel: %v", errA)
		return
	}
	if errA != nil {
		t.Fatal(errA)
	}
	mB := newManager(t, p.b, Options{NodeIP: net.ParseIP("198.19.0.2"), IPIPTunnelAddr: net.ParseIP("10.0.2.1")})
	syncOK(t, mB, localBlocks(t, "2"), []Remote{ipipTo("1")})
	ping(t, p.a, "10.0.1.5", "10.0.2.5")
	if n := syncOK(t, mA, localBlocks(t, "1"), []Remote{ipipTo("2"), direct}); n != 0 {
		t.Errorf("second Sync made %d changes", n)
	}
	l, err := p.a.handle(t).LinkByName("tunl0")
	if err != nil || l.Attrs().MTU != 1480 {
		t.Errorf("tunl0: %+v %v", l, err)
	}
}
