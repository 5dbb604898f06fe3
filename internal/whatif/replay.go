package whatif

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/usage"
)

// slotKinds are the kinds of usage event whose work held a concurrency
// slot while it lasted, besides runs (which the runs table times): the
// OpenAI-compatible gateway's calls and runs through the LangFlow front.
var slotKinds = map[string]bool{
	"chat_completion": true, "completion": true, "embedding": true,
	"langflow_run": true, "langflow_webhook": true, "langflow_build": true,
}

// runKind is the kind of a run's own usage event: the runs table replays
// runs (with their start), so these events are not replayed again.
const runKind = "run"

// Replay replays tenantID's ledger ("" every tenant's) over [to-window, to)
// against draft, through a fresh in-process engine on a simulated clock.
//
// Each usage event is an admission at its time: it asks what it used
// (tokens as the estimate: the ledger keeps no estimates) with the
// gateway's minimum for a token ask, so a budget near its end clamps it
// as it would have, and, admitted, is settled with what it used (with no
// more output than a clamp allowed). A denied one is not settled: it
// would not have happened, and the events after it are replayed as
// recorded, as if it had consumed nothing. Runs come from the runs table:
// each asks a request and a slot at its start and gives the slot back at
// its end. A slot ask that finds a concurrency limit full waits in the
// queue (opts.MaxWait, opts.QueueMax) for a slot a settlement frees, as
// the admission queue would, and its work moves later by the wait.
//
// Budgets start where the ledger had them: the use recorded in the day
// and month windows current at the start of the window, before it, is
// restored into the engine first (as recorded, not decided again).
// Scoped to a tenant, the global scope is left out of every chain: its
// pool is shared with other tenants, whose use is not read.
func Replay(ctx context.Context, ledger Ledger, draft *Draft, tenantID string, window time.Duration, to time.Time, opts Options) (*Report, error) {
	if window <= 0 || window > MaxWindow {
		return nil, errs.Field(errs.Invalid, "window", "window must be more than 0 and at most 90d, not %s", FormatWindow(window))
	}
	opts = opts.withDefaults()
	from := to.Add(-window)
	warm := warmupStart(from)
	n, err := ledger.WhatIfCount(ctx, tenantID, warm, to, opts.MaxEvents)
	if err != nil {
		return nil, err
	}
	if n > opts.MaxEvents {
		return nil, errs.Field(errs.Invalid, "window", "the ledger holds more than %d events and runs for window %s (with the budget windows current at its start); the limit is whatif_max_events: replay a shorter window",
			opts.MaxEvents, FormatWindow(window))
	}
	r := newReplayer(draft.Snapshot, tenantID, from, opts)
	defer r.engine.Close()
	if err := r.warmup(ctx, ledger.WhatIfEvents(ctx, tenantID, warm, from)); err != nil {
		return nil, err
	}
	if err := r.run(ctx, ledger.WhatIfEvents(ctx, tenantID, from, to), ledger.WhatIfRuns(ctx, tenantID, from, to), to); err != nil {
		return nil, err
	}
	rep := &Report{Window: FormatWindow(window), From: from, To: to, TenantID: tenantID, Replayed: r.counts, Notes: slices.Clone(draft.Notes)}
	rep.Walls = r.walls()
	if tenantID != "" {
		rep.Notes = append(rep.Notes, "the global scope is left out: its pool is shared with other tenants, whose use a tenant's replay does not read")
	}
	if r.counts.Skipped > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d events have no chain under the draft (their project is gone) and were not replayed", r.counts.Skipped))
	}
	return rep, nil
}

// warmupStart is the earliest start of a month window current at from in
// any time zone (UTC-12 to UTC+14).
func warmupStart(from time.Time) time.Time {
	t := from.UTC().Add(-14 * time.Hour)
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC).Add(-14 * time.Hour)
}

// FormatWindow writes a window as ParseWindow reads it: "7d", "36h".
func FormatWindow(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return strings.TrimSuffix(strings.TrimSuffix(d.String(), "0s"), "0m")
}

