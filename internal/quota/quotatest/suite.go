package quotatest

import (
	"errors"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the calendar tests must not depend on the host's zoneinfo

	"github.com/sluicehq/sluice/internal/quota"
)

// t0 is a Thursday mid-month, mid-morning UTC.
var t0 = time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC)

// Run runs the suite against backends made by newBackend, which must return
// a fresh, empty backend for each call and the Clock it reads (see Clock).
// The suite closes each backend when its test ends. It assumes the backend
// remembers settlements for at least an hour and a few thousand tickets,
// that its default ticket TTL is at least a minute, and that its maximum TTL
// is at least 15 minutes.
func Run(t *testing.T, newBackend func(t *testing.T) (quota.Backend, *Clock)) {
	f := Factory(newBackend)
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"AllOrNothing", testAllOrNothing},
		{"Denials", testDenials},
		{"CheckOrder", testCheckOrder},
		{"RetryAfterIsExact", testRetryAfterExact},
		{"Clamp", testClamp},
		{"Settle", testSettle},
		{"SettleTokensRate", testSettleTokensRate},
		{"SettleAcrossWindows", testSettleAcrossWindows},
		{"Expiry", testExpiry},
		{"Heartbeat", testHeartbeat},
		{"CalendarWindows", testCalendarWindows},
		{"Models", testModels},
		{"Caps", testCaps},
		{"Remaining", testRemaining},
		{"Restore", testRestore},
		{"LimitChange", testLimitChange},
		{"CountsWithoutLimits", testCountsWithoutLimits},
		{"Invalid", testInvalid},
		{"UniqueTicketIDs", testUniqueIDs},
		{"Meta", testMeta},
		{"UnguessableIDs", testUnguessableIDs},
		{"ConcurrentAcquire", testConcurrentAcquire},
		{"RateBound", testRateBound},
		{"Properties", testProperties},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, f) })
	}
}

func testAllOrNothing(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{
		sc("global", &quota.Limits{TokensDay: quota.AtMost(1000)}),
		sc("t/a", &quota.Limits{TokensDay: quota.AtMost(100), Requests: quota.Rate{Limit: 10, Period: time.Minute}}),
		sc("p/a1", &quota.Limits{Concurrency: quota.AtMost(1)}),
		sc("u/x", nil),
		sc("m/x@a1", &quota.Limits{GPUMillisMonth: quota.AtMost(50), TokensRate: quota.Rate{Limit: 90, Period: time.Minute}}),
	}
	e.acquire(req(quota.Ask{Requests: 1, Tokens: 80, GPUMillis: 10, Concurrency: true}, chain...))
	before := e.snapshot(keys(chain)...)
	for _, tc := range []struct {
		name      string
		ask       quota.Ask
		scope     string
		dimension quota.Dimension
	}{
		{"tokens at tenant", quota.Ask{Requests: 1, Tokens: 30}, "t/a", quota.DimTokens},
		{"concurrency at project", quota.Ask{Requests: 1, Tokens: 10, Concurrency: true}, "p/a1", quota.DimConcurrency},
		{"gpu at membership", quota.Ask{Requests: 1, Tokens: 10, GPUMillis: 50}, "m/x@a1", quota.DimGPUSeconds},
		{"tokens rate at membership", quota.Ask{Requests: 1, Tokens: 15, GPUMillis: 1}, "m/x@a1", quota.DimTokensRate},
	} {
		d := e.deny(req(tc.ask, chain...))
		if d.Scope != tc.scope || d.Dimension != tc.dimension {
			t.Errorf("%s: got %s/%s, want %s/%s", tc.name, d.Scope, d.Dimension, tc.scope, tc.dimension)
		}
		e.unchanged(tc.name, before)
	}
}

