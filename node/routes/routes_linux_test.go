package routes

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	macA = "02:74:62:00:00:0a"
	macB = "02:74:62:00:00:0b"
)

// directRemotes are B's blocks as seen from A (and the reverse), no encap.
func directRemotes(t *testing.T, toB bool) []Remote {
	if toB {
		return []Remote{
			{Prefix: cidr(t, "10.0.2.0/26"), Gateway: net.ParseIP("198.19.0.2")},
			{Prefix: cidr(t, "fd00:2::/122"), Gateway: net.ParseIP("fd19::2")},
		}
	}
	return []Remote{
		{Prefix: cidr(t, "10.0.1.0/26"), Gateway: net.ParseIP("198.19.0.1")},
		{Prefix: cidr(t, "fd00:1::/122"), Gateway: net.ParseIP("fd19::1")},
	}
}

func localBlocks(t *testing.T, n string) Local {
	return Local{Blocks: []*net.IPNet{cidr(t, "10.0."+n+".0/26"), cidr(t, "fd00:"+n+"::/122")}}
}

// TestDirect: plain routes via the peer's underlay address, both families,
// blackholes for local blocks, and an idempotent second Sync.
func TestDirect(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	mA := newManager(t, p.a, Options{NodeIP: net.ParseIP("198.19.0.1")})
	mB := newManager(t, p.b, Options{NodeIP: net.ParseIP("198.19.0.2")})

	noPing(t, p.a, "10.0.1.5", "10.0.2.5")
	syncOK(t, mA, localBlocks(t, "1"), directRemotes(t, true))
	syncOK(t, mB, localBlocks(t, "2"), directRemotes(t, false))
	ping(t, p.a, "10.0.1.5", "10.0.2.5")
	ping(t, p.a, "fd00:1::5", "fd00:2::5")

	nh := p.a.handle(t)
	rs := routeTo(t, nh, "10.0.2.0/26")
	if len(rs) != 1 || rs[0].Protocol != Protocol || !rs[0].Gw.Equal(net.ParseIP("198.19.0.2")) {
		t.Errorf("route to 10.0.2.0/26: %+v", rs)
	}
	for _, b := range []string{"10.0.1.0/26", "fd00:1::/122"} {
		rs := routeTo(t, nh, b)
		if len(rs) != 1 || rs[0].Type != unix.RTN_BLACKHOLE || rs[0].Protocol != Protocol {
			t.Errorf("blackhole %s: %+v", b, rs)
		}
	}
	// The blackhole drops traffic to unused addresses of the local block.
	if out, err := exec.Command("ip", "netns", "exec", p.a.name, "ping", "-c1", "-W1", "10.0.1.9").CombinedOutput(); err == nil {
		t.Errorf("ping to an unused local-block address answered: %s", out)
	}

	if n := syncOK(t, mA, localBlocks(t, "1"), directRemotes(t, true)); n != 0 {
		t.Errorf("second Sync made %d changes, want 0", n)
	}
}