// ParseWindow reads a window: a number of days ("7d") or a Go duration
// ("24h", "90m"), more than 0 and at most MaxWindow; errors name field.
func ParseWindow(field, s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if _, err = fmt.Sscanf(days, "%d", &n); err == nil && fmt.Sprint(n) == days && n <= 10_000 {
			d = time.Duration(n) * 24 * time.Hour
		} else {
			err = errors.New("bad days")
		}
	} else {
		d, err = time.ParseDuration(s)
	}
	switch {
	case s == "":
		return 0, errs.Field(errs.Invalid, field, "%s is required: how far back to replay, such as 7d or 24h", field)
	case err != nil:
		return 0, errs.Field(errs.Invalid, field, "%s %q is not a window such as 7d or 24h", field, s)
	case d <= 0 || d > MaxWindow:
		return 0, errs.Field(errs.Invalid, field, "%s %q must be more than 0 and at most 90d", field, s)
	}
	return d, nil
}

// ask is one admission of the replay: an event, a run, or either waiting
// in the queue.
type ask struct {
	who   metering.Who
	ask   quota.Ask
	use   quota.Usage
	run   bool
	dur   time.Duration // how long its slot is held (runs)
	ended bool          // false for a run that never ended
	at    time.Time     // when it arrived
	queue string        // the scope whose queue it waits in
}

// release is an admitted run's end: its ticket settles then.
type release struct {
	at     time.Time
	ticket string
	use    quota.Usage
}

type releases []release

func (h releases) Len() int           { return len(h) }
func (h releases) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h releases) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *releases) Push(x any)        { *h = append(*h, x.(release)) }
func (h *releases) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type wallKey struct {
	scope string
	dim   quota.Dimension
	win   quota.Window
}

type replayer struct {
	snap     *policy.Snapshot
	tenantID string
	opts     Options
	engine   *quota.Memory
	now      time.Time
	counts   Counts
	stats    map[wallKey]*Wall
	order    []wallKey
	ends     releases
	waiting  []*ask // in arrival order
	waitsAt  map[string]int
	buf      []quota.Scope
}

func newReplayer(snap *policy.Snapshot, tenantID string, from time.Time, opts Options) *replayer {
	r := &replayer{snap: snap, tenantID: tenantID, opts: opts, now: from, stats: map[wallKey]*Wall{}, waitsAt: map[string]int{}}
	// No ticket may expire before the replay settles it: leases as long
	// as the window allows; settlements are never asked for twice.
	r.engine = quota.NewMemory(quota.Options{Now: func() time.Time { return r.now }, MaxTTL: MaxWindow + 24*time.Hour,
		DefaultTTL: time.Minute, SettledRetention: time.Minute, MaxSettled: 256})
	return r
}

// chainOf resolves who's chain under the draft; nil when it has none.
func (r *replayer) chainOf(who metering.Who) *policy.Chain {
	c, err := r.snap.ChainFor(who.TenantID, who.UserID, who.ProjectID, who.KeyID)
	if err != nil {
		return nil
	}
	return c
}

// scopes are path's scopes, without the global one in a tenant's replay.
func (r *replayer) scopes(path policy.Path) []quota.Scope {
	if r.tenantID == "" {
		return path.Scopes
	}
	r.buf = r.buf[:0]
	for _, sc := range path.Scopes {
		if sc.Key != policy.GlobalScope {
			r.buf = append(r.buf, sc)
		}
	}
	return r.buf
}

// acquire asks the engine as metering.Meter.Acquire does: on the chain's
// path that uses its guarantees, then, for a guarantee that refuses, on
// its pool's shared part.
func (r *replayer) acquire(ctx context.Context, chain *policy.Chain, a quota.Ask, ttl time.Duration) (quota.Ticket, error) {
	var borrow uint64
	for {
		sc := r.scopes(chain.Path(borrow))
		if len(sc) == 0 {
			return quota.Ticket{ID: ""}, nil // nothing governs it
		}
		t, err := r.engine.Acquire(ctx, quota.Request{Chain: sc, Ask: a, TTL: ttl})
		var d *quota.Denial
		if errors.As(err, &d) {
			if j := chain.BorrowAfter(d.Scope); j >= 0 && borrow&(1<<uint(j)) == 0 {
				borrow |= 1 << uint(j)
				continue
			}
		}
		return t, err
	}
}

