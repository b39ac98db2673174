package model

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
)

// EncapMode is when a pool's traffic between hosts is encapsulated, as
// Calico names the modes. Stored records hold the string; "" (records
// written before the mode was always stored) means never.
type EncapMode string

// Encapsulation modes.
const (
	EncapNever       EncapMode = "never"
	EncapAlways      EncapMode = "always"
	EncapCrossSubnet EncapMode = "cross-subnet"
)

// Valid reports whether m is a known mode ("" is not: Normal gives never).
func (m EncapMode) Valid() bool {
	return m == EncapNever || m == EncapAlways || m == EncapCrossSubnet
}

// Normal is m with "" read as never.
func (m EncapMode) Normal() EncapMode {
	if m == "" {
		return EncapNever
	}
	return m
}

// On reports whether the pool encapsulates at all (always or cross-subnet).
func (m EncapMode) On() bool { return m.Normal() != EncapNever }

// Defaults and names of records.
const (
	DefaultBlockV4    = 26
	DefaultBlockV6    = 122
	DefaultASNumber   = 64512
	OrchestratorCNI   = "cni"
	OrchestratorK8s   = "k8s"
	OrchestratorDock  = "docker"
	DefaultEndpointNm = "eth0"
)

// Pool is a range that addresses are handed out from, in blocks.
type Pool struct {
	CIDR        string    `json:"cidr"`
	BlockSize   int       `json:"blockSize"`
	IPIPMode    EncapMode `json:"ipipMode"`
	VXLANMode   EncapMode `json:"vxlanMode"`
	NATOutgoing bool      `json:"natOutgoing"`
	Disabled    bool      `json:"disabled"`
}

// UnmarshalJSON reads a stored pool; a mode that is empty or missing (an
// older record) reads as never, so code compares modes without a case
// for "".
func (p *Pool) UnmarshalJSON(b []byte) error {
	type plain Pool // without this method
	if err := json.Unmarshal(b, (*plain)(p)); err != nil {
		return err
	}
	p.IPIPMode, p.VXLANMode = p.IPIPMode.Normal(), p.VXLANMode.Normal()
	return nil
}

// Validate checks a pool and fills defaults; it returns an error a user can act on.
func (p *Pool) Validate() error {
	n, err := CanonicalCIDR(p.CIDR)
	if err != nil {
		return err
	}
	p.CIDR = n.String()
	ones, bits := n.Mask.Size()
	v4 := bits == 32
	if p.BlockSize == 0 {
		p.BlockSize = DefaultBlockV4
		if !v4 {
			p.BlockSize = DefaultBlockV6
		}
	}
	if p.BlockSize < ones {
		return fmt.Errorf("block size /%d is larger than the pool %s; use a block size of at least %d", p.BlockSize, p.CIDR, ones)
	}
	if v4 && (p.BlockSize < 20 || p.BlockSize > 32) {
		return fmt.Errorf("IPv4 block size must be 20..32, not %d", p.BlockSize)
	}
	if !v4 && (p.BlockSize < 116 || p.BlockSize > 128) {
		return fmt.Errorf("IPv6 block size must be 116..128, not %d", p.BlockSize)
	}
	p.IPIPMode, p.VXLANMode = p.IPIPMode.Normal(), p.VXLANMode.Normal()
	if !p.IPIPMode.Valid() || !p.VXLANMode.Valid() {
		return fmt.Errorf("encapsulation must be always, cross-subnet or never (ipip %q, vxlan %q)", p.IPIPMode, p.VXLANMode)
	}
	if p.IPIPMode != EncapNever && p.VXLANMode != EncapNever {
		return fmt.Errorf("pool %s: choose IPIP or VXLAN, not both", p.CIDR)
	}
	if p.IPIPMode != EncapNever && !v4 {
		return fmt.Errorf("pool %s: IPIP carries IPv4 only; use --vxlan or no encapsulation for IPv6", p.CIDR)
	}
	return nil
}

// IPNet returns the parsed pool CIDR.
func (p *Pool) IPNet() *net.IPNet {
	n, _ := CanonicalCIDR(p.CIDR)
	return n
}

