package quota_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// TestFailoverRebuild: the shared backend comes back having lost its state.
// The Failover stays degraded while Rebuild fails, then drops the spooled
// usage from before the ledger was read (the rebuilt counters hold it) and
// delivers the rest.
func TestFailoverRebuild(t *testing.T) {
	ctx := context.Background()
	shared := &flaky{Memory: quota.NewMemory(quota.Options{})}
	var lost, refuse atomic.Bool
	var readAt atomic.Pointer[time.Time]
	var rebuilds atomic.Int64
	f := quota.NewFailover(shared, quota.FailoverOptions{
		ProbeInterval: 5 * time.Millisecond,
		Probe: func(context.Context) error {
			if err := shared.err(); err != nil {
				return err
			}
			if lost.Load() {
				return quota.ErrStateLost
			}
			return nil
		},
		Rebuild: func(context.Context) (time.Time, error) {
			rebuilds.Add(1)
			if refuse.Load() {
				return time.Time{}, errors.New("another instance is rebuilding")
			}
			lost.Store(false)
			return *readAt.Load(), nil
		},
	})
	defer f.Close()
	lim := &quota.Limits{TokensDay: quota.AtMost(1000)}
	spend := func(scope string) string {
		t.Helper()
		tk, err := f.Acquire(ctx, quota.Request{Chain: []quota.Scope{{Key: scope, Limits: lim}}, Ask: quota.Ask{Requests: 1, Tokens: 10}})
		if err != nil {
			t.Fatalf("Acquire %s: %v", scope, err)
		}
		if _, err := f.Settle(ctx, tk.ID, quota.Usage{InputTokens: 7}); err != nil {
			t.Fatalf("Settle %s: %v", scope, err)
		}
		return tk.ID
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s", what)
			}
		}
	}

	shared.down.Store(true)
	before := spend("u/before") // settled and committed before the ledger is read: in the ledger
	f.Committed(before, time.Now())
	inflight := spend("u/inflight") // settled before the read, its event committed after: not in it
	time.Sleep(2 * time.Millisecond)
	now := time.Now()
	readAt.Store(&now)
	time.Sleep(2 * time.Millisecond)
	f.Committed(inflight, time.Now())
	after := spend("u/after") // settled after: not in the ledger
	f.Committed(after, time.Now())
	if !f.Degraded() || f.Spooled() != 3 {
		t.Fatalf("got degraded %v with %d spooled, want degraded with 3", f.Degraded(), f.Spooled())
	}

	// Redis answers, empty, and another instance holds the rebuild lock.
	refuse.Store(true)
	lost.Store(true)
	shared.down.Store(false)
	waitFor("rebuild tried", func() bool { return rebuilds.Load() >= 3 })
	if !f.Degraded() || f.Spooled() != 3 {
		t.Fatalf("while not rebuilt: got degraded %v with %d spooled, want degraded with 3", f.Degraded(), f.Spooled())
	}

	refuse.Store(false)
	waitFor("normal mode", func() bool { return !f.Degraded() && f.Spooled() == 0 })
	// u/inflight is the case a settlement's own time got wrong: spooled
	// before the read, committed after it, it was in neither the rebuilt
	// counters nor the delivered spool.
	for scope, want := range map[string]int64{"u/before": 0, "u/inflight": 7, "u/after": 7} {
		u, err := shared.Use(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		if u.TokensDay.Used != want {
			t.Errorf("%s: got %d tokens charged to the shared backend, want %d", scope, u.TokensDay.Used, want)
		}
	}
}

// TestFailoverRebuildSplitsMergedCharges: local settlements of one chain
// merge into one spooled charge; when the rebuild's ledger read falls
// between two of them, the rebuilt counters hold the first and the
// delivered charge must hold only the second (it counted both, a double
// count, before each settlement kept its time).
func TestFailoverRebuildSplitsMergedCharges(t *testing.T) {
	ctx := context.Background()
	shared := &flaky{Memory: quota.NewMemory(quota.Options{})}
	var lost atomic.Bool
	var readAt atomic.Pointer[time.Time]
	f := quota.NewFailover(shared, quota.FailoverOptions{
		ProbeInterval: 5 * time.Millisecond,
		ReadmitHold:   -1,
		Probe: func(context.Context) error {
			if err := shared.err(); err != nil {
				return err
			}
			if lost.Load() {
				return quota.ErrStateLost
			}
			return nil
		},
		Rebuild: func(context.Context) (time.Time, error) {
			lost.Store(false)
			return *readAt.Load(), nil
		},
	})
	defer f.Close()
	chain := []quota.Scope{{Key: "u/same", Limits: &quota.Limits{TokensDay: quota.AtMost(1000)}}}
	spend := func(n int64) {
		t.Helper()
		tk, err := f.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 10}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Settle(ctx, tk.ID, quota.Usage{InputTokens: n}); err != nil {
			t.Fatal(err)
		}
		f.Committed(tk.ID, time.Now()) // its event, as the meter commits it
	}
	shared.down.Store(true)
	spend(7) // before the ledger read: the rebuilt counters hold it
	time.Sleep(2 * time.Millisecond)
	now := time.Now()
	readAt.Store(&now)
	time.Sleep(2 * time.Millisecond)
	spend(5) // after: the spool must deliver it
	if f.Spooled() != 1 {
		t.Fatalf("%d spooled, want the two settlements merged into one charge", f.Spooled())
	}
	lost.Store(true)
	shared.down.Store(false)
	for deadline := time.Now().Add(30 * time.Second); f.Degraded() || f.Spooled() > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not back to normal with an empty spool within 30s")
		}
	}
	u, err := shared.Use(ctx, "u/same")
	if err != nil {
		t.Fatal(err)
	}
	if u.TokensDay.Used != 5 {
		t.Errorf("charged %d tokens to the rebuilt backend, want 5 (the 7 before the read are in the ledger)", u.TokensDay.Used)
	}
}
