package iptables

import (
	"fmt"
	"os"
	"sort"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tabby-net/tabby/node/internal/nstest"
)

// A member gained or lost by an existing set goes over netlink: it works
// with no ipset binary to run, and the kernel then holds exactly the
// wanted members.
func TestSetDeltasOverNetlink(t *testing.T) {
	nstest.Run(t, func() {
		var k Sets
		s := Set{Name: "tabby-w4-test", Type: "hash:net,iface", Family: V4, Members: []string{"10.0.0.1/32,tby00000000001", "10.0.0.2/32,tby00000000002"}}
		if _, err := k.Sync(s); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", t.TempDir())
		s.Members = []string{"10.0.0.2/32,tby00000000002", "10.0.0.3/32,tby00000000003"}
		if n, err := k.SyncKnown(s); err != nil || n != 1 {
			t.Fatalf("delta without the ipset binary: %d %v", n, err)
		}
		res, err := netlink.IpsetList(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range res.Entries {
			got = append(got, e.IP.String()+","+e.IFace)
		}
		sort.Strings(got)
		if len(got) != 2 || got[0] != "10.0.0.2,tby00000000002" || got[1] != "10.0.0.3,tby00000000003" {
			t.Fatalf("kernel holds %v", got)
		}
	})
}

// go test -bench SyncKnown ./node/iptables: an event-path sync of a set of
// 1,000 members that gained one.
func BenchmarkSyncKnown1000(b *testing.B) {
	nstest.Run(b, func() {
		var k Sets
		s := Set{Name: "tabby-w4-bench", Type: "hash:net,iface", Family: V4}
		for i := range 1000 {
			s.Members = append(s.Members, fmt.Sprintf("10.1.%d.%d/32,tby%011x", i/250, i%250, i))
		}
		if _, err := k.Sync(s); err != nil {
			b.Fatal(err)
		}
		for i := 0; b.Loop(); i++ {
			s.Members[0] = fmt.Sprintf("10.2.%d.%d/32,tby%011x", (i/250)%250, i%250, i)
			if _, err := k.SyncKnown(s); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Patch changes only the named members, in the kernel and in what the next
// SyncKnown compares against.
func TestSetPatch(t *testing.T) {
	nstest.Run(t, func() {
		var k Sets
		s := Set{Name: "tabby-w4-patch", Type: "hash:net,iface", Family: V4, Members: []string{"10.0.0.1/32,tby00000000001", "10.0.0.2/32,tby00000000002"}}
		if err := k.Patch(s.Name, []string{"10.0.0.9/32,tby9"}, nil); err == nil {
			t.Fatal("patched a set no sync has made")
		}
		if _, err := k.Sync(s); err != nil {
			t.Fatal(err)
		}
		if err := k.Patch(s.Name, []string{"10.0.0.3/32,tby00000000003", "10.0.0.2/32,tby00000000002"}, []string{"10.0.0.1/32,tby00000000001"}); err != nil {
			t.Fatal(err)
		}
		s.Members = []string{"10.0.0.2/32,tby00000000002", "10.0.0.3/32,tby00000000003"}
		if n, err := k.SyncKnown(s); err != nil || n != 0 {
			t.Fatalf("after the patch, a sync to the same members changed %d sets (%v)", n, err)
		}
		if n, err := k.Sync(s); err != nil || n != 0 {
			t.Fatalf("the kernel differs from the patched members: %d sets rewritten (%v)", n, err)
		}
	})
}

// hash:ip,port members (a named port's set) go over netlink too, with the
// protocol and port, and read back as ipset prints them: an unchanged set
// is not rewritten.
func TestIPPortSetOverNetlink(t *testing.T) {
	nstest.Run(t, func() {
		var k Sets
		s4 := Set{Name: "tabby-n4-test", Type: "hash:ip,port", Family: V4, Members: []string{"10.0.0.1,tcp:80", "10.0.0.2,sctp:9000"}}
		s6 := Set{Name: "tabby-n6-test", Type: "hash:ip,port", Family: V6, Members: []string{"fd00::1,udp:53"}}
		if _, err := k.Sync(s4, s6); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", t.TempDir()) // no ipset binary: netlink or fail
		s4.Members = []string{"10.0.0.2,sctp:9000", "10.0.0.3,udp:8080"}
		s6.Members = []string{"fd00::1,udp:53", "fd00::2,tcp:443"}
		if n, err := k.SyncKnown(s4, s6); err != nil || n != 2 {
			t.Fatalf("delta without the ipset binary: %d %v", n, err)
		}
		t.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
		cur, err := currentSets()
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(cur[s4.Name]) != "[10.0.0.2,sctp:9000 10.0.0.3,udp:8080]" || fmt.Sprint(cur[s6.Name]) != "[fd00::1,udp:53 fd00::2,tcp:443]" {
			t.Fatalf("kernel holds %v and %v", cur[s4.Name], cur[s6.Name])
		}
		if n, err := k.Sync(s4, s6); err != nil || n != 0 {
			t.Fatalf("re-sync of unchanged sets changed %d (%v)", n, err)
		}
	})
}

// A delta larger than netlinkMax (a daemon restarted on a host whose
// endpoints changed by thousands) goes to one `ipset restore`: with no
// ipset binary it fails instead of taking one netlink request per member,
// and with it the kernel holds every wanted member.
func TestSetLargeDeltaByRestore(t *testing.T) {
	nstest.Run(t, func() {
		var k Sets
		s := Set{Name: "tabby-w4-big", Type: "hash:net,iface", Family: V4, Members: []string{"10.0.0.1/32,tby00000000001"}}
		if _, err := k.Sync(s); err != nil {
			t.Fatal(err)
		}
		for i := 2; i <= netlinkMax+2; i++ {
			s.Members = append(s.Members, fmt.Sprintf("10.0.%d.%d/32,tby%011x", i>>8, i&255, i))
		}
		path := os.Getenv("PATH")
		t.Setenv("PATH", t.TempDir())
		if _, err := k.SyncKnown(s); err == nil {
			t.Fatalf("a delta of %d members went over netlink", netlinkMax+1)
		}
		t.Setenv("PATH", path)
		if _, err := k.Sync(s); err != nil {
			t.Fatal(err)
		}
		res, err := netlink.IpsetList(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Entries) != len(s.Members) {
			t.Fatalf("kernel holds %d of %d members", len(res.Entries), len(s.Members))
		}
	})
}
