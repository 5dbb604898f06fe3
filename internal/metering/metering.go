// Package metering is the one door every governed unit of work goes
// through: it resolves who is asking into their scope chain under the
// policy in force, asks the quota engine, remembers what each ticket was
// for, and on settlement records the durable usage event. The metering
// API, the flow runtime and the gateway all call it.
package metering

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/usage"
)

// Who is charged: a user, in a tenant, working in a project (optional).
type Who struct {
	TenantID  string
	UserID    string
	ProjectID string
}

// Meter admits and settles work.
type Meter struct {
	engine quota.Backend
	policy *policy.Manager
	rec    *usage.Recorder
	log    *slog.Logger
	now    func() time.Time

	mu      sync.Mutex
	tickets map[string]*ticketMeta

	// OnDecision, when set, is told every admission decision: the kind of
	// work, "admitted", "denied" or "error", and the denying dimension.
	OnDecision func(kind, result, dimension string)
	// OnSettle, when set, is told every first settlement.
	OnSettle func()
}

// ticketMeta is what a settlement needs to know about its ticket.
type ticketMeta struct {
	who       Who
	kind      string
	model     string
	requests  int64
	scopes    []string
	loc       *time.Location
	expiresAt time.Time
}

// New returns a meter.
func New(engine quota.Backend, pm *policy.Manager, rec *usage.Recorder, log *slog.Logger) *Meter {
	return &Meter{engine: engine, policy: pm, rec: rec, log: log, now: time.Now, tickets: map[string]*ticketMeta{}}
}

// Admission is an admitted request.
type Admission struct {
	quota.Ticket
	Priority policy.Priority
	Chain    *policy.Chain
}

// Acquire admits ask for who, or returns the engine's *quota.Denial.
func (m *Meter) Acquire(ctx context.Context, who Who, kind string, ask quota.Ask, ttl time.Duration) (*Admission, error) {
	snap := m.policy.Current()
	if pf := snap.Platform(); pf.ReadOnly {
		msg := "Sluice is in read-only mode: no new work is admitted"
		if pf.Message != "" {
			msg += ": " + pf.Message
		}
		if m.OnDecision != nil {
			m.OnDecision(kind, "denied", "read_only")
		}
		return nil, errs.E(errs.Unavailable, "%s", msg)
	}
	chain, err := snap.Chain(who.TenantID, who.UserID, who.ProjectID)
	if errs.Is(err, errs.NotFound) {
		// The project may have been created on another instance since our
		// last reload: callers have already checked it exists in the store.
		if rerr := m.policy.ReloadIfOlder(ctx, snap); rerr == nil {
			chain, err = m.policy.Current().Chain(who.TenantID, who.UserID, who.ProjectID)
		}
	}
	if err != nil {
		return nil, err
	}
	t, err := m.engine.Acquire(ctx, quota.Request{Chain: chain.Scopes, Ask: ask, TTL: ttl})
	if m.OnDecision != nil {
		var d *quota.Denial
		switch {
		case err == nil:
			m.OnDecision(kind, "admitted", "")
		case errors.As(err, &d):
			m.OnDecision(kind, "denied", d.Dimension.String())
		default:
			m.OnDecision(kind, "error", "")
		}
	}
	if err != nil {
		return nil, err
	}
	meta := &ticketMeta{who: who, kind: kind, model: ask.Model, requests: ask.Requests, scopes: chain.Keys, expiresAt: t.ExpiresAt}
	if len(chain.Scopes) > 1 {
		meta.loc = chain.Scopes[1].Loc
	}
	m.mu.Lock()
	m.tickets[t.ID] = meta
	if len(m.tickets)%1024 == 0 {
		m.dropExpiredLocked()
	}
	m.mu.Unlock()
	return &Admission{Ticket: t, Priority: chain.Priority, Chain: chain}, nil
}

// dropExpiredLocked forgets tickets long past their expiry (the engine has
// already refunded them).
func (m *Meter) dropExpiredLocked() {
	cutoff := m.now().Add(-time.Minute)
	for id, t := range m.tickets {
		if t.expiresAt.Before(cutoff) {
			delete(m.tickets, id)
		}
	}
}

// Owner returns who a live ticket charges, for authorisation of settles.
func (m *Meter) Owner(ticketID string) (Who, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tickets[ticketID]
	if !ok {
		return Who{}, false
	}
	return t.who, true
}

