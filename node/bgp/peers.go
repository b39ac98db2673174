package bgp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

var (
	familyV4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyV6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// SetPeers makes peers the complete set of neighbours: it adds the missing
// ones, removes the others (which sends them a Cease and drops their
// routes) and re-creates those whose ASN, port or passive mode changed.
// A peer whose address is one of our own is skipped, so the daemon may pass
// the whole mesh including itself. Every peer gets graceful restart (restart
// time from Config) with RFC 8538 notification support, and the IPv4 and
// IPv6 unicast families. On error the peers that could be configured are;
// calling again retries the rest.
func (s *Speaker) SetPeers(peers []Peer) error {
	own := s.cfg.ownAddresses()
	want := make(map[string]Peer, len(peers))
	for _, p := range peers {
		ip := net.ParseIP(p.Address)
		if ip == nil {
			return fmt.Errorf("peer address %q is not an IP address", p.Address)
		}
		if p.Port < 0 || p.Port > 65535 {
			return fmt.Errorf("peer %s: port %d out of range", p.Address, p.Port)
		}
		p.Address = ip.String()
		if p.ASN == 0 {
			p.ASN = s.cfg.ASN
		}
		if p.Port == 0 {
			p.Port = DefaultListenPort
		}
		if p.ClusterID != "" {
			if !p.ReflectorClient {
				return fmt.Errorf("peer %s: a cluster ID without route reflector client", p.Address)
			}
			if id := net.ParseIP(p.ClusterID); id == nil || id.To4() == nil || strings.Contains(p.ClusterID, ":") {
				return fmt.Errorf("peer %s: cluster ID %q is not an IPv4 address", p.Address, p.ClusterID)
			}
		}
		if own[p.Address] {
			continue
		}
		if old, dup := want[p.Address]; dup && old != p {
			return fmt.Errorf("peer %s given twice with different settings", p.Address)
		}
		want[p.Address] = p
	}
	return s.call(func() error { return s.setPeers(want) })
}

// setPeers runs on the run goroutine.
func (s *Speaker) setPeers(want map[string]Peer) error {
	st := s.st
	var errs []error
	changed := !st.peersSet
	for addr, have := range st.peers {
		w, keep := want[addr]
		if keep && sameSession(have, w) {
			if have.Kind != w.Kind {
				st.peers[addr] = w
			}
			continue
		}
		changed = true
		if err := s.deletePeer(addr); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(st.peers, addr)
	}
	// Before the new peers, so their first UPDATEs already follow it.
	if err := s.setOwnOnly(want); err != nil {
		errs = append(errs, err)
	}
	for addr, w := range want {
		if _, ok := st.peers[addr]; ok {
			continue
		}
		changed = true
		if err := s.addPeer(w); err != nil {
			errs = append(errs, err)
			continue
		}
		st.peers[addr] = w
	}
	st.peersSet = true
	// A changed set may complete the initial sync (an empty one does at
	// once). The daemon calls SetPeers on every pass, mostly with the
	// same set: after the first route set that wakes nothing.
	if changed || !st.ready {
		s.poke()
	}
	return errors.Join(errs...)
}

// sameSession: a change in any of these needs a new session.
func sameSession(a, b Peer) bool {
	return a.ASN == b.ASN && a.Port == b.Port && a.Passive == b.Passive &&
		a.ReflectorClient == b.ReflectorClient && a.ClusterID == b.ClusterID && a.OwnRoutesOnly == b.OwnRoutesOnly
}

func (s *Speaker) addPeer(p Peer) error {
	ctx, cancel := apiCtx()
	defer cancel()
	if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
		return fmt.Errorf("add peer %s AS %d port %d: %w", p.Address, p.ASN, p.Port, err)
	}
	return nil
}

func (s *Speaker) deletePeer(addr string) error {
	ctx, cancel := apiCtx()
	defer cancel()
	if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr}); err != nil {
		return fmt.Errorf("delete peer %s: %w", addr, err)
	}
	return nil
}

