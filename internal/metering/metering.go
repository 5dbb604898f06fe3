// Package metering is the one door every governed unit of work goes
// through: it resolves who is asking into their scope chain under the
// policy in force, asks the quota engine, stores with each ticket (in the
// engine, so any instance can settle it) what the ticket is for, and on
// settlement records the durable usage event. The metering API, the flow
// runtime and the gateway all call it.
package metering

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/usage"
)

// Who is charged: a user, in a tenant, working in a project (optional),
// with an API key of theirs (optional: the key the request authenticated
// with, whose scope is then the innermost of the chain).
type Who struct {
	TenantID  string
	UserID    string
	ProjectID string
	KeyID     string
}

// Meter admits and settles work. It keeps no ticket state of its own:
// what a settle needs travels with the ticket in the engine (quota.Request
// Meta), so a settle or heartbeat may land on any instance.
type Meter struct {
	engine quota.Backend
	policy *policy.Manager
	rec    *usage.Recorder
	log    *slog.Logger
	now    func() time.Time
	locs   sync.Map // time zone name → *time.Location

	// OnDecision, when set, is told every admission decision: the kind of
	// work, "admitted", "denied" or "error", and the denying dimension.
	OnDecision func(kind, result, dimension string)
	// OnSettle, when set, is told every first settlement.
	OnSettle func()
	// CommitPatience bounds how long a settle waits for its usage event to
	// be committed before answering 503 (0: 5 s).
	CommitPatience time.Duration
	// Ledger, when set, reads the usage event recorded under an id: a
	// ticket the engine no longer knows (settled on another instance
	// before it was recorded there, or past the engine's memory of
	// settlements) whose settle was acknowledged has one, and a lookup or
	// a replayed settle is answered from it instead of 404.
	Ledger func(ctx context.Context, id string) (usage.Event, bool, error)
	// OnCommitted, when set, is told each settlement whose usage event was
	// committed before the settle answered, with the time (quota.Failover.
	// Committed: a rebuild after a Redis loss then knows which spooled use
	// the ledger holds).
	OnCommitted func(ticketID string, at time.Time)
	// Queue, when set, holds an admission that asks for a concurrency
	// slot while the only refusal is a full concurrency limit: it waits,
	// fairly and bounded, instead of being refused at once (see package
	// admission). Settlements tell it when slots free.
	Queue *admission.Queue
	// Credit, when set, lifts a refusal of a token or cost budget with
	// the refusing scope's prepaid credit (*policy.Credits): the meter
	// draws and asks again.
	Credit CreditDrawer
}

// CreditDrawer draws prepaid credit into a grant on a refused budget
// (*policy.Credits). Draw answers policy.ErrNoCredit when there is none.
type CreditDrawer interface {
	Draw(ctx context.Context, in policy.DrawInput) (*policy.Grant, error)
}

type noWaitKey struct{}

// NoWait marks ctx so that Acquire refuses a full concurrency limit at
// once instead of queuing (the quota decision API, whose callers wait
// in their own way).
func NoWait(ctx context.Context) context.Context { return context.WithValue(ctx, noWaitKey{}, true) }

// ticketMeta is what a settlement needs to know about its ticket, stored
// as JSON in the ticket's quota.Request.Meta.
type ticketMeta struct {
	TenantID  string   `json:"tenant"`
	UserID    string   `json:"user"`
	ProjectID string   `json:"project,omitempty"`
	KeyID     string   `json:"key,omitempty"`
	Kind      string   `json:"kind"`
	Model     string   `json:"model,omitempty"`
	Requests  int64    `json:"requests,omitempty"`
	Scopes    []string `json:"scopes"`
	// Slot: the ticket holds a concurrency slot, which its settle frees.
	Slot bool   `json:"slot,omitempty"`
	Zone string `json:"zone,omitempty"` // the tenant's time zone, by name
	// MaxTokensPerCall is the tightest cap of the chain when admitted.
	MaxTokensPerCall int64 `json:"max_tokens_per_call,omitempty"`
}

