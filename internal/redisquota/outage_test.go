package redisquota_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// outageCluster is n quota.Failovers (Sluice instances) on one dedicated
// redis-server, every clock a fake one.
type outageCluster struct {
	srv    *server
	clk    *fakeClock
	prefix string
	fos    []*quota.Failover
}

func newOutageCluster(t *testing.T, n int, o redisquota.Options,
	mk func(i int, c *redis.Client, b *redisquota.Backend) quota.FailoverOptions, extra ...string) *outageCluster {
	t.Helper()
	oc := &outageCluster{srv: dedicatedServer(t, extra...), clk: newClock(),
		prefix: "out" + strconv.FormatInt(prefixSeq.Add(1), 10)}
	o.Prefix, o.Clock = oc.prefix, oc.clk.Now
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	for i := range n {
		// No retries in go-redis: a dead Redis fails the call at once.
		c := redis.NewClient(&redis.Options{Addr: oc.srv.addr, ContextTimeoutEnabled: true, MaxRetries: -1,
			DialTimeout: time.Second, DialerRetries: 1})
		t.Cleanup(func() { c.Close() })
		b, err := redisquota.New(c, o)
		if err != nil {
			t.Fatal(err)
		}
		var fo quota.FailoverOptions
		if mk != nil {
			fo = mk(i, c, b)
		}
		fo.Instances = func() int { return n }
		if fo.Probe == nil {
			fo.Probe = func(ctx context.Context) error { return c.Ping(ctx).Err() }
		}
		fo.ProbeInterval = 5 * time.Millisecond
		fo.Local = quota.Options{Now: oc.clk.Now}
		f := quota.NewFailover(b, fo)
		t.Cleanup(func() { f.Close() })
		oc.fos = append(oc.fos, f)
	}
	return oc
}

// normal waits until every instance is back in normal mode with its spool
// delivered.
func (oc *outageCluster) normal(t *testing.T) {
	t.Helper()
	waitFor(t, time.Minute, "every instance normal with an empty spool", func() bool {
		for _, f := range oc.fos {
			if f.Degraded() || f.Spooled() > 0 {
				return false
			}
		}
		return true
	})
}

// TestFailoverNoSecondBurst: three instances share a rate limit (600 a
// minute, burst 50) and admit all they can, before, during and after a
// Redis outage, on a fake clock. Over any span of the run, outage or not,
// they admit together at most burst + limit·t/period: what they admitted
// locally is charged to the shared bucket when Redis returns, so it does
// not come back full for a second burst.
func TestFailoverNoSecondBurst(t *testing.T) {
	for _, tt := range []struct {
		name string
		lim  quota.Limits
		ask  quota.Ask
	}{
		{"requests", quota.Limits{Requests: quota.Rate{Limit: 600, Period: time.Minute, Burst: 50}}, quota.Ask{Requests: 1}},
		{"tokens_rate", quota.Limits{TokensRate: quota.Rate{Limit: 60000, Period: time.Minute, Burst: 5000}}, quota.Ask{Tokens: 100}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const limit, burst = 600, 50 // in admissions
			// Acknowledged writes survive the kill: the bucket is there
			// when Redis returns, as with a replica taking over.
			oc := newOutageCluster(t, 3, redisquota.Options{}, nil, "--appendonly", "yes", "--appendfsync", "no")
			ctx := context.Background()
			chain := []quota.Scope{{Key: "u", Limits: &tt.lim}}
			var admitted []time.Time
			// step admits all it can on every instance, then moves the
			// clock on by 50 ms.
			step := func() {
				t.Helper()
				for i, f := range oc.fos {
					for {
						tk, err := f.Acquire(ctx, quota.Request{Chain: chain, Ask: tt.ask})
						var d *quota.Denial
						if errors.As(err, &d) && d.Code == quota.CodeRateLimited {
							break
						}
						if err != nil {
							t.Fatalf("instance %d at %v: Acquire: %v", i, oc.clk.Now(), err)
						}
						admitted = append(admitted, oc.clk.Now())
						if _, err := f.Settle(ctx, tk.ID, quota.Usage{InputTokens: tt.ask.Tokens}); err != nil {
							t.Fatalf("instance %d: Settle: %v", i, err)
						}
					}
				}
				oc.clk.advance(50 * time.Millisecond)
			}
			for range 40 { // 2 s
				step()
			}
			before := len(admitted)
			oc.srv.kill()
			for range 400 { // 20 s
				step()
			}
			for i, f := range oc.fos {
				if !f.Degraded() {
					t.Fatalf("instance %d not degraded with Redis killed", i)
				}
			}
			during := len(admitted) - before
			if err := oc.srv.restart(); err != nil {
				t.Fatal(err)
			}
			oc.normal(t)    // the fake clock stands still meanwhile
			for range 200 { // 10 s
				step()
			}
			after := len(admitted) - before - during

			// Every span [admitted[i], admitted[j]]: j-i+1 admissions.
			worst, at := int64(-1<<62), ""
			for i := range admitted {
				for j := i; j < len(admitted); j++ {
					span := admitted[j].Sub(admitted[i])
					// n ≤ burst + limit·span/minute, in units of 1/minute.
					excess := int64(j-i+1)*int64(time.Minute) - burst*int64(time.Minute) - limit*int64(span)
					if excess > worst {
						worst, at = excess, admitted[i].Format("15:04:05.000")+" – "+admitted[j].Format("15:04:05.000")
					}
				}
			}
			t.Logf("admitted %d before, %d during and %d after the outage; the span nearest the bound, %s, is %.2f admissions over it",
				before, during, after, at, float64(worst)/float64(time.Minute))
			if worst > 0 {
				t.Errorf("admitted %.2f above burst + limit·t/period over %s", float64(worst)/float64(time.Minute), at)
			}
			if !slices.IsSortedFunc(admitted, func(a, b time.Time) int { return a.Compare(b) }) {
				t.Fatal("admission times out of order")
			}
		})
	}
}

