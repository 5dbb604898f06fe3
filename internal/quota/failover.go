package quota

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SharedBackend is what Failover needs of the shared store: the Backend
// operations and idempotent charges for reconciliation.
type SharedBackend interface {
	Backend
	Charger
}

// FailoverOptions configure a Failover.
type FailoverOptions struct {
	// Instances is how many Sluice instances share the backend (configured,
	// or counted from heartbeats); each gets limit ÷ Instances while
	// degraded. Values below 1 count as 1.
	Instances func() int
	// Floor is the least share a non-zero limit gets while degraded, so a
	// small limit does not round down to nothing (default 1).
	Floor int64
	// Probe checks the shared backend answers (e.g. PING) and still holds
	// its state: an error wrapping ErrStateLost says it answers but lost
	// its counters (or they were rebuilt since this instance last saw
	// them), and the probe loop calls Rebuild before anything else.
	Probe func(ctx context.Context) error
	// Rebuild makes the shared backend's counters whole again after a
	// state loss: it restores them from the ledger (or finds that another
	// instance did) and returns the moment the ledger was read, so that
	// the counters hold every settlement acknowledged before it. Spooled
	// usage from before that moment is dropped; later usage is delivered.
	// An error (another instance is rebuilding, Redis went away) keeps the
	// Failover degraded, to try again at the next probe. Without Rebuild
	// a state loss keeps it degraded.
	Rebuild func(ctx context.Context) (readAt time.Time, err error)
	// RebuildTimeout bounds one Rebuild (default 1 minute).
	RebuildTimeout time.Duration
	// ProbeInterval is how often a degraded Failover probes (default 250 ms).
	ProbeInterval time.Duration
	// Settled, when set, reports which of the given ticket ids were
	// settled (their use is in the ledger). A readmission after a rebuild
	// skips them: a ticket settled on another instance before the loss is
	// still in its issuer's list of live tickets, and readmitting it would
	// hold its reservation and slot until it expired. An error readmits
	// every ticket (the safe side).
	Settled func(ctx context.Context, ids []string) (map[string]bool, error)
	// ReadmitGrace is how long after a rebuild a settle or heartbeat of a
	// shared ticket the backend does not know is answered ErrUnavailable
	// (the caller retries) instead of ErrUnknownTicket: the instance that
	// issued it may not have readmitted it yet (default 30 s).
	ReadmitGrace time.Duration
	// ReadmitHold is how long a degraded instance waits, once it sees the
	// shared backend again, before it decides on it (default 2 s;
	// negative for none). From that first successful probe on it admits
	// nothing (ErrUnavailable: retry), readmits its live shared tickets
	// after a rebuild (Readmitter) and has the shared backend hold the
	// slots of its local tickets still running (SlotHolder); it switches
	// back when the hold has passed. So every instance that saw the
	// outage end within the hold of the first one is done with local
	// shares, and has put what it holds into the shared counters, before
	// any instance decides on them again: without it an instance back
	// early could hand out slots that another's running tickets hold
	// (past the limit) a moment later. Degraded instances probe every
	// ProbeInterval and an instance that was not degraded finds out at its
	// next call, so the hold needs to cover a few probes, not the outage.
	// An instance that sees the backend again later than that can still
	// over-admit, by at most its local tickets and readmitted ones.
	ReadmitHold time.Duration
	// ProbeTimeout bounds each Probe (default 2 s). Make it more generous
	// than the shared backend's call timeout: a probe that fails switches
	// to degraded mode, and a loaded machine is not an outage.
	ProbeTimeout time.Duration
	// TripAfter is how many consecutive failed calls switch to degraded
	// mode without waiting for a probe (default 3); any success starts the
	// count again. Calls that fail together, in one stall, count once: a
	// failure counts only if no other was counted while it was in flight.
	TripAfter int
	// OnMode is told every transition: "normal" or "degraded".
	OnMode func(mode string)
	Log    *slog.Logger
	// Local configures the local fallback engine.
	Local Options
}

// RateCharger is implemented by a shared backend that can take rate units
// admitted elsewhere into its rate buckets. A Failover whose shared backend
// implements it charges, when the backend returns, what it admitted
// locally during the outage on each scope's requests and tokens_rate
// limits, so that the shared buckets do not come back full (a second
// burst). Without it only budgets are reconciled.
type RateCharger interface {
	// ChargeRates adds each charge's units to its scope's requests and
	// tokens_rate buckets as of now, as an admission past the limit
	// would (never refused), at the rates of the scope's Limits. It is
	// idempotent by id, like Charger.Charge.
	ChargeRates(ctx context.Context, id string, charges []RateCharge) error
}

// RateCharge is the rate units to add to one scope's buckets.
type RateCharge struct {
	Scope    Scope // the key, zone and limits (their Requests and TokensRate) of the scope
	Requests int64
	Tokens   int64
}

// SlotHolder is implemented by a shared backend that can hold concurrency
// slots for a ticket it did not admit: a Failover coming back from an
// outage has the slots of its local tickets still running held there,
// past any limit, so that the shared admissions count them; it settles
// the holding ticket (with no use) when the local ticket settles.
type SlotHolder interface {
	// HoldSlots takes a concurrency slot on every scope of chain that
	// has a concurrency limit, checking no limit, until expires or the
	// returned ticket is settled. A call that fails may have taken them:
	// they are then held until expires (the safe side).
	HoldSlots(ctx context.Context, chain []Scope, expires time.Time) (id string, err error)
}

// HeldDecider is implemented by a shared backend that holds part of the
// shared limits in process, already counted in the shared store (leases):
// while degraded, a Failover decides on them first, and on its local
// share only when they do not cover an ask, so an outage spends what the
// instance holds before it falls back to on_outage.
type HeldDecider interface {
	// AcquireHeld is Acquire on what the backend holds, calling nothing
	// remote: ErrUnavailable when that does not cover r.
	AcquireHeld(ctx context.Context, r Request) (Ticket, error)
}

// BudgetReporter is implemented by a shared backend whose admissions can
// report the budget counters of every scope of the chain, not only of the
// tightest (Ticket.Remaining): a Failover learns from them what is left of
// each scope's budgets, which is what it shares among the instances when
// the backend becomes unreachable.
type BudgetReporter interface {
	// AcquireBudgets is Acquire, and on admission reports each scope's
	// budget counters as the admission left them, in chain order.
	AcquireBudgets(ctx context.Context, r Request) (Ticket, []ScopeBudgets, error)
}

// ScopeBudgets is a scope's budget counters in their current windows.
type ScopeBudgets struct {
	Key                                           string
	TokensDay, TokensMonth, GPUMillis, CostMicros WindowUse
}

// Readmitter is implemented by a shared backend that can take back a live
// ticket it lost with its state (a Redis restarted empty): the counters
// rebuilt from the ledger of settlements hold no live ticket, so the slots
// and reservations of the tickets still running would be free for others.
// After a rebuild a Failover readmits every live shared ticket it issued.
type Readmitter interface {
	// Readmit charges a live ticket's concurrency slot (r.Ask.Concurrency)
	// and its reservations (r.Ask.Tokens, GPUMillis, CostMicros) to the
	// scopes of r.Chain, checking nothing, under its id, so that it can be
	// settled and heartbeated as before; it expires at expires. A ticket
	// the backend knows (readmitted already, settled) is left alone.
	Readmit(ctx context.Context, id string, r Request, expires time.Time) error
}

// Rebuilt is implemented by a shared backend that holds state of its own
// derived from the shared counters (the lease engine's leases): a Failover
// calls it after a rebuild, before it readmits its live tickets, so that
// the backend drops what the lost state held.
type Rebuilt interface {
	Rebuilt(ctx context.Context)
}

