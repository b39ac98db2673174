package bgp

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// rrPeer is remote as local's peer in a reflector design: kind and the
// reflector's client settings as the node daemon sets them, the passive
// side chosen as in the mesh (all three are tabby speakers).
func rrPeer(local, remote node, kind string, client bool, clusterID string) Peer {
	p := remote.peer(kind)
	p.Passive = MeshPassive(local.addr, remote.addr)
	p.ReflectorClient, p.ClusterID = client, clusterID
	return p
}

// reflectedAttrs returns, for prefix in n's Adj-RIB-In from peer, the
// ORIGINATOR_ID and CLUSTER_LIST the route arrived with.
func reflectedAttrs(n node, peer, prefix string) (originator string, clusters []string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	found := false
	err = n.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_ADJ_IN, Name: peer, Family: familyV4,
		Prefixes: []*api.TableLookupPrefix{{Prefix: prefix}}}, func(d *api.Destination) {
		for _, p := range d.GetPaths() {
			found = true
			for _, a := range p.GetPattrs() {
				var o api.OriginatorIdAttribute
				var c api.ClusterListAttribute
				switch {
				case a.MessageIs(&o) && a.UnmarshalTo(&o) == nil:
					originator = o.Id
				case a.MessageIs(&c) && a.UnmarshalTo(&c) == nil:
					clusters = c.Ids
				}
			}
		}
	})
	if err == nil && !found {
		err = fmt.Errorf("%s has no path for %s from %s", n.addr, prefix, peer)
	}
	return originator, clusters, err
}

// TestGoBGPReflector: tabby speakers only. R reflects (cluster ID
// 244.0.0.9) for clients A and B, which peer with R alone. B learns A's
// block with A's next hop, not R's, carrying ORIGINATOR_ID A and
// CLUSTER_LIST [244.0.0.9]; R, an ordinary host too, learns both clients'
// blocks and its own reaches both; a withdrawal is reflected as well.
func TestGoBGPReflector(t *testing.T) {
	parallel(t)
	a, b, r := newNode(t, "127.0.0.21"), newNode(t, "127.0.0.22"), newNode(t, "127.0.0.23")
	const cluster = "244.0.0.9"
	mustAdvertise(t, a, "10.21.0.0/26", "10.21.0.64/26")
	mustAdvertise(t, b, "10.22.0.0/26")
	mustAdvertise(t, r, "10.23.0.0/26")
	mustSetPeers(t, a, rrPeer(a, r, "reflector", false, ""))
	mustSetPeers(t, b, rrPeer(b, r, "reflector", false, ""))
	mustSetPeers(t, r, rrPeer(r, a, "rr-client", true, cluster), rrPeer(r, b, "rr-client", true, cluster))

	waitRoutes(t, b, 15*time.Second, want(
		"10.21.0.0/26 via 127.0.0.21 from 127.0.0.23",
		"10.21.0.64/26 via 127.0.0.21 from 127.0.0.23",
		"10.23.0.0/26 via 127.0.0.23 from 127.0.0.23"))
	waitRoutes(t, a, 15*time.Second, want(
		"10.22.0.0/26 via 127.0.0.22 from 127.0.0.23",
		"10.23.0.0/26 via 127.0.0.23 from 127.0.0.23"))
	waitRoutes(t, r, 15*time.Second, want(
		"10.21.0.0/26 via 127.0.0.21 from 127.0.0.21",
		"10.21.0.64/26 via 127.0.0.21 from 127.0.0.21",
		"10.22.0.0/26 via 127.0.0.22 from 127.0.0.22"))

	orig, clusters, err := reflectedAttrs(b, r.addr, "10.21.0.0/26")
	if err != nil {
		t.Fatal(err)
	}
	if orig != a.addr || len(clusters) != 1 || clusters[0] != cluster {
		t.Errorf("reflected route at B: ORIGINATOR_ID %q CLUSTER_LIST %v, want %s [%s]", orig, clusters, a.addr, cluster)
	}
	// GoBGP also stamps R's own block with ORIGINATOR_ID R towards its
	// clients; harmless, and it names the true origin.
	if orig, _, err := reflectedAttrs(b, r.addr, "10.23.0.0/26"); err != nil || orig != r.addr {
		t.Errorf("R's own block at B: ORIGINATOR_ID %q (%v), want %s", orig, err, r.addr)
	}
	for _, p := range r.Peers() {
		if p.Kind != "rr-client" || !p.Established() {
			t.Errorf("R's peer %+v: want an Established rr-client", p)
		}
	}

	mustAdvertise(t, a, "10.21.0.64/26")
	waitRoutes(t, b, 5*time.Second, want(
		"10.21.0.64/26 via 127.0.0.21 from 127.0.0.23",
		"10.23.0.0/26 via 127.0.0.23 from 127.0.0.23"))
}

