package leasequota

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Leases is what the engine needs of the shared lease store. *Store is the
// Redis one; the simulation adapts a quota.SharedBackend to it.
type Leases interface {
	Grant(ctx context.Context, requestID, instance string, sc Scope, ttl time.Duration, wants []Want) (GrantResult, error)
	Return(ctx context.Context, requestID, instance string, sc Scope, gives []Give) (ReturnResult, error)
	Renew(ctx context.Context, instance, tenant string, ttl time.Duration, scopes []Renewal) (RenewResult, error)
}

var _ Leases = (*Store)(nil)

// grantBatcher is a Leases that takes the grants of many scopes of one tag
// in one call (*Store: two round trips a batch rather than two a scope).
type grantBatcher interface {
	GrantBatch(ctx context.Context, instance, tenant string, ttl time.Duration, calls []BatchCall) ([]GrantResult, error)
}

var _ grantBatcher = (*Store)(nil)

// Defaults for EngineOptions.
const (
	DefaultPinAsks  = 4
	DefaultLeaseTTL = 10 * time.Second
	DefaultRefresh  = 100 * time.Millisecond
	DefaultHorizon  = time.Second
)

// EngineOptions configure an Engine. Zero fields take the defaults.
type EngineOptions struct {
	// Instance names this engine in the lease records; random by default.
	Instance string
	// Now is the clock (tests); time.Now by default. Rate deadlines and
	// ticket expiries are counted on it.
	Now func() time.Time
	// Tenant maps a scope key to the tenant whose hash tag holds it; nil
	// puts every scope on the global tag. With ChainTenants it is asked
	// only of keys met outside a chain (Use, Restore) and not held
	// already, and its error fails the call: a key must never change tag
	// (two tags would be two counters, each admitting up to the limit).
	Tenant func(scopeKey string) (string, error)
	// ChainTenants takes a chain scope's tag from its quota.Scope.Tenant.
	ChainTenants bool
	// Instances is how many engines share the store (it sizes the
	// fraction of what remains one refill may take); default 1.
	Instances func() int
	// LeaseTTL is the life of a lease record without renewal (10 s).
	LeaseTTL time.Duration
	// Refresh is the period of the background refill, return and renewal
	// (100 ms); it must be well under Validity, since rate units lapse.
	Refresh time.Duration
	// Horizon is how much demand a refill aims to hold (1 s).
	Horizon time.Duration
	// Validity is the store's Options.Validity: how long after a rate
	// grant was sent its units may be spent (250 ms).
	Validity time.Duration
	// DefaultTTL and MaxTTL are the tickets' (quota.Options's defaults).
	DefaultTTL, MaxTTL time.Duration
	// SettledRetention is how long settled and expired tickets are
	// remembered (1 h).
	SettledRetention time.Duration
	// RecordAfter is how old a live ticket gets before it is recorded in
	// the store, settleable on any instance (50 ms); RecordEvery how often
	// the recorder runs (20 ms). See engine_tickets.go.
	RecordAfter, RecordEvery time.Duration
	// PinAsks is how many of the largest ask seen a lease's pin leaves
	// room for beyond a quarter horizon of demand (default 4; negative for
	// none): decisions that fit need no store call, and a crash strands
	// that much more (pinMargin).
	PinAsks int
}

// Engine is the budget-lease quota engine of doc.go: it decides in process
// against leases taken from the store, and goes to the store only to refill
// them. It implements quota.Backend.
type Engine struct {
	st        Leases
	inst      string
	now       func() time.Time
	instances func() int
	o         EngineOptions
	validity  time.Duration // spend margin included

	mu        sync.Mutex
	scopes    map[string]*lscope
	tickets   map[string]*ticket
	nextExp   time.Time // earliest expiry of a live ticket
	rnd       *rand.ChaCha8
	seq       uint64
	closed    bool
	lastSweep time.Time
	done      []string // settled and expired tickets, oldest first

	// Ticket records (engine_tickets.go); ts is nil when the store
	// cannot keep them.
	ts              ticketStore
	recIO           ioLock          // held by record calls; a sweep waits for them
	pending         []*ticket       // issued, not yet recorded, oldest first
	recTags         map[string]bool // tags this engine recorded tickets on
	sweepTags       map[string]bool // tags with a recorded ticket expired, to sweep
	lastTicketSweep time.Time

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ quota.Backend = (*Engine)(nil)

// unitLot is one rate grant's units and when they lapse.
type unitLot struct {
	n        int64
	deadline time.Time
}

// lmeter is this instance's lease on one meter of one scope.
type lmeter struct {
	avail  int64     // budgets and slots: granted, not spent locally
	g      int64     // the store's idea of the lease (Grant's Held)
	window time.Time // budgets: the window avail belongs to
	lots   []unitLot // rates, earliest deadline first
	limit  int64     // budget or slot limit the lease was taken under
	rate   quota.Rate
	// remaining is what the store said was left after the last grant (−1
	// unknown); spent counts local charges since the last refresh, and
	// demand is their EWMA per refresh.
	remaining int64
	// stale marks a budget or slot lease taken under another limit: it is
	// returned before the next grant and spends nothing meanwhile.
	stale bool
	// ret is the part of avail on its way back to the store: spendable no
	// more, still counted here until the return lands, so that what
	// remains (avail + remaining) stays right while the call is out.
	ret int64
	// committed is what this instance spent or reserved of the lease that
	// the store does not know as such (local reservations and settled use
	// of tickets not recorded): a reclaim after a crash must keep it. pin
	// bounds what decisions may commit (pinRoom): the pin the store
	// acknowledged for the lease, lowered before a lower one is sent, with
	// pinSeq the sequence number of the latest pin sent (type Pin).
	committed, pin int64
	pinSeq         uint64
	maxTTL         time.Duration // concurrency: the longest TTL of a ticket issued on it
	spent          int64
	demand         float64
	maxAsk         int64
	idle           int
	active         bool
	// bucket is a rate's bucket as the store last showed it (known once
	// it has): what remains of the rate, exactly while no other instance
	// spends it.
	bucket quota.Bucket
	known  bool
	// wstart and wend cache the budget window containing the last time
	// asked (time.Date in a location is the decision's dearest step).
	wstart, wend time.Time
}

// lscope is the local state of one scope.
type lscope struct {
	sc         Scope
	loc        *time.Location
	m          [NumMeters]lmeter
	validUntil time.Time // the lease record's expiry, by this clock
	// gen counts the leases this scope lost to a reclaim: a reservation of
	// an older lease gives nothing back to the current one.
	gen uint64
	// io serialises this scope's grants and returns, so that a decision
	// that found its lease short sees in the store what a return in flight
	// was giving back.
	io ioLock
	// unsent are grants and returns whose outcome is unknown (the call
	// failed: Redis may have carried it out and lost the reply), sent
	// again with the same request id until the store says what it did
	// (it keeps each id's first reply for Options.ReplayTTL). A return's
	// amounts stay set aside in ret meanwhile, neither spendable nor given
	// up; a grant's are not counted until its reply comes.
	unsent []unsentCall
}

// unsentCall is a Grant (wants; overrun: past the limit, spent at once) or
// a Return (gives) to send again with its request id.
type unsentCall struct {
	id      string
	gives   []Give
	wants   []Want
	overrun bool
}

// ioLock is a mutex held across store calls. It is a channel, not a
// sync.Mutex: a goroutine waiting on a channel is durably blocked, so a
// testing/synctest bubble (the simulation) can advance its clock while one
// waits for another's store call.
type ioLock struct{ c chan struct{} }

func newIOLock() ioLock { return ioLock{c: make(chan struct{}, 1)} }

func (l ioLock) Lock()   { l.c <- struct{}{} }
func (l ioLock) Unlock() { <-l.c }

// reservation is what a ticket holds on one meter of one scope.
type reservation struct {
	s      *lscope
	m      Meter
	amt    int64
	window time.Time
	gen    uint64
	// direct marks tokens_rate units decided in the store (refunds go back
	// there), rather than spent from a lease's lots.
	direct bool
	rate   quota.Rate
}

type ticket struct {
	id                string
	meta              string
	expires           time.Time
	tokens, gpu, cost int64
	res               []reservation
	settled           *quota.Settlement
	expired           bool
	doneAt            time.Time
	// Recording (engine_tickets.go): when it was issued (on the monotonic
	// clock: RecordAfter is a matter of latency, not of quota), the tenants of
	// the hash tags its chain touches (nil: kept in process only), which
	// tags a record call was sent to (tried) and which recorded it (recd),
	// as bits by index in tags; busy is closed when a record call of it
	// in flight ends.
	issued      time.Time
	tags        []string
	tried, recd uint8
	busy        chan struct{}
}

// NewEngine returns an engine on st and starts its background refill,
// which Close stops.
func NewEngine(st Leases, o EngineOptions) (*Engine, error) {
	if st == nil {
		return nil, fmt.Errorf("leasequota: nil store: %w", quota.ErrInvalid)
	}
	var seed [32]byte
	crand.Read(seed[:])
	if o.Instance == "" {
		o.Instance = "i-" + hex.EncodeToString(seed[:6])
		crand.Read(seed[:])
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Tenant == nil {
		o.Tenant = func(string) (string, error) { return "", nil }
	}
	if o.Instances == nil {
		o.Instances = func() int { return 1 }
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.Refresh <= 0 {
		o.Refresh = DefaultRefresh
	}
	if o.Horizon <= 0 {
		o.Horizon = DefaultHorizon
	}
	if o.Validity <= 0 {
		o.Validity = DefaultValidity
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = quota.DefaultTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = quota.DefaultMaxTTL
	}
	o.DefaultTTL = min(o.DefaultTTL, o.MaxTTL)
	if o.SettledRetention <= 0 {
		o.SettledRetention = time.Hour
	}
	if o.RecordAfter <= 0 {
		o.RecordAfter = DefaultRecordAfter
	}
	if o.RecordEvery <= 0 {
		o.RecordEvery = DefaultRecordEvery
	}
	switch {
	case o.PinAsks == 0:
		o.PinAsks = DefaultPinAsks
	case o.PinAsks < 0:
		o.PinAsks = 0
	}
	e := &Engine{
		st: st, inst: o.Instance, now: o.Now, instances: o.Instances, o: o,
		validity:  o.Validity - o.Validity/10,
		scopes:    map[string]*lscope{},
		tickets:   map[string]*ticket{},
		rnd:       rand.NewChaCha8(seed),
		recTags:   map[string]bool{},
		recIO:     newIOLock(),
		sweepTags: map[string]bool{},
	}
	e.ts, _ = st.(ticketStore)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.loop(ctx)
	}()
	if e.ts != nil {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.recordLoop(ctx)
		}()
	}
	return e, nil
}

// Instance returns the engine's instance name.
func (e *Engine) Instance() string { return e.inst }

// windowStart returns the start of the budget window of meter m at now.
func windowStart(now time.Time, loc *time.Location, m Meter) time.Time {
	if loc == nil {
		loc = time.UTC
	}
	t := now.In(loc)
	if m == MeterTokensDay {
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc)
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, loc)
}

func windowEnd(start time.Time, m Meter) time.Time {
	if m == MeterTokensDay {
		return start.AddDate(0, 0, 1)
	}
	return start.AddDate(0, 1, 0)
}