// Recoverer is implemented by a shared backend that holds state of its
// own derived from the shared counters: a Failover calls Recovered before
// it leaves degraded mode, so that the backend checks that state against
// the store (a lease the store no longer has is dropped: it may have
// restarted empty and been rebuilt by another instance without this one
// noticing). An error keeps the Failover degraded, to try again.
type Recoverer interface {
	Recovered(ctx context.Context) error
}

// ErrStateLost is wrapped by a shared backend's errors when it answers but
// has lost its counters (a Redis restarted empty): an outage, since it
// also wraps ErrUnavailable, that lasts until FailoverOptions.Rebuild has
// restored them.
var ErrStateLost = fmt.Errorf("shared quota state lost: %w", ErrUnavailable)

// ErrResyncing is what a Failover answers an admission with while it
// resynchronises with the shared backend after an outage (see
// FailoverOptions.ReadmitHold): retry shortly.
var ErrResyncing = fmt.Errorf("quota store back after an outage, resynchronising: %w", ErrUnavailable)

// localPrefix marks tickets of the local fallback engine:
// "~<instance>.<local id>".
const localPrefix = "~"

// Failover is a Backend that uses a shared backend (Redis) and, when it
// cannot be reached, fails over to local counters with conservative limits:
// every limit divided by the number of instances (at least Floor), so that
// all instances together stay within it. For a budget that is what the
// shared backend last reported left of it, on each scope of the chain when
// the backend is a BudgetReporter (else on the scope that was the
// tightest), divided likewise. Scopes whose limits say
// on_outage: deny refuse instead. Usage settled while degraded, and
// settlements of shared tickets that could not be delivered, are spooled
// and charged to the shared backend when it returns, each exactly once
// (charges and settles are idempotent by id). Nothing fails open: an error
// that is not an outage is returned as is.
//
// Rates, too, are reconciled when the shared backend implements
// RateCharger. Entering degraded mode fills the local requests and
// tokens_rate buckets (no fresh burst on top of what the shared ones just
// admitted); leaving it charges the shared buckets, as of then and never
// refused, what each scope's local bucket admitted and still holds (see
// chargeRates), so that they do not come back full for a second burst:
// over any span across an outage the instances together admit at most
// burst + limit·t/period.
//
// One slow call is not an outage. A call that fails returns its error
// (wrapping ErrUnavailable) unless the Failover switches: after
// FailoverOptions.TripAfter consecutive failures (calls failing together
// in one stall count once; a success starts over), when a Probe run on
// the failure's behalf fails (its timeout, ProbeTimeout, is longer than a
// call's), or at once when the backend reports ErrStateLost. A dead
// backend fails the probe at once, so callers see no error; a slow one
// answers it, and the few calls that timed out get 503 instead of the
// whole instance flipping to local shares and back. The switch back
// needs a successful Probe and the spool delivered, as before.
//
// A shared backend can also come back empty (a Redis restarted without
// persistence, a fresh replica, FLUSHALL): it answers, but every counter
// would start from nothing. The backend reports that as ErrStateLost, an
// outage, so this instance stays degraded; its probe loop calls
// FailoverOptions.Rebuild, which restores the counters from the ledger of
// usage events (one instance does it; the others wait for it) and returns
// when the ledger was read. A settlement is acknowledged to its caller only
// after its usage event is committed, so every settlement spooled before
// that moment is already in the rebuilt counters: replaying it would count
// it twice, and it is dropped (the log says how many). Spooled usage from
// after it is not in the ledger read and is delivered as usual. The moment
// is compared with each spooled item's latest settlement, by the
// instances' clocks, which must agree (NTP). The moment follows the
// read's snapshot (usage.Store.RollupsRead), so a settlement the read holds
// was spooled before it and is not counted twice; one whose event was
// still uncommitted at the snapshot but whose spooled time is earlier is
// the only use that can go uncounted (bounded by the settlements in
// flight at that instant). The ledger holds no live ticket, so after the
// rebuild, when the backend is a Readmitter, each instance takes back the
// live shared tickets it issued, with their slots and reservations (see
// readmit), before it decides on the backend again: concurrency limits
// hold across the loss, and those tickets settle as usual. A ticket it
// issued that another instance settled before the loss is taken back too
// and holds its slot until it expires (the safe side); one heartbeated
// only through other instances is taken back with the expiry this
// instance last saw.
type Failover struct {
	shared SharedBackend
	local  *Memory
	o      FailoverOptions

	degraded atomic.Bool
	// rebuiltAt is when this instance last saw the shared state rebuilt
	// after a loss (unix ns of its clock; 0 never): for ReadmitGrace after
	// it, an unknown shared ticket may be one its issuer has not readmitted
	// yet, and is answered ErrUnavailable (retry) rather than unknown.
	rebuiltAt atomic.Int64
	// back is when this degraded spell first saw the shared backend again
	// (time.Now, monotonic: the hold is about other instances' probes, not
	// quota time; nil while it has not). Under mu.
	back *time.Time
	// lapses counts the failed probes in a row since back was set: a
	// single one on a loaded machine does not start the hold over.
	lapses int

	mu     sync.Mutex
	chains map[string]*issued // live tickets this instance issued, by ticket id
	// slots counts, by scope, the concurrency slots that live shared
	// tickets of this instance hold: while degraded they still run, so
	// the local concurrency share is what is left of it after them.
	slots map[string]int64
	// holders orders the slot-holding shared tickets by expiry, so that a
	// ticket that expired unsettled stops counting in slots (a min-heap;
	// under mu).
	holders slotHeap
	// primed holds the scopes whose local rate buckets were filled in this
	// degraded spell (cleared when it begins): see Memory.fillRates.
	primed map[string]bool
	spool  []*spooled
	// committed holds, while the spool is not empty, when the usage event
	// of each spooled settlement was committed to the ledger (Committed):
	// a rebuild drops exactly the spooled use its ledger read holds.
	committed map[string]time.Time
	shares    sync.Map // shareKey → *Limits scaled for the current instance count
	count     atomic.Int64

	knownMu sync.Mutex
	known   map[string]*knownUse // last budget use seen from the shared backend, by scope

	// debts holds, by scope, the rate units admitted locally and not yet
	// charged to the shared backend (under mu); rateOut is a charge of
	// them sent whose outcome is unknown, sent again with the same id
	// until it is known (under mu). id names this instance's charges.
	debts   map[string]*rateDebt
	rateOut *rateBatch
	rateSeq uint64
	id      string
	// readmit is set by a rebuild until the live shared tickets are
	// readmitted (under mu).
	readmitting bool

	// fails counts consecutive failed calls; failSeq is bumped by every
	// failure counted, so that a call knows whether one was counted while
	// it was in flight.
	fails   atomic.Int64
	failSeq atomic.Uint64
	checkMu sync.Mutex
	check   *healthCheck // the probe callers wait for, nil if none

	probing atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup
	closed  atomic.Bool
}

// issued is what an outage needs of a ticket this instance issued: the
// chain to charge its use to later, and what Lookup and Settle report
// while the shared backend cannot.
type issued struct {
	chain   []Scope
	meta    string
	expires time.Time
	tokens  int64
	gpu     int64
	cost    int64
	slot    bool      // a shared ticket holding a concurrency slot
	queued  time.Time // the expiry it has in holders
	// A local ticket asking a concurrency slot (localSlot) has it held in
	// the shared backend, by the ticket twin, once the backend is back
	// (SlotHolder).
	localSlot bool
	twin      string
}

// rateDebt is what this instance admitted locally on a scope's rate
// limits and has not charged to the shared backend: requests, and tokens
// (reservations, adjusted by the settlements to the use, as the local
// bucket is).
type rateDebt struct {
	scope    Scope
	req, tok int64
}

// rateBatch is one ChargeRates call.
type rateBatch struct {
	id      string
	charges []RateCharge
}

