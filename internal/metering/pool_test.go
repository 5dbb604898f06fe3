package metering_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// pool is a department "research" of the world's tenant (concurrency 4,
// tokens 1000/day) with project A (guaranteed concurrency 2 and 400
// tokens/day, capped at 3 and 800) and project B (no guarantee), a
// member in each.
type pool struct {
	dept   string // its scope
	a, b   metering.Who
	aScope string
}

func newPool(t *testing.T, w *world) *pool {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	tenantID := w.who.TenantID
	d, err := w.ten.CreateDepartment(w.admin, tenancy.DepartmentInput{TenantID: tenantID, Name: "research"})
	must(err)
	p := &pool{dept: policy.ScopeName(policy.KindDepartment, d.ID)}
	for _, x := range []struct {
		name string
		who  *metering.Who
	}{{"a", &p.a}, {"b", &p.b}} {
		prj, err := w.ten.CreateProject(w.admin, tenancy.ProjectInput{TenantID: tenantID, DepartmentID: d.ID, Name: "proj-" + x.name})
		must(err)
		u, err := w.ten.CreateUser(w.admin, tenancy.UserInput{TenantID: tenantID, Name: "user-" + x.name})
		must(err)
		_, err = w.ten.AddMember(w.admin, tenancy.MembershipInput{UserID: u.ID, ProjectID: prj.ID})
		must(err)
		*x.who = metering.Who{TenantID: tenantID, UserID: u.ID, ProjectID: prj.ID}
	}
	p.aScope = policy.ScopeName(policy.KindProject, p.a.ProjectID)
	conc := func(n int64) *int64 { return &n }
	_, err = w.pol.SetLimits(w.admin, p.dept, policy.LimitsInput{Limits: policy.Spec{Concurrency: conc(4),
		Tokens: policy.Budgets{{Amount: 1000, Window: quota.WindowDay}}}})
	must(err)
	_, err = w.pol.SetLimits(w.admin, p.aScope, policy.LimitsInput{
		Limits:     policy.Spec{Concurrency: conc(3), Tokens: policy.Budgets{{Amount: 800, Window: quota.WindowDay}}},
		Guaranteed: &policy.Spec{Concurrency: conc(2), Tokens: policy.Budgets{{Amount: 400, Window: quota.WindowDay}}}})
	must(err)
	return p
}

// slot takes a concurrency slot for who.
func slot(ctx context.Context, m *metering.Meter, who metering.Who) (*metering.Admission, error) {
	return m.Acquire(metering.NoWait(ctx), who, "run", quota.Ask{Concurrency: true}, time.Minute)
}

// wantShared checks that err is a refusal at the pool's shared part,
// naming the department and who can raise it.
func wantShared(t *testing.T, err error, p *pool, dim quota.Dimension) {
	t.Helper()
	var sd *metering.SharedDenial
	var d *quota.Denial
	if !errors.As(err, &sd) || !errors.As(err, &d) {
		t.Fatalf("got %v, want a refusal at the shared part of %s", err, p.dept)
	}
	if sd.Pool != p.dept || d.Scope != p.dept || d.Dimension != dim {
		t.Fatalf("got pool %s, denial at %s on %s, want %s on %s", sd.Pool, d.Scope, d.Dimension, p.dept, dim)
	}
	msg := sd.Message()
	for _, want := range []string{"the shared part of department research is used up", "ask an admin of acme", "/api/v1/quota-requests"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("message %q does not say %q", msg, want)
		}
	}
}