// TestFailoverOutageSharesEveryScope: a tenant's budget of 5,000 tokens is
// 3,000 spent (by use the instances never saw) when its users admit a
// little through three instances; each of those admissions leaves a user
// budget tighter than the tenant's. Redis then goes away: each instance's
// share of the tenant's budget is what was left of it at its last
// admission, divided by three, so that together they do not spend more
// than is left, even though the tenant was never the tightest scope.
func TestFailoverOutageSharesEveryScope(t *testing.T) {
	oc := newOutageCluster(t, 3, redisquota.Options{}, nil, "--appendonly", "yes", "--appendfsync", "no")
	ctx := context.Background()
	observer, err := redisquota.New(newClient(t, oc.srv.addr), redisquota.Options{Prefix: oc.prefix, Clock: oc.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	const budget = 5000
	tenant := quota.Scope{Key: "t/a", Limits: &quota.Limits{TokensDay: quota.AtMost(budget)}}
	if err := observer.Charge(ctx, "elsewhere", []quota.Scope{tenant}, quota.Usage{InputTokens: 3000}, oc.clk.Now()); err != nil {
		t.Fatal(err)
	}
	spend := func(i int, chain []quota.Scope) error {
		tk, err := oc.fos[i].Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 100}})
		if err != nil {
			return err
		}
		_, err = oc.fos[i].Settle(ctx, tk.ID, quota.Usage{InputTokens: 100})
		return err
	}
	user := quota.Scope{Key: "u/b", Limits: &quota.Limits{TokensDay: quota.AtMost(1000)}}
	for i, f := range oc.fos {
		tk, err := f.Acquire(ctx, quota.Request{Chain: []quota.Scope{tenant, user}, Ask: quota.Ask{Tokens: 100}})
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		if r := tk.Tightest(quota.DimTokens, quota.WindowDay); r.Scope != user.Key {
			t.Fatalf("instance %d: the tightest tokens/day scope is %s, want %s", i, r.Scope, user.Key)
		}
		if _, err := f.Settle(ctx, tk.ID, quota.Usage{InputTokens: 100}); err != nil {
			t.Fatal(err)
		}
	}

	oc.srv.kill()
	var during int64
	for i, f := range oc.fos {
		chain := []quota.Scope{tenant, {Key: "u/c" + strconv.Itoa(i)}}
		for {
			err := spend(i, chain)
			var d *quota.Denial
			if errors.As(err, &d) {
				if d.Scope != tenant.Key {
					t.Fatalf("instance %d: denied by %s, want %s", i, d.Scope, tenant.Key)
				}
				break
			}
			if err != nil {
				t.Fatalf("instance %d during the outage: %v", i, err)
			}
			during += 100
		}
		if !f.Degraded() {
			t.Fatalf("instance %d not degraded", i)
		}
	}
	if err := oc.srv.restart(); err != nil {
		t.Fatal(err)
	}
	oc.normal(t)
	used := useOf(t, observer, tenant.Key).TokensDay.Used
	t.Logf("tenant's tokens/day: %d used of %d after %d spent during the outage", used, budget, during)
	if used > budget {
		t.Errorf("tenant's tokens/day after the outage: %d used, above its budget of %d", used, budget)
	}
}

