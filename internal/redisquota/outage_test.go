package redisquota_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
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

func newOutageCluster(t *testing.T, n int, o redisquota.Options, fo quota.FailoverOptions, extra ...string) *outageCluster {
	t.Helper()
	oc := &outageCluster{srv: dedicatedServer(t, extra...), clk: newClock(),
		prefix: "out" + strconv.FormatInt(prefixSeq.Add(1), 10)}
	o.Prefix, o.Clock = oc.prefix, oc.clk.Now
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	for range n {
		// No retries in go-redis: a dead Redis fails the call at once.
		c := redis.NewClient(&redis.Options{Addr: oc.srv.addr, ContextTimeoutEnabled: true, MaxRetries: -1,
			DialTimeout: time.Second, DialerRetries: 1})
		t.Cleanup(func() { c.Close() })
		b, err := redisquota.New(c, o)
		if err != nil {
			t.Fatal(err)
		}
		fo := fo
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
			oc := newOutageCluster(t, 3, redisquota.Options{}, quota.FailoverOptions{}, "--appendonly", "yes", "--appendfsync", "no")
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
