package whatif_test

import (
	"context"
	"encoding/json"
	"iter"
	"slices"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/whatif"
)

// ledger is a synthetic ledger in memory.
type ledger struct {
	events []usage.Event
	runs   []whatif.Run
	reads  int // how many times a sequence was read
}

var _ whatif.Ledger = (*ledger)(nil)

func (l *ledger) WhatIfCount(_ context.Context, tenantID string, from, to time.Time, limit int) (int, error) {
	n := 0
	for _, e := range l.events {
		if (tenantID == "" || e.TenantID == tenantID) && !e.At.Before(from) && e.At.Before(to) {
			n++
		}
	}
	for _, r := range l.runs {
		if (tenantID == "" || r.TenantID == tenantID) && !r.Start.Before(from) && r.Start.Before(to) {
			n++
		}
	}
	return min(n, limit+1), nil
}

func (l *ledger) WhatIfEvents(_ context.Context, tenantID string, from, to time.Time) iter.Seq2[usage.Event, error] {
	l.reads++
	return func(yield func(usage.Event, error) bool) {
		for _, e := range l.events {
			if (tenantID == "" || e.TenantID == tenantID) && !e.At.Before(from) && e.At.Before(to) && !yield(e, nil) {
				return
			}
		}
	}
}

func (l *ledger) WhatIfRuns(_ context.Context, tenantID string, from, to time.Time) iter.Seq2[whatif.Run, error] {
	l.reads++
	return func(yield func(whatif.Run, error) bool) {
		for _, r := range l.runs {
			if (tenantID == "" || r.TenantID == tenantID) && !r.Start.Before(from) && r.Start.Before(to) && !yield(r, nil) {
				return
			}
		}
	}
}

// The synthetic tree: tenant acme (UTC), project web, users ann and bob.
const (
	tenant  = "ten_acme"
	project = "prj_web"
	ann     = "usr_ann"
	bob     = "usr_bob"
)

func spec(t *testing.T, s string) policy.Spec {
	t.Helper()
	var out policy.Spec
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// draft is the policy with limits per scope.
func draft(t *testing.T, now time.Time, limits map[string]string) *whatif.Draft {
	t.Helper()
	d := &policy.Data{Tree: policy.Tree{
		Tenants:  []policy.TreeTenant{{ID: tenant, Name: "acme", Timezone: "UTC"}},
		Projects: []policy.TreeProject{{ID: project, TenantID: tenant, Name: "web"}},
	}}
	for scope, l := range limits {
		d.Scopes = append(d.Scopes, &policy.ScopeLimits{Scope: scope, TenantID: tenant, Limits: spec(t, l)})
	}
	return &whatif.Draft{Snapshot: policy.NewSnapshot(d, policy.Spec{}, 1, now)}
}

// call is a model call's usage event: 50 tokens in, 50 out.
func call(id string, at time.Time, user string) usage.Event {
	return usage.Event{ID: id, At: at, TenantID: tenant, UserID: user, ProjectID: project, Kind: "model_call", Model: "m",
		InputTokens: 50, OutputTokens: 50,
		Scopes: []string{"global", "tenant/" + tenant, "project/" + project, "user/" + user, "membership/" + user + "@" + project}}
}

// day is the replay's clock: the window is [day, day+24h).
var day = time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC)

// tenHours are ten calls of 100 tokens by ann, one an hour from 01:00.
func tenHours() *ledger {
	l := &ledger{}
	for i := range 10 {
		l.events = append(l.events, call("e"+string(rune('0'+i)), day.Add(time.Duration(i+1)*time.Hour), ann))
	}
	return l
}

