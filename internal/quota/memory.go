package quota

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
	"unsafe"
)

// Defaults for Options.
const (
	DefaultTTL              = 5 * time.Minute
	DefaultMaxTTL           = 24 * time.Hour
	DefaultSettledRetention = 24 * time.Hour
	DefaultMaxSettled       = 1 << 16
)

// concurrencyHint is the RetryAfter of a concurrency denial: slots free when
// some holder settles, which the engine cannot predict.
const concurrencyHint = time.Second

// Options configure a Memory backend. Zero fields take the defaults.
type Options struct {
	// Now is the clock, called without the engine's lock held, so it must
	// be safe for concurrent use; time.Now by default. Tests pass a fake.
	Now func() time.Time
	// DefaultTTL is the life of a ticket whose Request.TTL is 0.
	DefaultTTL time.Duration
	// MaxTTL caps Request.TTL and Heartbeat's ttl.
	MaxTTL time.Duration
	// SettledRetention is how long a settled ticket's Settlement is kept
	// so that a repeated Settle returns it instead of ErrUnknownTicket,
	// and how long an expired ticket is remembered for a late Settle.
	SettledRetention time.Duration
	// MaxSettled bounds how many settlements are kept: the settlement of
	// a ticket is forgotten once SettledRetention has passed or a ticket
	// issued MaxSettled tickets later has settled, whichever comes first.
	// Each costs about 120 bytes, allocated up front, plus its Meta. It
	// bounds the expired tickets remembered likewise.
	MaxSettled int
}

// Memory is the in-process Backend: one mutex guards every counter, so a
// whole chain is checked and charged atomically. Nothing slow happens under
// the mutex: no I/O, no allocation on the steady-state path beyond the
// occasional ticket ID block. It starts no goroutines: expired tickets are
// reclaimed at the start of every operation, from a heap ordered by expiry,
// so what an operation observes is always exact. Memory stays bounded: a
// scope's state is dropped, a few at a time as admissions go by, once it
// holds nothing (no live tickets, no use in its current windows, drained
// rate buckets), settlements live in a fixed ring, and expired tickets are
// remembered for the same retention, at most MaxSettled of them.
//
// Ticket IDs are "tkt_", 128 bits from a ChaCha8 stream seeded from the
// operating system's CSPRNG, and a sequence number: the number finds the
// ticket in O(1), and the whole ID must match, so IDs cannot be guessed.
type Memory struct {
	now        func() time.Time
	defaultTTL int64
	maxTTL     int64

	mu       sync.Mutex
	closed   bool
	last     int64 // latest time seen; the engine's time never goes back
	scopes   map[string]*scopeState
	cals     map[string]*calendar // by time zone name
	tickets  map[uint64]*ticket   // by sequence number
	expiry   ticketHeap
	free     []*ticket
	settled  settledLog
	expired  map[uint64]*expiredTicket // by sequence number
	expiredQ []*expiredTicket          // in order of expiry, for forgetting
	scratch  []*scopeState
	created  []*scopeState
	rng      *rand.ChaCha8
	idBlock  []byte
	seq      uint64
	ops      uint64
	charged  map[string]int64 // Charge ids seen, with when

	retention  int64
	maxExpired int
}

// expiredTicket is what a late Settle needs of a ticket that expired.
type expiredTicket struct {
	id                string
	seq               uint64
	meta              string
	tokens, gpu, cost int64
	expires, at       int64   // when it was to expire, and when it was found expired
	chain             []Scope // keys and zones of the scopes it charged
}

var _ Backend = (*Memory)(nil)

// scopeState is one scope's counters.
type scopeState struct {
	key string
	loc *time.Location // Loc last seen, to skip the calendar lookup
	cal *calendar      // nil until the scope appears in a chain (restored only)

	dayStart, dayEnd     int64
	monthStart, monthEnd int64
	tokensDay            int64
	tokensMonth          int64
	gpuMillis            int64
	costMicros           int64
	inflight             int64
	refs                 int64 // live tickets that charged this scope

	requests, tokens gcra
}

// ticket is a live reservation.
type ticket struct {
	id      string
	meta    string
	seq     uint64 // the counter in id; 0 is never issued
	expires int64
	heapIdx int
	tokens  int64
	gpu     int64
	cost    int64
	slot    bool
	charges []charge
}

// charge is what a ticket charged to one scope.
type charge struct {
	st          *scopeState
	day, month  int64 // starts of the windows the reservation went to
	tokensRated bool  // the reservation was charged to tokens_rate
}

