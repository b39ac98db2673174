package ifaddr

import (
	"net"
	"testing"
)

func TestHost(t *testing.T) {
	for in, want := range map[string]string{"10.0.0.1": "10.0.0.1/32", "::ffff:10.0.0.2": "10.0.0.2/32", "fd00::5": "fd00::5/128"} {
		n := Host(net.ParseIP(in))
		if n.String() != want {
			t.Errorf("Host(%s) = %s, want %s", in, n.String(), want)
		}
	}
	v4, v6 := Split(Hosts([]net.IP{net.ParseIP("10.0.0.1"), net.ParseIP("fd00::1")}))
	if len(v4) != 1 || v4[0] != "10.0.0.1/32" || len(v6) != 1 || v6[0] != "fd00::1/128" {
		t.Errorf("Split: %v %v", v4, v6)
	}
	if !Gateway(net.ParseIP("10.0.0.1")).Equal(GatewayIPv4) || !Gateway(net.ParseIP("fd00::1")).Equal(GatewayIPv6) {
		t.Error("Gateway picks the wrong family")
	}
}

func TestDeriveMAC(t *testing.T) {
	a, b := DeriveMAC("tabby-vtep:node-1"), DeriveMAC("tabby-vtep:node-1")
	if a.String() != b.String() {
		t.Fatalf("not stable: %s %s", a, b)
	}
	if a[0]&0x02 == 0 || a[0]&0x01 != 0 {
		t.Errorf("%s is not locally administered unicast", a)
	}
	if DeriveMAC("tabby-vtep:node-2").String() == a.String() {
		t.Error("different seeds gave the same MAC")
	}
	// The VTEP MAC is part of what other hosts hold in their neighbour and
	// FDB entries: the derivation must not change between versions.
	if got := a.String(); got != "52:c8:a1:20:40:f6" {
		t.Errorf("derivation changed: %s", got)
	}
}