// TestStaleAndForeign: Sync deletes its own stale routes, replaces a
// changed one in place, and leaves alone foreign routes, the CNI plugin's
// proto-80 workload routes, and a foreign route for a prefix it wants.
func TestStaleAndForeign(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	a := p.a
	// A CNI workload route: same protocol 80, scope link, on a tby veth.
	a.ip(t, "link", "add", "tby0123456789a", "type", "veth", "peer", "name", "wl0")
	a.ip(t, "link", "set", "tby0123456789a", "up")
	a.ip(t, "route", "add", "10.0.1.7/32", "dev", "tby0123456789a", "proto", "80", "scope", "link")
	a.ip(t, "route", "add", "10.9.0.0/24", "via", "198.19.0.2", "proto", "static")
	a.ip(t, "route", "add", "10.0.3.0/26", "via", "198.19.0.2", "proto", "static")
	m := newManager(t, a, Options{NodeIP: net.ParseIP("198.19.0.1")})

	r2 := Remote{Prefix: cidr(t, "10.0.2.0/26"), Gateway: net.ParseIP("198.19.0.2")}
	r3 := Remote{Prefix: cidr(t, "10.0.3.0/26"), Gateway: net.ParseIP("198.19.0.2")}
	r4 := Remote{Prefix: cidr(t, "10.0.4.0/26"), Gateway: net.ParseIP("198.19.0.2")}
	err := m.Sync(Local{}, []Remote{r2, r3, r4})
	if err == nil || !strings.Contains(err.Error(), "10.0.3.0/26") {
		t.Fatalf("Sync with a prefix routed by someone else: err = %v, want one naming 10.0.3.0/26", err)
	}
	nh := a.handle(t)
	for _, d := range []string{"10.0.2.0/26", "10.0.4.0/26"} {
		if rs := routeTo(t, nh, d); len(rs) != 1 || rs[0].Protocol != Protocol {
			t.Errorf("%s: %+v", d, rs)
		}
	}

	// r2 moves to another gateway; r4 goes.
	r2.Gateway = net.ParseIP("198.19.0.3")
	syncOK(t, m, Local{}, []Remote{r2})
	if rs := routeTo(t, nh, "10.0.2.0/26"); len(rs) != 1 || !rs[0].Gw.Equal(r2.Gateway) {
		t.Errorf("10.0.2.0/26 after gateway change: %+v", rs)
	}
	if rs := routeTo(t, nh, "10.0.4.0/26"); len(rs) != 0 {
		t.Errorf("stale 10.0.4.0/26 still there: %+v", rs)
	}

	syncOK(t, m, Local{}, nil)
	if rs := routeTo(t, nh, "10.0.2.0/26"); len(rs) != 0 {
		t.Errorf("10.0.2.0/26 still there: %+v", rs)
	}
	for d, proto := range map[string]netlink.RouteProtocol{"10.9.0.0/24": unix.RTPROT_STATIC, "10.0.3.0/26": unix.RTPROT_STATIC, "10.0.1.7/32": Protocol} {
		if rs := routeTo(t, nh, d); len(rs) != 1 || rs[0].Protocol != proto {
			t.Errorf("foreign route %s did not survive: %+v", d, rs)
		}
	}
	if inst, err := m.Installed(); err != nil || len(inst) != 0 {
		t.Errorf("Installed after Sync(nil) = %v, %v; want none (the CNI route is not ours)", inst, err)
	}
}

// TestBadRemotes: a remote the kernel cannot route costs only itself.
func TestBadRemotes(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	m := newManager(t, p.a, Options{NodeIP: net.ParseIP("198.19.0.1")})
	good := Remote{Prefix: cidr(t, "10.0.2.0/26"), Gateway: net.ParseIP("198.19.0.2")}
	bad := []Remote{
		{Prefix: cidr(t, "fd00:2::/122"), Gateway: net.ParseIP("198.19.0.2")},                 // v6 via v4
		{Prefix: cidr(t, "10.0.5.0/26"), Gateway: net.ParseIP("198.19.0.5"), Encap: VXLAN},    // no tunnel addr
		{Prefix: cidr(t, "10.0.6.0/26")},                                                      // no gateway
		{Prefix: cidr(t, "10.0.2.0/26"), Gateway: net.ParseIP("198.19.0.9")},                  // duplicate
		{Prefix: cidr(t, "10.0.7.0/26"), Gateway: net.ParseIP("203.0.113.1")},                 // unreachable
		{Prefix: cidr(t, "fd00:8::/122"), Gateway: net.ParseIP("198.19.0.2"), Encap: IPIP},    // IPIP v6
		{Prefix: cidr(t, "10.0.9.0/26"), Gateway: net.ParseIP("198.19.0.2"), Encap: Encap(7)}, // unknown
	}
	err := m.Sync(Local{}, append([]Remote{good}, bad...))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"fd00:2::/122", "10.0.5.0/26", "10.0.6.0/26", "prefix already routed", "10.0.7.0/26", "fd00:8::/122", "10.0.9.0/26"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	if rs := routeTo(t, p.a.handle(t), "10.0.2.0/26"); len(rs) != 1 || !rs[0].Gw.Equal(good.Gateway) {
		t.Errorf("good route: %+v", rs)
	}
}