func testDenials(t *testing.T, f Factory) {
	nextDay := time.Date(2026, 1, 16, 0, 0, 0, 0, time.UTC)
	nextMonth := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		limits quota.Limits
		fill   []quota.Ask
		ask    quota.Ask
		want   quota.Denial
		hint   bool // concurrency: RetryAfter and ResetAt are hints
	}{
		{
			name:   "requests",
			limits: quota.Limits{Requests: quota.Rate{Limit: 10, Period: time.Minute}},
			fill:   []quota.Ask{{Requests: 10}},
			ask:    quota.Ask{Requests: 1},
			want: quota.Denial{Code: quota.CodeRateLimited, Dimension: quota.DimRequests, Limit: 10, Period: time.Minute,
				Used: 10, Requested: 1, RetryAfter: 6 * time.Second, ResetAt: t0.Add(time.Minute)},
		},
		{
			name:   "requests burst",
			limits: quota.Limits{Requests: quota.Rate{Limit: 10, Period: time.Minute, Burst: 2}},
			fill:   []quota.Ask{{Requests: 1}, {Requests: 1}},
			ask:    quota.Ask{Requests: 1},
			want: quota.Denial{Code: quota.CodeRateLimited, Dimension: quota.DimRequests, Limit: 10, Period: time.Minute,
				Used: 2, Requested: 1, RetryAfter: 6 * time.Second, ResetAt: t0.Add(12 * time.Second)},
		},
		{
			name:   "requests above burst never fit",
			limits: quota.Limits{Requests: quota.Rate{Limit: 10, Period: time.Minute, Burst: 2}},
			ask:    quota.Ask{Requests: 3},
			want: quota.Denial{Code: quota.CodeRateLimited, Dimension: quota.DimRequests, Limit: 10, Period: time.Minute,
				Used: 0, Requested: 3, RetryAfter: 0, ResetAt: t0},
		},
		{
			name:   "requests limit zero",
			limits: quota.Limits{Requests: quota.Rate{Limit: 0, Period: time.Minute}},
			ask:    quota.Ask{Requests: 1},
			want: quota.Denial{Code: quota.CodeRateLimited, Dimension: quota.DimRequests, Limit: 0, Period: time.Minute,
				Requested: 1},
		},
		{
			name:   "tokens rate",
			limits: quota.Limits{TokensRate: quota.Rate{Limit: 1000, Period: time.Minute}},
			fill:   []quota.Ask{{Tokens: 1000}},
			ask:    quota.Ask{Tokens: 100},
			want: quota.Denial{Code: quota.CodeRateLimited, Dimension: quota.DimTokensRate, Limit: 1000, Period: time.Minute,
				Used: 1000, Requested: 100, RetryAfter: 6 * time.Second, ResetAt: t0.Add(time.Minute)},
		},
		{
			name:   "tokens day",
			limits: quota.Limits{TokensDay: quota.AtMost(1000)},
			fill:   []quota.Ask{{Tokens: 900}},
			ask:    quota.Ask{Tokens: 200},
			want: quota.Denial{Code: quota.CodeQuotaExceeded, Dimension: quota.DimTokens, Window: quota.WindowDay,
				Limit: 1000, Used: 900, Requested: 200, RetryAfter: 14 * time.Hour, ResetAt: nextDay},
		},
		{
			name:   "tokens month",
			limits: quota.Limits{TokensMonth: quota.AtMost(1000)},
			fill:   []quota.Ask{{Tokens: 1000}},
			ask:    quota.Ask{Tokens: 1},
			want: quota.Denial{Code: quota.CodeQuotaExceeded, Dimension: quota.DimTokens, Window: quota.WindowMonth,
				Limit: 1000, Used: 1000, Requested: 1, RetryAfter: nextMonth.Sub(t0), ResetAt: nextMonth},
		},
		{
			name:   "tokens ask above budget never fits",
			limits: quota.Limits{TokensDay: quota.AtMost(1000)},
			ask:    quota.Ask{Tokens: 1001},
			want: quota.Denial{Code: quota.CodeQuotaExceeded, Dimension: quota.DimTokens, Window: quota.WindowDay,
				Limit: 1000, Used: 0, Requested: 1001, RetryAfter: 0, ResetAt: nextDay},
		},
		{
			name:   "gpu",
			limits: quota.Limits{GPUMillisMonth: quota.AtMost(1000)},
			fill:   []quota.Ask{{GPUMillis: 600}},
			ask:    quota.Ask{GPUMillis: 500},
			want: quota.Denial{Code: quota.CodeQuotaExceeded, Dimension: quota.DimGPUSeconds, Window: quota.WindowMonth,
				Limit: 1000, Used: 600, Requested: 500, RetryAfter: nextMonth.Sub(t0), ResetAt: nextMonth},
		},
		{
			name:   "gpu free plan",
			limits: quota.Limits{GPUMillisMonth: quota.AtMost(0)},
			ask:    quota.Ask{GPUMillis: 1},
			want: quota.Denial{Code: quota.CodeQuotaExceeded, Dimension: quota.DimGPUSeconds, Window: quota.WindowMonth,
				Limit: 0, Used: 0, Requested: 1, RetryAfter: 0, ResetAt: nextMonth},
		},
		{
			name:   "cost",
			limits: quota.Limits{CostMicrosMonth: quota.AtMost(1_000_000)},
			fill:   []quota.Ask{{CostMicros: 999_999}},
			ask:    quota.Ask{CostMicros: 2},
			want: quota.Denial{Code: quota.CodeQuotaExceeded, Dimension: quota.DimCost, Window: quota.WindowMonth,
				Limit: 1_000_000, Used: 999_999, Requested: 2, RetryAfter: nextMonth.Sub(t0), ResetAt: nextMonth},
		},
		{
			name:   "concurrency",
			limits: quota.Limits{Concurrency: quota.AtMost(2)},
			fill:   []quota.Ask{{Concurrency: true}, {Concurrency: true}, {Tokens: 5}},
			ask:    quota.Ask{Concurrency: true},
			want: quota.Denial{Code: quota.CodeRateLimited, Dimension: quota.DimConcurrency, Limit: 2, Used: 2,
				Requested: 1},
			hint: true,
		},
		{
			name:   "concurrency zero",
			limits: quota.Limits{Concurrency: quota.AtMost(0)},
			ask:    quota.Ask{Concurrency: true},
			want: quota.Denial{Code: quota.CodeRateLimited, Dimension: quota.DimConcurrency, Limit: 0, Used: 0,
				Requested: 1},
		},
		{
			name:   "model",
			limits: quota.Limits{Models: []string{"a", "b"}},
			ask:    quota.Ask{Model: "c"},
			want:   quota.Denial{Code: quota.CodeModelNotAllowed, Dimension: quota.DimModel, Model: "c"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, f, t0)
			chain := []quota.Scope{sc("global", nil), sc("t/a", &tt.limits), sc("u/x", &quota.Limits{})}
			for _, a := range tt.fill {
				e.acquire(req(a, chain...))
			}
			before := e.snapshot(keys(chain)...)
			d := e.deny(req(tt.ask, chain...))
			want := tt.want
			want.Scope = "t/a"
			checkDenial(t, d, want, tt.hint, e.now())
			e.unchanged("denial", before)
		})
	}
}

