package sqlstore

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/whatif"
)

// TestWhatIfReads streams a tenant's events and runs in time order (ids
// break ties), counts them up to a limit, and stops early without leaking
// the query, on both engines.
func TestWhatIfReads(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func(*testing.T) *Store) {
		testWhatIfReads(t, open(t))
	})
}

func testWhatIfReads(t *testing.T, s *Store) {
	ctx := context.Background()
	t0 := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	ev := func(id, tenant string, at time.Time) usage.Event {
		return usage.Event{ID: id, At: at, TenantID: tenant, UserID: "usr_1", Kind: "model_call", InputTokens: 1,
			Scopes: []string{"global", "tenant/" + tenant}, Loc: time.UTC}
	}
	if _, err := s.RecordUsage(ctx, []usage.Event{
		ev("e3", "ten_a", t0.Add(time.Minute)), ev("e2", "ten_a", t0), ev("e1", "ten_a", t0), ev("e4", "ten_b", t0),
		ev("e0", "ten_a", t0.Add(-time.Hour)), ev("e5", "ten_a", t0.Add(time.Hour)),
	}); err != nil {
		t.Fatal(err)
	}
	end := t0.Add(5 * time.Minute)
	for _, r := range []*run.Record{
		{ID: "run_2", FlowID: "f", TenantID: "ten_a", UserID: "usr_1", Status: run.StatusRunning, StartedAt: t0.Add(time.Second)},
		{ID: "run_1", FlowID: "f", TenantID: "ten_a", UserID: "usr_1", Status: run.StatusSucceeded, StartedAt: t0, EndedAt: &end},
		{ID: "run_3", FlowID: "f", TenantID: "ten_b", UserID: "usr_2", Status: run.StatusSucceeded, StartedAt: t0, EndedAt: &end},
	} {
		if err := s.InsertRun(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	from, to := t0.Add(-time.Minute), t0.Add(30*time.Minute)

	var ids []string
	for e, err := range s.WhatIfEvents(ctx, "ten_a", from, to) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	if want := []string{"e1", "e2", "e3"}; !slices.Equal(ids, want) {
		t.Errorf("ten_a's events: got %v, want %v", ids, want)
	}
	ids = nil
	for e, err := range s.WhatIfEvents(ctx, "", from, to) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	if want := []string{"e1", "e2", "e4", "e3"}; !slices.Equal(ids, want) {
		t.Errorf("every tenant's events: got %v, want %v", ids, want)
	}

	var runs []whatif.Run
	for r, err := range s.WhatIfRuns(ctx, "ten_a", from, to) {
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	if len(runs) != 2 || runs[0].ID != "run_1" || !runs[0].End.Equal(end) || !runs[0].Start.Equal(t0) || runs[1].ID != "run_2" || !runs[1].End.IsZero() {
		t.Errorf("ten_a's runs: got %+v, want run_1 (ended) then run_2 (never ended)", runs)
	}

	for _, c := range []struct {
		tenant string
		limit  int
		want   int
	}{{"ten_a", 100, 5}, {"", 100, 7}, {"ten_a", 1, 4}, {"ten_b", 0, 2}} {
		if n, err := s.WhatIfCount(ctx, c.tenant, from, to, c.limit); err != nil || n != c.want {
			t.Errorf("WhatIfCount(%q, limit %d) = %d, %v, want %d", c.tenant, c.limit, n, err, c.want)
		}
	}

	// Stopping early closes the query: many more reads still work.
	for range 20 {
		for _, err := range s.WhatIfEvents(ctx, "", from, to) {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if n, err := s.WhatIfCount(ctx, "", from, to, 100); err != nil || n != 7 {
		t.Errorf("after early stops: WhatIfCount = %d, %v, want 7", n, err)
	}
}
