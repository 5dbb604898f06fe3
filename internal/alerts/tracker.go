package alerts

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Tracker remembers which scopes with a budget limit were admitted work
// lately: the scopes whose use can have moved, so the only ones an Alerter
// needs to look at. Admissions tell it (Watch wraps the engine); it does
// no I/O, and for a scope it already holds it neither locks nor allocates,
// so it stays off the decision's cost.
//
// Each instance tracks the admissions it made. A crossing is caused by
// some admission's settle on some instance, and the engine's Use reports
// the shared counters, so the instance that admitted the work sees the
// crossing; its settle landing on another instance changes nothing.
type Tracker struct {
	max    int64
	now    func() time.Time
	scopes sync.Map // scope key → *tracked
	n      atomic.Int64
	full   atomic.Int64 // admissions whose new scope did not fit, since the last sweep
}

type tracked struct {
	tenant string
	until  atomic.Int64 // unix nanoseconds: the scope is dropped after it
}

// DefaultTrackMax bounds the scopes a Tracker holds.
const DefaultTrackMax = 100_000

// trackFor is how long after an admission its scopes stay tracked beyond
// its ticket's TTL: its settle may come that late.
const trackFor = 5 * time.Minute

// minTTL stands for a ticket TTL of 0 (the engine's default, which the
// tracker does not know): long enough for the engines' defaults.
const minTTL = 15 * time.Minute

// NewTracker returns a tracker of at most max scopes (0:
// DefaultTrackMax). now is its clock (nil: time.Now).
func NewTracker(max int, now func() time.Time) *Tracker {
	if max <= 0 {
		max = DefaultTrackMax
	}
	if now == nil {
		now = time.Now
	}
	return &Tracker{max: int64(max), now: now}
}

// Watch returns b with every successful admission reported to t.
func (t *Tracker) Watch(b quota.Backend) quota.Backend { return &watched{Backend: b, t: t} }

type watched struct {
	quota.Backend
	t *Tracker
}

func (w *watched) Acquire(ctx context.Context, r quota.Request) (quota.Ticket, error) {
	tk, err := w.Backend.Acquire(ctx, r)
	if err == nil {
		w.t.Touch(r.Chain, r.TTL)
	}
	return tk, err
}

// HasBudget reports whether l limits a budget to more than nothing: a
// limit of 0 forbids, it is not a budget to be warned about.
func HasBudget(l *quota.Limits) bool {
	if l == nil {
		return false
	}
	for _, b := range [...]quota.Bound{l.TokensDay, l.TokensMonth, l.GPUMillisMonth, l.CostMicrosMonth} {
		if n, ok := b.Max(); ok && n > 0 {
			return true
		}
	}
	return false
}

// Touch records that work admitted with a ticket of ttl was charged to
// chain's scopes.
func (t *Tracker) Touch(chain []quota.Scope, ttl time.Duration) {
	until := int64(-1)
	for i := range chain {
		sc := &chain[i]
		if !HasBudget(sc.Limits) {
			continue
		}
		if until < 0 {
			until = t.now().Add(max(ttl, minTTL) + trackFor).UnixNano()
		}
		if v, ok := t.scopes.Load(sc.Key); ok {
			tr := v.(*tracked)
			// Written only when it moves by a second: admissions on a hot
			// scope share the cache line rather than fight over it.
			if until-tr.until.Load() > int64(time.Second) {
				tr.until.Store(until)
			}
			continue
		}
		if t.n.Load() >= t.max {
			t.full.Add(1)
			continue
		}
		tr := &tracked{tenant: sc.Tenant}
		tr.until.Store(until)
		if _, loaded := t.scopes.LoadOrStore(sc.Key, tr); !loaded {
			t.n.Add(1)
		}
	}
}

// active calls fn for every tracked scope and forgets those whose time is
// up. It returns how many admissions found the tracker full since the last
// call.
func (t *Tracker) active(fn func(scope, tenant string)) int64 {
	now := t.now().UnixNano()
	t.scopes.Range(func(k, v any) bool {
		tr := v.(*tracked)
		if tr.until.Load() < now {
			t.scopes.Delete(k)
			t.n.Add(-1)
			return true
		}
		fn(k.(string), tr.tenant)
		return true
	})
	return t.full.Swap(0)
}

// Len is how many scopes are tracked.
func (t *Tracker) Len() int { return int(t.n.Load()) }