func TestPoolConcurrencyGuarantee(t *testing.T) {
	w := newWorld(t)
	p := newPool(t, w)
	ctx := context.Background()

	// B, without a guarantee, gets only the shared part (4 - 2), even
	// with A idle.
	var bs []*metering.Admission
	for range 2 {
		adm, err := slot(ctx, w.a, p.b)
		if err != nil {
			t.Fatalf("B's slot %d: %v", len(bs)+1, err)
		}
		if !slices.Contains(adm.Keys, p.dept+policy.BorrowSuffix) {
			t.Fatalf("B's ticket charges %v, want the pool's shared part", adm.Keys)
		}
		bs = append(bs, adm)
	}
	_, err := slot(ctx, w.a, p.b)
	wantShared(t, err, p, quota.DimConcurrency)

	// A still gets its two guaranteed slots...
	var as []*metering.Admission
	for range 2 {
		adm, err := slot(ctx, w.b, p.a)
		if err != nil {
			t.Fatalf("A's guaranteed slot %d: %v", len(as)+1, err)
		}
		if !slices.Contains(adm.Keys, p.aScope+policy.GuaranteedSuffix) {
			t.Fatalf("A's ticket charges %v, want its guarantee", adm.Keys)
		}
		as = append(as, adm)
	}
	// ...but no third while B holds the shared part.
	_, err = slot(ctx, w.a, p.a)
	wantShared(t, err, p, quota.DimConcurrency)

	// B goes idle: A borrows beyond its guarantee, up to its own cap (3).
	for _, adm := range bs {
		if _, err := w.a.Settle(ctx, adm.ID, quota.Usage{}, ""); err != nil {
			t.Fatal(err)
		}
	}
	adm, err := slot(ctx, w.a, p.a)
	if err != nil {
		t.Fatalf("A's borrowed slot: %v", err)
	}
	if !slices.Contains(adm.Keys, p.dept+policy.BorrowSuffix) || slices.Contains(adm.Keys, p.aScope+policy.GuaranteedSuffix) {
		t.Fatalf("A's third ticket charges %v, want the shared part, not its guarantee", adm.Keys)
	}
	_, err = slot(ctx, w.a, p.a)
	var d *quota.Denial
	var sd *metering.SharedDenial
	if !errors.As(err, &d) || errors.As(err, &sd) || d.Scope != p.aScope {
		t.Fatalf("A's fourth slot: got %v, want a refusal at A's own limit %s", err, p.aScope)
	}
	// B gets what A leaves of the shared part: one slot.
	if _, err := slot(ctx, w.a, p.b); err != nil {
		t.Fatalf("B's slot beside A's borrowed one: %v", err)
	}
	_, err = slot(ctx, w.a, p.b)
	wantShared(t, err, p, quota.DimConcurrency)

	// The usage report shows the pool's shared part and A's guarantee.
	rep, err := w.a.Report(ctx, "", []string{p.dept, p.dept + policy.BorrowSuffix, p.aScope, p.aScope + policy.GuaranteedSuffix})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, r := range rep {
		for _, dm := range r.Dimensions {
			if dm.Dimension == "concurrency" && dm.Limit != nil {
				got[r.Kind+" "+r.Scope] = *dm.Limit*100 + dm.Used
			}
		}
	}
	want := map[string]int64{" " + p.dept: 404, "pool_shared " + p.dept + policy.BorrowSuffix: 202,
		" " + p.aScope: 303, "guaranteed " + p.aScope + policy.GuaranteedSuffix: 202}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("report: %q limit*100+used = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}

func TestPoolTokenGuaranteeSurvivesRestart(t *testing.T) {
	w := newWorld(t)
	p := newPool(t, w)
	ctx := context.Background()
	spend := func(m *metering.Meter, who metering.Who, n int64) error {
		t.Helper()
		adm, err := m.Acquire(ctx, who, "metering", quota.Ask{Tokens: n}, time.Minute)
		if err != nil {
			return err
		}
		_, err = m.Settle(ctx, adm.ID, quota.Usage{OutputTokens: n}, "")
		return err
	}
	// B spends the whole shared part (1000 - 400) and no more.
	if err := spend(w.a, p.b, 600); err != nil {
		t.Fatalf("B spends 600: %v", err)
	}
	wantShared(t, spend(w.a, p.b, 1), p, quota.DimTokens)

	// A restart: a new engine whose counters come from the ledger.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	engine := quota.NewMemory(quota.Options{Now: w.clock.Now})
	t.Cleanup(func() { engine.Close() })
	rec := usage.NewRecorder(w.store, log, 5*time.Millisecond)
	t.Cleanup(func() { rec.Close() })
	m := metering.New(engine, w.a.Policy(), rec, log)
	if _, err := m.Restore(ctx, w.store); err != nil {
		t.Fatal(err)
	}
	use, err := m.Use(ctx, p.dept+policy.BorrowSuffix)
	if err != nil || use.TokensDay.Used != 600 {
		t.Fatalf("restored shared part: %+v, %v, want 600 tokens used today", use.TokensDay, err)
	}
	// B still cannot take A's guarantee; A gets all of it, and no more
	// (the shared part is B's spend).
	wantShared(t, spend(m, p.b, 1), p, quota.DimTokens)
	if err := spend(m, p.a, 400); err != nil {
		t.Fatalf("A spends its guaranteed 400 after the restart: %v", err)
	}
	wantShared(t, spend(m, p.a, 1), p, quota.DimTokens)
}

// TestPoolQueue: a borrower waits in the admission queue of the pool's
// shared part; an owner of a guarantee with room is not held up behind
// it, and a slot freed in the shared part lets the borrower in.
func TestPoolQueue(t *testing.T) {
	w := newWorld(t)
	p := newPool(t, w)
	ctx := context.Background()
	m := w.a
	// Only a release wakes a waiter: a poll would hide a missed one.
	m.Queue = admission.New(admission.Options{MaxWait: time.Minute, Poll: time.Hour})
	ask := quota.Ask{Concurrency: true}
	var bs []*metering.Admission
	for range 2 {
		adm, err := m.Acquire(ctx, p.b, "run", ask, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, adm)
	}
	done := make(chan *metering.Admission, 1)
	go func() {
		adm, err := m.Acquire(ctx, p.b, "run", ask, time.Minute)
		if err != nil {
			t.Errorf("the queued borrower: %v", err)
		}
		done <- adm
	}()
	for end := time.Now().Add(10 * time.Second); m.Queue.Len() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the third borrower never queued")
		}
	}
	// A's guarantee has room: no wait behind B.
	a, err := m.Acquire(ctx, p.a, "run", ask, time.Minute)
	if err != nil || a.Waited.Queued {
		t.Fatalf("A's guaranteed slot with a borrower queued: %+v, %v, want it at once", a, err)
	}
	// A slot of A's guarantee frees nothing of the shared part...
	if _, err := m.Settle(ctx, a.ID, quota.Usage{}, ""); err != nil {
		t.Fatal(err)
	}
	if m.Queue.Len() != 1 {
		t.Fatalf("queue length %d after A's settle, want the borrower still waiting", m.Queue.Len())
	}
	// ...one of B's does.
	if _, err := m.Settle(ctx, bs[0].ID, quota.Usage{}, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case adm := <-done:
		if adm == nil || !adm.Waited.Queued || adm.Waited.Scope != p.dept+policy.BorrowSuffix {
			t.Fatalf("the borrower: %+v, want admitted after waiting at the shared part", adm)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the borrower was not admitted after a shared slot freed")
	}
}