// NewMemory returns an in-process backend.
func NewMemory(o Options) *Memory {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = DefaultTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	o.DefaultTTL = min(o.DefaultTTL, o.MaxTTL)
	if o.SettledRetention <= 0 {
		o.SettledRetention = DefaultSettledRetention
	}
	if o.MaxSettled <= 0 {
		o.MaxSettled = DefaultMaxSettled
	}
	var seed [32]byte
	crand.Read(seed[:]) // never fails (Go 1.24+); it panics rather than return weak bytes
	return &Memory{
		now:        o.Now,
		defaultTTL: int64(o.DefaultTTL),
		maxTTL:     int64(o.MaxTTL),
		scopes:     make(map[string]*scopeState),
		cals:       make(map[string]*calendar),
		tickets:    make(map[uint64]*ticket),
		settled:    newSettledLog(o.MaxSettled, int64(o.SettledRetention)),
		expired:    make(map[uint64]*expiredTicket),
		rng:        rand.NewChaCha8(seed),
		retention:  int64(o.SettledRetention),
		maxExpired: o.MaxSettled,
	}
}

// Close drops all state. Later calls return ErrClosed.
func (e *Memory) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	e.scopes, e.tickets, e.cals, e.expiry, e.free = nil, nil, nil, nil, nil
	e.settled, e.expired, e.expiredQ = settledLog{}, nil, nil
	return nil
}

// begin takes the time, which it reads before locking, as the engine's now
// and reclaims expired tickets. Called with e.mu held.
func (e *Memory) begin(now int64) (int64, error) {
	if e.closed {
		return 0, ErrClosed
	}
	if now < e.last {
		now = e.last
	}
	e.last = now
	for len(e.expiry) > 0 && e.expiry[0].expires <= now {
		t := e.expiry.pop()
		e.remember(t, now)
		e.release(t, now, false, 0, 0, 0)
		delete(e.tickets, t.seq)
		e.recycle(t)
	}
	for len(e.expiredQ) > 0 {
		x := e.expiredQ[0]
		if x.at+e.retention > now && len(e.expiredQ) <= e.maxExpired {
			break
		}
		e.expiredQ[0] = nil
		e.expiredQ = e.expiredQ[1:]
		if e.expired[x.seq] == x {
			delete(e.expired, x.seq)
		}
	}
	return now, nil
}

// remember keeps what a late Settle of an expiring ticket needs. Expiry is
// off the hot path, so this may allocate.
func (e *Memory) remember(t *ticket, now int64) {
	x := &expiredTicket{id: t.id, seq: t.seq, meta: t.meta, tokens: t.tokens, gpu: t.gpu, cost: t.cost,
		expires: t.expires, at: now, chain: make([]Scope, len(t.charges))}
	for i, c := range t.charges {
		x.chain[i] = Scope{Key: c.st.key, Loc: c.st.loc}
	}
	e.expired[t.seq] = x
	e.expiredQ = append(e.expiredQ, x)
}

func (e *Memory) ttl(d time.Duration) int64 {
	if d <= 0 {
		return e.defaultTTL
	}
	return min(int64(d), e.maxTTL)
}

