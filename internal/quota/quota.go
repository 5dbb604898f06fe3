// Package quota owns admission decisions: it checks and charges requests,
// token reservations, GPU time, cost and concurrency leases against a chain of
// scopes (global, tenant, departments, project, user, membership) in one
// atomic, all-or-nothing step, settles reservations with actual use, and
// expires leases whose holder disappeared. It holds counters only, never
// policy: callers resolve each scope's effective Limits and pass them in the
// chain on every call, so a limit change takes effect on the next decision.
//
// Backend is the contract every counter store implements; Memory is the
// in-process one, and quotatest holds the suite that any Backend must pass.
package quota

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Backend decides and records admissions. Implementations are safe for
// concurrent use, and must pass quotatest.Run.
//
// Every ticket expires at its ExpiresAt unless settled first: its
// concurrency slot is freed and its budget reservations are refunded, so a
// lost settle cannot hold budget or slots for ever. (Its tokens_rate charge
// stands: that time has passed.) Every operation observes expiry as of its
// own now, before it looks at anything else.
type Backend interface {
	// Acquire checks r.Ask against every scope of r.Chain and, if every
	// check passes, charges it to every scope and returns a ticket.
	// Otherwise it charges nothing and returns a *Denial for the first
	// failing check (or ErrInvalid, ErrClosed, or the context's error).
	Acquire(ctx context.Context, r Request) (Ticket, error)
	// Settle replaces the ticket's reservations with the actual use u on
	// every scope it charged, adjusts tokens_rate by the difference, and
	// frees its concurrency slot. Use beyond the reservation is charged
	// anyway: actual use is the truth, even past a limit. A reservation
	// made in a budget window that has since ended died with it; the
	// actual use is charged to the current window.
	//
	// Settling a settled ticket again returns the first Settlement and
	// changes nothing (for a bounded retention period). A ticket that
	// expired within that period is settled late: its reservation was
	// refunded at expiry, so the actual use is charged to the current
	// windows as it is (no slot, no reservation) and the Settlement is
	// marked Late; so counters agree with the usage ledger, which records
	// the work either way. An unknown ticket, or one expired longer ago,
	// yields ErrUnknownTicket. Callers settle on every exit path, so they
	// should not pass a context cancelled with the request.
	Settle(ctx context.Context, ticketID string, u Usage) (Settlement, error)
	// Heartbeat moves the ticket's expiry to now+ttl (0 picks the default)
	// and returns it; ErrUnknownTicket if it is settled or expired.
	Heartbeat(ctx context.Context, ticketID string, ttl time.Duration) (time.Time, error)
	// Lookup describes a live ticket, or one settled or expired within the
	// settled-retention period, without changing it; ErrUnknownTicket
	// otherwise. Any backend value over the same store answers for a
	// ticket any other issued, which is what lets a settle land on another
	// instance than its acquire.
	Lookup(ctx context.Context, ticketID string) (TicketInfo, error)
	// Use reports a scope's current use; a scope never charged reports
	// zeros.
	Use(ctx context.Context, scopeKey string) (ScopeUse, error)
	// Restore sets the budget counter (d, w) of a scope for the window
	// that starts at windowStart, if that window is current; otherwise it
	// does nothing. It rebuilds counters from durable usage at start-up.
	Restore(ctx context.Context, scopeKey string, d Dimension, w Window, windowStart time.Time, used int64) error
	// Close releases the backend's resources. It is idempotent; other
	// calls afterwards return ErrClosed.
	Close() error
}

// Dimension is a kind of use that a limit applies to.
type Dimension uint8

// The dimensions. DimTokens has two windows (WindowDay, WindowMonth).
const (
	DimRequests Dimension = iota + 1
	DimTokensRate
	DimTokens
	DimGPUSeconds
	DimCost
	DimConcurrency
	DimModel
)

