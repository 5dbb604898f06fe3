package quotasim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Node is what a Factory gets to build one instance of the engine under
// test.
type Node struct {
	ID        int // 0 … Instances-1
	Instances int
	// Shared is this instance's connection to the simulated store. Its
	// Close closes the connection, not the store.
	Shared quota.SharedBackend
	// Now is the simulated clock. Inside the simulation time.Now reads the
	// same clock, so an engine that calls time.Now is simulated too.
	Now func() time.Time
	// Probe and Rebuild behave as the Redis backend's do, for
	// quota.FailoverOptions: Probe reports quota.ErrUnavailable during an
	// outage and quota.ErrStateLost after an empty restart (or a rebuild
	// this node has not seen); Rebuild restores the budgets from the
	// ledger of acknowledged settlements.
	Probe   func(ctx context.Context) error
	Rebuild func(ctx context.Context) (time.Time, error)
	// OnMode counts an engine's mode changes in the Report
	// (quota.FailoverOptions.OnMode).
	OnMode func(mode string)
}

// Factory builds the engine of one instance. The simulation closes it at
// the end.
type Factory func(n Node) quota.Backend

// ProbeInterval is a probe period for engines under simulation: 250 ms and
// a nanosecond, so that a probe never fires at the same instant as a client
// (clients act on whole microseconds) within the first 4 minutes of an
// outage. Two goroutines woken at one instant would race.
const ProbeInterval = 250*time.Millisecond + time.Nanosecond

// Tree is the workload's scope tree: global → tenants → projects → users,
// one client per user, and the limits at each level (nil: none). Every
// scope is in UTC.
type Tree struct {
	Tenants, ProjectsPerTenant, UsersPerProject int
	Global, Tenant, Project, User               *quota.Limits
}

// DefaultTree is a tree whose limits all bind under the default load:
// requests at the global and user levels, tokens per minute, tokens per day
// (global and tenant, so that the tightest scope moves between them) and
// per month, GPU and cost per month, concurrency at tenants and users.
func DefaultTree() Tree {
	return Tree{Tenants: 4, ProjectsPerTenant: 2, UsersPerProject: 3,
		Global: &quota.Limits{Requests: quota.Rate{Limit: 600, Period: time.Minute, Burst: 50}, TokensDay: quota.AtMost(400_000),
			OnOutage: quota.OutageLocal},
		Tenant: &quota.Limits{TokensRate: quota.Rate{Limit: 20_000, Period: time.Minute, Burst: 4_000}, TokensDay: quota.AtMost(120_000),
			Concurrency: quota.AtMost(5), CostMicrosMonth: quota.AtMost(400_000), OnOutage: quota.OutageLocal},
		Project: &quota.Limits{TokensMonth: quota.AtMost(80_000), GPUMillisMonth: quota.AtMost(150_000), OnOutage: quota.OutageLocal},
		User:    &quota.Limits{Requests: quota.Rate{Limit: 30, Period: time.Minute, Burst: 5}, Concurrency: quota.AtMost(2), OnOutage: quota.OutageLocal},
	}
}

// Scenario is one simulated deployment and its workload. Zero fields take
// the defaults.
type Scenario struct {
	Name string
	Seed uint64
	// Instances is the number of engines sharing the store (default 3).
	Instances int
	// Duration is the simulated time the clients run (default 20 min).
	Duration time.Duration
	// Start is the simulated start (default 2000-01-31 23:50 UTC, so that
	// a day and a month window roll over ten minutes in).
	Start time.Time
	// MeanGap is the mean pause between a client's actions (default
	// 150 ms); MaxHeld bounds the tickets a client holds (default 4).
	MeanGap time.Duration
	MaxHeld int
	Faults  Faults
	Tree    Tree // default DefaultTree()
}

func (sc Scenario) withDefaults() Scenario {
	if sc.Instances <= 0 {
		sc.Instances = 3
	}
	if sc.Duration <= 0 {
		sc.Duration = 20 * time.Minute
	}
	if sc.Start.IsZero() {
		sc.Start = time.Date(2000, 1, 31, 23, 50, 0, 0, time.UTC)
	}
	if sc.MeanGap <= 0 {
		sc.MeanGap = 150 * time.Millisecond
	}
	if sc.MaxHeld <= 0 {
		sc.MaxHeld = 4
	}
	if sc.Tree.Tenants == 0 {
		sc.Tree = DefaultTree()
	}
	return sc
}

