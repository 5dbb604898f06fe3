package leasequota_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// newChargeEngine returns an engine and its store on a fresh prefix,
// reading clk (the scripts too), closed when the test ends.
func newChargeEngine(t *testing.T, clk *quotatest.Clock, o leasequota.Options) (*leasequota.Engine, *leasequota.Store) {
	t.Helper()
	o.Clock = clk.Now
	st := newStore(t, newClient(t), nil, o)
	e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Instance: "i1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, st
}

func tokensDayUsed(t *testing.T, st *leasequota.Store, key string) (used, stranded int64) {
	t.Helper()
	s := mustRead(t, st, leasequota.Scope{Key: key})
	return s.Meters[leasequota.MeterTokensDay].Used, s.Meters[leasequota.MeterTokensDay].Stranded
}

// TestChargeBudgets: a charge lands in every scope's counter of the
// current window, past any limit, once per id; it is spendable by nobody
// (a later acquire is refused, and no return frees it); a charge of an
// ended window changes nothing.
func TestChargeBudgets(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC))
	e, st := newChargeEngine(t, clk, leasequota.Options{})
	ctx := t.Context()
	l := &quota.Limits{TokensDay: quota.AtMost(1000)}
	chain := []quota.Scope{{Key: "global"}, {Key: "tenant/ten_a", Limits: l}}

	if err := e.Charge(ctx, "c1", chain, quota.Usage{InputTokens: 300, OutputTokens: 400, GPUMillis: 7}, clk.Now()); err != nil {
		t.Fatalf("Charge: %v", err)
	}
	for _, k := range []string{"global", "tenant/ten_a"} {
		u, err := e.Use(ctx, k)
		if err != nil || u.TokensDay.Used != 700 || u.TokensMonth.Used != 700 || u.GPUMillis.Used != 7 {
			t.Fatalf("Use(%s) after a charge of 700 tokens, 7 gpu ms = %+v, %v; want 700, 700, 7", k, u, err)
		}
	}
	// Again with the same id: a retry, nothing more.
	if err := e.Charge(ctx, "c1", chain, quota.Usage{InputTokens: 300, OutputTokens: 400, GPUMillis: 7}, clk.Now()); err != nil {
		t.Fatalf("Charge again: %v", err)
	}
	if used, _ := tokensDayUsed(t, st, "tenant/ten_a"); used != 700 {
		t.Fatalf("counter after the same charge twice = %d, want 700", used)
	}
	// Past the limit: never refused.
	if err := e.Charge(ctx, "c2", chain, quota.Usage{InputTokens: 250}, clk.Now()); err != nil {
		t.Fatalf("Charge past the limit: %v", err)
	}
	if used, _ := tokensDayUsed(t, st, "tenant/ten_a"); used != 950 {
		t.Fatalf("counter after 700 + 250 = %d, want 950", used)
	}
	// Yesterday's use limits nothing today.
	if err := e.Charge(ctx, "c3", chain, quota.Usage{InputTokens: 30}, clk.Now().Add(-24*time.Hour)); err != nil {
		t.Fatalf("Charge of yesterday: %v", err)
	}
	if used, _ := tokensDayUsed(t, st, "tenant/ten_a"); used != 950 {
		t.Fatalf("counter after a charge of an ended window = %d, want 950", used)
	}

	// 50 left of 1000: 60 is refused, 50 admitted. (The charges' lease
	// expired a µs after it was granted.)
	clk.Advance(time.Millisecond)
	_, err := e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 60}})
	var d *quota.Denial
	if !errors.As(err, &d) || d.Scope != "tenant/ten_a" || d.Used != 950 {
		t.Fatalf("Acquire of 60 with 950 of 1000 charged: %v (%+v), want a denial at tenant/ten_a with 950 used", err, d)
	}
	tk, err := e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 50}})
	if err != nil {
		t.Fatalf("Acquire of the 50 left: %v", err)
	}
	if _, err := e.Settle(ctx, tk.ID, quota.Usage{InputTokens: 20}); err != nil {
		t.Fatal(err)
	}
	// The engine's grant reclaimed the charge's lease (it expires at once):
	// its amounts stay counted as stranded, held by no lease.
	used, stranded := tokensDayUsed(t, st, "tenant/ten_a")
	if stranded != 950 {
		t.Errorf("stranded after the reclaim = %d, want the 950 charged", stranded)
	}
	for _, ls := range mustRead(t, st, leasequota.Scope{Key: "tenant/ten_a"}).Leases {
		if strings.HasSuffix(ls.Instance, "/charge") {
			t.Errorf("the charge's lease %+v outlived its reclaim", ls)
		}
	}
	// Everything unused goes back; the charge and the settled 20 stay.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if used, _ = tokensDayUsed(t, st, "tenant/ten_a"); used != 970 {
		t.Errorf("counter after Close = %d, want 950 charged + 20 settled", used)
	}
	if err := e.Charge(ctx, "c4", chain, quota.Usage{InputTokens: 1}, clk.Now()); !errors.Is(err, quota.ErrClosed) {
		t.Errorf("Charge after Close: %v, want ErrClosed", err)
	}
}