// New returns a meter.
func New(engine quota.Backend, pm *policy.Manager, rec *usage.Recorder, log *slog.Logger) *Meter {
	return &Meter{engine: engine, policy: pm, rec: rec, log: log, now: time.Now}
}

// QueueFlow is who's flow in the admission queue: round-robin turns are
// per user (per key for a key without one).
func QueueFlow(userID, keyID string) string {
	if userID == "" {
		return "key/" + keyID
	}
	return userID
}

// Admission is an admitted request.
type Admission struct {
	quota.Ticket
	Priority policy.Priority
	Chain    *policy.Chain
	// Keys name the scopes the ticket charges: the chain's, with the
	// synthetic scopes of the pools' parts it was admitted on.
	Keys []string
	// Waited says whether and how long the admission waited in the
	// queue of a full concurrency limit.
	Waited admission.Waited
}

// DefaultRunTimeout bounds governed work whose scopes set no run_timeout.
const DefaultRunTimeout = 10 * time.Minute

// TTLRun, as Acquire's ttl, leases the ticket for the chain's run_timeout
// (DefaultRunTimeout when no scope sets one) plus a minute: a run's slot
// is held for its whole allowed life from its first instant.
const TTLRun time.Duration = -1

// runTTL is TTLRun's lease for chain.
func runTTL(chain *policy.Chain) time.Duration {
	rt := time.Duration(0)
	for _, sc := range chain.Scopes {
		if sc.Limits != nil && sc.Limits.RunTimeout > 0 && (rt == 0 || sc.Limits.RunTimeout < rt) {
			rt = sc.Limits.RunTimeout
		}
	}
	if rt == 0 {
		rt = DefaultRunTimeout
	}
	return rt + time.Minute
}

// Acquire admits ask for who, or returns the engine's *quota.Denial. A ttl
// of TTLRun leases the ticket for the chain's run timeout.
//
// Through a pool with guarantees (see policy.ChainPool) it asks on the
// path that uses the caller's guarantees first and, for each guarantee
// (or whose pool is full) that refuses, again on that pool's shared
// part: at most one retry per pool. A refusal at a pool's shared part is a *SharedDenial.
func (m *Meter) Acquire(ctx context.Context, who Who, kind string, ask quota.Ask, ttl time.Duration) (*Admission, error) {
	snap := m.policy.Current()
	chain, err := m.chain(ctx, snap, who)
	if err != nil {
		if errors.Is(err, errReadOnly) && m.OnDecision != nil {
			m.OnDecision(kind, "denied", "read_only")
		}
		return nil, err
	}
	var t quota.Ticket
	var keys []string
	var waited admission.Waited
	if m.Queue != nil && ask.Concurrency && ctx.Value(noWaitKey{}) == nil {
		flow := QueueFlow(who.UserID, who.KeyID)
		// The arrival queues behind the waiters of its first path: a
		// guarantee with room is not held up by those waiting to borrow.
		waited, err = m.Queue.Do(ctx, admission.Arrival{Scopes: chain.PathKeys, Flow: flow, Class: classOf(chain.Priority)},
			func() (string, error) {
				if now := m.policy.Current(); now != snap {
					// The policy changed while it waited: decide on the
					// limits in force now, not those of its arrival.
					c, err := m.chain(ctx, now, who)
					if err != nil {
						return "", err
					}
					snap, chain = now, c
				}
				t, keys, chain, err = m.acquire(ctx, chain, who, kind, ask, ttl)
				var d *quota.Denial
				if errors.As(err, &d) && d.Dimension == quota.DimConcurrency {
					return d.Scope, err
				}
				return "", err
			})
	} else {
		t, keys, chain, err = m.acquire(ctx, chain, who, kind, ask, ttl)
	}
	if m.OnDecision != nil {
		var d *quota.Denial
		switch {
		case err == nil:
			m.OnDecision(kind, "admitted", "")
		case errors.As(err, &d):
			m.OnDecision(kind, "denied", d.Dimension.String())
		case errors.Is(err, errReadOnly):
			m.OnDecision(kind, "denied", "read_only")
		default:
			m.OnDecision(kind, "error", "")
		}
	}
	if err != nil {
		return nil, engineError(sharedDenial(snap, who, err))
	}
	return &Admission{Ticket: t, Priority: chain.Priority, Chain: chain, Keys: keys, Waited: waited}, nil
}