// Report is what a run observed.
type Report struct {
	Scenario string
	Seed     uint64
	// Digest summarises the oracle's events: equal seeds give equal
	// digests.
	Digest uint64

	Acquires, Admitted, Denied, Unavailable, OtherErrors int
	Settled, Late, SettleFailed, Unknown, Abandoned      int
	Heartbeats                                           int
	Store                                                StoreStats
	Modes                                                int // mode changes an engine reported (Failover's OnMode)

	// Violations counts every breach; Breaches sums them by invariant and
	// scope ("requests global"); First holds the first few in order.
	Violations int
	Breaches   map[string]*Breach
	First      []Violation
	// Overflow is set if a rate check overflowed int64 and was skipped.
	Overflow bool
}

// Worst returns the largest excess over every breach of invariant inv (all
// invariants if inv is ""), and the breach's violation.
func (r *Report) Worst(inv string) (float64, Violation) {
	var w Violation
	best := 0.0
	for _, b := range r.Breaches {
		if (inv == "" || b.Worst.Invariant == inv) && b.Worst.Excess() > best {
			best, w = b.Worst.Excess(), b.Worst
		}
	}
	return best, w
}

// Count returns the violations of invariant inv.
func (r *Report) Count(inv string) int {
	n := 0
	for _, b := range r.Breaches {
		if b.Worst.Invariant == inv {
			n += b.Count
		}
	}
	return n
}

// String summarises the run; a failing run names its seed, so that it can
// be replayed.
func (r *Report) String() string {
	s := fmt.Sprintf("scenario %q seed %d: %d acquires, %d admitted, %d denied, %d unavailable, %d other errors; "+
		"%d settled (%d late), %d settles failed, %d unknown, %d abandoned, %d heartbeats; %d mode changes; store %+v; %d violations",
		r.Scenario, r.Seed, r.Acquires, r.Admitted, r.Denied, r.Unavailable, r.OtherErrors,
		r.Settled, r.Late, r.SettleFailed, r.Unknown, r.Abandoned, r.Heartbeats, r.Modes, r.Store, r.Violations)
	return s + r.summary()
}

// Run simulates sc with engines from f and returns what the oracle saw. It
// runs in a synctest bubble: time is simulated, and goroutines run one at
// a time in an order fixed by the seed. It calls t only to make the
// bubble; it fails t only if the bubble deadlocks (an engine holding a
// mutex across a call to the store would).
func Run(t *testing.T, f Factory, sc Scenario) *Report {
	t.Helper()
	var r *Report
	synctest.Test(t, func(*testing.T) { r = simulate(f, sc) })
	return r
}

// Check runs each scenario and fails t on any violation: it is the strict
// assertion for an engine that claims never to over-admit.
func Check(t *testing.T, f Factory, scenarios ...Scenario) {
	t.Helper()
	for _, sc := range scenarios {
		r := Run(t, f, sc)
		if r.Violations > 0 || r.Overflow {
			t.Errorf("over-admission: %s", r)
		} else {
			t.Logf("%s", r)
		}
	}
}

type clientKey struct{}

// client is one simulated caller. Its times are whole microseconds
// congruent to its index modulo the number of clients (its grid), so that
// no two clients wake at the same instant.
type client struct {
	id   int
	rnd  *rand.Rand
	grid time.Duration
}

func clientOf(ctx context.Context) *client {
	c, _ := ctx.Value(clientKey{}).(*client)
	return c
}

// quantize rounds d up to the client's grid, at least one step.
func (c *client) quantize(d time.Duration) time.Duration {
	n := (d + c.grid - 1) / c.grid
	return max(n, 1) * c.grid
}

// held is a ticket a client holds.
type held struct {
	t     quota.Ticket
	ask   quota.Ask
	tried bool        // a settle was attempted
	u     quota.Usage // the use it settles
}

type sim struct {
	sc      Scenario
	o       *oracle
	st      *store
	led     *ledger
	engines []quota.Backend
	chains  [][]quota.Scope
	rep     *Report
	end     time.Time
}

