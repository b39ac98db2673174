package model

import (
	"encoding/json"
	"testing"
)

// Host records written before route reflectors existed read as ordinary
// hosts, and an ordinary host's record keeps its old JSON (no new key).
func TestHostReflectorOnDisk(t *testing.T) {
	old := `{"name":"a","ipv4":"198.19.0.1/24","ipipSupported":false,"vxlanMAC":"02:00:00:00:00:01"}`
	var h Host
	if err := json.Unmarshal([]byte(old), &h); err != nil {
		t.Fatal(err)
	}
	if h.IsReflector() || h.RouteReflectorClusterID != "" {
		t.Fatalf("old record read as a reflector: %+v", h)
	}
	b, _ := json.Marshal(Host{Name: "a"})
	if string(b) != `{"name":"a","ipipSupported":false}` {
		t.Fatalf("ordinary host encodes as %s", b)
	}
	rr := Host{Name: "rr", RouteReflectorClusterID: "244.0.0.1"}
	b, _ = json.Marshal(rr)
	var back Host
	if err := json.Unmarshal(b, &back); err != nil || back != rr || !back.IsReflector() {
		t.Fatalf("round trip of %s: %+v %v", b, back, err)
	}
}

func TestValidClusterID(t *testing.T) {
	for _, ok := range []string{"244.0.0.1", "1.2.3.4", "0.0.0.1"} {
		if err := ValidClusterID(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "on", "off", "1", "1.2.3", "::1", "::ffff:1.2.3.4", "1.2.3.4/32", "256.0.0.1"} {
		if err := ValidClusterID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
