package bgp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// DefaultASN is the private AS tabby nodes share for their iBGP full mesh.
const DefaultASN = 64512

// Defaults for the zero values of Config.
const (
	DefaultListenPort          = 179
	DefaultGracefulRestartTime = 120 * time.Second
	DefaultConnectRetry        = 5 * time.Second
	DefaultHoldTime            = 90 * time.Second
	DefaultInitialSyncTimeout  = 10 * time.Second
	DefaultCoalesce            = 100 * time.Millisecond

	// maxRestartTime is the largest restart time the 12-bit field of the
	// graceful restart capability can carry (RFC 4724).
	maxRestartTime = 4095 * time.Second
)

// Config configures a Speaker. Zero values take the defaults above.
type Config struct {
	// RouterID is the BGP identifier, an IPv4 address: the node's IPv4
	// underlay address, as Calico does.
	RouterID string
	// ASN is the local AS (DefaultASN when 0).
	ASN uint32
	// ListenPort is the TCP port to accept sessions on: 0 means 179, a
	// negative value means no listener (outbound sessions only).
	ListenPort int32
	// ListenAddrs are the addresses to listen on. Empty means GoBGP's
	// default, every address ("0.0.0.0" and "::"). A specific address here
	// is also used as the source address of outgoing sessions of its family,
	// so that peers see the session come from the address they were
	// configured with (needed when several speakers share a host, as in
	// tests on 127.0.0.x, and on multi-homed hosts).
	ListenAddrs []string
	// GracefulRestartTime is the restart time announced to peers: how long
	// they keep our routes after our session drops without a hard reset
	// (RFC 4724). 0 means 120 s; at most 4095 s.
	GracefulRestartTime time.Duration
	// NextHop is the next hop of the IPv4 prefixes we advertise: this
	// host's IPv4 underlay address. Empty means RouterID.
	NextHop string
	// NextHop6 is the next hop of the IPv6 prefixes we advertise: this
	// host's IPv6 underlay address. Empty means the IPv4-mapped form of
	// NextHop (::ffff:a.b.c.d), which receivers report as the IPv4 address:
	// the prefix is then only reachable through a tunnel (VXLAN over IPv4),
	// since Linux cannot route IPv6 via an IPv4 gateway.
	NextHop6 string
	// Restarting says this speaker comes back after a restart with the
	// forwarding state (the kernel routes) preserved. Its OPEN then carries
	// the Restart (R) and Forwarding (F) bits: RFC 4724 lets a helper
	// flush our stale routes as soon as the new session is up when the F
	// bit is clear, so a strict helper needs it. GoBGP then also defers
	// sending our routes until it has every peer's End-of-RIB, at most
	// InitialSyncTimeout (RFC 4724 4.1); against BIRD 2.0.12 that made the
	// re-announcement ~3.5 s slower in tests (the routes stayed, stale, in
	// between), against GoBGP peers no difference. Set it when the node
	// daemon finds its own routes already in the kernel.
	Restarting bool
	// ConnectRetry is the pause between connection attempts (5 s when 0;
	// GoBGP's default, 120 s, is far too slow to notice a restarted peer).
	ConnectRetry time.Duration
	// HoldTime is the proposed hold time (90 s when 0).
	HoldTime time.Duration
	// InitialSyncTimeout bounds how long Routes() stays silent after the
	// first SetPeers while waiting for every peer's End-of-RIB (10 s when
	// 0); see Routes.
	InitialSyncTimeout time.Duration
	// Coalesce shapes how route sets are published: the first best-path
	// change after a quiet spell at once; changes within Coalesce of a
	// publish together once they pause for Coalesce/10, and at the latest
	// Coalesce after that publish (100 ms when 0).
	Coalesce time.Duration
	// Logger receives GoBGP's log. Nil means slog.Default() at Warn and
	// above, since GoBGP logs every session event at Info.
	Logger *slog.Logger
}

