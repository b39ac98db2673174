// Package model holds tabby's datastore records and the etcd keys they live
// under. Every record is JSON; every key is under Prefix. The layout is built
// so that a node reads only what its own host needs (docs/scale-and-speed.md).
package model

import (
	"fmt"
	"net"
	"strings"
)

// Prefix is the root of every tabby key in etcd.
const Prefix = "/tabby/v1/"

// Key prefixes. Functions below build the full keys.
const (
	PoolPrefix     = Prefix + "pool/"
	BlockPrefix    = Prefix + "ipam/block/"
	AffinityPrefix = Prefix + "ipam/affinity/"
	HandlePrefix   = Prefix + "ipam/handle/"
	HostPrefix     = Prefix + "host/"
	NodePrefix     = Prefix + "node/"
	ProfilePrefix  = Prefix + "profile/"
	TagPrefix      = Prefix + "tag/"
	BGPConfigKey   = Prefix + "bgp/config"
	BGPPeerPrefix  = Prefix + "bgp/peer/"
	ClusterKey     = Prefix + "config/cluster"
)

// EscapeCIDR makes a CIDR usable as one key segment: 10.0.0.0/26 -> 10.0.0.0-26,
// fd00::/122 -> fd00::-122.
func EscapeCIDR(c string) string { return strings.ReplaceAll(c, "/", "-") }

// UnescapeCIDR reverses EscapeCIDR.
func UnescapeCIDR(s string) string {
	i := strings.LastIndex(s, "-")
	if i < 0 {
		return s
	}
	return s[:i] + "/" + s[i+1:]
}

// PoolKey is the key of the pool with that CIDR.
func PoolKey(cidr string) string { return PoolPrefix + EscapeCIDR(cidr) }

// BlockPoolPrefix is the prefix of every block carved from one pool, so that
// claiming a block lists only that pool's block keys, never all blocks.
func BlockPoolPrefix(poolCIDR string) string { return BlockPrefix + EscapeCIDR(poolCIDR) + "/" }

// BlockKey is the key of one IPAM block of a pool.
func BlockKey(poolCIDR, blockCIDR string) string {
	return BlockPoolPrefix(poolCIDR) + EscapeCIDR(blockCIDR)
}

// AffinityHostPrefix holds one key per block affine to host: the ADD path reads
// only this small prefix to find where to allocate.
func AffinityHostPrefix(host string) string { return AffinityPrefix + host + "/" }

// AffinityKey names the affinity of blockCIDR (of poolCIDR) to host.
func AffinityKey(host, blockCIDR string) string {
	return AffinityHostPrefix(host) + EscapeCIDR(blockCIDR)
}

// HandleNetworkPrefix holds the handles of one CNI network, which is what GC scans.
func HandleNetworkPrefix(network string) string { return HandlePrefix + network + "/" }

// HandleKey is the key of the handle "<network>.<containerID>".
func HandleKey(network, containerID string) string {
	return HandleNetworkPrefix(network) + containerID
}

// HandleID is the handle's name as users see it.
func HandleID(network, containerID string) string { return network + "." + containerID }

// NodeKey is a host's own record. Host records sit in a flat prefix of their
// own so that every node can watch the host list without also seeing every
// host's endpoints (which live under HostSubtree).
func NodeKey(host string) string { return NodePrefix + host }

// HostSubtree is everything that belongs to one host.
func HostSubtree(host string) string { return HostPrefix + host + "/" }

// HostWorkloadPrefix holds every endpoint of one host.
func HostWorkloadPrefix(host string) string { return HostPrefix + host + "/workload/" }

// EndpointKey is the path fixed by the spec.
func EndpointKey(host, orchestrator, workload, endpoint string) string {
	return fmt.Sprintf("%s%s/workload/%s/%s/endpoint/%s", HostPrefix, host, orchestrator, workload, endpoint)
}

// ParseEndpointKey splits an endpoint key into its parts.
func ParseEndpointKey(key string) (host, orchestrator, workload, endpoint string, ok bool) {
	if !strings.HasPrefix(key, HostPrefix) {
		return "", "", "", "", false
	}
	p := strings.Split(strings.TrimPrefix(key, HostPrefix), "/")
	if len(p) != 6 || p[1] != "workload" || p[4] != "endpoint" {
		return "", "", "", "", false
	}
	return p[0], p[2], p[3], p[5], true
}

// HostBGPPeerPrefix holds BGP peers that only this host dials.
func HostBGPPeerPrefix(host string) string { return HostPrefix + host + "/bgppeer/" }

// HostBGPPeerKey is one per-host BGP peer.
func HostBGPPeerKey(host, ip string) string { return HostBGPPeerPrefix(host) + ip }

// GlobalBGPPeerKey is a peer every host dials.
func GlobalBGPPeerKey(ip string) string { return BGPPeerPrefix + ip }

// ProfileKey is one profile's record (its rules).
func ProfileKey(name string) string { return ProfilePrefix + name }

// TagMembersPrefix indexes the addresses carrying a tag, across hosts, so a
// node watches only the tags its local rules name.
func TagMembersPrefix(tag string) string { return TagPrefix + tag + "/" }

// TagMemberKey is one endpoint's membership of a tag.
func TagMemberKey(tag, host, orchestrator, workload, endpoint string) string {
	return fmt.Sprintf("%s%s/%s/%s/%s", TagMembersPrefix(tag), host, orchestrator, workload, endpoint)
}

// ValidName reports whether s can be one key segment: profile, host, workload
// and network names end up in keys, logs, and hashed into chain and set
// names, so only letters, digits and . _ - : @ + pass: no slash, blank,
// control byte, quote or shell and iptables metacharacter.
func ValidName(s string) error {
	if s == "" {
		return fmt.Errorf("empty name")
	}
	if len(s) > 253 {
		return fmt.Errorf("name %.20q... is longer than 253 characters", s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-:@+", r)
		if !ok {
			return fmt.Errorf("name %q contains %q; use letters, digits and . _ - : @ + only", s, r)
		}
	}
	if s == "." || s == ".." {
		return fmt.Errorf("name %q is reserved", s)
	}
	return nil
}

// CanonicalCIDR parses c and returns the network in canonical form.
func CanonicalCIDR(c string) (*net.IPNet, error) {
	ip, n, err := net.ParseCIDR(strings.TrimSpace(c))
	if err != nil {
		return nil, fmt.Errorf("%q is not a CIDR (want e.g. 10.0.0.0/16 or fd00::/64)", c)
	}
	if !ip.Equal(n.IP) {
		return nil, fmt.Errorf("%q has host bits set; did you mean %s?", c, n)
	}
	if ip.To4() != nil {
		n.IP = n.IP.To4()
	}
	return n, nil
}