func simulate(f Factory, sc Scenario) *Report {
	sc = sc.withDefaults()
	time.Sleep(time.Until(sc.Start))
	start := time.Now()
	rep := &Report{Scenario: sc.Name, Seed: sc.Seed}
	s := &sim{sc: sc, rep: rep, led: &ledger{}, end: start.Add(sc.Duration)}
	limits := s.buildChains()
	s.o = newOracle(start, limits, rep)
	s.st = newStore(sc.Faults, start, s.led)
	s.st.settled = s.o.storeSettled
	onMode := func(string) { s.count(func(r *Report) { r.Modes++ }) }
	for i := range sc.Instances {
		n := &node{s: s.st}
		s.engines = append(s.engines, f(Node{ID: i, Instances: sc.Instances, Shared: n, Now: time.Now, Probe: n.probe, Rebuild: n.rebuild, OnMode: onMode}))
	}
	var wg sync.WaitGroup
	grid := time.Duration(len(s.chains)) * time.Microsecond
	for i := range s.chains {
		c := &client{id: i, rnd: rand.New(rand.NewPCG(sc.Seed, uint64(i)+1)), grid: grid}
		wg.Go(func() {
			time.Sleep(time.Duration(i+1) * time.Microsecond)
			s.runClient(c)
		})
	}
	wg.Wait()
	for _, e := range s.engines {
		e.Close()
	}
	s.st.wg.Wait()
	s.o.mu.Lock()
	s.o.flush(true)
	rep.Digest = s.o.digest
	s.o.mu.Unlock()
	s.st.mu.Lock()
	rep.Store = s.st.stats
	s.st.mem.Close()
	s.st.mu.Unlock()
	return rep
}

// buildChains makes one chain per client and returns every scope's limits.
func (s *sim) buildChains() map[string]*quota.Limits {
	tr := s.sc.Tree
	limits := map[string]*quota.Limits{"global": tr.Global}
	for ti := range tr.Tenants {
		tk := fmt.Sprintf("t/%d", ti)
		limits[tk] = tr.Tenant
		for p := range tr.ProjectsPerTenant {
			pk := fmt.Sprintf("p/%d.%d", ti, p)
			limits[pk] = tr.Project
			for u := range tr.UsersPerProject {
				uk := fmt.Sprintf("u/%d.%d.%d", ti, p, u)
				limits[uk] = tr.User
				s.chains = append(s.chains, []quota.Scope{
					{Key: "global", Limits: tr.Global}, {Key: tk, Limits: tr.Tenant},
					{Key: pk, Limits: tr.Project}, {Key: uk, Limits: tr.User}})
			}
		}
	}
	return limits
}

func (s *sim) runClient(c *client) {
	ctx := context.WithValue(context.Background(), clientKey{}, c)
	chain := s.chains[c.id]
	var hs []*held
	for {
		gap := time.Duration(c.rnd.ExpFloat64() * float64(s.sc.MeanGap))
		time.Sleep(c.quantize(gap))
		if !time.Now().Before(s.end) {
			return
		}
		e := s.engines[c.rnd.IntN(len(s.engines))]
		p := c.rnd.Float64()
		switch {
		case len(hs) > 0 && p < 0.40:
			i := c.rnd.IntN(len(hs))
			if s.settle(ctx, c, e, hs[i]) {
				hs = append(hs[:i], hs[i+1:]...)
			}
		case len(hs) > 0 && p < 0.45:
			i := c.rnd.IntN(len(hs))
			hs = append(hs[:i], hs[i+1:]...) // abandoned: it will expire
			s.count(func(r *Report) { r.Abandoned++ })
		case len(hs) > 0 && p < 0.52:
			s.heartbeat(ctx, c, e, hs[c.rnd.IntN(len(hs))])
		case len(hs) < s.sc.MaxHeld:
			if h := s.acquire(ctx, c, e, chain); h != nil {
				hs = append(hs, h)
			}
		}
	}
}

func (s *sim) count(f func(r *Report)) {
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	f(s.rep)
}

func randomAsk(r *rand.Rand) quota.Ask {
	a := quota.Ask{Requests: 1, Concurrency: r.IntN(2) == 0}
	if r.Float64() < 0.7 {
		a.Tokens = 50 + r.Int64N(1500)
		if r.IntN(5) == 0 {
			a.MinTokens = a.Tokens / 4
		}
	}
	if r.IntN(5) == 0 {
		a.GPUMillis = 100 + r.Int64N(5000)
	}
	if r.IntN(3) == 0 {
		a.CostMicros = 10 + r.Int64N(2000)
	}
	return a
}