// withDefaults validates c and fills in the defaults.
func (c Config) withDefaults() (Config, error) {
	rid := net.ParseIP(c.RouterID)
	if rid == nil || rid.To4() == nil {
		return c, fmt.Errorf("router ID %q is not an IPv4 address", c.RouterID)
	}
	if c.ASN == 0 {
		c.ASN = DefaultASN
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	for _, a := range c.ListenAddrs {
		if net.ParseIP(a) == nil {
			return c, fmt.Errorf("listen address %q is not an IP address", a)
		}
	}
	if c.GracefulRestartTime == 0 {
		c.GracefulRestartTime = DefaultGracefulRestartTime
	}
	if c.GracefulRestartTime < time.Second || c.GracefulRestartTime > maxRestartTime {
		return c, fmt.Errorf("graceful restart time %v is outside 1s..%v", c.GracefulRestartTime, maxRestartTime)
	}
	if c.NextHop == "" {
		c.NextHop = c.RouterID
	}
	if ip := net.ParseIP(c.NextHop); ip == nil || ip.To4() == nil {
		return c, fmt.Errorf("IPv4 next hop %q is not an IPv4 address", c.NextHop)
	}
	if c.NextHop6 == "" {
		c.NextHop6 = "::ffff:" + net.ParseIP(c.NextHop).To4().String()
	} else if ip := net.ParseIP(c.NextHop6); ip == nil || ip.To4() != nil {
		return c, fmt.Errorf("IPv6 next hop %q is not an IPv6 address", c.NextHop6)
	}
	if c.ConnectRetry == 0 {
		c.ConnectRetry = DefaultConnectRetry
	}
	if c.HoldTime == 0 {
		c.HoldTime = DefaultHoldTime
	}
	if c.HoldTime < 3*time.Second {
		return c, errors.New("hold time must be at least 3 s (RFC 4271)")
	}
	if c.InitialSyncTimeout == 0 {
		c.InitialSyncTimeout = DefaultInitialSyncTimeout
	}
	if c.Coalesce == 0 {
		c.Coalesce = DefaultCoalesce
	}
	if c.Logger == nil {
		c.Logger = slog.New(levelFloor{slog.Default().Handler(), slog.LevelWarn})
	}
	return c, nil
}

// localAddrFor returns the configured specific listen address of ip's
// family, or "" when there is none (GoBGP then lets the kernel choose).
func (c Config) localAddrFor(ip net.IP) string {
	v4 := ip.To4() != nil
	for _, a := range c.ListenAddrs {
		la := net.ParseIP(a)
		if la == nil || la.IsUnspecified() || (la.To4() != nil) != v4 {
			continue
		}
		return la.String()
	}
	return ""
}

// ownAddresses are the addresses that name this speaker: a peer or a next
// hop equal to one of them would be a loop.
func (c Config) ownAddresses() map[string]bool {
	own := map[string]bool{}
	for _, a := range append([]string{c.RouterID, c.NextHop, c.NextHop6}, c.ListenAddrs...) {
		if ip := net.ParseIP(a); ip != nil && !ip.IsUnspecified() {
			own[ip.String()] = true
		}
	}
	return own
}

// Peer is one BGP neighbour.
type Peer struct {
	Address string
	ASN     uint32 // 0 means our own AS (iBGP)
	Port    int32  // 0 means 179
	// Kind is for status display only: "mesh", "global", "node",
	// "reflector" (a session to a route reflector) or "rr-client" (a
	// reflector's session to its client).
	Kind string
	// Passive: never connect, only accept the peer's connection.
	Passive bool
	// ReflectorClient makes this speaker a route reflector for the peer
	// (RFC 4456): routes learned from any iBGP peer are reflected to it,
	// and its routes to every iBGP peer, next hops unchanged.
	ReflectorClient bool
	// ClusterID is this reflector's cluster ID (an IPv4 address) on a
	// ReflectorClient session; "" means the router ID. GoBGP keeps it per
	// neighbour.
	ClusterID string
	// OwnRoutesOnly sends the peer only this speaker's own prefixes, none
	// learned over iBGP: for a fellow route reflector, which learns the
	// clients' routes from them directly (see ownonly.go for why).
	OwnRoutesOnly bool
}

// Route is a best route learned from a peer.
type Route struct {
	Prefix *net.IPNet
	// NextHop is the originating host's underlay address (iBGP and route
	// reflectors keep it). For an IPv6 prefix it is an IPv4 address when
	// the originator advertised an IPv4-mapped next hop (no IPv6 underlay).
	NextHop net.IP
	// Peer is the neighbour we learned the route from (the originator in
	// a full mesh, the reflector otherwise).
	Peer string
	// Stale: the peer is restarting gracefully and has not refreshed the
	// route yet. It is still the route to use.
	Stale bool
}

// PeerStatus is one neighbour's session state, for `tabbyctl node status`.
type PeerStatus struct {
	Address string
	Kind    string
	// Session is the session state as GoBGP has it.
	Session api.PeerState_SessionState
	// State names Session for people: Idle, Connect, Active, OpenSent,
	// OpenConfirm or Established.
	State string
	// Since is when the session entered or left Established (zero if it
	// never did).
	Since time.Time
	// Received is the number of prefixes in the peer's Adj-RIB-In, all
	// families together.
	Received int
}

// Established reports whether the session is up.
func (p PeerStatus) Established() bool { return p.Session == api.PeerState_ESTABLISHED }