// TestFailoverReadmitsLiveTickets: Redis restarts empty while five tickets
// hold the five slots of a concurrency limit (three on one instance, two on
// another). Once the counters are rebuilt (from an empty ledger: nothing
// was settled) each instance takes its live tickets back into Redis, so a
// sixth ticket is refused while they run and admitted once they settle,
// and their reservations count until then.
func TestFailoverReadmitsLiveTickets(t *testing.T) {
	var clk *fakeClock
	// Each instance checks that Redis holds the epoch it knows, and
	// rebuilds under the lock, as cmd/sluice does; the ledger is empty.
	mk := func(i int, c *redis.Client, b *redisquota.Backend) quota.FailoverOptions {
		var known atomic.Pointer[string]
		owner := "instance" + strconv.Itoa(i)
		return quota.FailoverOptions{
			Probe: func(ctx context.Context) error {
				if err := c.Ping(ctx).Err(); err != nil {
					return err
				}
				v, err := b.Epoch(ctx)
				if err != nil {
					return err
				}
				if k := known.Load(); v == "" || k == nil || *k != v {
					return redisquota.ErrEpochLost
				}
				return nil
			},
			Rebuild: func(ctx context.Context) (time.Time, error) {
				v, err := b.Epoch(ctx)
				if err != nil {
					return time.Time{}, err
				}
				if v == "" {
					ok, err := b.LockRebuild(ctx, owner, time.Minute)
					if err != nil {
						return time.Time{}, err
					}
					if !ok {
						return time.Time{}, redisquota.ErrEpochLost
					}
					defer b.UnlockRebuild(context.WithoutCancel(ctx), owner)
					if v, err = b.Epoch(ctx); err != nil {
						return time.Time{}, err
					}
					if v == "" {
						v = redisquota.NewEpoch(clk.Now())
						if err := b.SetEpoch(ctx, v); err != nil {
							return time.Time{}, err
						}
					}
				}
				known.Store(&v)
				at, _ := redisquota.EpochReadAt(v)
				return at, nil
			},
		}
	}
	oc := newOutageCluster(t, 2, redisquota.Options{RequireEpoch: true}, mk)
	clk = oc.clk
	ctx := context.Background()
	observer, err := redisquota.New(newClient(t, oc.srv.addr), redisquota.Options{Prefix: oc.prefix, Clock: oc.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	// A first start: every instance finds no epoch, one sets it.
	for i, f := range oc.fos {
		f.Acquire(ctx, quota.Request{Chain: []quota.Scope{{Key: "warm-up"}}})
		waitFor(t, time.Minute, "instance "+strconv.Itoa(i)+" normal after the first rebuild", func() bool { return !f.Degraded() })
	}

	chain := []quota.Scope{{Key: "g", Limits: &quota.Limits{Concurrency: quota.AtMost(5), TokensDay: quota.AtMost(1 << 20)}}}
	ask := quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 100, Concurrency: true}, TTL: time.Hour}
	type held struct {
		f  *quota.Failover
		id string
	}
	var live []held
	for i, f := range oc.fos {
		for range 3 - i {
			tk, err := f.Acquire(ctx, ask)
			if err != nil || f.Degraded() {
				t.Fatalf("instance %d: Acquire: %v (degraded %v)", i, err, f.Degraded())
			}
			live = append(live, held{f, tk.ID})
		}
	}
	if _, err := oc.fos[0].Acquire(ctx, ask); !errors.Is(err, quota.ErrRateLimited) {
		t.Fatalf("a sixth slot before the restart: got %v, want a concurrency denial", err)
	}

	oc.srv.kill()
	if err := oc.srv.restart(); err != nil {
		t.Fatal(err)
	}
	// Redis answers without the epoch: each instance learns at its next
	// call (here a sixth ask, refused locally: its share is held), goes
	// degraded, rebuilds and comes back.
	for i, f := range oc.fos {
		if tk, err := f.Acquire(ctx, ask); err == nil {
			t.Errorf("instance %d: a sixth slot while degraded was admitted (%s)", i, tk.ID)
		}
		if !f.Degraded() {
			t.Fatalf("instance %d not degraded after Redis restarted empty", i)
		}
	}
	oc.normal(t)
	inflight := useOf(t, observer, "g").Concurrency
	var sixth []string
	for i, f := range oc.fos {
		tk, err := f.Acquire(ctx, ask)
		switch {
		case err == nil:
			sixth = append(sixth, tk.ID)
			t.Errorf("instance %d: a sixth slot admitted while five tickets from before the restart run", i)
		case !errors.Is(err, quota.ErrRateLimited):
			t.Fatalf("instance %d: a sixth slot: got %v, want a concurrency denial", i, err)
		}
	}
	u := useOf(t, observer, "g")
	t.Logf("after the rebuild: %d slots in flight in Redis (%d before the sixth asks), %d tokens reserved", u.Concurrency, inflight, u.TokensDay.Used)
	if u.Concurrency != 5 || u.TokensDay.Used != 500 {
		t.Errorf("after the rebuild: got %d slots in flight and %d tokens reserved, want 5 and 500", u.Concurrency, u.TokensDay.Used)
	}
	for _, h := range live {
		if _, err := h.f.Settle(ctx, h.id, quota.Usage{InputTokens: 40}); err != nil {
			t.Fatalf("Settle(%s) of a ticket from before the restart: %v", h.id, err)
		}
	}
	tk, err := oc.fos[1].Acquire(ctx, ask)
	if err != nil {
		t.Fatalf("a sixth slot once the five settled: %v", err)
	}
	if u := useOf(t, observer, "g"); u.Concurrency != 1+int64(len(sixth)) || u.TokensDay.Used != 5*40+100*(1+int64(len(sixth))) {
		t.Errorf("after the settles: got %d slots in flight and %d tokens used, want %d and %d", u.Concurrency, u.TokensDay.Used, 1+len(sixth), 5*40+100*(1+len(sixth)))
	}
	oc.fos[1].Settle(ctx, tk.ID, quota.Usage{})
}