// knownUse is a scope's budget use as the shared backend last reported it,
// so that an outage shares what was left, not the whole limit.
type knownUse struct {
	used  [4]int64     // tokens/day, tokens/month, gpu, cost
	until [4]time.Time // the end of the window each was seen in
}

// shareKey identifies scaled limits: a scope's limits as of one snapshot.
type shareKey struct {
	scope string
	l     *Limits
}

// spooled is a settlement or charge waiting for the shared backend. Local
// settlements of one chain within a quarter hour are merged into one
// charge, so the spool grows with the chains active in an outage, not with
// its traffic, and drains in a few round trips.
type spooled struct {
	bucket  string // chain and quarter hour, for merging local charges
	sending bool   // being delivered: no more merges
	ticket  string // a shared ticket to settle, or
	charge  string // a charge id for use settled locally
	chain   []Scope
	usage   Usage
	at      time.Time
	last    time.Time // the latest settlement merged in
	// parts are a local charge's settlements with their times, oldest
	// first, so that a rebuild drops exactly those its ledger read holds
	// (a charge can straddle the read: merged before and after it); past
	// maxParts the oldest are folded into folded, as of foldedLast.
	parts      []spoolPart
	folded     Usage
	foldedLast time.Time
}

// spoolPart is one settlement merged into a local charge.
type spoolPart struct {
	id string // the local ticket settled
	at time.Time
	u  Usage
}

// maxParts bounds the settlements a spooled charge keeps apart.
const maxParts = 4096

func addUsage(a *Usage, b Usage) {
	a.InputTokens += b.InputTokens
	a.OutputTokens += b.OutputTokens
	a.GPUMillis += b.GPUMillis
	a.CostMicros += b.CostMicros
}

func subUsage(a *Usage, b Usage) {
	a.InputTokens -= b.InputTokens
	a.OutputTokens -= b.OutputTokens
	a.GPUMillis -= b.GPUMillis
	a.CostMicros -= b.CostMicros
}

// trim takes out of a local charge what was settled before readAt (the
// rebuilt counters hold it), and reports whether anything is left.
func (s *spooled) trim(readAt time.Time, inRead func(id string, at time.Time) bool) bool {
	if !s.foldedLast.IsZero() && s.foldedLast.Before(readAt) {
		subUsage(&s.usage, s.folded)
		s.folded, s.foldedLast = Usage{}, time.Time{}
	}
	kept := s.parts[:0]
	for _, p := range s.parts {
		if inRead(p.id, p.at) {
			subUsage(&s.usage, p.u)
			continue
		}
		kept = append(kept, p)
	}
	s.parts = kept
	if len(s.parts) > 0 && s.foldedLast.IsZero() {
		s.at = s.parts[0].at
	}
	return s.usage != Usage{}
}

var _ Backend = (*Failover)(nil)

// NewFailover returns a Failover over shared.
func NewFailover(shared SharedBackend, o FailoverOptions) *Failover {
	if o.Instances == nil {
		o.Instances = func() int { return 1 }
	}
	if o.Floor <= 0 {
		o.Floor = 1
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 250 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ReadmitHold == 0 {
		o.ReadmitHold = 2 * time.Second
	}
	if o.ReadmitGrace <= 0 {
		o.ReadmitGrace = 30 * time.Second
	}
	if o.RebuildTimeout <= 0 {
		o.RebuildTimeout = time.Minute
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 2 * time.Second
	}
	if o.TripAfter <= 0 {
		o.TripAfter = 3
	}
	var r [8]byte
	rand.Read(r[:])
	return &Failover{shared: shared, local: NewMemory(o.Local), o: o, chains: map[string]*issued{}, stop: make(chan struct{}),
		known: map[string]*knownUse{}, slots: map[string]int64{}, primed: map[string]bool{},
		debts: map[string]*rateDebt{}, id: hex.EncodeToString(r[:])}
}

// now is the local engine's clock (FailoverOptions.Local.Now), time.Now
// by default.
func (f *Failover) now() time.Time {
	if f.o.Local.Now != nil {
		return f.o.Local.Now()
	}
	return time.Now()
}

// Degraded reports whether the local fallback is in use.
func (f *Failover) Degraded() bool { return f.degraded.Load() }

// Spooled returns how many settlements wait for the shared backend.
func (f *Failover) Spooled() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.spool)
}

// outage reports whether err means the shared backend is unreachable, as
// opposed to a decision or a caller's mistake.
func outage(err error) bool {
	if err == nil {
		return false
	}
	var d *Denial
	if errors.As(err, &d) || errors.Is(err, ErrUnknownTicket) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrClosed) {
		return false
	}
	return true // timeouts, refused connections, ErrUnavailable
}

// healthCheck is one Probe run on behalf of failed calls.
type healthCheck struct {
	done chan struct{}
	err  error
}

// ok records that the shared backend answered a call.
func (f *Failover) ok() {
	if f.fails.Load() != 0 {
		f.fails.Store(0)
	}
}

// failed handles a call to the shared backend that failed with an outage
// error, begun when failSeq was seq, and reports whether the Failover is
// now degraded: the caller then decides locally. Otherwise it returns the
// error for the caller to return, wrapping ErrUnavailable (503 and
// Retry-After to a client): one slow call is not an outage. The mode
// switches when the backend says it lost its state, after TripAfter
// consecutive failures, or when a Probe (with its own, longer timeout,
// one at a time, its result shared by the calls that wait for it) fails.
func (f *Failover) failed(ctx context.Context, seq uint64, err error) (bool, error) {
	switch {
	case f.degraded.Load():
		return true, nil
	case ctx.Err() != nil:
		return false, err // the caller gave up: that says nothing of the backend
	case errors.Is(err, ErrStateLost):
		f.trip(err)
		return true, nil
	}
	n := f.fails.Load()
	if f.failSeq.CompareAndSwap(seq, seq+1) {
		n = f.fails.Add(1)
	}
	if n >= int64(f.o.TripAfter) {
		f.trip(fmt.Errorf("%d consecutive failures, the last: %w", n, err))
		return true, nil
	}
	if perr := f.health(ctx); perr != nil {
		f.trip(fmt.Errorf("%w; probe: %w", err, perr))
		return true, nil
	}
	if f.degraded.Load() {
		return true, nil
	}
	if !errors.Is(err, ErrUnavailable) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return false, err
}

// health runs Probe, or waits for the run in flight, and returns its
// result; nil if the caller stops waiting first.
func (f *Failover) health(ctx context.Context) error {
	if f.o.Probe == nil {
		return nil
	}
	f.checkMu.Lock()
	if c := f.check; c != nil {
		f.checkMu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return nil
		}
	}
	c := &healthCheck{done: make(chan struct{})}
	f.check = c
	f.checkMu.Unlock()
	pctx, cancel := context.WithTimeout(context.Background(), f.o.ProbeTimeout)
	c.err = f.o.Probe(pctx)
	cancel()
	f.checkMu.Lock()
	f.check = nil
	f.checkMu.Unlock()
	close(c.done)
	return c.err
}

// trip switches to degraded mode and starts probing for the return.
func (f *Failover) trip(err error) {
	if f.degraded.Swap(true) {
		return
	}
	f.shares.Clear()
	f.mu.Lock()
	clear(f.primed)
	f.mu.Unlock()
	f.o.Log.Error("quota backend unreachable: degraded mode, local counters with conservative limits",
		slog.String("error", err.Error()), slog.Int("instances", f.instances()))
	if f.o.OnMode != nil {
		f.o.OnMode("degraded")
	}
	f.deliver()
}

// deliver starts the probe loop unless it runs: it probes while degraded
// and delivers the spool until it is empty.
func (f *Failover) deliver() {
	if f.closed.Load() || !f.probing.CompareAndSwap(false, true) {
		return
	}
	f.wg.Add(1)
	go f.probe()
}

