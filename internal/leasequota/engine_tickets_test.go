package leasequota_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// tenantOf puts "t/<name>…" scopes on tenant <name>'s tag, the rest on the
// global tag.
func tenantOf(key string) string {
	if rest, ok := strings.CutPrefix(key, "t/"); ok {
		name, _, _ := strings.Cut(rest, "/")
		return name
	}
	return ""
}

// tenantResolver is tenantOf as EngineOptions.Tenant.
func tenantResolver(key string) (string, error) { return tenantOf(key), nil }

// enginePair returns two engines (two instances) on one store with
// tenant tags, reading clk.
func enginePair(t *testing.T, clk *quotatest.Clock) (*leasequota.Store, *leasequota.Engine, *leasequota.Engine) {
	t.Helper()
	st := newStore(t, newClient(t), nil, leasequota.Options{Clock: clk.Now})
	var es [2]*leasequota.Engine
	for i := range es {
		e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver, Instance: "inst" + string(rune('a'+i))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		es[i] = e
	}
	return st, es[0], es[1]
}

// readUse returns a scope's counters in the store (leases, tickets and
// settled use together).
func readUse(t *testing.T, st *leasequota.Store, key string) (tokensDay, slots int64) {
	t.Helper()
	s, err := st.Read(context.Background(), leasequota.Scope{Tenant: tenantOf(key), Key: key})
	if err != nil {
		t.Fatalf("Read(%s): %v", key, err)
	}
	return s.Meters[leasequota.MeterTokensDay].Used, s.Meters[leasequota.MeterConcurrency].Used
}

// TestTicketsOutliveTheirIssuer: an instance that stops with tickets in
// flight records them, so another instance settles them afterwards, and
// the store ends with exactly the settled use and no slot — what a rolling
// restart behind a load balancer does.
func TestTicketsOutliveTheirIssuer(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	st, a, b := enginePair(t, clk)
	ctx := t.Context()
	lim := &quota.Limits{TokensDay: quota.AtMost(10_000), Concurrency: quota.AtMost(2)}
	chain := []quota.Scope{{Key: "global", Limits: &quota.Limits{Concurrency: quota.AtMost(100)}}, {Key: "t/acme", Limits: lim}, {Key: "t/acme/u1", Limits: lim}}
	r := quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1000, Concurrency: true}, TTL: time.Hour, Meta: "m1"}
	var ids []string
	for range 2 {
		tk, err := a.Acquire(ctx, r)
		if err != nil {
			t.Fatalf("Acquire on a: %v", err)
		}
		if !strings.Contains(tk.ID, ".g.tacme") {
			t.Fatalf("ticket id %q does not name its tags (.g.tacme)", tk.ID)
		}
		ids = append(ids, tk.ID)
	}
	if _, err := b.Acquire(ctx, r); err == nil {
		t.Fatal("a third run on b was admitted under a concurrency limit of 2")
	}
	// One settled on b while a still runs: b finds the record (waiting for
	// a's recorder if it is young).
	s1, err := b.Settle(ctx, ids[0], quota.Usage{InputTokens: 200, OutputTokens: 100})
	if err != nil || s1.ReservedTokens != 1000 || s1.Late || s1.Meta != "m1" {
		t.Fatalf("Settle on b: got %+v, %v; want reserved 1000, on time, meta m1", s1, err)
	}
	if again, err := a.Settle(ctx, ids[0], quota.Usage{InputTokens: 1}); err != nil || !again.Replay || again.Usage != s1.Usage {
		t.Fatalf("replay on the issuer: got %+v, %v; want the first settlement, replayed", again, err)
	}
	// a stops with the other ticket live: it records it first.
	if err := a.Close(); err != nil {
		t.Fatalf("Close a: %v", err)
	}
	for _, key := range []string{"t/acme", "t/acme/u1"} {
		if u, err := b.Use(ctx, key); err != nil || u.TokensDay.Used != 300+1000 || u.Concurrency != 1 {
			t.Errorf("Use(%s) on b after a stopped: %+v, %v; want 1300 tokens (300 settled, 1000 reserved) and 1 slot", key, u, err)
		}
	}
	info, err := b.Lookup(ctx, ids[1])
	if err != nil || info.Settled || info.Expired || info.Tokens != 1000 || info.Meta != "m1" {
		t.Fatalf("Lookup on b of a's live ticket: got %+v, %v", info, err)
	}
	clk.Advance(30 * time.Minute)
	exp, err := b.Heartbeat(ctx, ids[1], time.Hour)
	if err != nil || !exp.Equal(clk.Now().Add(time.Hour)) {
		t.Fatalf("Heartbeat on b: got %v, %v; want %v", exp, err, clk.Now().Add(time.Hour))
	}
	clk.Advance(45 * time.Minute) // past the first expiry, within the heartbeat's
	s2, err := b.Settle(ctx, ids[1], quota.Usage{OutputTokens: 450})
	if err != nil || s2.Late || s2.Replay {
		t.Fatalf("Settle on b after a stopped: got %+v, %v; want on time", s2, err)
	}
	for _, key := range []string{"t/acme", "t/acme/u1"} {
		if u, err := b.Use(ctx, key); err != nil || u.TokensDay.Used != 300+450 || u.Concurrency != 0 {
			t.Errorf("Use(%s) on b at the end: %+v, %v; want 750 tokens and no slot", key, u, err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close b: %v", err)
	}
	if tok, slots := readUse(t, st, "t/acme"); tok != 750 || slots != 0 {
		t.Errorf("t/acme after both stopped: %d tokens and %d slots counted; want 750 and 0", tok, slots)
	}
}

// TestRecordedTicketExpires: a recorded ticket nobody settles is refunded
// at its expiry by the store's sweep, whichever instance looks next, and a
// late settle then charges its use alone.
func TestRecordedTicketExpires(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	st, a, b := enginePair(t, clk)
	ctx := t.Context()
	chain := []quota.Scope{{Key: "t/acme", Limits: &quota.Limits{TokensDay: quota.AtMost(5000), Concurrency: quota.AtMost(1)}}}
	r := quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 4000, Concurrency: true}, TTL: time.Minute}
	tk, err := a.Acquire(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	waitRecorded(t, b, tk.ID)
	if _, err := b.Acquire(ctx, r); err == nil {
		t.Fatal("b admitted a second run while a's ticket holds the only slot")
	}
	clk.Advance(2 * time.Minute)
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 4000, Concurrency: true}, TTL: time.Minute}); err != nil {
		t.Fatalf("b after a's ticket expired: %v; want admitted (its slot and tokens refunded)", err)
	}
	s, err := a.Settle(ctx, tk.ID, quota.Usage{InputTokens: 700})
	if err != nil || !s.Late {
		t.Fatalf("late settle on the issuer: got %+v, %v; want late", s, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// b's run is live (recorded at close, 4000 reserved); a's use is 700.
	if tok, slots := readUse(t, st, "t/acme"); tok != 4700 || slots != 1 {
		t.Errorf("t/acme: %d tokens and %d slots counted; want 4700 and 1", tok, slots)
	}
}

// waitRecorded waits (real time, bounded) until e finds ticket id in the
// store.
func waitRecorded(t *testing.T, e *leasequota.Engine, id string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, err := e.Lookup(t.Context(), id)
		if err == nil {
			return
		}
		if !errors.Is(err, quota.ErrUnknownTicket) || time.Now().After(deadline) {
			t.Fatalf("ticket %s not recorded: %v", id, err)
		}
	}
}

