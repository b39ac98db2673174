package bgp

import (
	"context"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// Stop ends every session with a Cease NOTIFICATION (a Hard Reset for
// peers that support RFC 8538), so peers drop our routes at once, and
// closes the listener and the Routes channel. Use it when the node leaves
// the network. Calls after Stop return ErrStopped.
func (s *Speaker) Stop() { s.stop(false) }

// StopForRestart ends the sessions so that peers keep our routes, marked
// stale, for GracefulRestartTime (RFC 4724), as for a daemon restart:
//
//   - Peers that negotiated RFC 8538 (the N bit; every tabby Speaker does)
//     get a Cease "Administrative Reset", which is not a Hard Reset, so
//     they enter graceful-restart helper mode.
//   - GoBGP as a library cannot close a session without sending a
//     NOTIFICATION, and peers without the N bit (RFC 4724 only, e.g. older
//     BIRD) treat any NOTIFICATION as the end of the session and drop our
//     routes. For them the only graceful way is to end the process without
//     calling Stop: the kernel closes the TCP connections with no
//     NOTIFICATION, which every GR helper treats as a restart.
//
// It then closes the listener and the Routes channel, as Stop does.
func (s *Speaker) StopForRestart() { s.stop(true) }

func (s *Speaker) stop(graceful bool) {
	s.stopOnce.Do(func() {
		close(s.quit)
		<-s.done
		s.cancelWatch()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if graceful {
			s.resetForRestart(ctx)
		}
		// StopBgp deletes every peer (Cease, Peer De-configured, which GoBGP
		// turns into a Hard Reset where the N bit was negotiated) and waits
		// for their goroutines. Peers already reset above are no longer
		// Established, so nothing more goes on their wire.
		if err := s.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
			s.cfg.Logger.Warn("stop bgp", "err", err)
		}
		close(s.routes)
	})
}

// resetForRestart sends the N-bit peers an Administrative Reset and waits
// (bounded) until their sessions have left Established, so that StopBgp's
// own NOTIFICATION is not written on the same sessions.
func (s *Speaker) resetForRestart(ctx context.Context) {
	peers, err := s.listPeers()
	if err != nil {
		s.cfg.Logger.Warn("graceful stop: list peers", "err", err)
		return
	}
	reset := map[string]bool{}
	for addr, p := range peers {
		if p.GetState().GetSessionState() != api.PeerState_ESTABLISHED || !nBitNegotiated(p) {
			continue
		}
		// After a reset GoBGP holds the peer idle for IdleHoldTimeAfterReset
		// (30 s), so it does not reconnect before StopBgp removes it.
		err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr, Communication: "tabby-node restarting"})
		if err != nil {
			s.cfg.Logger.Warn("graceful stop: reset peer", "peer", addr, "err", err)
			continue
		}
		reset[addr] = true
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(reset) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		peers, err := s.listPeers()
		if err != nil {
			return
		}
		for addr := range reset {
			if p := peers[addr]; p == nil || p.GetState().GetSessionState() != api.PeerState_ESTABLISHED {
				delete(reset, addr)
			}
		}
	}
}