// Settle charges actual use, frees the ticket's slot and records the usage
// event. Replaying a settle returns the first result and records nothing
// new (the event id is the ticket id).
func (m *Meter) Settle(ctx context.Context, ticketID string, u quota.Usage, model string) (quota.Settlement, error) {
	return m.SettleWith(ctx, ticketID, u, model, nil)
}

// SettleWith is Settle with a last word on the usage event (a run adds the
// peak memory and CPU time its sandbox measured).
func (m *Meter) SettleWith(ctx context.Context, ticketID string, u quota.Usage, model string, annotate func(*usage.Event)) (quota.Settlement, error) {
	s, err := m.engine.Settle(ctx, ticketID, u)
	m.mu.Lock()
	meta, known := m.tickets[ticketID]
	if err == nil || errors.Is(err, quota.ErrUnknownTicket) {
		delete(m.tickets, ticketID)
	}
	m.mu.Unlock()
	switch {
	case errors.Is(err, quota.ErrUnknownTicket) && known:
		// The ticket expired before this settle: the engine refunded its
		// reservation, but the work happened, so its use is still recorded
		// durably (and counts again from the roll-ups after a restart).
		s = quota.Settlement{TicketID: ticketID, Usage: u, SettledAt: m.now()}
		m.log.Warn("settle after ticket expiry: usage recorded, not charged to live counters", slog.String("ticket", ticketID))
	case errors.Is(err, quota.ErrUnknownTicket):
		return s, errs.Field(errs.NotFound, "ticket", "ticket %s is unknown or expired (its reservation was released)", ticketID)
	case err != nil:
		return s, err
	case !known:
		return s, nil // a replay: the event was recorded the first time
	}
	if m.OnSettle != nil {
		m.OnSettle()
	}
	if model == "" {
		model = meta.model
	}
	ev := usage.Event{
		ID: ticketID, At: s.SettledAt, TenantID: meta.who.TenantID, UserID: meta.who.UserID, ProjectID: meta.who.ProjectID,
		Kind: meta.kind, Model: model, Requests: meta.requests,
		InputTokens: s.Usage.InputTokens, OutputTokens: s.Usage.OutputTokens, GPUMillis: s.Usage.GPUMillis, CostMicros: s.Usage.CostMicros,
		Scopes: meta.scopes, Loc: meta.loc,
	}
	if annotate != nil {
		annotate(&ev)
	}
	m.rec.Record(ev)
	return s, nil
}

// Heartbeat extends a ticket's lease.
func (m *Meter) Heartbeat(ctx context.Context, ticketID string, ttl time.Duration) (time.Time, error) {
	exp, err := m.engine.Heartbeat(ctx, ticketID, ttl)
	if errors.Is(err, quota.ErrUnknownTicket) {
		return exp, errs.Field(errs.NotFound, "ticket", "ticket %s is unknown or expired", ticketID)
	}
	if err == nil {
		m.mu.Lock()
		if t, ok := m.tickets[ticketID]; ok {
			t.expiresAt = exp
		}
		m.mu.Unlock()
	}
	return exp, err
}

// Use reports a scope's current use.
func (m *Meter) Use(ctx context.Context, scope string) (quota.ScopeUse, error) {
	return m.engine.Use(ctx, scope)
}

// Policy returns the policy manager.
func (m *Meter) Policy() *policy.Manager { return m.policy }

// Restore rebuilds the engine's budget counters from the roll-ups of the
// current windows. Call it at start-up, before serving.
func (m *Meter) Restore(ctx context.Context, store usage.Store) (int, error) {
	rollups, err := store.Rollups(ctx, usage.CurrentPeriods(m.now()))
	if err != nil {
		return 0, err
	}
	snap := m.policy.Current()
	n := 0
	for _, r := range rollups {
		loc := time.UTC
		if r.Scope != policy.GlobalScope {
			loc = snap.Location(r.TenantID)
		}
		start, isDay, err := usage.PeriodStart(r.Period, loc)
		if err != nil {
			continue
		}
		w := quota.WindowMonth
		if isDay {
			w = quota.WindowDay
		}
		if err := m.engine.Restore(ctx, r.Scope, quota.DimTokens, w, start, r.Tokens); err != nil {
			return n, err
		}
		if !isDay {
			if err := m.engine.Restore(ctx, r.Scope, quota.DimGPUSeconds, w, start, r.GPUMillis); err != nil {
				return n, err
			}
			if err := m.engine.Restore(ctx, r.Scope, quota.DimCost, w, start, r.CostMicros); err != nil {
				return n, err
			}
		}
		n++
	}
	return n, nil
}
