// Package routes programs tabby-node's kernel routes to other hosts'
// blocks, the blackholes of its own blocks, and the tunnel devices they
// use, in one network namespace, by reconciliation: list, diff, apply the
// difference. It never flushes and never touches what is not its own.
//
// # API (Linux only)
//
//	New(Options) (*Manager, error)            netlink socket in a netns; changes nothing
//	(*Manager).Sync(Local, []Remote) error     reconcile; all errors joined
//	(*Manager).SyncKnown(Local, []Remote) error  only the difference from the last Sync
//	(*Manager).Installed() ([]netlink.Route, error)  routes it owns now
//	(*Manager).Changes() uint64                mutating netlink requests so far
//	(*Manager).Close()
//	IPIPSupported() bool                       probe in a throwaway netns
//	Build{Blackhole,Direct,IPIP,VXLAN}Route, BuildIPIPLink, BuildVXLANLink,
//	BuildVXLANNeigh, BuildVXLANFDB, BuildTunnelAddr, DeriveVTEPMAC
//
// # What it owns
//
// Main-table routes with protocol 80 (Protocol) that are blackholes, have
// a gateway, or go through vxlan.tabby or tunl0; the permanent neighbour
// and FDB entries on vxlan.tabby; the addresses, MTU and up state of
// vxlan.tabby and tunl0. The CNI plugin's per-workload routes also use
// protocol 80 but are "dev tbyXXX scope link" with no gateway, so they are
// not owned and survive every Sync. A prefix some other route already has
// (a workload /32, an admin's static route) is reported, not replaced.
//
// # Per remote
//
//	None:  Prefix via Gateway (the kernel picks the device)
//	IPIP:  Prefix via Gateway dev tunl0 onlink             (IPv4 only)
//	VXLAN: Prefix via TunnelAddr dev vxlan.tabby onlink,
//	       neigh TunnelAddr lladdr VTEPMAC nud permanent,
//	       fdb VTEPMAC dst Gateway self permanent           (outer IPv4)
//
// Local blocks get "blackhole Block proto 80". Sync creates vxlan.tabby
// (VNI 4096, port 4789, learning off, local NodeIP, dev underlay, MTU
// underlay-50) and tunl0 (MTU underlay-20) when a remote needs them or the
// host has a tunnel address for them, and never deletes them. A device
// with the wrong VNI, port, local address or underlay is re-created. Order
// within a Sync: devices, VXLAN entries, routes, stale VXLAN entries.
//
// Restart: a new Manager adopts what the old one left; the first Sync with
// the same input makes no change (Changes is the proof in the tests).
//
// # IPIP
//
// tunl0 is the ipip module's fallback device: no local or remote, it
// sends to any onlink gateway and accepts IPIP from any host. This test
// machine's kernel has no ipip; IPIPSupported reports that truthfully by
// trying to create an ipip device in a fresh unnamed namespace (which also
// loads the module where it exists), and Sync reports the missing tunl0
// while still installing every route that does not need it.
package routes