// Acquire implements Backend.
func (e *Memory) Acquire(ctx context.Context, r Request) (Ticket, error) {
	if err := ctx.Err(); err != nil {
		return Ticket{}, err
	}
	a := &r.Ask
	if a.Requests < 0 || a.Tokens < 0 || a.MinTokens < 0 || a.GPUMillis < 0 || a.CostMicros < 0 {
		return Ticket{}, fmt.Errorf("acquire: negative ask: %w", ErrInvalid)
	}
	if len(r.Chain) == 0 {
		return Ticket{}, fmt.Errorf("acquire: empty chain: %w", ErrInvalid)
	}
	if len(r.Meta) > MaxMetaBytes {
		return Ticket{}, fmt.Errorf("acquire: meta of %d bytes above %d: %w", len(r.Meta), MaxMetaBytes, ErrInvalid)
	}
	wall := e.now().UnixNano()

	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return Ticket{}, err
	}
	states, err := e.resolve(r.Chain, now)
	if err != nil {
		return Ticket{}, err
	}

	// Check everything before charging anything. With MinTokens the checks
	// ask for the minimum, and fit tracks the most tokens that fit
	// everywhere.
	need := a.Tokens
	clamp := a.MinTokens > 0 && a.MinTokens < a.Tokens
	if clamp {
		need = a.MinTokens
	}
	fit := a.Tokens
	for i := range r.Chain {
		l := r.Chain[i].Limits
		if l == nil {
			continue
		}
		st := states[i]
		if a.Model != "" && len(l.Models) > 0 && !slices.Contains(l.Models, a.Model) {
			return Ticket{}, e.deny(&Denial{Code: CodeModelNotAllowed, Scope: st.key, Dimension: DimModel, Model: a.Model})
		}
		if a.Requests > 0 {
			if d := checkRate(&st.requests, l.Requests, now, a.Requests, st.key, DimRequests); d != nil {
				return Ticket{}, e.deny(d)
			}
		}
		if need > 0 {
			if d := checkRate(&st.tokens, l.TokensRate, now, need, st.key, DimTokensRate); d != nil {
				return Ticket{}, e.deny(d)
			}
			if clamp && l.TokensRate != (Rate{}) {
				fit = min(fit, st.tokens.avail(now))
			}
			if d := checkBudget(l.TokensDay, st.tokensDay, need, st.key, DimTokens, WindowDay, now, st.dayEnd); d != nil {
				return Ticket{}, e.deny(d)
			}
			if d := checkBudget(l.TokensMonth, st.tokensMonth, need, st.key, DimTokens, WindowMonth, now, st.monthEnd); d != nil {
				return Ticket{}, e.deny(d)
			}
			if clamp {
				if n := l.TokensDay.limit(); n >= 0 {
					fit = min(fit, n-st.tokensDay)
				}
				if n := l.TokensMonth.limit(); n >= 0 {
					fit = min(fit, n-st.tokensMonth)
				}
			}
		}
		if a.GPUMillis > 0 {
			if d := checkBudget(l.GPUMillisMonth, st.gpuMillis, a.GPUMillis, st.key, DimGPUSeconds, WindowMonth, now, st.monthEnd); d != nil {
				return Ticket{}, e.deny(d)
			}
		}
		if a.CostMicros > 0 {
			if d := checkBudget(l.CostMicrosMonth, st.costMicros, a.CostMicros, st.key, DimCost, WindowMonth, now, st.monthEnd); d != nil {
				return Ticket{}, e.deny(d)
			}
		}
		if a.Concurrency {
			if n := l.Concurrency.limit(); n >= 0 && st.inflight >= n {
				d := &Denial{Code: CodeRateLimited, Scope: st.key, Dimension: DimConcurrency,
					Limit: n, Used: st.inflight, Requested: 1}
				if n > 0 {
					d.RetryAfter = concurrencyHint
					d.ResetAt = time.Unix(0, now).Add(concurrencyHint).UTC()
				}
				return Ticket{}, e.deny(d)
			}
		}
	}
	grant := a.Tokens
	if clamp && fit < grant {
		grant = fit // >= MinTokens: every check passed with it
	}

	t := e.newTicket()
	t.tokens, t.gpu, t.cost, t.slot, t.meta = grant, a.GPUMillis, a.CostMicros, a.Concurrency, r.Meta
	t.expires = now + e.ttl(r.TTL)
	out := Ticket{ID: t.id, Tokens: grant, Clamped: grant < a.Tokens, ExpiresAt: time.Unix(0, t.expires).UTC()}
	var rem remainingSet
	for i := range r.Chain {
		st := states[i]
		l := r.Chain[i].Limits
		rated := false
		if l != nil {
			if a.Requests > 0 && l.Requests != (Rate{}) {
				st.requests.charge(now, a.Requests)
			}
			if grant > 0 && l.TokensRate != (Rate{}) {
				st.tokens.charge(now, grant)
				rated = true
			}
		}
		st.tokensDay = sadd(st.tokensDay, grant)
		st.tokensMonth = sadd(st.tokensMonth, grant)
		st.gpuMillis = sadd(st.gpuMillis, a.GPUMillis)
		st.costMicros = sadd(st.costMicros, a.CostMicros)
		if a.Concurrency {
			st.inflight++
		}
		st.refs++
		t.charges = append(t.charges, charge{st: st, day: st.dayStart, month: st.monthStart, tokensRated: rated})
		if l != nil {
			rem.add(st, l, now)
			out.Caps.tighten(&l.Caps)
		}
	}
	rem.fill(&out.Remaining)
	e.tickets[t.seq] = t
	e.expiry.push(t)
	e.created = e.created[:0]

	e.ops++
	if e.ops%1024 == 0 {
		e.evictSome(now)
	}
	return out, nil
}

// resolve returns the state of every scope of the chain, creating missing
// ones (remembered in e.created, so that a denial can drop them again), with
// windows rolled to now.
func (e *Memory) resolve(chain []Scope, now int64) ([]*scopeState, error) {
	states := e.scratch[:0]
	e.created = e.created[:0]
	for i := range chain {
		sc := &chain[i]
		st := e.scopes[sc.Key]
		if st == nil {
			if sc.Key == "" {
				e.dropCreated()
				return nil, fmt.Errorf("acquire: empty scope key: %w", ErrInvalid)
			}
			st = &scopeState{key: sc.Key}
			e.scopes[sc.Key] = st
			e.created = append(e.created, st)
		}
		for _, prev := range states {
			if prev == st {
				e.dropCreated()
				return nil, fmt.Errorf("acquire: scope %s twice in chain: %w", sc.Key, ErrInvalid)
			}
		}
		loc := sc.Loc
		if loc == nil {
			loc = time.UTC
		}
		if loc != st.loc {
			e.bind(st, loc, now)
		}
		st.roll(now)
		states = append(states, st)
	}
	e.scratch = states
	return states, nil
}