var dimNames = [...]string{
	DimRequests:    "requests",
	DimTokensRate:  "tokens_rate",
	DimTokens:      "tokens",
	DimGPUSeconds:  "gpu_seconds",
	DimCost:        "cost",
	DimConcurrency: "concurrency",
	DimModel:       "model",
}

// String returns the dimension's wire name, e.g. "tokens_rate".
func (d Dimension) String() string {
	if int(d) < len(dimNames) && dimNames[d] != "" {
		return dimNames[d]
	}
	return "dimension(" + strconv.Itoa(int(d)) + ")"
}

// MarshalText encodes the dimension as its wire name.
func (d Dimension) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// ParseDimension is the inverse of Dimension.String.
func ParseDimension(s string) (Dimension, error) {
	for d, name := range dimNames {
		if name != "" && name == s {
			return Dimension(d), nil
		}
	}
	return 0, fmt.Errorf("parse dimension %q: %w", s, ErrInvalid)
}

// Window is the calendar window of a budget. Rates and concurrency have none.
type Window uint8

// The windows. Days start at local midnight and months at 00:00 on the 1st,
// both in the scope's time zone.
const (
	WindowNone Window = iota
	WindowDay
	WindowMonth
)

// String returns "day", "month", or "" for WindowNone.
func (w Window) String() string {
	switch w {
	case WindowNone:
		return ""
	case WindowDay:
		return "day"
	case WindowMonth:
		return "month"
	}
	return "window(" + strconv.Itoa(int(w)) + ")"
}

// MarshalText encodes the window as its name.
func (w Window) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

// ParseWindow is the inverse of Window.String.
func ParseWindow(s string) (Window, error) {
	switch s {
	case "":
		return WindowNone, nil
	case "day":
		return WindowDay, nil
	case "month":
		return WindowMonth, nil
	}
	return 0, fmt.Errorf("parse window %q: %w", s, ErrInvalid)
}

// Rate is a GCRA rate limit: Limit units per Period, of which at most Burst
// may be admitted at once (the bucket's capacity; 0 means Burst = Limit).
// In any span of length t it admits at most Burst + Limit·t/Period units.
//
// The zero Rate limits nothing. A non-zero Rate with Limit 0 admits nothing,
// and so, failing closed, does any invalid Rate (see Validate).
type Rate struct {
	Limit  int64
	Period time.Duration
	Burst  int64
}

// IsZero reports whether r is the zero Rate, which limits nothing.
func (r Rate) IsZero() bool { return r == Rate{} }

// Validate reports a negative limit or burst, or a non-positive period.
func (r Rate) Validate() error {
	if r.IsZero() {
		return nil
	}
	switch {
	case r.Limit < 0:
		return fmt.Errorf("rate limit %d: %w", r.Limit, ErrInvalid)
	case r.Period <= 0:
		return fmt.Errorf("rate period %s: %w", r.Period, ErrInvalid)
	case r.Burst < 0:
		return fmt.Errorf("rate burst %d: %w", r.Burst, ErrInvalid)
	}
	return nil
}

// Bound is an upper limit on a budget or gauge. The zero Bound is unbounded
// (limits nothing); AtMost(n) limits to n, and AtMost(0) is a real limit that
// admits nothing (a free plan's GPU seconds).
type Bound struct {
	n   int64
	set bool
}

// AtMost returns the Bound n. A negative n is treated as 0: a broken limit
// fails closed.
func AtMost(n int64) Bound {
	return Bound{n: max(n, 0), set: true}
}

// Max returns the bound and true, or 0 and false when b is unbounded.
func (b Bound) Max() (int64, bool) { return b.n, b.set }

// String returns the bound as a number, or "unlimited".
func (b Bound) String() string {
	if !b.set {
		return "unlimited"
	}
	return strconv.FormatInt(b.n, 10)
}

// limit returns the bound, or -1 when unbounded.
func (b Bound) limit() int64 {
	if !b.set {
		return -1
	}
	return b.n
}

// Caps are per-run limits the executor enforces; the engine does not count
// them, it only reports the tightest over the chain. Zero means no cap.
type Caps struct {
	MemoryPerRun     int64 // bytes
	RunTimeout       time.Duration
	MaxSteps         int64
	MaxTokensPerCall int64
}