// testCheckOrder: the first failing check is reported, scopes outermost
// first, then dimensions in their documented order.
func testCheckOrder(t *testing.T, f Factory) {
	e := start(t, f, t0)
	full := &quota.Limits{TokensDay: quota.AtMost(0), GPUMillisMonth: quota.AtMost(0), Concurrency: quota.AtMost(0),
		Requests: quota.Rate{Limit: 0, Period: time.Second}, Models: []string{"m"}}
	ask := quota.Ask{Requests: 1, Tokens: 1, GPUMillis: 1, Concurrency: true, Model: "x"}
	tests := []struct {
		name  string
		chain []quota.Scope
		ask   quota.Ask
		scope string
		dim   quota.Dimension
	}{
		{"outer scope first", []quota.Scope{sc("g", nil), sc("a", &quota.Limits{GPUMillisMonth: quota.AtMost(0)}), sc("b", full)}, ask, "a", quota.DimGPUSeconds},
		{"model first", []quota.Scope{sc("a", full)}, ask, "a", quota.DimModel},
		{"then requests", []quota.Scope{sc("a", full)}, quota.Ask{Requests: 1, Tokens: 1, GPUMillis: 1, Concurrency: true, Model: "m"}, "a", quota.DimRequests},
		{"then tokens", []quota.Scope{sc("a", full)}, quota.Ask{Tokens: 1, GPUMillis: 1, Concurrency: true}, "a", quota.DimTokens},
		{"then gpu", []quota.Scope{sc("a", full)}, quota.Ask{GPUMillis: 1, Concurrency: true}, "a", quota.DimGPUSeconds},
		{"then concurrency", []quota.Scope{sc("a", full)}, quota.Ask{Concurrency: true}, "a", quota.DimConcurrency},
	}
	for _, tt := range tests {
		d := e.deny(req(tt.ask, tt.chain...))
		if d.Scope != tt.scope || d.Dimension != tt.dim {
			t.Errorf("%s: got %s/%s, want %s/%s", tt.name, d.Scope, d.Dimension, tt.scope, tt.dim)
		}
	}
}

func testRetryAfterExact(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("u/x", &quota.Limits{Requests: quota.Rate{Limit: 10, Period: time.Minute}})}
	one := req(quota.Ask{Requests: 1}, chain...)
	for range 10 {
		e.acquire(one)
	}
	d := e.deny(one)
	if d.RetryAfter != 6*time.Second {
		t.Fatalf("RetryAfter: got %v, want 6s", d.RetryAfter)
	}
	e.advance(d.RetryAfter - time.Millisecond)
	if d := e.deny(one); d.RetryAfter != time.Millisecond {
		t.Errorf("RetryAfter 1ms early: got %v, want 1ms", d.RetryAfter)
	}
	e.advance(time.Millisecond)
	e.acquire(one)
	if d := e.deny(one); d.RetryAfter != 6*time.Second {
		t.Errorf("RetryAfter after one more: got %v, want 6s", d.RetryAfter)
	}
	// A drained bucket admits the full burst again, not more.
	e.advance(time.Minute)
	e.acquire(req(quota.Ask{Requests: 10}, chain...))
	e.deny(one)
}

func testClamp(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{
		sc("global", &quota.Limits{TokensDay: quota.AtMost(10_000)}),
		sc("t/a", &quota.Limits{TokensDay: quota.AtMost(1000)}),
		sc("u/x", &quota.Limits{TokensMonth: quota.AtMost(700)}),
	}
	e.acquire(req(quota.Ask{Tokens: 400}, chain...))

	tk := e.acquire(req(quota.Ask{Tokens: 1000, MinTokens: 200}, chain...))
	if tk.Tokens != 300 || !tk.Clamped {
		t.Errorf("clamped ticket: got Tokens %d Clamped %v, want 300 true", tk.Tokens, tk.Clamped)
	}
	e.wantUsed("u/x", used{TokensDay: 700, TokensMonth: 700})
	e.wantUsed("global", used{TokensDay: 700, TokensMonth: 700})

	d := e.deny(req(quota.Ask{Tokens: 1000, MinTokens: 1}, chain...))
	if d.Scope != "u/x" || d.Requested != 1 || d.Window != quota.WindowMonth {
		t.Errorf("minimum does not fit: got %s %s/%s requested %d, want u/x tokens/month requested 1", d.Scope, d.Dimension, d.Window, d.Requested)
	}
	d = e.deny(req(quota.Ask{Tokens: 1000}, chain...))
	if d.Scope != "t/a" || d.Requested != 1000 {
		t.Errorf("no minimum: got %s requested %d, want t/a requested 1000", d.Scope, d.Requested)
	}

	// The rate limit clamps too, and an ask that fits is not clamped.
	rated := []quota.Scope{sc("u/y", &quota.Limits{TokensRate: quota.Rate{Limit: 1000, Period: time.Minute}})}
	e.acquire(req(quota.Ask{Tokens: 800}, rated...))
	tk = e.acquire(req(quota.Ask{Tokens: 1000, MinTokens: 100}, rated...))
	if tk.Tokens != 200 || !tk.Clamped {
		t.Errorf("rate clamp: got Tokens %d Clamped %v, want 200 true", tk.Tokens, tk.Clamped)
	}
	e.advance(time.Minute)
	tk = e.acquire(req(quota.Ask{Tokens: 100, MinTokens: 50}, rated...))
	if tk.Tokens != 100 || tk.Clamped {
		t.Errorf("fitting ask: got Tokens %d Clamped %v, want 100 false", tk.Tokens, tk.Clamped)
	}
}

