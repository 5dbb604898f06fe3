package leasequota_test

import (
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// slotPair returns two engines (instances a and b) on one store whose
// background loops run every refresh of real time (an hour: never, in a
// test).
func slotPair(t *testing.T, clk *quotatest.Clock, refresh time.Duration) (*leasequota.Store, *leasequota.Engine, *leasequota.Engine) {
	t.Helper()
	st := newStore(t, newClient(t), nil, leasequota.Options{Clock: clk.Now})
	var es [2]*leasequota.Engine
	for i := range es {
		e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now, Tenant: tenantResolver,
			Instance: "inst" + string(rune('a'+i)), Refresh: refresh})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		es[i] = e
	}
	return st, es[0], es[1]
}

// deptChain is a department of 2 slots and, inside it, a project.
func deptChain(project string, slots int64) []quota.Scope {
	dept := quota.Scope{Key: "t/acme/d1", Limits: &quota.Limits{Concurrency: quota.AtMost(2)}}
	p := quota.Scope{Key: "t/acme/d1/" + project}
	if slots > 0 {
		p.Limits = &quota.Limits{Concurrency: quota.AtMost(slots)}
	}
	return []quota.Scope{dept, p}
}

func slotAsk(chain []quota.Scope) quota.Request {
	return quota.Request{Chain: chain, Ask: quota.Ask{Concurrency: true}, TTL: time.Hour}
}

// TestRefusedAcquireGivesBackItsLeases: an acquire refused at the project
// gives back the department slot it leased on the way, at once: the other
// instance gets the department's second slot, and the store counts the
// one run going, not two.
func TestRefusedAcquireGivesBackItsLeases(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	st, a, b := slotPair(t, clk, time.Hour) // no background returns
	ctx := t.Context()
	lab := slotAsk(deptChain("lab", 1))
	if _, err := a.Acquire(ctx, lab); err != nil {
		t.Fatalf("lab's slot on a: %v", err)
	}
	var d *quota.Denial
	if _, err := a.Acquire(ctx, lab); !errors.As(err, &d) || d.Scope != "t/acme/d1/lab" {
		t.Fatalf("lab's second slot on a: %v, want a denial at the project", err)
	}
	if _, slots := readUse(t, st, "t/acme/d1"); slots != 1 {
		t.Errorf("after the refusal the store counts %d department slots, want 1 (the run going)", slots)
	}
	web := slotAsk(deptChain("web", 0))
	if _, err := b.Acquire(ctx, web); err != nil {
		t.Fatalf("web's slot on b, with 1 of the department's 2 in use: %v", err)
	}
	if _, err := b.Acquire(ctx, web); !errors.As(err, &d) || d.Scope != "t/acme/d1" || d.Used != 2 {
		t.Fatalf("a third slot: %v, want a denial at the department with 2 used", err)
	}
}

// TestIdleSlotLeaseGoesBack: a slot an instance holds after its run ended
// goes back to the store once the instance has been idle a few refreshes,
// so that another instance is not refused for a run that no longer exists.
// (Instances kept the largest ask seen: one slot each, for as long as they
// stayed idle.)
func TestIdleSlotLeaseGoesBack(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	st, a, b := slotPair(t, clk, 10*time.Millisecond)
	ctx := t.Context()
	web := slotAsk(deptChain("web", 0))
	tk, err := a.Acquire(ctx, web)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Settle(ctx, tk.ID, quota.Usage{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, web); err != nil {
		t.Fatalf("b's first slot: %v", err)
	}
	// a's loop runs every 10 ms of real time; a few rounds make it idle.
	// Measured: 40 ms. Allowed: 5 s.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := b.Acquire(ctx, web)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			_, slots := readUse(t, st, "t/acme/d1")
			t.Fatalf("b's second slot, with a idle for 5 s: %v (the store counts %d slots; b holds 1)", err, slots)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, slots := readUse(t, st, "t/acme/d1"); slots != 2 {
		t.Errorf("the store counts %d department slots, want 2 (b's two runs)", slots)
	}
}

// TestFreedSlotOfAFullLimitGoesBackAtOnce: a run that ends on one
// instance while its scope's limit is full gives its slot back to the
// store with the settle, not a few refreshes later: the next run, on
// another instance, is admitted at once. (It was refused until the first
// instance's lease went idle.)
func TestFreedSlotOfAFullLimitGoesBackAtOnce(t *testing.T) {
	clk := quotatest.NewClock(time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC))
	st, a, b := slotPair(t, clk, time.Hour) // no background returns
	ctx := t.Context()
	one := slotAsk([]quota.Scope{{Key: "t/acme/u1", Limits: &quota.Limits{Concurrency: quota.AtMost(1)}}})
	for i := range 3 {
		tk, err := a.Acquire(ctx, one)
		if err != nil {
			t.Fatalf("run %d on a: %v", i, err)
		}
		if _, err := b.Acquire(ctx, one); err == nil {
			t.Fatalf("run %d: b admitted a second run under a limit of 1", i)
		}
		if _, err := a.Settle(ctx, tk.ID, quota.Usage{}); err != nil {
			t.Fatal(err)
		}
		tb, err := b.Acquire(ctx, one)
		if err != nil {
			t.Fatalf("run %d: b refused right after a's run ended: %v", i, err)
		}
		if _, err := b.Settle(ctx, tb.ID, quota.Usage{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, slots := readUse(t, st, "t/acme/u1"); slots != 0 {
		t.Errorf("the store counts %d slots with no run going, want 0", slots)
	}
}