// TestSetPeersRejectsBadClusterID: a cluster ID is an IPv4 address and
// only means something on a reflector's client session.
func TestSetPeersRejectsBadClusterID(t *testing.T) {
	parallel(t)
	n := newNode(t, "127.0.0.24")
	for _, p := range []Peer{
		{Address: "127.0.0.25", ReflectorClient: true, ClusterID: "cluster-1"},
		{Address: "127.0.0.25", ReflectorClient: true, ClusterID: "::1"},
		{Address: "127.0.0.25", ClusterID: "244.0.0.1"},
	} {
		if err := n.SetPeers([]Peer{p}); err == nil {
			t.Errorf("SetPeers(%+v) accepted", p)
		}
	}
	if err := n.SetPeers([]Peer{{Address: "127.0.0.25", ReflectorClient: true, ClusterID: "244.0.0.1"}}); err != nil {
		t.Errorf("a valid client: %v", err)
	}
}

// TestGoBGPReflectorsWithdraw: two (and three) reflectors sharing a
// cluster ID, each client peering with all of them, the reflectors with
// each other as the node daemon peers them. A withdrawn block must leave
// every RIB. With the reflectors as plain non-client peers of each other,
// GoBGP v3.37.0 keeps it forever: it strips ORIGINATOR_ID and CLUSTER_LIST
// towards non-clients, so each reflector's best path becomes the other's
// copy (lower router ID), and it sends no withdrawal for an iBGP path it
// may not send on. Reflectors that send each other only their own routes
// (every client gives each reflector its routes directly) have no such
// copies.
func TestGoBGPReflectorsWithdraw(t *testing.T) {
	for _, nr := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d reflectors", nr), func(t *testing.T) {
			const cluster = "244.0.0.9"
			var rs []node
			for i := range nr {
				rs = append(rs, newNode(t, fmt.Sprintf("127.0.0.%d", 31+i)))
			}
			a, b := newNode(t, "127.0.0.41"), newNode(t, "127.0.0.42")
			for _, c := range []node{a, b} {
				var ps []Peer
				for _, r := range rs {
					ps = append(ps, rrPeer(c, r, "reflector", false, ""))
				}
				mustSetPeers(t, c, ps...)
			}
			for _, r := range rs {
				ps := []Peer{rrPeer(r, a, "rr-client", true, cluster), rrPeer(r, b, "rr-client", true, cluster)}
				for _, o := range rs {
					if o.addr != r.addr {
						ps = append(ps, interReflector(r, o))
					}
				}
				mustSetPeers(t, r, ps...)
			}
			r1 := rs[0]
			mustAdvertise(t, a, "10.41.0.0/26", "10.41.0.64/26")
			mustAdvertise(t, r1, "10.31.0.0/26")
			all := "10.31.0.0/26 via 127.0.0.31; 10.41.0.0/26 via 127.0.0.41; 10.41.0.64/26 via 127.0.0.41; "
			for _, n := range append(rs[1:], b) {
				waitNextHops(t, n, 15*time.Second, all)
			}
			mustAdvertise(t, a, "10.41.0.64/26")
			mustAdvertise(t, r1)
			for _, n := range append(rs, b) {
				waitNextHops(t, n, 10*time.Second, "10.41.0.64/26 via 127.0.0.41; ")
			}
		})
	}
}

// waitNextHops waits until n's latest set is exp as "prefix via nexthop; "
// (whichever peer it came from).
func waitNextHops(t *testing.T, n node, within time.Duration, exp string) {
	t.Helper()
	eventually(t, within, n.addr+" routes", func() (bool, string) {
		set, _ := n.rec.latest()
		var b strings.Builder
		for _, r := range set {
			fmt.Fprintf(&b, "%s via %s; ", r.Prefix, r.NextHop)
		}
		return b.String() == exp, describe(set)
	})
}

// interReflector is local's peer remote, both reflectors, as the node
// daemon sets it: a non-client that gets only local's own routes.
func interReflector(local, remote node) Peer {
	p := rrPeer(local, remote, "reflector", false, "")
	p.OwnRoutesOnly = true
	return p
}