func testSettle(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("global", nil), sc("t/a", &quota.Limits{Concurrency: quota.AtMost(1)}), sc("u/x", nil)}
	tk := e.acquire(req(quota.Ask{Tokens: 1000, GPUMillis: 500, CostMicros: 300, Concurrency: true}, chain...))
	e.wantUsed("t/a", used{1000, 1000, 500, 300, 1})

	s := e.settle(tk.ID, quota.Usage{InputTokens: 300, OutputTokens: 200, GPUMillis: 100, CostMicros: 50})
	want := quota.Settlement{TicketID: tk.ID, Usage: quota.Usage{InputTokens: 300, OutputTokens: 200, GPUMillis: 100, CostMicros: 50},
		ReservedTokens: 1000, ReservedGPUMillis: 500, ReservedCostMicros: 300, SettledAt: t0}
	if !sameSettlement(s, want) {
		t.Errorf("settlement: got %+v, want %+v", s, want)
	}
	for _, k := range keys(chain) {
		e.wantUsed(k, used{500, 500, 100, 50, 0})
	}

	// A replay, even with other numbers, returns the first settlement and
	// changes nothing.
	e.advance(time.Minute)
	before := e.snapshot(keys(chain)...)
	again := e.settle(tk.ID, quota.Usage{InputTokens: 9999})
	if !sameSettlement(again, s) || !again.Replay || s.Replay {
		t.Errorf("replayed settlement: got %+v, want %+v with Replay set (and not on the first)", again, s)
	}
	e.unchanged("settle replay", before)

	// The slot is free again; an overrun is charged in full.
	tk = e.acquire(req(quota.Ask{Tokens: 100, Concurrency: true}, chain...))
	s = e.settle(tk.ID, quota.Usage{InputTokens: 100, OutputTokens: 50, GPUMillis: 7})
	if !s.Overrun {
		t.Errorf("overrun settlement: got Overrun false, want true")
	}
	e.wantUsed("t/a", used{650, 650, 107, 50, 0})

	if _, err := e.b.Settle(e.ctx, "no-such-ticket", quota.Usage{}); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("unknown ticket: got %v, want ErrUnknownTicket", err)
	}
}

func testSettleTokensRate(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("u/x", &quota.Limits{TokensRate: quota.Rate{Limit: 1000, Period: time.Minute}})}
	tk := e.acquire(req(quota.Ask{Tokens: 1000}, chain...))
	e.deny(req(quota.Ask{Tokens: 1}, chain...))
	e.settle(tk.ID, quota.Usage{InputTokens: 300, OutputTokens: 100})
	if got := e.use("u/x").TokensRate.Level; got != 400 {
		t.Errorf("tokens rate level after refund: got %d, want 400", got)
	}
	e.acquire(req(quota.Ask{Tokens: 600}, chain...))
	e.deny(req(quota.Ask{Tokens: 1}, chain...))

	// An overrun pushes the bucket past its capacity: the next ask waits.
	e.advance(time.Minute)
	tk = e.acquire(req(quota.Ask{Tokens: 500}, chain...))
	e.settle(tk.ID, quota.Usage{OutputTokens: 1500})
	d := e.deny(req(quota.Ask{Tokens: 100}, chain...))
	if d.RetryAfter != 36*time.Second { // level 1500, capacity 1000: (500+100)·60ms
		t.Errorf("wait after overrun: got %v, want 36s", d.RetryAfter)
	}
}

func testSettleAcrossWindows(t *testing.T, f Factory) {
	limits := &quota.Limits{TokensDay: quota.AtMost(50_000), TokensMonth: quota.AtMost(100_000), GPUMillisMonth: quota.AtMost(100_000)}
	t.Run("day", func(t *testing.T) {
		e := start(t, f, time.Date(2026, 1, 14, 23, 58, 0, 0, time.UTC))
		chain := []quota.Scope{sc("t/a", limits)}
		tk := e.acquire(req(quota.Ask{Tokens: 2000}, chain...))
		e.settle(tk.ID, quota.Usage{InputTokens: 2000})
		e.advance(time.Minute)
		tk = e.acquire(req(quota.Ask{Tokens: 1000, GPUMillis: 100}, chain...))
		e.wantUsed("t/a", used{3000, 3000, 100, 0, 0})
		e.advance(2 * time.Minute) // 00:01 on the 15th
		e.wantUsed("t/a", used{0, 3000, 100, 0, 0})
		e.settle(tk.ID, quota.Usage{InputTokens: 600, GPUMillis: 50})
		e.wantUsed("t/a", used{600, 2600, 50, 0, 0})
	})
	t.Run("month", func(t *testing.T) {
		e := start(t, f, time.Date(2026, 1, 31, 23, 59, 0, 0, time.UTC))
		chain := []quota.Scope{sc("t/a", limits)}
		tk := e.acquire(req(quota.Ask{Tokens: 1000, GPUMillis: 100}, chain...))
		e.advance(2 * time.Minute)
		e.wantUsed("t/a", used{})
		e.settle(tk.ID, quota.Usage{OutputTokens: 600, GPUMillis: 50})
		e.wantUsed("t/a", used{600, 600, 50, 0, 0})
	})
}

func testExpiry(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("global", nil), sc("t/a", &quota.Limits{Concurrency: quota.AtMost(1), TokensDay: quota.AtMost(1000),
		TokensRate: quota.Rate{Limit: 2000, Period: time.Hour}})}
	r := req(quota.Ask{Tokens: 800, GPUMillis: 5, Concurrency: true}, chain...)
	r.TTL = time.Minute
	tk := e.acquire(r)
	if want := t0.Add(time.Minute); !tk.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt: got %v, want %v", tk.ExpiresAt, want)
	}
	e.deny(r)
	e.advance(59 * time.Second)
	e.deny(r)
	e.advance(time.Second)
	for _, k := range keys(chain) {
		e.wantUsed(k, used{})
	}
	// Expiry does not refund tokens_rate: 800 tokens at 1.8 s each, less
	// the minute drained, leave 1380 s, or 767 tokens rounded up.
	if got := e.use("t/a").TokensRate.Level; got != 767 {
		t.Errorf("tokens rate level after expiry: got %d, want 767", got)
	}
	if _, err := e.b.Heartbeat(e.ctx, tk.ID, time.Minute); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("heartbeat expired: got %v, want ErrUnknownTicket", err)
	}
	if info, err := e.b.Lookup(e.ctx, tk.ID); err != nil || !info.Expired || info.Settled || info.Tokens != 800 ||
		!info.ExpiresAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("Lookup expired: got %+v, %v, want Expired with 800 tokens, expired at %v", info, err, t0.Add(time.Minute))
	}

	// A settle after expiry is late: the reservation was refunded, so the
	// use is charged to the current windows as it is, and no slot is held.
	e.advance(10 * time.Second)
	late := quota.Usage{InputTokens: 60, OutputTokens: 40, GPUMillis: 3}
	s := e.settle(tk.ID, late)
	want := quota.Settlement{TicketID: tk.ID, Usage: late, ReservedTokens: 800, ReservedGPUMillis: 5, SettledAt: e.now(), Late: true}
	if !sameSettlement(s, want) {
		t.Errorf("late settlement: got %+v, want %+v", s, want)
	}
	for _, k := range keys(chain) {
		e.wantUsed(k, used{100, 100, 3, 0, 0})
	}
	if got := e.use("t/a").TokensRate.Level; got != 762 { // 1370 s at 1.8 s a token, rounded up: a late settle leaves it
		t.Errorf("tokens rate level after late settle: got %d, want 762", got)
	}
	before := e.snapshot(keys(chain)...)
	if again := e.settle(tk.ID, quota.Usage{InputTokens: 5000}); !sameSettlement(again, s) || !again.Replay || s.Replay {
		t.Errorf("replayed late settlement: got %+v, want %+v", again, s)
	}
	e.unchanged("late settle replay", before)
	if _, err := e.b.Heartbeat(e.ctx, tk.ID, time.Minute); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("heartbeat settled late: got %v, want ErrUnknownTicket", err)
	}
	e.acquire(r)

	// The default TTL applies when the request names none.
	e.advance(time.Minute)
	tk = e.acquire(req(quota.Ask{Concurrency: true}, chain...))
	if !tk.ExpiresAt.After(e.now()) {
		t.Errorf("default ExpiresAt: got %v, want after %v", tk.ExpiresAt, e.now())
	}
}