// acquire asks the engine on chain's paths, guarantees first (see
// Acquire), and returns the ticket with the scope keys of the path that
// admitted it and the chain it was decided on: a budget refused where the
// scope holds prepaid credit is raised by a draw (see policy.Credits.Draw)
// and the request asked again on the policy that has it, at most once per
// scope of the chain.
func (m *Meter) acquire(ctx context.Context, chain *policy.Chain, who Who, kind string, ask quota.Ask, ttl time.Duration) (quota.Ticket, []string, *policy.Chain, error) {
	var (
		borrow uint64
		drawn  []string
	)
	for {
		path := chain.Path(borrow)
		req, err := m.request(chain, path, who, kind, ask, ttl)
		if err != nil {
			return quota.Ticket{}, nil, chain, err
		}
		t, err := m.engine.Acquire(ctx, req)
		var d *quota.Denial
		if errors.As(err, &d) {
			if j := chain.BorrowAfter(d.Scope); j >= 0 && borrow&(1<<uint(j)) == 0 {
				borrow |= 1 << uint(j) // the guarantee is used up: borrow
				continue
			}
			if m.Credit != nil && len(drawn) < len(chain.Scopes) && !slices.Contains(drawn, d.Scope) {
				if c, ok := m.drawCredit(ctx, chain, who, d); ok {
					drawn = append(drawn, d.Scope)
					chain = c
					continue
				}
			}
		}
		return t, path.Keys, chain, err
	}
}

// drawCredit lifts denial d with its scope's prepaid credit, if it is a
// token or cost budget's and the scope holds some, and returns who's
// chain on the policy with the draw's grant.
func (m *Meter) drawCredit(ctx context.Context, chain *policy.Chain, who Who, d *quota.Denial) (*policy.Chain, bool) {
	if d.Code != quota.CodeQuotaExceeded || d.ResetAt.IsZero() ||
		!(d.Dimension == quota.DimTokens && (d.Window == quota.WindowDay || d.Window == quota.WindowMonth) ||
			d.Dimension == quota.DimCost && d.Window == quota.WindowMonth) {
		return nil, false
	}
	if _, _, synthetic := policy.SplitSynthetic(d.Scope); synthetic {
		return nil, false
	}
	var sc *quota.Scope
	for i := range chain.Scopes {
		if chain.Scopes[i].Key == d.Scope {
			sc = &chain.Scopes[i]
		}
	}
	if sc == nil {
		return nil, false
	}
	loc := sc.Loc
	if loc == nil {
		loc = time.UTC
	}
	last := d.ResetAt.Add(-time.Nanosecond)
	period := usage.DayPeriod(last, loc)
	if d.Window == quota.WindowMonth {
		period = usage.MonthPeriod(last, loc)
	}
	_, err := m.Credit.Draw(ctx, policy.DrawInput{Scope: d.Scope, TenantID: sc.Tenant, Dimension: d.Dimension, Window: d.Window,
		Period: period, End: d.ResetAt, Need: d.Requested - max(d.Limit-d.Used, 0)})
	if err != nil {
		if !errors.Is(err, policy.ErrNoCredit) {
			m.log.Warn("drawing prepaid credit failed; the refusal stands", slog.String("scope", d.Scope), slog.String("error", err.Error()))
		}
		return nil, false
	}
	c, err := m.chain(ctx, m.policy.Current(), who)
	return c, err == nil
}