// limitOf returns meter m's limit in l: a bound for budgets and slots, a
// rate for rates; ok is false when l does not limit m.
func limitOf(l *quota.Limits, m Meter) (bound int64, rate quota.Rate, ok bool) {
	if l == nil {
		if m.isRate() {
			return 0, quota.Rate{}, false
		}
		return unbounded, quota.Rate{}, true
	}
	var b quota.Bound
	switch m {
	case MeterRequests:
		return 0, l.Requests, !l.Requests.IsZero()
	case MeterTokensRate:
		return 0, l.TokensRate, !l.TokensRate.IsZero()
	case MeterTokensDay:
		b = l.TokensDay
	case MeterTokensMonth:
		b = l.TokensMonth
	case MeterGPU:
		b = l.GPUMillisMonth
	case MeterCost:
		b = l.CostMicrosMonth
	case MeterConcurrency:
		b = l.Concurrency
	}
	n, set := b.Max()
	if !set || n >= unbounded {
		// Counted, not limited (a limit beyond 2^50 limits nothing the
		// store's exact arithmetic could count).
		return unbounded, quota.Rate{}, true
	}
	return n, quota.Rate{}, true
}

// unknownRem marks an lmeter's remaining as not known yet.
const unknownRem = math.MinInt64

// unbounded is the limit of a budget or slot meter that is counted but not
// limited, and of overruns charged past a limit: below 2^53, so that the
// scripts' doubles keep it exact.
const unbounded = 1 << 50

// askOf returns what ask a needs of meter m, with tokens at tokens.
func askOf(a *quota.Ask, m Meter, tokens int64) int64 {
	switch m {
	case MeterRequests:
		return a.Requests
	case MeterTokensRate, MeterTokensDay, MeterTokensMonth:
		return tokens
	case MeterGPU:
		return a.GPUMillis
	case MeterCost:
		return a.CostMicros
	case MeterConcurrency:
		if a.Concurrency {
			return 1
		}
	}
	return 0
}

func isToken(m Meter) bool { return m >= MeterTokensRate && m <= MeterTokensMonth }

// meterDim maps a meter to its dimension and window.
func meterDim(m Meter) (quota.Dimension, quota.Window) {
	switch m {
	case MeterRequests:
		return quota.DimRequests, quota.WindowNone
	case MeterTokensRate:
		return quota.DimTokensRate, quota.WindowNone
	case MeterTokensDay:
		return quota.DimTokens, quota.WindowDay
	case MeterTokensMonth:
		return quota.DimTokens, quota.WindowMonth
	case MeterGPU:
		return quota.DimGPUSeconds, quota.WindowMonth
	case MeterCost:
		return quota.DimCost, quota.WindowMonth
	}
	return quota.DimConcurrency, quota.WindowNone
}

// chainTenant is the tag's tenant of chain scope sc.
func (e *Engine) chainTenant(sc *quota.Scope) string {
	if e.o.ChainTenants {
		return sc.Tenant
	}
	t, _ := e.o.Tenant(sc.Key) // without ChainTenants, a resolver that cannot fail (tests)
	return t
}

// tenant is the tag's tenant of a scope met by key alone: the tag of the
// scope this engine holds, else Tenant's answer.
func (e *Engine) tenant(key string) (string, error) {
	e.mu.Lock()
	s := e.scopes[key]
	e.mu.Unlock()
	if s != nil {
		return s.sc.Tenant, nil
	}
	t, err := e.o.Tenant(key)
	if err != nil {
		return "", fmt.Errorf("the tenant of %s: %w", key, err)
	}
	return t, nil
}

// scope returns the local state of sc, creating it. Called with e.mu held.
func (e *Engine) scope(sc *quota.Scope) *lscope {
	s := e.scopes[sc.Key]
	if s == nil {
		s = &lscope{sc: Scope{Tenant: e.chainTenant(sc), Key: sc.Key}, loc: sc.Loc, io: newIOLock()}
		for i := range s.m {
			s.m[i].remaining = unknownRem
		}
		e.scopes[sc.Key] = s
	}
	if sc.Loc != nil && sc.Loc != s.loc {
		s.loc = sc.Loc
		for i := range s.m {
			s.m[i].wend = time.Time{}
		}
	}
	return s
}

// window returns the start of budget meter m's window at now, in s's
// location. Called with e.mu held.
func (s *lscope) window(m Meter, now time.Time) time.Time {
	lm := &s.m[m]
	if !lm.wend.IsZero() && !now.Before(lm.wstart) && now.Before(lm.wend) {
		return lm.wstart
	}
	w := windowStart(now, s.loc, m)
	lm.wstart, lm.wend = w, windowEnd(w, m)
	return w
}

// sync brings meter m of s to now and to the limits: a budget lease of an
// ended window is void, rate units past their deadline lapse, and a lease
// taken under another limit is given up (returned by the background loop).
// Called with e.mu held.
func (e *Engine) sync(s *lscope, m Meter, now time.Time, bound int64, rate quota.Rate) *lmeter {
	lm := &s.m[m]
	lm.active = true
	if m.isRate() {
		if lm.rate != rate {
			lm.lots, lm.rate, lm.remaining = lm.lots[:0], rate, unknownRem
		}
		i := 0
		for i < len(lm.lots) && !now.Before(lm.lots[i].deadline) {
			i++
		}
		if i > 0 {
			lm.lots = append(lm.lots[:0], lm.lots[i:]...)
		}
		return lm
	}
	if m.isBudget() {
		if w := s.window(m, now); !w.Equal(lm.window) {
			lm.avail, lm.g, lm.window, lm.remaining, lm.ret = 0, 0, w, unknownRem, 0
			lm.committed, lm.pin = 0, 0
		}
	}
	if lm.limit != bound {
		lm.stale = lm.avail-lm.ret > 0 // returned before the next grant
		lm.limit, lm.remaining = bound, unknownRem
	}
	return lm
}

func (lm *lmeter) units() int64 {
	var n int64
	for _, l := range lm.lots {
		n += l.n
	}
	return n
}

func (lm *lmeter) have(m Meter) int64 {
	if m.isRate() {
		return lm.units()
	}
	if lm.stale {
		return 0
	}
	return max(min(lm.avail-lm.ret, lm.pin-lm.committed), 0)
}

// pinRoom is how much more the lease's pin lets this instance commit.
func (lm *lmeter) pinRoom() int64 { return lm.pin - lm.committed }

// pinFor returns the pin to send with a call that lets this instance
// commit extra more, with a margin for the decisions until the next
// renewal, and its sequence number; the lease's bound is lowered to it
// now if it is lower (type Pin). Called with e.mu held.
func (e *Engine) pinFor(lm *lmeter, m Meter, extra int64) (int64, uint64) {
	p := lm.committed + extra + e.pinMargin(lm, m)
	lm.pinSeq++
	lm.pin = min(lm.pin, p)
	return p, lm.pinSeq
}

// pinMargin is the room a pin leaves beyond what is committed: a quarter
// horizon of recent demand (a quarter of what a lease aims to hold) and
// PinAsks of the largest ask seen; the background loop renews when the
// room falls under half of it, and a decision that finds the pin short
// while the lease holds enough raises it with one store call (refillScope).
// The asks matter where demand is low: with a quarter horizon alone, a
// scope seeing a few decisions a second made a store call for nearly
// every one (TestCompareEngines, 3 instances × 2 goroutines: 22,900 pairs/s
// before pins, 525–601 with that margin). It is what a crash strands of a
// lease beyond what the instance had committed; the rest of an unspent
// lease returns when the lease expires.
func (e *Engine) pinMargin(lm *lmeter, m Meter) int64 {
	return max(e.target(lm, m)/4+int64(e.o.PinAsks)*lm.maxAsk, 1)
}

// pinned takes a pin the store acknowledged as the lease's bound, if it is
// the latest sent. Called with e.mu held.
func (lm *lmeter) pinned(m Meter, window time.Time, pin int64, seq uint64) {
	if !m.isRate() && seq == lm.pinSeq && (!m.isBudget() || window.Equal(lm.window)) {
		lm.pin = pin
	}
}

// gave records a return of n that was set aside in ret, with the store's
// figures. A budget whose window ended meanwhile was reset already.
// Called with e.mu held.
func (lm *lmeter) gave(m Meter, window time.Time, n int64, returned, held int64) {
	if m.isBudget() && !window.Equal(lm.window) {
		return
	}
	lm.ret = max(lm.ret-n, 0)
	lm.avail = max(lm.avail-n, 0)
	lm.g = held
	if lm.remaining != unknownRem {
		lm.remaining += returned
	}
}

// take spends n from the lease, which holds it.
func (lm *lmeter) take(m Meter, n int64) {
	lm.spent += n
	lm.maxAsk = max(lm.maxAsk, n)
	if !m.isRate() {
		lm.avail -= n
		lm.committed += n
		return
	}
	for i := 0; n > 0; i++ {
		d := min(n, lm.lots[i].n)
		lm.lots[i].n -= d
		n -= d
	}
	for len(lm.lots) > 0 && lm.lots[0].n == 0 {
		lm.lots = lm.lots[1:]
	}
}

// short is a lease that did not cover a decision.
type short struct {
	i     int // index in the chain
	s     *lscope
	m     Meter
	need  int64 // what the ask needs beyond what the lease has (rates: all of it)
	least int64 // the least of it worth granting (MinTokens); 0 with optional
	full  int64 // what the ask needs of the meter in all
	ask   int64 // what a denial reports as requested (MinTokens when clamped)
	// optional marks a short that only asks for more than the ask needs,
	// or only learns the meter's state: granting nothing is no denial.
	optional bool
}

// paidRate is a rate's units decided in the store for one acquire (the
// direct path): spent when the ticket is issued, put back if it is not.
type paidRate struct {
	i             int
	s             *lscope
	m             Meter
	n             int64
	rate          quota.Rate
	before, after string
	remaining     int64
	emptyAt       time.Time
}

func findPaid(paid []paidRate, i int, m Meter) *paidRate {
	for k := range paid {
		if paid[k].i == i && paid[k].m == m {
			return &paid[k]
		}
	}
	return nil
}

// rateAdj is a change to a rate bucket in the store, made after the lock
// is released: a refund or an overrun of tokens decided there.
type rateAdj struct {
	s     *lscope
	m     Meter
	rate  quota.Rate
	delta int64
}

// maxRounds bounds how often one acquire refills and decides again. A
// round is lost when concurrent decisions spend what the refill brought,
// or when a renewal sent meanwhile supersedes the pin it raised (type
// Pin): under 16 goroutines on one scope 10 rounds ran out for about 1
// decision in 30,000 (TestCompareEngines), which then answered 503.
const maxRounds = 32

// validRequest checks what Acquire and AcquireHeld take.
func validRequest(r *quota.Request) error {
	a := &r.Ask
	if a.Requests < 0 || a.Tokens < 0 || a.MinTokens < 0 || a.GPUMillis < 0 || a.CostMicros < 0 {
		return fmt.Errorf("acquire: negative ask: %w", quota.ErrInvalid)
	}
	if len(r.Chain) == 0 {
		return fmt.Errorf("acquire: empty chain: %w", quota.ErrInvalid)
	}
	if len(r.Meta) > quota.MaxMetaBytes {
		return fmt.Errorf("acquire: meta of %d bytes above %d: %w", len(r.Meta), quota.MaxMetaBytes, quota.ErrInvalid)
	}
	if r.TTL < 0 {
		return fmt.Errorf("acquire: negative ttl: %w", quota.ErrInvalid)
	}
	for i := range r.Chain {
		sc := &r.Chain[i]
		if sc.Key == "" {
			return fmt.Errorf("acquire: empty scope key: %w", quota.ErrInvalid)
		}
		for j := range i {
			if r.Chain[j].Key == sc.Key {
				return fmt.Errorf("acquire: scope %s twice: %w", sc.Key, quota.ErrInvalid)
			}
		}
		if l := sc.Limits; l != nil {
			if err := l.Validate(); err != nil {
				return fmt.Errorf("acquire: scope %s: %w", sc.Key, err)
			}
		}
	}
	return nil
}