// Outage behaviours for Limits.OnOutage.
const (
	OutageLocal = "local" // fall back to local counters with conservative limits
	OutageDeny  = "deny"  // deny while the shared backend is unreachable
)

// Limits are a scope's effective limits. The zero Limits limits nothing.
type Limits struct {
	Requests        Rate  // requests per period
	TokensRate      Rate  // tokens per period (TPM)
	TokensDay       Bound // tokens per calendar day
	TokensMonth     Bound // tokens per calendar month
	GPUMillisMonth  Bound // GPU milliseconds per calendar month
	CostMicrosMonth Bound // micro-USD per calendar month
	Concurrency     Bound // tickets in flight that asked for a slot

	// Models lists the models this scope may use; empty allows any.
	Models []string
	// OnOutage is OutageLocal or OutageDeny; the in-process backend
	// ignores it.
	OnOutage string

	Caps
}

// Validate reports the first invalid field.
func (l *Limits) Validate() error {
	if err := l.Requests.Validate(); err != nil {
		return fmt.Errorf("requests: %w", err)
	}
	if err := l.TokensRate.Validate(); err != nil {
		return fmt.Errorf("tokens_rate: %w", err)
	}
	switch l.OnOutage {
	case "", OutageLocal, OutageDeny:
	default:
		return fmt.Errorf("on_outage %q: %w", l.OnOutage, ErrInvalid)
	}
	if l.MemoryPerRun < 0 || l.RunTimeout < 0 || l.MaxSteps < 0 || l.MaxTokensPerCall < 0 {
		return fmt.Errorf("negative per-run cap: %w", ErrInvalid)
	}
	return nil
}

// Scope is one link of a request's chain.
type Scope struct {
	// Key identifies the scope's counters, e.g. "t/ten_x" or "m/usr_z@prj_y".
	Key string
	// Limits are the scope's effective limits; nil limits nothing. Use is
	// counted on every scope either way. A backend only reads them, and
	// only during the call, so callers may share one Limits between calls
	// but must not modify it while a call is using it.
	Limits *Limits
	// Loc is the time zone of the scope's day and month windows; nil is UTC.
	Loc *time.Location
	// Tenant is the tenant whose subtree holds the scope, "" for the
	// global scope and scopes outside every tenant. A shared backend may
	// place the scope's state by it (a Redis Cluster hash tag per tenant);
	// it must be the same wherever the key appears.
	Tenant string
}

// Ask is what a request wants to use. Only dimensions with a non-zero ask
// are checked: a request that asks for no tokens is admitted even if a token
// budget is spent.
type Ask struct {
	Requests int64
	// Tokens reserves tokens (input estimate + max output). They are charged
	// to the tokens day and month budgets and to tokens_rate.
	Tokens int64
	// MinTokens, when > 0, allows a reservation smaller than Tokens: the
	// most that fits, if at least MinTokens does.
	MinTokens   int64
	GPUMillis   int64
	CostMicros  int64
	Concurrency bool // take a concurrency slot until settle or expiry
	// Model, when set, must be allowed by every scope that lists models.
	Model string
}

// Request is one admission: an ask charged against a chain of scopes,
// outermost first.
type Request struct {
	Chain []Scope
	Ask   Ask
	// TTL bounds the ticket's life; 0 picks the backend's default.
	TTL time.Duration
	// Meta is stored with the ticket, opaque to the engine, and returned
	// by Lookup and in the Settlement: what the caller needs to account
	// for the work whichever instance settles it. At most MaxMetaBytes,
	// else ErrInvalid.
	Meta string
}

// MaxMetaBytes bounds Request.Meta.
const MaxMetaBytes = 4096

