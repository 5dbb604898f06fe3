package leasequota_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// TestStateLoss: Redis comes back empty. The engine drops its leases at
// the first call that finds the epoch gone and decides nothing more until
// the rebuild; after it, the failover readmits the live ticket (its slot
// and tokens charged to the rebuilt counters), which then settles exactly:
// the counters end at the ledger's use, with no slot held.
func TestStateLoss(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	c := newClient(t)
	st := newStore(t, c, nil, leasequota.Options{Clock: clk.Now, RequireEpoch: true})
	prefix := strings.TrimSuffix(strings.TrimPrefix(st.Tag(""), "{"), ":g}")
	raw, err := leasequota.NewStore(c, leasequota.Options{Prefix: prefix, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, tag := range []string{"", "acme"} {
		if err := st.SetEpoch(ctx, tag, "e1"); err != nil {
			t.Fatal(err)
		}
	}
	e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	lim := &quota.Limits{TokensDay: quota.AtMost(10_000), Concurrency: quota.AtMost(2)}
	chain := []quota.Scope{{Key: "t/acme", Limits: lim}}
	r := quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1000, Concurrency: true}, TTL: time.Hour}
	live, err := e.Acquire(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	done, err := e.Acquire(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Settle(ctx, done.ID, quota.Usage{InputTokens: 300}); err != nil {
		t.Fatal(err)
	}

	// Redis restarted empty: everything is gone, the epoch too.
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// The engine may still hold leases it has not learnt are void: a
	// renewal finds out (the background loop renews every LeaseTTL/4).
	clk.Advance(3 * time.Second)
	// Until it has, it may decide on them (what they hold at most: here
	// the one slot left); those runs end at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tk, err := e.Acquire(ctx, r)
		if errors.Is(err, quota.ErrStateLost) {
			break
		}
		if err == nil {
			if _, err := e.Settle(ctx, tk.ID, quota.Usage{}); err != nil {
				t.Fatalf("Settle of a run admitted before the engine noticed: %v", err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Acquire after the state was lost: %v; want ErrStateLost once the engine has noticed", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := e.Acquire(ctx, r); !errors.Is(err, quota.ErrStateLost) {
		t.Fatalf("Acquire again: %v, want ErrStateLost (no lease left to spend)", err)
	}

	// The rebuild: the ledger holds the 300 settled; then the epoch.
	day := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	if err := e.RebuildRestore(ctx, raw, "t/acme", quota.DimTokens, quota.WindowDay, day, 300); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"", "acme"} {
		if err := st.SetEpoch(ctx, tag, "e2"); err != nil {
			t.Fatal(err)
		}
	}
	e.Rebuilt(ctx)
	if err := e.Readmit(ctx, live.ID, r, clk.Now().Add(time.Hour)); err != nil {
		t.Fatalf("Readmit: %v", err)
	}
	sc := leasequota.Scope{Tenant: "acme", Key: "t/acme"}
	s := mustRead(t, st, sc)
	if tok, slots := s.Meters[leasequota.MeterTokensDay].Used, s.Meters[leasequota.MeterConcurrency].Used; tok != 1300 || slots != 1 {
		t.Errorf("after the readmission: %d tokens and %d slots counted; want 1300 (300 settled + the live ticket's 1000) and 1", tok, slots)
	}
	// One more run fits (2 slots); a third does not.
	third, err := e.Acquire(ctx, r)
	if err != nil {
		t.Fatalf("Acquire after the rebuild: %v", err)
	}
	if _, err := e.Acquire(ctx, r); err == nil {
		t.Error("a third run was admitted under a concurrency limit of 2 (the live ticket's slot was not readmitted)")
	}
	if _, err := e.Settle(ctx, live.ID, quota.Usage{InputTokens: 500}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Settle(ctx, third.ID, quota.Usage{InputTokens: 10}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustRead(t, st, sc)
	if tok, slots := s.Meters[leasequota.MeterTokensDay].Used, s.Meters[leasequota.MeterConcurrency].Used; tok != 810 || slots != 0 {
		t.Errorf("after every settle and Close: %d tokens and %d slots counted; want 810 (300 + 500 + 10) and 0", tok, slots)
	}
}

// TestRecoveredDropsVoidLeases: an instance that made no call while
// another rebuilt an empty store still holds leases the store has
// forgotten; Recovered, which the failover calls before it leaves
// degraded mode, renews them and so drops them, and the instance no longer
// admits what the rebuilt counters gave to someone else.
func TestRecoveredDropsVoidLeases(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	c := newClient(t)
	st := newStore(t, c, nil, leasequota.Options{Clock: clk.Now, RequireEpoch: true})
	ctx := t.Context()
	if err := st.SetEpoch(ctx, "acme", "e1"); err != nil {
		t.Fatal(err)
	}
	var es [2]*leasequota.Engine
	for i := range es {
		e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver, Instance: "i" + string(rune('a'+i))})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		es[i] = e
	}
	a, b := es[0], es[1]
	r := quota.Request{Chain: []quota.Scope{{Key: "t/acme", Limits: &quota.Limits{Concurrency: quota.AtMost(1)}}}, Ask: quota.Ask{Concurrency: true}}
	tk, err := a.Acquire(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Settle(ctx, tk.ID, quota.Usage{}); err != nil {
		t.Fatal(err) // a's lease keeps the slot, free
	}
	// The store restarts empty and another instance rebuilds it (nothing
	// to restore: no use) before a makes a call.
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := st.SetEpoch(ctx, "acme", "e2"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, r); err != nil {
		t.Fatalf("b on the rebuilt store: %v", err)
	}
	if err := a.Recovered(ctx); err != nil {
		t.Fatalf("Recovered: %v", err)
	}
	if _, err := a.Acquire(ctx, r); err == nil {
		t.Fatal("a admitted a second run on a lease the rebuilt store does not have (limit 1, b holds it)")
	}
}
