package leasequota_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// lostReturns is a store whose next Return calls fail: carried out in
// Redis first when applied is set (the reply was lost), or not at all
// (the call never arrived).
type lostReturns struct {
	*leasequota.Store
	fail    atomic.Int32
	applied bool
}

func (l *lostReturns) Return(ctx context.Context, id, inst string, sc leasequota.Scope, gives []leasequota.Give) (leasequota.ReturnResult, error) {
	if l.fail.Add(-1) >= 0 {
		if l.applied {
			l.Store.Return(ctx, id, inst, sc, gives)
		}
		return leasequota.ReturnResult{}, errors.New("connection reset")
	}
	return l.Store.Return(ctx, id, inst, sc, gives)
}

// TestReturnOutcomeUnknown: a return whose call fails is sent again with
// its request id, so the store gives the amount back exactly once —
// whether the failed call had been carried out or not. (Dropping it, as the
// engine once did, left it counted in Redis after an outage: the counters
// ended above the ledger.)
func TestReturnOutcomeUnknown(t *testing.T) {
	for _, applied := range []bool{false, true} {
		clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
		st := &lostReturns{Store: newStore(t, newClient(t), nil, leasequota.Options{Clock: clk.Now}), applied: applied}
		e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver})
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		chain := []quota.Scope{{Key: "t/acme", Limits: &quota.Limits{TokensDay: quota.AtMost(100_000), Concurrency: quota.AtMost(10)}}}
		tk, err := e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1000, Concurrency: true}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, quota.Usage{InputTokens: 100}); err != nil {
			t.Fatal(err)
		}
		st.fail.Store(1)
		if err := e.Close(); err != nil {
			t.Fatalf("applied=%v: Close: %v (the second send should have gone through)", applied, err)
		}
		s, err := st.Read(ctx, leasequota.Scope{Tenant: "acme", Key: "t/acme"})
		if err != nil {
			t.Fatal(err)
		}
		if tok, slots := s.Meters[leasequota.MeterTokensDay].Used, s.Meters[leasequota.MeterConcurrency].Used; tok != 100 || slots != 0 {
			t.Errorf("applied=%v: after Close the store counts %d tokens and %d slots; want 100 (the use) and 0", applied, tok, slots)
		}
	}
}

// TestObserve: every store call is reported to Options.Observe by its
// operation's name (no ids: they would make unbounded metric labels).
func TestObserve(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	st := newStore(t, newClient(t), nil, leasequota.Options{Observe: func(op, outcome string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		seen[op+"/"+outcome]++
	}})
	ctx := t.Context()
	sc := leasequota.Scope{Key: "global"}
	if _, err := st.Grant(ctx, "g1", "i1", sc, time.Minute, []leasequota.Want{
		{Meter: leasequota.MeterRequests, Amount: 1, Rate: quota.Rate{Limit: 10, Period: time.Second}, Direct: true},
		{Meter: leasequota.MeterConcurrency, Amount: 1, Limit: 5}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Return(ctx, "r1", "i1", sc, []leasequota.Give{{Meter: leasequota.MeterConcurrency, Amount: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.LookupTicket(ctx, "", "tkt_none"); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"rates/ok", "grant/ok", "return/ok", "lookup/ok"} {
		if seen[want] != 1 {
			t.Errorf("%s observed %d times, want 1 (all: %v)", want, seen[want], seen)
		}
	}
}
