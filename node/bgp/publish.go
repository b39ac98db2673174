package bgp

import (
	"bytes"
	"fmt"
	"net"
	"sort"
	"sync"

	api "github.com/osrg/gobgp/v3/api"
)

// Routes returns the channel on which the Speaker publishes the complete
// set of best routes learned from peers (never our own prefixes), sorted
// by prefix, each time it changes: at once after a quiet spell; during a
// burst once it pauses for a tenth of Config.Coalesce, at the latest
// Config.Coalesce after the previous set. An unread set is replaced by the
// newer one, so a slow reader only ever sees the latest state; every value
// is a full snapshot to reconcile the kernel against. There is one channel
// per Speaker: have one reader.
//
// The first set is held back until the initial sync is done: SetPeers has
// been called and every configured peer is Established and has sent its
// End-of-RIB (or never promised one), or Config.InitialSyncTimeout has
// passed. This keeps a restarting daemon from reconciling the kernel
// against a half-learned table and deleting routes that are still good.
// After that, the channel also delivers an empty set when all routes are
// gone. It is closed by Stop and StopForRestart.
func (s *Speaker) Routes() <-chan []Route { return s.routes }

// publish runs on the run goroutine. It is false when the RIB could not
// be listed: run tries again a Coalesce later.
func (s *Speaker) publish(st *state) bool {
	if !st.ready && !s.initialSyncDone(st) {
		return true
	}
	all, changed := s.changed.take()
	if !st.ready {
		all = true
	}
	if !all && len(changed) == 0 {
		return true
	}
	var routes []Route
	var err error
	if all {
		routes, err = s.bestRoutes(nil)
	} else {
		routes, err = s.bestRoutes(changed)
		routes = merge(st.published, routes, changed)
	}
	if err != nil {
		s.changed.markAll()
		s.cfg.Logger.Error("list bgp best paths", "err", err)
		return false
	}
	if st.ready && sameRoutes(routes, st.published) {
		return true
	}
	st.ready = true
	st.published = routes
	select { // drop an unread older set; only run sends, so this cannot block
	case <-s.routes:
	default:
	}
	s.routes <- routes
	return true
}

// merge replaces, in the published set, the routes of the changed
// prefixes by their listed best routes (fresh). A new slice: the reader
// may still hold the old one.
func merge(published, fresh []Route, changed map[string]bool) []Route {
	out := make([]Route, 0, len(published)+len(fresh))
	for _, r := range published {
		if _, ok := changed[r.Prefix.String()]; !ok {
			out = append(out, r)
		}
	}
	out = append(out, fresh...)
	sort.Slice(out, func(i, j int) bool { return routeLess(out[i], out[j]) })
	return out
}

// maxChanged: past this many changed prefixes, one listing of the whole
// RIB is cheaper than as many lookups.
const maxChanged = 256

// changedSet is what the next RIB listing must cover, filled from GoBGP's
// events: the prefixes whose best path changed, or everything. A change
// anywhere in the cluster reaches every host, so listing the whole RIB for
// each would cost every host O(routes) per change; a lookup of the changed
// prefixes costs O(changes).
type changedSet struct {
	mu       sync.Mutex
	prefixes map[string]bool // canonical prefix -> IPv6
	all      bool
}

// note records a GoBGP event. A session event or an End-of-RIB marks
// everything: routes may have turned stale or fresh without a new best
// path. It reports whether the event can change the published set: GoBGP
// tells best-path watchers of every UPDATE, with no path when the best one
// did not change (with two reflectors, every route's second copy).
func (c *changedSet) note(r *api.WatchEventResponse) bool {
	t := r.GetTable()
	if t != nil && len(t.GetPaths()) == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t == nil {
		c.all = true
		return true
	}
	for _, p := range t.GetPaths() {
		key, v6, ok := eventPrefix(p)
		if !ok { // End-of-RIB has no NLRI
			c.all = true
			continue
		}
		if c.prefixes == nil {
			c.prefixes = map[string]bool{}
		}
		c.prefixes[key] = v6
	}
	if len(c.prefixes) > maxChanged {
		c.all = true
	}
	return true
}

func (c *changedSet) markAll() {
	c.mu.Lock()
	c.all = true
	c.mu.Unlock()
}

// take empties the set and returns what it held (the prefixes only when
// not all).
func (c *changedSet) take() (all bool, prefixes map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	all, prefixes = c.all, c.prefixes
	c.all, c.prefixes = false, nil
	if all {
		prefixes = nil
	}
	return all, prefixes
}

// eventPrefix is the canonical prefix of an event's path (protobuf form).
func eventPrefix(p *api.Path) (key string, v6, ok bool) {
	if p.GetNlri() == nil {
		return "", false, false
	}
	var pfx api.IPAddressPrefix
	if err := p.GetNlri().UnmarshalTo(&pfx); err != nil {
		return "", false, false
	}
	_, n, err := net.ParseCIDR(fmt.Sprintf("%s/%d", pfx.Prefix, pfx.PrefixLen))
	if err != nil {
		return "", false, false
	}
	return n.String(), n.IP.To4() == nil, true
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

// bestRoutes lists the global RIB, or only the prefixes given (canonical
// prefix -> IPv6), and keeps the best path of each prefix when a peer gave
// it to us.
func (s *Speaker) bestRoutes(only map[string]bool) ([]Route, error) {
	own := s.cfg.ownAddresses()
	var routes []Route
	var errs []error
	for _, family := range []*api.Family{familyV4, familyV6} {
		req := &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: family, EnableOnlyBinary: true}
		if only != nil {
			for key, v6 := range only {
				if v6 == (family == familyV6) {
					req.Prefixes = append(req.Prefixes, &api.TableLookupPrefix{Prefix: key, Type: api.TableLookupPrefix_EXACT})
				}
			}
			if len(req.Prefixes) == 0 {
				continue
			}
		}
		ctx, cancel := apiCtx()
		err := s.srv.ListPath(ctx, req,
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
