package leasequota_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
)

var prefixSeq atomic.Int64

// clock is a fake time the scripts use (Options.Clock).
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// newStore returns a store on a fresh prefix; clk nil uses Redis's TIME.
func newStore(t testing.TB, c redis.Scripter, clk *clock, o leasequota.Options) *leasequota.Store {
	t.Helper()
	o.Prefix = "t" + strconv.FormatInt(prefixSeq.Add(1), 10)
	if clk != nil {
		o.Clock = clk.Now
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second // semantics, not latency
	}
	s, err := leasequota.NewStore(c, o)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return s
}

var (
	day   = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	rpm   = quota.Rate{Limit: 600, Period: time.Minute, Burst: 50}
	scope = leasequota.Scope{Tenant: "ten_a", Key: "tenant/ten_a"}
)

func reqID() string { return "req" + strconv.FormatInt(prefixSeq.Add(1), 10) }

func mustGrant(t *testing.T, s *leasequota.Store, id, inst string, ttl time.Duration, wants ...leasequota.Want) leasequota.GrantResult {
	t.Helper()
	r, err := s.Grant(context.Background(), id, inst, scope, ttl, wants)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	return r
}

func mustRead(t *testing.T, s *leasequota.Store, sc leasequota.Scope) leasequota.State {
	t.Helper()
	st, err := s.Read(context.Background(), sc)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return st
}

// TestGrantConcurrent: many goroutines on several clients grant leases on
// one scope at one instant; the grants never exceed the limits, and the
// shared counters equal the sum of the grants.
func TestGrantConcurrent(t *testing.T) {
	clk := newClock()
	clients := []*redis.Client{newClient(t), newClient(t), newClient(t)}
	stores := make([]*leasequota.Store, len(clients))
	stores[0] = newStore(t, clients[0], clk, leasequota.Options{})
	for i := 1; i < len(stores); i++ {
		var err error
		stores[i], err = leasequota.NewStore(clients[i], leasequota.Options{Prefix: prefixOf(t, stores[0]), Clock: clk.Now, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
	}
	const budget, slots = 5000, 5
	var tokens, conc, reqs atomic.Int64
	var wg sync.WaitGroup
	for g := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			s := stores[g%len(stores)]
			inst := "inst" + strconv.Itoa(g%6)
			for range 40 {
				r, err := s.Grant(context.Background(), reqID(), inst, scope, time.Minute, []leasequota.Want{
					{Meter: leasequota.MeterRequests, Amount: 1 + rng.Int64N(5), Rate: rpm},
					{Meter: leasequota.MeterTokensDay, Amount: 1 + rng.Int64N(300), Limit: budget, Window: day},
					{Meter: leasequota.MeterConcurrency, Amount: 1, Limit: slots},
				})
				if err != nil {
					t.Errorf("Grant: %v", err)
					return
				}
				reqs.Add(r.Grants[0].Granted)
				tokens.Add(r.Grants[1].Granted)
				conc.Add(r.Grants[2].Granted)
			}
		}()
	}
	wg.Wait()
	if got := tokens.Load(); got > budget {
		t.Errorf("tokens granted %d, want ≤ %d", got, budget)
	}
	if got := conc.Load(); got > slots {
		t.Errorf("slots granted %d, want ≤ %d", got, slots)
	}
	if got := reqs.Load(); got > rpm.Burst {
		t.Errorf("requests granted at one instant %d, want ≤ burst %d", got, rpm.Burst)
	}
	st := mustRead(t, stores[0], scope)
	if st.Meters[leasequota.MeterTokensDay].Used != tokens.Load() || st.Meters[leasequota.MeterConcurrency].Used != conc.Load() {
		t.Errorf("state used tokens %d slots %d, want %d and %d", st.Meters[leasequota.MeterTokensDay].Used,
			st.Meters[leasequota.MeterConcurrency].Used, tokens.Load(), conc.Load())
	}
	var held int64
	for _, l := range st.Leases {
		held += l.Meters[leasequota.MeterTokensDay].Held
	}
	if held != tokens.Load() {
		t.Errorf("leases hold %d tokens, want %d", held, tokens.Load())
	}
	if tokens.Load() < budget-300 {
		t.Errorf("tokens granted %d: under-granted with asks pending", tokens.Load())
	}
}

// prefixOf recovers a store's prefix from its tag.
func prefixOf(t *testing.T, s *leasequota.Store) string {
	t.Helper()
	tag := s.Tag("")
	return tag[1 : len(tag)-3]
}

