package quota_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// holder is a flaky shared backend that can hold slots for local tickets
// (quota.SlotHolder), as the Redis engines do: a ticket of its own taking
// the slots. Memory checks the limit; the tests keep within it.
type holder struct {
	*flaky
	holds atomic.Int64
}

func (h *holder) HoldSlots(ctx context.Context, chain []quota.Scope, expires time.Time) (string, error) {
	if err := h.err(); err != nil {
		return "", err
	}
	tk, err := h.Memory.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Concurrency: true}, TTL: time.Until(expires)})
	if err != nil {
		return "", err
	}
	h.holds.Add(1)
	return tk.ID, nil
}

// TestFailoverHoldsLocalSlots: a run admitted on a local share during an
// outage is still running when the shared backend comes back. Back, the
// Failover admits nothing until ReadmitHold has passed (ErrUnavailable,
// not a local share), has the shared backend hold the run's slot, and
// only then decides on the shared backend, which so counts the run: a
// concurrency limit of 1 refuses a second run until the first settles.
// The control, a shared backend that cannot hold slots, admits the second
// run beside the first: two runs against a limit of 1.
func TestFailoverHoldsLocalSlots(t *testing.T) {
	for _, canHold := range []bool{true, false} {
		name := "holds"
		if !canHold {
			name = "control"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			fl := &flaky{Memory: quota.NewMemory(quota.Options{})}
			var shared quota.SharedBackend = fl
			h := &holder{flaky: fl}
			if canHold {
				shared = h
			}
			const hold = 300 * time.Millisecond
			f := quota.NewFailover(shared, quota.FailoverOptions{
				ProbeInterval: 5 * time.Millisecond,
				ReadmitHold:   hold,
				Probe:         func(context.Context) error { return fl.err() },
			})
			defer f.Close()
			chain := []quota.Scope{{Key: "u/a", Limits: &quota.Limits{Concurrency: quota.AtMost(1)}}}
			run := quota.Request{Chain: chain, Ask: quota.Ask{Concurrency: true}, TTL: time.Minute}

			fl.down.Store(true)
			local, err := f.Acquire(ctx, run)
			if err != nil || !f.Degraded() {
				t.Fatalf("Acquire during the outage: %v (degraded %v), want a local ticket", err, f.Degraded())
			}
			fl.down.Store(false)
			back := time.Now()
			waitUntil(t, "the first probe that sees the backend", func() bool {
				_, err := f.Acquire(ctx, run)
				return errors.Is(err, quota.ErrUnavailable)
			})
			if canHold {
				waitUntil(t, "the local run's slot held", func() bool { return h.holds.Load() == 1 })
			}
			waitUntil(t, "normal mode", func() bool { return !f.Degraded() })
			// A lower bound only, on the monotonic clock: the hold begins at
			// the Failover's first successful probe, after back, so a slow
			// machine can only make this longer.
			if waited := time.Since(back); waited < hold {
				t.Fatalf("back to normal %v after the backend answered, before the hold of %v", waited, hold)
			}
			second, err := f.Acquire(ctx, run)
			var d *quota.Denial
			switch {
			case canHold && !errors.As(err, &d):
				t.Fatalf("a second run beside the local one: got %v (ticket %q), want a concurrency denial", err, second.ID)
			case !canHold && err != nil:
				t.Fatalf("control: a second run beside the local one: %v, want it admitted (the backend cannot see the local run)", err)
			}
			if !canHold {
				return
			}
			if _, err := f.Settle(ctx, local.ID, quota.Usage{InputTokens: 1}); err != nil {
				t.Fatalf("Settle the local run: %v", err)
			}
			if tk, err := f.Acquire(ctx, run); err != nil {
				t.Fatalf("a run after the local one settled: %v, want it admitted (the held slot let go)", err)
			} else if _, err := f.Settle(ctx, tk.ID, quota.Usage{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// waitUntil polls cond for up to 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
	}
}

// TestLocalTicketElsewhere: a ticket admitted on a local share is known
// only to the instance that issued it. Another instance answers its
// settle, heartbeat and lookup ErrUnavailable (retry: a load balancer
// sends the retry on), not unknown; its issuer settles it.
func TestLocalTicketElsewhere(t *testing.T) {
	ctx := context.Background()
	shared := &flaky{Memory: quota.NewMemory(quota.Options{})}
	shared.down.Store(true)
	var fos [2]*quota.Failover
	for i := range fos {
		fos[i] = quota.NewFailover(shared, quota.FailoverOptions{ProbeInterval: time.Hour, TripAfter: 1,
			Probe: func(context.Context) error { return shared.err() }})
		defer fos[i].Close()
	}
	chain := []quota.Scope{{Key: "u/a", Limits: &quota.Limits{TokensDay: quota.AtMost(100)}}}
	tk, err := fos[0].Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 10}})
	if err != nil || !strings.HasPrefix(tk.ID, "~") {
		t.Fatalf("Acquire with the backend down: %q, %v; want a local ticket", tk.ID, err)
	}
	if _, err := fos[1].Settle(ctx, tk.ID, quota.Usage{InputTokens: 3}); !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("settle on another instance: %v, want ErrUnavailable", err)
	}
	if _, err := fos[1].Heartbeat(ctx, tk.ID, time.Minute); !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("heartbeat on another instance: %v, want ErrUnavailable", err)
	}
	if _, err := fos[1].Lookup(ctx, tk.ID); !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("lookup on another instance: %v, want ErrUnavailable", err)
	}
	if s, err := fos[0].Settle(ctx, tk.ID, quota.Usage{InputTokens: 3}); err != nil || s.Usage.InputTokens != 3 {
		t.Errorf("settle on its issuer: %+v, %v", s, err)
	}
	if _, err := fos[0].Settle(ctx, "~"+strings.Repeat("0", 16)+".tkt_nope", quota.Usage{}); !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("a local ticket of an instance nobody knows: %v, want ErrUnavailable", err)
	}
}
