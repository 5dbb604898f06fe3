package quota_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// flaky is a shared backend that can be taken down: every call then fails
// with ErrUnavailable, as a Redis backend does when Redis is unreachable.
type flaky struct {
	*quota.Memory
	down atomic.Bool
}

func (f *flaky) err() error {
	if f.down.Load() {
		return quota.ErrUnavailable
	}
	return nil
}

func (f *flaky) Acquire(ctx context.Context, r quota.Request) (quota.Ticket, error) {
	if err := f.err(); err != nil {
		return quota.Ticket{}, err
	}
	return f.Memory.Acquire(ctx, r)
}

func (f *flaky) Settle(ctx context.Context, id string, u quota.Usage) (quota.Settlement, error) {
	if err := f.err(); err != nil {
		return quota.Settlement{}, err
	}
	return f.Memory.Settle(ctx, id, u)
}

func (f *flaky) Charge(ctx context.Context, id string, chain []quota.Scope, u quota.Usage, at time.Time) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Memory.Charge(ctx, id, chain, u, at)
}

func (f *flaky) Use(ctx context.Context, key string) (quota.ScopeUse, error) {
	if err := f.err(); err != nil {
		return quota.ScopeUse{}, err
	}
	return f.Memory.Use(ctx, key)
}

// TestFailoverPassesSuiteWhenHealthy: with the shared backend up, Failover
// behaves exactly as the backend it wraps.
func TestFailoverPassesSuiteWhenHealthy(t *testing.T) {
	quotatest.Run(t, func(t *testing.T) (quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC))
		shared := &flaky{Memory: quota.NewMemory(quota.Options{Now: clk.Now})}
		f := quota.NewFailover(shared, quota.FailoverOptions{Probe: func(context.Context) error { return shared.err() }, Local: quota.Options{Now: clk.Now}})
		t.Cleanup(func() { f.Close() })
		return f, clk
	})
}

func TestFailoverOutage(t *testing.T) {
	ctx := context.Background()
	const instances = 3
	var modes []string
	var mu sync.Mutex
	newInstance := func(shared *flaky) *quota.Failover {
		return quota.NewFailover(shared, quota.FailoverOptions{
			Instances: func() int { return instances },
			Probe:     func(context.Context) error { return shared.err() },
			OnMode: func(m string) {
				mu.Lock()
				modes = append(modes, m)
				mu.Unlock()
			},
			ProbeInterval: 10 * time.Millisecond,
		})
	}
	shared := &flaky{Memory: quota.NewMemory(quota.Options{})}
	defer shared.Memory.Close()
	// Three instances share one backend (one flaky value: they all lose it
	// together, as instances lose one Redis).
	var fs []*quota.Failover
	for range instances {
		fs = append(fs, newInstance(shared))
	}
	user := &quota.Limits{TokensDay: quota.AtMost(9000), Concurrency: quota.AtMost(6)}
	strict := &quota.Limits{TokensDay: quota.AtMost(1000), OnOutage: quota.OutageDeny}
	chain := []quota.Scope{{Key: "global"}, {Key: "user/u", Limits: user}}
	strictChain := []quota.Scope{{Key: "global"}, {Key: "user/s", Limits: strict}}

	settled := int64(0)
	acquire := func(f *quota.Failover, tokens int64) (quota.Ticket, error) {
		return f.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: tokens}})
	}
	// Before the outage: 3 admissions of 500 tokens, settled at 400.
	for i := range 3 {
		tk, err := acquire(fs[i], 500)
		if err != nil {
			t.Fatalf("before the outage: %v", err)
		}
		if _, err := fs[i].Settle(ctx, tk.ID, quota.Usage{InputTokens: 400}); err != nil {
			t.Fatal(err)
		}
		settled += 400
	}
	// A ticket open across the outage.
	open, err := acquire(fs[0], 300)
	if err != nil {
		t.Fatal(err)
	}

	shared.down.Store(true)
	// No caller sees an outage error: each instance degrades and admits
	// its own share of what was left when the store went away: 9000 minus
	// the 1,200 settled and the 300 still reserved, divided by 3 = 2500.
	perInstance := make([]int64, instances)
	for i, f := range fs {
		for {
			tk, err := acquire(f, 250)
			var d *quota.Denial
			if errors.As(err, &d) {
				break
			}
			if err != nil {
				t.Fatalf("instance %d during the outage: %v", i, err)
			}
			perInstance[i] += 250
			if _, err := f.Settle(ctx, tk.ID, quota.Usage{InputTokens: 200, OutputTokens: 50}); err != nil {
				t.Fatal(err)
			}
			settled += 250
		}
		if !f.Degraded() {
			t.Fatalf("instance %d not degraded", i)
		}
	}
	for i, n := range perInstance {
		if n != 2500 {
			t.Errorf("instance %d admitted %d tokens while degraded, want its share 2500", i, n)
		}
	}
	// A scope that says on_outage: deny refuses, with ErrUnavailable.
	if _, err := fs[1].Acquire(ctx, quota.Request{Chain: strictChain, Ask: quota.Ask{Tokens: 1}}); !errors.Is(err, quota.ErrUnavailable) {
		t.Fatalf("on_outage deny: got %v, want ErrUnavailable", err)
	}
	// The ticket opened before the outage settles into the spool.
	if _, err := fs[0].Settle(ctx, open.ID, quota.Usage{InputTokens: 100}); err != nil {
		t.Fatalf("settling a shared ticket during the outage: %v", err)
	}
	settled += 100

	// Recovery takes a few probe intervals (10 ms); the minute is for a
	// loaded machine, and how long it took is only logged.
	shared.down.Store(false)
	back := time.Now()
	for i, f := range fs {
		deadline := back.Add(time.Minute)
		for f.Degraded() || f.Spooled() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("instance %d did not recover: degraded=%v spooled=%d", i, f.Degraded(), f.Spooled())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	t.Logf("every instance recovered %s after the store came back", time.Since(back).Round(time.Millisecond))
	// The shared counters hold every settled token exactly once.
	use, err := shared.Memory.Use(ctx, "user/u")
	if err != nil {
		t.Fatal(err)
	}
	if use.TokensDay.Used != settled {
		t.Fatalf("shared counter after recovery: %d tokens, want the %d settled", use.TokensDay.Used, settled)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(modes) != 2*instances {
		t.Fatalf("mode transitions: %v, want degraded and normal per instance", modes)
	}
	for _, f := range fs {
		f.Close()
	}
}