// warmup restores the budgets current at the window's start from the
// use recorded before it in their windows.
func (r *replayer) warmup(ctx context.Context, events iter.Seq2[usage.Event, error]) error {
	type counter struct {
		scope      string
		loc        *time.Location
		day, month int64 // tokens
		gpu, cost  int64
	}
	sums := map[string]*counter{}
	for e, err := range events {
		if err != nil {
			return err
		}
		if e.Kind == runKind && e.Tokens() == 0 && e.GPUMillis == 0 && e.CostMicros == 0 {
			continue
		}
		r.counts.Warmup++
		chain := r.chainOf(whoOf(&e))
		if chain == nil {
			continue
		}
		for _, sc := range r.scopes(chain.Path(0)) {
			loc := sc.Loc
			if loc == nil {
				loc = time.UTC
			}
			sameMonth := usage.MonthPeriod(e.At, loc) == usage.MonthPeriod(r.now, loc)
			if !sameMonth {
				continue
			}
			c := sums[sc.Key]
			if c == nil {
				c = &counter{scope: sc.Key, loc: loc}
				sums[sc.Key] = c
			}
			c.month += e.Tokens()
			c.gpu += e.GPUMillis
			c.cost += e.CostMicros
			if usage.DayPeriod(e.At, loc) == usage.DayPeriod(r.now, loc) {
				c.day += e.Tokens()
			}
		}
	}
	for _, c := range sums {
		t := r.now.In(c.loc)
		day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, c.loc)
		month := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, c.loc)
		for _, x := range []struct {
			d     quota.Dimension
			w     quota.Window
			start time.Time
			n     int64
		}{{quota.DimTokens, quota.WindowDay, day, c.day}, {quota.DimTokens, quota.WindowMonth, month, c.month},
			{quota.DimGPUSeconds, quota.WindowMonth, month, c.gpu}, {quota.DimCost, quota.WindowMonth, month, c.cost}} {
			if x.n == 0 {
				continue
			}
			if err := r.engine.Restore(ctx, c.scope, x.d, x.w, x.start, x.n); err != nil {
				return fmt.Errorf("what-if: restore %s: %w", c.scope, err)
			}
		}
	}
	return nil
}

// whoOf is who an event charged; its key is the last of its scopes.
func whoOf(e *usage.Event) metering.Who {
	w := metering.Who{TenantID: e.TenantID, UserID: e.UserID, ProjectID: e.ProjectID}
	if n := len(e.Scopes); n > 0 {
		if id, ok := strings.CutPrefix(e.Scopes[n-1], policy.KindKey+"/"); ok {
			w.KeyID = id
		}
	}
	return w
}

// eventAsk is the admission an event stands for.
func eventAsk(e *usage.Event) *ask {
	a := &ask{who: whoOf(e), at: e.At,
		use: quota.Usage{InputTokens: e.InputTokens, OutputTokens: e.OutputTokens, GPUMillis: e.GPUMillis, CostMicros: e.CostMicros}}
	a.ask = quota.Ask{Requests: e.Requests, Tokens: e.Tokens(), CostMicros: e.CostMicros, Model: e.Model,
		Concurrency: e.Requests > 0 && slotKinds[e.Kind]}
	if e.Kind != "metering" && e.Tokens() > 0 {
		// The gateway's ask: it admits a call whose output is cut short
		// rather than refuse it, down to 16 tokens of output.
		a.ask.MinTokens = e.InputTokens + min(e.OutputTokens, 16)
	}
	if e.GPUMillis > 0 {
		a.ask.GPUMillis = 1 // as the gate asks: that GPU time remains; the actual time is settled
	}
	return a
}

func runAsk(x *Run) *ask {
	a := &ask{who: metering.Who{TenantID: x.TenantID, UserID: x.UserID, ProjectID: x.ProjectID}, at: x.Start,
		ask: quota.Ask{Requests: 1, Concurrency: true}, run: true, ended: !x.End.IsZero()}
	if a.ended {
		a.dur = max(x.End.Sub(x.Start), 0)
	}
	return a
}