func testHeartbeat(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("t/a", &quota.Limits{Concurrency: quota.AtMost(1)})}
	r := req(quota.Ask{Concurrency: true, Tokens: 10}, chain...)
	r.TTL = time.Minute
	tk := e.acquire(r)
	e.advance(50 * time.Second)
	exp, err := e.b.Heartbeat(e.ctx, tk.ID, time.Minute)
	if err != nil {
		t.Fatalf("Heartbeat: got %v, want nil", err)
	}
	if want := e.now().Add(time.Minute); !exp.Equal(want) {
		t.Errorf("Heartbeat expiry: got %v, want %v", exp, want)
	}
	e.advance(50 * time.Second)
	e.wantUsed("t/a", used{10, 10, 0, 0, 1})
	e.deny(r)
	e.advance(10 * time.Second)
	e.wantUsed("t/a", used{})

	tk = e.acquire(r)
	e.advance(30 * time.Second)
	if _, err := e.b.Heartbeat(e.ctx, tk.ID, time.Minute); err != nil {
		t.Fatalf("Heartbeat: got %v, want nil", err)
	}
	e.advance(50 * time.Second)
	e.settle(tk.ID, quota.Usage{InputTokens: 4})
	e.wantUsed("t/a", used{4, 4, 0, 0, 0})
	if _, err := e.b.Heartbeat(e.ctx, tk.ID, time.Minute); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("heartbeat settled: got %v, want ErrUnknownTicket", err)
	}
}

func testCalendarWindows(t *testing.T, f Factory) {
	shanghai := mustLoad(t, "Asia/Shanghai")
	newYork := mustLoad(t, "America/New_York")
	day := &quota.Limits{TokensDay: quota.AtMost(100)}
	month := &quota.Limits{TokensMonth: quota.AtMost(100)}
	tests := []struct {
		name   string
		loc    *time.Location
		limits *quota.Limits
		at     time.Time // when the budget is filled
		reset  time.Time // the window's end
		start  time.Time // the window's start
	}{
		{"Shanghai day", shanghai, day, time.Date(2026, 1, 15, 23, 59, 59, 0, shanghai),
			time.Date(2026, 1, 16, 0, 0, 0, 0, shanghai), time.Date(2026, 1, 15, 0, 0, 0, 0, shanghai)},
		{"Shanghai month", shanghai, month, time.Date(2026, 1, 31, 23, 59, 59, 0, shanghai),
			time.Date(2026, 2, 1, 0, 0, 0, 0, shanghai), time.Date(2026, 1, 1, 0, 0, 0, 0, shanghai)},
		{"UTC month in February", time.UTC, month, time.Date(2028, 2, 28, 12, 0, 0, 0, time.UTC),
			time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2028, 2, 1, 0, 0, 0, 0, time.UTC)},
		{"New York spring forward (23h day)", newYork, day, time.Date(2026, 3, 8, 0, 30, 0, 0, newYork),
			time.Date(2026, 3, 9, 4, 0, 0, 0, time.UTC), time.Date(2026, 3, 8, 5, 0, 0, 0, time.UTC)},
		{"New York fall back (25h day)", newYork, day, time.Date(2026, 11, 1, 0, 30, 0, 0, newYork),
			time.Date(2026, 11, 2, 5, 0, 0, 0, time.UTC), time.Date(2026, 11, 1, 4, 0, 0, 0, time.UTC)},
		{"New York month across DST", newYork, month, time.Date(2026, 3, 20, 0, 0, 0, 0, newYork),
			time.Date(2026, 4, 1, 4, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 5, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, f, tt.at)
			chain := []quota.Scope{scIn("t/a", tt.loc, tt.limits)}
			one := req(quota.Ask{Tokens: 1}, chain...)
			tk := e.acquire(req(quota.Ask{Tokens: 100}, chain...))
			e.settle(tk.ID, quota.Usage{InputTokens: 100})
			d := e.deny(one)
			if !d.ResetAt.Equal(tt.reset) {
				t.Errorf("ResetAt: got %v, want %v", d.ResetAt, tt.reset)
			}
			if want := tt.reset.Sub(tt.at); d.RetryAfter != want {
				t.Errorf("RetryAfter: got %v, want %v", d.RetryAfter, want)
			}
			w := e.use("t/a").TokensDay
			if tt.limits == month {
				w = e.use("t/a").TokensMonth
			}
			if !w.Start.Equal(tt.start) || !w.End.Equal(tt.reset) {
				t.Errorf("window: got [%v, %v), want [%v, %v)", w.Start, w.End, tt.start, tt.reset)
			}
			e.clk.Set(tt.reset.Add(-time.Second))
			e.deny(one)
			e.clk.Set(tt.reset)
			e.acquire(req(quota.Ask{Tokens: 100}, chain...))
		})
	}
	t.Run("zones in one chain", func(t *testing.T) {
		// 23:59:59 in Shanghai is 15:59:59 UTC: only the Shanghai scope's
		// day ends at the next second.
		e := start(t, f, time.Date(2026, 1, 15, 15, 59, 59, 0, time.UTC))
		chain := []quota.Scope{scIn("global", nil, &quota.Limits{TokensDay: quota.AtMost(1000)}), scIn("t/sh", shanghai, day)}
		e.acquire(req(quota.Ask{Tokens: 100}, chain...))
		e.advance(time.Second)
		e.wantUsed("global", used{100, 100, 0, 0, 0})
		e.wantUsed("t/sh", used{0, 100, 0, 0, 0})
		e.acquire(req(quota.Ask{Tokens: 100}, chain...))
	})
}