// bind points the scope at the calendar of loc. Locations are compared by
// name, since time.LoadLocation returns a new *Location on every call.
func (e *Memory) bind(st *scopeState, loc *time.Location, now int64) {
	st.loc = loc
	name := loc.String()
	if st.cal != nil && st.cal.loc.String() == name {
		return
	}
	c := e.cals[name]
	if c == nil {
		c = newCalendar(loc)
		e.cals[name] = c
	}
	if st.cal != nil {
		// The time zone changed: finish the current windows in the old
		// zone, then carry the counts into the new zone's windows rather
		// than resetting them (a zone change must not free a budget).
		st.roll(now)
		st.cal = c
		st.dayStart, st.dayEnd = c.day(now)
		st.monthStart, st.monthEnd = c.month(now)
		return
	}
	// First sight of the scope: counters exist only if restored, and only
	// count if restored for the current window.
	st.cal = c
	ds, de := c.day(now)
	if st.dayStart != ds {
		st.tokensDay = 0
	}
	ms, me := c.month(now)
	if st.monthStart != ms {
		st.tokensMonth, st.gpuMillis, st.costMicros = 0, 0, 0
	}
	st.dayStart, st.dayEnd, st.monthStart, st.monthEnd = ds, de, ms, me
}

// roll starts new windows whose predecessors have ended.
func (st *scopeState) roll(now int64) {
	if st.cal == nil {
		return
	}
	if now >= st.dayEnd {
		st.dayStart, st.dayEnd = st.cal.day(now)
		st.tokensDay = 0
	}
	if now >= st.monthEnd {
		st.monthStart, st.monthEnd = st.cal.month(now)
		st.tokensMonth, st.gpuMillis, st.costMicros = 0, 0, 0
	}
}

// deny undoes the creation of states this call made and returns d.
func (e *Memory) deny(d *Denial) error {
	e.dropCreated()
	return d
}

func (e *Memory) dropCreated() {
	for _, st := range e.created {
		delete(e.scopes, st.key)
	}
	e.created = e.created[:0]
}

// checkRate checks an ask of n against a rate; it returns nil when it fits or
// r limits nothing.
func checkRate(g *gcra, r Rate, now, n int64, key string, dim Dimension) *Denial {
	rt, ok, deny := rateOf(r)
	if !ok {
		return nil
	}
	if deny {
		return &Denial{Code: CodeRateLimited, Scope: key, Dimension: dim, Limit: max(r.Limit, 0),
			Period: r.Period, Requested: n}
	}
	g.use(rt, now)
	_, _, wait, fits := g.check(now, uint64(n))
	if fits {
		return nil
	}
	d := &Denial{Code: CodeRateLimited, Scope: key, Dimension: dim, Limit: r.Limit, Period: r.Period,
		Used: g.used(now), Requested: n, ResetAt: time.Unix(0, g.emptyAt(now)).UTC()}
	if wait > 0 {
		d.RetryAfter = time.Duration(wait)
	}
	return d
}

// charge admits n units, already checked.
func (g *gcra) charge(now, n int64) {
	q, r, _, _ := g.check(now, uint64(n))
	g.set(now, q, r)
}

// checkBudget checks an ask of n against budget b with used spent in the
// window ending at end.
func checkBudget(b Bound, used, n int64, key string, dim Dimension, w Window, now, end int64) *Denial {
	lim := b.limit()
	if lim < 0 || n <= lim-used {
		return nil
	}
	d := &Denial{Code: CodeQuotaExceeded, Scope: key, Dimension: dim, Window: w,
		Limit: lim, Used: used, Requested: n, ResetAt: time.Unix(0, end).UTC()}
	if n <= lim {
		d.RetryAfter = time.Duration(end - now)
	}
	return d
}

// tighten lowers each cap of c to the non-zero cap of o when that is tighter.
func (c *Caps) tighten(o *Caps) {
	c.MemoryPerRun = minCap(c.MemoryPerRun, o.MemoryPerRun)
	c.RunTimeout = time.Duration(minCap(int64(c.RunTimeout), int64(o.RunTimeout)))
	c.MaxSteps = minCap(c.MaxSteps, o.MaxSteps)
	c.MaxTokensPerCall = minCap(c.MaxTokensPerCall, o.MaxTokensPerCall)
}

func minCap(a, b int64) int64 {
	if b > 0 && (a == 0 || b < a) {
		return b
	}
	return a
}

// sadd adds without overflowing.
func sadd(a, b int64) int64 {
	s := a + b
	if b > 0 && s < a {
		return math.MaxInt64
	}
	return s
}

// remainingSet accumulates the tightest remaining amount per meter.
type remainingSet struct {
	r   [NumMeters]Remaining
	set [NumMeters]bool
}

