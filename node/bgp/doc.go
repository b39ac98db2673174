// Package bgp is tabby-node's BGP speaker: an embedded GoBGP v3 server
// (a library in the daemon's process, not gobgpd) that advertises this
// host's blocks and learns the other hosts' from a full iBGP mesh, route
// reflectors or other configured peers.
//
// # API
//
//	New(Config) (*Speaker, error)          start GoBGP and its listener
//	(*Speaker).SetPeers([]Peer) error       desired neighbour set
//	(*Speaker).Advertise([]*net.IPNet) error desired originated prefixes
//	(*Speaker).Routes() <-chan []Route      full best-route snapshots
//	(*Speaker).Peers() []PeerStatus         session states for status
//	(*Speaker).Stop()                       hard stop: peers drop our routes
//	(*Speaker).StopForRestart()             peers keep our routes (stale)
//	MeshPassive(local, remote string) bool  which mesh side only listens
//
// # Routes and next hops
//
// All tabby hosts share one AS (64512 by default), so sessions are iBGP
// and a route keeps the originator's next hop, through reflectors too:
// Route.NextHop is the remote host's underlay address, exactly what the
// kernel route (or VXLAN FDB entry) needs. IPv4 prefixes carry
// Config.NextHop; IPv6 prefixes Config.NextHop6 in MP_REACH_NLRI, by
// default the IPv4-mapped IPv4 next hop (reported to receivers as the IPv4
// address, usable only through VXLAN since Linux cannot route IPv6 via an
// IPv4 gateway). Our own prefixes, routes whose next hop is one of our
// addresses, and withdrawn paths never appear in Routes.
//
// Routes delivers complete snapshots, the first change at once and bursts
// coalesced, newest wins; the first one waits for the initial sync (every
// peer's End-of-RIB, bounded by Config.InitialSyncTimeout) so that a
// restarting daemon does not reconcile the kernel against a half-learned
// table.
//
// # Route reflectors
//
// Peer.ReflectorClient makes this speaker a route reflector for that peer
// (RFC 4456, with Peer.ClusterID); next hops stay the originator's.
// Peer.OwnRoutesOnly sends a peer only our own prefixes: reflectors use it
// between each other, since GoBGP's reflection between reflectors keeps
// withdrawn routes alive (see ownonly.go).
//
// # Graceful restart
//
// Every peer gets graceful restart (RFC 4724) for IPv4 and IPv6 unicast
// with Config.GracefulRestartTime, plus RFC 8538 (the N bit), so that a
// Cease other than Hard Reset still counts as a restart. While a peer
// restarts its routes stay in Routes with Stale set. A restarting daemon
// should: adopt its kernel routes, set Config.Restarting when it found
// some, call Advertise before SetPeers, and Sync the kernel only from
// Routes. Stopping for a restart is StopForRestart (N-bit peers) or simply
// exiting without Stop (any peer; the kernel closes the TCP sessions
// without a NOTIFICATION). Measured here: routes stale then fresh again
// 6–10 s after a restart, most of it GoBGP's fixed 5 s idle hold after a
// session drop; see MeshPassive for why mesh sessions should have one
// passive side.
//
// # Concurrency
//
// One goroutine owns the Speaker's state; every method is a request to it
// and may be called from any goroutine. GoBGP v3.37.0 has known internal
// data races in graceful restart (osrg/gobgp#2705), so the restart tests
// are skipped under -race; and its StartBgp writes package globals, so
// several Speakers in one process (tests only) must not start at once:
// the tests run serially under -race.
package bgp
