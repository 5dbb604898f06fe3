package alerts

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/usage"
)

// DefaultThresholds are the percentages alerted on when none are configured.
var DefaultThresholds = []int{80, 90, 100}

// DefaultOutboxMax bounds the undelivered rows of the outbox.
const DefaultOutboxMax = 10_000

// Usage reads a scope's counters (the quota engine, or metering.Meter).
type Usage interface {
	Use(ctx context.Context, scope string) (quota.ScopeUse, error)
}

// Alerter looks at the tracked scopes' budgets and records each threshold
// newly crossed in the period: once across every instance sharing Store,
// announced by the instance whose record won (log line, OnAlert, queued
// webhooks). Its own memory of what it has seen keeps the store out of
// every sweep but the ones that find something new.
type Alerter struct {
	Tracker *Tracker
	Usage   Usage
	Policy  func() *policy.Snapshot
	Store   Store
	Log     *slog.Logger
	// Thresholds are percentages of a limit, ascending (nil:
	// DefaultThresholds).
	Thresholds []int
	// Global is true when the platform has a webhook of its own (config):
	// every event is queued for it too.
	Global bool
	// OutboxMax bounds the undelivered deliveries (0: DefaultOutboxMax).
	OutboxMax int
	// OnAlert, when set, is told each event this instance announces
	// (the metric).
	OnAlert func(ev *Event)
	// OnDropped, when set, is told deliveries not queued because the
	// outbox was full (the metric).
	OnDropped func(n int)
	// Queued, when set, is told that deliveries were queued (it wakes the
	// dispatcher).
	Queued func()
	// Now is the clock (nil: time.Now).
	Now func() time.Time

	seen map[meterKey]*meterState
}

// meterKey is one budget of one scope.
type meterKey struct {
	scope     string
	dimension quota.Dimension
	window    quota.Window
}

// meterState is what this instance knows was recorded for a budget in its
// current period: a bit per threshold.
type meterState struct {
	period string
	done   uint64
}

// budget is one budget of a scope as the sweep reads it.
type budget struct {
	dim   quota.Dimension
	win   quota.Window
	limit int64
	use   quota.WindowUse
	scale int64 // engine units per reported unit
	unit  string
}

func (a *Alerter) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

func (a *Alerter) thresholds() []int {
	if len(a.Thresholds) > 0 {
		return a.Thresholds
	}
	return DefaultThresholds
}

// Sweep looks at every tracked scope once. An error reading one scope or
// recording one event is logged and retried at the next sweep; Sweep
// returns the first, and how many events this instance announced. One
// goroutine sweeps (Run's): calls must not overlap.
func (a *Alerter) Sweep(ctx context.Context) (int, error) {
	if a.seen == nil {
		a.seen = map[meterKey]*meterState{}
	}
	snap := a.Policy()
	type item struct{ scope, tenant string }
	var items []item
	if full := a.Tracker.active(func(scope, tenant string) { items = append(items, item{scope, tenant}) }); full > 0 {
		a.Log.Warn("alerts: the scope tracker is full: scopes admitted meanwhile are not watched for thresholds until others go idle",
			slog.Int64("admissions", full), slog.Int("tracked", a.Tracker.Len()))
	}
	live := make(map[meterKey]bool, len(a.seen))
	var first error
	fired := 0
	for _, it := range items {
		r := snap.Effective(it.scope)
		if !HasBudget(r.Limits) {
			continue
		}
		use, err := a.Usage.Use(ctx, it.scope)
		if err != nil {
			first = cmpErr(first, fmt.Errorf("alerts: use of %s: %w", it.scope, err))
			for _, b := range budgets(r.Limits, quota.ScopeUse{}) {
				live[meterKey{it.scope, b.dim, b.win}] = true // keep what we know
			}
			continue
		}
		loc := time.UTC
		if it.scope != policy.GlobalScope {
			loc = snap.Location(it.tenant)
		}
		for _, b := range budgets(r.Limits, use) {
			k := meterKey{it.scope, b.dim, b.win}
			live[k] = true
			n, err := a.check(ctx, it.scope, it.tenant, loc, k, b)
			fired += n
			first = cmpErr(first, err)
		}
	}
	for k := range a.seen {
		if !live[k] {
			delete(a.seen, k)
		}
	}
	if first != nil {
		a.Log.Warn("alerts: sweep incomplete; retried at the next", slog.String("error", first.Error()))
	}
	return fired, first
}

func cmpErr(first, err error) error {
	if first == nil {
		return err
	}
	return first
}

// budgets lists l's budgets with use's counters.
func budgets(l *quota.Limits, use quota.ScopeUse) []budget {
	var out []budget
	add := func(d quota.Dimension, w quota.Window, bd quota.Bound, wu quota.WindowUse, scale int64, unit string) {
		if n, ok := bd.Max(); ok && n > 0 {
			out = append(out, budget{dim: d, win: w, limit: n, use: wu, scale: scale, unit: unit})
		}
	}
	add(quota.DimTokens, quota.WindowDay, l.TokensDay, use.TokensDay, 1, "tokens")
	add(quota.DimTokens, quota.WindowMonth, l.TokensMonth, use.TokensMonth, 1, "tokens")
	add(quota.DimGPUSeconds, quota.WindowMonth, l.GPUMillisMonth, use.GPUMillis, 1000, "seconds")
	add(quota.DimCost, quota.WindowMonth, l.CostMicrosMonth, use.CostMicros, 1, "micro_usd")
	return out
}

