package leasequota_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// TestPinSequence: a pin with a sequence number replaces the lease's only
// if it is the latest (a renewal overtaken by a later grant changes
// nothing); returns and records leave it; a reclaim keeps min(pin, held).
func TestPinSequence(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	ctx := context.Background()
	mustGrant(t, s, reqID(), "a", time.Minute,
		leasequota.Want{Meter: mDay, Amount: 1000, Pin: 300, PinSeq: 2, Limit: 10000, Window: day})
	if m := lease(t, s, "a").Meters[mDay]; m.Held != 1000 || m.Pinned != 300 {
		t.Fatalf("after the grant: %+v, want held 1000 pinned 300", m)
	}
	renew := func(pin int64, seq uint64) {
		t.Helper()
		if _, err := s.Renew(ctx, "a", scope.Tenant, time.Minute, []leasequota.Renewal{{Key: scope.Key,
			Pins: []leasequota.Pin{{Meter: mDay, Amount: pin, Seq: seq, Window: day}}}}); err != nil {
			t.Fatal(err)
		}
	}
	renew(900, 1) // sent before the grant, arrived after it
	if m := lease(t, s, "a").Meters[mDay]; m.Pinned != 300 {
		t.Errorf("a stale renewal moved the pin: %+v, want 300", m)
	}
	renew(120, 3) // lower, and latest
	if m := lease(t, s, "a").Meters[mDay]; m.Pinned != 120 {
		t.Errorf("the latest renewal did not set the pin: %+v, want 120", m)
	}
	renew(500, 3) // a replay of seq 3 with another value: ignored
	if _, err := s.Return(ctx, reqID(), "a", scope, []leasequota.Give{{Meter: mDay, Amount: 850, Window: day}}); err != nil {
		t.Fatal(err)
	}
	if m := lease(t, s, "a").Meters[mDay]; m.Held != 150 || m.Pinned != 120 {
		t.Errorf("after returning 850: %+v, want held 150 pinned 120", m)
	}
	// a dies; b's grant after a's expiry reclaims: 30 unpinned come back,
	// 120 stay counted (stranded).
	clk.Advance(2 * time.Minute)
	mustGrant(t, s, reqID(), "b", time.Minute, leasequota.Want{Meter: mDay, Amount: 0, Limit: 10000, Window: day})
	st := mustRead(t, s, scope)
	if m := st.Meters[mDay]; m.Used != 120 || m.Stranded != 120 {
		t.Errorf("after the reclaim: %+v, want 120 used, all of it stranded", m)
	}
}