func (s *sim) acquire(ctx context.Context, c *client, e quota.Backend, chain []quota.Scope) *held {
	ask := randomAsk(c.rnd)
	ttl := 10*time.Second + time.Duration(c.rnd.Int64N(int64(50*time.Second)))
	call := s.o.begin()
	t, err := e.Acquire(ctx, quota.Request{Chain: chain, Ask: ask, TTL: ttl})
	now := time.Now()
	var d *quota.Denial
	switch {
	case err == nil:
		ot := &oticket{id: t.ID, ask: ask, tokens: t.Tokens, expires: t.ExpiresAt}
		decided, ok := s.st.issuedAt(t.ID)
		if !ok {
			decided = now
		}
		ot.decided, ot.fromStore = decided, ok
		for m := range ot.windows {
			ot.windows[m] = windowOf(decided, m)
		}
		s.o.mu.Lock()
		for _, sc := range chain {
			ot.chain = append(ot.chain, s.o.scopes[sc.Key])
		}
		s.o.tickets[t.ID] = ot
		s.rep.Acquires++
		s.rep.Admitted++
		s.o.mu.Unlock()
		s.o.end(call, event{at: decided, kind: evRate, t: ot}, event{at: now, kind: evHold, t: ot})
		return &held{t: t, ask: ask}
	case errors.As(err, &d):
		s.count(func(r *Report) { r.Acquires++; r.Denied++ })
	case errors.Is(err, quota.ErrUnavailable):
		s.count(func(r *Report) { r.Acquires++; r.Unavailable++ })
	default:
		s.count(func(r *Report) { r.Acquires++; r.OtherErrors++ })
	}
	s.o.end(call)
	return nil
}

// randomUse is a ticket's actual use: mostly under its reservation, at
// times none, at times over it (charged anyway).
func randomUse(r *rand.Rand, h *held) quota.Usage {
	f := func(v int64) int64 {
		if v <= 0 {
			return 0
		}
		switch p := r.Float64(); {
		case p < 0.1:
			return 0
		case p < 0.2:
			return v + r.Int64N(v/2+1)
		default:
			return r.Int64N(v + 1)
		}
	}
	tokens := f(h.t.Tokens)
	in := r.Int64N(tokens + 1)
	return quota.Usage{InputTokens: in, OutputTokens: tokens - in, GPUMillis: f(h.ask.GPUMillis), CostMicros: f(h.ask.CostMicros)}
}

// settle reports whether the client is done with the ticket. The work
// ended at the first attempt: the oracle releases the ticket's slot and
// reservations and counts its use from that attempt's start, whatever the
// engine answered; a failed attempt is retried later, perhaps elsewhere,
// with the same use.
func (s *sim) settle(ctx context.Context, c *client, e quota.Backend, h *held) bool {
	first := !h.tried
	if first {
		h.tried, h.u = true, randomUse(c.rnd, h)
	}
	call := s.o.begin()
	start := s.o.startOf(call)
	st, err := e.Settle(ctx, h.t.ID, h.u)
	now := time.Now()
	s.o.mu.Lock()
	ot := s.o.tickets[h.t.ID]
	done := true
	switch {
	case err == nil:
		s.rep.Settled++
		if st.Late {
			s.rep.Late++
		}
	case errors.Is(err, quota.ErrUnknownTicket):
		s.rep.Unknown++ // expired long ago, or lost with the store
	default:
		s.rep.SettleFailed++
		done = false
	}
	s.o.mu.Unlock()
	if err == nil && !st.Replay {
		s.led.add(now, chainOf(ot), st.Usage)
	}
	if !first {
		s.o.end(call)
		return done
	}
	late := err != nil || st.Late || st.Replay || !ot.expires.After(now)
	s.o.end(call, event{at: start, kind: evRelease, t: ot, u: h.u, late: late})
	return done
}

func chainOf(t *oticket) []quota.Scope {
	out := make([]quota.Scope, len(t.chain))
	for i, sc := range t.chain {
		out[i] = quota.Scope{Key: sc.key}
	}
	return out
}

func (s *sim) heartbeat(ctx context.Context, c *client, e quota.Backend, h *held) {
	// A heartbeat extends: a lost reply then leaves the store holding
	// the ticket longer than the client thinks, the safe side.
	ttl := time.Until(h.t.ExpiresAt) + 5*time.Second + time.Duration(c.rnd.Int64N(int64(30*time.Second)))
	call := s.o.begin()
	exp, err := e.Heartbeat(ctx, h.t.ID, ttl)
	if err == nil {
		h.t.ExpiresAt = exp
	}
	now := time.Now()
	s.count(func(r *Report) { r.Heartbeats++ })
	if err != nil {
		s.o.end(call)
		return
	}
	s.o.mu.Lock()
	ot := s.o.tickets[h.t.ID]
	s.o.mu.Unlock()
	s.o.end(call, event{at: now, kind: evExtend, t: ot, exp: exp})
}