// SharedDenial is a refusal at the shared part of a pool with guarantees:
// what the pool's children may borrow beyond their guarantees is used
// up. Its Denial names the pool's real scope.
type SharedDenial struct {
	Denial *quota.Denial
	// Pool is the pool's scope, Label its kind and name ("department
	// research"), Tenant the name of its tenant.
	Pool, Label, Tenant string
	err                 error
}

func (e *SharedDenial) Error() string { return e.Message() }

// Unwrap gives the Denial naming the pool, then the engine's error:
// errors.As finds the former first and, after a wait in the queue, the
// *admission.Error.
func (e *SharedDenial) Unwrap() []error { return []error{e.Denial, e.err} }

// Message says what is used up and who can raise it.
func (e *SharedDenial) Message() string {
	return "the shared part of " + e.Label + " is used up (its guarantees stay reserved for their owners); ask an admin of " +
		e.Tenant + " to raise it, or POST /api/v1/quota-requests"
}

// sharedDenial turns a denial at a pool's shared part (P~borrow) into a
// *SharedDenial whose Denial names P itself; other errors pass.
func sharedDenial(snap *policy.Snapshot, who Who, err error) error {
	var d *quota.Denial
	if !errors.As(err, &d) {
		return err
	}
	real, suffix, ok := policy.SplitSynthetic(d.Scope)
	if !ok || suffix != policy.BorrowSuffix {
		return err
	}
	named := *d
	named.Scope = real
	return &SharedDenial{Denial: &named, Pool: real, Label: snap.ScopeLabel(real), Tenant: snap.TenantName(who.TenantID), err: err}
}

// errReadOnly marks a refusal in the platform's read-only mode.
var errReadOnly = errors.New("platform read-only")

// chain is who's chain on snap (reloading the policy once if it does not
// know the project yet). The platform's read-only mode refuses it.
func (m *Meter) chain(ctx context.Context, snap *policy.Snapshot, who Who) (*policy.Chain, error) {
	if pf := snap.Platform(); pf.ReadOnly {
		msg := "Sluice is in read-only mode: no new work is admitted"
		if pf.Message != "" {
			msg += ": " + pf.Message
		}
		return nil, &errs.Error{Code: errs.Unavailable, Message: msg, Err: errReadOnly}
	}
	chain, err := snap.ChainFor(who.TenantID, who.UserID, who.ProjectID, who.KeyID)
	if errs.Is(err, errs.NotFound) {
		// The project may have been created on another instance since our
		// last reload: callers have already checked it exists in the store.
		if rerr := m.policy.ReloadIfOlder(ctx, snap); rerr == nil {
			chain, err = m.policy.Current().ChainFor(who.TenantID, who.UserID, who.ProjectID, who.KeyID)
		}
	}
	return chain, err
}

// request is the engine's request for an admission on one path of chain:
// its scopes, the ticket's meta (with the path's keys) and its ttl.
func (m *Meter) request(chain *policy.Chain, path policy.Path, who Who, kind string, ask quota.Ask, ttl time.Duration) (quota.Request, error) {
	meta := ticketMeta{TenantID: who.TenantID, UserID: who.UserID, ProjectID: who.ProjectID, KeyID: who.KeyID, Kind: kind,
		Model: ask.Model, Requests: ask.Requests, Scopes: path.Keys, Slot: ask.Concurrency}
	if len(path.Scopes) > 1 && path.Scopes[1].Loc != nil {
		meta.Zone = path.Scopes[1].Loc.String()
	}
	for _, sc := range path.Scopes {
		if sc.Limits != nil && sc.Limits.MaxTokensPerCall > 0 &&
			(meta.MaxTokensPerCall == 0 || sc.Limits.MaxTokensPerCall < meta.MaxTokensPerCall) {
			meta.MaxTokensPerCall = sc.Limits.MaxTokensPerCall
		}
	}
	raw, err := json.Marshal(meta)
	if err != nil {
		return quota.Request{}, fmt.Errorf("acquire: encode ticket meta: %w", err)
	}
	if ttl == TTLRun {
		ttl = runTTL(chain)
	}
	return quota.Request{Chain: path.Scopes, Ask: ask, TTL: ttl, Meta: string(raw)}, nil
}