// probe waits for the shared backend, delivers the spool, and switches
// back to normal mode. If the spool is still not delivered after a while
// (an unusually long outage), it switches anyway and keeps delivering:
// charges are idempotent and carry their time.
func (f *Failover) probe() {
	defer f.wg.Done()
	t := time.NewTicker(f.o.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			f.probing.Store(false)
			return
		case <-t.C:
		}
		if f.degraded.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), f.o.ProbeTimeout)
			err := f.o.Probe(ctx)
			if errors.Is(err, ErrStateLost) {
				if err = f.rebuild(); err != nil {
					cancel()
					continue // another instance is rebuilding, or Redis left again
				}
			}
			f.seen(err == nil)
			if err == nil {
				err = f.readmit(ctx)
			}
			if err == nil {
				err = f.holdLocal(ctx)
			}
			if _, passed := f.returning(); err == nil && !passed {
				cancel()
				continue // the other instances may not be done with local shares yet
			}
			if rc, ok := f.shared.(Recoverer); ok && err == nil {
				err = rc.Recovered(ctx)
			}
			if err == nil {
				err = f.chargeRates(ctx)
			}
			if err == nil {
				err = f.reconcile(ctx)
			}
			cancel()
			if err != nil && (outage(err) && !errors.Is(err, context.DeadlineExceeded)) {
				continue // still away
			}
			f.fails.Store(0)
			f.degraded.Store(false)
			f.normal()
			f.shares.Clear()
			f.o.Log.Info("quota backend reachable again: normal mode", slog.Int("still_spooled", f.Spooled()))
			if f.o.OnMode != nil {
				f.o.OnMode("normal")
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := f.reconcile(ctx)
		if err == nil {
			// What was admitted locally since the charge above, by the
			// calls still deciding locally when the mode switched.
			err = f.chargeRates(ctx)
		}
		cancel()
		if err == nil && !f.degraded.Load() && !f.owing() {
			f.probing.Store(false)
			// An outage that began as this loop ended found it still
			// running and started none: take it on.
			if f.degraded.Load() && f.probing.CompareAndSwap(false, true) {
				continue
			}
			return
		}
	}
}

// rebuild has FailoverOptions.Rebuild restore the shared counters after a
// state loss, then drops the spooled usage that they already hold: what
// was settled before the ledger was read. See the type's comment.
func (f *Failover) rebuild() error {
	if f.o.Rebuild == nil {
		return ErrStateLost
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.o.RebuildTimeout)
	defer cancel()
	// Close must not wait a minute for a rebuild: it cancels it.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-f.stop:
			cancel()
		case <-done:
		}
	}()
	readAt, err := f.o.Rebuild(ctx)
	if err != nil {
		f.o.Log.Warn("shared quota state lost: not rebuilt yet, staying degraded", slog.String("error", err.Error()))
		return err
	}
	f.mu.Lock()
	inRead := f.inRead(readAt)
	kept := make([]*spooled, 0, len(f.spool))
	for _, s := range f.spool {
		if s.charge != "" && s.parts != nil {
			if !s.trim(readAt, inRead) {
				continue // merged settlements, all in the read
			}
		} else if inRead(s.ticket, s.last) {
			continue
		}
		kept = append(kept, s)
	}
	dropped := len(f.spool) - len(kept)
	f.spool = kept
	clear(f.committed)
	f.rebuiltAt.Store(f.now().UnixNano())
	if _, ok := f.shared.(Readmitter); ok {
		f.readmitting = true
	}
	for _, is := range f.chains {
		is.twin = "" // lost with the state: held again
	}
	f.mu.Unlock()
	f.knownMu.Lock()
	clear(f.known)
	f.knownMu.Unlock()
	f.o.Log.Warn("shared quota state was lost and rebuilt from the ledger; dropped the spooled usage the ledger already held",
		slog.Int("dropped", dropped), slog.Int("kept", len(kept)), slog.Time("ledger_read_at", readAt))
	return nil
}

// returning reports whether this degraded spell has seen the shared
// backend again (see ReadmitHold), and whether the hold has passed.
func (f *Failover) returning() (back, passed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.back == nil {
		return false, false
	}
	return true, time.Since(*f.back) >= f.o.ReadmitHold
}

// seen records the outcome of a probe of a degraded spell: the first
// success starts the hold; TripAfter failures in a row end it (local
// shares again), a single one does not start it over.
func (f *Failover) seen(ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !ok && f.back != nil:
		if f.lapses++; f.lapses >= f.o.TripAfter {
			f.back, f.lapses = nil, 0 // away again: local shares
		}
	case ok && f.back == nil:
		now := time.Now()
		f.back = &now
	case ok:
		f.lapses = 0
	}
}

// normal ends the spell's hold (back to normal mode).
func (f *Failover) normal() {
	f.mu.Lock()
	f.back, f.lapses = nil, 0
	f.mu.Unlock()
}

// holdLocal has the shared backend hold the slots of this instance's live
// local tickets (see SlotHolder); it stops at the first failure.
func (f *Failover) holdLocal(ctx context.Context) error {
	sh, ok := f.shared.(SlotHolder)
	if !ok {
		return nil
	}
	type todo struct {
		id      string
		chain   []Scope
		expires time.Time
	}
	now := f.now()
	var list []todo
	f.mu.Lock()
	for id, is := range f.chains {
		if is.localSlot && is.twin == "" && is.expires.After(now) {
			list = append(list, todo{id, is.chain, is.expires})
		}
	}
	f.mu.Unlock()
	for _, l := range list {
		twin, err := sh.HoldSlots(ctx, l.chain, l.expires)
		if err != nil {
			return err
		}
		f.mu.Lock()
		if is := f.chains[l.id]; is != nil {
			is.twin = twin
			twin = ""
		}
		f.mu.Unlock()
		if twin != "" {
			// Settled meanwhile: let the twin go.
			f.settleTwin(ctx, twin, l.chain)
		}
	}
	if len(list) > 0 {
		f.o.Log.Info("slots of local tickets still running held in the shared backend", slog.Int("tickets", len(list)))
	}
	return nil
}

// settleTwin settles the ticket that held a local ticket's slots in the
// shared backend, or spools it.
func (f *Failover) settleTwin(ctx context.Context, twin string, chain []Scope) {
	if !f.degraded.Load() {
		seq := f.failSeq.Load()
		_, err := f.shared.Settle(ctx, twin, Usage{})
		if !outage(err) {
			f.ok()
			return
		}
		f.failed(ctx, seq, err)
	}
	now := f.now().UTC()
	f.mu.Lock()
	f.spool = append(f.spool, &spooled{ticket: twin, chain: chain, at: now, last: now})
	f.mu.Unlock()
	f.deliver()
}

// maxCommitted bounds Committed's memory; past it, stamps are not kept
// and the rebuild falls back on settlement times.
const maxCommitted = 200_000

// stampWait is how long after its settlement a spooled use without a
// commit stamp is taken for one still being committed (its event not yet
// in the ledger); older, it is taken for one whose stamp was not kept.
const stampWait = time.Minute

// Committed tells the Failover that the usage event of the settlement of
// ticket id was committed to the ledger at at (the caller's clock, after
// the commit returned). A rebuild after a state loss reads the ledger and
// drops the spooled use its read holds, by these stamps: a settlement
// whose event committed before the read began is in it, one whose event
// was not yet committed when the rebuild decided is not, whatever the
// settlement's own time. Stamps are only read by a rebuild, which happens
// while degraded: out of it this is one atomic load, off the settle path's
// lock (an item spooled in a spell and committed after it was decided
// already).
func (f *Failover) Committed(id string, at time.Time) {
	if !f.degraded.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.spool) == 0 || len(f.committed) >= maxCommitted {
		return
	}
	if f.committed == nil {
		f.committed = map[string]time.Time{}
	}
	f.committed[id] = at
}

