package quotasim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Faults describe how the simulated shared store (a Redis, say) misbehaves.
// The zero Faults is a store that answers every call at once.
type Faults struct {
	// Latency is a call's typical round trip: each call made on a
	// client's behalf draws one uniformly from [Latency/2, 3·Latency/2].
	Latency time.Duration
	// SpikeRate is the probability that a call's round trip is a spike
	// instead, drawn uniformly from [Spike/2, 2·Spike].
	SpikeRate float64
	Spike     time.Duration
	// Timeout is the caller's timeout (a Redis client's read timeout); 0
	// is none. A call whose round trip exceeds it fails with
	// quota.ErrUnavailable after Timeout. Its effect reaches the store
	// half-way through the round trip: before the caller gives up (done,
	// reply lost), after it (done late, nobody told), or, with
	// probability DropRate, never. These are the unknown outcomes.
	Timeout  time.Duration
	DropRate float64
	// Outages take the store away for intervals.
	Outages []Outage
}

// Outage is an interval, from the start of the run, during which every call
// to the store fails with quota.ErrUnavailable.
type Outage struct {
	At, For time.Duration
	// Hang makes calls wait for the caller's Timeout before failing (a
	// Redis that accepts connections but does not answer); otherwise
	// they fail at once (connection refused).
	Hang bool
	// Empty brings the store back with every counter and ticket lost (a
	// Redis restarted without persistence). Like the Redis backend, it
	// then answers quota.ErrStateLost to every call until a node's
	// Rebuild has restored the budgets from the ledger of acknowledged
	// settlements. Live reservations and concurrency slots are not in the
	// ledger: they are lost.
	Empty bool
}

// StoreStats count what the fault injector did.
type StoreStats struct {
	Calls       int // calls made on a client's behalf
	Background  int // calls made from an engine's own goroutines
	Down        int // calls refused by an outage or a lost state
	Timeouts    int // calls the caller gave up on
	AppliedLost int // ... whose effect the store applied before the caller gave up
	AppliedLate int // ... whose effect the store applied after the caller gave up
	Dropped     int // ... whose effect never reached the store
	Restarts    int // empty restarts
	Rebuilds    int
}

var (
	errDown = fmt.Errorf("simulated store unreachable: %w", quota.ErrUnavailable)
	errLost = fmt.Errorf("simulated store restarted empty: %w", quota.ErrStateLost)
)

// store is the simulated shared store: a quota.Memory behind a fault
// injector. Every effect is applied under mu, at the bubble's time.
type store struct {
	mu      sync.Mutex
	mem     *quota.Memory
	f       Faults
	start   time.Time
	ended   int  // outages whose end has been processed
	lost    bool // restarted empty, not rebuilt yet
	epoch   int
	readAt  time.Time
	ledger  *ledger
	applied map[string]time.Time // ticket id → when the store issued it
	async   map[time.Time]bool   // scheduled late applies
	stats   StoreStats
	settled func(id string, st quota.Settlement) // told every settle applied
	wg      sync.WaitGroup
}

func newStore(f Faults, start time.Time, l *ledger) *store {
	f.Outages = slices.Clone(f.Outages)
	slices.SortFunc(f.Outages, func(a, b Outage) int { return int(a.At - b.At) })
	return &store{mem: newMemory(), f: f, start: start, ledger: l, applied: map[string]time.Time{}, async: map[time.Time]bool{}}
}

func newMemory() *quota.Memory { return quota.NewMemory(quota.Options{Now: time.Now}) }

// check brings the store's state up to now and reports whether it answers.
// Called with s.mu held.
func (s *store) check() (*Outage, error) {
	at := time.Since(s.start)
	for s.ended < len(s.f.Outages) && s.f.Outages[s.ended].At+s.f.Outages[s.ended].For <= at {
		if s.f.Outages[s.ended].Empty {
			s.mem.Close()
			s.mem = newMemory()
			s.lost = true
			s.stats.Restarts++
		}
		s.ended++
	}
	for i := s.ended; i < len(s.f.Outages); i++ {
		if o := &s.f.Outages[i]; o.At <= at && at < o.At+o.For {
			return o, errDown
		}
	}
	if s.lost {
		return nil, errLost
	}
	return nil, nil
}

