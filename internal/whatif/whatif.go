// Package whatif answers "what would this draft policy have done?": it
// replays the usage ledger of a past window, in time order, through a
// fresh in-process quota engine (quota.Memory, the engine `sluice serve`
// runs on its embedded default) on a simulated clock, with the chains the
// draft would give each request, and reports per scope and dimension what
// would have been denied, clamped or queued, and when each scope would
// first have hit its wall. It changes nothing: the live policy, the live
// engine and the ledger are only read.
package whatif

import (
	"context"
	"iter"
	"time"

	"github.com/sluicehq/sluice/internal/usage"
)

// Run is a flow run as the runs table has it: when it took its
// concurrency slot and when it gave it back.
type Run struct {
	ID        string
	TenantID  string
	UserID    string
	ProjectID string
	Start     time.Time
	// End is zero for a run that never ended (its server died): its slot
	// is held until the lease expires, as the engine would.
	End time.Time
}

// Ledger is what a replay reads (sqlstore.Store). Each sequence streams
// from the store, oldest first; tenantID "" reads every tenant's.
type Ledger interface {
	// WhatIfCount counts the usage events and runs in [from, to),
	// stopping once past limit (so a huge ledger costs no full count).
	WhatIfCount(ctx context.Context, tenantID string, from, to time.Time, limit int) (int, error)
	// WhatIfEvents yields the usage events in [from, to) by time, then id.
	WhatIfEvents(ctx context.Context, tenantID string, from, to time.Time) iter.Seq2[usage.Event, error]
	// WhatIfRuns yields the runs that started in [from, to) by start, then
	// id.
	WhatIfRuns(ctx context.Context, tenantID string, from, to time.Time) iter.Seq2[Run, error]
}

// The bounds of a replay.
const (
	// MaxWindow is the longest window a replay covers.
	MaxWindow = 90 * 24 * time.Hour
	// DefaultMaxEvents bounds the events and runs one replay reads (the
	// window's and those of the budget windows current at its start).
	DefaultMaxEvents = 1_000_000
	// DefaultMaxWait and DefaultQueueMax are the admission queue's
	// defaults (admission.max_wait, admission.queue_max).
	DefaultMaxWait  = 30 * time.Second
	DefaultQueueMax = 100
)

// Options configure a replay. Zero fields take the defaults.
type Options struct {
	// MaxEvents bounds the events and runs read (whatif_max_events).
	MaxEvents int
	// MaxWait is how long an arrival that finds a concurrency limit full
	// waits for a slot (admission.max_wait); negative turns the queue off,
	// so that a full limit denies at once.
	MaxWait time.Duration
	// QueueMax bounds the waiters of one scope (admission.queue_max).
	QueueMax int
}

func (o Options) withDefaults() Options {
	if o.MaxEvents <= 0 {
		o.MaxEvents = DefaultMaxEvents
	}
	if o.MaxWait == 0 {
		o.MaxWait = DefaultMaxWait
	}
	if o.QueueMax <= 0 {
		o.QueueMax = DefaultQueueMax
	}
	return o
}

// Report is what a replay found.
type Report struct {
	Window   string    `json:"window"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	TenantID string    `json:"tenant_id,omitempty"`
	// Replayed counts what went through the engine.
	Replayed Counts `json:"replayed"`
	// Walls lists, per scope, dimension and window, what the draft would
	// have refused, clamped or queued, first wall first.
	Walls []Wall `json:"walls"`
	// Notes say what the replay could not take into account.
	Notes []string `json:"notes"`
}

// Counts are totals of a replay.
type Counts struct {
	Events int64 `json:"events"` // usage events replayed (a run's own event excepted)
	Runs   int64 `json:"runs"`   // runs replayed from the runs table
	// Warmup is how many events before the window were summed into the
	// budgets current at its start.
	Warmup int64 `json:"warmup_events"`
	// Skipped are events the draft has no chain for (a deleted project).
	Skipped  int64 `json:"skipped"`
	Denied   int64 `json:"denied"`
	Clamped  int64 `json:"clamped"`
	Queued   int64 `json:"queued"`
	Admitted int64 `json:"admitted"`
}

// Wall is one limit of the draft that would have been hit.
type Wall struct {
	// Scope is the scope whose limit it is ("department/dep_…"); Name
	// names it for people ("department cs101"); Part is "shared" or
	// "guaranteed" for a pool's parts.
	Scope     string `json:"scope"`
	Name      string `json:"name"`
	Part      string `json:"part,omitempty"`
	Dimension string `json:"dimension"`
	Window    string `json:"window,omitempty"`
	// Limit is the draft's limit (per Period for rates).
	Limit  int64  `json:"limit"`
	Period string `json:"period,omitempty"`
	Denied Denied `json:"denied"`
	// Clamped are token asks granted less than asked (the call's output
	// cut short), and the tokens cut.
	Clamped Clamped `json:"clamped"`
	Queued  Queued  `json:"queued"`
	// FirstWallAt is when the scope would first have hit this limit.
	FirstWallAt time.Time `json:"first_wall_at"`
}

// Denied counts refused work: asks (events and runs), the requests and
// tokens they carried, and runs.
type Denied struct {
	Asks     int64 `json:"asks"`
	Requests int64 `json:"requests"`
	Tokens   int64 `json:"tokens"`
	Runs     int64 `json:"runs"`
}

// Clamped counts asks granted fewer tokens than asked.
type Clamped struct {
	Asks   int64 `json:"asks"`
	Tokens int64 `json:"tokens"`
}

// Queued counts arrivals that found the concurrency limit full and waited
// in the admission queue: Runs of them runs, TimedOut of them never got a
// slot within the queue's wait (they are in Denied too). Full found the
// queue already full and were denied at once (in Denied, not in Asks).
type Queued struct {
	Asks     int64 `json:"asks"`
	Runs     int64 `json:"runs"`
	TimedOut int64 `json:"timed_out"`
	Full     int64 `json:"queue_full"`
}