// period names the window a counter is in, and when it ends.
func period(w quota.Window, wu quota.WindowUse, loc *time.Location, now time.Time) (string, time.Time) {
	start := wu.Start
	if start.IsZero() {
		start = now // restored, not yet seen in a chain: the current window
	}
	start = start.In(loc)
	if w == quota.WindowDay {
		p := usage.DayPeriod(start, loc)
		end := wu.End
		if end.IsZero() {
			s, _, _ := usage.PeriodStart(p, loc)
			end = s.AddDate(0, 0, 1)
		}
		return p, end
	}
	p := usage.MonthPeriod(start, loc)
	end := wu.End
	if end.IsZero() {
		s, _, _ := usage.PeriodStart(p, loc)
		end = s.AddDate(0, 1, 0)
	}
	return p, end
}

// check records each threshold of b crossed and not yet known to be
// recorded in its period.
func (a *Alerter) check(ctx context.Context, scope, tenant string, loc *time.Location, k meterKey, b budget) (int, error) {
	now := a.now()
	p, end := period(b.win, b.use, loc, now)
	st := a.seen[k]
	if st == nil || st.period != p {
		st = &meterState{period: p}
		a.seen[k] = st
	}
	fired := 0
	for i, th := range a.thresholds() {
		bit := uint64(1) << i
		if st.done&bit != 0 {
			continue
		}
		// used/limit ≥ th/100, in integers (both are below 2^53).
		if b.use.Used*100 < int64(th)*b.limit {
			break // thresholds ascend
		}
		won, err := a.record(ctx, scope, tenant, p, end, th, b, now)
		if err != nil {
			return fired, err
		}
		st.done |= bit
		if won {
			fired++
		}
	}
	return fired, nil
}

// record makes the event and tries to be the instance that records it.
func (a *Alerter) record(ctx context.Context, scope, tenant, p string, end time.Time, th int, b budget, now time.Time) (bool, error) {
	kind, oid, _ := strings.Cut(scope, "/")
	ev := &Event{
		ID: id.NewAt("evt", now), Type: EventType, At: now.UTC(),
		Scope:     Scope{Key: scope, Kind: kind, ID: oid},
		Dimension: b.dim.String(), Window: b.win.String(), Period: p, Threshold: th,
		Percent: math.Round(float64(b.use.Used)/float64(b.limit)*1000) / 10,
		Used:    ceilDiv(b.use.Used, b.scale), Limit: b.limit / b.scale, Unit: b.unit,
		ResetAt: end,
	}
	if scope == policy.GlobalScope {
		ev.Scope.Kind, ev.Scope.ID = policy.GlobalScope, ""
	}
	tname, sname, err := a.Store.ScopeNames(ctx, tenant, scope)
	if err != nil {
		return false, fmt.Errorf("alerts: names of %s: %w", scope, err)
	}
	if tenant != "" {
		ev.Tenant = &Named{ID: tenant, Name: tname}
	}
	ev.Scope.Name = sname
	body, err := json.Marshal(ev)
	if err != nil {
		return false, fmt.Errorf("alerts: encode event: %w", err)
	}
	max := a.OutboxMax
	if max <= 0 {
		max = DefaultOutboxMax
	}
	rec, err := a.Store.RecordAlert(ctx, ev, body, a.Global, max)
	if err != nil {
		return false, fmt.Errorf("alerts: record %s %s/%s %d%%: %w", scope, ev.Dimension, ev.Window, th, err)
	}
	if !rec.Won {
		return false, nil
	}
	a.Log.Warn("quota threshold crossed",
		slog.String("tenant", tenant), slog.String("scope", scope), slog.String("dimension", ev.Dimension),
		slog.String("window", ev.Window), slog.String("period", p), slog.Int("threshold", th),
		slog.Int64("used", ev.Used), slog.Int64("limit", ev.Limit),
		slog.String("event_id", ev.ID), slog.Float64("percent", ev.Percent), slog.Int("webhooks", rec.Queued))
	if a.OnAlert != nil {
		a.OnAlert(ev)
	}
	if rec.Dropped > 0 {
		a.Log.Error("alerts: the webhook outbox is full: this event's webhooks are NOT queued (raise alerts.outbox_max or fix the receiving endpoints)",
			slog.String("event_id", ev.ID), slog.String("tenant", tenant), slog.String("scope", scope), slog.Int("dropped", rec.Dropped))
		if a.OnDropped != nil {
			a.OnDropped(rec.Dropped)
		}
	}
	if rec.Queued > 0 && a.Queued != nil {
		a.Queued()
	}
	return true, nil
}

func ceilDiv(a, b int64) int64 {
	if b == 1 {
		return a
	}
	return (a + b - 1) / b
}

// ValidateThresholds checks a threshold list: 1 to 16 ascending
// percentages between 1 and 1000.
func ValidateThresholds(ts []int) error {
	if len(ts) == 0 || len(ts) > 16 {
		return fmt.Errorf("between 1 and 16 thresholds are needed, not %d", len(ts))
	}
	for i, t := range ts {
		if t < 1 || t > 1000 {
			return fmt.Errorf("threshold %d is not a percentage between 1 and 1000", t)
		}
		if i > 0 && t <= ts[i-1] {
			return fmt.Errorf("thresholds must ascend: %d follows %d", t, ts[i-1])
		}
	}
	return nil
}

// Run sweeps every interval until ctx ends.
func (a *Alerter) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, _ = a.Sweep(ctx) // Sweep logs its errors
	}
}