// TestChargeEpochLost: with RequireEpoch, a charge on a tag without its
// epoch is refused as a state loss and changes nothing.
func TestChargeEpochLost(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC))
	e, st := newChargeEngine(t, clk, leasequota.Options{RequireEpoch: true})
	ctx := t.Context()
	l := &quota.Limits{Requests: quota.Rate{Limit: 600, Period: time.Minute, Burst: 50}}
	chain := []quota.Scope{{Key: "global", Limits: l}}
	if err := e.Charge(ctx, "c1", chain, quota.Usage{InputTokens: 5}, clk.Now()); !errors.Is(err, quota.ErrStateLost) {
		t.Errorf("Charge without an epoch: %v, want ErrStateLost", err)
	}
	if err := e.ChargeRates(ctx, "r1", []quota.RateCharge{{Scope: chain[0], Requests: 5}}); !errors.Is(err, quota.ErrStateLost) {
		t.Errorf("ChargeRates without an epoch: %v, want ErrStateLost", err)
	}
	if used, _ := tokensDayUsed(t, st, "global"); used != 0 {
		t.Errorf("counter after refused charges = %d, want 0", used)
	}
	if err := st.SetEpoch(ctx, "", "e1"); err != nil {
		t.Fatal(err)
	}
	if err := e.Charge(ctx, "c1", chain, quota.Usage{InputTokens: 5}, clk.Now()); err != nil {
		t.Fatalf("Charge with the epoch: %v", err)
	}
	if used, _ := tokensDayUsed(t, st, "global"); used != 5 {
		t.Errorf("counter = %d, want 5", used)
	}
}

