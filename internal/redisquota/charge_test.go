package redisquota_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// budgets is the budget part of a ScopeUse.
type budgets struct{ day, month, gpu, cost int64 }

func budgetsOf(u quota.ScopeUse) budgets {
	return budgets{u.TokensDay.Used, u.TokensMonth.Used, u.GPUMillis.Used, u.CostMicros.Used}
}

func (b budgets) add(u quota.Usage, day, month bool) budgets {
	tok := u.InputTokens + u.OutputTokens
	if day {
		b.day += tok
	}
	if month {
		b.month += tok
		b.gpu += u.GPUMillis
		b.cost += u.CostMicros
	}
	return b
}

func useOf(t *testing.T, b quota.Backend, key string) quota.ScopeUse {
	t.Helper()
	u, err := b.Use(context.Background(), key)
	if err != nil {
		t.Fatalf("Use(%s): %v", key, err)
	}
	return u
}

// TestCharge: a charge adds to every scope of its chain, in each scope's
// own zone, for the windows holding at that are current; once per id.
func TestCharge(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	clk := newClock() // 2026-03-31 15:00 UTC: 23:00 in Shanghai, 11:00 in New York
	b, prefix := newBackend(t, c, redisquota.Options{Clock: clk.Now, Timeout: loadedTimeout})
	ctx := context.Background()
	load := func(name string) *time.Location {
		loc, err := time.LoadLocation(name)
		if err != nil {
			t.Fatal(err)
		}
		return loc
	}
	shanghai, newYork := load("Asia/Shanghai"), load("America/New_York")
	lim := &quota.Limits{TokensDay: quota.AtMost(1 << 50)}
	chain := []quota.Scope{
		{Key: "global", Limits: lim},
		{Key: "t/sh", Limits: lim, Loc: shanghai},
		{Key: "u/ny", Loc: newYork}, // never seen before the first charge
		{Key: "p/new"},              // never seen before the first charge
	}
	tk, err := b.Acquire(ctx, quota.Request{Chain: chain[:2], Ask: quota.Ask{Tokens: 500}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Settle(ctx, tk.ID, quota.Usage{InputTokens: 300, GPUMillis: 1}); err != nil {
		t.Fatal(err)
	}
	want := map[string]budgets{"global": {300, 300, 1, 0}, "t/sh": {300, 300, 1, 0}}

	now := clk.Now()
	for _, tt := range []struct {
		name string
		id   string
		at   time.Time
		u    quota.Usage
		// which windows count it, per scope: day, month
		counts map[string][2]bool
	}{
		{"now", "c1", now, quota.Usage{InputTokens: 100, OutputTokens: 20, GPUMillis: 7, CostMicros: 3},
			map[string][2]bool{"global": {true, true}, "t/sh": {true, true}, "u/ny": {true, true}, "p/new": {true, true}}},
		{"replayed id", "c1", now, quota.Usage{InputTokens: 5000},
			map[string][2]bool{}},
		{"yesterday: the day has ended, the month has not", "c2", now.Add(-24 * time.Hour), quota.Usage{InputTokens: 1000, GPUMillis: 70, CostMicros: 30},
			map[string][2]bool{"global": {false, true}, "t/sh": {false, true}, "u/ny": {false, true}, "p/new": {false, true}}},
		{"last month", "c3", time.Date(2026, 2, 27, 12, 0, 0, 0, time.UTC), quota.Usage{InputTokens: 1 << 40, GPUMillis: 1 << 40},
			map[string][2]bool{}},
		// 16:30 UTC is still today in UTC and New York, but 00:30 on
		// 1 April in Shanghai: a window not yet begun there.
		{"ninety minutes ahead", "c4", now.Add(90 * time.Minute), quota.Usage{InputTokens: 10_000, OutputTokens: 5, GPUMillis: 700, CostMicros: 300},
			map[string][2]bool{"global": {true, true}, "t/sh": {false, false}, "u/ny": {true, true}, "p/new": {true, true}}},
		{"a new id at the last nanosecond of the UTC day", "c5", time.Date(2026, 3, 31, 23, 59, 59, 999_999_999, time.UTC), quota.Usage{OutputTokens: 1},
			map[string][2]bool{"global": {true, true}, "u/ny": {true, true}, "p/new": {true, true}}},
		{"the first nanosecond of the next UTC day", "c6", time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), quota.Usage{OutputTokens: 1},
			map[string][2]bool{"u/ny": {true, true}}},
		{"usage of 2^52", "c7", now, quota.Usage{InputTokens: 1 << 52},
			map[string][2]bool{"global": {true, true}, "t/sh": {true, true}, "u/ny": {true, true}, "p/new": {true, true}}},
	} {
		if err := b.Charge(ctx, tt.id, chain, tt.u, tt.at); err != nil {
			t.Fatalf("%s: Charge: %v", tt.name, err)
		}
		for k, w := range tt.counts {
			want[k] = want[k].add(tt.u, w[0], w[1])
		}
		for _, sc := range chain {
			if got := budgetsOf(useOf(t, b, sc.Key)); got != want[sc.Key] {
				t.Fatalf("%s: Use(%s): got %+v, want %+v", tt.name, sc.Key, got, want[sc.Key])
			}
		}
	}

	// The unseen scopes got their state, with their zone's windows.
	nyDay := time.Date(2026, 3, 31, 0, 0, 0, 0, newYork)
	if u := useOf(t, b, "u/ny"); !u.TokensDay.Start.Equal(nyDay) || !u.TokensMonth.End.Equal(time.Date(2026, 4, 1, 0, 0, 0, 0, newYork)) {
		t.Errorf("u/ny windows: got day from %v, month to %v, want the New York day from %v", u.TokensDay.Start, u.TokensMonth.End, nyDay)
	}
	// And the use counts against limits.
	_, err = b.Acquire(ctx, quota.Request{Chain: []quota.Scope{{Key: "p/new", Limits: &quota.Limits{CostMicrosMonth: quota.AtMost(333)}}}, Ask: quota.Ask{CostMicros: 1}})
	if !errors.Is(err, quota.ErrQuotaExceeded) {
		t.Errorf("Acquire over the charged cost: got %v, want quota_exceeded", err)
	}

	// Every key a charge writes expires; the id for ChargeRetention.
	for _, k := range keysOf(t, c, prefix) {
		ttl, err := c.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 {
			t.Errorf("key %s: got TTL %v, want > 0", k, ttl)
		}
	}
	ttl, err := c.PTTL(ctx, "{"+prefix+"}:c:c1").Result()
	if err != nil || ttl <= redisquota.DefaultChargeRetention-time.Minute || ttl > redisquota.DefaultChargeRetention {
		t.Errorf("charge id TTL: got %v, %v, want about %v", ttl, err, redisquota.DefaultChargeRetention)
	}
}

func TestChargeInvalid(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	b, _ := newBackend(t, c, redisquota.Options{Timeout: loadedTimeout})
	ctx := context.Background()
	chain := []quota.Scope{{Key: "a"}}
	now := time.Now()
	for _, tt := range []struct {
		name  string
		id    string
		chain []quota.Scope
		u     quota.Usage
	}{
		{"empty id", "", chain, quota.Usage{}},
		{"negative usage", "x", chain, quota.Usage{CostMicros: -1}},
		{"usage above 2^52", "x", chain, quota.Usage{OutputTokens: 1<<52 + 1}},
		{"empty scope key", "x", []quota.Scope{{Key: ""}}, quota.Usage{}},
		{"scope twice", "x", []quota.Scope{{Key: "a"}, {Key: "b"}, {Key: "a"}}, quota.Usage{}},
	} {
		if err := b.Charge(ctx, tt.id, tt.chain, tt.u, now); !errors.Is(err, quota.ErrInvalid) {
			t.Errorf("Charge with %s: got %v, want ErrInvalid", tt.name, err)
		}
	}
	// Nothing invalid was remembered: the id charges now.
	if err := b.Charge(ctx, "x", chain, quota.Usage{InputTokens: 7}, now); err != nil {
		t.Fatal(err)
	}
	if u := useOf(t, b, "a"); u.TokensDay.Used != 7 {
		t.Errorf("Use: got %d tokens, want 7", u.TokensDay.Used)
	}
	// An empty chain charges nothing, and is no error (as in quota.Memory).
	if err := b.Charge(ctx, "y", nil, quota.Usage{InputTokens: 7}, now); err != nil {
		t.Errorf("Charge with an empty chain: got %v, want nil", err)
	}
	b.Close()
	if err := b.Charge(ctx, "z", chain, quota.Usage{}, now); !errors.Is(err, quota.ErrClosed) {
		t.Errorf("Charge after Close: got %v, want ErrClosed", err)
	}
}

// TestChargeNoScript: with the script cache flushed, Charge falls back from
// EVALSHA to EVAL and counts once.
func TestChargeNoScript(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	h := &cmdNames{}
	c.AddHook(h)
	b, _ := newBackend(t, c, redisquota.Options{Timeout: loadedTimeout})
	ctx := context.Background()
	chain := []quota.Scope{{Key: "global"}, {Key: "t/a"}}
	for i := range 2 {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
		h.reset()
		if err := b.Charge(ctx, "id", chain, quota.Usage{InputTokens: 40, CostMicros: 2}, time.Now()); err != nil {
			t.Fatalf("Charge %d after SCRIPT FLUSH: %v", i, err)
		}
		if h.count("evalsha") != 1 || h.count("eval") != 1 {
			t.Errorf("Charge %d: got %d EVALSHA %d EVAL, want 1 1", i, h.count("evalsha"), h.count("eval"))
		}
	}
	for _, sc := range chain {
		if got, want := budgetsOf(useOf(t, b, sc.Key)), (budgets{40, 40, 0, 2}); got != want {
			t.Errorf("Use(%s): got %+v, want %+v", sc.Key, got, want)
		}
	}
}

// TestChargeMatchesMemory runs random charges (replayed ids, instants in
// past, current and future windows, zone changes, days and months going
// by) against quota.Memory and the Redis backend on one clock, and
// compares every scope's budgets after each.
func TestChargeMatchesMemory(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	var zones []*time.Location
	for _, n := range []string{"UTC", "Asia/Shanghai", "America/New_York", "Pacific/Chatham"} {
		loc, err := time.LoadLocation(n)
		if err != nil {
			t.Fatal(err)
		}
		zones = append(zones, loc)
	}
	steps := 300
	if testing.Short() {
		steps = 120
	}
	ctx := context.Background()
	for seed := range uint64(3) {
		t.Run("seed"+strconv.FormatUint(seed, 10), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 42))
			clk := &fakeClock{now: time.Date(2026, 1, 30, 20, 0, 0, 0, time.UTC)}
			mem := quota.NewMemory(quota.Options{Now: clk.Now})
			t.Cleanup(func() { mem.Close() })
			rb, _ := newBackend(t, c, redisquota.Options{Clock: clk.Now, Timeout: loadedTimeout})
			keys := []string{"global", "t/a", "t/b", "u/x", "u/y"}
			zoneOf := map[string]*time.Location{}
			for _, k := range keys {
				zoneOf[k] = zones[rnd.IntN(len(zones))]
			}
			for step := range steps {
				switch r := rnd.IntN(10); {
				case r == 0:
					clk.advance(time.Duration(rnd.Int64N(int64(40 * time.Hour))))
				case r == 1:
					clk.advance(time.Duration(rnd.Int64N(int64(40 * 24 * time.Hour))))
				case r == 2:
					k := keys[rnd.IntN(len(keys))]
					zoneOf[k] = zones[rnd.IntN(len(zones))]
				}
				var chain []quota.Scope
				for _, k := range keys {
					if rnd.IntN(2) == 0 {
						chain = append(chain, quota.Scope{Key: k, Loc: zoneOf[k]})
					}
				}
				id := "c" + strconv.Itoa(rnd.IntN(steps/2+1))
				at := clk.Now().Add(time.Duration(rnd.Int64N(int64(45*24*time.Hour))) - 40*24*time.Hour)
				if rnd.IntN(3) == 0 {
					at = clk.Now().Add(time.Duration(rnd.Int64N(int64(2*time.Hour))) - time.Hour)
				}
				u := quota.Usage{InputTokens: rnd.Int64N(1000), OutputTokens: rnd.Int64N(1000), GPUMillis: rnd.Int64N(100), CostMicros: rnd.Int64N(100)}
				errM := mem.Charge(ctx, id, chain, u, at)
				errR := rb.Charge(ctx, id, chain, u, at)
				if errM != nil || errR != nil {
					t.Fatalf("step %d: Charge: memory %v, redis %v", step, errM, errR)
				}
				for _, k := range keys {
					m, r := useOf(t, mem, k), useOf(t, rb, k)
					if budgetsOf(m) != budgetsOf(r) ||
						!m.TokensDay.Start.Equal(r.TokensDay.Start) || !m.TokensDay.End.Equal(r.TokensDay.End) ||
						!m.TokensMonth.Start.Equal(r.TokensMonth.Start) || !m.TokensMonth.End.Equal(r.TokensMonth.End) {
						t.Fatalf("step %d (now %v, charge %s at %v): Use(%s): redis %+v %v–%v, memory %+v %v–%v", step, clk.Now(), id, at, k,
							budgetsOf(r), r.TokensDay.Start, r.TokensMonth.End, budgetsOf(m), m.TokensDay.Start, m.TokensMonth.End)
					}
				}
			}
		})
	}
}

