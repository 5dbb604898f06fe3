package sqlstore

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/run"
)

// TestInterruptRuns: runs left open past their deadline (or, recorded
// before runs had one, past the legacy life) end as interrupted, once;
// runs within their deadline and ended runs are left alone; and the
// instance's own late record still wins.
func TestInterruptRuns(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func(*testing.T) *Store) {
		testInterruptRuns(t, open(t))
	})
}

func testInterruptRuns(t *testing.T, s *Store) {
	ctx := context.Background()
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { x := now.Add(d); return &x }
	runs := map[string]*run.Record{
		"run_lost":      {Status: run.StatusRunning, StartedAt: now.Add(-time.Hour), DeadlineAt: at(-50 * time.Minute)},
		"run_cancel":    {Status: run.StatusCancelling, StartedAt: now.Add(-time.Hour), DeadlineAt: at(-50 * time.Minute)},
		"run_live":      {Status: run.StatusRunning, StartedAt: now.Add(-time.Minute), DeadlineAt: at(9 * time.Minute)},
		"run_grace":     {Status: run.StatusRunning, StartedAt: now.Add(-11 * time.Minute), DeadlineAt: at(-time.Minute)},
		"run_ended":     {Status: run.StatusSucceeded, StartedAt: now.Add(-time.Hour), DeadlineAt: at(-50 * time.Minute), EndedAt: at(-55 * time.Minute)},
		"run_legacy":    {Status: run.StatusRunning, StartedAt: now.Add(-25 * time.Hour)},
		"run_legacynew": {Status: run.StatusRunning, StartedAt: now.Add(-time.Hour)},
	}
	for id, r := range runs {
		r.ID, r.FlowID, r.TenantID = id, "flw_1", "ten_1"
		if err := s.InsertRun(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Two minutes of grace: run_grace's deadline is within it.
	n, err := s.InterruptRuns(ctx, now.Add(-2*time.Minute), 24*time.Hour, "its instance stopped")
	if err != nil || n != 3 {
		t.Fatalf("InterruptRuns: %d, %v; want 3 (lost, cancelling, legacy)", n, err)
	}
	want := map[string]run.Status{"run_lost": run.StatusInterrupted, "run_cancel": run.StatusInterrupted, "run_legacy": run.StatusInterrupted,
		"run_live": run.StatusRunning, "run_grace": run.StatusRunning, "run_ended": run.StatusSucceeded, "run_legacynew": run.StatusRunning}
	for id, st := range want {
		r, err := s.Run(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != st {
			t.Errorf("%s: %s, want %s", id, r.Status, st)
		}
		if st == run.StatusInterrupted && (r.EndedAt == nil || r.ErrorCode != "unavailable" || r.ErrorMessage != "its instance stopped") {
			t.Errorf("%s: ended %v, error %q %q; want ended at its deadline with the message", id, r.EndedAt, r.ErrorCode, r.ErrorMessage)
		}
	}
	if r, _ := s.Run(ctx, "run_lost"); r.EndedAt == nil || !r.EndedAt.Equal(*runs["run_lost"].DeadlineAt) {
		t.Errorf("run_lost ended at %v, want its deadline %v", r.EndedAt, runs["run_lost"].DeadlineAt)
	}
	if n, err := s.InterruptRuns(ctx, now.Add(-2*time.Minute), 24*time.Hour, "again"); err != nil || n != 0 {
		t.Fatalf("InterruptRuns again: %d, %v; want 0", n, err)
	}
	// The instance was only slow: its record replaces the guess.
	late := *runs["run_lost"]
	late.Status, late.EndedAt, late.ErrorCode, late.ErrorMessage = run.StatusSucceeded, at(-49*time.Minute), "", ""
	if err := s.FinishRun(ctx, &late); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Run(ctx, "run_lost"); r.Status != run.StatusSucceeded || r.DeadlineAt == nil {
		t.Errorf("after the late finish: %s, deadline %v; want succeeded with its deadline kept", r.Status, r.DeadlineAt)
	}
}
