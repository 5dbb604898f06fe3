package metering

import (
	"context"
	"math"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
)

// ScopeReport is a scope's limits and use, as shown to people.
type ScopeReport struct {
	Scope string `json:"scope"`
	// Kind marks a pool's synthetic scopes: "pool_shared" (what the
	// pool's children may borrow beyond their guarantees) or
	// "guaranteed" (the scope's guaranteed share); "" for real scopes.
	Kind       string            `json:"kind,omitempty"`
	Plan       string            `json:"plan,omitempty"`
	Priority   policy.Priority   `json:"priority,omitempty"`
	Dimensions []DimensionReport `json:"dimensions"`
	Caps       *quota.Caps       `json:"-"`
}

// DimensionReport is one meter of a scope. Limit is absent when the scope
// does not limit the dimension (its use is still shown).
type DimensionReport struct {
	Dimension string     `json:"dimension"`
	Window    string     `json:"window,omitempty"`
	Period    string     `json:"period,omitempty"` // rates: "1m0s"
	Limit     *int64     `json:"limit,omitempty"`
	Used      int64      `json:"used"`
	Remaining *int64     `json:"remaining,omitempty"`
	Percent   *float64   `json:"percent,omitempty"`
	ResetAt   *time.Time `json:"reset_at,omitempty"`
	Unit      string     `json:"unit"`
}

// Report describes the given scopes' limits and use at now. A window
// nothing has used yet resets at the end of the current one in the
// scope's tenant's time zone (tenantID's for the scopes whose tenant the
// policy does not hold, such as users'; UTC for the global scope).
func (m *Meter) Report(ctx context.Context, tenantID string, scopes []string) ([]ScopeReport, error) {
	snap := m.policy.Current()
	now := m.now()
	out := make([]ScopeReport, 0, len(scopes))
	for _, s := range scopes {
		loc := time.UTC
		if s != policy.GlobalScope {
			tenant := tenantID
			base, _, _ := policy.SplitSynthetic(s)
			if kind, id, err := policy.ParseScope("scope", base); err == nil {
				if t, ok := snap.ScopeTenant(kind, id); ok {
					tenant = t
				}
			}
			loc = snap.Location(tenant)
		}
		r := snap.Effective(s)
		use, err := m.engine.Use(ctx, s)
		if err != nil {
			return nil, err
		}
		rep := ScopeReport{Scope: s, Plan: r.Plan, Priority: r.Priority, Dimensions: []DimensionReport{}}
		switch _, suffix, _ := policy.SplitSynthetic(s); suffix {
		case policy.BorrowSuffix:
			rep.Kind = "pool_shared"
		case policy.GuaranteedSuffix:
			rep.Kind = "guaranteed"
		}
		l := r.Limits
		if l == nil {
			l = &quota.Limits{}
		}
		add := func(d DimensionReport, limit int64, limited bool) {
			if limited {
				d.Limit = &limit
				left := max(limit-d.Used, 0)
				d.Remaining = &left
				pct := 100.0
				if limit > 0 {
					pct = math.Round(float64(d.Used)/float64(limit)*1000) / 10
				}
				d.Percent = &pct
			}
			if limited || d.Used > 0 {
				rep.Dimensions = append(rep.Dimensions, d)
			}
		}
		rate := func(name string, rl quota.Rate, ru quota.RateUse) {
			d := DimensionReport{Dimension: name, Used: ru.Level, Unit: unitOf(name)}
			if !rl.IsZero() {
				d.Period = rl.Period.String()
				if ru.EmptyAt.After(now) {
					t := ru.EmptyAt
					d.ResetAt = &t
				}
				burst := rl.Burst
				if burst == 0 {
					burst = rl.Limit
				}
				add(d, burst, true)
				return
			}
			add(d, 0, false)
		}
		budget := func(name string, w quota.Window, b quota.Bound, wu quota.WindowUse, scale int64) {
			d := DimensionReport{Dimension: name, Window: w.String(), Used: ceilDiv(wu.Used, scale), Unit: unitOf(name)}
			t := wu.End
			if t.IsZero() {
				// Nothing used yet: the engine keeps no window.
				bounds := quota.DayBounds
				if w == quota.WindowMonth {
					bounds = quota.MonthBounds
				}
				_, end := bounds(now.UnixNano(), loc)
				t = time.Unix(0, end).UTC()
			}
			d.ResetAt = &t
			n, ok := b.Max()
			add(d, n/scale, ok)
		}
		rate("requests", l.Requests, use.Requests)
		rate("tokens_rate", l.TokensRate, use.TokensRate)
		budget("tokens", quota.WindowDay, l.TokensDay, use.TokensDay, 1)
		budget("tokens", quota.WindowMonth, l.TokensMonth, use.TokensMonth, 1)
		budget("gpu_seconds", quota.WindowMonth, l.GPUMillisMonth, use.GPUMillis, 1000)
		budget("cost", quota.WindowMonth, l.CostMicrosMonth, use.CostMicros, 1)
		c := DimensionReport{Dimension: "concurrency", Used: use.Concurrency, Unit: "runs"}
		n, ok := l.Concurrency.Max()
		add(c, n, ok)
		out = append(out, rep)
	}
	return out, nil
}

func ceilDiv(a, b int64) int64 {
	if b == 1 {
		return a
	}
	return (a + b - 1) / b
}

func unitOf(dim string) string {
	switch dim {
	case "requests":
		return "requests"
	case "tokens", "tokens_rate":
		return "tokens"
	case "gpu_seconds":
		return "seconds"
	case "cost":
		return "micro_usd"
	}
	return ""
}

// QuotaUsedHeader names the response header that tells a caller how much
// of its tightest budget is used.
const QuotaUsedHeader = "X-Sluice-Quota-Used"

// QuotaUsed is QuotaUsedHeader's value for an admission: of the chain's
// budgets (tokens per day and month, GPU seconds, cost), the one most used
// in percent after this admission's reservation (each budget's figure is
// its tightest scope's: the one with the least left), as
// "tokens/month=85.0"; "" when no budget limits the chain.
func QuotaUsed(t *quota.Ticket) string {
	best, pct := -1, 0.0
	for i := range t.Remaining {
		r := &t.Remaining[i]
		if r.Window == quota.WindowNone || r.Scope == "" || r.Limit <= 0 {
			continue
		}
		if p := float64(r.Limit-r.Remaining) / float64(r.Limit) * 100; best < 0 || p > pct {
			best, pct = i, p
		}
	}
	if best < 0 {
		return ""
	}
	r := &t.Remaining[best]
	var b [48]byte
	out := append(b[:0], r.Dimension.String()...)
	out = append(out, '/')
	out = append(out, r.Window.String()...)
	out = append(out, '=')
	out = strconv.AppendFloat(out, math.Round(pct*10)/10, 'f', 1, 64)
	return string(out)
}