// TestChargeRates: rate units are added to each scope's buckets as of now,
// past the limit if need be and never refused, once per id; a scope
// without the rate is left alone.
func TestChargeRates(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	clk := newClock()
	b, _ := newBackend(t, c, redisquota.Options{Clock: clk.Now, Timeout: loadedTimeout})
	ctx := context.Background()
	lim := &quota.Limits{Requests: quota.Rate{Limit: 600, Period: time.Minute, Burst: 50},
		TokensRate: quota.Rate{Limit: 6000, Period: time.Minute}}
	charges := []quota.RateCharge{
		{Scope: quota.Scope{Key: "u", Limits: lim}, Requests: 30, Tokens: 7000},
		{Scope: quota.Scope{Key: "plain"}, Requests: 5, Tokens: 5},
	}
	levels := func() (int64, int64) {
		u := useOf(t, b, "u")
		return u.Requests.Level, u.TokensRate.Level
	}
	if err := b.ChargeRates(ctx, "r1", charges); err != nil {
		t.Fatal(err)
	}
	if r, k := levels(); r != 30 || k != 7000 {
		t.Fatalf("after a charge: levels %d and %d, want 30 and 7000 (past the burst of 6000)", r, k)
	}
	if u := useOf(t, b, "plain"); u.Requests != (quota.RateUse{}) || u.TokensRate != (quota.RateUse{}) {
		t.Errorf("a scope without rates got buckets: %+v %+v", u.Requests, u.TokensRate)
	}
	if err := b.ChargeRates(ctx, "r1", charges); err != nil {
		t.Fatal(err)
	}
	if r, k := levels(); r != 30 || k != 7000 {
		t.Fatalf("after the same id again: levels %d and %d, want 30 and 7000", r, k)
	}
	clk.advance(time.Second) // drains 10 requests and 100 tokens
	if err := b.ChargeRates(ctx, "r2", charges[:1]); err != nil {
		t.Fatal(err)
	}
	if r, k := levels(); r != 50 || k != 13900 {
		t.Fatalf("after a second charge a second later: levels %d and %d, want 50 and 13900", r, k)
	}
	_, err := b.Acquire(ctx, quota.Request{Chain: []quota.Scope{charges[0].Scope}, Ask: quota.Ask{Requests: 1}})
	var d *quota.Denial
	if !errors.As(err, &d) || d.Dimension != quota.DimRequests {
		t.Fatalf("Acquire on the charged bucket: got %v, want a requests denial", err)
	}
	if err := b.ChargeRates(ctx, "r3", []quota.RateCharge{{Scope: quota.Scope{Key: "u", Limits: lim}, Requests: -1}}); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("negative units: got %v, want ErrInvalid", err)
	}
}