// IsV6 reports whether this is an IPv6 pool.
func (p *Pool) IsV6() bool { return strings.Contains(p.CIDR, ":") }

// Block is one host-affine slice of a pool. Allocations has one slot per
// address; nil is free. The handle and the block move together in one etcd
// transaction, so an allocation always names its owner.
type Block struct {
	CIDR        string        `json:"cidr"`
	Pool        string        `json:"pool"`
	Affinity    string        `json:"affinity"` // host name
	Allocations []*Allocation `json:"allocations"`
}

// Allocation says who holds one address of a block.
type Allocation struct {
	Handle   string `json:"handle"` // network.containerID
	Network  string `json:"network"`
	Host     string `json:"host"` // host that allocated it (differs from the block's affinity when borrowed)
	Workload string `json:"workload,omitempty"`
}

// Affinity records that a host owns a block. It is written in the same
// transaction as the block, so there is never a half-claimed block.
type Affinity struct {
	Host  string `json:"host"`
	Block string `json:"block"`
	Pool  string `json:"pool"`
}

// Handle names every address one attachment holds.
type Handle struct {
	ID          string   `json:"id"`
	Network     string   `json:"network"`
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifName,omitempty"`
	Host        string   `json:"host"`
	Workload    string   `json:"workload,omitempty"`
	Plugin      string   `json:"plugin,omitempty"` // main plugin type that asked (tabby, ptp, bridge)
	IPs         []string `json:"ips"`              // addresses (no prefix)
	Blocks      []string `json:"blocks"`           // block keys, parallel to IPs
	Created     int64    `json:"created"`          // unix seconds
}

// Host is a node's own record.
type Host struct {
	Name            string `json:"name"`
	IPv4            string `json:"ipv4,omitempty"` // address/prefix, e.g. 198.19.0.1/24
	IPv6            string `json:"ipv6,omitempty"`
	ASNumber        uint32 `json:"asNumber,omitempty"`
	IPIPTunnelAddr  string `json:"ipipTunnelAddr,omitempty"`
	VXLANTunnelAddr string `json:"vxlanTunnelAddr,omitempty"`
	VXLANMAC        string `json:"vxlanMAC,omitempty"`
	IPIPSupported   bool   `json:"ipipSupported"`
	BGPPort         int    `json:"bgpPort,omitempty"` // 0 = 179
	Version         string `json:"version,omitempty"`
	// RouteReflectorClusterID makes the host a BGP route reflector with
	// this cluster ID (an IPv4 dotted quad); "" is an ordinary host.
	// Records written before reflectors existed lack it and read as "".
	RouteReflectorClusterID string `json:"routeReflectorClusterID,omitempty"`
	// K8sNode is the Kubernetes Node this host is, when its tabby-node
	// runs as the DaemonSet (--k8s-node-ref): tabby-kube-controllers
	// retires the host when that Node is deleted, and never a host
	// without it.
	K8sNode string `json:"k8sNode,omitempty"`
}

// IsReflector reports whether the host is a BGP route reflector.
func (h Host) IsReflector() bool { return h.RouteReflectorClusterID != "" }

// ValidClusterID checks a route reflector cluster ID: an IPv4 address in
// dotted form, as Calico's routeReflectorClusterID and GoBGP take it.
func ValidClusterID(id string) error {
	ip := net.ParseIP(id)
	if ip == nil || ip.To4() == nil || strings.Contains(id, ":") {
		return fmt.Errorf("cluster ID %q: want an IPv4 address such as 244.0.0.1", id)
	}
	return nil
}

