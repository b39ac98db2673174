package lab

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Script is a TB for programs that are not tests, such as the demo:
//
//	s := lab.NewScript()
//	defer s.Close()
//	l := lab.New(s, lab.Options{Hosts: 3})
//
// Fatalf prints the message, runs the cleanups (removing the lab) and
// exits with status 1.
type Script struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// NewScript returns an empty Script.
func NewScript() *Script { return &Script{} }

func (s *Script) Helper() {}

func (s *Script) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func (s *Script) Errorf(format string, args ...any) {
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
	s.Logf(format, args...)
}

func (s *Script) Fatalf(format string, args ...any) {
	s.Errorf(format, args...)
	s.Close()
	os.Exit(1)
}

func (s *Script) Cleanup(f func()) {
	s.mu.Lock()
	s.cleanups = append(s.cleanups, f)
	s.mu.Unlock()
}

func (s *Script) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// Close runs the registered cleanups, last first, once each.
func (s *Script) Close() {
	for {
		s.mu.Lock()
		n := len(s.cleanups)
		if n == 0 {
			s.mu.Unlock()
			return
		}
		f := s.cleanups[n-1]
		s.cleanups = s.cleanups[:n-1]
		s.mu.Unlock()
		f()
	}
}

// Eventually calls f every 100 ms until it returns nil or timeout passes,
// and then returns f's last error. Use it for what converges (routes
// learnt over BGP, rules programmed by a daemon). An error made with
// GiveUp ends it at once.
func Eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		var g giveUp
		if errors.As(err, &g) {
			return g.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type giveUp struct{ error }

// GiveUp wraps err so that Eventually returns it at once instead of trying
// again (a daemon it waits for has exited).
func GiveUp(err error) error { return giveUp{err} }