func replay(t *testing.T, l whatif.Ledger, d *whatif.Draft, tenantID string, opts whatif.Options) *whatif.Report {
	t.Helper()
	rep, err := whatif.Replay(context.Background(), l, d, tenantID, 24*time.Hour, day.Add(24*time.Hour), opts)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func wallOf(t *testing.T, rep *whatif.Report, scope, dim string) whatif.Wall {
	t.Helper()
	for _, w := range rep.Walls {
		if w.Scope == scope && w.Dimension == dim {
			return w
		}
	}
	t.Fatalf("no wall at %s %s in %+v", scope, dim, rep.Walls)
	return whatif.Wall{}
}

func TestTighterDraftDeniesExactlyTheCallsPastTheBudget(t *testing.T) {
	// 500 tokens a day for the project: the first five calls fit, the
	// sixth finds nothing left (less than its minimum of 66), and so does
	// every one after it.
	rep := replay(t, tenHours(), draft(t, day, map[string]string{"project/" + project: `{"tokens":"500/day"}`}), "", whatif.Options{})
	if len(rep.Walls) != 1 {
		t.Fatalf("got %d walls, want 1: %+v", len(rep.Walls), rep.Walls)
	}
	w := wallOf(t, rep, "project/"+project, "tokens")
	if w.Window != "day" || w.Limit != 500 || w.Name != "project web" {
		t.Errorf("got wall %+v, want project web's tokens/day of 500", w)
	}
	if w.Denied.Asks != 5 || w.Denied.Tokens != 500 || w.Denied.Requests != 0 || w.Denied.Runs != 0 {
		t.Errorf("got denied %+v, want 5 asks of 500 tokens", w.Denied)
	}
	if want := day.Add(6 * time.Hour); !w.FirstWallAt.Equal(want) {
		t.Errorf("got first wall at %s, want %s (the sixth call)", w.FirstWallAt, want)
	}
	if rep.Replayed.Events != 10 || rep.Replayed.Denied != 5 || rep.Replayed.Admitted != 5 || rep.Replayed.Clamped != 0 {
		t.Errorf("got replayed %+v, want 10 events, 5 admitted, 5 denied", rep.Replayed)
	}
}

func TestLooserDraftDeniesNothing(t *testing.T) {
	rep := replay(t, tenHours(), draft(t, day, map[string]string{"project/" + project: `{"tokens":"1000/day","requests":"10/min"}`}), "", whatif.Options{})
	if len(rep.Walls) != 0 || rep.Replayed.Denied != 0 || rep.Replayed.Admitted != 10 {
		t.Errorf("got walls %+v and %+v, want none and 10 admitted", rep.Walls, rep.Replayed)
	}
}

func TestBudgetNearItsEndClampsTheCall(t *testing.T) {
	// 580 a day: after five calls 80 remain, at least the sixth call's
	// minimum (50 in + 16 out): it is granted 80 (its output cut to 30),
	// which spends the budget, and the rest are denied.
	rep := replay(t, tenHours(), draft(t, day, map[string]string{"user/" + ann: `{"tokens":"580/day"}`}), "", whatif.Options{})
	w := wallOf(t, rep, "user/"+ann, "tokens")
	if w.Clamped.Asks != 1 || w.Clamped.Tokens != 20 {
		t.Errorf("got clamped %+v, want 1 ask cut by 20 tokens", w.Clamped)
	}
	if w.Denied.Asks != 4 {
		t.Errorf("got %d denied, want 4 (the budget is spent by the clamped call)", w.Denied.Asks)
	}
	if want := day.Add(6 * time.Hour); !w.FirstWallAt.Equal(want) {
		t.Errorf("got first wall at %s, want %s", w.FirstWallAt, want)
	}
}

func TestADeniedCallConsumesNothing(t *testing.T) {
	// Ann's calls past her own 300 a day are denied; bob's calls share the
	// project's 800: the denied ones of ann's leave room for all of his.
	l := tenHours()
	for i := range 5 {
		l.events = append(l.events, call("b"+string(rune('0'+i)), day.Add(12*time.Hour+time.Duration(i)*time.Minute), bob))
	}
	rep := replay(t, l, draft(t, day, map[string]string{"user/" + ann: `{"tokens":"300/day"}`, "project/" + project: `{"tokens":"800/day"}`}), "", whatif.Options{})
	if w := wallOf(t, rep, "user/"+ann, "tokens"); w.Denied.Asks != 7 {
		t.Errorf("ann: got %d denied, want 7", w.Denied.Asks)
	}
	for _, w := range rep.Walls {
		if w.Scope == "project/"+project {
			t.Errorf("got a wall at the project, want none (ann's denied calls used nothing): %+v", w)
		}
	}
}

func TestOverlappingRunsQueueAtTheConcurrencyLimit(t *testing.T) {
	// Ann may run 2 at once. Runs 1 and 2 hold both slots until 10:00;
	// run 3 (at 02:00) waits 30 s and gives up; run 4 arrives 10 ms before
	// run 1 ends and gets its slot then; run 5 starts after everyone.
	h := day.Add(time.Hour)
	l := &ledger{runs: []whatif.Run{
		{ID: "r1", TenantID: tenant, UserID: ann, ProjectID: project, Start: h, End: h.Add(10 * time.Minute)},
		{ID: "r2", TenantID: tenant, UserID: ann, ProjectID: project, Start: h.Add(time.Minute), End: h.Add(10 * time.Minute)},
		{ID: "r3", TenantID: tenant, UserID: ann, ProjectID: project, Start: h.Add(2 * time.Minute), End: h.Add(7 * time.Minute)},
		{ID: "r4", TenantID: tenant, UserID: ann, ProjectID: project, Start: h.Add(10*time.Minute - 10*time.Millisecond), End: h.Add(11 * time.Minute)},
		{ID: "r5", TenantID: tenant, UserID: ann, ProjectID: project, Start: h.Add(30 * time.Minute), End: h.Add(31 * time.Minute)},
	}}
	rep := replay(t, l, draft(t, day, map[string]string{"user/" + ann: `{"concurrency":2}`}), "", whatif.Options{})
	w := wallOf(t, rep, "user/"+ann, "concurrency")
	if w.Queued != (whatif.Queued{Asks: 2, Runs: 2, TimedOut: 1}) {
		t.Errorf("got queued %+v, want 2 runs queued, 1 timed out", w.Queued)
	}
	if w.Denied.Runs != 1 || w.Denied.Requests != 1 {
		t.Errorf("got denied %+v, want the one run that timed out", w.Denied)
	}
	if want := h.Add(2 * time.Minute); !w.FirstWallAt.Equal(want) {
		t.Errorf("got first wall at %s, want %s", w.FirstWallAt, want)
	}
	if rep.Replayed.Runs != 5 || rep.Replayed.Admitted != 4 {
		t.Errorf("got %+v, want 5 runs, 4 admitted", rep.Replayed)
	}

	// With the queue off, runs 3 and 4 are denied at once.
	rep = replay(t, l, draft(t, day, map[string]string{"user/" + ann: `{"concurrency":2}`}), "", whatif.Options{MaxWait: -1})
	w = wallOf(t, rep, "user/"+ann, "concurrency")
	if w.Queued.Asks != 0 || w.Denied.Runs != 2 {
		t.Errorf("queue off: got queued %+v, denied %+v, want 2 runs denied", w.Queued, w.Denied)
	}
}

func TestBudgetsStartWhereTheLedgerHadThem(t *testing.T) {
	// 400 tokens were used the day before the window began, in the same
	// month: the month's budget of 1000 has 600 left, so six calls fit.
	l := tenHours()
	for i := range 4 {
		l.events = append(l.events, call("w"+string(rune('0'+i)), day.Add(-time.Duration(i+1)*time.Hour), ann))
	}
	slices.SortFunc(l.events, func(a, b usage.Event) int { return a.At.Compare(b.At) })
	rep := replay(t, l, draft(t, day, map[string]string{"project/" + project: `{"tokens":"1000/month"}`}), "", whatif.Options{})
	w := wallOf(t, rep, "project/"+project, "tokens")
	if w.Window != "month" || w.Denied.Asks != 4 || rep.Replayed.Warmup != 4 {
		t.Errorf("got wall %+v and %d warm-up events, want 4 denied after 4 warm-up events", w, rep.Replayed.Warmup)
	}
}

func TestATenantReplayLeavesTheGlobalPoolOut(t *testing.T) {
	d := draft(t, day, map[string]string{"global": `{"requests":"1/hour"}`})
	l := &ledger{}
	for i := range 3 {
		e := call("g"+string(rune('0'+i)), day.Add(time.Duration(i+1)*time.Minute), ann)
		e.Requests, e.Kind = 1, "metering"
		l.events = append(l.events, e)
	}
	if rep := replay(t, l, d, "", whatif.Options{}); wallOf(t, rep, "global", "requests").Denied.Asks != 2 {
		t.Errorf("platform replay: got %+v, want 2 denied at the global rate", rep.Walls)
	}
	if rep := replay(t, l, d, tenant, whatif.Options{}); len(rep.Walls) != 0 {
		t.Errorf("tenant replay: got walls %+v, want none", rep.Walls)
	}
}

func TestReplayRefusesTooMuchWork(t *testing.T) {
	l := tenHours()
	_, err := whatif.Replay(context.Background(), l, draft(t, day, nil), "", 24*time.Hour, day.Add(24*time.Hour), whatif.Options{MaxEvents: 9})
	var e *errs.Error
	if !errs.Is(err, errs.Invalid) || !asErr(err, &e) || e.Field != "window" {
		t.Fatalf("got %v, want invalid naming window", err)
	}
	if l.reads != 0 {
		t.Errorf("the ledger was read %d times before the refusal, want 0", l.reads)
	}
	_, err = whatif.Replay(context.Background(), l, draft(t, day, nil), "", 91*24*time.Hour, day, whatif.Options{})
	if !asErr(err, &e) || e.Field != "window" {
		t.Errorf("91 days: got %v, want invalid naming window", err)
	}
}

func TestParseWindow(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{{"7d", 7 * 24 * time.Hour, true}, {"24h", 24 * time.Hour, true}, {"90d", whatif.MaxWindow, true}, {"90m", 90 * time.Minute, true},
		{"91d", 0, false}, {"0d", 0, false}, {"-1h", 0, false}, {"", 0, false}, {"7 d", 0, false}, {"d", 0, false}, {"1w", 0, false}} {
		got, err := whatif.ParseWindow("window", c.in)
		if c.ok && (err != nil || got != c.want) {
			t.Errorf("ParseWindow(%q): got %s, %v, want %s", c.in, got, err, c.want)
		}
		if !c.ok {
			var e *errs.Error
			if !asErr(err, &e) || e.Field != "window" {
				t.Errorf("ParseWindow(%q): got %v, want an error naming window", c.in, err)
			}
		}
	}
}

func asErr(err error, target **errs.Error) bool {
	e, ok := err.(*errs.Error)
	if ok {
		*target = e
	}
	return ok
}