// apiPeer is the GoBGP configuration of one neighbour.
func (s *Speaker) apiPeer(p Peer) *api.Peer {
	secs := func(d time.Duration) uint64 { return uint64((d + time.Second - 1) / time.Second) }
	afiSafi := func(f *api.Family) *api.AfiSafi {
		return &api.AfiSafi{
			Config:            &api.AfiSafiConfig{Family: f, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		}
	}
	var rr *api.RouteReflector
	if p.ReflectorClient {
		rr = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: p.ClusterID}
	}
	return &api.Peer{
		Conf:           &api.PeerConf{NeighborAddress: p.Address, PeerAsn: p.ASN},
		RouteReflector: rr,
		Transport: &api.Transport{
			RemotePort:   uint32(p.Port),
			LocalAddress: s.cfg.localAddrFor(net.ParseIP(p.Address)),
			PassiveMode:  p.Passive,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:      secs(s.cfg.ConnectRetry),
			HoldTime:          secs(s.cfg.HoldTime),
			KeepaliveInterval: secs(s.cfg.HoldTime / 3),
		}},
		GracefulRestart: &api.GracefulRestart{
			Enabled:     true,
			RestartTime: uint32(secs(s.cfg.GracefulRestartTime)),
			// RFC 8538: a Cease other than Hard Reset keeps graceful
			// restart going; StopForRestart relies on it.
			NotificationEnabled: true,
			// Only sessions that exist while we come back from a restart
			// carry the R and F bits; a peer added an hour later must not
			// be told we just restarted.
			LocalRestarting: s.cfg.Restarting && !s.st.ready,
			DeferralTime:    uint32(secs(s.cfg.InitialSyncTimeout)),
		},
		AfiSafis: []*api.AfiSafi{afiSafi(familyV4), afiSafi(familyV6)},
	}
}

// Peers returns the state of every configured neighbour, by address.
func (s *Speaker) Peers() []PeerStatus {
	var out []PeerStatus
	err := s.call(func() error {
		byAddr, err := s.listPeers()
		if err != nil {
			return err
		}
		for addr, want := range s.st.peers {
			ps := PeerStatus{Address: addr, Kind: want.Kind, State: "Idle"}
			if p := byAddr[addr]; p != nil {
				fillStatus(&ps, p)
			}
			out = append(out, ps)
		}
		return nil
	})
	if err != nil {
		s.cfg.Logger.Warn("list bgp peers", "err", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

func (s *Speaker) listPeers() (map[string]*api.Peer, error) {
	ctx, cancel := apiCtx()
	defer cancel()
	m := map[string]*api.Peer{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.GetConf() != nil {
			m[p.Conf.NeighborAddress] = p
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list bgp peers: %w", err)
	}
	return m, nil
}

var stateNames = map[api.PeerState_SessionState]string{
	api.PeerState_IDLE:        "Idle",
	api.PeerState_CONNECT:     "Connect",
	api.PeerState_ACTIVE:      "Active",
	api.PeerState_OPENSENT:    "OpenSent",
	api.PeerState_OPENCONFIRM: "OpenConfirm",
	api.PeerState_ESTABLISHED: "Established",
}

func fillStatus(ps *PeerStatus, p *api.Peer) {
	ps.Session = p.GetState().GetSessionState()
	if name, ok := stateNames[ps.Session]; ok {
		ps.State = name
	}
	ts := p.GetTimers().GetState().GetDowntime()
	if ps.Established() {
		ts = p.GetTimers().GetState().GetUptime()
	}
	if ts != nil {
		ps.Since = ts.AsTime()
	}
	for _, a := range p.GetAfiSafis() {
		ps.Received += int(a.GetState().GetReceived())
	}
}

// synced: the session is up and the peer has sent End-of-RIB for every
// family it promised one for (graceful restart capability received).
func synced(p *api.Peer) bool {
	if p.GetState().GetSessionState() != api.PeerState_ESTABLISHED {
		return false
	}
	for _, a := range p.GetAfiSafis() {
		gr := a.GetMpGracefulRestart().GetState()
		if gr.GetReceived() && !gr.GetEndOfRibReceived() {
			return false
		}
	}
	return true
}

// nBitNegotiated: both sides announced RFC 8538 support, so a Cease that
// is not a Hard Reset leaves the peer in graceful-restart helper mode.
func nBitNegotiated(p *api.Peer) bool {
	for _, c := range p.GetState().GetRemoteCap() {
		var gr api.GracefulRestartCapability
		if c.MessageIs(&gr) && c.UnmarshalTo(&gr) == nil && gr.Flags&0x04 != 0 {
			return true
		}
	}
	return false
}

// MeshPassive tells which side of a tabby-to-tabby session should only
// listen: the one with the higher address. Set Peer.Passive to it for
// mesh peers. Why: after a session drops, GoBGP holds the peer Idle for
// 5 s and closes every connection that arrives meanwhile, and a session
// that closes during OpenSent sends the connecting side into the same 5 s
// Idle. When one side restarts, the two ends are out of phase and, both
// connecting, can keep closing each other's attempts for tens of seconds.
// With one side passive only one side connects and the session is back
// within one Idle period plus one connect delay (< 8 s measured worst
// case). Peers that are not GoBGP (BIRD reflectors, ToR switches) should
// stay active.
func MeshPassive(local, remote string) bool {
	l, r := net.ParseIP(local), net.ParseIP(remote)
	if l == nil || r == nil {
		return false
	}
	return bytes.Compare(l.To16(), r.To16()) > 0
}
