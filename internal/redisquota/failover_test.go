package redisquota_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// noonZone returns a fixed-offset zone in which it is now about noon, so
// that no day or month window of a test that lasts seconds begins or ends
// between the instants it compares.
func noonZone(t *testing.T) *time.Location {
	t.Helper()
	h := 12 - time.Now().UTC().Hour() // the offset east of UTC
	if h > 12 {
		h -= 24
	}
	name := "Etc/GMT"
	switch { // Etc/GMT-5 is UTC+5
	case h > 0:
		name += "-" + strconv.Itoa(h)
	case h < 0:
		name += "+" + strconv.Itoa(-h)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// waitFor polls cond until it holds, failing the test with what after
// the deadline, and logs how long it took. Polling is for events (a server
// back, a mode switched), never for timing: deadlines are a minute or
// more, far beyond what a loaded machine needs.
func waitFor(t *testing.T, deadline time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	end := start.Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("waited %v: %s", deadline, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%s after %s", what, time.Since(start).Round(time.Millisecond))
}

// TestFailoverOverRedis runs two quota.Failovers (two Sluice instances) on
// one Redis under load, kills Redis, and restarts it on the same port:
// every call succeeds throughout (but for waits of a few µs on the rate
// just after the switch) (degraded, on local counters with half of
// every limit each), both return to normal with their spools delivered, and
// Redis then counts exactly the use settled everywhere: nothing lost,
// nothing twice.
func TestFailoverOverRedis(t *testing.T) {
	// Acknowledged writes survive the kill, as with a replica taking over.
	srv := dedicatedServer(t, "--appendonly", "yes", "--appendfsync", "always")
	prefix := "fo" + strconv.FormatInt(prefixSeq.Add(1), 10)
	zone := noonZone(t)
	// Tickets orphaned by the kill (admitted in Redis, the reply lost) hold
	// their reservation until they expire; the test waits that long at most.
	const ttl = 3 * time.Second
	const instances = 2
	newInstance := func() *quota.Failover {
		c := newClient(t, srv.addr)
		b, _ := newBackend(t, c, redisquota.Options{Prefix: prefix, Timeout: 500 * time.Millisecond})
		f := quota.NewFailover(b, quota.FailoverOptions{
			Instances:     func() int { return instances },
			Probe:         func(ctx context.Context) error { return c.Ping(ctx).Err() },
			ProbeInterval: 20 * time.Millisecond,
		})
		t.Cleanup(func() { f.Close() })
		return f
	}
	fos := []*quota.Failover{newInstance(), newInstance()}
	observer0 := newClient(t, srv.addr)
	observer, _ := newBackend(t, observer0, redisquota.Options{Prefix: prefix})

	big := &quota.Limits{
		Requests:  quota.Rate{Limit: 1_000_000, Period: time.Second},
		TokensDay: quota.AtMost(1 << 40), TokensMonth: quota.AtMost(1 << 41),
		GPUMillisMonth: quota.AtMost(1 << 40), CostMicrosMonth: quota.AtMost(1 << 40),
		Concurrency: quota.AtMost(1000),
	}
	users := []string{"u/0", "u/1", "u/2"}
	chainOf := func(user string) []quota.Scope {
		return []quota.Scope{{Key: "global", Limits: big, Loc: zone}, {Key: "t/a", Limits: big, Loc: zone}, {Key: user, Limits: big, Loc: zone}}
	}

	var (
		mu      sync.Mutex
		settled = map[string]budgets{}
		done    [2]atomic.Int64 // settles per instance
		stop    atomic.Bool
		wg      sync.WaitGroup
	)
	record := func(chain []quota.Scope, u quota.Usage) {
		mu.Lock()
		defer mu.Unlock()
		for _, sc := range chain {
			settled[sc.Key] = settled[sc.Key].add(u, true, true)
		}
	}
	// The load is paced like a service's, whose requests take a while: a
	// tight loop on local counters spools use faster than reconciliation
	// delivers it (one round trip per settlement), and a Failover returns
	// to normal only once its spool is empty.
	const workers, pace = 4, 10 * time.Millisecond
	ctx := context.Background()
	for i, f := range fos {
		for w := range workers {
			wg.Go(func() {
				rnd := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				for !stop.Load() {
					chain := chainOf(users[rnd.IntN(len(users))])
					ask := quota.Ask{Requests: 1, Tokens: 300, GPUMillis: 50, CostMicros: 20, Concurrency: true}
					tk, err := f.Acquire(ctx, quota.Request{Chain: chain, Ask: ask, TTL: ttl})
					// Entering degraded mode fills the local rate buckets
					// (no fresh burst), so the first asks after the switch
					// wait for the rate to free a unit: a few µs here.
					var d *quota.Denial
					if errors.As(err, &d) && d.Code == quota.CodeRateLimited && d.Dimension == quota.DimRequests && d.RetryAfter < time.Millisecond {
						time.Sleep(d.RetryAfter)
						continue
					}
					if errors.Is(err, quota.ErrUnavailable) {
						// Back from the outage, the instance resynchronises
						// (quota.FailoverOptions.ReadmitHold): retry, as a
						// client told 503 does.
						time.Sleep(pace)
						continue
					}
					if err != nil {
						t.Errorf("instance %d: Acquire: %v", i, err)
						return
					}
					u := quota.Usage{InputTokens: rnd.Int64N(200), OutputTokens: rnd.Int64N(200), GPUMillis: rnd.Int64N(80), CostMicros: rnd.Int64N(30)}
					if _, err := f.Settle(ctx, tk.ID, u); err != nil {
						t.Errorf("instance %d: Settle(%s): %v", i, tk.ID, err)
						return
					}
					record(chain, u)
					done[i].Add(1)
					time.Sleep(pace)
				}
			})
		}
	}
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	// progress waits until every instance has settled n more.
	progress := func(phase string, n int64) {
		t.Helper()
		var from [2]int64
		for i := range done {
			from[i] = done[i].Load()
		}
		waitFor(t, time.Minute, phase+": instances settling", func() bool {
			return t.Failed() || done[0].Load() >= from[0]+n && done[1].Load() >= from[1]+n
		})
		if t.Failed() {
			t.FailNow() // a worker's call failed
		}
	}

	progress("healthy", 100)
	// Shared tickets that outlive the outage's start and expire before
	// its end: their settlements wait in the spool, find them expired (and
	// refunded) in Redis, and are charged instead.
	type held struct {
		f  *quota.Failover
		tk quota.Ticket
	}
	var long []held
	for i, f := range fos {
		for range 2 {
			tk, err := f.Acquire(ctx, quota.Request{Chain: chainOf("u/0"), Ask: quota.Ask{Tokens: 1000, GPUMillis: 100, Concurrency: true}, TTL: time.Second})
			if err != nil || f.Degraded() {
				t.Fatalf("instance %d: Acquire before the outage: %v (degraded %v)", i, err, f.Degraded())
			}
			long = append(long, held{f, tk})
		}
	}
	srv.kill()
	waitFor(t, time.Minute, "both instances degraded", func() bool { return fos[0].Degraded() && fos[1].Degraded() })
	progress("degraded", 100)

	// Degraded, each instance has half of every limit: of a concurrency
	// limit of 4, two slots.
	share := []quota.Scope{{Key: "global", Limits: big, Loc: zone}, {Key: "t/share", Limits: &quota.Limits{Concurrency: quota.AtMost(4)}, Loc: zone}}
	for i, f := range fos {
		var held []string
		for range 2 {
			tk, err := f.Acquire(ctx, quota.Request{Chain: share, Ask: quota.Ask{Concurrency: true}})
			if err != nil {
				t.Fatalf("instance %d degraded: Acquire within its share: %v", i, err)
			}
			held = append(held, tk.ID)
		}
		var d *quota.Denial
		if _, err := f.Acquire(ctx, quota.Request{Chain: share, Ask: quota.Ask{Concurrency: true}}); !errors.As(err, &d) || d.Scope != "t/share" || d.Limit != 2 {
			t.Fatalf("instance %d degraded: third slot of 4: got %v, want a concurrency denial at the share of 2", i, err)
		}
		for _, id := range held {
			u := quota.Usage{InputTokens: 1}
			if _, err := f.Settle(ctx, id, u); err != nil {
				t.Fatalf("instance %d degraded: Settle: %v", i, err)
			}
			record(share, u)
		}
	}
	for _, h := range long {
		u := quota.Usage{InputTokens: 700, OutputTokens: 77, GPUMillis: 7}
		if _, err := h.f.Settle(ctx, h.tk.ID, u); err != nil {
			t.Fatalf("degraded: Settle(%s) of a shared ticket: %v", h.tk.ID, err)
		}
		record(chainOf("u/0"), u)
	}
	time.Sleep(time.Until(long[len(long)-1].tk.ExpiresAt) + 50*time.Millisecond)
	if fos[0].Spooled() == 0 || fos[1].Spooled() == 0 {
		t.Fatalf("spooled while degraded: got %d and %d, want some on each", fos[0].Spooled(), fos[1].Spooled())
	}

	if err := srv.restart(); err != nil {
		t.Fatalf("restart redis-server: %v", err)
	}
	normal := func() bool {
		return !fos[0].Degraded() && !fos[1].Degraded() && fos[0].Spooled() == 0 && fos[1].Spooled() == 0
	}
	waitFor(t, time.Minute, "both instances back to normal with empty spools", normal)
	progress("recovered", 100)
	stop.Store(true)
	wg.Wait()
	if t.Failed() {
		return
	}
	// A call slowed past the timeout may have tripped one again.
	waitFor(t, time.Minute, "both instances normal with empty spools after the load", normal)

	keys := []string{"global", "t/a", "t/share"}
	keys = append(keys, users...)
	mu.Lock()
	defer mu.Unlock()
	var diff string
	match := func() bool {
		diff = ""
		for _, k := range keys {
			u := useOf(t, observer, k)
			if got := budgetsOf(u); got != settled[k] || u.Concurrency != 0 {
				diff += k + ": got " + fmtBudgets(got) + " and " + strconv.FormatInt(u.Concurrency, 10) + " in flight, want " + fmtBudgets(settled[k]) + " and 0; "
			}
		}
		return diff == ""
	}
	// Tickets admitted in Redis whose reply the kill lost still reserve
	// until they expire (ttl); the minute beyond is for a loaded machine.
	end := time.Now().Add(ttl + time.Minute)
	for !match() {
		if time.Now().After(end) {
			t.Fatalf("Redis counts after recovery: %s", diff)
		}
		time.Sleep(50 * time.Millisecond)
	}
	kinds := map[string]int{}
	for _, k := range keysOf(t, observer0, prefix) {
		if id, ok := strings.CutPrefix(k, "{"+prefix+"}:c:"); ok {
			kinds[strings.SplitN(id, ":", 2)[0]]++
		}
	}
	t.Logf("settled %d and %d; charged to Redis on reconciliation: %d local tickets, %d shared tickets expired during the outage",
		done[0].Load(), done[1].Load(), kinds["local"], kinds["late"])
}

func fmtBudgets(b budgets) string {
	return "tokens " + strconv.FormatInt(b.day, 10) + "/" + strconv.FormatInt(b.month, 10) +
		" gpu " + strconv.FormatInt(b.gpu, 10) + " cost " + strconv.FormatInt(b.cost, 10)
}
