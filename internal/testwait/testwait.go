// Package testwait waits, in tests, for something another process or
// goroutine does: one polling loop with one failure message, instead of a
// sleep that is too short on a loaded machine and too long on a quiet one.
package testwait

import (
	"testing"
	"time"
)

// Interval is how often For checks.
const Interval = 20 * time.Millisecond

// For checks cond every Interval until it holds, and fails the test (with
// what, which says what was awaited) if it does not within the given time.
func For(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	Every(t, Interval, within, what, cond)
}

// Every is For, checking every interval: for a check that costs the server
// something, such as a signed request (each needs its own timestamp).
func Every(t testing.TB, interval, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, what)
		}
		time.Sleep(interval)
	}
}
