package redisquota

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
)

// scriptCounter counts script runs: each starts with one EVALSHA (a
// NOSCRIPT reply adds an EVAL, once per script and server).
type scriptCounter struct{ n atomic.Int64 }

func (h *scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "evalsha" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestClockSkew: when this instance's clock is days off Redis's, the
// windows it computes do not hold Redis's now; Acquire computes them again
// around Redis's now and decides in a second round trip.
func TestClockSkew(t *testing.T) {
	c := luaClient(t)
	h := &scriptCounter{}
	c.AddHook(h)
	b, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b.wall = func() time.Time { return time.Now().Add(72 * time.Hour) }
	ctx := context.Background()
	lim := &quota.Limits{TokensDay: quota.AtMost(100)}
	chain := []quota.Scope{{Key: "t/a", Limits: lim}}
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 100}}); err != nil {
		t.Fatalf("Acquire with a skewed clock: %v", err)
	}
	if got := h.n.Load(); got != 2 {
		t.Errorf("round trips: got %d, want 2", got)
	}
	var d *quota.Denial
	_, err = b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1}})
	if !errors.As(err, &d) {
		t.Fatalf("second Acquire: got %v, want a denial", err)
	}
	// The window is Redis's today, not the skewed clock's.
	y, m, day := time.Now().UTC().Date()
	end := time.Date(y, m, day+1, 0, 0, 0, 0, time.UTC)
	if !d.ResetAt.Equal(end) && !d.ResetAt.Equal(end.AddDate(0, 0, 1)) {
		t.Errorf("ResetAt: got %v, want %v", d.ResetAt, end)
	}
}

// TestChargeClockSkew: Charge, like Acquire, recomputes the windows around
// Redis's now when this instance's clock is days off.
func TestChargeClockSkew(t *testing.T) {
	c := luaClient(t)
	h := &scriptCounter{}
	c.AddHook(h)
	b, err := New(c, Options{Prefix: "skewcharge"})
	if err != nil {
		t.Fatal(err)
	}
	b.wall = func() time.Time { return time.Now().Add(-72 * time.Hour) }
	ctx := context.Background()
	if err := b.Charge(ctx, "id", []quota.Scope{{Key: "t/a"}}, quota.Usage{InputTokens: 9}, time.Now()); err != nil {
		t.Fatalf("Charge with a skewed clock: %v", err)
	}
	if got := h.n.Load(); got != 2 {
		t.Errorf("round trips: got %d, want 2", got)
	}
	u, err := b.Use(ctx, "t/a")
	if err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); u.TokensDay.Used != 9 || now.Before(u.TokensDay.Start) || !now.Before(u.TokensDay.End.Add(time.Minute)) {
		t.Errorf("Use: got %d tokens in the day %v–%v, want 9 in Redis's today", u.TokensDay.Used, u.TokensDay.Start, u.TokensDay.End)
	}
}
