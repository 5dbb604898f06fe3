package leasequota_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
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