// TestUnknownTicketElsewhere: an id no instance issued is unknown
// everywhere, after the wait for a recorder, and so is one in another
// format.
func TestUnknownTicketElsewhere(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	_, _, b := enginePair(t, clk)
	for _, id := range []string{"tkt_aaaaaaaaaaaaaaaaaaaaaaaaaa.tacme", "tkt_aaaaaaaaaaaaaaaaaaaaaaaaaa", "nope.g", "tkt_x.q"} {
		if _, err := b.Settle(t.Context(), id, quota.Usage{}); !errors.Is(err, quota.ErrUnknownTicket) {
			t.Errorf("Settle(%q): got %v, want ErrUnknownTicket", id, err)
		}
		if _, err := b.Heartbeat(t.Context(), id, time.Minute); !errors.Is(err, quota.ErrUnknownTicket) {
			t.Errorf("Heartbeat(%q): got %v, want ErrUnknownTicket", id, err)
		}
	}
}

// TestAcquireBudgets: what the engine reports to quota.Failover for each
// scope is the store's counter (every instance's leases counted as used),
// so an outage shares only what nobody holds.
func TestAcquireBudgets(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	st, a, b := enginePair(t, clk)
	ctx := t.Context()
	chain := []quota.Scope{{Key: "global"}, {Key: "t/acme", Limits: &quota.Limits{TokensDay: quota.AtMost(10_000), GPUMillisMonth: quota.AtMost(50_000)}}}
	r := quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1200, GPUMillis: 7000}}
	if _, err := a.Acquire(ctx, r); err != nil {
		t.Fatal(err)
	}
	_, budgets, err := b.AcquireBudgets(ctx, r)
	if err != nil || len(budgets) != 2 {
		t.Fatalf("AcquireBudgets: %v, %v", budgets, err)
	}
	s, err := st.Read(ctx, leasequota.Scope{Tenant: "acme", Key: "t/acme"})
	if err != nil {
		t.Fatal(err)
	}
	got := budgets[1]
	if got.Key != "t/acme" || got.TokensDay.Used != s.Meters[leasequota.MeterTokensDay].Used || got.TokensDay.Used < 2400 ||
		got.GPUMillis.Used != s.Meters[leasequota.MeterGPU].Used || got.GPUMillis.Used < 14000 {
		t.Errorf("budgets of t/acme: got %+v; want the store's counters (tokens %d, gpu %d), at least both asks",
			got, s.Meters[leasequota.MeterTokensDay].Used, s.Meters[leasequota.MeterGPU].Used)
	}
	if !got.TokensDay.End.Equal(time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("tokens/day window ends %v; want the day's end", got.TokensDay.End)
	}
	if budgets[0].TokensDay.Used != 0 {
		t.Errorf("global, unlimited, reported %+v; want nothing", budgets[0])
	}
}

