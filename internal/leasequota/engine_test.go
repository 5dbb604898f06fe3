package leasequota_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// newEngine returns an engine on a fresh prefix of the shared
// redis-server, reading clk (the scripts too), closed when the test ends.
func newEngine(t *testing.T, clk *quotatest.Clock) *leasequota.Engine {
	t.Helper()
	st := newStore(t, newClient(t), nil, leasequota.Options{Clock: clk.Now})
	e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// TestSuiteAll runs quotatest.Run, unchanged, on one Engine: every
// figure quota.Memory gives, the engine gives (near a limit, rates are
// decided in the store directly; far from one, from leases).
func TestSuiteAll(t *testing.T) {
	quotatest.Run(t, func(t *testing.T) (quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Time{})
		return newEngine(t, clk), clk
	})
}

// TestHugeLimits: a budget or slot limit beyond what the store counts
// exactly (2^50) limits nothing, as far as the store is concerned: the
// engine must still admit, count and settle. (It looped on an unknown
// Remaining once: every decision asked the store again and gave up after
// ten rounds.)
func TestHugeLimits(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC))
	e := newEngine(t, clk)
	ctx := t.Context()
	l := &quota.Limits{TokensDay: quota.AtMost(1 << 60), TokensMonth: quota.AtMost(1 << 55), Concurrency: quota.AtMost(1 << 52)}
	chain := []quota.Scope{{Key: "global", Limits: l}, {Key: "t/a", Limits: l}}
	for range 3 {
		tk, err := e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 100, Concurrency: true}})
		if err != nil {
			t.Fatalf("Acquire under huge limits: %v", err)
		}
		if _, err := e.Settle(ctx, tk.ID, quota.Usage{InputTokens: 40}); err != nil {
			t.Fatal(err)
		}
	}
	u, err := e.Use(ctx, "t/a")
	if err != nil || u.TokensDay.Used != 120 || u.TokensMonth.Used != 120 || u.Concurrency != 0 {
		t.Errorf("Use(t/a) = %+v, %v; want 120 tokens today and this month, no slot", u, err)
	}
}

// TestSuiteShared runs quotatest.RunShared on two engines (two instances)
// over one store: a ticket issued by one is looked up, heartbeated and
// settled (in time and late) through the other, through the records the
// issuer's recorder writes (engine_tickets.go).
func TestSuiteShared(t *testing.T) {
	quotatest.RunShared(t, func(t *testing.T) (quota.Backend, quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Time{})
		st := newStore(t, newClient(t), nil, leasequota.Options{Clock: clk.Now})
		var es [2]*leasequota.Engine
		for i := range es {
			e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Instance: "inst" + string(rune('a'+i))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.Close() })
			es[i] = e
		}
		return es[0], es[1], clk
	})
}
