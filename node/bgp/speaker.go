package bgp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// ErrStopped is returned by calls made after Stop.
var ErrStopped = errors.New("bgp speaker stopped")

// Speaker is an embedded GoBGP server plus tabby's desired state for it.
//
// One goroutine (run) owns that state: the desired peers, the advertised
// prefixes, the last published route set and the initial-sync flag. Every
// public method hands it a closure through ops and waits, so callers from
// any goroutine are serialized and nothing is shared under locks. GoBGP's
// own API is already serialized by its Serve loop; ours sits on top.
type Speaker struct {
	cfg Config
	srv *server.BgpServer

	ops    chan func()
	kick   chan struct{} // capacity 1: "the RIB or a session changed"
	routes chan []Route  // capacity 1, the newest set replaces an unread one
	// changed is filled by GoBGP's watcher goroutine, emptied by run.
	changed changedSet
	quit    chan struct{} // closed by Stop: run must return
	done    chan struct{} // closed when run has returned

	// st is read and written only on the run goroutine (in run itself and
	// in closures passed through call).
	st *state

	cancelWatch context.CancelFunc
	stopOnce    sync.Once
}

// state is owned by the run goroutine.
type state struct {
	peers   map[string]Peer   // desired and configured in GoBGP
	adverts map[string]advert // prefix string -> what we gave GoBGP

	peersSet     bool     // SetPeers has been called at least once
	deadlinePast bool     // InitialSyncTimeout has passed
	ready        bool     // the first route set has been published
	published    []Route  // the last set sent on routes
	ownOnly      []string // the OwnRoutesOnly neighbor set as GoBGP has it
}

// New starts an embedded GoBGP server and its BGP listener.
func New(cfg Config) (*Speaker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("bgp config: %w", err)
	}
	srv := server.NewBgpServer(server.LoggerOption(slogAdapter{cfg.Logger}))
	// Serve never returns (GoBGP v3 has no way to end it), so each Speaker
	// leaves one goroutine parked in a select after Stop. The daemon has
	// one Speaker for its lifetime; tests tolerate the few they make.
	go srv.Serve()

	global := &api.Global{
		Asn:             cfg.ASN,
		RouterId:        cfg.RouterID,
		ListenPort:      cfg.ListenPort,
		ListenAddresses: cfg.ListenAddrs,
	}
	if err := srv.StartBgp(context.Background(), &api.StartBgpRequest{Global: global}); err != nil {
		// StopBgp closes whatever listeners StartBgp did open.
		srv.StopBgp(context.Background(), &api.StopBgpRequest{})
		return nil, fmt.Errorf("start bgp (AS %d, router ID %s, port %d): %w", cfg.ASN, cfg.RouterID, cfg.ListenPort, err)
	}

	s := &Speaker{
		cfg:    cfg,
		srv:    srv,
		ops:    make(chan func()),
		kick:   make(chan struct{}, 1),
		routes: make(chan []Route, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	if err := s.watch(); err != nil {
		srv.StopBgp(context.Background(), &api.StopBgpRequest{})
		return nil, err
	}
	s.st = &state{
		peers:   map[string]Peer{},
		adverts: map[string]advert{},
		ownOnly: []string{ownOnlyPlaceholder},
	}
	if err := s.installOwnOnly(); err != nil {
		s.cancelWatch()
		srv.StopBgp(context.Background(), &api.StopBgpRequest{})
		return nil, err
	}
	go s.run()
	return s, nil
}

// watch asks GoBGP for best-path, End-of-RIB and session events. They only
// note what changed and wake run up: run then looks the changed prefixes
// up in the RIB itself (the whole RIB after a session event or an
// End-of-RIB), so a burst of events costs one lookup and the published set
// is always what the RIB holds.
func (s *Speaker) watch() error {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancelWatch = cancel
	req := &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_BEST},
			{Type: api.WatchEventRequest_Table_Filter_EOR},
		}},
	}
	err := s.srv.WatchEvent(ctx, req, func(r *api.WatchEventResponse) {
		if s.changed.note(r) {
			s.poke()
		}
	})
	if err != nil {
		cancel()
		return fmt.Errorf("watch bgp events: %w", err)
	}
	return nil
}

// poke wakes run without ever blocking GoBGP's watcher goroutine.
func (s *Speaker) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run is the single owner of state.
func (s *Speaker) run() {
	defer close(s.done)
	st := s.st
	// The initial-sync bound starts with the first peer set: a daemon that
	// starts while etcd is away has no peers yet, and must not call an empty
	// table "settled" (its kernel routes would be removed).
	var initial <-chan time.Time
	armed := false
	// The first change after a quiet spell is published at once: waiting
	// to collect a burst that mostly never comes (one new block is one
	// UPDATE) put a fixed Coalesce on every route's way into the kernel.
	// Changes within Coalesce of a publish wait for the burst to pause
	// (quiet) and go out together, at the latest Coalesce after that
	// publish: a session coming up or a peer's restart still costs one
	// RIB listing per pause, while the second copy of a change (with two
	// reflectors a withdrawal comes from each, a few ms apart) waits
	// quiet, not the whole window.
	quiet := s.cfg.Coalesce / 10
	var timer *time.Timer
	var timerC <-chan time.Time // nil: no publish within the last Coalesce
	var last time.Time          // the last publish
	pending := false            // a change not yet published
	arm := func(d time.Duration) {
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		timerC = timer.C
	}
	publish := func() {
		pending = !s.publish(st)
		last = time.Now()
		arm(s.cfg.Coalesce)
	}
	for {
		select {
		case f := <-s.ops:
			f()
			if st.peersSet && !armed {
				armed = true
				initial = time.After(s.cfg.InitialSyncTimeout)
			}
		case <-s.kick:
			if timerC == nil {
				publish()
				continue
			}
			pending = true
			arm(min(quiet, time.Until(last.Add(s.cfg.Coalesce))))
		case <-timerC:
			timerC = nil
			if pending {
				publish()
			}
		case <-initial:
			st.deadlinePast = true
			publish()
		case <-s.quit:
			if timer != nil {
				timer.Stop()
			}
			return
		}
	}
}

// call runs f on the run goroutine: only such closures may touch s.st.
func (s *Speaker) call(f func() error) error {
	errc := make(chan error, 1)
	select {
	case s.ops <- func() { errc <- f() }:
		return <-errc
	case <-s.quit:
		return ErrStopped
	}
}

// apiCtx is the context of one GoBGP API call. GoBGP v3's management calls
// do not watch it (they wait for its Serve loop); the listing calls stop
// early when it ends.
func apiCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}