func testModels(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{
		sc("global", &quota.Limits{Models: []string{"a", "b"}}),
		sc("t/a", nil),
		sc("p/a", &quota.Limits{Models: []string{"b", "c"}}),
		sc("u/x", &quota.Limits{}),
	}
	tests := []struct {
		model string
		scope string // "" when allowed
	}{
		{"b", ""},
		{"", ""},
		{"a", "p/a"},
		{"c", "global"},
		{"d", "global"},
	}
	for _, tt := range tests {
		_, err := e.b.Acquire(e.ctx, req(quota.Ask{Requests: 1, Model: tt.model}, chain...))
		if tt.scope == "" {
			if err != nil {
				t.Errorf("model %q: got %v, want admission", tt.model, err)
			}
			continue
		}
		var d *quota.Denial
		if !errors.As(err, &d) || d.Code != quota.CodeModelNotAllowed || d.Scope != tt.scope || d.Model != tt.model {
			t.Errorf("model %q: got %v, want model_not_allowed at %s", tt.model, err, tt.scope)
		}
	}
}

func testCaps(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{
		sc("global", &quota.Limits{Caps: quota.Caps{MemoryPerRun: 1 << 30, RunTimeout: 10 * time.Minute}}),
		sc("t/a", nil),
		sc("p/a", &quota.Limits{Caps: quota.Caps{MemoryPerRun: 512 << 20, MaxSteps: 50}}),
		sc("u/x", &quota.Limits{Caps: quota.Caps{RunTimeout: 5 * time.Minute, MaxTokensPerCall: 4096}}),
		sc("m/x@a", &quota.Limits{Caps: quota.Caps{MaxSteps: 80, MaxTokensPerCall: 8192}}),
	}
	tk := e.acquire(req(quota.Ask{Requests: 1}, chain...))
	want := quota.Caps{MemoryPerRun: 512 << 20, RunTimeout: 5 * time.Minute, MaxSteps: 50, MaxTokensPerCall: 4096}
	if tk.Caps != want {
		t.Errorf("caps: got %+v, want %+v", tk.Caps, want)
	}
	tk = e.acquire(req(quota.Ask{Requests: 1}, sc("x", nil)))
	if tk.Caps != (quota.Caps{}) {
		t.Errorf("caps without limits: got %+v, want none", tk.Caps)
	}
}

func testRemaining(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{
		sc("global", &quota.Limits{TokensDay: quota.AtMost(10_000), Requests: quota.Rate{Limit: 100, Period: time.Minute}}),
		sc("t/a", &quota.Limits{TokensDay: quota.AtMost(500), Concurrency: quota.AtMost(3)}),
		sc("u/x", &quota.Limits{TokensMonth: quota.AtMost(800), TokensDay: quota.AtMost(500), Requests: quota.Rate{Limit: 10, Period: time.Minute}}),
	}
	tk := e.acquire(req(quota.Ask{Requests: 1, Tokens: 100, Concurrency: true}, chain...))
	tests := []struct {
		d    quota.Dimension
		w    quota.Window
		want quota.Remaining
	}{
		{quota.DimRequests, quota.WindowNone, quota.Remaining{Scope: "u/x", Limit: 10, Period: time.Minute, Remaining: 9, ResetAt: t0.Add(6 * time.Second)}},
		{quota.DimTokens, quota.WindowDay, quota.Remaining{Scope: "t/a", Limit: 500, Remaining: 400, ResetAt: time.Date(2026, 1, 16, 0, 0, 0, 0, time.UTC)}},
		{quota.DimTokens, quota.WindowMonth, quota.Remaining{Scope: "u/x", Limit: 800, Remaining: 700, ResetAt: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)}},
		{quota.DimConcurrency, quota.WindowNone, quota.Remaining{Scope: "t/a", Limit: 3, Remaining: 2}},
		{quota.DimGPUSeconds, quota.WindowMonth, quota.Remaining{}},
		{quota.DimTokensRate, quota.WindowNone, quota.Remaining{}},
	}
	for _, tt := range tests {
		got := tk.Tightest(tt.d, tt.w)
		want := tt.want
		want.Dimension, want.Window = tt.d, tt.w
		if got.Scope != want.Scope || got.Limit != want.Limit || got.Period != want.Period ||
			got.Remaining != want.Remaining || !got.ResetAt.Equal(want.ResetAt) || got.Dimension != want.Dimension || got.Window != want.Window {
			t.Errorf("Tightest(%s, %s): got %+v, want %+v", tt.d, tt.w, got, want)
		}
	}
}

