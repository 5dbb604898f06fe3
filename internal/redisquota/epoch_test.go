package redisquota_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// TestEpoch checks that a backend with RequireEpoch refuses to decide
// while the epoch is missing, changing nothing, and that Restore, Use and
// Lookup work without it (the rebuild needs them).
func TestEpoch(t *testing.T) {
	ctx := context.Background()
	c := newClient(t, sharedServer(t).addr)
	b, prefix := newBackend(t, c, redisquota.Options{RequireEpoch: true})
	lim := &quota.Limits{TokensDay: quota.AtMost(1000)}
	chain := []quota.Scope{{Key: "u/1", Limits: lim}}
	ask := quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1, Tokens: 100}, TTL: time.Minute}
	lost := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, redisquota.ErrEpochLost) || !errors.Is(err, redisquota.ErrUnavailable) ||
			!errors.Is(err, quota.ErrUnavailable) || !errors.Is(err, quota.ErrStateLost) {
			t.Fatalf("%s without epoch: got %v, want ErrEpochLost", what, err)
		}
	}

	if v, err := b.Epoch(ctx); err != nil || v != "" {
		t.Fatalf("Epoch: got %q, %v, want none", v, err)
	}
	_, err := b.Acquire(ctx, ask)
	lost("Acquire", err)
	lost("Charge", b.Charge(ctx, "c1", chain, quota.Usage{InputTokens: 5}, time.Now()))
	if n, err := c.Keys(ctx, "{"+prefix+"}:*").Result(); err != nil || len(n) != 0 {
		t.Fatalf("keys after refusals: got %v, %v, want none", n, err)
	}

	// The rebuild: Restore and Use need no epoch.
	day := time.Now().UTC().Truncate(24 * time.Hour)
	if err := b.Restore(ctx, "u/1", quota.DimTokens, quota.WindowDay, day, 300); err != nil {
		t.Fatalf("Restore without epoch: %v", err)
	}
	if u, err := b.Use(ctx, "u/1"); err != nil || u.TokensDay.Used != 300 {
		t.Fatalf("Use without epoch: got %+v, %v, want 300 used today", u.TokensDay, err)
	}

	// The lock: one owner at a time, released only by its owner.
	if ok, err := b.LockRebuild(ctx, "a", time.Minute); !ok || err != nil {
		t.Fatalf("LockRebuild a: got %v, %v, want true", ok, err)
	}
	if ok, err := b.LockRebuild(ctx, "b", time.Minute); ok || err != nil {
		t.Fatalf("LockRebuild b while a holds it: got %v, %v, want false", ok, err)
	}
	if err := b.UnlockRebuild(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.LockRebuild(ctx, "b", time.Minute); ok {
		t.Fatal("UnlockRebuild by b released a's lock")
	}
	if err := b.UnlockRebuild(ctx, "a"); err != nil {
		t.Fatal(err)
	}

	readAt := time.Now().Round(0)
	v := redisquota.NewEpoch(readAt)
	if err := b.SetEpoch(ctx, v); err != nil {
		t.Fatalf("SetEpoch: %v", err)
	}
	if got, err := b.Epoch(ctx); err != nil || got != v {
		t.Fatalf("Epoch: got %q, %v, want %q", got, err, v)
	}
	if at, ok := redisquota.EpochReadAt(v); !ok || !at.Equal(readAt) {
		t.Fatalf("EpochReadAt: got %v, %v, want %v", at, ok, readAt)
	}
	tk, err := b.Acquire(ctx, ask)
	if err != nil {
		t.Fatalf("Acquire with epoch: %v", err)
	}
	if r := tk.Remaining[2]; r.Remaining != 600 {
		t.Fatalf("tokens/day left after the restored 300 and 100 reserved: got %d, want 600", r.Remaining)
	}
	if _, err := b.Heartbeat(ctx, tk.ID, time.Minute); err != nil {
		t.Fatalf("Heartbeat with epoch: %v", err)
	}

	// The epoch goes (FLUSHALL would take the rest too): the ticket can
	// neither be kept alive nor settled, and the use stays as it was.
	if err := c.Del(ctx, "{"+prefix+"}:epoch").Err(); err != nil {
		t.Fatal(err)
	}
	_, err = b.Heartbeat(ctx, tk.ID, time.Minute)
	lost("Heartbeat", err)
	_, err = b.Settle(ctx, tk.ID, quota.Usage{InputTokens: 10})
	lost("Settle", err)
	if u, err := b.Use(ctx, "u/1"); err != nil || u.TokensDay.Used != 400 {
		t.Fatalf("Use after refused settle: got %+v, %v, want 400 used (300 restored, 100 reserved)", u.TokensDay, err)
	}
	if info, err := b.Lookup(ctx, tk.ID); err != nil || info.Settled {
		t.Fatalf("Lookup without epoch: got %+v, %v, want the live ticket", info, err)
	}
}