func (rs *remainingSet) offer(m int, key string, limit int64, period time.Duration, left int64, reset int64) {
	if rs.set[m] && left >= rs.r[m].Remaining {
		return
	}
	rs.set[m] = true
	rs.r[m] = Remaining{Scope: key, Limit: limit, Period: period, Remaining: max(left, 0)}
	if reset != 0 {
		rs.r[m].ResetAt = time.Unix(0, reset).UTC()
	}
}

func (rs *remainingSet) add(st *scopeState, l *Limits, now int64) {
	if rt, ok, deny := rateOf(l.Requests); ok {
		left, reset := int64(0), now
		if !deny {
			st.requests.use(rt, now)
			left, reset = st.requests.avail(now), st.requests.emptyAt(now)
		}
		rs.offer(meterRequests, st.key, l.Requests.Limit, l.Requests.Period, left, reset)
	}
	if rt, ok, deny := rateOf(l.TokensRate); ok {
		left, reset := int64(0), now
		if !deny {
			st.tokens.use(rt, now)
			left, reset = st.tokens.avail(now), st.tokens.emptyAt(now)
		}
		rs.offer(meterTokensRate, st.key, l.TokensRate.Limit, l.TokensRate.Period, left, reset)
	}
	if n := l.TokensDay.limit(); n >= 0 {
		rs.offer(meterTokensDay, st.key, n, 0, n-st.tokensDay, st.dayEnd)
	}
	if n := l.TokensMonth.limit(); n >= 0 {
		rs.offer(meterTokensMonth, st.key, n, 0, n-st.tokensMonth, st.monthEnd)
	}
	if n := l.GPUMillisMonth.limit(); n >= 0 {
		rs.offer(meterGPU, st.key, n, 0, n-st.gpuMillis, st.monthEnd)
	}
	if n := l.CostMicrosMonth.limit(); n >= 0 {
		rs.offer(meterCost, st.key, n, 0, n-st.costMicros, st.monthEnd)
	}
	if n := l.Concurrency.limit(); n >= 0 {
		rs.offer(meterConcurrency, st.key, n, 0, n-st.inflight, 0)
	}
}

func (rs *remainingSet) fill(out *[NumMeters]Remaining) {
	*out = rs.r
	for m := range out {
		out[m].Dimension, out[m].Window = meters[m].d, meters[m].w
	}
}

// release replaces the ticket's reservations with actual use on every scope
// it charged and frees its slot; an expiry is a release with no use. A
// reservation made in a window that has since ended died with that window;
// the actual use goes to the current one. Only a settle adjusts tokens_rate:
// an expired reservation's time has passed, and refunding it then would let
// a burst through that the rate never allowed.
func (e *Memory) release(t *ticket, now int64, settle bool, tokens, gpu, cost int64) {
	for i := range t.charges {
		c := &t.charges[i]
		st := c.st
		st.roll(now)
		if st.dayStart == c.day {
			st.tokensDay = max(sadd(st.tokensDay, tokens-t.tokens), 0)
		} else {
			st.tokensDay = sadd(st.tokensDay, tokens)
		}
		if st.monthStart == c.month {
			st.tokensMonth = max(sadd(st.tokensMonth, tokens-t.tokens), 0)
			st.gpuMillis = max(sadd(st.gpuMillis, gpu-t.gpu), 0)
			st.costMicros = max(sadd(st.costMicros, cost-t.cost), 0)
		} else {
			st.tokensMonth = sadd(st.tokensMonth, tokens)
			st.gpuMillis = sadd(st.gpuMillis, gpu)
			st.costMicros = sadd(st.costMicros, cost)
		}
		if settle && c.tokensRated {
			st.tokens.adjust(now, tokens-t.tokens)
		}
		if t.slot {
			st.inflight--
		}
		st.refs--
		c.st = nil
	}
	t.charges = t.charges[:0]
}

// Settle implements Backend.
func (e *Memory) Settle(_ context.Context, id string, u Usage) (Settlement, error) {
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return Settlement{}, fmt.Errorf("settle %s: negative usage: %w", id, ErrInvalid)
	}
	wall := e.now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return Settlement{}, err
	}
	seq := parseID(id)
	t := e.tickets[seq]
	if t == nil || t.id != id {
		if s, ok := e.settled.get(seq, id, now); ok {
			s.Replay = true
			return s, nil
		}
		if x := e.expired[seq]; x != nil && x.id == id {
			return e.settleLate(x, u, now), nil
		}
		return Settlement{}, fmt.Errorf("settle %s: %w", id, ErrUnknownTicket)
	}
	tokens := sadd(u.InputTokens, u.OutputTokens)
	s := Settlement{
		TicketID:           t.id,
		Usage:              u,
		ReservedTokens:     t.tokens,
		ReservedGPUMillis:  t.gpu,
		ReservedCostMicros: t.cost,
		Overrun:            tokens > t.tokens || u.GPUMillis > t.gpu || u.CostMicros > t.cost,
		SettledAt:          time.Unix(0, now).UTC(),
		Meta:               t.meta,
	}
	e.release(t, now, true, tokens, u.GPUMillis, u.CostMicros)
	e.expiry.remove(t)
	delete(e.tickets, t.seq)
	e.settled.put(t.seq, now, &s)
	e.recycle(t)
	return s, nil
}

