package leasequota_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
)

// simLeases adapts quotasim's shared store (a quota.SharedBackend) to
// leasequota.Leases for one instance, so that the engine runs in the
// deterministic simulation. Each (scope, meter) is a store scope of its
// own ("<key>#<meter>") limited on that meter only; a budget or slot
// lease is a set of tickets held on it for a day (the simulation is
// shorter); returning part of a budget lease settles tickets for less
// than they reserved. A rate lease is a ticket charged to a bucket whose
// burst is cut by validity·limit/period: units spent within validity of
// their grant then never exceed burst + limit·t/period in any window, as
// the Redis store's slot placement guarantees.
type simLeases struct {
	b        quota.Backend
	validity time.Duration

	mu   sync.Mutex
	held map[string][]heldLot // "<key>#<meter>" → tickets, oldest first
}

type heldLot struct {
	id     string
	n      int64
	window time.Time
}

var _ leasequota.Leases = (*simLeases)(nil)

const simLeaseTTL = 24 * time.Hour

func newSimLeases(b quota.Backend, validity time.Duration) *simLeases {
	return &simLeases{b: b, validity: validity, held: map[string][]heldLot{}}
}

func meterKey(key string, m leasequota.Meter) string { return fmt.Sprintf("%s#%d", key, m) }

// limits returns the store scope's limits for want w.
func (l *simLeases) limits(w leasequota.Want) *quota.Limits {
	b := quota.AtMost(w.Limit)
	cut := func(r quota.Rate) quota.Rate {
		burst := r.Burst
		if burst == 0 {
			burst = r.Limit
		}
		c := (int64(l.validity)*r.Limit + int64(r.Period) - 1) / int64(r.Period)
		return quota.Rate{Limit: r.Limit, Period: r.Period, Burst: max(burst-c, 0)}
	}
	switch w.Meter {
	case leasequota.MeterRequests:
		return &quota.Limits{Requests: cut(w.Rate)}
	case leasequota.MeterTokensRate:
		return &quota.Limits{TokensRate: cut(w.Rate)}
	case leasequota.MeterTokensDay:
		return &quota.Limits{TokensDay: b}
	case leasequota.MeterTokensMonth:
		return &quota.Limits{TokensMonth: b}
	case leasequota.MeterGPU:
		return &quota.Limits{GPUMillisMonth: b}
	case leasequota.MeterCost:
		return &quota.Limits{CostMicrosMonth: b}
	}
	return &quota.Limits{Concurrency: b}
}

func ask(m leasequota.Meter, n, least int64) quota.Ask {
	switch m {
	case leasequota.MeterRequests:
		return quota.Ask{Requests: n}
	case leasequota.MeterTokensRate, leasequota.MeterTokensDay, leasequota.MeterTokensMonth:
		a := quota.Ask{Tokens: n}
		if least < n {
			a.MinTokens = max(least, 1)
		}
		return a
	case leasequota.MeterGPU:
		return quota.Ask{GPUMillis: n}
	case leasequota.MeterCost:
		return quota.Ask{CostMicros: n}
	}
	return quota.Ask{Concurrency: true}
}

func (l *simLeases) Grant(ctx context.Context, _, _ string, sc leasequota.Scope, _ time.Duration, wants []leasequota.Want) (leasequota.GrantResult, error) {
	res := leasequota.GrantResult{Grants: make([]leasequota.Grant, len(wants))}
	for i, w := range wants {
		g, err := l.grant(ctx, sc.Key, w)
		if err != nil {
			return leasequota.GrantResult{}, err
		}
		res.Grants[i] = g
	}
	return res, nil
}