// TestChargeRates: units charged to a scope's buckets fill them past the
// limit, once per id; a later acquire waits for them to drain.
func TestChargeRates(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC))
	e, st := newChargeEngine(t, clk, leasequota.Options{})
	ctx := t.Context()
	l := &quota.Limits{
		Requests:   quota.Rate{Limit: 600, Period: time.Minute, Burst: 50}, // 10/s
		TokensRate: quota.Rate{Limit: 6000, Period: time.Minute, Burst: 1000},
	}
	sc := quota.Scope{Key: "user/usr_a", Limits: l}
	charges := []quota.RateCharge{{Scope: sc, Requests: 40, Tokens: 700}, {Scope: sc, Requests: 20}}
	if err := e.ChargeRates(ctx, "r1", charges); err != nil {
		t.Fatalf("ChargeRates: %v", err)
	}
	u, err := e.Use(ctx, sc.Key)
	if err != nil || u.Requests.Level != 60 || u.TokensRate.Level != 700 {
		t.Fatalf("Use after 60 requests, 700 tokens charged = %+v, %v; want levels 60 and 700", u, err)
	}
	before := mustRead(t, st, leasequota.Scope{Key: sc.Key}).Meters
	if err := e.ChargeRates(ctx, "r1", charges); err != nil {
		t.Fatalf("ChargeRates again: %v", err)
	}
	after := mustRead(t, st, leasequota.Scope{Key: sc.Key}).Meters
	for _, m := range []leasequota.Meter{leasequota.MeterRequests, leasequota.MeterTokensRate} {
		if before[m].Bucket != after[m].Bucket {
			t.Errorf("meter %d: bucket %v after the same charge twice, want %v", m, after[m].Bucket, before[m].Bucket)
		}
	}
	// 60 in a bucket of burst 50: nothing is admitted until it drains to
	// 49, 11 units at 10/s, 1.1 s.
	chain := []quota.Scope{sc}
	_, err = e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1}})
	var d *quota.Denial
	if !errors.As(err, &d) || d.Code != quota.CodeRateLimited {
		t.Fatalf("Acquire with 60 of burst 50 charged: %v, want rate_limited", err)
	}
	clk.Advance(1090 * time.Millisecond)
	if _, err = e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1}}); !errors.As(err, &d) {
		t.Fatalf("Acquire 1.09 s later: %v, want rate_limited", err)
	}
	clk.Advance(20 * time.Millisecond)
	if _, err = e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1}}); err != nil {
		t.Fatalf("Acquire 1.11 s later: %v, want admitted", err)
	}
	// A scope without the rate, and units of 0, change nothing.
	if err := e.ChargeRates(ctx, "r2", []quota.RateCharge{{Scope: quota.Scope{Key: "user/usr_b"}, Requests: 5}}); err != nil {
		t.Fatal(err)
	}
	if b := mustRead(t, st, leasequota.Scope{Key: "user/usr_b"}).Meters[leasequota.MeterRequests].Bucket; b != (quota.Bucket{}) {
		t.Errorf("bucket of a scope without a rate limit = %v, want empty", b)
	}
	if err := e.ChargeRates(ctx, "r3", []quota.RateCharge{{Scope: sc, Requests: -1}}); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("ChargeRates of negative units: %v, want ErrInvalid", err)
	}
}

// TestRebuildRestore: the rebuild restores a counter through a store
// without RequireEpoch while the engine's own store refuses.
func TestRebuildRestore(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC))
	c := newClient(t)
	st := newStore(t, c, nil, leasequota.Options{Clock: clk.Now, RequireEpoch: true})
	e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	day := time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)
	if err := e.Restore(ctx, "tenant/ten_a", quota.DimTokens, quota.WindowDay, day, 123); !errors.Is(err, quota.ErrStateLost) {
		t.Fatalf("Restore without an epoch: %v, want ErrStateLost", err)
	}
	// The same prefix, without RequireEpoch.
	raw, err := leasequota.NewStore(c, leasequota.Options{Prefix: strings.TrimSuffix(strings.TrimPrefix(st.Tag(""), "{"), ":g}"), Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if raw.Tag("") != st.Tag("") {
		t.Fatalf("tag %s, want %s", raw.Tag(""), st.Tag(""))
	}
	if err := e.RebuildRestore(ctx, raw, "tenant/ten_a", quota.DimTokens, quota.WindowDay, day, 123); err != nil {
		t.Fatalf("RebuildRestore: %v", err)
	}
	if used, _ := tokensDayUsed(t, st, "tenant/ten_a"); used != 123 {
		t.Errorf("counter after RebuildRestore = %d, want 123", used)
	}
	if err := e.RebuildRestore(ctx, raw, "tenant/ten_a", quota.DimConcurrency, quota.WindowNone, day, 1); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("RebuildRestore of concurrency: %v, want ErrInvalid", err)
	}
}