// classOf is a plan priority's scheduling class.
func classOf(p policy.Priority) admission.Class {
	switch p {
	case policy.PriorityHigh:
		return admission.ClassHigh
	case policy.PriorityLow:
		return admission.ClassLow
	}
	return admission.ClassNormal
}

// TicketView is what the engine knows of a ticket, decoded: whom it
// charges and for what, its reservation and caps. It is for authorising
// and bounding settles and heartbeats, wherever the ticket was issued.
type TicketView struct {
	ID       string
	Who      Who
	Kind     string
	Model    string
	Requests int64
	Scopes   []string
	Zone     string
	// The reservation: tokens granted, GPU milliseconds, micro-USD.
	Tokens     int64
	GPUMillis  int64
	CostMicros int64
	// MaxTokensPerCall is the tightest cap of the chain when admitted (0
	// none).
	MaxTokensPerCall int64
	// ExpiresAt is when a live ticket expires (or an expired one did).
	ExpiresAt time.Time
	// Settled and Expired are as in quota.TicketInfo: a settle of an
	// expired ticket is late, of a settled one a replay.
	Settled bool
	Expired bool
}

// engineError gives an engine outage its domain code (503 with
// Retry-After: the caller should retry, not give up on a settle); other
// errors pass as they are.
func engineError(err error) error {
	if errors.Is(err, quota.ErrResyncing) {
		return &errs.Error{Code: errs.Unavailable, Message: "the quota engine is resynchronising after an outage; retry", RetryAfter: time.Second, Err: err}
	}
	if errors.Is(err, quota.ErrUnavailable) {
		return &errs.Error{Code: errs.Unavailable, Message: "the quota engine cannot be reached; retry", RetryAfter: time.Second, Err: err}
	}
	return err
}

// settled reads the usage event of a ticket the engine does not know.
func (m *Meter) settled(ctx context.Context, id string) (usage.Event, bool, error) {
	if m.Ledger == nil {
		return usage.Event{}, false, nil
	}
	ev, ok, err := m.Ledger(ctx, id)
	if err != nil {
		return ev, false, &errs.Error{Code: errs.Unavailable, Message: "the usage store cannot be read; retry", RetryAfter: time.Second, Err: err}
	}
	return ev, ok, nil
}

// unknownTicket is the one answer for a ticket that does not exist, has
// been forgotten, or is not the caller's: they must look the same.
func unknownTicket(id string) error {
	return errs.Field(errs.NotFound, "ticket", "ticket %s is unknown or expired", id)
}

// Ticket returns the ticket's view, or errs.NotFound if the engine does
// not know it (or it was not issued through a Meter).
func (m *Meter) Ticket(ctx context.Context, ticketID string) (*TicketView, error) {
	info, err := m.engine.Lookup(ctx, ticketID)
	if errors.Is(err, quota.ErrUnknownTicket) {
		ev, ok, lerr := m.settled(ctx, ticketID)
		switch {
		case lerr != nil:
			return nil, lerr
		case !ok:
			return nil, unknownTicket(ticketID)
		}
		return &TicketView{ID: ev.ID, Who: Who{TenantID: ev.TenantID, UserID: ev.UserID, ProjectID: ev.ProjectID, KeyID: keyOf(ev.Scopes)},
			Kind: ev.Kind, Model: ev.Model, Requests: ev.Requests, Scopes: ev.Scopes, Settled: true}, nil
	}
	if err != nil {
		return nil, engineError(err)
	}
	var meta ticketMeta
	if err := json.Unmarshal([]byte(info.Meta), &meta); err != nil || meta.TenantID == "" {
		return nil, unknownTicket(ticketID)
	}
	return &TicketView{ID: info.ID, Who: Who{TenantID: meta.TenantID, UserID: meta.UserID, ProjectID: meta.ProjectID, KeyID: meta.KeyID},
		Kind: meta.Kind, Model: meta.Model, Requests: meta.Requests, Scopes: meta.Scopes, Zone: meta.Zone,
		Tokens: info.Tokens, GPUMillis: info.GPUMillis, CostMicros: info.CostMicros, MaxTokensPerCall: meta.MaxTokensPerCall,
		ExpiresAt: info.ExpiresAt, Settled: info.Settled, Expired: info.Expired}, nil
}

