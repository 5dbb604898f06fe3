package leasequota

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// What quota.Failover needs of a shared backend besides quota.Backend:
// idempotent charges of use admitted elsewhere (budgets and rates), and a
// restore that runs while the tag has no epoch (the rebuild after a loss).
var (
	_ quota.SharedBackend = (*Engine)(nil)
	_ quota.RateCharger   = (*Engine)(nil)
)

// chargeTTL is the life of a charge's lease record: it expires at once, so
// the next script that touches the scope reclaims it and, the record being
// pinned whole, moves its amounts to the stranded counter for the rest of
// their window.
const chargeTTL = time.Microsecond

// chargeInstance is the lease holder charges are granted to: not the
// engine's own lease, whose pins the engine sets from what it believes it
// holds (Renew would unpin the charge, and a reclaim free it).
func (e *Engine) chargeInstance() string { return e.inst + "/charge" }

// Charge implements quota.Charger: u is added to the budgets (tokens/day,
// tokens/month, gpu, cost) of every scope of chain for the windows that
// hold at, when those windows are still current by the engine's clock, as
// quota.Memory does. It is never refused by a limit.
//
// Each scope's amounts are one Grant past the limit (Limit and Pin
// unbounded, as a settle's overrun) to a lease of its own that expires at
// once and is pinned whole: the counter holds the amounts from the grant
// on, and the reclaim that follows keeps them counted as stranded for the
// rest of their window, so no instance can spend them and no return can
// free them. The grant's request id is the charge id and the scope key,
// so a retry (quota.Failover sends a charge again until it learns the
// outcome) replays instead of charging again, for Options.ReplayTTL: a
// charge retried later than that counts twice, the safe side. The scopes
// are charged one script each; a failure part way leaves the earlier ones
// charged, and the retry replays them.
func (e *Engine) Charge(ctx context.Context, id string, chain []quota.Scope, u quota.Usage, at time.Time) error {
	if id == "" {
		return fmt.Errorf("charge: empty id: %w", quota.ErrInvalid)
	}
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return fmt.Errorf("charge %s: negative usage: %w", id, quota.ErrInvalid)
	}
	if u.InputTokens >= unbounded || u.OutputTokens >= unbounded || u.GPUMillis >= unbounded || u.CostMicros >= unbounded {
		return fmt.Errorf("charge %s: usage above 2^50: %w", id, quota.ErrInvalid)
	}
	if e.isClosed() {
		return quota.ErrClosed
	}
	now := e.now()
	for _, sc := range chain {
		var wants []Want
		for m := MeterTokensDay; m <= MeterCost; m++ {
			amt := usageOf(u, m)
			w := windowStart(at, sc.Loc, m)
			if amt <= 0 || !w.Equal(windowStart(now, sc.Loc, m)) {
				continue // nothing, or a window that has ended
			}
			wants = append(wants, Want{Meter: m, Amount: amt, Pin: unbounded, Limit: unbounded, Window: w})
		}
		if len(wants) == 0 {
			continue
		}
		s := Scope{Tenant: e.chainTenant(&sc), Key: sc.Key}
		if _, err := e.st.Grant(ctx, "c:"+id+":"+sc.Key, e.chargeInstance(), s, chargeTTL, wants); err != nil {
			return fmt.Errorf("charge %s: %w", id, err)
		}
	}
	return nil
}

// rateUnits is a forced charge of n units on rate meter m at rate r.
type rateUnits struct {
	m Meter
	r quota.Rate
	n int64
}

// ChargeRates implements quota.RateCharger: each charge's units are added
// to its scope's requests and tokens_rate buckets as of the store's now,
// at the rates of the scope's Limits, as quota.Bucket.Adjust charges use
// beyond what was admitted (never refused; a drained bucket fills from
// empty). A scope without that rate, or units of 0, leaves the bucket
// alone. Like Charge it is once per id and scope for Options.ReplayTTL:
// the buckets are written by the grant script's compare-and-set, which
// stores its reply under the request id (Store.AdjustRate, which is not
// idempotent, would charge a retried call twice).
func (e *Engine) ChargeRates(ctx context.Context, id string, charges []quota.RateCharge) error {
	if id == "" {
		return fmt.Errorf("charge rates: empty id: %w", quota.ErrInvalid)
	}
	st, ok := e.st.(interface {
		chargeRates(ctx context.Context, requestID, instance string, sc Scope, units []rateUnits) error
	})
	if !ok {
		return fmt.Errorf("charge rates %s: the store cannot charge rates: %w", id, quota.ErrInvalid)
	}
	// One call per scope key, in the order the keys first appear.
	var keys []string
	byKey := map[string][]rateUnits{}
	add := func(key string, m Meter, r quota.Rate, n int64) {
		if n <= 0 || checkRate(r) != nil {
			return
		}
		us, seen := byKey[key]
		if !seen {
			keys = append(keys, key)
		}
		for i := range us {
			if us[i].m == m {
				us[i].n += n // the scope's latest rate: as the last charge would see it
				us[i].r = r
				byKey[key] = us
				return
			}
		}
		byKey[key] = append(us, rateUnits{m: m, r: r, n: n})
	}
	for _, c := range charges {
		if c.Requests < 0 || c.Tokens < 0 {
			return fmt.Errorf("charge rates %s: negative units: %w", id, quota.ErrInvalid)
		}
		if c.Requests >= unbounded || c.Tokens >= unbounded {
			return fmt.Errorf("charge rates %s: units above 2^50: %w", id, quota.ErrInvalid)
		}
		if l := c.Scope.Limits; l != nil {
			add(c.Scope.Key, MeterRequests, l.Requests, c.Requests)
			add(c.Scope.Key, MeterTokensRate, l.TokensRate, c.Tokens)
		}
	}
	if e.isClosed() {
		return quota.ErrClosed
	}
	tenants := map[string]string{}
	for _, c := range charges {
		tenants[c.Scope.Key] = e.chainTenant(&c.Scope)
	}
	for _, k := range keys {
		s := Scope{Tenant: tenants[k], Key: k}
		if err := st.chargeRates(ctx, "r:"+id+":"+k, e.chargeInstance(), s, byKey[k]); err != nil {
			return fmt.Errorf("charge rates %s: %w", id, err)
		}
	}
	return nil
}

