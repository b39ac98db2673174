package routes

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
)

func vxlanOptions(t *testing.T, n string, vtep string) Options {
	return Options{
		NodeIP:           net.ParseIP("198.19.0." + n),
		VXLANMAC:         mac(t, vtep),
		VXLANTunnelAddr:  net.ParseIP("10.0." + n + ".0"),
		VXLANTunnelAddr6: net.ParseIP("fd00:" + n + "::"),
	}
}

// vxlanRemotes: the other host's blocks through VXLAN.
func vxlanRemotes(t *testing.T, n, vtep string) []Remote {
	return []Remote{
		{Prefix: cidr(t, "10.0."+n+".0/26"), Gateway: net.ParseIP("198.19.0." + n), Encap: VXLAN,
			TunnelAddr: net.ParseIP("10.0." + n + ".0"), VTEPMAC: mac(t, vtep)},
		{Prefix: cidr(t, "fd00:"+n+"::/122"), Gateway: net.ParseIP("198.19.0." + n), Encap: VXLAN,
			TunnelAddr: net.ParseIP("fd00:" + n + "::"), VTEPMAC: mac(t, vtep)},
	}
}

// TestVXLAN: both hosts reach each other's workloads through vxlan.tabby
// (IPv4 and IPv6 inner, IPv4 outer); the device, neighbour and FDB entries
// are as designed; a second Sync changes nothing; removing the remotes
// removes their routes and entries but keeps the device.
func TestVXLAN(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	mA := newManager(t, p.a, vxlanOptions(t, "1", macA))
	mB := newManager(t, p.b, vxlanOptions(t, "2", macB))
	syncOK(t, mA, localBlocks(t, "1"), vxlanRemotes(t, "2", macB))
	syncOK(t, mB, localBlocks(t, "2"), vxlanRemotes(t, "1", macA))
	ping(t, p.a, "10.0.1.5", "10.0.2.5")
	ping(t, p.a, "fd00:1::5", "fd00:2::5")

	nh := p.a.handle(t)
	l, err := nh.LinkByName("vxlan.tabby")
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := l.(*netlink.Vxlan)
	under, _ := nh.LinkByName("va")
	if !ok || vx.VxlanId != 4096 || vx.Port != 4789 || vx.Learning || !vx.SrcAddr.Equal(net.ParseIP("198.19.0.1")) ||
		vx.VtepDevIndex != under.Attrs().Index || vx.MTU != 1450 || vx.HardwareAddr.String() != macA ||
		vx.Flags&net.FlagUp == 0 {
		t.Errorf("vxlan.tabby: %+v", l)
	}
	if vx.Statistics == nil || vx.Statistics.TxPackets == 0 {
		t.Errorf("no packets went out of vxlan.tabby: %+v", vx.Statistics)
	}
	addrs, _ := nh.AddrList(l, netlink.FAMILY_ALL)
	got := map[string]bool{}
	for _, a := range addrs {
		got[a.IPNet.String()] = true
	}
	if !got["10.0.1.0/32"] || !got["fd00:1::/128"] {
		t.Errorf("vxlan.tabby addresses: %v", addrs)
	}

	rs := routeTo(t, nh, "10.0.2.0/26")
	if len(rs) != 1 || !rs[0].Gw.Equal(net.ParseIP("10.0.2.0")) || rs[0].LinkIndex != vx.Index ||
		rs[0].Flags&int(netlink.FLAG_ONLINK) == 0 || rs[0].Protocol != Protocol {
		t.Errorf("route to 10.0.2.0/26: %+v", rs)
	}
	neighs, fdbs, err := mA.listVXLANEntries(vx.Index)
	if err != nil {
		t.Fatal(err)
	}
	if n := neighs["10.0.2.0"]; n.HardwareAddr.String() != macB || len(neighs) != 2 {
		t.Errorf("neighbours: %+v", neighs)
	}
	if f := fdbs[macB]; !f.IP.Equal(net.ParseIP("198.19.0.2")) || f.Flags&netlink.NTF_SELF == 0 || len(fdbs) != 1 {
		t.Errorf("fdb: %+v", fdbs)
	}

	if n := syncOK(t, mA, localBlocks(t, "1"), vxlanRemotes(t, "2", macB)); n != 0 {
		t.Errorf("second Sync made %d changes, want 0", n)
	}

	syncOK(t, mA, localBlocks(t, "1"), nil)
	if rs := routeTo(t, nh, "10.0.2.0/26"); len(rs) != 0 {
		t.Errorf("route stayed: %+v", rs)
	}
	neighs, fdbs, _ = mA.listVXLANEntries(vx.Index)
	if len(neighs)+len(fdbs) != 0 {
		t.Errorf("entries stayed: %+v %+v", neighs, fdbs)
	}
	if _, err := nh.LinkByName("vxlan.tabby"); err != nil {
		t.Errorf("device went away although VXLAN is on: %v", err)
	}
	noPing(t, p.a, "10.0.1.5", "10.0.2.5")
}

// TestAdoptOnRestart: a new Manager (daemon restart) finds the routes and
// entries of the old one and its first Sync changes nothing; a Manager
// with a different VNI re-creates the device and still ends up working.
func TestAdoptOnRestart(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	mA := newManager(t, p.a, vxlanOptions(t, "1", macA))
	mB := newManager(t, p.b, vxlanOptions(t, "2", macB))
	remotesA := append(vxlanRemotes(t, "2", macB)[:1],
		Remote{Prefix: cidr(t, "10.0.12.0/26"), Gateway: net.ParseIP("198.19.0.2")})
	syncOK(t, mA, localBlocks(t, "1"), remotesA)
	syncOK(t, mB, localBlocks(t, "2"), vxlanRemotes(t, "1", macA)[:1])
	ping(t, p.a, "10.0.1.5", "10.0.2.5")
	mA.Close()

	m2 := newManager(t, p.a, vxlanOptions(t, "1", macA))
	inst, err := m2.Installed()
	if err != nil || len(inst) != 4 { // 2 blackholes, 2 remotes
		t.Errorf("Installed after restart: %d routes, %v", len(inst), err)
	}
	if n := syncOK(t, m2, localBlocks(t, "1"), remotesA); n != 0 {
		t.Errorf("first Sync after restart made %d changes, want 0", n)
	}

	// VNI 4097 on both ends: the devices are re-created, and the routes
	// through them (gone with the old device) put back.
	optsA, optsB := vxlanOptions(t, "1", macA), vxlanOptions(t, "2", macB)
	optsA.VNI, optsB.VNI = 4097, 4097
	m3 := newManager(t, p.a, optsA)
	syncOK(t, m3, localBlocks(t, "1"), remotesA)
	syncOK(t, newManager(t, p.b, optsB), localBlocks(t, "2"), vxlanRemotes(t, "1", macA)[:1])
	l, _ := p.a.handle(t).LinkByName("vxlan.tabby")
	if vx, ok := l.(*netlink.Vxlan); !ok || vx.VxlanId != 4097 {
		t.Errorf("device not re-created with VNI 4097: %+v", l)
	}
	ping(t, p.a, "10.0.1.5", "10.0.2.5")
	if n := syncOK(t, m3, localBlocks(t, "1"), remotesA); n != 0 {
		t.Errorf("Sync after re-creation made %d changes, want 0", n)
	}
}