func testRestore(t *testing.T, f Factory) {
	shanghai := mustLoad(t, "Asia/Shanghai")
	e := start(t, f, t0)
	ctx := e.ctx
	today := time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)
	jan := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	restore := func(key string, d quota.Dimension, w quota.Window, start time.Time, n int64) {
		t.Helper()
		if err := e.b.Restore(ctx, key, d, w, start, n); err != nil {
			t.Fatalf("Restore(%s, %s/%s, %v, %d): got %v, want nil", key, d, w, start, n, err)
		}
	}
	limits := &quota.Limits{TokensDay: quota.AtMost(1000), TokensMonth: quota.AtMost(5000), GPUMillisMonth: quota.AtMost(6000), CostMicrosMonth: quota.AtMost(100)}

	restore("t/a", quota.DimTokens, quota.WindowDay, today, 900)
	restore("t/a", quota.DimTokens, quota.WindowMonth, jan, 4000)
	restore("t/a", quota.DimGPUSeconds, quota.WindowMonth, jan, 5000)
	restore("t/a", quota.DimCost, quota.WindowMonth, jan, 60)
	e.wantUsed("t/a", used{900, 4000, 5000, 60, 0})
	chain := []quota.Scope{sc("t/a", limits)}
	if d := e.deny(req(quota.Ask{Tokens: 200}, chain...)); d.Used != 900 {
		t.Errorf("denial after restore: got used %d, want 900", d.Used)
	}
	e.deny(req(quota.Ask{GPUMillis: 1001}, chain...))
	e.deny(req(quota.Ask{CostMicros: 41}, chain...))
	e.acquire(req(quota.Ask{Tokens: 100, GPUMillis: 1000, CostMicros: 40}, chain...))
	e.wantUsed("t/a", used{1000, 4100, 6000, 100, 0})

	// Restoring a scope already in use sets its counter.
	restore("t/a", quota.DimTokens, quota.WindowDay, today, 300)
	e.wantUsed("t/a", used{300, 4100, 6000, 100, 0})

	// Past windows are ignored, whether or not the scope is known.
	restore("t/a", quota.DimTokens, quota.WindowDay, today.AddDate(0, 0, -1), 999)
	restore("t/b", quota.DimTokens, quota.WindowDay, today.AddDate(0, 0, -1), 999)
	restore("t/b", quota.DimTokens, quota.WindowMonth, jan.AddDate(0, -1, 0), 999)
	e.acquire(req(quota.Ask{Tokens: 1000}, sc("t/b", limits)))
	e.wantUsed("t/b", used{1000, 1000, 0, 0, 0})

	// A window restored in a scope's own zone counts once the scope is
	// seen with that zone.
	shToday := time.Date(2026, 1, 15, 0, 0, 0, 0, shanghai) // 18:00 there at t0
	restore("t/sh", quota.DimTokens, quota.WindowDay, shToday, 700)
	e.deny(req(quota.Ask{Tokens: 301}, scIn("t/sh", shanghai, limits)))
	e.acquire(req(quota.Ask{Tokens: 300}, scIn("t/sh", shanghai, limits)))

	if err := e.b.Restore(ctx, "t/a", quota.DimRequests, quota.WindowNone, today, 1); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("restore a rate: got %v, want ErrInvalid", err)
	}
}

func testLimitChange(t *testing.T, f Factory) {
	e := start(t, f, t0)
	at := func(l quota.Limits) []quota.Scope { return []quota.Scope{sc("t/a", &l)} }
	e.acquire(req(quota.Ask{Tokens: 600}, at(quota.Limits{TokensDay: quota.AtMost(1000)})...))
	e.deny(req(quota.Ask{Tokens: 1}, at(quota.Limits{TokensDay: quota.AtMost(500)})...))
	e.acquire(req(quota.Ask{Tokens: 1000}, at(quota.Limits{TokensDay: quota.AtMost(2000)})...))
	e.acquire(req(quota.Ask{Tokens: 1}, at(quota.Limits{})...))

	e.acquire(req(quota.Ask{Requests: 1}, at(quota.Limits{Requests: quota.Rate{Limit: 1, Period: time.Minute}})...))
	e.deny(req(quota.Ask{Requests: 1}, at(quota.Limits{Requests: quota.Rate{Limit: 1, Period: time.Minute}})...))
	e.acquire(req(quota.Ask{Requests: 1}, at(quota.Limits{Requests: quota.Rate{Limit: 100, Period: time.Minute}})...))
}

func testCountsWithoutLimits(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("global", nil), sc("t/a", &quota.Limits{}), sc("u/x", nil)}
	tk := e.acquire(req(quota.Ask{Requests: 1, Tokens: 10, GPUMillis: 20, CostMicros: 30, Concurrency: true}, chain...))
	for _, k := range keys(chain) {
		e.wantUsed(k, used{10, 10, 20, 30, 1})
	}
	e.settle(tk.ID, quota.Usage{InputTokens: 4, OutputTokens: 4, GPUMillis: 20, CostMicros: 1})
	for _, k := range keys(chain) {
		e.wantUsed(k, used{8, 8, 20, 1, 0})
	}
	if u := e.use("never/seen"); usedOf(u) != (used{}) {
		t.Errorf("unknown scope: got %+v, want zero use", u)
	}
}

func testInvalid(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("t/a", nil), sc("u/x", nil)}
	tests := []struct {
		name string
		r    quota.Request
	}{
		{"negative tokens", req(quota.Ask{Tokens: -1}, chain...)},
		{"negative requests", req(quota.Ask{Requests: -1}, chain...)},
		{"negative gpu", req(quota.Ask{GPUMillis: -1}, chain...)},
		{"negative cost", req(quota.Ask{CostMicros: -1}, chain...)},
		{"empty chain", req(quota.Ask{Requests: 1})},
		{"scope twice", req(quota.Ask{Tokens: 1}, sc("t/a", nil), sc("u/x", nil), sc("t/a", nil))},
	}
	for _, tt := range tests {
		if _, err := e.b.Acquire(e.ctx, tt.r); !errors.Is(err, quota.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", tt.name, err)
		}
	}
	e.wantUsed("t/a", used{})
	tk := e.acquire(req(quota.Ask{Tokens: 5}, chain...))
	if _, err := e.b.Settle(e.ctx, tk.ID, quota.Usage{InputTokens: -1}); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("negative usage: got %v, want ErrInvalid", err)
	}
	e.settle(tk.ID, quota.Usage{InputTokens: 5})
}

