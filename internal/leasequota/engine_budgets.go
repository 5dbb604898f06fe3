package leasequota

import (
	"context"

	"github.com/sluicehq/sluice/internal/quota"
)

var _ quota.BudgetReporter = (*Engine)(nil)

// AcquireBudgets implements quota.BudgetReporter: Acquire, and on
// admission each scope's budget counters as the store last reported them
// to this instance (the counter: settled use, every instance's leases and
// tickets' reservations). quota.Failover shares what they leave among the
// instances when the store becomes unreachable: this instance's own leases
// count as used there, since they are charged in the store and the local
// fallback does not spend them (under-admission of at most what they hold,
// for the outage). A scope whose counter this instance has not learnt
// reports nothing for it.
func (e *Engine) AcquireBudgets(ctx context.Context, r quota.Request) (quota.Ticket, []quota.ScopeBudgets, error) {
	t, err := e.Acquire(ctx, r)
	if err != nil {
		return t, nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	out := make([]quota.ScopeBudgets, len(r.Chain))
	for i := range r.Chain {
		s := e.scopes[r.Chain[i].Key]
		if s == nil {
			continue
		}
		var w [4]quota.WindowUse
		for j, m := range [4]Meter{MeterTokensDay, MeterTokensMonth, MeterGPU, MeterCost} {
			lm := &s.m[m]
			if lm.remaining == unknownRem || lm.limit == unbounded || !lm.window.Equal(s.window(m, now)) {
				continue
			}
			w[j] = quota.WindowUse{Start: lm.window.UTC(), End: windowEnd(lm.window, m).UTC(), Used: max(lm.limit-lm.remaining, 0)}
		}
		out[i] = quota.ScopeBudgets{Key: s.sc.Key, TokensDay: w[0], TokensMonth: w[1], GPUMillis: w[2], CostMicros: w[3]}
	}
	return t, out, nil
}