// keyOf returns the key of a chain's scopes, "" when it has none: an
// event records its key only as the scope key/ID.
func keyOf(scopes []string) string {
	if n := len(scopes); n > 0 {
		if id, ok := strings.CutPrefix(scopes[n-1], policy.KindKey+"/"); ok {
			return id
		}
	}
	return ""
}

// Settle charges actual use, frees the ticket's slot and records the usage
// event. Replaying a settle returns the first result and records the same
// event again (its id is the ticket id, so the store keeps one): a retry
// after a failed write makes the event durable.
func (m *Meter) Settle(ctx context.Context, ticketID string, u quota.Usage, model string) (quota.Settlement, error) {
	return m.SettleWith(ctx, ticketID, u, model, nil)
}

// SettleWith is Settle with a last word on the usage event (a run adds the
// peak memory and CPU time its sandbox measured). An error after the
// engine settled (the usage store is behind) leaves the settlement in
// place: the caller retries, and the replay records the event.
func (m *Meter) SettleWith(ctx context.Context, ticketID string, u quota.Usage, model string, annotate func(*usage.Event)) (quota.Settlement, error) {
	return m.settle(ctx, ticketID, u, model, annotate, false)
}

// SettleQueued is SettleWith for work whose caller is not waiting on the
// usage event's durability (a gateway call configured with
// gateway.usage_commit: queued): the counters are settled at once and the
// event is queued to be written within the recorder's flush interval,
// without waiting for its commit. While the queue is half full or more it
// waits as SettleWith does, so a store that falls behind slows callers
// down rather than losing events. A process killed before the flush loses
// the queued events: the price of not waiting.
func (m *Meter) SettleQueued(ctx context.Context, ticketID string, u quota.Usage, model string, annotate func(*usage.Event)) (quota.Settlement, error) {
	return m.settle(ctx, ticketID, u, model, annotate, true)
}

func (m *Meter) settle(ctx context.Context, ticketID string, u quota.Usage, model string, annotate func(*usage.Event), queued bool) (quota.Settlement, error) {
	s, err := m.engine.Settle(ctx, ticketID, u)
	switch {
	case errors.Is(err, quota.ErrUnknownTicket):
		ev, ok, lerr := m.settled(ctx, ticketID)
		switch {
		case lerr != nil:
			return s, lerr
		case !ok:
			return s, unknownTicket(ticketID)
		}
		// Settled already (its event is the proof): the first
		// settlement, as any replay.
		return quota.Settlement{TicketID: ticketID, Usage: quota.Usage{InputTokens: ev.InputTokens, OutputTokens: ev.OutputTokens,
			GPUMillis: ev.GPUMillis, CostMicros: ev.CostMicros}, SettledAt: ev.At, Replay: true}, nil
	case err != nil:
		return s, engineError(err)
	}
	var meta ticketMeta
	if err := json.Unmarshal([]byte(s.Meta), &meta); err != nil || meta.TenantID == "" {
		// Not issued through a Meter (or by an older version, which kept
		// this in memory): the counters are settled, but there is no one
		// to record the event for.
		m.log.Error("settled ticket carries no usage meta: event not recorded", slog.String("ticket", ticketID))
		return s, nil
	}
	if !s.Replay {
		if s.Late {
			m.log.Warn("settle after ticket expiry: use charged late to the current windows",
				slog.String("ticket", ticketID), slog.String("tenant", meta.TenantID))
		}
		if m.OnSettle != nil {
			m.OnSettle()
		}
		if m.Queue != nil && meta.Slot {
			m.Queue.Released(meta.Scopes) // its slot is free
		}
	}
	if model == "" {
		model = meta.Model
	}
	ev := usage.Event{
		ID: ticketID, At: s.SettledAt, TenantID: meta.TenantID, UserID: meta.UserID, ProjectID: meta.ProjectID,
		Kind: meta.Kind, Model: model, Requests: meta.Requests,
		InputTokens: s.Usage.InputTokens, OutputTokens: s.Usage.OutputTokens, GPUMillis: s.Usage.GPUMillis, CostMicros: s.Usage.CostMicros,
		Scopes: meta.Scopes, Loc: m.location(meta.Zone),
	}
	if annotate != nil {
		annotate(&ev)
	}
	if queued && !s.Replay && m.rec.TryRecord(ev) {
		return s, nil
	}
	at, err := m.commit(ctx, ev)
	if err != nil {
		return s, err
	}
	if m.OnCommitted != nil && !at.IsZero() {
		m.OnCommitted(ticketID, at)
	}
	return s, nil
}

