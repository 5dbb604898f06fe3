// Package quotatest is the test suite every quota.Backend must pass, whatever
// stores its counters: Run exercises admission, settlement, expiry, calendar
// windows and the quota invariants through the Backend interface only, with
// time under the suite's control through a Clock.
package quotatest

import (
	"sync"
	"time"
)

// Clock is the suite's virtual clock. Time stands still until the suite
// moves it. A backend under test must take every "now" from Clock.Now: the
// in-process backend through quota.Options.Now; a networked one by sending
// Clock.Now with each call in place of the server's time (a test-only hook),
// since the suite checks exact waits and window boundaries.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock that reads t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t. The suite sets it once before a test's first
// operation and only moves it forward afterwards.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}
