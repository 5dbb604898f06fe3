// Package usage owns durable metering: every settled unit of work becomes
// an event with an idempotent id, written off the request path in batches,
// and rolled up per scope per calendar day and month (in the scope's time
// zone). At start-up the roll-ups of the current windows rebuild the quota
// engine's budget counters, so a restart never resets anyone's budget.
package usage

import (
	"context"
	"time"
)

// Event is one settled unit of work.
type Event struct {
	ID        string // idempotency key: the ticket id
	At        time.Time
	TenantID  string
	UserID    string
	ProjectID string
	Kind      string // "metering", "run", "model_call", …
	Model     string
	// Deployment names the deployment of Model that served the call
	// (empty for events that are not model calls).
	Deployment string

	Requests     int64
	InputTokens  int64
	OutputTokens int64
	GPUMillis    int64
	CostMicros   int64
	// PeakMemory (bytes) and CPUMillis are a run's resources: measured by
	// its sandbox, zero for other events.
	PeakMemory int64
	CPUMillis  int64

	// Scopes are the chain the event was charged to, outermost first.
	Scopes []string
	// Loc is the tenant's time zone, which places the event in its day and
	// month for every scope but global (UTC). Not stored.
	Loc *time.Location
}

// Tokens is input plus output tokens.
func (e *Event) Tokens() int64 { return e.InputTokens + e.OutputTokens }

// Rollup is a scope's use in one period ("2026-11-27" or "2026-11").
type Rollup struct {
	Scope      string
	Period     string
	TenantID   string
	Requests   int64
	Tokens     int64
	GPUMillis  int64
	CostMicros int64
}

// Store persists events and roll-ups.
type Store interface {
	// RecordUsage inserts the events whose ids are new and adds them to
	// the roll-ups, in one transaction; it returns how many were new.
	RecordUsage(ctx context.Context, events []Event) (int, error)
	// Rollups returns the roll-ups of the given periods.
	Rollups(ctx context.Context, periods []string) ([]Rollup, error)
	// RollupsRead is Rollups with the moment of the read: every event
	// the roll-ups hold was committed before it, and it follows the
	// read's snapshot as closely as the store can tell.
	RollupsRead(ctx context.Context, periods []string) ([]Rollup, time.Time, error)
}

// DayPeriod and MonthPeriod name the windows that t falls in, in loc.
func DayPeriod(t time.Time, loc *time.Location) string { return t.In(loc).Format("2006-01-02") }

// MonthPeriod names the month t falls in, in loc.
func MonthPeriod(t time.Time, loc *time.Location) string { return t.In(loc).Format("2006-01") }

// PeriodStart returns when a period begins in loc.
func PeriodStart(period string, loc *time.Location) (time.Time, bool, error) {
	if len(period) == len("2006-01") {
		t, err := time.ParseInLocation("2006-01", period, loc)
		return t, false, err
	}
	t, err := time.ParseInLocation("2006-01-02", period, loc)
	return t, true, err
}

// CurrentPeriods lists the day and month periods that are current somewhere
// on Earth at now (time zones span UTC-12 to UTC+14).
func CurrentPeriods(now time.Time) []string {
	seen := map[string]bool{}
	var out []string
	for _, off := range []time.Duration{-12 * time.Hour, 0, 14 * time.Hour} {
		t := now.UTC().Add(off)
		for _, p := range []string{t.Format("2006-01-02"), t.Format("2006-01")} {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}