// Endpoint is a workload's interface as the CNI plugin recorded it.
type Endpoint struct {
	Host          string            `json:"host"`
	Orchestrator  string            `json:"orchestrator"`
	Workload      string            `json:"workload"`
	Name          string            `json:"name"` // endpoint name: the container interface (eth0)
	ContainerID   string            `json:"containerID"`
	Network       string            `json:"network"`
	Netns         string            `json:"netns"`
	IfName        string            `json:"ifName"`        // inside the container
	HostInterface string            `json:"hostInterface"` // tby...
	MAC           string            `json:"mac"`
	IPv4Nets      []string          `json:"ipv4Nets,omitempty"` // a.b.c.d/32
	IPv6Nets      []string          `json:"ipv6Nets,omitempty"` // x::y/128
	Profiles      []string          `json:"profiles"`
	Handle        string            `json:"handle,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	// Namespace scopes the endpoint for policies (a Kubernetes pod's
	// namespace); "" is outside any namespace.
	Namespace string      `json:"namespace,omitempty"`
	Ports     []NamedPort `json:"ports,omitempty"` // named ports the workload declares
}

// Key is the endpoint's etcd key.
func (e *Endpoint) Key() string {
	return EndpointKey(e.Host, e.Orchestrator, e.Workload, e.Name)
}

// DisplayName is the workload's name as its orchestrator's users know it:
// a Kubernetes pod's "<namespace>/<pod>" (its key holds "<namespace>.<pod>",
// since a key segment cannot hold a slash, and a namespace, a DNS label,
// holds no dot), any other workload's name as is.
func (e *Endpoint) DisplayName() string {
	if e.Orchestrator == OrchestratorK8s {
		if ns, pod, ok := strings.Cut(e.Workload, "."); ok {
			return ns + "/" + pod
		}
	}
	return e.Workload
}

// Nets returns all addresses of the endpoint with their prefixes.
func (e *Endpoint) Nets() []string {
	return append(append([]string{}, e.IPv4Nets...), e.IPv6Nets...)
}

// Profile is a tag plus ordered rules. Its tag is its name: every endpoint
// that has the profile is a member of tag NAME, which rules refer to.
type Profile struct {
	Name     string `json:"name"`
	Inbound  []Rule `json:"inbound"`
	Outbound []Rule `json:"outbound"`
}

// Rule actions and protocols.
const (
	ActionAllow = "allow"
	ActionDeny  = "deny"
)

// Rule is one line of a profile: the first rule that matches decides.
type Rule struct {
	Action   string `json:"action"`
	Protocol string `json:"protocol,omitempty"` // tcp, udp, icmp, icmpv6 or empty for any
	SrcTag   string `json:"srcTag,omitempty"`
	SrcNet   string `json:"srcNet,omitempty"`
	DstTag   string `json:"dstTag,omitempty"`
	DstNet   string `json:"dstNet,omitempty"`
	DstPorts string `json:"dstPorts,omitempty"` // "80" or "1000:2000"
}

// DefaultProfile is what `profile add NAME` creates: members reach each other,
// members send anywhere.
func DefaultProfile(name string) Profile {
	return Profile{
		Name:     name,
		Inbound:  []Rule{{Action: ActionAllow, SrcTag: name}},
		Outbound: []Rule{{Action: ActionAllow}},
	}
}

// TagMember is one endpoint's entry in a tag's member index.
type TagMember struct {
	Endpoint string   `json:"endpoint"` // endpoint key
	Nets     []string `json:"nets"`
}

// BGPConfig is the cluster-wide BGP setting.
type BGPConfig struct {
	ASNumber uint32 `json:"asNumber"`
	Mesh     bool   `json:"mesh"`
}

// DefaultBGPConfig applies when no config is stored.
func DefaultBGPConfig() BGPConfig { return BGPConfig{ASNumber: DefaultASNumber, Mesh: true} }

// BGPPeer is an explicit peer: global when Host is empty, else per host.
type BGPPeer struct {
	IP       string `json:"ip"`
	ASNumber uint32 `json:"asNumber"`
	Host     string `json:"host,omitempty"`
}

// ClusterConfig holds cluster-wide switches.
type ClusterConfig struct {
	StrictAffinity bool `json:"strictAffinity"`
}

// EncapOverhead is the tunnel header the pool holding ip puts on its
// workloads' packets (VXLAN 50, or 70 over IPv6; IPIP 20), which their MTU
// must leave room for; 0 when no pool holds ip or it is not encapsulated.
func EncapOverhead(pools []Pool, ip net.IP) int {
	for _, p := range pools {
		if !p.IPNet().Contains(ip) {
			continue
		}
		switch {
		case p.VXLANMode.On():
			if p.IsV6() {
				return 70
			}
			return 50
		case p.IPIPMode.On():
			return 20
		}
	}
	return 0
}