// TicketInfo describes a ticket as Lookup found it.
type TicketInfo struct {
	ID   string
	Meta string
	// ExpiresAt is when a live ticket expires, or when an expired one did;
	// zero for a settled ticket.
	ExpiresAt time.Time
	// The reservations the ticket holds, or held.
	Tokens     int64
	GPUMillis  int64
	CostMicros int64
	// Settled is true once the ticket is settled; Expired once it expired
	// unsettled (a Settle then is late). A live ticket has neither.
	Settled bool
	Expired bool
}

// Ticket is an admitted request's reservation and lease.
type Ticket struct {
	ID        string
	Tokens    int64 // tokens reserved; less than Ask.Tokens when Clamped
	Clamped   bool
	ExpiresAt time.Time
	Caps      Caps // tightest non-zero caps over the chain
	// Remaining holds, after this admission, the tightest remaining amount
	// per meter in the order requests, tokens_rate, tokens/day,
	// tokens/month, gpu_seconds, cost, concurrency. Use Tightest to pick one.
	Remaining [NumMeters]Remaining
}

// NumMeters is the number of counted meters reported in Ticket.Remaining.
const NumMeters = 7

// Indices into Ticket.Remaining.
const (
	meterRequests = iota
	meterTokensRate
	meterTokensDay
	meterTokensMonth
	meterGPU
	meterCost
	meterConcurrency
)

var meters = [NumMeters]struct {
	d Dimension
	w Window
}{
	{DimRequests, WindowNone},
	{DimTokensRate, WindowNone},
	{DimTokens, WindowDay},
	{DimTokens, WindowMonth},
	{DimGPUSeconds, WindowMonth},
	{DimCost, WindowMonth},
	{DimConcurrency, WindowNone},
}

// Tightest returns the remaining amount for dimension d and window w.
func (t *Ticket) Tightest(d Dimension, w Window) Remaining {
	for _, r := range t.Remaining {
		if r.Dimension == d && r.Window == w {
			return r
		}
	}
	return Remaining{Dimension: d, Window: w}
}

// Remaining is how much of one meter is left at the scope of the chain with
// the least left (the outermost on ties). Scope is "" when no scope of the
// chain limits the meter.
type Remaining struct {
	Dimension Dimension
	Window    Window
	Scope     string
	Limit     int64
	Period    time.Duration // rates only
	Remaining int64
	// ResetAt is when the meter is whole again: the end of a budget's
	// window, or when a rate's bucket has drained. Zero for concurrency.
	ResetAt time.Time
}

// Usage is what an admitted request actually used.
type Usage struct {
	InputTokens  int64
	OutputTokens int64
	GPUMillis    int64
	CostMicros   int64
}

// Settlement records how a ticket was settled.
type Settlement struct {
	TicketID string
	Usage    Usage // actual use, as first settled
	// The reservations the actual use replaced.
	ReservedTokens     int64
	ReservedGPUMillis  int64
	ReservedCostMicros int64
	// Overrun is true when actual use exceeded a reservation. The excess
	// is charged anyway (actual use is the truth), so a budget can end up
	// above its limit; later asks are then denied until the window resets.
	Overrun   bool
	SettledAt time.Time
	// Late is true when the ticket had expired (its reservations refunded)
	// before this settle: the use was charged to the current windows on
	// its own. The reservations above are those the ticket had.
	Late bool
	// Replay is true when this call found the ticket settled already and
	// returned its first Settlement (with Replay set).
	Replay bool
	// Meta is the ticket's Request.Meta.
	Meta string
}

// ScopeUse is a scope's current use.
type ScopeUse struct {
	Key         string
	TokensDay   WindowUse
	TokensMonth WindowUse
	GPUMillis   WindowUse // month
	CostMicros  WindowUse // month
	Concurrency int64     // tickets in flight holding a slot
	Requests    RateUse
	TokensRate  RateUse
}

// WindowUse is a budget counter for its current window [Start, End). Start
// and End are zero when unknown (no use yet, or restored but not yet seen in
// a chain).
type WindowUse struct {
	Start, End time.Time
	Used       int64
}

