// Package dataplane does the netlink work of the tabby CNI plugin's ADD, DEL
// and CHECK: the veth pair between a container and its host, the container's
// addresses, routes and gateway neighbour, and the host's per-workload route
// and sysctls. It knows nothing about etcd, IPAM or policy.
//
// # Namespaces
//
// Every function works on the calling thread's network namespace, which must
// be the HOST namespace (the CNI plugin runs there; tests and multi-host
// simulations call from a goroutine locked into their "host" namespace, e.g.
// inside ns.Do). The container side goes through one netlink socket created
// inside the container namespace (netlink.NewHandleAt: two setns calls on the
// locked thread; the socket stays bound to that namespace), so no work runs
// on a thread switched into the container. Only the rare fix-up for a
// container with IPv6 disabled enters it with ns.Do, to write its sysctl.
//
// # API
//
//	HostVethName(identity) string      "tby" + 11 hex chars of sha256(identity)
//	Setup(Config) (*Result, error)     create everything; on error remove what it made
//	Teardown(netnsPath, ifName, hostVeth) error   idempotent
//	Check(Config) error                *CheckError listing every problem found
//	Inspect(netnsPath, ifName, hostVeth) (*Result, []net.IPNet, error)
//	UplinkMTU() (int, error)           MTU of the default-route interface
//
// # What Setup leaves behind
//
// Host namespace:
//   - veth HostVeth, MAC ee:ee:ee:ee:ee:ee, MTU, up. Its peer was created by
//     the same RTM_NEWLINK directly inside the container namespace under
//     its final name IfName: the kernel registers a veth peer in the peer's
//     namespace, so IfName only has to be free there (an "eth0" in the host
//     namespace does not clash), and no create-then-move is needed.
//   - IPv4: net.ipv4.conf.<veth>.proxy_arp=1, .forwarding=1,
//     net.ipv4.neigh.<veth>.proxy_delay=0, net.ipv4.ip_forward=1.
//   - IPv6: net.ipv6.conf.<veth>.accept_ra=0, .forwarding=1, .addr_gen_mode=1
//     (none) plus fe80::ecee:eeff:feee:eeee/64 added with IFA_F_NODAD, so the
//     gateway address is usable at once whatever the host's addr_gen_mode and
//     without waiting for duplicate address detection; net.ipv6.conf.all.forwarding=1.
//   - one route per container address: <addr>/32 (/128) dev HostVeth scope
//     link proto RouteProtocol (DefaultRouteProtocol, 80, unless set).
//
// Container namespace:
//   - IfName up with MTU, the addresses as /32 and /128 (IPv6 with
//     IFA_F_NODAD), lo up.
//   - IPv4: 169.254.1.1 dev IfName scope link; default via 169.254.1.1; a
//     PERMANENT neighbour 169.254.1.1 -> ee:ee:ee:ee:ee:ee, so the container
//     never ARPs for its gateway and does not depend on the host answering
//     proxy ARP (which needs a host route to 169.254.1.1).
//   - IPv6: default via fe80::ecee:eeff:feee:eeee dev IfName and a PERMANENT
//     neighbour for it.
//
// The per-family host sysctls are written only for the families the
// container has addresses in. Global forwarding switches are read first and
// written only when off.
//
// # Errors and rollback
//
// A failed Setup deletes the veth it created, which removes both ends, the
// addresses, and the host routes with it, so nothing is left behind. If a
// veth named HostVeth already exists, Setup treats it as the leftover of an
// ADD whose DEL never came and replaces it (as Calico does); callers must make
// identities unique per live workload. An IfName already present in the
// container is ErrContainerIfExists. A host route that already exists for one
// of the addresses on another interface is ErrAddressRouted.
//
// # Teardown
//
// Deleting either end of a veth deletes the pair and the host routes, so
// Teardown normally costs one lookup and one delete in the host namespace.
// It deletes HostVeth only when its peer lives in the given container
// namespace (compared by netns id), so a late DEL for an old sandbox does not
// destroy a newer sandbox of the same workload; when the namespace no longer
// exists it deletes HostVeth by name. Missing namespace, links and routes are
// not errors.
package dataplane