// gatedRecords is a store whose RecordTickets calls on one tag wait for
// gate: the issuer's record on that tag is still in flight while its
// record on the other tag is in.
type gatedRecords struct {
	*leasequota.Store
	tag  string
	gate chan struct{}
}

func (g *gatedRecords) RecordTickets(ctx context.Context, tenant string, recs []leasequota.TicketRecord) (leasequota.RecordResult, error) {
	if tenant == g.tag {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return leasequota.RecordResult{}, ctx.Err()
		}
	}
	return g.Store.RecordTickets(ctx, tenant, recs)
}

// TestSettleElsewhereBeforeEveryTagIsRecorded: the issuer records a ticket
// on each of its tags in separate calls, so another instance may settle it
// while one tag has its record and the other not yet (a loaded machine:
// cmd/sluice's TestLeaseEngineLimitsHold left 1 slot and a reservation
// counted on the scopes of the late tag after every ticket was settled).
// The settle must reach the late tag too: its reservations are freed and
// its use charged when the record lands, and nothing stays counted once
// the issuer has stopped.
func TestSettleElsewhereBeforeEveryTagIsRecorded(t *testing.T) {
	for _, late := range []string{"acme", ""} {
		t.Run("late tag "+strconv.Quote(late), func(t *testing.T) {
			clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
			st := newStore(t, newClient(t), nil, leasequota.Options{Clock: clk.Now})
			g := &gatedRecords{Store: st, tag: late, gate: make(chan struct{})}
			opened := false
			open := func() {
				if !opened {
					opened = true
					close(g.gate)
				}
			}
			defer open()
			a, err := leasequota.NewEngine(g, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver, Instance: "insta"})
			if err != nil {
				t.Fatal(err)
			}
			b, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver, Instance: "instb"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			ctx := t.Context()
			lim := &quota.Limits{TokensDay: quota.AtMost(10_000), Concurrency: quota.AtMost(2)}
			chain := []quota.Scope{{Key: "global", Limits: &quota.Limits{TokensDay: quota.AtMost(1_000_000), Concurrency: quota.AtMost(100)}},
				{Key: "t/acme", Limits: lim}, {Key: "t/acme/u1", Limits: lim}}
			tk, err := a.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1000, Concurrency: true}, TTL: time.Hour, Meta: "m1"})
			if err != nil {
				t.Fatalf("Acquire on a: %v", err)
			}
			early := "acme"
			if late == "acme" {
				early = ""
			}
			// a's recorder has the record in on the early tag; the late one waits.
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := st.LookupTicket(ctx, early, tk.ID); err == nil {
					break
				} else if !errors.Is(err, quota.ErrUnknownTicket) || time.Now().After(deadline) {
					t.Fatalf("the record on tag %q: %v", early, err)
				}
				time.Sleep(5 * time.Millisecond)
			}
			use := quota.Usage{InputTokens: 200, OutputTokens: 100}
			s1, err := b.Settle(ctx, tk.ID, use)
			if err != nil || s1.ReservedTokens != 1000 || s1.Meta != "m1" || s1.Replay {
				t.Fatalf("Settle on b: got %+v, %v; want reserved 1000, meta m1", s1, err)
			}
			open() // the late record lands
			if err := a.Close(); err != nil {
				t.Fatalf("Close a: %v", err)
			}
			for _, key := range []string{"global", "t/acme", "t/acme/u1"} {
				if tokens, slots := readUse(t, st, key); tokens != 300 || slots != 0 {
					t.Errorf("%s after the settle and a's stop: %d tokens and %d slots counted, want the 300 used and none", key, tokens, slots)
				}
			}
			again, err := b.Settle(ctx, tk.ID, quota.Usage{InputTokens: 1})
			if err != nil || !again.Replay || again.Usage != use || again.ReservedTokens != 1000 || again.Meta != "m1" {
				t.Fatalf("replay on b: got %+v, %v; want the first settlement, replayed", again, err)
			}
		})
	}
}