// run merges the events, the runs' starts and their ends in time order
// and replays them; ends go first at a tie (a slot freed at an instant is
// free for whoever arrives at it).
func (r *replayer) run(ctx context.Context, events iter.Seq2[usage.Event, error], runs iter.Seq2[Run, error], to time.Time) error {
	nextEvent, stopE := iter.Pull2(events)
	defer stopE()
	nextRun, stopR := iter.Pull2(runs)
	defer stopR()
	var ev *usage.Event
	var rn *Run
	pullEvent := func() error {
		for {
			e, err, ok := nextEvent()
			if !ok {
				ev = nil
				return nil
			}
			if err != nil {
				return err
			}
			if e.Kind == runKind {
				continue // the runs table replays the run
			}
			ev = &e
			return nil
		}
	}
	pullRun := func() error {
		x, err, ok := nextRun()
		if !ok {
			rn = nil
			return nil
		}
		if err != nil {
			return err
		}
		rn = &x
		return nil
	}
	if err := pullEvent(); err != nil {
		return err
	}
	if err := pullRun(); err != nil {
		return err
	}
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		// The next thing to happen.
		var at time.Time
		kind := 0 // 1 end, 2 timeout, 3 event, 4 run
		consider := func(t time.Time, k int) {
			if kind == 0 || t.Before(at) {
				at, kind = t, k
			}
		}
		if len(r.ends) > 0 {
			consider(r.ends[0].at, 1)
		}
		if w := r.firstDeadline(); !w.IsZero() {
			consider(w, 2)
		}
		if ev != nil {
			consider(ev.At, 3)
		}
		if rn != nil {
			consider(rn.Start, 4)
		}
		if kind == 0 || !at.Before(to) && kind <= 2 {
			break // nothing left in the window
		}
		if at.After(r.now) {
			r.now = at
		}
		switch kind {
		case 1:
			e := heap.Pop(&r.ends).(release)
			if _, err := r.engine.Settle(ctx, e.ticket, e.use); err != nil && !errors.Is(err, quota.ErrUnknownTicket) {
				return err
			}
			if err := r.serveWaiters(ctx); err != nil {
				return err
			}
		case 2:
			r.expireWaiters()
		case 3:
			r.counts.Events++
			if err := r.admit(ctx, eventAsk(ev), false); err != nil {
				return err
			}
			if err := pullEvent(); err != nil {
				return err
			}
		case 4:
			r.counts.Runs++
			if err := r.admit(ctx, runAsk(rn), false); err != nil {
				return err
			}
			if err := pullRun(); err != nil {
				return err
			}
		}
	}
	// Waiters left at the end of the window: whatever their wait, it ran
	// past the end; they count as queued, not as denied.
	return nil
}

// admit tries a at the replay's now. retry is true for a waiter asking
// again: a refusal other than a full concurrency limit ends its wait.
func (r *replayer) admit(ctx context.Context, a *ask, retry bool) error {
	chain := r.chainOf(a.who)
	if chain == nil {
		r.counts.Skipped++
		return nil
	}
	ttl := time.Minute
	if a.run {
		ttl = a.dur + time.Minute
		if !a.ended {
			ttl = runTTL(chain)
		}
	}
	t, err := r.acquire(ctx, chain, a.ask, ttl)
	var d *quota.Denial
	switch {
	case err == nil:
	case errors.As(err, &d):
		if d.Dimension == quota.DimConcurrency && r.opts.MaxWait > 0 {
			if retry {
				return nil // still full: it waits on
			}
			w := r.wall(d.Scope, d.Dimension, d.Window, d)
			if r.waitsAt[d.Scope] >= r.opts.QueueMax {
				w.Queued.Full++
				r.deny(w, a)
				return nil
			}
			w.Queued.Asks++
			if a.run {
				w.Queued.Runs++
			}
			r.counts.Queued++
			a.queue = d.Scope
			r.waitsAt[d.Scope]++
			r.waiting = append(r.waiting, a)
			return nil
		}
		r.deny(r.wall(d.Scope, d.Dimension, d.Window, d), a)
		return nil
	default:
		return fmt.Errorf("what-if: replay at %s: %w", r.now.Format(time.RFC3339), err)
	}
	r.counts.Admitted++
	if t.ID == "" {
		return nil // a chain that governs nothing
	}
	use := a.use
	if t.Clamped {
		r.counts.Clamped++
		if w := r.clampWall(&t); w != nil {
			w.Clamped.Asks++
			w.Clamped.Tokens += a.ask.Tokens - t.Tokens
		}
		// The call's output stops where its grant did.
		use.OutputTokens = min(use.OutputTokens, max(t.Tokens-use.InputTokens, 0))
	}
	if a.run {
		if a.ended {
			heap.Push(&r.ends, release{at: r.now.Add(a.dur), ticket: t.ID, use: use})
		}
		return nil // a run that never ended holds its slot until the lease expires
	}
	_, err = r.engine.Settle(ctx, t.ID, use)
	if err == nil && a.ask.Concurrency {
		err = r.serveWaiters(ctx)
	}
	return err
}

