package leasequota_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// BenchmarkGrantReturn measures a grant of three meters (requests,
// tokens/day, concurrency) on one scope and the return of the budget and
// the slot: two script calls, the refill traffic of one lease cycle.
// Run with -cpu 1,8 for sequential and parallel figures.
func BenchmarkGrantReturn(b *testing.B) {
	s := newStore(b, newClient(b), nil, leasequota.Options{})
	ctx := context.Background()
	rate := quota.Rate{Limit: 1 << 20, Period: time.Second}
	var seq atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		inst := "inst" + strconv.FormatInt(seq.Add(1), 10)
		for pb.Next() {
			id := strconv.FormatInt(seq.Add(1), 10)
			if _, err := s.Grant(ctx, "g"+id, inst, scope, time.Minute, []leasequota.Want{
				{Meter: leasequota.MeterRequests, Amount: 100, Rate: rate},
				{Meter: leasequota.MeterTokensDay, Amount: 1000, Limit: 1 << 50, Window: day},
				{Meter: leasequota.MeterConcurrency, Amount: 1, Limit: 1 << 40},
			}); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Return(ctx, "r"+id, inst, scope, []leasequota.Give{
				{Meter: leasequota.MeterTokensDay, Amount: 1000, Window: day},
				{Meter: leasequota.MeterConcurrency, Amount: 1},
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkEngineAcquireSettle measures decisions (an acquire and its
// settle) of one Engine over the shared redis-server, on 6-scope chains
// (quotatest.BenchChains, 64 users) whose limits are far away: the leases
// serve the decisions and Redis sees only the refills. Report pairs/s as
// 1e9 / ns/op; run with -cpu 1,2.
//
// Each run starts on a fresh engine and keys, so the timer starts after a
// second of decisions (TestCompareEngines warms up as long): before the
// background loop has measured demand every rate decision goes to the
// store, the cold path, which this does not measure; store-calls/pair
// shows whether decisions still reach the store once warm.
func BenchmarkEngineAcquireSettle(b *testing.B) {
	st := &countingLeases{Store: newStore(b, newClient(b), nil, leasequota.Options{})}
	e, err := leasequota.NewEngine(st, leasequota.EngineOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	// The store's rate arithmetic is exact below 2^53 (burst·limit), so
	// the rates are cut to 1e6 requests/s and 9e7 tokens/s: still far.
	chains := quotatest.BenchChains(64)
	cut := map[*quota.Limits]*quota.Limits{}
	for _, c := range chains {
		for i := range c {
			l := cut[c[i].Limits]
			if l == nil {
				cp := *c[i].Limits
				cp.Requests = quota.Rate{Limit: 1_000_000, Period: time.Second}
				cp.TokensRate = quota.Rate{Limit: 90_000_000, Period: time.Second}
				l, cut[c[i].Limits] = &cp, &cp
			}
			c[i].Limits = l
		}
	}
	ask := quota.Ask{Requests: 1, Tokens: 500, GPUMillis: 10, CostMicros: 20, Concurrency: true, Model: "llama3"}
	use := quota.Usage{InputTokens: 200, OutputTokens: 100, GPUMillis: 5, CostMicros: 10}
	ctx := context.Background()
	pair := func(i int) {
		tk, err := e.Acquire(ctx, quota.Request{Chain: chains[i%len(chains)], Ask: ask})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, use); err != nil {
			b.Fatal(err)
		}
	}
	for i, end := 0, time.Now().Add(time.Second); time.Now().Before(end); i++ {
		pair(i)
	}
	calls := st.calls.Load()
	var seq atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seq.Add(1))
		for pb.Next() {
			i++
			pair(i)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
	b.ReportMetric(float64(st.calls.Load()-calls)/float64(b.N), "store-calls/pair")
}

// countingLeases counts the store calls an Engine makes: its Leases
// methods and the ones it finds by type assertion (GrantBatch, one call
// however many scopes; AdjustRate, Read, Restore, promoted from the
// embedded Store).
type countingLeases struct {
	*leasequota.Store
	calls atomic.Int64
}

func (c *countingLeases) Grant(ctx context.Context, requestID, instance string, sc leasequota.Scope, ttl time.Duration, wants []leasequota.Want) (leasequota.GrantResult, error) {
	c.calls.Add(1)
	return c.Store.Grant(ctx, requestID, instance, sc, ttl, wants)
}

func (c *countingLeases) GrantBatch(ctx context.Context, instance, tenant string, ttl time.Duration, calls []leasequota.BatchCall) ([]leasequota.GrantResult, error) {
	c.calls.Add(1)
	return c.Store.GrantBatch(ctx, instance, tenant, ttl, calls)
}

func (c *countingLeases) Return(ctx context.Context, requestID, instance string, sc leasequota.Scope, gives []leasequota.Give) (leasequota.ReturnResult, error) {
	c.calls.Add(1)
	return c.Store.Return(ctx, requestID, instance, sc, gives)
}

func (c *countingLeases) Renew(ctx context.Context, instance, tenant string, ttl time.Duration, scopes []leasequota.Renewal) (leasequota.RenewResult, error) {
	c.calls.Add(1)
	return c.Store.Renew(ctx, instance, tenant, ttl, scopes)
}

func (c *countingLeases) AdjustRate(ctx context.Context, sc leasequota.Scope, m leasequota.Meter, r quota.Rate, delta int64) (string, error) {
	c.calls.Add(1)
	return c.Store.AdjustRate(ctx, sc, m, r, delta)
}