// inRead returns whether a spooled settlement (its ticket id and time) is
// in a ledger read that began at readAt: by its commit stamp when it has
// one; without, a recent one is still being committed (not in it) and an
// old one is judged by its time. Called with f.mu held.
func (f *Failover) inRead(readAt time.Time) func(id string, at time.Time) bool {
	now := f.now()
	return func(id string, at time.Time) bool {
		if c, ok := f.committed[id]; ok && id != "" {
			return c.Before(readAt)
		}
		if now.Sub(at) < stampWait {
			return false
		}
		return at.Before(readAt)
	}
}

// readmit takes the live shared tickets this instance issued back into
// the shared backend after a rebuild (see Readmitter): the rebuilt
// counters hold what was settled, not the slots and reservations of the
// tickets still running, which without it would be free for others until
// those tickets settle (a concurrency limit exceeded across the restart).
// It stops at the first outage; the next probe tries again, and tickets
// readmitted already are left alone.
func (f *Failover) readmit(ctx context.Context) error {
	f.mu.Lock()
	if !f.readmitting {
		f.mu.Unlock()
		return nil
	}
	type live struct {
		id string
		is issued
	}
	now := f.now()
	var todo []live
	for id, is := range f.chains {
		if !strings.HasPrefix(id, localPrefix) && is.expires.After(now) {
			todo = append(todo, live{id, *is})
		}
	}
	f.mu.Unlock()
	if rb, ok := f.shared.(Rebuilt); ok {
		rb.Rebuilt(ctx)
	}
	if f.o.Settled != nil && len(todo) > 0 {
		ids := make([]string, len(todo))
		for i, l := range todo {
			ids[i] = l.id
		}
		done, err := f.o.Settled(ctx, ids)
		if err != nil {
			f.o.Log.Warn("cannot tell which live tickets were settled: readmitting them all", slog.String("error", err.Error()))
		}
		kept := todo[:0]
		for _, l := range todo {
			if done[l.id] {
				f.forget(l.id) // settled elsewhere: not live
				continue
			}
			kept = append(kept, l)
		}
		todo = kept
	}
	ra := f.shared.(Readmitter)
	for _, l := range todo {
		r := Request{Chain: l.is.chain, Meta: l.is.meta,
			Ask: Ask{Tokens: l.is.tokens, GPUMillis: l.is.gpu, CostMicros: l.is.cost, Concurrency: l.is.slot}}
		err := ra.Readmit(ctx, l.id, r, l.is.expires)
		if err != nil && outage(err) {
			return err
		}
		if err != nil {
			f.o.Log.Error("readmitting a live ticket after the rebuild failed", slog.String("ticket", l.id), slog.String("error", err.Error()))
		}
	}
	f.mu.Lock()
	f.readmitting = false
	f.mu.Unlock()
	f.o.Log.Warn("live tickets readmitted to the rebuilt shared quota state", slog.Int("tickets", len(todo)))
	return nil
}

// reconcile delivers the spool in order; it stops at the first outage.
func (f *Failover) reconcile(ctx context.Context) error {
	for {
		f.mu.Lock()
		if len(f.spool) == 0 {
			clear(f.committed) // nothing spooled: no stamp is needed
			f.mu.Unlock()
			return nil
		}
		s := f.spool[0]
		s.sending = true
		f.mu.Unlock()
		var err error
		if s.ticket != "" {
			_, err = f.shared.Settle(ctx, s.ticket, s.usage)
			if errors.Is(err, ErrUnknownTicket) {
				// The ticket expired during the outage and its reservation
				// was refunded: charge the use it had.
				err = f.shared.Charge(ctx, "late:"+s.ticket, s.chain, s.usage, s.at)
			}
		} else {
			err = f.shared.Charge(ctx, s.charge, s.chain, s.usage, s.at)
		}
		if err != nil && outage(err) {
			return err
		}
		if err != nil {
			f.o.Log.Error("reconciling spooled usage failed; dropped", slog.String("error", err.Error()))
		}
		f.mu.Lock()
		f.spool = f.spool[1:]
		f.mu.Unlock()
	}
}

// owe records rate units admitted locally on the scopes of chain (tokens
// may be negative: a settlement below its reservation, which the local
// bucket refunds), to be charged to the shared backend's buckets.
func (f *Failover) owe(chain []Scope, req, tok int64) {
	if req == 0 && tok == 0 {
		return
	}
	if _, ok := f.shared.(RateCharger); !ok {
		return
	}
	f.mu.Lock()
	for _, s := range chain {
		l := s.Limits
		if l == nil {
			continue
		}
		r, t := req, tok
		if l.Requests.IsZero() {
			r = 0
		}
		if l.TokensRate.IsZero() {
			t = 0
		}
		if r == 0 && t == 0 {
			continue
		}
		d := f.debts[s.Key]
		if d == nil {
			d = &rateDebt{}
			f.debts[s.Key] = d
		}
		d.scope = s
		d.req += r
		d.tok += t
	}
	f.mu.Unlock()
	if !f.degraded.Load() {
		f.deliver() // admitted locally as the mode switched back
	}
}

// owing reports whether rate units wait to be charged.
func (f *Failover) owing() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.debts) > 0 || f.rateOut != nil
}

// chargeRates charges the shared backend's rate buckets with what this
// instance admitted locally: first a charge whose outcome is unknown,
// again, then what is owed now. It stops at the first outage.
//
// What a scope's local bucket admitted and has not yet drained at its
// share of the rate is what the shared bucket must still hold of it: the
// instances' local buckets, each with 1/N of the rate and burst and full
// when the spell began, together never hold less than a bucket with the
// whole rate fed by all of them would. So each scope is charged the least
// of its local level (plus the unit its share's burst lost to rounding)
// and what was admitted on it, and units that the share already drained
// are not charged: an outage of an hour does not leave the shared bucket
// an hour in debt. Charged as of now, never refused, the shared bucket
// then admits over any span across the outage at most burst + limit·t
// per period, its own bound (when every instance degraded together).
func (f *Failover) chargeRates(ctx context.Context) error {
	rc, ok := f.shared.(RateCharger)
	if !ok {
		return nil
	}
	took := false // one batch of fresh debts per call: under load they never end
	for {
		f.mu.Lock()
		b := f.rateOut
		if b == nil {
			if took || len(f.debts) == 0 {
				f.mu.Unlock()
				return nil
			}
			took = true
			owed := f.debts
			f.debts = map[string]*rateDebt{}
			f.rateSeq++
			b = &rateBatch{id: "rate:" + f.id + ":" + strconv.FormatUint(f.rateSeq, 10)}
			f.mu.Unlock()
			// The levels are read after the debts were taken, so they
			// hold every unit the debts count.
			b.charges = f.rateCharges(ctx, owed)
			if len(b.charges) == 0 {
				continue
			}
			f.mu.Lock()
			f.rateOut = b
		}
		f.mu.Unlock()
		err := rc.ChargeRates(ctx, b.id, b.charges)
		if err != nil && outage(err) {
			return err
		}
		if err != nil {
			f.o.Log.Error("charging locally admitted rate units failed; dropped", slog.String("error", err.Error()))
		}
		f.mu.Lock()
		f.rateOut = nil
		f.mu.Unlock()
	}
}

