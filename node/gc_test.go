package main

import "testing"

// The heap grows by about the headroom between collections: GOGC 400 for a
// small heap, Go's 100 once the live heap exceeds the headroom.
func TestGCPercent(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		live uint64
		want int
	}{{0, 400}, {2 * mb, 400}, {4 * mb, 400}, {8 * mb, 200}, {16 * mb, 100}, {500 * mb, 100}} {
		if got := gcPercent(c.live, 16*mb); got != c.want {
			t.Errorf("live %d MB: GOGC %d, want %d", c.live/mb, got, c.want)
		}
	}
}