// settleLate settles an expired ticket: its reservation was refunded at
// expiry, so the use is charged to the current windows of its scopes as
// it is. tokens_rate is left alone, as by an expiry and by Charge. Called
// with e.mu held.
func (e *Memory) settleLate(x *expiredTicket, u Usage, now int64) Settlement {
	tokens := sadd(u.InputTokens, u.OutputTokens)
	// The chain was valid when admitted, so resolve cannot fail.
	if states, err := e.resolve(x.chain, now); err == nil {
		for _, st := range states {
			st.tokensDay = sadd(st.tokensDay, tokens)
			st.tokensMonth = sadd(st.tokensMonth, tokens)
			st.gpuMillis = sadd(st.gpuMillis, u.GPUMillis)
			st.costMicros = sadd(st.costMicros, u.CostMicros)
		}
		e.created = e.created[:0]
	}
	s := Settlement{
		TicketID:           x.id,
		Usage:              u,
		ReservedTokens:     x.tokens,
		ReservedGPUMillis:  x.gpu,
		ReservedCostMicros: x.cost,
		Overrun:            tokens > x.tokens || u.GPUMillis > x.gpu || u.CostMicros > x.cost,
		SettledAt:          time.Unix(0, now).UTC(),
		Late:               true,
		Meta:               x.meta,
	}
	delete(e.expired, x.seq)
	e.settled.put(x.seq, now, &s)
	return s
}

// Lookup implements Backend.
func (e *Memory) Lookup(_ context.Context, id string) (TicketInfo, error) {
	wall := e.now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return TicketInfo{}, err
	}
	seq := parseID(id)
	if t := e.tickets[seq]; t != nil && t.id == id {
		return TicketInfo{ID: id, Meta: t.meta, ExpiresAt: time.Unix(0, t.expires).UTC(),
			Tokens: t.tokens, GPUMillis: t.gpu, CostMicros: t.cost}, nil
	}
	if s, ok := e.settled.get(seq, id, now); ok {
		return TicketInfo{ID: id, Meta: s.Meta, Tokens: s.ReservedTokens, GPUMillis: s.ReservedGPUMillis,
			CostMicros: s.ReservedCostMicros, Settled: true}, nil
	}
	if x := e.expired[seq]; x != nil && x.id == id {
		return TicketInfo{ID: id, Meta: x.meta, ExpiresAt: time.Unix(0, x.expires).UTC(),
			Tokens: x.tokens, GPUMillis: x.gpu, CostMicros: x.cost, Expired: true}, nil
	}
	return TicketInfo{}, fmt.Errorf("lookup %s: %w", id, ErrUnknownTicket)
}

// Heartbeat implements Backend.
func (e *Memory) Heartbeat(_ context.Context, id string, ttl time.Duration) (time.Time, error) {
	wall := e.now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return time.Time{}, err
	}
	t := e.tickets[parseID(id)]
	if t == nil || t.id != id {
		return time.Time{}, fmt.Errorf("heartbeat %s: %w", id, ErrUnknownTicket)
	}
	t.expires = now + e.ttl(ttl)
	e.expiry.fix(t)
	return time.Unix(0, t.expires).UTC(), nil
}

// Use implements Backend.
func (e *Memory) Use(_ context.Context, key string) (ScopeUse, error) {
	wall := e.now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return ScopeUse{}, err
	}
	u := ScopeUse{Key: key}
	st := e.scopes[key]
	if st == nil {
		return u, nil
	}
	st.roll(now)
	day, month := WindowUse{Start: unixTime(st.dayStart)}, WindowUse{Start: unixTime(st.monthStart)}
	if st.cal != nil {
		day.End, month.End = unixTime(st.dayEnd), unixTime(st.monthEnd)
	}
	u.TokensDay, u.TokensMonth, u.GPUMillis, u.CostMicros = day, month, month, month
	u.TokensDay.Used = st.tokensDay
	u.TokensMonth.Used = st.tokensMonth
	u.GPUMillis.Used = st.gpuMillis
	u.CostMicros.Used = st.costMicros
	u.Concurrency = st.inflight
	u.Requests = rateUse(&st.requests, now)
	u.TokensRate = rateUse(&st.tokens, now)
	return u, nil
}