// TestRateOverTime: units granted over a span never exceed burst +
// limit·span/period, whatever the granters ask.
func TestRateOverTime(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{Validity: 250 * time.Millisecond})
	var total int64
	start := clk.Now()
	for i := range 400 {
		r := mustGrant(t, s, reqID(), "inst"+strconv.Itoa(i%3), time.Minute, leasequota.Want{Meter: leasequota.MeterRequests, Amount: 7, Rate: rpm})
		total += r.Grants[0].Granted
		span := clk.Now().Sub(start)
		if bound := rpm.Burst + int64(span)*rpm.Limit/int64(rpm.Period); total > bound {
			t.Fatalf("after %s granted %d, want ≤ %d", span, total, bound)
		}
		if d := r.Grants[0].Deadline; r.Grants[0].Granted > 0 && !d.Equal(clk.Now().Add(250*time.Millisecond)) {
			t.Fatalf("deadline %s, want now+validity", d)
		}
		clk.Advance(37 * time.Millisecond)
	}
	if total < 100 {
		t.Errorf("granted %d over 14.8 s of 10/s, want most of it", total)
	}
}

// TestReplay: a grant or return sent again with its request id returns
// the first reply and changes nothing.
func TestReplay(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	w := leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 300, Limit: 1000, Window: day}
	first := mustGrant(t, s, "g1", "a", time.Minute, w)
	clk.Advance(time.Second)
	again := mustGrant(t, s, "g1", "a", time.Minute, w)
	if !again.Replay || first.Replay || again.Grants[0] != first.Grants[0] || !again.Now.Equal(first.Now) {
		t.Errorf("replay got %+v, want the first reply %+v marked Replay", again, first)
	}
	if u := mustRead(t, s, scope).Meters[leasequota.MeterTokensDay].Used; u != 300 {
		t.Errorf("used %d after a replayed grant, want 300", u)
	}
	g := leasequota.Give{Meter: leasequota.MeterTokensDay, Amount: 100, Window: day}
	for i := range 2 {
		r, err := s.Return(context.Background(), "r1", "a", scope, []leasequota.Give{g})
		if err != nil {
			t.Fatal(err)
		}
		if r.Returned[0] != 100 || r.Held[0] != 200 || r.Replay != (i == 1) {
			t.Errorf("return #%d got %+v, want 100 returned, 200 held", i, r)
		}
	}
	if u := mustRead(t, s, scope).Meters[leasequota.MeterTokensDay].Used; u != 200 {
		t.Errorf("used %d after a replayed return, want 200", u)
	}
}

// TestReturn covers clamping to the lease, concurrency, ended windows and
// rate units, which go back only while no later grant follows them.
func TestReturn(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	ctx := context.Background()
	mustGrant(t, s, reqID(), "a", time.Minute,
		leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 50, Limit: 1000, Window: day},
		leasequota.Want{Meter: leasequota.MeterConcurrency, Amount: 3, Limit: 5})
	r, err := s.Return(ctx, reqID(), "a", scope, []leasequota.Give{
		{Meter: leasequota.MeterTokensDay, Amount: 80, Window: day},
		{Meter: leasequota.MeterConcurrency, Amount: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Returned[0] != 50 || r.Returned[1] != 2 || r.Held[1] != 1 {
		t.Errorf("returned %v held %v, want [50 2] and one slot held", r.Returned, r.Held)
	}
	// another instance's lease is not returnable by "b"
	r, _ = s.Return(ctx, reqID(), "b", scope, []leasequota.Give{{Meter: leasequota.MeterConcurrency, Amount: 1}})
	if r.Returned[0] != 0 {
		t.Errorf("b returned a's slot")
	}

	// the next day's grant restarts the counter; yesterday's lease is void
	mustGrant(t, s, reqID(), "a", time.Minute, leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 40, Limit: 1000, Window: day})
	next := day.AddDate(0, 0, 1)
	g := mustGrant(t, s, reqID(), "b", time.Minute, leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 10, Limit: 1000, Window: next})
	if g.Grants[0].Remaining != 990 {
		t.Errorf("new window remaining %d, want 990", g.Grants[0].Remaining)
	}
	r, _ = s.Return(ctx, reqID(), "a", scope, []leasequota.Give{{Meter: leasequota.MeterTokensDay, Amount: 40, Window: day}})
	if r.Returned[0] != 0 {
		t.Errorf("returned %d of an ended window, want 0", r.Returned[0])
	}
	if u := mustRead(t, s, scope).Meters[leasequota.MeterTokensDay].Used; u != 10 {
		t.Errorf("used %d, want 10", u)
	}
	// a grant for the ended window gets nothing
	g = mustGrant(t, s, reqID(), "a", time.Minute, leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 5, Limit: 1000, Window: day})
	if g.Grants[0].Granted != 0 {
		t.Errorf("granted %d in an ended window", g.Grants[0].Granted)
	}

	// rates: a grant's units go back while the bucket is as it left it;
	// not once another grant has followed
	ra := mustGrant(t, s, reqID(), "a", time.Minute, leasequota.Want{Meter: leasequota.MeterRequests, Amount: 10, Rate: rpm})
	ga := ra.Grants[0]
	if ga.Granted != 10 || ga.After == ga.Before || ga.Deadline.IsZero() {
		t.Fatalf("rate grant %+v, want 10 units with a deadline", ga)
	}
	level := func() int64 {
		b := mustRead(t, s, scope).Meters[leasequota.MeterRequests].Bucket
		return b.Use(clk.Now()).Level
	}
	if l := level(); l < 10 {
		t.Errorf("bucket level %d after a lease of 10, want at least 10", l)
	}
	r, _ = s.Return(ctx, reqID(), "a", scope, []leasequota.Give{{Meter: leasequota.MeterRequests, Amount: 10, After: ga.After, Before: ga.Before}})
	if r.Returned[0] != 10 || level() != 0 {
		t.Errorf("rate return %+v left level %d, want 10 back and an empty bucket", r, level())
	}
	ra = mustGrant(t, s, reqID(), "a", time.Minute, leasequota.Want{Meter: leasequota.MeterRequests, Amount: 10, Rate: rpm})
	mustGrant(t, s, reqID(), "b", time.Minute, leasequota.Want{Meter: leasequota.MeterRequests, Amount: 1, Rate: rpm, Direct: true})
	r, _ = s.Return(ctx, reqID(), "a", scope, []leasequota.Give{{Meter: leasequota.MeterRequests, Amount: 10, After: ra.Grants[0].After, Before: ra.Grants[0].Before}})
	if r.Returned[0] != 0 {
		t.Errorf("returned %d rate units under a later grant, want 0", r.Returned[0])
	}
}