// rateCharges returns what to charge of the units owed: per scope, the
// least of what was admitted and what its local bucket still holds.
func (f *Failover) rateCharges(ctx context.Context, owed map[string]*rateDebt) []RateCharge {
	n := int64(f.instances())
	// slack is the unit a share's burst lost to rounding down.
	slack := func(r Rate) int64 {
		b := r.Burst
		if b == 0 {
			b = r.Limit
		}
		if n > 1 && b%n != 0 {
			return 1
		}
		return 0
	}
	out := make([]RateCharge, 0, len(owed))
	for key, d := range owed {
		u, err := f.local.Use(ctx, key)
		if err != nil {
			// Closed: charge everything admitted, the safe side.
			u.Requests.Level, u.TokensRate.Level = d.req, d.tok
		}
		l := d.scope.Limits
		c := RateCharge{Scope: d.scope,
			Requests: max(min(d.req, u.Requests.Level+slack(l.Requests)), 0),
			Tokens:   max(min(d.tok, u.TokensRate.Level+slack(l.TokensRate)), 0)}
		if c.Requests > 0 || c.Tokens > 0 {
			out = append(out, c)
		}
	}
	return out
}

func (f *Failover) instances() int {
	n := f.o.Instances()
	if n < 1 {
		n = 1
	}
	return n
}

// budgetMeters are the Ticket.Remaining meters that knownUse tracks.
var budgetMeters = [4]int{meterTokensDay, meterTokensMonth, meterGPU, meterCost}

// learnAll records the budget use of every scope of a chain, as a shared
// admission reported it (BudgetReporter).
func (f *Failover) learnAll(chain []Scope, budgets []ScopeBudgets) {
	f.knownMu.Lock()
	defer f.knownMu.Unlock()
	for i := range budgets {
		b := &budgets[i]
		if i >= len(chain) || chain[i].Limits == nil || b.Key == "" {
			continue // no limits: nothing to share
		}
		k := f.known[b.Key]
		if k == nil {
			if len(f.known) > 100000 {
				clear(f.known)
			}
			k = &knownUse{}
			f.known[b.Key] = k
		}
		for j, w := range [4]WindowUse{b.TokensDay, b.TokensMonth, b.GPUMillis, b.CostMicros} {
			k.used[j], k.until[j] = max(w.Used, 0), w.End
		}
	}
}

// learn records the budget use a shared admission reported, from a
// backend that reports only the tightest scope of each meter (a Ticket's
// Remaining): the other scopes of the chain keep what was last seen of
// them (from an admission where they were the tightest, or a denial),
// else nothing, and their share is then the whole limit ÷ instances. A
// BudgetReporter (redisquota) reports every scope, and learnAll takes it.
func (f *Failover) learn(t *Ticket) {
	f.knownMu.Lock()
	defer f.knownMu.Unlock()
	for i, m := range budgetMeters {
		r := t.Remaining[m]
		if r.Scope == "" {
			continue
		}
		k := f.known[r.Scope]
		if k == nil {
			if len(f.known) > 100000 {
				clear(f.known)
			}
			k = &knownUse{}
			f.known[r.Scope] = k
		}
		k.used[i], k.until[i] = max(r.Limit-r.Remaining, 0), r.ResetAt
	}
}

// learnDenial records the budget use a shared denial reported: a denial
// names the scope it stopped at, which need not be the tightest of any
// admission, so it tells of a scope learn may never see.
func (f *Failover) learnDenial(err error) {
	var d *Denial
	if !errors.As(err, &d) || d.Scope == "" || d.Code != CodeQuotaExceeded {
		return
	}
	i := -1
	switch {
	case d.Dimension == DimTokens && d.Window == WindowDay:
		i = 0
	case d.Dimension == DimTokens && d.Window == WindowMonth:
		i = 1
	case d.Dimension == DimGPUSeconds:
		i = 2
	case d.Dimension == DimCost:
		i = 3
	}
	if i < 0 || d.ResetAt.IsZero() {
		return
	}
	f.knownMu.Lock()
	defer f.knownMu.Unlock()
	k := f.known[d.Scope]
	if k == nil {
		if len(f.known) > 100000 {
			clear(f.known)
		}
		k = &knownUse{}
		f.known[d.Scope] = k
	}
	k.used[i], k.until[i] = max(d.Used, 0), d.ResetAt
}

// share returns a scope's limits scaled down to this instance's share: a
// rate or concurrency bound divided by the instance count, and a budget's
// remainder (what the shared backend last reported left in the current
// window, else the whole budget) divided likewise, at least Floor.
func (f *Failover) share(scope string, l *Limits) *Limits {
	if l == nil {
		return nil
	}
	n := int64(f.instances())
	if f.count.Swap(n) != n {
		f.shares.Clear() // the instance count changed
	}
	key := shareKey{scope, l}
	if s, ok := f.shares.Load(key); ok {
		return f.lessHeld(scope, s.(*Limits))
	}
	part := func(v int64) int64 {
		if v <= 0 {
			return v
		}
		return max(v/n, f.o.Floor)
	}
	now := f.now()
	f.knownMu.Lock()
	k := f.known[scope]
	f.knownMu.Unlock()
	budget := func(b Bound, i int) Bound {
		v, ok := b.Max()
		if !ok {
			return b
		}
		left := v
		if k != nil && now.Before(k.until[i]) {
			left = max(v-k.used[i], 0)
		}
		if left == 0 {
			return AtMost(0)
		}
		return AtMost(part(left))
	}
	rate := func(r Rate) Rate {
		if r.IsZero() {
			return r
		}
		burst := r.Burst
		if burst == 0 {
			burst = r.Limit
		}
		return Rate{Limit: part(r.Limit), Period: r.Period, Burst: part(burst)}
	}
	c := *l
	c.Requests, c.TokensRate = rate(l.Requests), rate(l.TokensRate)
	c.TokensDay, c.TokensMonth = budget(l.TokensDay, 0), budget(l.TokensMonth, 1)
	c.GPUMillisMonth, c.CostMicrosMonth = budget(l.GPUMillisMonth, 2), budget(l.CostMicrosMonth, 3)
	if v, ok := l.Concurrency.Max(); ok {
		c.Concurrency = AtMost(part(v))
	}
	f.shares.Store(key, &c)
	return f.lessHeld(scope, &c)
}

// lessHeld returns s with its concurrency share reduced by the slots this
// instance's live shared tickets hold on scope: they were admitted by the
// shared backend and still run, so without this an instance that held its
// share when the outage began would admit its share again locally.
func (f *Failover) lessHeld(scope string, s *Limits) *Limits {
	v, ok := s.Concurrency.Max()
	if !ok || v == 0 {
		return s
	}
	f.mu.Lock()
	f.expireSlots(f.now())
	held := f.slots[scope]
	f.mu.Unlock()
	if held == 0 {
		return s
	}
	c := *s
	c.Concurrency = AtMost(max(v-held, 0))
	return &c
}

// prime fills the local rate buckets of the scopes of chain not yet filled
// in this degraded spell, so that entering it grants no fresh burst: each
// instance then admits at most its share of the rate from the first
// moment, on top of what the shared buckets admitted before the outage.
func (f *Failover) prime(chain []Scope) {
	f.mu.Lock()
	todo := false
	for _, s := range chain {
		if s.Limits != nil && !f.primed[s.Key] && (!s.Limits.Requests.IsZero() || !s.Limits.TokensRate.IsZero()) {
			todo = true
			break
		}
	}
	if !todo {
		f.mu.Unlock()
		return
	}
	fill := make([]Scope, 0, len(chain))
	for _, s := range chain {
		if s.Limits != nil && !f.primed[s.Key] {
			f.primed[s.Key] = true
			fill = append(fill, s)
		}
	}
	f.mu.Unlock()
	f.local.fillRates(fill)
}