// apply runs fn on the store's Memory if the store answers now.
func (s *store) apply(fn func(m *quota.Memory)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.check(); err != nil {
		s.stats.Down++
		return err
	}
	fn(s.mem)
	return nil
}

// rebuild restores the budgets from the ledger after an empty restart, as
// FailoverOptions.Rebuild does from the usage events.
func (s *store) rebuild() (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.check(); err != nil && !errors.Is(err, quota.ErrStateLost) {
		return time.Time{}, err
	}
	if !s.lost {
		return s.readAt, nil
	}
	now := time.Now()
	for _, r := range s.ledger.sums(now) {
		s.mem.Restore(context.Background(), r.key, r.d, r.w, r.start, r.used)
	}
	s.lost = false
	s.epoch++
	s.readAt = now
	s.stats.Rebuilds++
	return now, nil
}

// node is one instance's connection to the store. It implements
// quota.SharedBackend; its Close closes the connection only.
type node struct {
	s      *store
	seen   atomic.Int64 // the epoch this node last saw
	closed atomic.Bool
}

var _ quota.SharedBackend = (*node)(nil)

// do runs fn at the store as a call from ctx's client would reach it. A
// call from an engine's own goroutine (no client in ctx) has no latency and
// no random fault: only outages and lost state apply to it, so that
// goroutines woken by the engine's own timers never race the clients.
func (n *node) do(ctx context.Context, fn func(m *quota.Memory)) error {
	if n.closed.Load() {
		return quota.ErrClosed
	}
	s := n.s
	c := clientOf(ctx)
	if c == nil {
		s.mu.Lock()
		s.stats.Background++
		s.mu.Unlock()
		return s.apply(fn)
	}
	s.mu.Lock()
	s.stats.Calls++
	o, _ := s.check()
	s.mu.Unlock()
	if o != nil {
		if o.Hang && s.f.Timeout > 0 {
			time.Sleep(c.quantize(s.f.Timeout))
		}
		s.mu.Lock()
		s.stats.Down++
		s.mu.Unlock()
		return errDown
	}
	s.mu.Lock() // a client's calls may overlap (an engine refilling several scopes at once): its rnd is shared
	rtt := c.quantize(s.drawRTT(c.rnd))
	s.mu.Unlock()
	half := c.quantize(rtt / 2)
	timeout := c.quantize(s.f.Timeout)
	if s.f.Timeout <= 0 || rtt <= timeout {
		time.Sleep(half)
		err := s.apply(fn)
		if rest := rtt - half; rest > 0 {
			time.Sleep(rest)
		}
		return err
	}
	s.mu.Lock()
	drop := c.rnd.Float64() < s.f.DropRate
	s.stats.Timeouts++
	switch {
	case half < timeout:
		s.stats.AppliedLost++
	case drop:
		s.stats.Dropped++
	default:
		s.stats.AppliedLate++
		// Late applies sit half a microsecond off the clients' grid, so
		// that none wakes at the same instant as a client.
		at := time.Now().Add(half + 500*time.Nanosecond)
		for s.async[at] {
			at = at.Add(c.grid)
		}
		s.async[at] = true
		s.wg.Go(func() {
			time.Sleep(time.Until(at))
			s.apply(fn)
		})
	}
	s.mu.Unlock()
	if half < timeout {
		time.Sleep(half)
		s.apply(fn)
		time.Sleep(timeout - half)
	} else {
		time.Sleep(timeout)
	}
	return fmt.Errorf("simulated timeout after %v: %w", timeout, quota.ErrUnavailable)
}

