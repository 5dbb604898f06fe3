package policy_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// requests returns the quota request workflow over e, on e's clock.
func (e *env) requests() *policy.Requests {
	rq := policy.NewRequests(e.store, e.pol)
	rq.SetClock(e.clock.Now)
	return rq
}

// loginIn makes a key for user that works in project and returns a
// context authenticated by it.
func (e *env) loginIn(t *testing.T, userID, projectID string) context.Context {
	t.Helper()
	_, secret, err := e.ten.CreateKey(e.admin, tenancy.KeyInput{UserID: userID, ProjectID: projectID})
	if err != nil {
		t.Fatalf("CreateKey(%s in %s) = %v, want nil", userID, projectID, err)
	}
	p, err := e.ten.Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatalf("Authenticate = %v, want nil", err)
	}
	return tenancy.WithPrincipal(context.Background(), p)
}

// TestRequestScopes: without a scope a request raises the innermost scope
// of the caller's chain that limits the dimension; a member may name only
// scopes of their own chains; an admin any scope of their tenant.
func TestRequestScopes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	rq := e.requests()
	alice := e.loginIn(t, w.alice.ID, w.p.ID)
	d1, d2 := scope(policy.KindDepartment, w.d1.ID), scope(policy.KindDepartment, w.d2.ID)
	other, err := e.ten.CreateDepartment(e.admin, tenancy.DepartmentInput{TenantID: w.uni.ID, Name: "history"})
	if err != nil {
		t.Fatalf("CreateDepartment = %v, want nil", err)
	}
	for _, sc := range []string{d1, d2, scope(policy.KindDepartment, other.ID)} {
		if _, err := e.pol.SetLimits(e.admin, sc, limitsIn(t, `{"limits":{"tokens":"500000/day"}}`)); err != nil {
			t.Fatalf("SetLimits(%s) = %v, want nil", sc, err)
		}
	}
	in := func(sc string) policy.RequestInput {
		return policy.RequestInput{Scope: sc, Dimension: "tokens_day", Amount: 1000, Duration: "3d", Reason: "lab"}
	}
	q, err := rq.Create(alice, in(""))
	if err != nil || q.Scope != d2 || q.TenantID != w.uni.ID || time.Duration(q.Duration) != 72*time.Hour {
		t.Fatalf("Create(no scope) = %+v, %v, want the class pool %s for 72h", q, err, d2)
	}
	if _, err := e.pol.SetLimits(e.admin, scope(policy.KindUser, w.alice.ID), limitsIn(t, `{"plan":"free"}`)); err != nil {
		t.Fatalf("SetLimits(alice) = %v, want nil", err)
	}
	if q, err := rq.Create(alice, in("")); err != nil || q.Scope != scope(policy.KindUser, w.alice.ID) {
		t.Fatalf("Create(no scope) with a plan on alice = %+v, %v, want user/%s", q, err, w.alice.ID)
	}
	if _, err := rq.Create(alice, policy.RequestInput{Dimension: "gpu_seconds", Amount: 60, Duration: "1h", Reason: "x"}); err != nil {
		t.Fatalf("Create(gpu_seconds) on the free plan's 0/month = %v, want nil (a limit of 0 is a limit)", err)
	}
	_, err = rq.Create(alice, policy.RequestInput{Dimension: "tokens_rate", Amount: 60, Duration: "1h", Reason: "x"})
	wantErr(t, err, errs.Invalid, "dimension")

	// A department above alice's project is hers to ask for; another is not.
	if _, err := rq.Create(alice, in(d1)); err != nil {
		t.Fatalf("Create(%s) as alice = %v, want nil", d1, err)
	}
	_, err = rq.Create(alice, in(scope(policy.KindDepartment, other.ID)))
	wantErr(t, err, errs.NotFound, "scope")
	_, err = rq.Create(w.carolCtx, in(d1))
	wantErr(t, err, errs.NotFound, "scope")
	if _, err := rq.Create(w.bobCtx, in(scope(policy.KindDepartment, other.ID))); err != nil {
		t.Fatalf("Create(any department of the tenant) as its admin = %v, want nil", err)
	}
	_, err = rq.Create(w.bobCtx, in(scope(policy.KindProject, w.q.ID)))
	wantErr(t, err, errs.NotFound, "scope")
}