// Acquire implements quota.Backend.
func (e *Engine) Acquire(ctx context.Context, r quota.Request) (quota.Ticket, error) {
	if err := ctx.Err(); err != nil {
		return quota.Ticket{}, err
	}
	if err := validRequest(&r); err != nil {
		return quota.Ticket{}, err
	}
	a := &r.Ask
	// quota.Memory checks each scope's model first, then its limits: a
	// model refused at scope j is the denial unless a scope before j
	// refuses the ask, which the scopes before j decide, charging nothing.
	for j := range r.Chain {
		sc := &r.Chain[j]
		if l := sc.Limits; l != nil && a.Model != "" && len(l.Models) > 0 && !slices.Contains(l.Models, a.Model) {
			if j > 0 {
				sub := r
				sub.Chain = r.Chain[:j]
				if _, err := e.acquire(ctx, sub, true); err != nil {
					return quota.Ticket{}, err
				}
			}
			return quota.Ticket{}, &quota.Denial{Code: quota.CodeModelNotAllowed, Scope: sc.Key, Dimension: quota.DimModel, Model: a.Model}
		}
	}
	return e.acquire(ctx, r, false)
}

// acquire decides a validated request: on leases, refilling them from the
// store as needed. With checkOnly it charges nothing and issues no ticket:
// it only finds the denial, if any.
func (e *Engine) acquire(ctx context.Context, r quota.Request, checkOnly bool) (quota.Ticket, error) {
	clamp := r.Ask.MinTokens > 0 && r.Ask.MinTokens < r.Ask.Tokens
	var (
		shorts   []short
		paid     []paidRate
		leased   []leasedUnits
		refilled bool
	)
	// refused gives back what this acquire took from the store and did
	// not spend: rate units decided for it, and the budget and slot
	// leases its refills added. Kept, a slot leased at a department for
	// an ask its project then refused stayed with this instance, counted
	// as used in the store, and other instances were refused "4 of 4"
	// with 3 in use.
	refused := func() {
		e.giveBack(ctx, paid)
		e.giveBackLeased(ctx, leased)
	}
	for round := 0; ; round++ {
		t, sh, renew, adj, err := e.decide(&r, clamp, refilled, checkOnly, false, paid, shorts[:0])
		switch {
		case err != nil:
			refused()
			return quota.Ticket{}, err
		case renew != nil:
			err = e.renewNow(ctx, renew)
		case sh == nil:
			if checkOnly {
				refused()
			}
			e.adjustRates(ctx, adj)
			return t, nil
		case round >= maxRounds:

			err = fmt.Errorf("acquire: leases spent by concurrent decisions %d times: %w", round, ErrUnavailable)
		default:
			shorts, refilled = sh, true
			var d *quota.Denial
			if d, err = e.refill(ctx, &r, shorts, &paid, &leased); d != nil {
				refused()
				return quota.Ticket{}, d
			}
		}
		if err != nil {
			refused()
			return quota.Ticket{}, err
		}
	}
}

var _ quota.HeldDecider = (*Engine)(nil)

// AcquireHeld implements quota.HeldDecider: r decided on what the leases
// hold, calling no store. ErrUnavailable when they do not cover it, or
// are past their validity (the store may have reclaimed them by now), or
// a scope's model list refuses r's model (the local engine then gives
// the denial). A ticket it issues is like any other.
func (e *Engine) AcquireHeld(ctx context.Context, r quota.Request) (quota.Ticket, error) {
	if err := ctx.Err(); err != nil {
		return quota.Ticket{}, err
	}
	if err := validRequest(&r); err != nil {
		return quota.Ticket{}, err
	}
	for j := range r.Chain {
		if l := r.Chain[j].Limits; l != nil && r.Ask.Model != "" && len(l.Models) > 0 && !slices.Contains(l.Models, r.Ask.Model) {
			return quota.Ticket{}, fmt.Errorf("acquire held: model %s refused at %s: %w", r.Ask.Model, r.Chain[j].Key, ErrUnavailable)
		}
	}
	clamp := r.Ask.MinTokens > 0 && r.Ask.MinTokens < r.Ask.Tokens
	// refilled: a clamp takes what the leases hold, down to MinTokens.
	t, sh, renew, _, err := e.decide(&r, clamp, true, false, true, nil, nil)
	switch {
	case err != nil:
		return quota.Ticket{}, err
	case renew != nil || sh != nil:
		return quota.Ticket{}, fmt.Errorf("acquire held: the leases do not cover it: %w", ErrUnavailable)
	}
	return t, nil
}

// giveBack puts the rate units an acquire decided in the store back, if no
// decision has followed them there (else they stay spent: under-admission
// of at most that ask).
func (e *Engine) giveBack(ctx context.Context, paid []paidRate) {
	for _, p := range paid {
		e.mu.Lock()
		id := e.requestID()
		e.mu.Unlock()
		p.s.io.Lock()
		res, err := e.st.Return(ctx, id, e.inst, p.s.sc, []Give{{Meter: p.m, Amount: p.n, After: p.after, Before: p.before}})
		p.s.io.Unlock()
		if err != nil || res.Returned[0] == 0 {
			continue
		}
		if b, err := quota.ParseBucket(p.before); err == nil {
			e.mu.Lock()
			p.s.m[p.m].bucket = b
			e.mu.Unlock()
		}
	}
}

// leasedUnits is what one refill added to a budget or slot lease for an
// acquire.
type leasedUnits struct {
	s      *lscope
	m      Meter
	n      int64
	window time.Time
}

// giveBackLeased returns to the store what refills added to leases for an
// acquire that was refused, as far as the leases still hold it unspent
// (a concurrent decision may have spent some: that part stays spent).
// A failed return is kept to be sent again, as giveUnused's are.
func (e *Engine) giveBackLeased(ctx context.Context, leased []leasedUnits) {
	for len(leased) > 0 {
		s := leased[0].s
		s.io.Lock()
		e.mu.Lock()
		var gives []Give
		rest := leased[:0:0]
		for _, l := range leased {
			if l.s != s {
				rest = append(rest, l)
				continue
			}
			lm := &s.m[l.m]
			if lm.stale || l.m.isBudget() && !l.window.Equal(lm.window) {
				continue
			}
			if n := min(l.n, lm.avail-lm.ret); n > 0 {
				lm.ret += n
				gives = append(gives, Give{Meter: l.m, Amount: n, Window: lm.window})
			}
		}
		var id string
		if len(gives) > 0 {
			id = e.requestID()
		}
		e.mu.Unlock()
		if len(gives) > 0 {
			_ = e.giveBackLease(ctx, s, id, gives) // kept in unsent on failure
		}
		s.io.Unlock()
		leased = rest
	}
}

// adjustRates makes rate changes decided under the lock in the store.
func (e *Engine) adjustRates(ctx context.Context, adj []rateAdj) {
	st, ok := e.st.(interface {
		AdjustRate(ctx context.Context, sc Scope, m Meter, r quota.Rate, delta int64) (string, error)
	})
	if !ok {
		return
	}
	for _, a := range adj {
		after, err := st.AdjustRate(ctx, a.s.sc, a.m, a.rate, a.delta)
		if err != nil {
			continue
		}
		if b, err := quota.ParseBucket(after); err == nil {
			e.mu.Lock()
			a.s.m[a.m].bucket, a.s.m[a.m].known = b, true
			e.mu.Unlock()
		}
	}
}

// renewNow renews, before they are spent again, leases whose record may
// have expired (the engine's clock passed their validity: a paused process,
// a long store outage). A lease the store reclaimed meanwhile is dropped.
func (e *Engine) renewNow(ctx context.Context, scopes []*lscope) error {
	byTenant := map[string][]Renewal{}
	e.mu.Lock()
	for _, s := range scopes {
		byTenant[s.sc.Tenant] = append(byTenant[s.sc.Tenant], Renewal{Key: s.sc.Key, Pins: e.pins(s)})
	}
	e.mu.Unlock()
	for tenant, rs := range byTenant {
		sent := e.now()
		res, err := e.st.Renew(ctx, e.inst, tenant, e.o.LeaseTTL, rs)
		if err != nil {
			e.lost(err)
			return fmt.Errorf("acquire: renew: %w", err)
		}
		e.mu.Lock()
		e.applyRenew(rs, res, sent)
		e.mu.Unlock()
	}
	return nil
}

// pins returns what a renewal pins of s: what each lease has committed,
// and a margin. Called with e.mu held.
func (e *Engine) pins(s *lscope) []Pin {
	var pins []Pin
	for m := range Meter(NumMeters) {
		if lm := &s.m[m]; !m.isRate() && (lm.g > 0 || lm.committed > 0) {
			p, seq := e.pinFor(lm, m, 0)
			pin := Pin{Meter: m, Amount: p, Seq: seq, Window: lm.window}
			if m == MeterConcurrency {
				// A slot still pinned belongs to a ticket not yet recorded:
				// issued before the lease expires, with a TTL like those
				// before it. (One with a longer TTL issued since is released
				// sooner after a crash; nobody can settle it then anyway:
				// it was never recorded.)
				pin.Until = e.now().Add(e.o.LeaseTTL + lm.maxTTL)
			}
			pins = append(pins, pin)
		}
	}
	return pins
}

// applyRenew records a renewal's outcome. Called with e.mu held.
func (e *Engine) applyRenew(rs []Renewal, res RenewResult, sent time.Time) {
	for _, r := range rs {
		s := e.scopes[r.Key]
		if s == nil {
			continue
		}
		if slices.Contains(res.Lost, r.Key) {
			// Reclaimed: what it held stays counted in the store
			// (stranded); reservations of it give nothing back here.
			for m := range s.m {
				s.m[m].avail, s.m[m].g, s.m[m].stale, s.m[m].ret = 0, 0, false, 0
				s.m[m].committed, s.m[m].pin = 0, 0
			}
			s.gen++
			s.validUntil = time.Time{}
			s.unsent = nil // of a lease that is gone
			continue
		}
		s.validUntil = sent.Add(e.o.LeaseTTL - e.o.LeaseTTL/5)
		for _, p := range r.Pins {
			s.m[p.Meter].pinned(p.Meter, p.Window, p.Amount, p.Seq)
		}
	}
}