// Acquire implements Backend.
func (f *Failover) Acquire(ctx context.Context, r Request) (Ticket, error) {
	if !f.degraded.Load() {
		seq := f.failSeq.Load()
		var t Ticket
		var budgets []ScopeBudgets
		var err error
		if br, ok := f.shared.(BudgetReporter); ok {
			t, budgets, err = br.AcquireBudgets(ctx, r)
		} else {
			t, err = f.shared.Acquire(ctx, r)
		}
		if !outage(err) {
			f.ok()
			if err == nil {
				f.remember(&t, &r)
				if budgets != nil {
					f.learnAll(r.Chain, budgets)
				} else {
					f.learn(&t)
				}
			} else {
				f.learnDenial(err)
			}
			return t, err
		}
		if down, err := f.failed(ctx, seq, err); !down {
			return Ticket{}, err
		}
	}
	if back, _ := f.returning(); back {
		// Local shares now would overlap the shared admissions of the
		// instances back already (see ReadmitHold).
		return Ticket{}, ErrResyncing
	}
	if hd, ok := f.shared.(HeldDecider); ok {
		// What this instance holds of the shared limits is counted there
		// already: spent first, whatever on_outage says.
		t, err := hd.AcquireHeld(ctx, r)
		if err == nil {
			f.remember(&t, &r)
			return t, nil
		}
		if !errors.Is(err, ErrUnavailable) {
			return t, err
		}
	}
	for _, s := range r.Chain {
		if s.Limits != nil && s.Limits.OnOutage == OutageDeny {
			return Ticket{}, fmt.Errorf("quota store unreachable and scope %s denies on outage: %w", s.Key, ErrUnavailable)
		}
	}
	local := r
	local.Chain = make([]Scope, len(r.Chain))
	for i, s := range r.Chain {
		local.Chain[i] = Scope{Key: s.Key, Limits: f.share(s.Key, s.Limits), Loc: s.Loc}
	}
	f.prime(local.Chain)
	t, err := f.local.Acquire(ctx, local)
	if err != nil {
		return t, err
	}
	t.ID = localPrefix + f.id + "." + t.ID
	f.remember(&t, &r)
	f.owe(r.Chain, r.Ask.Requests, t.Tokens)
	return t, nil
}

func (f *Failover) remember(t *Ticket, r *Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	is := &issued{chain: r.Chain, meta: r.Meta, expires: t.ExpiresAt,
		tokens: t.Tokens, gpu: r.Ask.GPUMillis, cost: r.Ask.CostMicros,
		slot:      r.Ask.Concurrency && !strings.HasPrefix(t.ID, localPrefix),
		localSlot: r.Ask.Concurrency && strings.HasPrefix(t.ID, localPrefix)}
	if old := f.chains[t.ID]; old != nil {
		f.drop(old)
	}
	f.chains[t.ID] = is
	if is.slot {
		for _, s := range r.Chain {
			f.slots[s.Key]++
		}
		heap.Push(&f.holders, is)
	}
	if len(f.chains)%4096 == 0 {
		// Tickets never settled: past the retention a late settle is
		// refused anyway, so they need not be remembered.
		retention := f.o.Local.SettledRetention
		if retention <= 0 {
			retention = DefaultSettledRetention
		}
		cutoff := f.now().Add(-retention)
		for id, is := range f.chains {
			if is.expires.Before(cutoff) {
				delete(f.chains, id)
				f.drop(is)
			}
		}
	}
}

// forget drops a settled ticket and returns its chain, nil if it was not
// remembered (a replay, or a ticket another instance issued).
func (f *Failover) forget(id string) []Scope {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.chains[id]
	delete(f.chains, id)
	if c == nil {
		return nil
	}
	f.drop(c)
	return c.chain
}

// expireSlots stops counting the slots of shared tickets past their
// expiry: the shared backend freed them (a heartbeat moved an expiry
// later: the ticket goes back in its place). Called with f.mu held.
func (f *Failover) expireSlots(now time.Time) {
	for len(f.holders) > 0 {
		is := f.holders[0]
		switch {
		case !is.slot:
			heap.Pop(&f.holders) // settled or dropped already
		case is.expires.After(now):
			if is.expires.Equal(is.queued) {
				return
			}
			heap.Pop(&f.holders) // heartbeated: requeue at its new expiry
			heap.Push(&f.holders, is)
		default:
			heap.Pop(&f.holders)
			f.drop(is)
		}
	}
}

// slotHeap is a min-heap of slot-holding tickets by the expiry they were
// queued with.
type slotHeap []*issued

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i].queued.Before(h[j].queued) }
func (h slotHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *slotHeap) Push(x any) {
	is := x.(*issued)
	is.queued = is.expires
	*h = append(*h, is)
}
func (h *slotHeap) Pop() any {
	old := *h
	is := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return is
}

// drop releases the slots a forgotten ticket held. Called with f.mu held.
func (f *Failover) drop(is *issued) {
	if !is.slot {
		return
	}
	is.slot = false
	for _, s := range is.chain {
		if f.slots[s.Key]--; f.slots[s.Key] <= 0 {
			delete(f.slots, s.Key)
		}
	}
}

// localTicket splits a local ticket's id into the local engine's. A local
// ticket another instance issued answers ErrUnavailable: only its issuer
// knows it (it decided it alone, while the shared backend was away), so
// the caller retries, and a load balancer sends the retry on.
func (f *Failover) localTicket(id string) (lid string, local bool, err error) {
	rest, ok := strings.CutPrefix(id, localPrefix)
	if !ok {
		return "", false, nil
	}
	owner, lid, _ := strings.Cut(rest, ".")
	if owner != f.id {
		return "", true, fmt.Errorf("ticket %s was admitted by another instance while the quota store was away; only that instance can settle it: %w", id, ErrUnavailable)
	}
	return lid, true, nil
}

// Lookup implements Backend. While degraded it answers for the shared
// tickets this instance issued; for others it returns ErrUnavailable.
func (f *Failover) Lookup(ctx context.Context, id string) (TicketInfo, error) {
	if lid, ok, err := f.localTicket(id); ok {
		if err != nil {
			return TicketInfo{}, err
		}
		info, err := f.local.Lookup(ctx, lid)
		if err == nil {
			info.ID = id
		}
		return info, err
	}
	if !f.degraded.Load() {
		seq := f.failSeq.Load()
		info, err := f.shared.Lookup(ctx, id)
		if !outage(err) {
			f.ok()
			return info, f.notReadmitted(ctx, id, err)
		}
		if down, err := f.failed(ctx, seq, err); !down {
			return TicketInfo{}, err
		}
	}
	f.mu.Lock()
	is := f.chains[id]
	f.mu.Unlock()
	if is == nil {
		// Issued elsewhere: only the shared store knows it, and it may
		// be back before the probe says so.
		info, err := f.shared.Lookup(ctx, id)
		return info, f.notReadmitted(ctx, id, err)
	}
	return TicketInfo{ID: id, Meta: is.meta, ExpiresAt: is.expires, Tokens: is.tokens, GPUMillis: is.gpu, CostMicros: is.cost}, nil
}