// TestRequestGrantExpires: an approved request raises the scope's limit
// in the snapshot at once, and the manager drops it on its own at the
// grant's expiry, with no reload.
func TestRequestGrantExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	rq := e.requests()
	alice := scope(policy.KindUser, w.alice.ID)
	if _, err := e.pol.SetLimits(e.admin, alice, limitsIn(t, `{"plan":"free"}`)); err != nil {
		t.Fatalf("SetLimits = %v, want nil", err)
	}
	q, err := rq.Create(w.aliceCtx, policy.RequestInput{Dimension: "concurrency", Amount: 2, Duration: "2h", Reason: "batch"})
	if err != nil || q.Scope != alice {
		t.Fatalf("Create = %+v, %v, want a request on %s", q, err, alice)
	}
	e.clock.Set(t0.Add(10 * time.Minute))
	a, err := rq.Approve(w.bobCtx, q.ID, policy.ApproveInput{Duration: "30m"})
	if err != nil {
		t.Fatalf("Approve = %v, want nil", err)
	}
	if want := t0.Add(40 * time.Minute); a.ExpiresAt == nil || !a.ExpiresAt.Equal(want) || a.GrantedAmount != 2 {
		t.Fatalf("approved: expires %v, granted %d, want %v and 2", a.ExpiresAt, a.GrantedAmount, want)
	}
	bound(t, "concurrency while granted", e.mgr.Current().Effective(alice).Limits.Concurrency, 3)
	e.clock.Set(t0.Add(40*time.Minute - time.Microsecond))
	bound(t, "concurrency just before expiry", e.mgr.Current().Effective(alice).Limits.Concurrency, 3)
	e.clock.Set(t0.Add(40 * time.Minute))
	bound(t, "concurrency at expiry", e.mgr.Current().Effective(alice).Limits.Concurrency, 1)

	// expires_at instead of a duration; not both.
	q2, err := rq.Create(w.aliceCtx, policy.RequestInput{Dimension: "concurrency", Amount: 1, Duration: "2h", Reason: "again"})
	if err != nil {
		t.Fatalf("Create = %v, want nil", err)
	}
	at := e.clock.Now().Add(time.Hour)
	_, err = rq.Approve(w.bobCtx, q2.ID, policy.ApproveInput{Duration: "1h", ExpiresAt: &at})
	wantErr(t, err, errs.Invalid, "duration")
	past := e.clock.Now().Add(-time.Minute)
	_, err = rq.Approve(w.bobCtx, q2.ID, policy.ApproveInput{ExpiresAt: &past})
	wantErr(t, err, errs.Invalid, "expires_at")
	if a, err := rq.Approve(w.bobCtx, q2.ID, policy.ApproveInput{ExpiresAt: &at}); err != nil || !a.ExpiresAt.Equal(at) {
		t.Fatalf("Approve(expires_at) = %+v, %v, want expiry %v", a, err, at)
	}
}

// TestRequestDecidedOnce: approvals and denials racing on one request
// leave exactly one decision and at most one grant.
func TestRequestDecidedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	rq := e.requests()
	if _, err := e.pol.SetLimits(e.admin, scope(policy.KindUser, w.alice.ID), limitsIn(t, `{"plan":"free"}`)); err != nil {
		t.Fatalf("SetLimits = %v, want nil", err)
	}
	q, err := rq.Create(w.aliceCtx, policy.RequestInput{Dimension: "tokens_day", Amount: 5000, Duration: "1h", Reason: "x"})
	if err != nil {
		t.Fatalf("Create = %v, want nil", err)
	}
	const racers = 8
	var wg sync.WaitGroup
	errc := make(chan error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if i%2 == 0 {
				_, err = rq.Approve(w.bobCtx, q.ID, policy.ApproveInput{})
			} else {
				_, err = rq.Deny(e.admin, q.ID, policy.DenyInput{Reason: "no"})
			}
			errc <- err
		}()
	}
	wg.Wait()
	close(errc)
	ok := 0
	for err := range errc {
		switch {
		case err == nil:
			ok++
		case !errs.Is(err, errs.Conflict):
			t.Fatalf("a racing decision: got %v, want nil or conflict", err)
		}
	}
	if ok != 1 {
		t.Fatalf("decisions that landed: got %d, want 1", ok)
	}
	got, err := rq.Get(e.admin, q.ID)
	if err != nil {
		t.Fatalf("Get = %v, want nil", err)
	}
	grants, err := e.pol.Grants(e.admin, w.uni.ID, "", false)
	if err != nil {
		t.Fatalf("Grants = %v, want nil", err)
	}
	wantGrants := 0
	if got.Status == policy.RequestApproved {
		wantGrants = 1
	}
	if len(grants) != wantGrants {
		t.Fatalf("grants after a %s decision: got %d, want %d", got.Status, len(grants), wantGrants)
	}
	if n := len(e.audit(t, w.uni.ID, "quota_request.approve", q.ID)) + len(e.audit(t, w.uni.ID, "quota_request.deny", q.ID)); n != 1 {
		t.Fatalf("decision audit entries: got %d, want 1", n)
	}
}