// testMeta: a request's meta is stored with its ticket and comes back from
// Lookup, from Settle and from a replayed Settle.
func testMeta(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("global", nil), sc("t/a", nil)}
	meta := `{"who":"alice","note":"line\nbreak"}` + "\x00\n raw bytes \xff"
	r := req(quota.Ask{Tokens: 100, GPUMillis: 20, CostMicros: 30, Concurrency: true}, chain...)
	r.Meta, r.TTL = meta, time.Minute
	tk := e.acquire(r)
	info, err := e.b.Lookup(e.ctx, tk.ID)
	want := quota.TicketInfo{ID: tk.ID, Meta: meta, ExpiresAt: t0.Add(time.Minute), Tokens: 100, GPUMillis: 20, CostMicros: 30}
	if err != nil || !sameInfo(info, want) {
		t.Errorf("Lookup live: got %+v, %v, want %+v", info, err, want)
	}
	s := e.settle(tk.ID, quota.Usage{InputTokens: 10})
	if s.Meta != meta || s.Late {
		t.Errorf("settlement meta: got %q late %v, want %q and not late", s.Meta, s.Late, meta)
	}
	info, err = e.b.Lookup(e.ctx, tk.ID)
	want = quota.TicketInfo{ID: tk.ID, Meta: meta, Tokens: 100, GPUMillis: 20, CostMicros: 30, Settled: true}
	if err != nil || !sameInfo(info, want) {
		t.Errorf("Lookup settled: got %+v, %v, want %+v", info, err, want)
	}
	e.advance(time.Minute)
	if again := e.settle(tk.ID, quota.Usage{}); again.Meta != meta || !sameSettlement(again, s) {
		t.Errorf("replayed settlement: got %+v, want %+v", again, s)
	}

	// Meta is bounded.
	r.Meta = strings.Repeat("m", quota.MaxMetaBytes)
	tk = e.acquire(r)
	if s := e.settle(tk.ID, quota.Usage{}); s.Meta != r.Meta {
		t.Errorf("meta of MaxMetaBytes: got %d bytes back, want %d", len(s.Meta), len(r.Meta))
	}
	r.Meta += "m"
	if _, err := e.b.Acquire(e.ctx, r); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("meta above MaxMetaBytes: got %v, want ErrInvalid", err)
	}
	e.wantUsed("t/a", used{10, 10, 0, 0, 0})
	if _, err := e.b.Lookup(e.ctx, "no-such-ticket"); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("Lookup unknown: got %v, want ErrUnknownTicket", err)
	}
}

func sameInfo(a, b quota.TicketInfo) bool {
	at, bt := a.ExpiresAt, b.ExpiresAt
	a.ExpiresAt, b.ExpiresAt = time.Time{}, time.Time{}
	return a == b && at.Equal(bt)
}

// testUnguessableIDs: ticket IDs are "tkt_" and at least 128 random bits,
// so an ID next to a real one names nothing.
func testUnguessableIDs(t *testing.T, f Factory) {
	e := start(t, f, t0)
	chain := []quota.Scope{sc("t/a", &quota.Limits{Concurrency: quota.AtMost(5)})}
	r := req(quota.Ask{Tokens: 10, Concurrency: true}, chain...)
	a, b := e.acquire(r), e.acquire(r)
	for _, tk := range []quota.Ticket{a, b} {
		id := strings.TrimPrefix(tk.ID, "~") // a failover's local tickets are marked
		if !strings.HasPrefix(id, "tkt_") || len(id) < 4+26 {
			t.Fatalf("ticket ID %q: want tkt_ and at least 26 base32 digits (128 bits)", tk.ID)
		}
	}
	if common := commonPrefix(a.ID, b.ID); common > len(a.ID)/2 {
		t.Errorf("IDs %q and %q share %d leading bytes: the random part does not lead", a.ID, b.ID, common)
	}
	// Change one character of the random part: the ID must name nothing.
	i := len(a.ID) - 16
	forged := a.ID[:i] + string(a.ID[i]^1) + a.ID[i+1:]
	if _, err := e.b.Lookup(e.ctx, forged); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("Lookup forged %q: got %v, want ErrUnknownTicket", forged, err)
	}
	if _, err := e.b.Heartbeat(e.ctx, forged, time.Minute); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("Heartbeat forged: got %v, want ErrUnknownTicket", err)
	}
	if _, err := e.b.Settle(e.ctx, forged, quota.Usage{}); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("Settle forged: got %v, want ErrUnknownTicket", err)
	}
	e.wantUsed("t/a", used{20, 20, 0, 0, 2})
	e.settle(a.ID, quota.Usage{})
	if _, err := e.b.Settle(e.ctx, forged, quota.Usage{}); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("Settle forged after the real one settled: got %v, want ErrUnknownTicket", err)
	}
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func testUniqueIDs(t *testing.T, f Factory) {
	e := start(t, f, t0)
	seen := make(map[string]bool)
	for range 2000 {
		tk := e.acquire(req(quota.Ask{Requests: 1}, sc("u/x", nil)))
		if tk.ID == "" || seen[tk.ID] {
			t.Fatalf("ticket ID %q: got duplicate or empty, want unique", tk.ID)
		}
		seen[tk.ID] = true
		if len(seen)%2 == 0 {
			e.settle(tk.ID, quota.Usage{})
		}
	}
}