func (s *store) drawRTT(r *rand.Rand) time.Duration {
	if s.f.SpikeRate > 0 && r.Float64() < s.f.SpikeRate {
		return s.f.Spike/2 + time.Duration(r.Int64N(int64(s.f.Spike)*3/2+1))
	}
	if s.f.Latency <= 0 {
		return 0
	}
	return s.f.Latency/2 + time.Duration(r.Int64N(int64(s.f.Latency)+1))
}

// Acquire implements quota.Backend.
func (n *node) Acquire(ctx context.Context, r quota.Request) (quota.Ticket, error) {
	var (
		t   quota.Ticket
		err error
	)
	if e := n.do(ctx, func(m *quota.Memory) {
		t, err = m.Acquire(ctx, r)
		if err == nil {
			n.s.applied[t.ID] = time.Now()
		}
	}); e != nil {
		return quota.Ticket{}, e
	}
	return t, err
}

// Settle implements quota.Backend.
func (n *node) Settle(ctx context.Context, id string, u quota.Usage) (quota.Settlement, error) {
	var (
		s   quota.Settlement
		err error
	)
	if e := n.do(ctx, func(m *quota.Memory) {
		s, err = m.Settle(ctx, id, u)
		if err == nil && n.s.settled != nil {
			n.s.settled(id, s)
		}
	}); e != nil {
		return quota.Settlement{}, e
	}
	return s, err
}

// Heartbeat implements quota.Backend.
func (n *node) Heartbeat(ctx context.Context, id string, ttl time.Duration) (time.Time, error) {
	var (
		exp time.Time
		err error
	)
	if e := n.do(ctx, func(m *quota.Memory) { exp, err = m.Heartbeat(ctx, id, ttl) }); e != nil {
		return time.Time{}, e
	}
	return exp, err
}

// Lookup implements quota.Backend.
func (n *node) Lookup(ctx context.Context, id string) (quota.TicketInfo, error) {
	var (
		info quota.TicketInfo
		err  error
	)
	if e := n.do(ctx, func(m *quota.Memory) { info, err = m.Lookup(ctx, id) }); e != nil {
		return quota.TicketInfo{}, e
	}
	return info, err
}

// Use implements quota.Backend.
func (n *node) Use(ctx context.Context, key string) (quota.ScopeUse, error) {
	var (
		u   quota.ScopeUse
		err error
	)
	if e := n.do(ctx, func(m *quota.Memory) { u, err = m.Use(ctx, key) }); e != nil {
		return quota.ScopeUse{}, e
	}
	return u, err
}

// Restore implements quota.Backend.
func (n *node) Restore(ctx context.Context, key string, d quota.Dimension, w quota.Window, start time.Time, used int64) error {
	var err error
	if e := n.do(ctx, func(m *quota.Memory) { err = m.Restore(ctx, key, d, w, start, used) }); e != nil {
		return e
	}
	return err
}

// Charge implements quota.Charger.
func (n *node) Charge(ctx context.Context, id string, chain []quota.Scope, u quota.Usage, at time.Time) error {
	var err error
	if e := n.do(ctx, func(m *quota.Memory) { err = m.Charge(ctx, id, chain, u, at) }); e != nil {
		return e
	}
	return err
}

// Close closes this node's connection; the store lives on.
func (n *node) Close() error {
	n.closed.Store(true)
	return nil
}

// probe answers as a Redis backend's Probe does: unreachable, state lost
// (restarted empty, or rebuilt since this node last saw it), or fine.
func (n *node) probe(context.Context) error {
	s := n.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.check(); err != nil {
		return err
	}
	if n.seen.Load() != int64(s.epoch) {
		return fmt.Errorf("simulated store rebuilt since last seen: %w", quota.ErrStateLost)
	}
	return nil
}

func (n *node) rebuild(context.Context) (time.Time, error) {
	at, err := n.s.rebuild()
	if err == nil {
		n.s.mu.Lock()
		n.seen.Store(int64(n.s.epoch))
		n.s.mu.Unlock()
	}
	return at, err
}

// issuedAt reports when the store issued ticket id, and forgets it.
func (s *store) issuedAt(id string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.applied[id]
	delete(s.applied, id)
	return at, ok
}