// commit makes the event durable before the settle answers. It waits at
// most CommitPatience (default 5 s), for room in a full queue and then
// for the commit: a store that is behind or away slows settles down, then
// refuses them with 503 and Retry-After, never holds them for the length
// of an outage. The event stays queued either way, and a retried settle
// (a replay) waits for it again.
func (m *Meter) commit(ctx context.Context, ev usage.Event) (time.Time, error) {
	patience := m.CommitPatience
	if patience <= 0 {
		patience = defaultCommitPatience
	}
	wctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	wait := 2 * time.Millisecond
	for {
		at, err := m.rec.CommitAt(wctx, ev)
		switch {
		case err == nil:
			return at, nil
		case ctx.Err() != nil:
			return at, err // the caller gave up
		case wctx.Err() != nil:
			return at, &errs.Error{Code: errs.Unavailable, RetryAfter: time.Second, Err: err,
				Message: "usage store not answering: the settle is queued and will be written; retry it to learn when"}
		case !errors.Is(err, usage.ErrBehind):
			return at, err
		}
		select {
		case <-wctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// defaultCommitPatience is how long a settle waits for its event's commit.
const defaultCommitPatience = 5 * time.Second

// location returns the time zone named in a ticket's meta, nil when none.
func (m *Meter) location(name string) *time.Location {
	if name == "" {
		return nil
	}
	if l, ok := m.locs.Load(name); ok {
		return l.(*time.Location)
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil
	}
	m.locs.Store(name, l)
	return l
}

// Heartbeat extends a ticket's lease.
func (m *Meter) Heartbeat(ctx context.Context, ticketID string, ttl time.Duration) (time.Time, error) {
	exp, err := m.engine.Heartbeat(ctx, ticketID, ttl)
	if errors.Is(err, quota.ErrUnknownTicket) {
		return exp, unknownTicket(ticketID)
	}
	return exp, engineError(err)
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
	n, _, err := m.RestoreRead(ctx, store)
	return n, err
}

// RestoreRead is Restore that also returns when the roll-ups were read
// (usage.Store.RollupsRead): the counters hold every settlement whose
// event was committed before it, and none settled after it.
func (m *Meter) RestoreRead(ctx context.Context, store usage.Store) (int, time.Time, error) {
	rollups, readAt, err := store.RollupsRead(ctx, usage.CurrentPeriods(m.now()))
	if err != nil {
		return 0, readAt, err
	}
	n, err := m.restore(ctx, rollups)
	return n, readAt, err
}

func (m *Meter) restore(ctx context.Context, rollups []usage.Rollup) (int, error) {
	snap := m.policy.Current()
	n := 0
	for _, r := range rollups {
		if strings.HasPrefix(r.Scope, policy.KindKey+"/") && snap.Effective(r.Scope).Limits == nil {
			// A key that limits nothing is not in the engine's chains (only
			// in the ledger): a counter restored for it would never move.
			continue
		}
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