// runTTL is the lease of a run that never ended: the chain's run timeout
// (metering.DefaultRunTimeout when none) and a minute, as metering leases
// a run's slot.
func runTTL(chain *policy.Chain) time.Duration {
	rt := time.Duration(0)
	for _, sc := range chain.Scopes {
		if sc.Limits != nil && sc.Limits.RunTimeout > 0 && (rt == 0 || sc.Limits.RunTimeout < rt) {
			rt = sc.Limits.RunTimeout
		}
	}
	if rt == 0 {
		rt = metering.DefaultRunTimeout
	}
	return rt + time.Minute
}

func (r *replayer) deny(w *Wall, a *ask) {
	r.counts.Denied++
	w.Denied.Asks++
	w.Denied.Requests += a.ask.Requests
	w.Denied.Tokens += a.ask.Tokens
	if a.run {
		w.Denied.Runs++
	}
}

// serveWaiters gives the waiters, oldest first, another try now that a
// slot may be free.
func (r *replayer) serveWaiters(ctx context.Context) error {
	if len(r.waiting) == 0 {
		return nil
	}
	r.expireWaiters()
	kept := r.waiting[:0]
	pending := r.waiting
	r.waiting = nil
	for _, a := range pending {
		before := r.counts.Admitted
		denied := r.counts.Denied
		r.waitsAt[a.queue]--
		if err := r.admit(ctx, a, true); err != nil {
			return err
		}
		if r.counts.Admitted == before && r.counts.Denied == denied {
			r.waitsAt[a.queue]++
			kept = append(kept, a) // still waiting
		}
	}
	r.waiting = append(kept, r.waiting...)
	return nil
}

// firstDeadline is when the oldest waiter's wait ends; zero when none
// waits.
func (r *replayer) firstDeadline() time.Time {
	if len(r.waiting) == 0 {
		return time.Time{}
	}
	return r.waiting[0].at.Add(r.opts.MaxWait)
}

// expireWaiters denies the waiters whose wait has ended.
func (r *replayer) expireWaiters() {
	i := 0
	for ; i < len(r.waiting) && !r.waiting[i].at.Add(r.opts.MaxWait).After(r.now); i++ {
		a := r.waiting[i]
		r.waitsAt[a.queue]--
		w := r.stats[wallKey{a.queue, quota.DimConcurrency, quota.WindowNone}]
		w.Queued.TimedOut++
		r.deny(w, a)
	}
	r.waiting = r.waiting[i:]
}

// clampWall is the wall a clamped ticket met: the token meter with the
// least left.
func (r *replayer) clampWall(t *quota.Ticket) *Wall {
	var best *quota.Remaining
	for i := range t.Remaining {
		m := &t.Remaining[i]
		if m.Scope == "" || (m.Dimension != quota.DimTokens && m.Dimension != quota.DimTokensRate) {
			continue
		}
		if best == nil || m.Remaining < best.Remaining {
			best = m
		}
	}
	if best == nil {
		return nil
	}
	return r.wall(best.Scope, best.Dimension, best.Window, &quota.Denial{Limit: best.Limit, Period: best.Period})
}

// wall returns the statistics of one limit, first seen now.
func (r *replayer) wall(scope string, d quota.Dimension, w quota.Window, den *quota.Denial) *Wall {
	k := wallKey{scope, d, w}
	if s := r.stats[k]; s != nil {
		return s
	}
	s := &Wall{Scope: scope, Dimension: d.String(), Window: w.String(), Limit: den.Limit, FirstWallAt: r.now}
	if den.Period > 0 {
		s.Period = den.Period.String()
	}
	if real, suffix, ok := policy.SplitSynthetic(scope); ok {
		s.Scope = real
		s.Part = map[string]string{policy.BorrowSuffix: "shared", policy.GuaranteedSuffix: "guaranteed"}[suffix]
	}
	s.Name = r.snap.ScopeLabel(s.Scope)
	r.stats[k] = s
	r.order = append(r.order, k)
	return s
}

// walls lists the walls, first hit first.
func (r *replayer) walls() []Wall {
	out := make([]Wall, 0, len(r.order))
	for _, k := range r.order {
		out = append(out, *r.stats[k])
	}
	slices.SortStableFunc(out, func(a, b Wall) int { return a.FirstWallAt.Compare(b.FirstWallAt) })
	return out
}
