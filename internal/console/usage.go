package console

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/whatif"
)

// bar is one meter of a scope, ready to draw.
type bar struct {
	Dimension string // as the API names it: tokens, requests, …
	Window    string // day, month, or "" for rates and gauges
	Label     string // "this month's tokens"
	Used      int64
	Limit     int64
	Limited   bool
	Percent   float64 // 0..100 for the <progress>, clamped
	Shown     string  // "85 %"
	Amount    string  // "85 000 / 100 000 tokens"
	Reset     string  // "resets 1 Dec 00:00 Asia/Shanghai"
	Sentence  string  // the whole line, for screen readers and tests
	Level     string  // ok, warn (≥ 80 %), full (≥ 100 %)
}

// scopeView is one scope of a chain with its meters.
type scopeView struct {
	Scope     string
	Kind      string // tenant, department, project, user, membership, key
	KindLabel string
	Name      string
	Part      string // "shared part" or "guaranteed share" for a pool's synthetic scopes
	Plan      string
	Bars      []bar
	Queue     *admission.State
}

var kindLabels = map[string]string{
	policy.KindGlobal: "Platform", policy.KindTenant: "Tenant", policy.KindDepartment: "Department",
	policy.KindProject: "Project", policy.KindUser: "You", policy.KindMembership: "You in the project", policy.KindKey: "This key",
}

// dimLabel words a meter: "this month's tokens", "requests per minute".
func dimLabel(d metering.DimensionReport) string {
	when := map[string]string{"day": "today's", "month": "this month's"}[d.Window]
	switch d.Dimension {
	case "tokens":
		return when + " tokens"
	case "gpu_seconds":
		return when + " GPU seconds"
	case "cost":
		return when + " spend (USD)"
	case "requests":
		return "requests per " + periodWord(d.Period)
	case "tokens_rate":
		return "tokens per " + periodWord(d.Period)
	case "concurrency":
		return "concurrent runs"
	}
	return d.Dimension
}

// periodWord names a rate's period ("1m0s": "minute") for a sentence.
func periodWord(p string) string {
	d, err := time.ParseDuration(p)
	if err != nil {
		return p
	}
	return periodText(d)
}

// periodText names a period: second, minute, hour, day, or as a window
// is written ("7d").
func periodText(d time.Duration) string {
	switch d {
	case time.Second:
		return "second"
	case time.Minute:
		return "minute"
	case time.Hour:
		return "hour"
	case 24 * time.Hour:
		return "day"
	}
	return whatif.FormatWindow(d)
}

// amount writes a meter's amount in its unit: micro-USD as dollars.
func amount(unit string, v int64) string {
	if unit == "micro_usd" {
		return fmt.Sprintf("$%.2f", float64(v)/1e6)
	}
	return groupDigits(v)
}

// resetWords writes when a window starts again, in the tenant's zone:
// "1 Dec 00:00 Asia/Shanghai".
func resetWords(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("2 Jan 15:04") + " " + loc.String()
}

// nextWindow is when a day or month window that has seen no use yet
// starts again, in loc (the engine reports a reset only once a window has
// use).
func nextWindow(window string, now time.Time, loc *time.Location) *time.Time {
	n := now.In(loc)
	var t time.Time
	switch window {
	case "day":
		t = time.Date(n.Year(), n.Month(), n.Day()+1, 0, 0, 0, 0, loc)
	case "month":
		t = time.Date(n.Year(), n.Month()+1, 1, 0, 0, 0, 0, loc)
	default:
		return nil
	}
	return &t
}

func makeBar(d metering.DimensionReport, loc *time.Location, now time.Time) bar {
	if d.ResetAt == nil {
		d.ResetAt = nextWindow(d.Window, now, loc)
	}
	b := bar{Dimension: d.Dimension, Window: d.Window, Label: dimLabel(d), Used: d.Used, Level: "ok"}
	unit := map[string]string{"tokens": "tokens", "requests": "requests", "seconds": "s", "runs": "runs"}[d.Unit]
	if d.Limit != nil {
		b.Limited, b.Limit = true, *d.Limit
		pct := 100.0
		if d.Percent != nil {
			pct = *d.Percent
		}
		b.Percent = math.Min(pct, 100)
		b.Shown = fmt.Sprintf("%g %%", math.Round(pct))
		b.Amount = strings.TrimSpace(amount(d.Unit, d.Used) + " / " + amount(d.Unit, b.Limit) + " " + unit)
		switch {
		case pct >= 100:
			b.Level = "full"
		case pct >= 80:
			b.Level = "warn"
		}
	} else {
		b.Amount = strings.TrimSpace(amount(d.Unit, d.Used) + " " + unit + " (no limit)")
	}
	if d.ResetAt != nil {
		verb := "resets"
		if d.Window == "" {
			verb = "empties by" // a rate's bucket drains
		}
		b.Reset = verb + " " + resetWords(*d.ResetAt, loc)
	}
	if b.Limited {
		b.Sentence = b.Shown + " of " + b.Label + " used"
	} else {
		b.Sentence = b.Label + ": " + b.Amount
	}
	if b.Reset != "" {
		b.Sentence += ", " + b.Reset
	}
	return b
}

// scopeViews reports scopes with their names, meters and queues, in the
// order given; reset times are in tenantID's zone.
func (c *Console) scopeViews(ctx context.Context, tenantID string, scopes []string) ([]scopeView, error) {
	rep, err := c.Meter.Report(ctx, tenantID, scopes)
	if err != nil {
		return nil, err
	}
	loc := c.Meter.Policy().Current().Location(tenantID)
	queues := map[string]*admission.State{}
	if q := c.Meter.Queue; q != nil {
		var flow string
		if p, ok := tenancy.PrincipalFrom(ctx); ok {
			flow = metering.QueueFlow(p.UserID, p.KeyID)
		}
		for _, st := range q.States(scopes, flow) {
			queues[st.Scope] = &st
		}
	}
	out := make([]scopeView, 0, len(rep))
	for _, r := range rep {
		base, suffix, _ := policy.SplitSynthetic(r.Scope)
		if base == "" {
			base = r.Scope
		}
		kind, _, _ := strings.Cut(base, "/")
		v := scopeView{Scope: r.Scope, Kind: kind, KindLabel: kindLabels[kind], Name: c.scopeName(ctx, tenantID, base), Plan: r.Plan, Queue: queues[r.Scope]}
		switch suffix {
		case policy.BorrowSuffix:
			v.Part = "shared part"
		case policy.GuaranteedSuffix:
			v.Part = "guaranteed share"
		}
		for _, d := range r.Dimensions {
			v.Bars = append(v.Bars, makeBar(d, loc, c.Now()))
		}
		out = append(out, v)
	}
	return out, nil
}

// scopeName is a scope's name for people; its id when it has none.
func (c *Console) scopeName(ctx context.Context, tenantID, scope string) string {
	if scope == policy.GlobalScope {
		return "the whole platform"
	}
	if c.Names != nil {
		tn, sn, err := c.Names.ScopeNames(ctx, tenantID, scope)
		if err == nil && sn != "" {
			return sn
		}
		if err == nil && tn != "" && strings.HasPrefix(scope, policy.KindTenant+"/") {
			return tn
		}
	}
	_, id, _ := strings.Cut(scope, "/")
	return id
}
