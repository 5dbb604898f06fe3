package redisquota_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// TestInstances: two instances beating count 2 on both; one that stops
// beating drops out after the TTL; one that leaves drops out at once; and
// with Redis down, Last keeps the last count.
func TestInstances(t *testing.T) {
	srv := dedicatedServer(t)
	c := newClient(t, srv.addr)
	ctx := context.Background()
	prefix := "inst" + strconv.FormatInt(prefixSeq.Add(1), 10)
	const ttl = 300 * time.Millisecond
	a := redisquota.NewInstances(c, prefix, "a", ttl)
	b := redisquota.NewInstances(c, prefix, "b", ttl)
	count := func(r *redisquota.Instances) int {
		t.Helper()
		n, err := r.Count(ctx)
		if err != nil {
			t.Fatalf("Count: %v", err)
		}
		return n
	}
	if a.Last() != 1 {
		t.Errorf("Last before any beat: got %d, want 1", a.Last())
	}
	if n := count(a); n != 0 || a.Last() != 1 {
		t.Errorf("Count before any beat: got %d (Last %d), want 0 (Last 1)", n, a.Last())
	}
	for _, r := range []*redisquota.Instances{a, b} {
		if err := r.Beat(ctx); err != nil {
			t.Fatalf("Beat %s: %v", r.ID(), err)
		}
	}
	if b.Last() != 2 || count(a) != 2 || a.Last() != 2 {
		t.Fatalf("after both beat: got Last %d and %d, want 2", b.Last(), a.Last())
	}
	key := "{" + prefix + "}:instances"
	if pttl, err := c.PTTL(ctx, key).Result(); err != nil || pttl <= 0 || pttl > ttl {
		t.Errorf("registry TTL: got %v, %v, want within %v", pttl, err, ttl)
	}

	// b stops beating; a goes on until b's last beat is older than ttl.
	waitFor(t, 10*time.Second, "b dropping out", func() bool {
		if err := a.Beat(ctx); err != nil {
			t.Fatalf("Beat: %v", err)
		}
		return a.Last() == 1
	})
	if n, err := c.ZCard(ctx, key).Result(); err != nil || n != 1 {
		t.Errorf("registry members after a beat: got %d, %v, want 1 (b's beat removed)", n, err)
	}

	// Run beats and keeps the count; leaving is immediate.
	runCtx, stopB := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(runCtx, 20*time.Millisecond) })
	waitFor(t, 10*time.Second, "b running and counted", func() bool {
		return b.Last() == 2 && count(a) == 2
	})
	stopB()
	wg.Wait()
	if n := count(a); n != 1 {
		t.Errorf("after b's Run returned: got %d, want 1 (b left)", n)
	}

	// Redis down: Beat and Count fail as an outage, Last keeps its count.
	runCtx, stopB = context.WithCancel(ctx)
	defer stopB()
	wg.Go(func() { b.Run(runCtx, 20*time.Millisecond) })
	waitFor(t, 10*time.Second, "b running again", func() bool { return b.Last() == 2 && count(a) == 2 })
	srv.kill()
	for _, err := range []error{a.Beat(ctx), func() error { _, err := a.Count(ctx); return err }()} {
		if !errors.Is(err, redisquota.ErrUnavailable) || !errors.Is(err, quota.ErrUnavailable) {
			t.Errorf("Redis down: got %v, want ErrUnavailable", err)
		}
	}
	time.Sleep(10 * 20 * time.Millisecond) // b's Run fails a few beats
	if a.Last() != 2 || b.Last() != 2 {
		t.Errorf("Redis down: got Last %d and %d, want the last count 2", a.Last(), b.Last())
	}
	stopB()
	wg.Wait()
}