func rateUse(g *gcra, now int64) RateUse {
	if g.lim == 0 {
		return RateUse{}
	}
	return RateUse{Level: g.used(now), NextAt: unixTime(g.nextAt(now)), EmptyAt: unixTime(g.emptyAt(now))}
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// Restore implements Backend. A window is current when it holds now in the
// scope's time zone. For a scope not yet seen in a chain the zone is unknown:
// the counter is kept if windowStart is plausibly current (within the last
// 26 hours for a day, 32 days for a month) and checked exactly when the scope
// first appears in a chain.
func (e *Memory) Restore(_ context.Context, key string, d Dimension, w Window, windowStart time.Time, used int64) error {
	switch {
	case key == "":
		return fmt.Errorf("restore: empty scope key: %w", ErrInvalid)
	case used < 0:
		return fmt.Errorf("restore %s: negative use: %w", key, ErrInvalid)
	case d == DimTokens && (w == WindowDay || w == WindowMonth),
		(d == DimGPUSeconds || d == DimCost) && w == WindowMonth:
	default:
		return fmt.Errorf("restore %s: %s/%s is not a budget: %w", key, d, w, ErrInvalid)
	}
	wall := e.now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return err
	}
	ws := windowStart.UnixNano()
	st := e.scopes[key]
	if st != nil && st.cal != nil {
		st.roll(now)
		if w == WindowDay && ws != st.dayStart || w == WindowMonth && ws != st.monthStart {
			return nil
		}
	} else {
		span := 26 * time.Hour
		if w == WindowMonth {
			span = 32 * 24 * time.Hour
		}
		if ws > now || ws <= now-int64(span) {
			return nil
		}
		if st == nil {
			st = &scopeState{key: key}
			e.scopes[key] = st
		}
		// A month window restored for another start replaces the
		// counters that share it.
		if w == WindowDay {
			st.dayStart = ws
		} else if st.monthStart != ws {
			st.monthStart = ws
			st.tokensMonth, st.gpuMillis, st.costMicros = 0, 0, 0
		}
	}
	switch {
	case d == DimTokens && w == WindowDay:
		st.tokensDay = used
	case d == DimTokens:
		st.tokensMonth = used
	case d == DimGPUSeconds:
		st.gpuMillis = used
	default:
		st.costMicros = used
	}
	return nil
}

// evictSome drops a few scope states that hold nothing: no live tickets, no
// use in their current windows, drained rate buckets. Dropping them loses
// nothing, since a new state starts from exactly those zeros; it bounds
// memory to the scopes active in the current month. Map iteration starts at
// a random place, so repeated calls sample the whole map.
func (e *Memory) evictSome(now int64) {
	n := 0
	for key, st := range e.scopes {
		if st.idle(now) {
			delete(e.scopes, key)
		}
		if n++; n == 32 {
			return
		}
	}
}

func (st *scopeState) idle(now int64) bool {
	if st.refs != 0 || st.inflight != 0 || st.cal == nil {
		return false
	}
	st.roll(now)
	return st.tokensDay == 0 && st.tokensMonth == 0 && st.gpuMillis == 0 && st.costMicros == 0 &&
		st.requests.tat < now && st.tokens.tat < now
}

// newTicket takes a ticket from the free list and gives it a fresh ID.
func (e *Memory) newTicket() *ticket {
	var t *ticket
	if n := len(e.free); n > 0 {
		t = e.free[n-1]
		e.free = e.free[:n-1]
	} else {
		t = &ticket{}
	}
	e.seq++
	t.seq = e.seq
	t.id = e.newID(t.seq)
	return t
}

func (e *Memory) recycle(t *ticket) {
	t.id, t.meta = "", ""
	if len(e.free) < 1024 {
		e.free = append(e.free, t)
	}
}

// idAlphabet is internal/id's: Crockford's base32, lower case.
const idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// Ticket IDs are idPrefix, idRandom base32 digits of 128 random bits, and
// the sequence number in base32 (at most 13 digits).
const (
	idPrefix = "tkt_"
	idRandom = 26
	idMaxLen = len(idPrefix) + idRandom + 13
)

// newID returns a unique, unguessable ticket ID. IDs are carved out of 4
// KiB blocks with unsafe.String, which saves an allocation per ticket;
// bytes of a block are written once, before the string that views them
// exists, and never again, so the strings are truly immutable. A block
// stays alive while any ID in it does.
func (e *Memory) newID(seq uint64) string {
	if cap(e.idBlock)-len(e.idBlock) < idMaxLen {
		e.idBlock = make([]byte, 0, 4096)
	}
	start := len(e.idBlock)
	e.idBlock = append(e.idBlock, idPrefix...)
	e.idBlock = appendRandom(e.idBlock, e.rng.Uint64(), e.rng.Uint64())
	e.idBlock = appendBase32(e.idBlock, seq)
	b := e.idBlock[start:]
	return unsafe.String(&b[0], len(b))
}