// decide checks every lease of the chain and, if they all cover the ask,
// charges them and issues the ticket. Otherwise it charges nothing and
// returns what was short, or the scopes whose lease must be renewed first.
//
// With held (AcquireHeld) it only spends what the leases hold: what it
// would learn from the store is not asked, and a lease past its validity
// is short.
func (e *Engine) decide(r *quota.Request, clamp, refilled, checkOnly, held bool, paid []paidRate, shorts []short) (quota.Ticket, []short, []*lscope, []rateAdj, error) {
	a := &r.Ask
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return quota.Ticket{}, nil, nil, nil, quota.ErrClosed
	}
	now := e.now()
	e.expire(now)
	var ls [8]*lscope
	scs := ls[:0]
	var renew []*lscope
	for i := range r.Chain {
		s := e.scope(&r.Chain[i])
		scs = append(scs, s)
		if !s.validUntil.IsZero() && !now.Before(s.validUntil) {
			renew = append(renew, s)
		}
	}
	if renew != nil {
		return quota.Ticket{}, nil, renew, nil, nil
	}
	tokens := a.Tokens
	if clamp && refilled {
		// After a refill, the most tokens every token meter covers, down
		// to MinTokens.
		for i := range r.Chain {
			sc := &r.Chain[i]
			for m := MeterTokensRate; m <= MeterTokensMonth; m++ {
				bound, rate, ok := limitOf(sc.Limits, m)
				if !ok || bound == unbounded {
					continue
				}
				h := e.sync(scs[i], m, now, bound, rate).have(m)
				if p := findPaid(paid, i, m); p != nil {
					h = p.n
				}
				tokens = min(tokens, max(h, a.MinTokens))
			}
		}
	}
	for i := range r.Chain {
		sc := &r.Chain[i]
		s := scs[i]
		for m := range Meter(NumMeters) {
			need := askOf(a, m, tokens)
			bound, rate, ok := limitOf(sc.Limits, m)
			if !ok || need <= 0 && bound == unbounded {
				continue
			}
			lm := e.sync(s, m, now, bound, rate)
			least := need
			if clamp && isToken(m) && !refilled {
				least = a.MinTokens
			}
			if m.isRate() {
				switch p := findPaid(paid, i, m); {
				case p != nil && p.n >= need:
				case need > 0 && lm.units() < need:
					shorts = append(shorts, short{i: i, s: s, m: m, need: need, least: least, full: need, ask: least})
				case !lm.known && rate.Limit > 0 && !held:
					// Learn the bucket, for the ticket's Remaining.
					shorts = append(shorts, short{i: i, s: s, m: m, full: need, optional: true})
				}
				continue
			}
			h := lm.have(m)
			switch {
			case need > 0 && (h < need || lm.stale):
				sh := short{i: i, s: s, m: m, need: need - h, least: max(least-h, 0), full: need, ask: least}
				sh.optional = sh.least == 0
				shorts = append(shorts, sh)
			case bound != unbounded && lm.remaining == unknownRem && !held:
				// Learn what remains, for the ticket's Remaining.
				shorts = append(shorts, short{i: i, s: s, m: m, full: need, optional: true})
			}
		}
	}
	if len(shorts) > 0 {
		return quota.Ticket{}, shorts, nil, nil, nil
	}
	if checkOnly {
		return quota.Ticket{}, nil, nil, nil, nil
	}
	ttl := r.TTL
	if ttl == 0 {
		ttl = e.o.DefaultTTL
	}
	ttl = min(ttl, e.o.MaxTTL)
	t := &ticket{id: e.newID(), meta: r.Meta, expires: now.Add(ttl), tokens: tokens, gpu: a.GPUMillis, cost: a.CostMicros,
		res: make([]reservation, 0, len(r.Chain)*(NumMeters-1)), issued: time.Now()} // all but requests: one allocation
	if e.ts != nil {
		if tags := ticketTags(scs); len(tags) <= 8 {
			t.tags = tags
			t.id += idTags(tags)
		}
	}
	out := quota.Ticket{ID: t.id, Tokens: tokens, Clamped: tokens < a.Tokens, ExpiresAt: t.expires}
	var adj []rateAdj
	for i := range r.Chain {
		l := r.Chain[i].Limits
		s := scs[i]
		if l != nil {
			mergeCaps(&out.Caps, &l.Caps)
		}
		for m := range Meter(NumMeters) {
			need := askOf(a, m, tokens)
			bound, rate, ok := limitOf(l, m)
			if !ok {
				continue
			}
			lm := &s.m[m]
			p := findPaid(paid, i, m)
			if m.isRate() && p != nil {
				// Decided in the store: spent already. Units paid beyond
				// a clamp go back. They count as demand, which the
				// background loop may then lease ahead.
				lm.spent += need
				lm.maxAsk = max(lm.maxAsk, need)
				if p.n > need {
					adj = append(adj, rateAdj{s: s, m: m, rate: rate, delta: need - p.n})
				}
				if m == MeterTokensRate {
					t.res = append(t.res, reservation{s: s, m: m, amt: need, direct: true, rate: rate})
				}
				e.remainingPaid(&out.Remaining[m], s, m, p, need, rate, now)
				continue
			}
			if need > 0 {
				lm.take(m, need)
				if m == MeterConcurrency {
					lm.maxTTL = max(lm.maxTTL, ttl)
				}
				if m == MeterTokensRate {
					t.res = append(t.res, reservation{s: s, m: m, amt: need, rate: rate})
				}
			}
			if m.isBudget() && need == 0 && bound == unbounded {
				e.sync(s, m, now, bound, rate) // counted: the reservation needs the current window
			}
			if m.isBudget() || need > 0 && m == MeterConcurrency {
				// Every counted budget, even unasked: use is charged on
				// settle, as quota.Memory does.
				t.res = append(t.res, reservation{s: s, m: m, amt: need, window: lm.window, gen: s.gen})
			}
			e.remaining(&out.Remaining[m], s, m, lm, bound, rate, now)
		}
	}
	for m := range out.Remaining {
		if out.Remaining[m].Dimension == 0 {
			out.Remaining[m].Dimension, out.Remaining[m].Window = meterDim(Meter(m))
		}
	}
	e.tickets[t.id] = t
	if t.tags != nil {
		e.pending = append(e.pending, t)
	}
	if e.nextExp.IsZero() || t.expires.Before(e.nextExp) {
		e.nextExp = t.expires
	}
	return out, nil, nil, adj, nil
}

// remaining folds scope s's meter m into r if it is the tightest so far.
// What remains for this instance is what its lease holds plus what the
// store said was left at the last grant.
func (e *Engine) remaining(r *quota.Remaining, s *lscope, m Meter, lm *lmeter, bound int64, rate quota.Rate, now time.Time) {
	if bound == unbounded {
		return
	}
	left := lm.avail // a return in flight is counted on both sides
	if lm.remaining != unknownRem {
		left = max(left+lm.remaining, 0) // the counter may be past the limit
	}
	var reset time.Time
	if m.isRate() {
		switch {
		case rate.Limit <= 0:
			left, reset = 0, now.UTC()
		case !lm.known:
			return
		default:
			left = lm.bucket.Avail(rate, now) + lm.units()
		}
	}
	if r.Scope != "" && r.Remaining <= left {
		return
	}
	d, w := meterDim(m)
	*r = quota.Remaining{Dimension: d, Window: w, Scope: s.sc.Key, Limit: bound, Remaining: left}
	switch {
	case m.isRate():
		if rate.Limit > 0 {
			reset = lm.bucket.EmptyAt(now) // only for the tightest scope
		}
		r.Limit, r.Period, r.ResetAt = rate.Limit, rate.Period, reset
	case m.isBudget():
		r.ResetAt = windowEnd(lm.window, m).UTC()
	}
}

// remainingPaid folds a rate decided in the store into r: exact, from the
// bucket the decision left.
func (e *Engine) remainingPaid(r *quota.Remaining, s *lscope, m Meter, p *paidRate, need int64, rate quota.Rate, now time.Time) {
	b, err := quota.ParseBucket(p.after)
	if err != nil {
		return
	}
	left := b.Avail(rate, now) + p.n - need
	if r.Scope != "" && r.Remaining <= left {
		return
	}
	d, w := meterDim(m)
	*r = quota.Remaining{Dimension: d, Window: w, Scope: s.sc.Key, Limit: rate.Limit, Period: rate.Period, Remaining: left, ResetAt: b.EmptyAt(now)}
}

