package bgp

import (
	"bytes"
	"fmt"
	"sort"

	api "github.com/osrg/gobgp/v3/api"
)

// Routes returns the channel on which the Speaker publishes the complete
// set of best routes learned from peers (never our own prefixes), sorted
// by prefix, each time it changes. Bursts are coalesced (Config.Coalesce)
// and an unread set is replaced by the newer one, so a slow reader only
// ever sees the latest state; every value is a full snapshot to reconcile
// the kernel against. There is one channel per Speaker: have one reader.
//
// The first set is held back until the initial sync is done: SetPeers has
// been called and every configured peer is Established and has sent its
// End-of-RIB (or never promised one), or Config.InitialSyncTimeout has
// passed. This keeps a restarting daemon from reconciling the kernel
// against a half-learned table and deleting routes that are still good.
// After that, the channel also delivers an empty set when all routes are
// gone. It is closed by Stop and StopForRestart.
func (s *Speaker) Routes() <-chan []Route { return s.routes }

// publish runs on the run goroutine.
func (s *Speaker) publish(st *state) {
	if !st.ready && !s.initialSyncDone(st) {
		return
	}
	routes, err := s.bestRoutes()
	if err != nil {
		s.cfg.Logger.Error("list bgp best paths", "err", err)
		s.poke() // try again after the next coalescing pause
		return
	}
	if st.ready && sameRoutes(routes, st.published) {
		return
	}
	st.ready = true
	st.published = routes
	select { // drop an unread older set; only run sends, so this cannot block
	case <-s.routes:
	default:
	}
	s.routes <- routes
}

func (s *Speaker) initialSyncDone(st *state) bool {
	if !st.peersSet {
		return false
	}
	if st.deadlinePast {
		return true
	}
	if len(st.peers) == 0 {
		return true
	}
	peers, err := s.listPeers()
	if err != nil {
		return false
	}
	for addr := range st.peers {
		if p := peers[addr]; p == nil || !synced(p) {
			return false
		}
	}
	return true
}

// bestRoutes lists the global RIB and keeps the best path of each prefix
// when a peer gave it to us.
func (s *Speaker) bestRoutes() ([]Route, error) {
	own := s.cfg.ownAddresses()
	var routes []Route
	var errs []error
	for _, family := range []*api.Family{familyV4, familyV6} {
		ctx, cancel := apiCtx()
		err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: family},
			func(d *api.Destination) {
				for _, p := range d.GetPaths() {
					if !p.GetBest() {
						continue
					}
					r, ok, err := learnedRoute(p, own)
					if err != nil {
						errs = append(errs, err)
					} else if ok {
						routes = append(routes, r)
					}
					break
				}
			})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list %s paths: %w", family.Afi, err)
		}
	}
	for _, err := range errs {
		// One malformed path must not hide all the others.
		s.cfg.Logger.Warn("skip bgp path", "err", err)
	}
	sort.Slice(routes, func(i, j int) bool { return routeLess(routes[i], routes[j]) })
	return routes, nil
}

func routeLess(a, b Route) bool {
	if c := bytes.Compare(a.Prefix.IP.To16(), b.Prefix.IP.To16()); c != 0 {
		return c < 0
	}
	return bytes.Compare(a.Prefix.Mask, b.Prefix.Mask) < 0
}

func sameRoutes(a, b []Route) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Prefix.String() != b[i].Prefix.String() || !a[i].NextHop.Equal(b[i].NextHop) ||
			a[i].Peer != b[i].Peer || a[i].Stale != b[i].Stale {
			return false
		}
	}
	return true
}