// appendRandom appends 128 bits as 26 base32 digits.
func appendRandom(dst []byte, hi, lo uint64) []byte {
	for i := 0; i < idRandom; i++ {
		dst = append(dst, idAlphabet[lo&31])
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return dst
}

// appendBase32 appends n in base32, most significant digit first.
func appendBase32(dst []byte, n uint64) []byte {
	var buf [13]byte
	i := len(buf)
	for {
		i--
		buf[i] = idAlphabet[n&31]
		n >>= 5
		if n == 0 {
			break
		}
	}
	return append(dst, buf[i:]...)
}

// parseID returns the sequence number in a ticket ID, or 0. Tickets are
// indexed by it (hashing a uint64 is cheaper than a string); the caller
// compares the whole ID.
func parseID(id string) uint64 {
	const p = len(idPrefix) + idRandom
	if len(id) <= p || len(id) > idMaxLen || id[:len(idPrefix)] != idPrefix {
		return 0
	}
	var seq uint64
	for i := p; i < len(id); i++ {
		c := id[i]
		var d uint64
		switch {
		case '0' <= c && c <= '9':
			d = uint64(c - '0')
		case 'a' <= c && c <= 'z':
			k := idDigit[c-'a']
			if k == 0 {
				return 0
			}
			d = uint64(k)
		default:
			return 0
		}
		if seq>>59 != 0 {
			return 0
		}
		seq = seq<<5 | d
	}
	return seq
}

// idDigit maps a lower-case letter to its base32 value, 0 if not a digit.
var idDigit = func() (m [26]byte) {
	for i := 10; i < len(idAlphabet); i++ {
		m[idAlphabet[i]-'a'] = byte(i)
	}
	return m
}()

// ticketHeap orders live tickets by expiry.
type ticketHeap []*ticket

func (h *ticketHeap) push(t *ticket) {
	t.heapIdx = len(*h)
	*h = append(*h, t)
	h.up(t.heapIdx)
}

func (h *ticketHeap) pop() *ticket {
	t := (*h)[0]
	h.remove(t)
	return t
}

func (h *ticketHeap) remove(t *ticket) {
	s := *h
	i, last := t.heapIdx, len(s)-1
	if i != last {
		s[i] = s[last]
		s[i].heapIdx = i
	}
	s[last] = nil
	*h = s[:last]
	if i != last {
		h.fixAt(i)
	}
	t.heapIdx = -1
}

func (h *ticketHeap) fix(t *ticket) { h.fixAt(t.heapIdx) }

func (h *ticketHeap) fixAt(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h ticketHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].expires <= h[i].expires {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h ticketHeap) down(i int) bool {
	i0 := i
	for {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if r := c + 1; r < len(h) && h[r].expires < h[c].expires {
			c = r
		}
		if h[i].expires <= h[c].expires {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i > i0
}

func (h ticketHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}

// settledLog remembers recent settlements for idempotent replays in a ring
// indexed by ticket sequence number, so it needs no map and no eviction: the
// settlement of ticket n is forgotten when its retention passes or when
// ticket n+len(ring) settles, whichever comes first.
type settledLog struct {
	ring      []settledRecord
	retention int64
}

type settledRecord struct {
	seq uint64
	at  int64
	s   Settlement
}

func newSettledLog(size int, retention int64) settledLog {
	return settledLog{ring: make([]settledRecord, size), retention: retention}
}

func (l *settledLog) put(seq uint64, now int64, s *Settlement) {
	r := &l.ring[seq%uint64(len(l.ring))]
	r.seq, r.at, r.s = seq, now, *s
}

func (l *settledLog) get(seq uint64, id string, now int64) (Settlement, bool) {
	if seq == 0 {
		return Settlement{}, false
	}
	r := &l.ring[seq%uint64(len(l.ring))]
	if r.seq != seq || r.s.TicketID != id || r.at+l.retention <= now {
		return Settlement{}, false
	}
	return r.s, true
}

// fillRates makes the requests and tokens_rate buckets of every limited
// scope of chain at least full as of now, as if each had just admitted its
// burst: the next unit is admitted only once the rate has freed it. A
// Failover calls it when it starts deciding locally, so that entering
// degraded mode grants no fresh burst on top of what the shared buckets
// admitted just before. Buckets already fuller are left alone.
func (e *Memory) fillRates(chain []Scope) {
	wall := e.now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return
	}
	for i := range chain {
		l := chain[i].Limits
		if l == nil || chain[i].Key == "" {
			continue
		}
		st := e.scopes[chain[i].Key]
		if st == nil {
			st = &scopeState{key: chain[i].Key}
			e.scopes[st.key] = st
		}
		fill(&st.requests, l.Requests, now)
		fill(&st.tokens, l.TokensRate, now)
	}
}

// fill sets g's level to its capacity unless it is already at least that.
func fill(g *gcra, r Rate, now int64) {
	rt, ok, deny := rateOf(r)
	if !ok || deny {
		return
	}
	g.use(rt, now)
	lq, lr := g.level(now)
	if lq > g.cq || lq == g.cq && lr >= g.cr {
		return
	}
	g.set(now, g.cq, g.cr)
}