func mergeCaps(c, l *quota.Caps) {
	pick := func(a, b int64) int64 {
		if a == 0 || (b != 0 && b < a) {
			return b
		}
		return a
	}
	c.MemoryPerRun = pick(c.MemoryPerRun, l.MemoryPerRun)
	c.MaxSteps = pick(c.MaxSteps, l.MaxSteps)
	c.MaxTokensPerCall = pick(c.MaxTokensPerCall, l.MaxTokensPerCall)
	c.RunTimeout = time.Duration(pick(int64(c.RunTimeout), int64(l.RunTimeout)))
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns an unguessable ticket id. Called with e.mu held.
func (e *Engine) newID() string {
	var b [16]byte
	e.rnd.Read(b[:])
	// Encoded in place: one allocation, the string.
	const prefix = "tkt_"
	var out [len(prefix) + 26]byte // 26 = base32 of 16 bytes, unpadded
	copy(out[:], prefix)
	idEncoding.Encode(out[len(prefix):], b[:])
	return string(out[:])
}

// requestID returns a fresh request id. Called with e.mu held.
func (e *Engine) requestID() string {
	e.seq++
	return e.inst + ":" + strconv.FormatUint(e.seq, 36)
}

// refill asks the store, scope by scope in chain order, for what the short
// leases need: budgets and slots as leases (the shortfall, plus recent
// demand while the limit is far), rates decided in the store exactly (the
// direct path: slots from now, as quota.Memory). The first refusal, in
// quota.Memory's check order, is returned as the denial.
func (e *Engine) refill(ctx context.Context, r *quota.Request, shorts []short, paid *[]paidRate, leased *[]leasedUnits) (*quota.Denial, error) {
	var groups [][]short
	for len(shorts) > 0 {
		n := 1
		for n < len(shorts) && shorts[n].s == shorts[0].s {
			n++
		}
		groups = append(groups, shorts[:n])
		shorts = shorts[n:]
	}
	if len(groups) == 1 {
		return e.refillScope(ctx, r, groups[0], paid, leased)
	}
	// The scopes go to the store at once (a cold chain would otherwise wait
	// for a round trip or two per scope, one after the other). The answer
	// is the first refusal in chain order, as if they had gone in turn;
	// rate units a later scope took meanwhile are in paid, given back by
	// the caller with the rest.
	type result struct {
		i      int
		d      *quota.Denial
		err    error
		paid   []paidRate
		leased []leasedUnits
	}
	done := make(chan result, len(groups)) // a channel: durably blocking in a synctest bubble
	for i, g := range groups {
		go func() {
			var (
				p []paidRate
				l []leasedUnits
			)
			d, err := e.refillScope(ctx, r, g, &p, &l)
			done <- result{i, d, err, p, l}
		}()
	}
	res := make([]result, len(groups))
	for range groups {
		x := <-done
		res[x.i] = x
	}
	for _, x := range res {
		*paid = append(*paid, x.paid...)
		*leased = append(*leased, x.leased...)
	}
	for _, x := range res {
		if x.d != nil || x.err != nil {
			return x.d, x.err
		}
	}
	return nil, nil
}

// refillScope is refill for the shorts of one scope: one store call (two
// when a stale lease goes back first).
func (e *Engine) refillScope(ctx context.Context, r *quota.Request, group []short, paid *[]paidRate, leased *[]leasedUnits) (*quota.Denial, error) {
	s := group[0].s
	e.sweepTag(ctx, s.sc.Tenant)
	s.io.Lock()
	defer s.io.Unlock()
	if err := e.resendUnknown(ctx, s); err != nil {
		return nil, fmt.Errorf("acquire: %w", err)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, quota.ErrClosed
	}
	n := max(e.instances(), 1)
	var (
		gives []Give
		wants []Want
		wsh   []short // the short of each want
	)
	for _, sh := range group {
		lm := &s.m[sh.m]
		bound, rate, _ := limitOf(r.Chain[sh.i].Limits, sh.m)
		if sh.m.isRate() {
			if rate.Limit <= 0 && sh.optional {
				continue
			}
			if rate.Limit <= 0 {
				// A rate that refuses everything: quota.Memory's denial.
				e.mu.Unlock()
				dim, _ := meterDim(sh.m)
				return &quota.Denial{Code: quota.CodeRateLimited, Scope: s.sc.Key, Dimension: dim, Limit: max(rate.Limit, 0),
					Period: rate.Period, Requested: sh.least}, nil
			}
			wants = append(wants, Want{Meter: sh.m, Amount: sh.need, Min: sh.least, Rate: rate, Direct: true})
			wsh = append(wsh, sh)
			continue
		}
		if sh.optional && sh.need == 0 {
			p, seq := e.pinFor(lm, sh.m, 0)
			wants = append(wants, Want{Meter: sh.m, Limit: bound, Window: lm.window, Pin: p, PinSeq: seq})
			wsh = append(wsh, sh)
			continue
		}
		if lm.stale {
			if n := lm.avail - lm.ret; n > 0 {
				gives = append(gives, Give{Meter: sh.m, Amount: n, Window: lm.window})
				lm.ret += n
			}
			lm.stale = false
		}
		if !lm.stale && lm.avail-lm.ret >= sh.full {
			// The lease holds enough; its pin does not: raise it only.
			p, seq := e.pinFor(lm, sh.m, sh.full)
			w := Want{Meter: sh.m, Pin: p, PinSeq: seq, Limit: bound}
			if sh.m.isBudget() {
				w.Window = lm.window
			}
			wants = append(wants, w)
			wsh = append(wsh, sh)
			continue
		}
		// Beyond the ask, what the background refill would take, unless
		// the limit is near: then exactly the ask, so that the store
		// decides.
		extra := e.target(lm, sh.m)
		if lm.remaining != unknownRem {
			extra = min(extra, lm.remaining/int64(2*n))
		}
		// What the lease holds counts, pinned or not: the pin is raised
		// by the same call.
		held := max(lm.avail-lm.ret, 0)
		p, seq := e.pinFor(lm, sh.m, sh.full)
		w := Want{Meter: sh.m, Amount: sh.full - held + max(extra, 0), Min: max(sh.ask-held, 0), Pin: p, PinSeq: seq, Limit: bound}
		if sh.m.isBudget() {
			w.Window = lm.window
		}
		wants = append(wants, w)
		wsh = append(wsh, sh)
	}
	if len(wants) == 0 {
		e.mu.Unlock()
		return nil, nil
	}
	gid, rid := e.requestID(), ""
	if len(gives) > 0 {
		rid = e.requestID()
	}
	e.mu.Unlock()
	if len(gives) > 0 {
		if err := e.giveBackLease(ctx, s, rid, gives); err != nil {
			return nil, fmt.Errorf("acquire: %w", err)
		}
	}
	sent := e.now()
	res, err := e.st.Grant(ctx, gid, e.inst, s.sc, e.o.LeaseTTL, wants)
	if err != nil {
		e.mu.Lock()
		s.unsent = append(s.unsent, unsentCall{id: gid, wants: wants})
		e.mu.Unlock()
		e.lost(err)
		return nil, fmt.Errorf("acquire: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.applyGrant(s, sent, wants, res)
	var denial *quota.Denial
	for i, g := range res.Grants {
		w, sh := wants[i], wsh[i]
		if !w.Direct && !w.Meter.isRate() && g.Granted > 0 && (!w.Meter.isBudget() || w.Window.Equal(s.m[w.Meter].window)) {
			*leased = append(*leased, leasedUnits{s: s, m: w.Meter, n: g.Granted, window: w.Window})
		}
		if w.Direct && g.Granted > 0 {
			p := paidRate{i: sh.i, s: s, m: w.Meter, n: g.Granted, rate: w.Rate, before: g.Before, after: g.After, remaining: g.Remaining}
			if b, err := quota.ParseBucket(g.After); err == nil {
				p.emptyAt = b.EmptyAt(res.Now)
			}
			*paid = append(*paid, p)
		}
		if g.Granted == 0 && denial == nil && !sh.optional {
			if !w.Meter.isRate() && (s.m[w.Meter].have(w.Meter) >= sh.full || w.Amount == 0 && w.Limit != 0) {
				continue // a concurrent refill covered it, or only the pin was short: decide again
			}
			if w.Direct && rateFits(g.Before, w.Rate, res.Now, sh.ask) {
				continue // not applied: another want of the call refused
			}
			denial = e.denial(r, sh, w, g, res.Now)
		}
	}
	return denial, nil
}

// rateFits reports whether n units fit bucket before (a Grant.Before) at
// now.
func rateFits(before string, r quota.Rate, now time.Time, n int64) bool {
	b, err := quota.ParseBucket(before)
	return err == nil && b.Check(r, now, n, "", 0) == nil
}

// target is what a lease should hold: for budgets and slots the recent
// demand over the horizon, at least the largest single ask seen; for
// rates, whose units lapse a validity after the grant, the demand over a
// grant's whole life and one refresh more, plus the largest ask, so that
// a grant every other refresh keeps decisions off the synchronous path.
// Far from a limit the units that lapse unspent cost nothing; near it the
// callers cap the grant by what remains. Called with e.mu held.
func (e *Engine) target(lm *lmeter, m Meter) int64 {
	if m.isRate() {
		per := float64(e.validity)/float64(e.o.Refresh) + 1
		return int64(lm.demand*per) + lm.maxAsk
	}
	per := float64(e.o.Horizon) / float64(e.o.Refresh)
	return max(int64(lm.demand*per), lm.maxAsk)
}

// idleRounds is how many refreshes without a charge make a lease idle.
const idleRounds = 3

// keepIdle is what an idle budget or slot lease keeps of what it holds
// (n live instances): its target while the limit is far, so that the
// next decision needs no store call; nothing while the limit is near, nor
// ever for slots. An idle instance keeping one slot (the largest ask seen)
// of a department's 4 made the store count it as used: with three
// instances, the third was refused "4 of 4" with 3 runs going, for as
// long as the others stayed idle. Called with e.mu held.
func (e *Engine) keepIdle(lm *lmeter, m Meter, n int) int64 {
	keep := e.target(lm, m)
	if m == MeterConcurrency || lm.remaining != unknownRem && lm.remaining < keep*int64(2*n) {
		return 0
	}
	return keep
}

// unitsAfter returns the rate units of lm that are still spendable at t.
func (lm *lmeter) unitsAfter(t time.Time) int64 {
	var n int64
	for _, l := range lm.lots {
		if l.deadline.After(t) {
			n += l.n
		}
	}
	return n
}

// applyGrant adds a grant's amounts to the local leases. Called with e.mu
// held.
func (e *Engine) applyGrant(s *lscope, sent time.Time, wants []Want, res GrantResult) {
	s.validUntil = sent.Add(e.o.LeaseTTL - e.o.LeaseTTL/5)
	for i, g := range res.Grants {
		w := wants[i]
		lm := &s.m[w.Meter]
		switch {
		case w.Meter.isRate():
			lm.remaining = g.Remaining
		case w.Limit < unbounded && (!w.Meter.isBudget() || w.Window.Equal(lm.window)):
			// Signed: after an overrun or a lowered limit the counter may
			// be past the limit, which a lease's avail does not undo.
			lm.remaining = w.Limit - g.Used
		}
		if w.Meter.isRate() && !res.Replay {
			if b, err := quota.ParseBucket(g.After); err == nil {
				lm.bucket, lm.known = b, true
			}
		}
		if w.Direct {
			continue
		}
		lm.pinned(w.Meter, w.Window, w.Pin, w.PinSeq)
		if g.Granted <= 0 {
			if !w.Meter.isRate() && (!w.Meter.isBudget() || w.Window.Equal(lm.window)) {
				lm.g = g.Held
			}
			continue
		}
		switch {
		case w.Meter.isRate():
			if lm.rate == w.Rate {
				lm.lots = append(lm.lots, unitLot{n: g.Granted, deadline: sent.Add(e.validity)})
			}
		case w.Meter.isBudget() && !w.Window.Equal(lm.window):
			// The window ended while the grant was out: void.
		default:
			lm.avail += g.Granted
			lm.g = g.Held
		}
	}
}

// denial is the store's refusal of short sh (want w, grant g) as the
// quota.Denial quota.Memory would give. Called with e.mu held.
func (e *Engine) denial(r *quota.Request, sh short, w Want, g Grant, now time.Time) *quota.Denial {
	bound, rate, _ := limitOf(r.Chain[sh.i].Limits, sh.m)
	dim, win := meterDim(sh.m)
	lm := &sh.s.m[sh.m]
	requested := sh.ask
	if sh.m.isRate() {
		if b, err := quota.ParseBucket(g.Before); err == nil {
			if d := b.Check(rate, now, requested, sh.s.sc.Key, dim); d != nil {
				return d
			}
		}
		return &quota.Denial{Code: quota.CodeRateLimited, Scope: sh.s.sc.Key, Dimension: dim, Limit: rate.Limit, Period: rate.Period,
			Requested: requested, RetryAfter: time.Second, ResetAt: now.Add(time.Second).UTC()}
	}
	used := max(g.Used-lm.avail, 0)
	if sh.m == MeterConcurrency {
		d := &quota.Denial{Code: quota.CodeRateLimited, Scope: sh.s.sc.Key, Dimension: dim, Limit: bound, Used: used, Requested: 1}
		if bound > 0 {
			d.RetryAfter = time.Second
			d.ResetAt = now.Add(time.Second).UTC()
		}
		return d
	}
	d := &quota.Denial{Code: quota.CodeQuotaExceeded, Scope: sh.s.sc.Key, Dimension: dim, Window: win, Limit: bound,
		Used: used, Requested: requested, ResetAt: windowEnd(lm.window, sh.m).UTC()}
	if requested <= bound {
		d.RetryAfter = d.ResetAt.Sub(now)
	}
	return d
}

// expire refunds the reservations of tickets past their expiry and forgets
// old settled ones. Called with e.mu held.
func (e *Engine) expire(now time.Time) {
	if e.nextExp.IsZero() || now.Before(e.nextExp) {
		if now.Sub(e.lastSweep) < time.Minute {
			return
		}
	}
	e.lastSweep = now
	e.nextExp = time.Time{}
	for id, t := range e.tickets {
		switch {
		case t.settled != nil || t.expired:
			if now.Sub(t.doneAt) > e.o.SettledRetention {
				delete(e.tickets, id)
			}
		case !now.Before(t.expires):
			if t.inStore() {
				// The record's reservations: the store's sweep refunds
				// them (before this engine's next grant or read there).
				for i, tag := range t.tags {
					if t.tried&(1<<i) != 0 {
						e.sweepTags[tag] = true
					}
				}
				for _, r := range t.res {
					lm := &r.s.m[r.m]
					if r.m.isRate() || r.gen != r.s.gen || lm.remaining == unknownRem || r.m.isBudget() && !r.window.Equal(lm.window) {
						continue
					}
					lm.remaining += r.amt
				}
			} else {
				e.release(t, quota.Usage{}, now, false, nil, nil)
				// Recorded still, as expired, for late settles elsewhere:
				// with nothing reserved (it went back to the leases).
				for i := range t.res {
					if !t.res[i].m.isRate() {
						t.res[i].amt = 0
					}
				}
			}
			t.expired, t.doneAt = true, t.expires
			e.retire(id)
		case e.nextExp.IsZero() || t.expires.Before(e.nextExp):
			e.nextExp = t.expires
		}
	}
}

// maxDone bounds the settled and expired tickets remembered.
const maxDone = 1 << 16

// retire remembers a settled or expired ticket, forgetting the oldest
// beyond maxDone. Called with e.mu held.
func (e *Engine) retire(id string) {
	e.done = append(e.done, id)
	if len(e.done) > maxDone {
		old := e.done[0]
		if t := e.tickets[old]; t != nil && (t.settled != nil || t.expired) {
			delete(e.tickets, old)
		}
		e.done = e.done[1:]
	}
}

// usageOf is the part of u that meter m counts.
func usageOf(u quota.Usage, m Meter) int64 {
	switch m {
	case MeterTokensDay, MeterTokensMonth:
		return u.InputTokens + u.OutputTokens
	case MeterGPU:
		return u.GPUMillis
	case MeterCost:
		return u.CostMicros
	}
	return 0
}

// overrun is use the local leases could not cover, to be granted past the
// limit.
type overrun struct {
	s      *lscope
	m      Meter
	amt    int64
	window time.Time
}

// release ends t's reservations with actual use u: the difference goes
// back to the lease; use beyond what the lease holds is appended to over.
// On a settle (not an expiry) tokens_rate is refunded or charged the
// difference too, as quota.Memory does: into the lease's lots, or as a
// store adjustment appended to adj. Called with e.mu held.
func (e *Engine) release(t *ticket, u quota.Usage, now time.Time, settle bool, over []overrun, adj []rateAdj) ([]overrun, []rateAdj) {
	for _, r := range t.res {
		lm := &r.s.m[r.m]
		switch {
		case r.m == MeterConcurrency:
			if r.gen == r.s.gen {
				lm.avail += r.amt
				lm.committed -= r.amt
			}
			continue
		case r.m == MeterTokensRate:
			if !settle {
				continue
			}
			delta := u.InputTokens + u.OutputTokens - r.amt
			if r.direct || lm.rate != r.rate {
				if delta != 0 && r.direct {
					adj = append(adj, rateAdj{s: r.s, m: r.m, rate: r.rate, delta: delta})
				}
				continue
			}
			if delta < 0 {
				// Back to the latest lot still spendable: its slots are
				// still in the bucket.
				if k := len(lm.lots) - 1; k >= 0 && lm.lots[k].deadline.After(now) {
					lm.lots[k].n -= delta
				}
				continue
			}
			take := min(delta, lm.unitsAfter(now))
			if take > 0 {
				e.sync(r.s, r.m, now, 0, lm.rate)
				lm.take(r.m, take)
			}
			if delta > take {
				adj = append(adj, rateAdj{s: r.s, m: r.m, rate: r.rate, delta: delta - take})
			}
			continue
		case r.m.isRate():
			continue
		}
		use := usageOf(u, r.m)
		cur := r.s.window(r.m, now)
		if !lm.window.Equal(cur) {
			lm.avail, lm.g, lm.window, lm.remaining, lm.stale, lm.ret = 0, 0, cur, unknownRem, false, 0
			lm.committed, lm.pin = 0, 0
		}
		if r.gen != r.s.gen {
			// The lease was reclaimed: its reservation stays counted in
			// the store; only use beyond it is charged.
			if r.window.Equal(cur) && use > r.amt {
				over = append(over, overrun{s: r.s, m: r.m, amt: use - r.amt, window: cur})
			} else if !r.window.Equal(cur) && use > 0 {
				over = append(over, overrun{s: r.s, m: r.m, amt: use, window: cur})
			}
			continue
		}
		if r.window.Equal(cur) {
			lm.avail += r.amt // the reservation was the lease's
			lm.committed -= r.amt
		}
		take := min(use, lm.avail-lm.ret)
		lm.avail -= take
		lm.committed += take
		if use > take {
			over = append(over, overrun{s: r.s, m: r.m, amt: use - take, window: cur})
		}
	}
	return over, adj
}

// Settle implements quota.Backend. A ticket issued here and not recorded
// yet is settled on the local leases; any other goes through its records
// in the store (engine_tickets.go).
func (e *Engine) Settle(ctx context.Context, id string, u quota.Usage) (quota.Settlement, error) {
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return quota.Settlement{}, fmt.Errorf("settle %s: negative usage: %w", id, quota.ErrInvalid)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return quota.Settlement{}, quota.ErrClosed
	}
	now := e.now()
	e.expire(now)
	t := e.tickets[id]
	if t == nil {
		e.mu.Unlock()
		tags, ok := parseTags(id)
		if e.ts == nil || !ok {
			return quota.Settlement{}, fmt.Errorf("settle %s: %w", id, quota.ErrUnknownTicket)
		}
		st, _, err := e.settleStored(ctx, id, tags, u, true)
		if err != nil {
			return quota.Settlement{}, err
		}
		if !st.Replay {
			st.SettledAt = e.now().UTC() // the store keeps µs
		}
		// Remembered, so that a replay here answers the same to the ns.
		first := st
		first.Replay = false
		e.mu.Lock()
		if e.tickets[id] == nil {
			e.tickets[id] = &ticket{id: id, settled: &first, doneAt: e.now()}
			e.retire(id)
		}
		e.mu.Unlock()
		return st, nil
	}
	if t.settled == nil && (t.busy != nil || t.inStore()) {
		if err := e.ensureRecorded(ctx, t); err != nil {
			e.mu.Unlock()
			return quota.Settlement{}, fmt.Errorf("settle %s: %w", id, err)
		}
		if t.settled == nil {
			return e.settleRecorded(ctx, t, u)
		}
	}
	if t.settled != nil {
		st := *t.settled
		st.Replay = true
		e.mu.Unlock()
		return st, nil
	}
	st := quota.Settlement{TicketID: id, Usage: u, ReservedTokens: t.tokens, ReservedGPUMillis: t.gpu, ReservedCostMicros: t.cost,
		SettledAt: now.UTC(), Meta: t.meta, Late: t.expired}
	st.Overrun = u.InputTokens+u.OutputTokens > t.tokens || u.GPUMillis > t.gpu || u.CostMicros > t.cost
	var (
		over []overrun
		adj  []rateAdj
	)
	if t.expired {
		// The reservations were refunded at expiry: charge the use alone
		// (tokens_rate neither: quota.Memory leaves a late settle's bucket).
		late := &ticket{}
		for _, r := range t.res {
			if !r.m.isRate() && r.m != MeterConcurrency {
				late.res = append(late.res, reservation{s: r.s, m: r.m, gen: r.s.gen})
			}
		}
		over, _ = e.release(late, u, now, false, nil, nil)
	} else {
		over, adj = e.release(t, u, now, true, nil, nil)
	}
	full := e.fullSlots(t)
	// A settled ticket is kept only to answer replays: dropping its
	// reservations keeps the retained tickets small for the collector.
	t.settled, t.doneAt, t.res = &st, now, nil
	e.retire(id)
	calls := e.overrunCalls(over)
	e.mu.Unlock()
	for _, s := range full {
		e.giveSlots(ctx, s)
	}
	for _, c := range calls {
		// The settle stands whatever happens; an overrun the store did
		// not confirm is sent again with its id (resendUnknown).
		c.s.io.Lock()
		e.grantLease(ctx, c.s, c.id, c.wants, true, false)
		c.s.io.Unlock()
	}
	e.adjustRates(ctx, adj)
	return st, nil
}

// fullSlots returns the scopes whose slot ticket t held came back to a
// lease whose limit the store had found full: another instance may be
// refused, or queued, for want of it. Called with e.mu held, after
// release.
func (e *Engine) fullSlots(t *ticket) []*lscope {
	var out []*lscope
	for _, r := range t.res {
		if lm := &r.s.m[MeterConcurrency]; r.m == MeterConcurrency && r.gen == r.s.gen && lm.remaining != unknownRem && lm.remaining <= 0 {
			out = append(out, r.s)
		}
	}
	return out
}

// giveSlots returns the unused slots of s's lease to the store at once
// (not after the idle rounds giveUnused waits for), under s.io.
func (e *Engine) giveSlots(ctx context.Context, s *lscope) {
	s.io.Lock()
	defer s.io.Unlock()
	if err := e.resendUnknown(ctx, s); err != nil {
		return // the idle rounds give it back (giveUnused)
	}
	e.mu.Lock()
	lm := &s.m[MeterConcurrency]
	n := lm.avail - lm.ret
	if n <= 0 || lm.stale {
		e.mu.Unlock()
		return
	}
	lm.ret += n
	id := e.requestID()
	e.mu.Unlock()
	_ = e.giveBackLease(ctx, s, id, []Give{{Meter: MeterConcurrency, Amount: n}}) // kept to be sent again on failure
}

// settleRecorded settles recorded ticket t through the store and
// refunds its tokens_rate here. Called with e.mu held; it unlocks.
func (e *Engine) settleRecorded(ctx context.Context, t *ticket, u quota.Usage) (quota.Settlement, error) {
	e.mu.Unlock()
	st, _, err := e.settleStored(ctx, t.id, t.tags, u, false)
	if err != nil {
		return quota.Settlement{}, err
	}
	late := st.Late
	e.mu.Lock()
	if !st.Replay {
		// The store keeps µs; this engine's clock is the caller's.
		st.SettledAt = e.now().UTC()
	}
	var adj []rateAdj
	if t.settled == nil {
		if !late {
			rates := &ticket{}
			for _, r := range t.res {
				if r.m.isRate() {
					rates.res = append(rates.res, r)
				}
			}
			_, adj = e.release(rates, u, e.now(), true, nil, nil)
		}
		first := st
		first.Replay = false
		t.settled, t.doneAt, t.res = &first, e.now(), nil
		if !t.expired {
			e.retire(t.id)
		}
	}
	e.mu.Unlock()
	e.adjustRates(ctx, adj)
	return st, nil
}

type grantCall struct {
	s     *lscope
	id    string
	wants []Want
}

// overrunCalls turns overruns into grants past the limit, spent at once.
// Called with e.mu held.
func (e *Engine) overrunCalls(over []overrun) []grantCall {
	var calls []grantCall
	for _, o := range over {
		if len(calls) == 0 || calls[len(calls)-1].s != o.s {
			calls = append(calls, grantCall{s: o.s, id: e.requestID()})
		}
		c := &calls[len(calls)-1]
		p, seq := e.pinFor(&o.s.m[o.m], o.m, o.amt)
		c.wants = append(c.wants, Want{Meter: o.m, Amount: o.amt, Pin: p, PinSeq: seq, Limit: unbounded, Window: o.window})
	}
	return calls
}

// Heartbeat implements quota.Backend.
func (e *Engine) Heartbeat(ctx context.Context, id string, ttl time.Duration) (time.Time, error) {
	if ttl < 0 {
		return time.Time{}, fmt.Errorf("heartbeat %s: negative ttl: %w", id, quota.ErrInvalid)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return time.Time{}, quota.ErrClosed
	}
	now := e.now()
	e.expire(now)
	if ttl == 0 {
		ttl = e.o.DefaultTTL
	}
	expires := now.Add(min(ttl, e.o.MaxTTL))
	t := e.tickets[id]
	if t == nil {
		tags, ok := parseTags(id)
		if e.ts == nil || !ok {
			return time.Time{}, fmt.Errorf("heartbeat %s: %w", id, quota.ErrUnknownTicket)
		}
		e.mu.Unlock()
		at, err := e.heartbeatStored(ctx, id, tags, expires, true)
		e.mu.Lock()
		return at, err
	}
	if t.settled == nil && (t.busy != nil || t.inStore()) {
		if err := e.ensureRecorded(ctx, t); err != nil {
			return time.Time{}, fmt.Errorf("heartbeat %s: %w", id, err)
		}
		if t.settled == nil {
			e.mu.Unlock()
			_, err := e.heartbeatStored(ctx, id, t.tags, expires, false)
			e.mu.Lock()
			if err != nil {
				return time.Time{}, err
			}
			if t.settled == nil {
				t.expires, t.expired = expires, false
				e.nextExp = time.Time{} // recomputed at the next sweep
				e.lastSweep = time.Time{}
			}
			return expires, nil // the store keeps it to the µs
		}
	}
	if t.settled != nil || t.expired {
		return time.Time{}, fmt.Errorf("heartbeat %s: %w", id, quota.ErrUnknownTicket)
	}
	t.expires = expires
	e.nextExp = time.Time{} // recomputed at the next sweep
	e.lastSweep = time.Time{}
	return t.expires, nil
}

// Lookup implements quota.Backend.
func (e *Engine) Lookup(ctx context.Context, id string) (quota.TicketInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return quota.TicketInfo{}, quota.ErrClosed
	}
	e.expire(e.now())
	t := e.tickets[id]
	if t == nil || t.settled == nil && t.inStore() {
		tags, ok := parseTags(id)
		if t != nil {
			tags, ok = t.tags, true
		}
		if e.ts == nil || !ok {
			return quota.TicketInfo{}, fmt.Errorf("lookup %s: %w", id, quota.ErrUnknownTicket)
		}
		e.mu.Unlock()
		info, err := e.lookupStored(ctx, id, tags, t == nil)
		e.mu.Lock()
		if t != nil && err == nil && info.ExpiresAt.Equal(t.expires.Truncate(time.Microsecond)) {
			info.ExpiresAt = t.expires // the store keeps it to the µs
		}
		if t == nil || err == nil {
			return info, err
		}
		// Recorded, perhaps: what this engine knows of it.
	}
	info := quota.TicketInfo{ID: id, Meta: t.meta, Tokens: t.tokens, GPUMillis: t.gpu, CostMicros: t.cost,
		Settled: t.settled != nil, Expired: t.expired}
	if t.settled == nil {
		info.ExpiresAt = t.expires
	}
	return info, nil
}

// Use implements quota.Backend: the store's counters less what this
// engine's leases hold unspent. Another instance's unspent leases count as
// used.
func (e *Engine) Use(ctx context.Context, key string) (quota.ScopeUse, error) {
	st, ok := e.st.(interface {
		Read(ctx context.Context, sc Scope) (State, error)
	})
	u := quota.ScopeUse{Key: key}
	if !ok {
		return u, fmt.Errorf("use %s: the store cannot read: %w", key, quota.ErrInvalid)
	}
	tenant, err := e.tenant(key)
	if err != nil {
		return u, fmt.Errorf("use %s: %w: %w", key, ErrUnavailable, err)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return u, quota.ErrClosed
	}
	e.expire(e.now())
	e.mu.Unlock()
	e.sweepTag(ctx, tenant)
	e.mu.Lock()
	if s := e.scopes[key]; s != nil {
		// No grant or return of the scope in flight: the store's counter
		// and the local lease are read at one point.
		e.mu.Unlock()
		s.io.Lock()
		defer s.io.Unlock()
		e.mu.Lock()
	}
	now := e.now()
	e.expire(now)
	sc := Scope{Tenant: tenant, Key: key}
	var local [NumMeters]lmeter
	var loc *time.Location
	var lots [2]int64 // unspent rate units, by rate meter
	if s := e.scopes[key]; s != nil {
		local, loc = s.m, s.loc
		for m := range lots {
			local[m].lots = nil // read here only, under the lock
			lots[m] = s.m[m].unitsAfter(now)
		}
	}
	e.mu.Unlock()
	state, err := st.Read(ctx, sc)
	if err != nil {
		return u, fmt.Errorf("use %s: %w", key, err)
	}
	budget := func(m Meter) quota.WindowUse {
		ms := state.Meters[m]
		w := windowStart(now, loc, m)
		if !ms.Window.Equal(w) {
			return quota.WindowUse{}
		}
		used := ms.Used
		if local[m].window.Equal(w) {
			used -= local[m].avail
		}
		if used <= 0 {
			return quota.WindowUse{} // as quota.Memory: nothing used, no window
		}
		return quota.WindowUse{Start: w.UTC(), End: windowEnd(w, m).UTC(), Used: used}
	}
	u.TokensDay, u.TokensMonth = budget(MeterTokensDay), budget(MeterTokensMonth)
	u.GPUMillis, u.CostMicros = budget(MeterGPU), budget(MeterCost)
	u.Concurrency = max(state.Meters[MeterConcurrency].Used-local[MeterConcurrency].avail, 0)
	rate := func(m Meter) quota.RateUse {
		b := state.Meters[m].Bucket
		// This instance's unspent lots are leased, not used: they go back
		// (they are the bucket's last slots while it holds the latest grant).
		if n := lots[m]; n > 0 && !local[m].rate.IsZero() {
			b.Adjust(local[m].rate, now, -n)
		}
		return b.Use(now)
	}
	u.Requests, u.TokensRate = rate(MeterRequests), rate(MeterTokensRate)
	return u, nil
}

// Restore implements quota.Backend: the store's counter becomes used plus
// what live leases of the window hold.
func (e *Engine) Restore(ctx context.Context, key string, d quota.Dimension, w quota.Window, start time.Time, used int64) error {
	var m Meter
	switch {
	case d == quota.DimTokens && w == quota.WindowDay:
		m = MeterTokensDay
	case d == quota.DimTokens && w == quota.WindowMonth:
		m = MeterTokensMonth
	case d == quota.DimGPUSeconds && w == quota.WindowMonth:
		m = MeterGPU
	case d == quota.DimCost && w == quota.WindowMonth:
		m = MeterCost
	default:
		return fmt.Errorf("restore %s: %s/%s is not a budget: %w", key, d, w, quota.ErrInvalid)
	}
	if used < 0 {
		return fmt.Errorf("restore %s: negative use: %w", key, quota.ErrInvalid)
	}
	st, ok := e.st.(interface {
		Restore(ctx context.Context, instance string, sc Scope, m Meter, window time.Time, used, mine int64) (int64, error)
	})
	if !ok {
		return fmt.Errorf("restore %s: the store cannot restore: %w", key, quota.ErrInvalid)
	}
	var (
		mine int64
		s    *lscope
	)
	e.mu.Lock()
	s = e.scopes[key]
	e.mu.Unlock()
	if s != nil {
		// No grant or return of the scope meanwhile. Not taken under e.mu:
		// a grant holding s.io waits for e.mu to apply its reply.
		s.io.Lock()
		defer s.io.Unlock()
		e.mu.Lock()
		if lm := &s.m[m]; lm.window.Equal(start) {
			mine = lm.avail
		}
		e.mu.Unlock()
	}
	tenant, err := e.tenant(key)
	if err != nil {
		return fmt.Errorf("restore %s: %w: %w", key, ErrUnavailable, err)
	}
	if _, err := st.Restore(ctx, e.inst, Scope{Tenant: tenant, Key: key}, m, start, used, mine); err != nil {
		return fmt.Errorf("restore %s: %w", key, err)
	}
	if s != nil {
		e.mu.Lock()
		s.m[m].remaining = unknownRem
		e.mu.Unlock()
	}
	return nil
}

// Close stops the background loop, waits for it, and returns the unused
// budget and slot leases.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	scopes := make([]*lscope, 0, len(e.scopes))
	for _, s := range e.scopes {
		scopes = append(scopes, s)
	}
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
	ctx := context.Background()
	var errs []error
	// Live tickets stay settleable on the other instances, and are
	// refunded at their expiry if nobody settles them.
	for range 1000 { // a settle recording a ticket keeps it pending a while
		e.mu.Lock()
		left := len(e.pending)
		e.mu.Unlock()
		if left == 0 {
			break
		}
		if !e.flushRecords(ctx, true) {
			errs = append(errs, fmt.Errorf("close: recording %d live tickets: %w", left, ErrUnavailable))
			break
		}
		time.Sleep(time.Millisecond)
	}
	for _, s := range scopes {
		// A return whose outcome is unknown is sent again (same id), a
		// few times, before the lease is left to expire.
		var err error
		for try := 0; try < 3; try++ {
			if err = e.giveUnused(ctx, s, true); err == nil {
				break
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// giveUnused returns what scope s's budget and slot leases hold beyond
// their target (all of it when all is set; stale leases entirely), under
// s.io so that a decision refilling the scope sees it back in the store.
func (e *Engine) giveUnused(ctx context.Context, s *lscope, all bool) error {
	s.io.Lock()
	defer s.io.Unlock()
	if err := e.resendUnknown(ctx, s); err != nil {
		return err
	}
	e.mu.Lock()
	now := e.now()
	var gives []Give
	for m := range Meter(NumMeters) {
		lm := &s.m[m]
		if m.isRate() {
			continue
		}
		if m.isBudget() && !lm.window.Equal(s.window(m, now)) {
			continue
		}
		n := int64(0)
		switch {
		case all || lm.stale:
			n = lm.avail - lm.ret
		case lm.idle >= idleRounds:
			n = lm.avail - lm.ret - e.keepIdle(lm, m, max(e.instances(), 1))
		}
		lm.stale = false
		if n <= 0 {
			continue
		}
		lm.ret += n
		gives = append(gives, Give{Meter: m, Amount: n, Window: lm.window})
	}
	if len(gives) == 0 {
		e.mu.Unlock()
		return nil
	}
	id := e.requestID()
	e.mu.Unlock()
	return e.giveBackLease(ctx, s, id, gives)
}

// giveBackLease sends a Return of gives (set aside in ret) under request
// id and applies the store's answer. A failed call may or may not have
// been carried out: the amounts stay set aside, and the call is kept to
// be sent again with the same id (resendReturns), which the store answers
// with what it did the first time. Called with s.io held.
func (e *Engine) giveBackLease(ctx context.Context, s *lscope, id string, gives []Give) error {
	e.mu.Lock()
	gen := s.gen
	e.mu.Unlock()
	res, err := e.st.Return(ctx, id, e.inst, s.sc, gives)
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.gen != gen {
		// The store lost its state meanwhile and the lease was dropped
		// (dropScope): what this gave back was in a lease that no longer
		// exists. Kept to be sent again, it would be given back out of the
		// rebuilt counters: below the ledger.
		return err
	}
	if err != nil {
		s.unsent = append(s.unsent, unsentCall{id: id, gives: gives})
		return err
	}
	for i, g := range gives {
		s.m[g.Meter].gave(g.Meter, g.Window, g.Amount, res.Returned[i], res.Held[i])
	}
	return nil
}

// resendUnknown sends again the grants and returns of s whose outcome is
// unknown, stopping at the first that fails again. A grant's reply is
// applied without its rate units: they were due to be spent before a
// deadline long past (they lapse in the bucket: under-admission of at
// most those units). Called with s.io held.
func (e *Engine) resendUnknown(ctx context.Context, s *lscope) error {
	e.mu.Lock()
	todo := s.unsent
	s.unsent = nil
	e.mu.Unlock()
	for i, u := range todo {
		var err error
		if u.wants == nil {
			err = e.giveBackLease(ctx, s, u.id, u.gives)
		} else {
			err = e.grantLease(ctx, s, u.id, u.wants, u.overrun, true)
		}
		if err != nil {
			e.mu.Lock()
			s.unsent = append(s.unsent, todo[i+1:]...)
			e.mu.Unlock()
			return err
		}
	}
	return nil
}

// grantLease sends a Grant of wants under request id and applies its
// reply: to the leases (overrun: spent at once, see applyOverrun), without
// rate units when resent. A failed call is kept to be sent again with the
// same id (resendUnknown). Called with s.io held.
func (e *Engine) grantLease(ctx context.Context, s *lscope, id string, wants []Want, overrun, resent bool) error {
	sent := e.now()
	res, err := e.st.Grant(ctx, id, e.inst, s.sc, e.o.LeaseTTL, wants)
	if err != nil {
		e.mu.Lock()
		s.unsent = append(s.unsent, unsentCall{id: id, wants: wants, overrun: overrun})
		e.mu.Unlock()
		e.lost(err)
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.granted(s, sent, wants, res, overrun, resent)
	return nil
}

// granted applies the reply of a grant of wants sent at sent: grantLease's
// second half. Called with e.mu and s.io held.
func (e *Engine) granted(s *lscope, sent time.Time, wants []Want, res GrantResult, overrun, resent bool) {
	if resent {
		var ws []Want
		var gs []Grant
		for i, w := range wants {
			if !w.Meter.isRate() {
				ws, gs = append(ws, w), append(gs, res.Grants[i])
			}
		}
		wants, res.Grants = ws, gs
	}
	if overrun {
		e.applyOverrun(s, sent, wants, res)
	} else {
		e.applyGrant(s, sent, wants, res)
	}
}

// applyOverrun records a grant past the limit of use already spent: held
// and committed. Called with e.mu held.
func (e *Engine) applyOverrun(s *lscope, sent time.Time, wants []Want, res GrantResult) {
	s.validUntil = sent.Add(e.o.LeaseTTL - e.o.LeaseTTL/5)
	for i, g := range res.Grants {
		w := wants[i]
		lm := &s.m[w.Meter]
		if !w.Window.Equal(lm.window) && w.Meter.isBudget() {
			continue
		}
		lm.g = g.Held
		lm.committed += g.Granted
		lm.pinned(w.Meter, w.Window, w.Pin, w.PinSeq)
		if lm.limit != unbounded {
			// The grant was asked past the limit: what remains under it
			// follows from the counter.
			lm.remaining = lm.limit - g.Used
		} else {
			lm.remaining = unknownRem
		}
	}
}

// refreshWorkers bounds the store calls one refresh has in flight.
const refreshWorkers = 8

// parallel calls f(0), …, f(n−1) on up to refreshWorkers goroutines and
// returns when all have returned.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(n, refreshWorkers) {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// loop refills, returns and renews leases every Refresh until ctx ends.
func (e *Engine) loop(ctx context.Context) {
	tk := time.NewTicker(e.o.Refresh)
	defer tk.Stop()
	var r refreshState
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		e.refresh(ctx, &r)
	}
}

// refreshState is what the background loop carries from round to round.
type refreshState struct {
	last, lastRenew time.Time // engine clock
}

// rateLeaseMargin is how many times a rate lease's size must still fit in
// the bucket for the loop to take it: rate leases are for limits far away
// (their slots start a validity ahead, which near a limit would refuse
// what quota.Memory admits); near a limit rates are decided in the store.
const rateLeaseMargin = 4

// refresh is one background round. Demand is measured in units per
// refresh of the engine's clock: a round that saw no time pass (a stopped
// test clock) or a jump of many refreshes measures nothing, and demand
// decays.
func (e *Engine) refresh(ctx context.Context, rs *refreshState) {
	e.mu.Lock()
	now := e.now()
	e.expire(now)
	elapsed := now.Sub(rs.last)
	measured := !rs.last.IsZero() && elapsed > 0 && elapsed <= 10*e.o.Refresh
	rs.last = now
	n := max(e.instances(), 1)
	frac := max(1/float64(2*n), 1.0/8)
	var (
		grants []grantCall
		idle   []*lscope
		pinLow map[*lscope]bool // scopes whose pin room is low: renewed now
	)
	for _, s := range e.scopes {
		var wants []Want
		giveBack := false
		for m := range Meter(NumMeters) {
			lm := &s.m[m]
			if !lm.active {
				continue
			}
			rate := 0.0
			if measured {
				rate = float64(lm.spent) * float64(e.o.Refresh) / float64(elapsed)
			}
			lm.demand = 0.5*lm.demand + 0.5*rate
			if lm.demand < 0.01 {
				lm.demand = 0
			}
			if lm.spent == 0 {
				lm.idle++
			} else {
				lm.idle = 0
			}
			lm.spent = 0
			if !m.isRate() && (lm.stale || lm.idle >= idleRounds && lm.avail > e.keepIdle(lm, m, n)) {
				giveBack = true
			}
			if len(s.unsent) > 0 {
				giveBack = true // sent again
			}
			if m.isRate() {
				e.sync(s, m, now, 0, lm.rate) // drop lapsed units
			}
			tgt := e.target(lm, m)
			have := lm.have(m)
			if !m.isRate() {
				have = lm.avail - lm.ret // what the lease holds, pinned or not
				if lm.g > 0 && lm.pinRoom()*2 < e.pinMargin(lm, m) {
					if pinLow == nil {
						pinLow = map[*lscope]bool{}
					}
					pinLow[s] = true // renewed this round, with a fresh margin
				}
			}
			if lm.idle > 0 || lm.demand == 0 || lm.stale {
				continue
			}
			if m.isRate() {
				// Refill when what outlives the next refresh covers less
				// than two refreshes of demand and the largest ask: the
				// refresh after next may come late on a loaded machine.
				have = lm.unitsAfter(now.Add(e.o.Refresh))
				if float64(have) >= 2*lm.demand+float64(lm.maxAsk) {
					continue
				}
			} else if have*2 > tgt {
				continue
			}
			amt := tgt - have
			if lm.remaining != unknownRem {
				amt = min(amt, int64(float64(lm.remaining)*frac))
			}
			if m.isRate() && (lm.remaining == unknownRem || amt*rateLeaseMargin > lm.remaining) {
				continue
			}
			if amt <= 0 {
				continue
			}
			w := Want{Meter: m, Amount: amt, Limit: lm.limit, Rate: lm.rate}
			if m.isBudget() {
				w.Window = s.window(m, now)
				if !w.Window.Equal(lm.window) {
					continue
				}
			}
			if !m.isRate() {
				w.Pin, w.PinSeq = e.pinFor(lm, m, 0)
			}
			wants = append(wants, w)
		}
		if len(wants) > 0 {
			grants = append(grants, grantCall{s: s, id: e.requestID(), wants: wants})
		}
		if giveBack {
			idle = append(idle, s)
		}
	}
	// Every lease every LeaseTTL/4; between those, only the scopes whose
	// pin room ran low (renewing them all each time one runs low cost a
	// script over hundreds of scopes every refresh, and superseded the
	// pins decisions had just raised).
	var renews map[string][]Renewal
	all := now.Sub(rs.lastRenew) >= e.o.LeaseTTL/4 || now.Before(rs.lastRenew)
	if all || pinLow != nil {
		if all {
			rs.lastRenew = now
		}
		renews = map[string][]Renewal{}
		for _, s := range e.scopes {
			if s.validUntil.IsZero() || !all && !pinLow[s] {
				continue
			}
			renews[s.sc.Tenant] = append(renews[s.sc.Tenant], Renewal{Key: s.sc.Key, Pins: e.pins(s)})
		}
	}
	e.mu.Unlock()

	// Grants first: a round that takes longer than a refresh lets rate
	// units lapse and sends decisions to the store.
	e.grantRound(ctx, grants)
	parallel(len(idle), func(i int) { e.giveUnused(ctx, idle[i], false) })
	for tenant, rs := range renews {
		sent := e.now()
		res, err := e.st.Renew(ctx, e.inst, tenant, e.o.LeaseTTL, rs)
		if err != nil {
			e.lost(err)
			continue
		}
		e.mu.Lock()
		e.applyRenew(rs, res, sent)
		e.mu.Unlock()
	}
}

// grantBatchMax bounds the calls of one GrantBatch: a script holds Redis
// while it runs, and the app puts every scope on one tag.
const grantBatchMax = 64

// grantRound sends a refresh's grants. With a store that batches them
// (grantBatcher), it sends one GrantBatch per tag and up to grantBatchMax
// scopes, several batches at a time; otherwise one Grant per scope,
// several at a time. Either way each reply is applied as grantLease
// applies it, and a failed call leaves each of its grants in its scope's
// unsent, with its id, to be sent again.
//
// A batch holds the io locks of all its scopes during the call, as a
// Grant holds its scope's, so that a decision refilling one of them sees
// the batch's grant in the store. It takes them in one order (by tag,
// then key), and the batches of a round hold disjoint sets of scopes.
// Every other holder of an io lock holds that one only, and waits with
// it only for the store or e.mu, and no one waits for an io lock while
// holding e.mu. So a batch waits only for calls that end, and nothing
// waits for a batch that waits for it.
func (e *Engine) grantRound(ctx context.Context, grants []grantCall) {
	b, ok := e.st.(grantBatcher)
	if !ok {
		parallel(len(grants), func(i int) {
			c := grants[i]
			c.s.io.Lock()
			defer c.s.io.Unlock()
			e.grantLease(ctx, c.s, c.id, c.wants, false, false)
		})
		return
	}
	slices.SortFunc(grants, func(x, y grantCall) int {
		return cmp.Or(strings.Compare(x.s.sc.Tenant, y.s.sc.Tenant), strings.Compare(x.s.sc.Key, y.s.sc.Key))
	})
	var batches [][]grantCall
	for len(grants) > 0 {
		n := 1
		for n < len(grants) && n < grantBatchMax && grants[n].s.sc.Tenant == grants[0].s.sc.Tenant {
			n++
		}
		batches = append(batches, grants[:n])
		grants = grants[n:]
	}
	parallel(len(batches), func(i int) { e.grantBatch(ctx, b, batches[i]) })
}

// grantBatch sends cs, grants on scopes of one tag in key order, as one
// GrantBatch under their io locks (see grantRound).
func (e *Engine) grantBatch(ctx context.Context, b grantBatcher, cs []grantCall) {
	for _, c := range cs {
		c.s.io.Lock()
	}
	defer func() {
		for _, c := range cs {
			c.s.io.Unlock()
		}
	}()
	calls := make([]BatchCall, len(cs))
	for i, c := range cs {
		calls[i] = BatchCall{RequestID: c.id, Key: c.s.sc.Key, Wants: c.wants}
	}
	sent := e.now()
	res, err := b.GrantBatch(ctx, e.inst, cs[0].s.sc.Tenant, e.o.LeaseTTL, calls)
	e.mu.Lock()
	if err != nil {
		for _, c := range cs {
			c.s.unsent = append(c.s.unsent, unsentCall{id: c.id, wants: c.wants})
		}
		e.mu.Unlock()
		e.lost(err)
		return
	}
	for i, c := range cs {
		e.granted(c.s, sent, c.wants, res[i], false, false)
	}
	e.mu.Unlock()
}