// TestMin: a want whose Min does not fit grants nothing; clamping takes
// the rest.
func TestMin(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	w := leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 700, Limit: 1000, Window: day}
	mustGrant(t, s, reqID(), "a", time.Minute, w)
	g := mustGrant(t, s, reqID(), "b", time.Minute, leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 700, Min: 301, Limit: 1000, Window: day})
	if g.Grants[0].Granted != 0 || g.Grants[0].Remaining != 300 {
		t.Errorf("got %+v, want nothing with 300 remaining", g.Grants[0])
	}
	g = mustGrant(t, s, reqID(), "b", time.Minute, w)
	if g.Grants[0].Granted != 300 || g.Grants[0].Remaining != 0 {
		t.Errorf("got %+v, want the 300 left", g.Grants[0])
	}
}

// TestReclaim: a dead instance's expired lease frees what it held but had
// not pinned; pinned budget stays counted (stranded) for the window,
// pinned concurrency until MaxTTL after the expiry; renewing a reclaimed
// lease reports it lost.
func TestReclaim(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{MaxTTL: time.Hour})
	ctx := context.Background()
	mustGrant(t, s, reqID(), "dead", 10*time.Second,
		leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 500, Pin: 60, Limit: 1000, Window: day},
		leasequota.Want{Meter: leasequota.MeterConcurrency, Amount: 3, Pin: 1, Limit: 5})
	mustGrant(t, s, reqID(), "live", 10*time.Second, leasequota.Want{Meter: leasequota.MeterTokensDay, Amount: 100, Limit: 1000, Window: day})
	clk.Advance(5 * time.Second)
	if rr, err := s.Renew(ctx, "live", "ten_a", 10*time.Second, []leasequota.Renewal{{Key: scope.Key}}); err != nil || len(rr.Lost) != 0 {
		t.Fatalf("Renew live: %+v %v", rr, err)
	}
	clk.Advance(6 * time.Second) // dead expired, live renewed
	n, err := s.Reclaim(ctx, scope)
	if err != nil || n != 1 {
		t.Fatalf("Reclaim got %d %v, want 1", n, err)
	}
	st := mustRead(t, s, scope)
	if m := st.Meters[leasequota.MeterTokensDay]; m.Used != 160 || m.Stranded != 60 {
		t.Errorf("tokens %+v, want used 160 (live 100 + stranded 60)", m)
	}
	if m := st.Meters[leasequota.MeterConcurrency]; m.Used != 1 || m.Stranded != 1 {
		t.Errorf("concurrency %+v, want the pinned slot only", m)
	}
	if len(st.Leases) != 1 || st.Leases[0].Instance != "live" {
		t.Errorf("leases %+v, want live's only", st.Leases)
	}
	if n, _ := s.Reclaim(ctx, scope); n != 0 {
		t.Errorf("second Reclaim got %d, want 0", n)
	}
	rr, err := s.Renew(ctx, "dead", "ten_a", time.Minute, []leasequota.Renewal{{Key: scope.Key}})
	if err != nil || len(rr.Lost) != 1 {
		t.Errorf("Renew dead got %+v %v, want it lost", rr, err)
	}
	clk.Advance(time.Hour)
	s.Reclaim(ctx, scope)
	st = mustRead(t, s, scope)
	if m := st.Meters[leasequota.MeterConcurrency]; m.Used != 0 || m.Stranded != 0 {
		t.Errorf("concurrency %+v after MaxTTL, want free", m)
	}
	if m := st.Meters[leasequota.MeterTokensDay]; m.Used != 60 {
		t.Errorf("tokens used %d, want the stranded 60 (live's lease expired too)", m.Used)
	}
}

