package routes

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// Protocol marks every route tabby installs (rtnetlink protocol number,
// shown as "proto 80" by ip route). It is the same number as
// pkg/dataplane.DefaultRouteProtocol: the CNI plugin's per-workload
// routes carry it too, so ownership is decided by more than the protocol
// (see owned).
const Protocol netlink.RouteProtocol = 80

// Defaults for Options.
const (
	DefaultVXLANDevice = "vxlan.tabby"
	DefaultVNI         = 4096
	DefaultVXLANPort   = 4789
	// IPIPDevice is the kernel's fallback IPIP device. It accepts IPIP from
	// any source, so every host can decapsulate without a tunnel per peer;
	// it cannot be renamed or deleted, and has no local/remote of its own.
	IPIPDevice = "tunl0"

	// Encapsulation overheads (LESSONS: 1480 and 1450 on a 1500 uplink).
	IPIPOverhead  = 20
	VXLANOverhead = 50
)

// Encap is how packets reach a remote block.
type Encap int

const (
	None  Encap = iota // plain route via the remote host's underlay address
	IPIP               // IPv4-in-IPv4 through tunl0
	VXLAN              // through the VXLAN device
)

func (e Encap) String() string {
	switch e {
	case None:
		return "none"
	case IPIP:
		return "ipip"
	case VXLAN:
		return "vxlan"
	}
	return fmt.Sprintf("encap(%d)", int(e))
}

// Remote is a block (or borrowed address) on another host.
type Remote struct {
	Prefix *net.IPNet
	// Gateway is the remote host's underlay address: the route's next hop
	// for None and IPIP, the outer destination (FDB entry) for VXLAN.
	Gateway net.IP
	Encap   Encap
	// TunnelAddr and VTEPMAC are the remote host's VXLAN tunnel address
	// and VTEP MAC (from its host record); VXLAN only.
	TunnelAddr net.IP
	VTEPMAC    net.HardwareAddr
}

// Local is this host's own address space.
type Local struct {
	// Blocks get a blackhole route each, so traffic to an unused address
	// in them dies here instead of following the default route; the
	// workloads' own /32 (/128) routes are more specific.
	Blocks []*net.IPNet
}

// Options configures a Manager. Zero values take the defaults.
type Options struct {
	// NetNSPath is the network namespace to work in (a /var/run/netns or
	// /proc/PID/ns/net path). Empty means the namespace of the calling
	// thread when New runs.
	NetNSPath string
	// NodeIP is this host's IPv4 underlay address: the VXLAN device's
	// local address. Needed only when VXLAN is in use.
	NodeIP net.IP
	// UnderlayDevice carries the VXLAN traffic. Empty means the device that
	// holds NodeIP.
	UnderlayDevice string
	VXLANDevice    string // DefaultVXLANDevice when empty
	VNI            int    // DefaultVNI when 0
	VXLANPort      int    // DefaultVXLANPort when 0
	// VXLANMAC is this host's VTEP MAC, which other hosts put in their
	// neighbour entries. Nil keeps the device's MAC (random at creation);
	// use DeriveVTEPMAC for one that survives re-creation.
	VXLANMAC net.HardwareAddr
	// VXLANTunnelAddr (IPv4) and VXLANTunnelAddr6 (optional) go on the
	// VXLAN device as /32 and /128. Setting VXLANTunnelAddr means VXLAN is
	// on for this host: the device is kept even with no VXLAN remotes, so
	// that other hosts can reach this one.
	VXLANTunnelAddr  net.IP
	VXLANTunnelAddr6 net.IP
	// IPIPTunnelAddr goes on tunl0 as /32; setting it means IPIP is on for
	// this host (tunl0 is set up even with no IPIP remotes).
	IPIPTunnelAddr net.IP
	// MTU is the underlay MTU; the tunnel devices get it less their
	// overhead. 0 means the underlay device's MTU (for IPIP: the device
	// holding NodeIP, else 1500).
	MTU int
}

func (o Options) withDefaults() (Options, error) {
	if o.VXLANDevice == "" {
		o.VXLANDevice = DefaultVXLANDevice
	}
	if o.VNI == 0 {
		o.VNI = DefaultVNI
	}
	if o.VXLANPort == 0 {
		o.VXLANPort = DefaultVXLANPort
	}
	if o.NodeIP != nil && o.NodeIP.To4() == nil {
		return o, fmt.Errorf("node IP %s is not IPv4", o.NodeIP)
	}
	if o.VXLANMAC != nil && len(o.VXLANMAC) != 6 {
		return o, fmt.Errorf("VTEP MAC %s is not an Ethernet address", o.VXLANMAC)
	}
	if o.VXLANTunnelAddr != nil && o.VXLANTunnelAddr.To4() == nil {
		return o, fmt.Errorf("VXLAN tunnel address %s is not IPv4", o.VXLANTunnelAddr)
	}
	if o.VXLANTunnelAddr6 != nil && o.VXLANTunnelAddr6.To4() != nil {
		return o, fmt.Errorf("VXLAN IPv6 tunnel address %s is IPv4", o.VXLANTunnelAddr6)
	}
	if o.IPIPTunnelAddr != nil && o.IPIPTunnelAddr.To4() == nil {
		return o, fmt.Errorf("IPIP tunnel address %s is not IPv4", o.IPIPTunnelAddr)
	}
	if o.MTU < 0 || o.MTU > 65535 {
		return o, fmt.Errorf("MTU %d out of range", o.MTU)
	}
	return o, nil
}