// Settle implements Backend.
func (f *Failover) Settle(ctx context.Context, id string, u Usage) (Settlement, error) {
	if lid, ok, err := f.localTicket(id); ok {
		if err != nil {
			return Settlement{}, err
		}
		s, err := f.local.Settle(ctx, lid, u)
		if err != nil {
			return s, err
		}
		s.TicketID = id
		f.mu.Lock()
		twin := ""
		if is := f.chains[id]; is != nil {
			twin = is.twin
		}
		f.mu.Unlock()
		chain := f.forget(id)
		if chain == nil {
			return s, nil // a replay: charged the first time
		}
		if twin != "" {
			f.settleTwin(ctx, twin, chain)
		}
		if s.ReservedTokens > 0 {
			// The local tokens_rate bucket takes the difference: so
			// does what the shared one is owed.
			f.owe(chain, 0, sadd(u.InputTokens, u.OutputTokens)-s.ReservedTokens)
		}
		item := &spooled{charge: "local:" + id, chain: chain, usage: u, at: s.SettledAt, last: s.SettledAt, bucket: bucketOf(chain, s.SettledAt)}
		if !f.degraded.Load() {
			// The shared backend came back while this ticket ran: deliver
			// its use now.
			seq := f.failSeq.Load()
			err := f.shared.Charge(ctx, item.charge, chain, u, item.at)
			if !outage(err) {
				f.ok()
				return s, nil
			}
			f.failed(ctx, seq, err)
		}
		// Settled here: spooled, and delivered by the probe loop (which
		// runs while the spool is not empty, degraded or not).
		f.mu.Lock()
		f.spoolCharge(item)
		f.mu.Unlock()
		f.deliver()
		return s, nil
	}
	if !f.degraded.Load() {
		seq := f.failSeq.Load()
		s, err := f.shared.Settle(ctx, id, u)
		if !outage(err) {
			f.ok()
			if err == nil {
				f.forget(id)
			}
			return s, f.notReadmitted(ctx, id, err)
		}
		if down, err := f.failed(ctx, seq, err); !down {
			// Not settled: the caller retries (settles are idempotent).
			return Settlement{}, err
		}
	}
	f.mu.Lock()
	is := f.chains[id]
	delete(f.chains, id)
	if is != nil {
		f.drop(is)
	}
	f.mu.Unlock()
	if is == nil {
		// Issued elsewhere: only the shared store can settle it. An
		// outage is ErrUnavailable, so that the caller retries rather
		// than lose the use; so is a ticket it does not know while this
		// instance is degraded (the state may have been lost and rebuilt,
		// and the issuer not have readmitted it yet).
		s, err := f.shared.Settle(ctx, id, u)
		return s, f.notReadmitted(ctx, id, err)
	}
	now := f.now().UTC()
	f.mu.Lock()
	f.spool = append(f.spool, &spooled{ticket: id, chain: is.chain, usage: u, at: now, last: now})
	f.mu.Unlock()
	tokens := sadd(u.InputTokens, u.OutputTokens)
	return Settlement{TicketID: id, Usage: u, SettledAt: now, Meta: is.meta,
		ReservedTokens: is.tokens, ReservedGPUMillis: is.gpu, ReservedCostMicros: is.cost,
		Overrun: tokens > is.tokens || u.GPUMillis > is.gpu || u.CostMicros > is.cost}, nil
}

// spoolCharge adds a local charge to the spool, merged into a waiting one of
// the same chain and quarter hour when there is one. Called with f.mu held.
func (f *Failover) spoolCharge(item *spooled) {
	for i := len(f.spool) - 1; i >= 0 && i >= len(f.spool)-64; i-- {
		s := f.spool[i]
		if s.bucket == item.bucket && !s.sending && s.charge != "" {
			addUsage(&s.usage, item.usage)
			s.parts = append(s.parts, spoolPart{strings.TrimPrefix(item.charge, "local:"), item.last, item.usage})
			if len(s.parts) > maxParts {
				addUsage(&s.folded, s.parts[0].u)
				if s.parts[0].at.After(s.foldedLast) {
					s.foldedLast = s.parts[0].at
				}
				s.parts = s.parts[1:]
			}
			if item.last.After(s.last) {
				s.last = item.last
			}
			return
		}
	}
	item.parts = []spoolPart{{strings.TrimPrefix(item.charge, "local:"), item.last, item.usage}}
	f.spool = append(f.spool, item)
}

// bucketOf names a chain's quarter hour, within which its charges merge.
func bucketOf(chain []Scope, at time.Time) string {
	var b strings.Builder
	for _, s := range chain {
		b.WriteString(s.Key)
		b.WriteByte(' ')
	}
	b.WriteString(at.UTC().Truncate(15 * time.Minute).Format(time.RFC3339))
	return b.String()
}

// Heartbeat implements Backend.
func (f *Failover) Heartbeat(ctx context.Context, id string, ttl time.Duration) (time.Time, error) {
	if lid, ok, err := f.localTicket(id); ok {
		if err != nil {
			return time.Time{}, err
		}
		return f.local.Heartbeat(ctx, lid, ttl)
	}
	if !f.degraded.Load() {
		seq := f.failSeq.Load()
		exp, err := f.shared.Heartbeat(ctx, id, ttl)
		if !outage(err) {
			f.ok()
			if err == nil {
				f.mu.Lock()
				if is := f.chains[id]; is != nil {
					is.expires = exp
				}
				f.mu.Unlock()
			}
			return exp, f.notReadmitted(ctx, id, err)
		}
		if down, err := f.failed(ctx, seq, err); !down {
			return time.Time{}, err
		}
	}
	// The lease lives in the unreachable store; it will expire there and
	// free its slot, which is the safe side. Here the ticket still runs,
	// and keeps counting against the local concurrency share.
	exp := f.now().Add(ttl).UTC()
	f.mu.Lock()
	if is := f.chains[id]; is != nil && exp.After(is.expires) {
		is.expires = exp
	}
	f.mu.Unlock()
	return exp, nil
}

// notReadmitted (asked in normal mode or, for a ticket issued elsewhere,
// while degraded) turns the shared backend's ErrUnknownTicket into
// ErrUnavailable within ReadmitGrace of a rebuild: the ticket may be live
// on the instance that issued it, which readmits it at its next probe, and
// a caller told "unknown" would give up on a settle that is still owed.
//
// An instance whose own calls never failed may not have seen the state
// lost and rebuilt (the epoch is back before it looked): an unknown ticket
// makes it probe, and a probe that finds the state changed takes it
// through degraded mode (rebuild observed, its own live tickets
// readmitted) and answers ErrUnavailable too.
func (f *Failover) notReadmitted(ctx context.Context, id string, err error) error {
	if !errors.Is(err, ErrUnknownTicket) {
		return err
	}
	var why string
	if at := f.rebuiltAt.Load(); at != 0 && f.now().UnixNano()-at <= int64(f.o.ReadmitGrace) {
		why = "the shared quota state was rebuilt; its issuer may not have readmitted it yet"
	} else if perr := f.health(ctx); errors.Is(perr, ErrStateLost) {
		f.trip(perr)
		why = "the shared quota state was lost or rebuilt: " + perr.Error()
	} else {
		return err
	}
	if f.o.Settled != nil {
		// Settled, its use in the ledger: unknown is the answer (the
		// caller may find the settlement there), not a ticket to wait
		// for. Asked only here, where the answer would otherwise be
		// "retry": it flushes the usage queue and reads the database.
		if done, serr := f.o.Settled(ctx, []string{id}); serr == nil && done[id] {
			return err
		}
	}
	return fmt.Errorf("%v (%s): %w", err, why, ErrUnavailable)
}

// Use implements Backend: the shared counters, or while degraded the local
// ones (this instance's share only).
func (f *Failover) Use(ctx context.Context, key string) (ScopeUse, error) {
	if !f.degraded.Load() {
		seq := f.failSeq.Load()
		u, err := f.shared.Use(ctx, key)
		if !outage(err) {
			f.ok()
			return u, err
		}
		if down, err := f.failed(ctx, seq, err); !down {
			return ScopeUse{}, err
		}
	}
	return f.local.Use(ctx, key)
}

// Restore implements Backend for the shared backend.
func (f *Failover) Restore(ctx context.Context, key string, d Dimension, w Window, start time.Time, used int64) error {
	return f.shared.Restore(ctx, key, d, w, start, used)
}

// Close stops probing and closes both engines. Spooled usage not yet
// delivered is reported in the log (it is also in the durable usage events).
func (f *Failover) Close() error {
	if f.closed.Swap(true) {
		return nil
	}
	close(f.stop)
	f.wg.Wait()
	if n := f.Spooled(); n > 0 {
		f.o.Log.Error("closing with spooled usage not delivered to the shared quota backend", slog.Int("settlements", n))
	}
	return errors.Join(f.local.Close(), f.shared.Close())
}
