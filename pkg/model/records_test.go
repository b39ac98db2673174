package model

import (
	"encoding/json"
	"net"
	"testing"
)

// Pools stored before the encapsulation mode was always written (empty or
// missing) read as never; what is written keeps the same JSON.
func TestPoolEncapModeOnDisk(t *testing.T) {
	for _, rec := range []string{
		`{"cidr":"10.0.0.0/16","blockSize":26,"ipipMode":"","vxlanMode":"","natOutgoing":true,"disabled":false}`,
		`{"cidr":"10.0.0.0/16","blockSize":26,"natOutgoing":true}`,
	} {
		var p Pool
		if err := json.Unmarshal([]byte(rec), &p); err != nil {
			t.Fatal(err)
		}
		if p.IPIPMode != EncapNever || p.VXLANMode != EncapNever || p.IPIPMode.On() || !p.NATOutgoing {
			t.Fatalf("%s decoded as %+v", rec, p)
		}
	}
	p := Pool{CIDR: "10.1.0.0/16", BlockSize: 26, IPIPMode: EncapNever, VXLANMode: EncapCrossSubnet}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"cidr":"10.1.0.0/16","blockSize":26,"ipipMode":"never","vxlanMode":"cross-subnet","natOutgoing":false,"disabled":false}`
	if string(b) != want {
		t.Fatalf("encoded %s, want %s", b, want)
	}
	var back Pool
	if err := json.Unmarshal(b, &back); err != nil || back != p {
		t.Fatalf("round trip %+v %v", back, err)
	}
}

func TestPoolValidateEncap(t *testing.T) {
	p := Pool{CIDR: "10.2.0.0/16"}
	if err := p.Validate(); err != nil || p.IPIPMode != EncapNever || p.VXLANMode != EncapNever {
		t.Fatalf("%+v %v", p, err)
	}
	for _, bad := range []Pool{
		{CIDR: "10.3.0.0/16", VXLANMode: "often"},
		{CIDR: "10.3.0.0/16", VXLANMode: "Always"},
		{CIDR: "10.3.0.0/16", VXLANMode: EncapAlways, IPIPMode: EncapCrossSubnet},
		{CIDR: "fd00::/64", IPIPMode: EncapAlways},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

// A pool built in code without modes is not encapsulated either.
func TestEncapOverheadEmptyMode(t *testing.T) {
	ip := net.ParseIP("10.0.0.5")
	pools := []Pool{{CIDR: "10.0.0.0/16"}}
	if n := EncapOverhead(pools, ip); n != 0 {
		t.Fatalf("no mode: %d", n)
	}
	pools[0].IPIPMode = EncapCrossSubnet
	if n := EncapOverhead(pools, ip); n != 20 {
		t.Fatalf("ipip: %d", n)
	}
	if !EncapCrossSubnet.Valid() || EncapMode("").Valid() {
		t.Fatal(`"" is not a mode of its own: Normal makes it never`)
	}
}