func (e *Engine) isClosed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closed
}

// chargeRates adds units to sc's rate buckets without a check, once per
// requestID: the buckets are read, adjusted with quota.Bucket.Adjust, and
// written by the grant script (compare-and-set, read again on a conflict),
// which keeps its reply under the request id, so a retry replays. The
// grant writes a lease record for instance that expires after chargeTTL
// and holds nothing.
func (s *Store) chargeRates(ctx context.Context, requestID, instance string, sc Scope, units []rateUnits) error {
	op := "charge rates " + requestID
	if requestID == "" || instance == "" || len(units) == 0 {
		return fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	keys := s.grantKeys(sc, requestID)
	for attempt := 0; attempt <= maxConflicts; attempt++ {
		now, buckets, err := s.readRates(ctx, sc)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		after := buckets
		args := make([]any, 0, 9+8*len(units))
		args = append(args, s.now(), s.epochArg(), instance, chargeTTL.Microseconds(), s.validity, s.replayMS, s.keyMS, s.maxTTL, len(units))
		for _, u := range units {
			before := after[u.m]
			b, err := quota.ParseBucket(before)
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			b.Adjust(u.r, now, u.n)
			after[u.m] = b.String()
			args = append(args, int(u.m), u.n, b.Avail(u.r, now), 0, 0, 0, before, after[u.m])
		}
		v, err := s.run(ctx, op, grantScript, keys, args)
		if err != nil {
			return err
		}
		switch {
		case len(v) == 1:
			return fmt.Errorf("%s: %w", op, ErrEpochLost)
		case len(v) == 2 && v[0] == -2:
			continue // a bucket changed since it was read
		case len(v) != 3+4*len(units):
			return fmt.Errorf("%s: reply of %d values: %w", op, len(v), ErrUnavailable)
		}
		return nil
	}
	return fmt.Errorf("%s: buckets changed under %d reads: %w", op, maxConflicts+1, ErrUnavailable)
}

// budgetMeter maps a budget's dimension and window to its meter.
func budgetMeter(d quota.Dimension, w quota.Window) (Meter, bool) {
	switch {
	case d == quota.DimTokens && w == quota.WindowDay:
		return MeterTokensDay, true
	case d == quota.DimTokens && w == quota.WindowMonth:
		return MeterTokensMonth, true
	case d == quota.DimGPUSeconds && w == quota.WindowMonth:
		return MeterGPU, true
	case d == quota.DimCost && w == quota.WindowMonth:
		return MeterCost, true
	}
	return 0, false
}

// RebuildRestore is Restore through st, a store on the same Redis without
// Options.RequireEpoch: the rebuild after a state loss restores the
// counters from the ledger before it sets the epoch, and the engine's own
// store refuses every write until then. The counter becomes used plus
// what live lease records of the window hold (none after a loss); this
// engine's own leases are dropped, void with the lost state. It takes no scope's lock: while the tag
// has no epoch the engine's own grants and returns are refused and change
// nothing.
func (e *Engine) RebuildRestore(ctx context.Context, st *Store, key string, d quota.Dimension, w quota.Window, start time.Time, used int64) error {
	m, ok := budgetMeter(d, w)
	if !ok {
		return fmt.Errorf("restore %s: %s/%s is not a budget: %w", key, d, w, quota.ErrInvalid)
	}
	if used < 0 {
		return fmt.Errorf("restore %s: negative use: %w", key, quota.ErrInvalid)
	}
	// A rebuild follows a state loss (or an empty store at the first
	// start): this engine's leases were in the lost state, so it counts
	// none of them (engine_loss.go drops them).
	e.mu.Lock()
	e.dropLeases()
	e.mu.Unlock()
	tenant, err := e.tenant(key)
	if err != nil {
		return fmt.Errorf("restore %s: %w: %w", key, ErrUnavailable, err)
	}
	if _, err := st.Restore(ctx, e.inst, Scope{Tenant: tenant, Key: key}, m, start, used, 0); err != nil {
		return fmt.Errorf("restore %s: %w", key, err)
	}
	return nil
}