func (l *simLeases) grant(ctx context.Context, key string, w leasequota.Want) (leasequota.Grant, error) {
	g := leasequota.Grant{Meter: w.Meter}
	mk := meterKey(key, w.Meter)
	chain := []quota.Scope{{Key: mk, Limits: l.limits(w)}}
	least := max(w.Min, 1)
	if w.Meter == leasequota.MeterConcurrency {
		var got []heldLot
		for range w.Amount {
			t, err := l.b.Acquire(ctx, quota.Request{Chain: chain, Ask: ask(w.Meter, 1, 1), TTL: simLeaseTTL})
			if err != nil {
				var d *quota.Denial
				if !errors.As(err, &d) {
					l.give(ctx, got, 0)
					return g, err
				}
				g.Remaining = 0
				break
			}
			got = append(got, heldLot{id: t.ID, n: 1})
			g.Remaining = t.Remaining[quota.NumMeters-1].Remaining
		}
		if int64(len(got)) < least {
			l.give(ctx, got, 0)
			return g, nil
		}
		g.Granted = int64(len(got))
		l.add(mk, got...)
		return g, nil
	}
	if w.Meter >= leasequota.MeterTokensDay && w.Meter <= leasequota.MeterCost && !w.Window.IsZero() {
		if start := windowOf(time.Now(), w.Meter); !start.Equal(w.Window) {
			return g, nil // the caller's window has ended
		}
	}
	n := w.Amount
	for try := 0; try < 4 && n >= least; try++ {
		t, err := l.b.Acquire(ctx, quota.Request{Chain: chain, Ask: ask(w.Meter, n, least), TTL: simLeaseTTL})
		var d *quota.Denial
		switch {
		case err == nil:
			g.Granted = n
			if w.Meter != leasequota.MeterRequests && w.Meter != leasequota.MeterGPU && w.Meter != leasequota.MeterCost {
				g.Granted = t.Tokens
			}
			g.Remaining = t.Remaining[w.Meter].Remaining
			if w.Meter > leasequota.MeterTokensRate {
				l.add(mk, heldLot{id: t.ID, n: g.Granted, window: w.Window})
			}
			return g, nil
		case errors.As(err, &d):
			fit := d.Limit - d.Used
			if w.Meter <= leasequota.MeterTokensRate {
				fit = l.limits(w).Requests.Burst + l.limits(w).TokensRate.Burst - d.Used
			}
			g.Remaining = max(fit, 0)
			n = min(n-1, fit)
		default:
			return g, err
		}
	}
	return g, nil
}

func windowOf(now time.Time, m leasequota.Meter) time.Time {
	t := now.UTC()
	if m == leasequota.MeterTokensDay {
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

func (l *simLeases) add(mk string, lots ...heldLot) {
	l.mu.Lock()
	l.held[mk] = append(l.held[mk], lots...)
	l.mu.Unlock()
}

// give settles lots, returning up to n of them (0: settle slots).
func (l *simLeases) give(ctx context.Context, lots []heldLot, n int64) int64 {
	var back int64
	for _, h := range lots {
		r := min(h.n, n)
		if h.window.IsZero() {
			r = h.n // a slot
		}
		l.b.Settle(ctx, h.id, quota.Usage{InputTokens: h.n - r, GPUMillis: h.n - r, CostMicros: h.n - r})
		back += r
		n -= r
	}
	return back
}

func (l *simLeases) Return(ctx context.Context, _, _ string, sc leasequota.Scope, gives []leasequota.Give) (leasequota.ReturnResult, error) {
	res := leasequota.ReturnResult{Returned: make([]int64, len(gives)), Held: make([]int64, len(gives))}
	for i, gv := range gives {
		mk := meterKey(sc.Key, gv.Meter)
		l.mu.Lock()
		lots := l.held[mk]
		var take, keep []heldLot
		left := gv.Amount
		for _, h := range lots {
			switch {
			case gv.Meter == leasequota.MeterConcurrency && left > 0:
				take = append(take, h)
				left--
			case gv.Meter != leasequota.MeterConcurrency && !h.window.Equal(gv.Window):
				// a lot of an ended window: dead with it
			case gv.Meter != leasequota.MeterConcurrency && left > 0:
				take = append(take, h)
				left -= min(h.n, left)
			default:
				keep = append(keep, h)
			}
		}
		l.held[mk] = keep
		l.mu.Unlock()
		if gv.Meter == leasequota.MeterConcurrency {
			res.Returned[i] = int64(len(take))
			for _, h := range take {
				l.b.Settle(ctx, h.id, quota.Usage{})
			}
			continue
		}
		// Budget lots are settled whole: what is not returned becomes use,
		// which the lease (still holding it) stands for.
		res.Returned[i] = l.give(ctx, take, gv.Amount)
	}
	return res, nil
}

func (l *simLeases) Renew(context.Context, string, string, time.Duration, []leasequota.Renewal) (leasequota.RenewResult, error) {
	return leasequota.RenewResult{}, nil
}