// RateUse is the state of a rate limit's bucket.
type RateUse struct {
	Level   int64     // units in the bucket, rounded up
	NextAt  time.Time // when one more unit would be admitted (now if it would be)
	EmptyAt time.Time // when the bucket has drained
}

// Denial codes.
const (
	CodeRateLimited     = "rate_limited"
	CodeQuotaExceeded   = "quota_exceeded"
	CodeModelNotAllowed = "model_not_allowed"
)

// Errors. A *Denial matches ErrRateLimited, ErrQuotaExceeded or
// ErrModelNotAllowed with errors.Is, according to its Code.
var (
	ErrRateLimited     = errors.New(CodeRateLimited)
	ErrQuotaExceeded   = errors.New(CodeQuotaExceeded)
	ErrModelNotAllowed = errors.New(CodeModelNotAllowed)
	ErrUnknownTicket   = errors.New("unknown or expired ticket")
	ErrInvalid         = errors.New("invalid quota request")
	ErrClosed          = errors.New("quota backend closed")
)

// Denial explains why Acquire refused: the first failing check, scopes
// outermost first and, within a scope, model, requests, tokens_rate,
// tokens/day, tokens/month, gpu_seconds, cost, concurrency.
type Denial struct {
	Code      string
	Scope     string
	Dimension Dimension
	Window    Window
	Model     string // the model refused, for CodeModelNotAllowed
	// Limit is the scope's limit: the budget, the concurrency bound, or a
	// rate's Limit per Period.
	Limit  int64
	Period time.Duration // rates only
	// Used is the budget used in the window, the slots in flight, or a
	// rate's bucket level in units (rounded up).
	Used int64
	// Requested is the ask that did not fit (MinTokens when set).
	Requested int64
	// ResetAt is when the limit is whole again: the end of the budget's
	// window, when a rate's bucket has drained, or a hint for concurrency.
	ResetAt time.Time
	// RetryAfter is how long until the same ask could pass this check if
	// nothing else changed: the exact GCRA wait for rates, the time to the
	// window's end for budgets, a hint for concurrency. It is 0 when
	// waiting cannot help: the ask exceeds the limit (or a rate's burst) on
	// its own, or the model is not allowed.
	RetryAfter time.Duration
}

// Error describes the denial.
func (d *Denial) Error() string {
	what := d.Dimension.String()
	if d.Window != WindowNone {
		what += "/" + d.Window.String()
	}
	if d.Code == CodeModelNotAllowed {
		return fmt.Sprintf("%s: scope %s does not allow model %q", d.Code, d.Scope, d.Model)
	}
	limit := strconv.FormatInt(d.Limit, 10)
	if d.Period > 0 {
		limit += " per " + d.Period.String()
	}
	msg := fmt.Sprintf("%s: scope %s %s: used %d of %s, requested %d", d.Code, d.Scope, what, d.Used, limit, d.Requested)
	if d.RetryAfter > 0 {
		msg += ", retry after " + FormatWait(d.RetryAfter)
	}
	return msg
}

// Is matches the sentinel error for the denial's code.
func (d *Denial) Is(target error) bool {
	switch target {
	case ErrRateLimited:
		return d.Code == CodeRateLimited
	case ErrQuotaExceeded:
		return d.Code == CodeQuotaExceeded
	case ErrModelNotAllowed:
		return d.Code == CodeModelNotAllowed
	}
	return false
}

// RoundWait rounds a wait for people: to the minute from an hour on, to
// the second from ten seconds on, to a tenth of a second below ("retry
// after 10h24m", not 10h23m35.526206901s).
func RoundWait(d time.Duration) time.Duration {
	switch {
	case d >= time.Hour:
		return d.Round(time.Minute)
	case d >= 10*time.Second:
		return d.Round(time.Second)
	}
	return d.Round(100 * time.Millisecond)
}

// FormatWait is RoundWait as text without trailing zero units: "10h24m",
// "4m3s", "1.2s".
func FormatWait(d time.Duration) string {
	s := RoundWait(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