// TestReclaimRedisTime: with Redis's own clock, a lease with a short TTL
// is reclaimed once it expires (polled, no wall-clock assertion).
func TestReclaimRedisTime(t *testing.T) {
	s := newStore(t, newClient(t), nil, leasequota.Options{})
	ctx := context.Background()
	mustGrant(t, s, reqID(), "dead", 50*time.Millisecond, leasequota.Want{Meter: leasequota.MeterConcurrency, Amount: 2, Limit: 2})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n, err := s.Reclaim(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease not reclaimed within 30 s")
		}
	}
	g := mustGrant(t, s, reqID(), "b", time.Minute, leasequota.Want{Meter: leasequota.MeterConcurrency, Amount: 2, Limit: 2})
	if g.Grants[0].Granted != 2 {
		t.Errorf("granted %d after reclaim, want 2", g.Grants[0].Granted)
	}
}

// TestEpoch: with RequireEpoch, mutating calls change nothing until the
// tag's epoch is set; each tag has its own.
func TestEpoch(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{RequireEpoch: true})
	ctx := context.Background()
	w := []leasequota.Want{{Meter: leasequota.MeterConcurrency, Amount: 1, Limit: 5}}
	if _, err := s.Grant(ctx, reqID(), "a", scope, time.Minute, w); !errors.Is(err, leasequota.ErrEpochLost) || !errors.Is(err, quota.ErrUnavailable) {
		t.Fatalf("Grant without epoch: %v, want ErrEpochLost", err)
	}
	if err := s.SetEpoch(ctx, "ten_a", "e1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Grant(ctx, reqID(), "a", scope, time.Minute, w); err != nil {
		t.Fatalf("Grant with epoch: %v", err)
	}
	global := leasequota.Scope{Key: "global"}
	if _, err := s.Grant(ctx, reqID(), "a", global, time.Minute, w); !errors.Is(err, leasequota.ErrEpochLost) {
		t.Fatalf("global Grant: %v, want ErrEpochLost (its tag has no epoch)", err)
	}
}

// TestInvalid: malformed calls are ErrInvalid and reach no script.
func TestInvalid(t *testing.T) {
	s := newStore(t, newClient(t), newClock(), leasequota.Options{})
	ctx := context.Background()
	for i, w := range []leasequota.Want{
		{Meter: leasequota.MeterTokensDay, Amount: -1, Limit: 5},
		{Meter: leasequota.MeterRequests, Amount: 1},
		{Meter: leasequota.MeterRequests, Amount: 0, Rate: quota.Rate{Limit: 1, Period: time.Second}},
		{Meter: leasequota.MeterRequests, Amount: 1, Rate: quota.Rate{Limit: 1, Period: -time.Second}},
		{Meter: 9, Amount: 1},
	} {
		if _, err := s.Grant(ctx, reqID(), "a", scope, time.Minute, []leasequota.Want{w}); !errors.Is(err, quota.ErrInvalid) {
			t.Errorf("%d: Grant(%+v) got %v, want ErrInvalid", i, w, err)
		}
	}
}

// TestTags: every scope of a tenant's subtree shares the tenant's hash
// tag; the global scope has its own.
func TestTags(t *testing.T) {
	s, err := leasequota.NewStore(redis.NewClient(&redis.Options{ContextTimeoutEnabled: true}), leasequota.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Tag("ten_a"), "{sluice:t:ten_a}"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got, want := s.Tag(""), "{sluice:g}"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
