package quota

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// fakeClock is a settable clock for white-box tests.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

func newTestMemory(t *testing.T, o Options) (*Memory, *fakeClock) {
	t.Helper()
	clk := &fakeClock{now: time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC)}
	o.Now = clk.Now
	e := NewMemory(o)
	t.Cleanup(func() { e.Close() })
	return e, clk
}

func chainOf(keys ...string) []Scope {
	out := make([]Scope, len(keys))
	for i, k := range keys {
		out[i] = Scope{Key: k}
	}
	return out
}

func TestEvictIdleScopes(t *testing.T) {
	ctx := context.Background()
	e, clk := newTestMemory(t, Options{})
	lim := &Limits{Requests: Rate{Limit: 10, Period: time.Second}}
	for i := range 500 {
		r := Request{Chain: []Scope{{Key: "global"}, {Key: fmt.Sprintf("u/%d", i), Limits: lim}}, Ask: Ask{Requests: 1}}
		tk, err := e.Acquire(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, Usage{}); err != nil {
			t.Fatal(err)
		}
	}
	// One scope keeps use this month, one a live ticket.
	if _, err := e.Acquire(ctx, Request{Chain: chainOf("busy"), Ask: Ask{Tokens: 5}, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	tk, err := e.Acquire(ctx, Request{Chain: chainOf("spent"), Ask: Ask{Tokens: 7}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Settle(ctx, tk.ID, Usage{InputTokens: 7}); err != nil {
		t.Fatal(err)
	}
	// Rate buckets still hold the requests for a moment: only global,
	// which counts nothing but requests, can go.
	// evictSome looks at 32 scopes from a random point of the map: enough
	// calls that every scope is surely looked at (100 missed global about
	// once in 700 runs).
	e.mu.Lock()
	for range 4000 {
		e.evictSome(e.last)
	}
	n := len(e.scopes)
	e.mu.Unlock()
	if n != 502 {
		t.Fatalf("scopes before buckets drain: got %d, want 502", n)
	}
	clk.now = clk.now.Add(time.Second)
	e.mu.Lock()
	for range 4000 {
		e.evictSome(clk.now.UnixNano())
	}
	_, busy := e.scopes["busy"]
	_, spent := e.scopes["spent"]
	n = len(e.scopes)
	e.mu.Unlock()
	if n != 2 || !busy || !spent {
		t.Fatalf("scopes after eviction: got %d (busy %v, spent %v), want only busy and spent", n, busy, spent)
	}
	if u, _ := e.Use(ctx, "spent"); u.TokensMonth.Used != 7 {
		t.Errorf("spent month use: got %d, want 7", u.TokensMonth.Used)
	}
}

func TestSettledRetention(t *testing.T) {
	ctx := context.Background()
	e, clk := newTestMemory(t, Options{MaxSettled: 4, SettledRetention: time.Hour})
	var ids []string
	for range 6 {
		tk, err := e.Acquire(ctx, Request{Chain: chainOf("u"), Ask: Ask{Tokens: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, Usage{InputTokens: 1}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tk.ID)
	}
	for i, id := range ids {
		_, err := e.Settle(ctx, id, Usage{})
		if remembered := i >= 2; remembered != (err == nil) {
			t.Errorf("replay of ticket %d of 6 with room for 4: got %v, want remembered %v", i+1, err, remembered)
		}
	}
	clk.now = clk.now.Add(time.Hour)
	if _, err := e.Settle(ctx, ids[5], Usage{}); !errors.Is(err, ErrUnknownTicket) {
		t.Errorf("replay after retention: got %v, want ErrUnknownTicket", err)
	}
	for _, id := range []string{"", "x", ids[5] + "0", "zzzzzzzzzzzz-1", ids[5][:13] + "zzzzzzzzzzzzzzzz", ids[5][:13] + "A"} {
		if _, err := e.Settle(ctx, id, Usage{}); !errors.Is(err, ErrUnknownTicket) {
			t.Errorf("settle %q: got %v, want ErrUnknownTicket", id, err)
		}
	}
}

func TestTTLBounds(t *testing.T) {
	ctx := context.Background()
	e, clk := newTestMemory(t, Options{DefaultTTL: 2 * time.Minute, MaxTTL: time.Hour})
	tests := []struct {
		ttl, want time.Duration
	}{
		{0, 2 * time.Minute},
		{-time.Second, 2 * time.Minute},
		{10 * time.Second, 10 * time.Second},
		{48 * time.Hour, time.Hour},
	}
	for _, tt := range tests {
		tk, err := e.Acquire(ctx, Request{Chain: chainOf("u"), Ask: Ask{Requests: 1}, TTL: tt.ttl})
		if err != nil {
			t.Fatal(err)
		}
		if got := tk.ExpiresAt.Sub(clk.now); got != tt.want {
			t.Errorf("TTL %v: got %v, want %v", tt.ttl, got, tt.want)
		}
		exp, err := e.Heartbeat(ctx, tk.ID, tt.ttl)
		if err != nil {
			t.Fatal(err)
		}
		if got := exp.Sub(clk.now); got != tt.want {
			t.Errorf("heartbeat TTL %v: got %v, want %v", tt.ttl, got, tt.want)
		}
	}
}

func TestClockGoingBack(t *testing.T) {
	ctx := context.Background()
	e, clk := newTestMemory(t, Options{})
	chain := []Scope{{Key: "u", Limits: &Limits{Requests: Rate{Limit: 1, Period: time.Minute}}}}
	if _, err := e.Acquire(ctx, Request{Chain: chain, Ask: Ask{Requests: 1}}); err != nil {
		t.Fatal(err)
	}
	clk.now = clk.now.Add(-time.Hour)
	_, err := e.Acquire(ctx, Request{Chain: chain, Ask: Ask{Requests: 1}})
	var d *Denial
	if !errors.As(err, &d) || d.RetryAfter != time.Minute {
		t.Fatalf("after the wall clock went back an hour: got %v, want a denial with RetryAfter 1m", err)
	}
}

func TestZoneChangeKeepsCounts(t *testing.T) {
	ctx := context.Background()
	e, _ := newTestMemory(t, Options{})
	sh, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	lim := &Limits{TokensDay: AtMost(100)}
	tk, err := e.Acquire(ctx, Request{Chain: []Scope{{Key: "t", Limits: lim}}, Ask: Ask{Tokens: 80}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Settle(ctx, tk.ID, Usage{InputTokens: 80}); err != nil {
		t.Fatal(err)
	}
	// 10:00 UTC is 18:00 in Shanghai: the same date, a different window.
	_, err = e.Acquire(ctx, Request{Chain: []Scope{{Key: "t", Limits: lim, Loc: sh}}, Ask: Ask{Tokens: 30}})
	if !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("after a zone change: got %v, want quota_exceeded", err)
	}
	u, _ := e.Use(ctx, "t")
	if want := time.Date(2026, 1, 15, 0, 0, 0, 0, sh); !u.TokensDay.Start.Equal(want) {
		t.Errorf("window after zone change: got start %v, want %v", u.TokensDay.Start, want)
	}
	// A new *Location for the same zone is the same zone.
	sh2, _ := time.LoadLocation("Asia/Shanghai")
	if _, err := e.Acquire(ctx, Request{Chain: []Scope{{Key: "t", Limits: lim, Loc: sh2}}, Ask: Ask{Tokens: 20}}); err != nil {
		t.Fatalf("same zone, new *Location: got %v, want admission", err)
	}
}

func TestClosed(t *testing.T) {
	ctx := context.Background()
	e, _ := newTestMemory(t, Options{})
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if _, err := e.Acquire(ctx, Request{Chain: chainOf("u"), Ask: Ask{Requests: 1}}); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close: got %v, want ErrClosed", err)
	}
	if _, err := e.Settle(ctx, "x", Usage{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Settle after Close: got %v, want ErrClosed", err)
	}
	if _, err := e.Use(ctx, "u"); !errors.Is(err, ErrClosed) {
		t.Errorf("Use after Close: got %v, want ErrClosed", err)
	}
}

func TestCancelledContext(t *testing.T) {
	e, _ := newTestMemory(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Acquire(ctx, Request{Chain: chainOf("u"), Ask: Ask{Requests: 1}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire with a cancelled context: got %v, want context.Canceled", err)
	}
}

// TestSteadyStateAllocations guards the hot path: an admission and its
// settlement allocate nothing but, now and then, a block of ticket IDs.
func TestSteadyStateAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	ctx := context.Background()
	e, _ := newTestMemory(t, Options{})
	lim := &Limits{Requests: Rate{Limit: 1 << 40, Period: time.Second}, TokensRate: Rate{Limit: 1 << 40, Period: time.Minute},
		TokensDay: AtMost(1 << 60), Concurrency: AtMost(1 << 20), GPUMillisMonth: AtMost(1 << 60), Models: []string{"m"}}
	r := Request{Chain: []Scope{{Key: "g", Limits: lim}, {Key: "t", Limits: lim}, {Key: "p"}, {Key: "u", Limits: lim}},
		Ask: Ask{Requests: 1, Tokens: 100, MinTokens: 10, GPUMillis: 5, Concurrency: true, Model: "m"}}
	pair := func() {
		tk, err := e.Acquire(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, Usage{InputTokens: 50}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2000 {
		pair()
	}
	if got := testing.AllocsPerRun(2000, pair); got > 0.05 {
		t.Errorf("allocations per acquire+settle: got %.3f, want at most 0.05", got)
	}
}

// TestExpiredTicketsAreForgotten: an expired ticket is remembered for a
// late settle for the settled retention, then forgotten; and at most
// MaxSettled are remembered.
func TestExpiredTicketsAreForgotten(t *testing.T) {
	ctx := context.Background()
	e, clk := newTestMemory(t, Options{SettledRetention: time.Hour, MaxSettled: 4})
	r := Request{Chain: chainOf("u"), Ask: Ask{Tokens: 10}, TTL: time.Minute, Meta: "m"}
	var ids []string
	for range 6 {
		tk, err := e.Acquire(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tk.ID)
	}
	clk.now = clk.now.Add(2 * time.Minute)
	// Two fell out of the bound of 4.
	var known []string
	for _, id := range ids {
		if info, err := e.Lookup(ctx, id); err == nil && info.Expired {
			known = append(known, id)
		} else if !errors.Is(err, ErrUnknownTicket) {
			t.Errorf("Lookup of an expired ticket: got %+v, %v, want expired or ErrUnknownTicket", info, err)
		}
	}
	if len(known) != 4 {
		t.Fatalf("expired tickets remembered: got %d, want 4", len(known))
	}
	if s, err := e.Settle(ctx, known[0], Usage{InputTokens: 3}); err != nil || !s.Late || s.Meta != "m" {
		t.Errorf("late settle: got %+v, %v, want late with meta", s, err)
	}
	clk.now = clk.now.Add(time.Hour)
	if _, err := e.Settle(ctx, known[1], Usage{}); !errors.Is(err, ErrUnknownTicket) {
		t.Errorf("settle after the retention: got %v, want ErrUnknownTicket", err)
	}
	e.mu.Lock()
	n := len(e.expired)
	e.mu.Unlock()
	if n != 0 {
		t.Errorf("expired tickets remembered after the retention: got %d, want 0", n)
	}
}