// crashPair returns engines a (options oa) and b on one fresh prefix,
// each on its own client, so that closing a's client (ca) kills a as far
// as the store can tell: no renewal, no return, nothing recorded. b is
// closed when the test ends; a is the test's to close.
func crashPair(t *testing.T, clk *quotatest.Clock, oa leasequota.EngineOptions) (ca *redis.Client, sa, sb *leasequota.Store, a, b *leasequota.Engine) {
	t.Helper()
	o := leasequota.Options{Prefix: "crash" + strconv.FormatInt(prefixSeq.Add(1), 10), Clock: clk.Now, Timeout: 10 * time.Second}
	ca = newClient(t)
	var err error
	if sa, err = leasequota.NewStore(ca, o); err != nil {
		t.Fatal(err)
	}
	if sb, err = leasequota.NewStore(newClient(t), o); err != nil {
		t.Fatal(err)
	}
	oa.Now, oa.Tenant, oa.Instance = clk.Now, tenantResolver, "a"
	if a, err = leasequota.NewEngine(sa, oa); err != nil {
		t.Fatal(err)
	}
	if b, err = leasequota.NewEngine(sb, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver, Instance: "b"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return ca, sa, sb, a, b
}

// TestCrashStrandsOnlyWhatWasPinned: an instance that dies holding a
// lease strands its committed use and its pin's margin; the rest of what
// the lease held unspent comes back once the lease expires, to the other
// instances. Before pins tracked what was committed, a crash stranded the
// whole lease for the rest of its window.
func TestCrashStrandsOnlyWhatWasPinned(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	// The pin leaves room for a quarter horizon of demand alone (no asks),
	// so that this lease, one ask large, has an unpinned part to return.
	ca, sa, sb, a, b := crashPair(t, clk, leasequota.EngineOptions{PinAsks: -1})
	ctx := t.Context()
	chain := []quota.Scope{{Key: "t/acme", Limits: &quota.Limits{TokensDay: quota.AtMost(100_000)}}}
	tk, err := a.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Settle(ctx, tk.ID, quota.Usage{InputTokens: 100}); err != nil {
		t.Fatal(err)
	}
	// A renewal (every LeaseTTL/4 of the engine's clock) sets the pin to
	// what a has committed (the 100 settled) and its margin.
	sc := leasequota.Scope{Tenant: "acme", Key: "t/acme"}
	var held, pinned int64
	clk.Advance(3 * time.Second)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := sa.Read(ctx, sc)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range st.Leases {
			if l.Instance == "a" {
				held, pinned = l.Meters[leasequota.MeterTokensDay].Held, l.Meters[leasequota.MeterTokensDay].Pinned
			}
		}
		if pinned > 0 && pinned < held {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a's lease never pinned less than it holds: held %d pinned %d", held, pinned)
		}
	}
	if pinned < 100 {
		t.Fatalf("a's pin %d is below the 100 tokens it settled on its lease", pinned)
	}
	ca.Close() // a dies: no renewal, no return, nothing recorded
	clk.Advance(leasequota.DefaultLeaseTTL + time.Second)
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 10}}); err != nil {
		t.Fatal(err)
	}
	st, err := sb.Read(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	var bHeld int64
	for _, l := range st.Leases {
		if l.Instance == "b" {
			bHeld = l.Meters[leasequota.MeterTokensDay].Held
		}
		if l.Instance == "a" {
			t.Errorf("a's lease still in the store after its expiry: %+v", l)
		}
	}
	m := st.Meters[leasequota.MeterTokensDay]
	if m.Stranded != pinned || m.Used != bHeld+pinned {
		t.Errorf("after a's lease expired: used %d stranded %d; want a's pin %d stranded and used = b's lease %d + it",
			m.Used, m.Stranded, pinned, bHeld)
	}
	t.Logf("a held %d tokens (100 settled): %d stranded, %d back", held, pinned, held-pinned)
	a.Close()
}

// TestCrashReleasesSlotsWithTheirTickets: the slot of a ticket a crashed
// instance issued and never recorded stays held while that ticket could
// still be running, and is released once it has expired — not a day later
// (the longest ticket TTL) as when the lease did not say.
func TestCrashReleasesSlotsWithTheirTickets(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	// a never records its tickets: its slot stays in its lease, pinned.
	ca, sa, _, a, b := crashPair(t, clk, leasequota.EngineOptions{RecordAfter: time.Hour})
	ctx := t.Context()
	chain := []quota.Scope{{Key: "t/acme", Limits: &quota.Limits{Concurrency: quota.AtMost(1)}}}
	r := quota.Request{Chain: chain, Ask: quota.Ask{Concurrency: true}, TTL: 2 * time.Minute}
	if _, err := a.Acquire(ctx, r); err != nil {
		t.Fatal(err)
	}
	// A renewal tells the store until when a's pinned slot may be held.
	clk.Advance(3 * time.Second)
	sc := leasequota.Scope{Tenant: "acme", Key: "t/acme"}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := sa.Read(ctx, sc)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Leases) == 1 && st.Leases[0].ExpiresAt.After(clk.Now().Add(leasequota.DefaultLeaseTTL-time.Second)) {
			break // renewed at the advanced clock
		}
		if time.Now().After(deadline) {
			t.Fatalf("a's lease was not renewed: %+v", st.Leases)
		}
	}
	ca.Close() // a dies with its ticket running
	clk.Advance(leasequota.DefaultLeaseTTL + time.Second)
	if _, err := b.Acquire(ctx, r); err == nil {
		t.Fatal("b took the only slot while a's ticket may still be running")
	}
	clk.Advance(3 * time.Minute) // past the ticket's expiry and the lease's
	if _, err := b.Acquire(ctx, r); err != nil {
		t.Fatalf("b after a's ticket expired: %v; want the slot back", err)
	}
	a.Close()
}
