package quota_test

import (
	"context"
	"testing"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// BenchmarkAcquireSettle measures one admission and its settlement on
// 6-scope chains of 100,000 users picked at random, with every dimension
// limited, on the real clock.
func BenchmarkAcquireSettle(b *testing.B) {
	const users = 100_000
	chains := quotatest.BenchChains(users)
	e := quota.NewMemory(quota.Options{})
	defer e.Close()
	ctx := context.Background()
	ask := quota.Ask{Requests: 1, Tokens: 1200, MinTokens: 100, GPUMillis: 250, CostMicros: 900, Concurrency: true, Model: "llama3"}
	use := quota.Usage{InputTokens: 400, OutputTokens: 300, GPUMillis: 180, CostMicros: 610}
	// Warm up: every scope state exists, as in a running service.
	for _, c := range chains {
		tk, err := e.Acquire(ctx, quota.Request{Chain: c, Ask: ask})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, use); err != nil {
			b.Fatal(err)
		}
	}
	x := uint64(88172645463325252)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		x ^= x << 13 // xorshift: a cheap random user
		x ^= x >> 7
		x ^= x << 17
		r := quota.Request{Chain: chains[x%users], Ask: ask}
		tk, err := e.Acquire(ctx, r)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, use); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}
