package policy_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// ---- helpers shared by the external policy tests ----

// fakeClock is a settable clock, safe for concurrent readers.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// t0 is the start of every fake clock: noon UTC, which is 20:00 in
// Asia/Shanghai on the same day.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// env is the policy and tenancy services over one real SQLite store, wired
// as the app wires them: tenancy changes reload the policy manager.
type env struct {
	store *sqlstore.Store
	ten   *tenancy.Service
	pol   *policy.Service
	mgr   *policy.Manager
	clock *fakeClock
	admin context.Context // the bootstrapped platform admin

	closeOnce sync.Once
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	store, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatalf("OpenSQLite = %v, want nil", err)
	}
	e := &env{store: store, clock: &fakeClock{now: t0}}
	t.Cleanup(e.closeStore)
	log := slog.New(slog.DiscardHandler)
	e.mgr = policy.NewManager(store, policy.Spec{}, log)
	e.mgr.SetClock(e.clock.Now)
	e.pol = policy.NewService(store, e.mgr, log)
	e.pol.SetClock(e.clock.Now)
	e.ten = tenancy.NewService(store, log)
	e.ten.SetClock(e.clock.Now)
	e.ten.OnChange = func(ctx context.Context) {
		if err := e.mgr.Reload(ctx); err != nil {
			t.Errorf("reload after a tenancy change: %v", err)
		}
	}
	if err := e.pol.EnsureDefaultPlans(ctx); err != nil {
		t.Fatalf("EnsureDefaultPlans = %v, want nil", err)
	}
	if err := e.mgr.Reload(ctx); err != nil {
		t.Fatalf("Reload = %v, want nil", err)
	}
	res, err := e.ten.Bootstrap(ctx, "")
	if err != nil || !res.Created {
		t.Fatalf("Bootstrap = %+v, %v, want a new admin", res, err)
	}
	p, err := e.ten.Authenticate(ctx, res.Secret)
	if err != nil {
		t.Fatalf("Authenticate(bootstrap key) = %v, want nil", err)
	}
	e.admin = tenancy.WithPrincipal(ctx, p)
	return e
}

func (e *env) closeStore() { e.closeOnce.Do(func() { _ = e.store.Close() }) }

// login makes a key for user and returns a context authenticated by it.
func (e *env) login(t *testing.T, userID string) context.Context {
	t.Helper()
	_, secret, err := e.ten.CreateKey(e.admin, tenancy.KeyInput{UserID: userID})
	if err != nil {
		t.Fatalf("CreateKey(%s) = %v, want nil", userID, err)
	}
	p, err := e.ten.Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatalf("Authenticate(%s) = %v, want nil", userID, err)
	}
	return tenancy.WithPrincipal(context.Background(), p)
}

// world is a small tenancy tree: tenant uni (Asia/Shanghai) with
// departments d1 > d2 > project p, a tenant admin bob and a member alice of
// p; tenant other (UTC) with project q and member carol.
type world struct {
	uni, other       *tenancy.Tenant
	d1, d2           *tenancy.Department
	p, q             *tenancy.Project
	alice, bob, carl *tenancy.User // carl: a second member of uni, in no project
	carol            *tenancy.User
	bobCtx, aliceCtx context.Context
	carolCtx         context.Context
}

func (e *env) world(t *testing.T) *world {
	t.Helper()
	w := &world{}
	var err error
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	w.uni, err = e.ten.CreateTenant(e.admin, tenancy.TenantInput{Name: "uni", Timezone: "Asia/Shanghai"})
	must("create tenant uni", err)
	w.other, err = e.ten.CreateTenant(e.admin, tenancy.TenantInput{Name: "other", Timezone: "UTC"})
	must("create tenant other", err)
	w.d1, err = e.ten.CreateDepartment(e.admin, tenancy.DepartmentInput{TenantID: w.uni.ID, Name: "faculty"})
	must("create d1", err)
	w.d2, err = e.ten.CreateDepartment(e.admin, tenancy.DepartmentInput{TenantID: w.uni.ID, ParentID: w.d1.ID, Name: "cs101"})
	must("create d2", err)
	w.p, err = e.ten.CreateProject(e.admin, tenancy.ProjectInput{TenantID: w.uni.ID, DepartmentID: w.d2.ID, Name: "group-1"})
	must("create p", err)
	w.q, err = e.ten.CreateProject(e.admin, tenancy.ProjectInput{TenantID: w.other.ID, Name: "q1"})
	must("create q", err)
	w.alice, err = e.ten.CreateUser(e.admin, tenancy.UserInput{TenantID: w.uni.ID, Name: "alice"})
	must("create alice", err)
	w.bob, err = e.ten.CreateUser(e.admin, tenancy.UserInput{TenantID: w.uni.ID, Name: "bob", Role: tenancy.RoleTenantAdmin})
	must("create bob", err)
	w.carl, err = e.ten.CreateUser(e.admin, tenancy.UserInput{TenantID: w.uni.ID, Name: "carl"})
	must("create carl", err)
	w.carol, err = e.ten.CreateUser(e.admin, tenancy.UserInput{TenantID: w.other.ID, Name: "carol"})
	must("create carol", err)
	_, err = e.ten.AddMember(e.admin, tenancy.MembershipInput{UserID: w.alice.ID, ProjectID: w.p.ID})
	must("add alice to p", err)
	_, err = e.ten.AddMember(e.admin, tenancy.MembershipInput{UserID: w.carol.ID, ProjectID: w.q.ID})
	must("add carol to q", err)
	w.bobCtx, w.aliceCtx, w.carolCtx = e.login(t, w.bob.ID), e.login(t, w.alice.ID), e.login(t, w.carol.ID)
	return w
}

func scope(kind, id string) string { return policy.ScopeName(kind, id) }

// limitsIn decodes a LimitsInput written as JSON.
func limitsIn(t *testing.T, j string) policy.LimitsInput {
	t.Helper()
	var in policy.LimitsInput
	dec := json.NewDecoder(strings.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		t.Fatalf("decode limits input %s: %v", j, err)
	}
	return in
}

// specOf decodes a Spec written as JSON.
func specOf(t *testing.T, j string) policy.Spec {
	t.Helper()
	var s policy.Spec
	if err := json.Unmarshal([]byte(j), &s); err != nil {
		t.Fatalf("decode spec %s: %v", j, err)
	}
	return s
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	return string(b)
}

// wantErr checks err's code and, when field is not "-", its field.
func wantErr(t *testing.T, err error, code errs.Code, field string) {
	t.Helper()
	if code == "" {
		if err != nil {
			t.Fatalf("got error %v, want nil", err)
		}
		return
	}
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v, want a %s *errs.Error", err, code)
	}
	if e.Code != code || (field != "-" && e.Field != field) {
		t.Fatalf("got code %s field %q (%v), want code %s field %q", e.Code, e.Field, err, code, field)
	}
}

// settings returns what is set on scope ("" plan and {} limits when
// nothing is), read as the platform admin.
func (e *env) settings(t *testing.T, scope string) string {
	t.Helper()
	v, err := e.pol.Limits(e.admin, scope)
	if err != nil {
		t.Fatalf("Limits(%s) = %v, want nil", scope, err)
	}
	return v.Plan + " " + jsonOf(t, v.Limits)
}

// audit returns the audit entries with action on object, newest first.
func (e *env) audit(t *testing.T, tenantID, action, object string) []*tenancy.AuditEntry {
	t.Helper()
	all, err := e.ten.Audit(e.admin, tenancy.Filter{TenantID: tenantID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
	if err != nil {
		t.Fatalf("Audit = %v, want nil", err)
	}
	var out []*tenancy.AuditEntry
	for _, a := range all {
		if a.Action == action && (object == "" || a.ObjectID == object) {
			out = append(out, a)
		}
	}
	return out
}

func (e *env) auditCount(t *testing.T) int {
	t.Helper()
	all, err := e.ten.Audit(e.admin, tenancy.Filter{Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
	if err != nil {
		t.Fatalf("Audit = %v, want nil", err)
	}
	return len(all)
}

func bound(t *testing.T, what string, b quota.Bound, want int64) {
	t.Helper()
	if got, ok := b.Max(); !ok || got != want {
		t.Fatalf("%s: got Max() = %d, %v, want %d, true", what, got, ok, want)
	}
}

// ---- plans ----

func TestEnsureDefaultPlans(t *testing.T) {
	t.Parallel()
	e := newEnv(t) // calls EnsureDefaultPlans once
	ctx := e.admin
	if err := e.pol.EnsureDefaultPlans(ctx); err != nil {
		t.Fatalf("second EnsureDefaultPlans = %v, want nil", err)
	}
	plans, err := e.pol.Plans(ctx)
	if err != nil {
		t.Fatalf("Plans = %v, want nil", err)
	}
	var names []string
	for _, p := range plans {
		names = append(names, p.Name)
	}
	if got, want := strings.Join(names, ","), "enterprise,free,pro"; got != want {
		t.Fatalf("plans: got %s, want %s", got, want)
	}
	if got := len(e.audit(t, "", "plan.create", "")); got != 3 {
		t.Fatalf("plan.create audit entries: got %d, want 3", got)
	}

	free, err := e.pol.Plan(ctx, "free")
	if err != nil {
		t.Fatalf("Plan(free) = %v, want nil", err)
	}
	if free.Priority != policy.PriorityLow {
		t.Errorf("free priority: got %s, want low", free.Priority)
	}
	l := free.Limits.Limits()
	if want := (quota.Rate{Limit: 10, Period: time.Minute}); l.Requests != want {
		t.Errorf("free requests: got %+v, want %+v", l.Requests, want)
	}
	bound(t, "free gpu millis", l.GPUMillisMonth, 0)
	bound(t, "free tokens/day", l.TokensDay, 100_000)
	bound(t, "free concurrency", l.Concurrency, 1)
	ent, err := e.pol.Plan(ctx, "enterprise")
	if err != nil || ent.Priority != policy.PriorityHigh {
		t.Errorf("Plan(enterprise) = %+v, %v, want priority high", ent, err)
	}

	// An edited default plan survives another start.
	if _, err := e.pol.PutPlan(ctx, "free", policy.PlanInput{Priority: policy.PriorityLow, Limits: specOf(t, `{"requests":"20/min"}`)}); err != nil {
		t.Fatalf("PutPlan(free) = %v, want nil", err)
	}
	if err := e.pol.EnsureDefaultPlans(ctx); err != nil {
		t.Fatalf("EnsureDefaultPlans = %v, want nil", err)
	}
	free, _ = e.pol.Plan(ctx, "free")
	if got := jsonOf(t, free.Limits); got != `{"requests":"20/min"}` {
		t.Fatalf("free after restart: got %s, want {\"requests\":\"20/min\"}", got)
	}
	// The plans are in the live snapshot.
	if p, ok := e.mgr.Current().Plan("pro"); !ok || p.Priority != policy.PriorityNormal {
		t.Fatalf("snapshot Plan(pro) = %+v, %v, want priority normal", p, ok)
	}
}

func TestPutPlan(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	gold := policy.PlanInput{Description: "for gold customers", Priority: policy.PriorityHigh, Limits: specOf(t, `{"requests":"100/min","concurrency":10}`)}
	for _, c := range []struct {
		name  string
		ctx   context.Context
		plan  string
		in    policy.PlanInput
		code  errs.Code
		field string
	}{
		{"no principal", context.Background(), "gold", gold, errs.Unauthorized, "-"},
		{"tenant admin", w.bobCtx, "gold", gold, errs.Forbidden, "-"},
		{"member", w.aliceCtx, "gold", gold, errs.Forbidden, "-"},
		{"bad name", e.admin, "Gold Plan", gold, errs.Invalid, "name"},
		{"empty name", e.admin, "", gold, errs.Invalid, "name"},
		{"bad priority", e.admin, "gold", policy.PlanInput{Priority: "urgent"}, errs.Invalid, "priority"},
		{"bad limits", e.admin, "gold", policy.PlanInput{Limits: specOf(t, `{"gpu_seconds":"5/day"}`)}, errs.Invalid, "limits.gpu_seconds"},
		{"negative concurrency", e.admin, "gold", policy.PlanInput{Limits: specOf(t, `{"concurrency":-1}`)}, errs.Invalid, "limits.concurrency"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.pol.PutPlan(c.ctx, c.plan, c.in)
			wantErr(t, err, c.code, c.field)
			if _, err := e.pol.Plan(e.admin, "gold"); !errs.Is(err, errs.NotFound) {
				t.Fatalf("Plan(gold) after a refused PutPlan: got %v, want not_found", err)
			}
		})
	}

	created, err := e.pol.PutPlan(e.admin, "gold", gold)
	if err != nil {
		t.Fatalf("PutPlan(gold) = %v, want nil", err)
	}
	got, err := e.pol.Plan(w.aliceCtx, "gold") // every caller may read plans
	if err != nil {
		t.Fatalf("Plan(gold) as a member = %v, want nil", err)
	}
	if jsonOf(t, got) != jsonOf(t, created) {
		t.Fatalf("Plan(gold): got %s, want %s", jsonOf(t, got), jsonOf(t, created))
	}
	if p, ok := e.mgr.Current().Plan("gold"); !ok || jsonOf(t, p.Limits) != jsonOf(t, gold.Limits) {
		t.Fatalf("snapshot Plan(gold) = %+v, %v, want the new plan", p, ok)
	}

	e.clock.Set(t0.Add(time.Hour))
	updated, err := e.pol.PutPlan(e.admin, "gold", policy.PlanInput{Limits: specOf(t, `{"concurrency":20}`)})
	if err != nil {
		t.Fatalf("PutPlan(gold) again = %v, want nil", err)
	}
	if !updated.CreatedAt.Equal(created.CreatedAt) || !updated.UpdatedAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("update times: got created %v updated %v, want created %v updated %v", updated.CreatedAt, updated.UpdatedAt, created.CreatedAt, t0.Add(time.Hour))
	}
	if updated.Priority != policy.PriorityNormal {
		t.Errorf("priority left empty: got %q, want normal", updated.Priority)
	}
	if got := len(e.audit(t, "", "plan.create", "gold")); got != 1 {
		t.Errorf("plan.create entries for gold: got %d, want 1", got)
	}
	ups := e.audit(t, "", "plan.update", "gold")
	if len(ups) != 1 {
		t.Fatalf("plan.update entries for gold: got %d, want 1", len(ups))
	}
	var before, after policy.Plan
	if err := json.Unmarshal(ups[0].Before, &before); err != nil || jsonOf(t, before.Limits) != jsonOf(t, gold.Limits) {
		t.Errorf("audit before: got %s (%v), want the first version", ups[0].Before, err)
	}
	if err := json.Unmarshal(ups[0].After, &after); err != nil || jsonOf(t, after.Limits) != `{"concurrency":20}` {
		t.Errorf("audit after: got %s (%v), want the second version", ups[0].After, err)
	}
}

func TestDeletePlan(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	if _, err := e.pol.PutPlan(e.admin, "gold", policy.PlanInput{Limits: specOf(t, `{"concurrency":1}`)}); err != nil {
		t.Fatalf("PutPlan(gold) = %v, want nil", err)
	}
	if _, err := e.pol.SetLimits(e.admin, scope(policy.KindUser, w.alice.ID), policy.LimitsInput{Plan: "gold"}); err != nil {
		t.Fatalf("SetLimits(alice, gold) = %v, want nil", err)
	}
	wantErr(t, e.pol.DeletePlan(w.bobCtx, "gold"), errs.Forbidden, "-")
	wantErr(t, e.pol.DeletePlan(context.Background(), "gold"), errs.Unauthorized, "-")
	wantErr(t, e.pol.DeletePlan(e.admin, "gold"), errs.Conflict, "scopes")
	wantErr(t, e.pol.DeletePlan(e.admin, "nope"), errs.NotFound, "-")
	if _, err := e.pol.Plan(e.admin, "gold"); err != nil {
		t.Fatalf("Plan(gold) after refused deletes = %v, want nil", err)
	}

	if err := e.pol.ClearLimits(e.admin, scope(policy.KindUser, w.alice.ID)); err != nil {
		t.Fatalf("ClearLimits(alice) = %v, want nil", err)
	}
	if err := e.pol.DeletePlan(e.admin, "gold"); err != nil {
		t.Fatalf("DeletePlan(gold) unused = %v, want nil", err)
	}
	if _, err := e.pol.Plan(e.admin, "gold"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("Plan(gold) after delete: got %v, want not_found", err)
	}
	if _, ok := e.mgr.Current().Plan("gold"); ok {
		t.Fatalf("snapshot still has plan gold after delete")
	}
	dels := e.audit(t, "", "plan.delete", "gold")
	if len(dels) != 1 || dels[0].Before == nil || dels[0].After != nil {
		t.Fatalf("plan.delete audit: got %d entries (%+v), want one with before and no after", len(dels), dels)
	}
}

// ---- scope limits ----

func TestSetLimitsWithinParents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	var (
		tenant = scope(policy.KindTenant, w.uni.ID)
		d1     = scope(policy.KindDepartment, w.d1.ID)
		d2     = scope(policy.KindDepartment, w.d2.ID)
		p      = scope(policy.KindProject, w.p.ID)
		alice  = scope(policy.KindUser, w.alice.ID)
		bob    = scope(policy.KindUser, w.bob.ID)
		member = policy.MembershipScope(w.alice.ID, w.p.ID)
	)
	// The fixed parents every case is checked against; each case's scope
	// is put back afterwards.
	setup := []struct{ scope, in string }{
		{tenant, `{"plan":"pro"}`}, // 60/min, 1M tokens/day, 5 runs, 7200 GPU s, 2GiB
		{d1, `{"limits":{"tokens":"500000/day"}}`},
		{d2, `{"limits":{"tokens":"400000/day"}}`},
		{alice, `{"plan":"free","limits":{"concurrency":2}}`}, // 10/min
	}
	initial := map[string]policy.LimitsInput{}
	for _, s := range setup {
		in := limitsIn(t, s.in)
		if _, err := e.pol.SetLimits(e.admin, s.scope, in); err != nil {
			t.Fatalf("setup SetLimits(%s, %s) = %v, want nil", s.scope, s.in, err)
		}
		initial[s.scope] = in
	}
	for _, c := range []struct {
		name, scope, in string
		code            errs.Code
		field           string
	}{
		{"department above tenant's tokens", d1, `{"limits":{"tokens":"2000000/day"}}`, errs.Invalid, "limits.tokens"},
		{"department above tenant's requests", d1, `{"limits":{"requests":"120/min"}}`, errs.Invalid, "limits.requests"},
		{"department equal to tenant's requests in other units", d1, `{"limits":{"requests":"1/s"}}`, "", ""},
		{"nested department above its parent", d2, `{"limits":{"tokens":"600000/day"}}`, errs.Invalid, "limits.tokens"},
		{"nested department at its parent", d2, `{"limits":{"tokens":"500000/day"}}`, "", ""},
		{"project above its department", p, `{"limits":{"tokens":"400001/day"}}`, errs.Invalid, "limits.tokens"},
		{"project within its department", p, `{"limits":{"tokens":"400000/day","concurrency":1}}`, "", ""},
		{"user plan above tenant's", bob, `{"plan":"enterprise"}`, errs.Invalid, "limits.requests"},
		{"user plan within tenant's", bob, `{"plan":"free"}`, "", ""},
		{"user override above tenant's tokens", bob, `{"plan":"pro","limits":{"tokens":"2000000/day"}}`, errs.Invalid, "limits.tokens"},
		{"user concurrency above tenant's", bob, `{"limits":{"concurrency":6}}`, errs.Invalid, "limits.concurrency"},
		{"user memory above tenant's", bob, `{"limits":{"memory_per_run":"4GiB"}}`, errs.Invalid, "limits.memory_per_run"},
		{"user gpu above tenant's", bob, `{"limits":{"gpu_seconds":"7201/month"}}`, errs.Invalid, "limits.gpu_seconds"},
		{"user at tenant's caps", bob, `{"plan":"pro","limits":{"concurrency":5,"gpu_seconds":"7200/month"}}`, "", ""},
		{"unknown plan", bob, `{"plan":"platinum"}`, errs.Invalid, "plan"},
		{"membership above its user", member, `{"limits":{"concurrency":3}}`, errs.Invalid, "limits.concurrency"},
		{"membership requests above its user's plan", member, `{"limits":{"requests":"11/min"}}`, errs.Invalid, "limits.requests"},
		{"membership within user and project", member, `{"limits":{"concurrency":2,"requests":"10/min","tokens":"1000/day"}}`, "", ""},
		{"tenant has only global above", tenant, `{"plan":"enterprise"}`, "", ""},
		{"global has no parent", policy.GlobalScope, `{"limits":{"concurrency":1000000}}`, "", ""},
		{"invalid spec", d1, `{"limits":{"gpu_seconds":"5/day"}}`, errs.Invalid, "limits.gpu_seconds"},
		{"malformed scope", "bogus", `{"limits":{"concurrency":1}}`, errs.Invalid, "scope"},
		{"missing project", scope(policy.KindProject, "prj_missing"), `{"limits":{"concurrency":1}}`, errs.NotFound, "scope"},
		{"missing membership", policy.MembershipScope(w.bob.ID, w.p.ID), `{"limits":{"concurrency":1}}`, errs.NotFound, "scope"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, beforeErr := e.pol.Limits(e.admin, c.scope) // fails for a malformed or missing scope
			in := limitsIn(t, c.in)
			v, err := e.pol.SetLimits(e.admin, c.scope, in)
			wantErr(t, err, c.code, c.field)
			if c.code != "" {
				if beforeErr == nil {
					if got, want := e.settings(t, c.scope), before.Plan+" "+jsonOf(t, before.Limits); got != want {
						t.Fatalf("a refused change changed %s: got %s, want %s", c.scope, got, want)
					}
				}
				return
			}
			if v.Scope != c.scope || v.Plan != in.Plan || jsonOf(t, v.Limits) != jsonOf(t, in.Limits) {
				t.Fatalf("SetLimits view: got %s, want plan %q limits %s", jsonOf(t, v), in.Plan, jsonOf(t, in.Limits))
			}
			// Put the scope back for the next case.
			if in, ok := initial[c.scope]; ok {
				if _, err := e.pol.SetLimits(e.admin, c.scope, in); err != nil {
					t.Fatalf("restore %s: %v", c.scope, err)
				}
			} else if err := e.pol.ClearLimits(e.admin, c.scope); err != nil {
				t.Fatalf("clear %s: %v", c.scope, err)
			}
		})
	}
}

func TestSetLimitsWithinAncestors(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	if _, err := e.pol.SetLimits(e.admin, scope(policy.KindTenant, w.uni.ID), limitsIn(t, `{"limits":{"concurrency":5}}`)); err != nil {
		t.Fatalf("SetLimits(tenant) = %v, want nil", err)
	}
	_, err := e.pol.SetLimits(e.admin, scope(policy.KindProject, w.p.ID), limitsIn(t, `{"limits":{"concurrency":50}}`))
	wantErr(t, err, errs.Invalid, "limits.concurrency")
}

func TestSetLimitsParentBelowChild(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	if _, err := e.pol.SetLimits(e.admin, scope(policy.KindProject, w.p.ID), limitsIn(t, `{"limits":{"tokens":"400000/day"}}`)); err != nil {
		t.Fatalf("SetLimits(project) = %v, want nil", err)
	}
	_, err := e.pol.SetLimits(e.admin, scope(policy.KindDepartment, w.d2.ID), limitsIn(t, `{"limits":{"tokens":"300000/day"}}`))
	wantErr(t, err, errs.Invalid, "limits.tokens")
}

func TestSetLimitsRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	small := `{"limits":{"concurrency":1}}`
	for _, c := range []struct {
		who   string
		ctx   context.Context
		scope string
		code  errs.Code
	}{
		{"tenant admin", w.bobCtx, scope(policy.KindDepartment, w.d1.ID), ""},
		{"tenant admin", w.bobCtx, scope(policy.KindDepartment, w.d2.ID), ""},
		{"tenant admin", w.bobCtx, scope(policy.KindProject, w.p.ID), ""},
		{"tenant admin", w.bobCtx, scope(policy.KindUser, w.alice.ID), ""},
		{"tenant admin", w.bobCtx, scope(policy.KindUser, w.bob.ID), ""},
		{"tenant admin", w.bobCtx, policy.MembershipScope(w.alice.ID, w.p.ID), ""},
		{"tenant admin", w.bobCtx, scope(policy.KindTenant, w.uni.ID), errs.Forbidden},
		{"tenant admin", w.bobCtx, policy.GlobalScope, errs.Forbidden},
		{"tenant admin", w.bobCtx, scope(policy.KindTenant, w.other.ID), errs.NotFound},
		{"tenant admin", w.bobCtx, scope(policy.KindProject, w.q.ID), errs.NotFound},
		{"tenant admin", w.bobCtx, scope(policy.KindUser, w.carol.ID), errs.NotFound},
		{"tenant admin", w.bobCtx, policy.MembershipScope(w.carol.ID, w.q.ID), errs.NotFound},
		{"member", w.aliceCtx, scope(policy.KindUser, w.alice.ID), errs.Forbidden},
		{"member", w.aliceCtx, policy.MembershipScope(w.alice.ID, w.p.ID), errs.Forbidden},
		{"member", w.aliceCtx, scope(policy.KindProject, w.p.ID), errs.Forbidden},
		{"member", w.aliceCtx, scope(policy.KindDepartment, w.d1.ID), errs.Forbidden},
		{"member", w.aliceCtx, scope(policy.KindTenant, w.uni.ID), errs.Forbidden},
		{"member", w.aliceCtx, policy.GlobalScope, errs.Forbidden},
		{"member", w.aliceCtx, scope(policy.KindProject, w.q.ID), errs.NotFound},
		{"nobody", context.Background(), scope(policy.KindProject, w.p.ID), errs.Unauthorized},
		{"platform admin", e.admin, scope(policy.KindTenant, w.other.ID), ""},
		{"platform admin", e.admin, policy.GlobalScope, ""},
		{"platform admin", e.admin, scope(policy.KindUser, w.carol.ID), ""},
	} {
		t.Run(c.who+" "+c.scope, func(t *testing.T) {
			if e.pol.ClearLimits(e.admin, c.scope) == nil {
				t.Fatalf("%s had settings before the case", c.scope)
			}
			n := e.auditCount(t)
			_, err := e.pol.SetLimits(c.ctx, c.scope, limitsIn(t, small))
			wantErr(t, err, c.code, "-")
			got := e.settings(t, c.scope)
			if c.code != "" {
				if got != " {}" {
					t.Fatalf("a refused change left %s with %s, want nothing", c.scope, got)
				}
				if m := e.auditCount(t); m != n {
					t.Fatalf("a refused change wrote %d audit entries, want 0", m-n)
				}
				return
			}
			if got != ` {"concurrency":1}` {
				t.Fatalf("settings of %s: got %s, want concurrency 1", c.scope, got)
			}
			if err := e.pol.ClearLimits(c.ctx, c.scope); err != nil {
				t.Fatalf("ClearLimits(%s) by the same caller = %v, want nil", c.scope, err)
			}
		})
	}
}

func TestSetLimitsAudit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	d1 := scope(policy.KindDepartment, w.d1.ID)
	for _, in := range []string{`{"limits":{"tokens":"500000/day"}}`, `{"limits":{"tokens":"400000/day","concurrency":3}}`} {
		if _, err := e.pol.SetLimits(w.bobCtx, d1, limitsIn(t, in)); err != nil {
			t.Fatalf("SetLimits(%s) by the tenant admin = %v, want nil", in, err)
		}
	}
	if err := e.pol.ClearLimits(w.bobCtx, d1); err != nil {
		t.Fatalf("ClearLimits = %v, want nil", err)
	}
	sets := e.audit(t, w.uni.ID, "limits.set", d1)
	if len(sets) != 2 {
		t.Fatalf("limits.set entries: got %d, want 2", len(sets))
	}
	limitsOf := func(raw json.RawMessage) string {
		t.Helper()
		if raw == nil {
			return "none"
		}
		var sl policy.ScopeLimits
		if err := json.Unmarshal(raw, &sl); err != nil {
			t.Fatalf("decode audit object %s: %v", raw, err)
		}
		return jsonOf(t, sl.Limits)
	}
	// Newest first.
	for i, want := range []struct{ before, after string }{
		{`{"tokens":"500000/day"}`, `{"tokens":"400000/day","concurrency":3}`},
		{"none", `{"tokens":"500000/day"}`},
	} {
		a := sets[i]
		if got := limitsOf(a.Before); got != want.before {
			t.Errorf("entry %d before: got %s, want %s", i, got, want.before)
		}
		if got := limitsOf(a.After); got != want.after {
			t.Errorf("entry %d after: got %s, want %s", i, got, want.after)
		}
		if a.ActorUser != w.bob.ID || a.ActorKey == "" || a.TenantID != w.uni.ID || a.ObjectKind != "scope" {
			t.Errorf("entry %d: got actor %s key %q tenant %s kind %s, want actor %s, a key, tenant %s, kind scope",
				i, a.ActorUser, a.ActorKey, a.TenantID, a.ObjectKind, w.bob.ID, w.uni.ID)
		}
	}
	clears := e.audit(t, w.uni.ID, "limits.clear", d1)
	if len(clears) != 1 || limitsOf(clears[0].Before) != `{"tokens":"400000/day","concurrency":3}` || clears[0].After != nil {
		t.Fatalf("limits.clear audit: got %d entries, want one with the last settings before and nothing after", len(clears))
	}
	// The tenant admin sees these entries in its own audit log.
	own, err := e.ten.Audit(w.bobCtx, tenancy.Filter{})
	if err != nil {
		t.Fatalf("Audit as tenant admin = %v, want nil", err)
	}
	n := 0
	for _, a := range own {
		if a.ObjectID == d1 {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("tenant admin's audit entries for %s: got %d, want 3", d1, n)
	}
}

func TestSetLimitsLive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	alice := scope(policy.KindUser, w.alice.ID)
	userLimits := func() *quota.Limits {
		t.Helper()
		c, err := e.mgr.Current().Chain(w.uni.ID, w.alice.ID, w.p.ID)
		if err != nil {
			t.Fatalf("Chain = %v, want nil", err)
		}
		for _, s := range c.Scopes {
			if s.Key == alice {
				return s.Limits
			}
		}
		t.Fatalf("chain has no scope %s", alice)
		return nil
	}
	if l := userLimits(); l != nil {
		t.Fatalf("alice before any change: got %+v, want no limits", l)
	}
	for _, n := range []int64{2, 1, 4} {
		in := policy.LimitsInput{Plan: "free", Limits: specOf(t, `{"concurrency":`+jsonOf(t, n)+`}`)}
		if _, err := e.pol.SetLimits(w.bobCtx, alice, in); err != nil {
			t.Fatalf("SetLimits(concurrency %d) = %v, want nil", n, err)
		}
		l := userLimits()
		if l == nil {
			t.Fatalf("alice after SetLimits: got no limits, want concurrency %d", n)
		}
		bound(t, "alice concurrency", l.Concurrency, n)
		bound(t, "alice tokens/day from plan free", l.TokensDay, 100_000)
	}
	if err := e.pol.ClearLimits(w.bobCtx, alice); err != nil {
		t.Fatalf("ClearLimits = %v, want nil", err)
	}
	if l := userLimits(); l != nil {
		t.Fatalf("alice after ClearLimits: got %+v, want no limits", l)
	}
	// A project created a moment ago can be limited and charged at once.
	np, err := e.ten.CreateProject(w.bobCtx, tenancy.ProjectInput{DepartmentID: w.d2.ID, Name: "group-2"})
	if err != nil {
		t.Fatalf("CreateProject = %v, want nil", err)
	}
	if _, err := e.pol.SetLimits(w.bobCtx, scope(policy.KindProject, np.ID), limitsIn(t, `{"limits":{"concurrency":7}}`)); err != nil {
		t.Fatalf("SetLimits(new project) = %v, want nil", err)
	}
	if got := e.mgr.Current().Parents(policy.KindProject, np.ID, w.uni.ID); len(got) != 1 || got[0] != scope(policy.KindDepartment, w.d2.ID) {
		t.Fatalf("Parents(new project): got %v, want its department", got)
	}
	r := e.mgr.Current().Effective(scope(policy.KindProject, np.ID))
	if r.Limits == nil {
		t.Fatalf("Effective(new project): got no limits, want concurrency 7")
	}
	bound(t, "new project concurrency", r.Limits.Concurrency, 7)
}

func TestLimitsRead(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	if _, err := e.pol.SetLimits(e.admin, scope(policy.KindUser, w.alice.ID), limitsIn(t, `{"plan":"free","limits":{"concurrency":1}}`)); err != nil {
		t.Fatalf("SetLimits = %v, want nil", err)
	}
	for _, c := range []struct {
		who   string
		ctx   context.Context
		scope string
		code  errs.Code
	}{
		{"member", w.aliceCtx, scope(policy.KindUser, w.alice.ID), ""},
		{"member", w.aliceCtx, policy.MembershipScope(w.alice.ID, w.p.ID), ""},
		{"member", w.aliceCtx, scope(policy.KindProject, w.p.ID), ""},
		{"member", w.aliceCtx, scope(policy.KindDepartment, w.d2.ID), ""},
		{"member", w.aliceCtx, scope(policy.KindTenant, w.uni.ID), ""},
		{"member", w.aliceCtx, policy.GlobalScope, ""},
		{"member", w.aliceCtx, scope(policy.KindUser, w.bob.ID), errs.Forbidden},
		{"member", w.aliceCtx, scope(policy.KindProject, w.q.ID), errs.NotFound},
		{"member", w.aliceCtx, scope(policy.KindUser, w.carol.ID), errs.NotFound},
		{"tenant admin", w.bobCtx, scope(policy.KindUser, w.alice.ID), ""},
		{"tenant admin", w.bobCtx, scope(policy.KindUser, w.carol.ID), errs.NotFound},
		{"tenant admin", w.bobCtx, scope(policy.KindTenant, w.other.ID), errs.NotFound},
		{"platform admin", e.admin, scope(policy.KindUser, w.carol.ID), ""},
		{"nobody", context.Background(), policy.GlobalScope, errs.Unauthorized},
		{"platform admin", e.admin, "user/", errs.Invalid},
		{"platform admin", e.admin, scope(policy.KindUser, "usr_missing"), errs.NotFound},
	} {
		t.Run(c.who+" "+c.scope, func(t *testing.T) {
			v, err := e.pol.Limits(c.ctx, c.scope)
			wantErr(t, err, c.code, "-")
			if err == nil && v.Scope != c.scope {
				t.Fatalf("view scope: got %s, want %s", v.Scope, c.scope)
			}
		})
	}
	v, err := e.pol.Limits(w.aliceCtx, scope(policy.KindUser, w.alice.ID))
	if err != nil {
		t.Fatalf("Limits(alice) = %v, want nil", err)
	}
	if v.Plan != "free" || v.Priority != policy.PriorityLow || v.TenantID != w.uni.ID || v.UpdatedAt == nil {
		t.Errorf("view: got plan %q priority %q tenant %q updated %v, want free, low, %s, set", v.Plan, v.Priority, v.TenantID, v.UpdatedAt, w.uni.ID)
	}
	if got := jsonOf(t, v.Limits); got != `{"concurrency":1}` {
		t.Errorf("view limits: got %s, want {\"concurrency\":1}", got)
	}
	if got, want := jsonOf(t, v.Effective), `{"requests":"10/min","tokens":"100000/day","gpu_seconds":"0/month","concurrency":1,"max_tokens_per_call":4096}`; got != want {
		t.Errorf("view effective: got %s, want %s", got, want)
	}
	// Listing: admins only, each its own tenant.
	list, err := e.pol.ListLimits(w.bobCtx, "")
	if err != nil || len(list) != 1 || list[0].TenantID != w.uni.ID {
		t.Errorf("ListLimits as tenant admin = %d items, %v, want alice's settings", len(list), err)
	}
	if _, err := e.pol.ListLimits(w.bobCtx, w.other.ID); !errs.Is(err, errs.NotFound) {
		t.Errorf("ListLimits(other tenant) as tenant admin: got %v, want not_found", err)
	}
	if _, err := e.pol.ListLimits(w.aliceCtx, ""); !errs.Is(err, errs.Forbidden) {
		t.Errorf("ListLimits as member: got %v, want forbidden", err)
	}
}

// ---- grants ----

func TestCreateGrantValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	alice := scope(policy.KindUser, w.alice.ID)
	now := e.clock.Now()
	tokens := specOf(t, `{"tokens":"50000/day"}`)
	for _, c := range []struct {
		name  string
		ctx   context.Context
		in    policy.GrantInput
		code  errs.Code
		field string
	}{
		{"expired", e.admin, policy.GrantInput{Scope: alice, Limits: tokens, ExpiresAt: now.Add(-time.Minute)}, errs.Invalid, "expires_at"},
		{"expires now", e.admin, policy.GrantInput{Scope: alice, Limits: tokens, ExpiresAt: now}, errs.Invalid, "expires_at"},
		{"no expiry", e.admin, policy.GrantInput{Scope: alice, Limits: tokens}, errs.Invalid, "expires_at"},
		{"more than a year", e.admin, policy.GrantInput{Scope: alice, Limits: tokens, ExpiresAt: now.Add(400 * 24 * time.Hour)}, errs.Invalid, "expires_at"},
		{"raises nothing", e.admin, policy.GrantInput{Scope: alice, ExpiresAt: now.Add(time.Hour)}, errs.Invalid, "limits"},
		{"invalid limits", e.admin, policy.GrantInput{Scope: alice, Limits: specOf(t, `{"gpu_seconds":"5/day"}`), ExpiresAt: now.Add(time.Hour)}, errs.Invalid, "limits.gpu_seconds"},
		{"reason too long", e.admin, policy.GrantInput{Scope: alice, Limits: tokens, ExpiresAt: now.Add(time.Hour), Reason: strings.Repeat("x", 501)}, errs.Invalid, "reason"},
		{"bad scope", e.admin, policy.GrantInput{Scope: "user", Limits: tokens, ExpiresAt: now.Add(time.Hour)}, errs.Invalid, "scope"},
		{"missing scope", e.admin, policy.GrantInput{Scope: scope(policy.KindUser, "usr_missing"), Limits: tokens, ExpiresAt: now.Add(time.Hour)}, errs.NotFound, "scope"},
		{"member", w.aliceCtx, policy.GrantInput{Scope: alice, Limits: tokens, ExpiresAt: now.Add(time.Hour)}, errs.Forbidden, "-"},
		{"tenant admin, other tenant", w.bobCtx, policy.GrantInput{Scope: scope(policy.KindUser, w.carol.ID), Limits: tokens, ExpiresAt: now.Add(time.Hour)}, errs.NotFound, "-"},
		{"tenant admin, own tenant scope", w.bobCtx, policy.GrantInput{Scope: scope(policy.KindTenant, w.uni.ID), Limits: tokens, ExpiresAt: now.Add(time.Hour)}, errs.Forbidden, "-"},
		{"nobody", context.Background(), policy.GrantInput{Scope: alice, Limits: tokens, ExpiresAt: now.Add(time.Hour)}, errs.Unauthorized, "-"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.pol.CreateGrant(c.ctx, c.in)
			wantErr(t, err, c.code, c.field)
		})
	}
	if gs, err := e.pol.Grants(e.admin, "", "", false); err != nil || len(gs) != 0 {
		t.Fatalf("Grants after refused creates = %d, %v, want none", len(gs), err)
	}
	// Within a year is accepted.
	if _, err := e.pol.CreateGrant(w.bobCtx, policy.GrantInput{Scope: alice, Limits: tokens, ExpiresAt: now.Add(365 * 24 * time.Hour)}); err != nil {
		t.Fatalf("CreateGrant(a year) by the tenant admin = %v, want nil", err)
	}
}

func TestGrantEffect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	alice := scope(policy.KindUser, w.alice.ID)
	project := scope(policy.KindProject, w.p.ID)
	if _, err := e.pol.SetLimits(e.admin, alice, limitsIn(t, `{"plan":"free"}`)); err != nil {
		t.Fatalf("SetLimits(alice) = %v, want nil", err)
	}
	expires := e.clock.Now().Add(2 * time.Hour)
	g, err := e.pol.CreateGrant(w.bobCtx, policy.GrantInput{Scope: alice, Limits: specOf(t, `{"tokens":"50000/day","concurrency":2}`),
		ExpiresAt: expires, Reason: "exam week"})
	if err != nil {
		t.Fatalf("CreateGrant = %v, want nil", err)
	}
	if g.TenantID != w.uni.ID || g.CreatedBy != w.bob.ID || !g.ExpiresAt.Equal(expires) || g.RevokedAt != nil {
		t.Fatalf("grant: got %+v, want tenant %s, by %s, expiring %v", g, w.uni.ID, w.bob.ID, expires)
	}
	// A grant never creates a limit where there was none.
	if _, err := e.pol.CreateGrant(e.admin, policy.GrantInput{Scope: project, Limits: specOf(t, `{"concurrency":5}`), ExpiresAt: expires}); err != nil {
		t.Fatalf("CreateGrant(project) = %v, want nil", err)
	}

	snap := e.mgr.Current()
	r := snap.Effective(alice)
	if r.Limits == nil {
		t.Fatalf("Effective(alice): got no limits")
	}
	bound(t, "alice tokens/day", r.Limits.TokensDay, 150_000)
	bound(t, "alice concurrency", r.Limits.Concurrency, 3)
	if len(r.Grants) != 1 || r.Grants[0].ID != g.ID {
		t.Fatalf("Effective(alice).Grants: got %d, want the one grant", len(r.Grants))
	}
	if !snap.ValidUntil.Equal(expires) {
		t.Fatalf("ValidUntil: got %v, want %v", snap.ValidUntil, expires)
	}
	if pr := snap.Effective(project); pr.Limits != nil {
		t.Fatalf("Effective(project) with only a grant: got %+v, want no limits", pr.Limits)
	}
	active, err := e.pol.Grants(w.bobCtx, "", alice, true)
	if err != nil || len(active) != 1 || active[0].ID != g.ID {
		t.Fatalf("Grants(alice, active) = %d, %v, want the grant", len(active), err)
	}

	e.clock.Set(t0.Add(time.Hour))
	revoked, err := e.pol.RevokeGrant(w.bobCtx, g.ID)
	if err != nil {
		t.Fatalf("RevokeGrant = %v, want nil", err)
	}
	if revoked.RevokedAt == nil || !revoked.RevokedAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("RevokedAt: got %v, want %v", revoked.RevokedAt, t0.Add(time.Hour))
	}
	r = e.mgr.Current().Effective(alice)
	bound(t, "alice tokens/day after revoke", r.Limits.TokensDay, 100_000)
	bound(t, "alice concurrency after revoke", r.Limits.Concurrency, 1)
	if len(r.Grants) != 0 {
		t.Fatalf("Effective(alice).Grants after revoke: got %d, want 0", len(r.Grants))
	}
	if active, err := e.pol.Grants(e.admin, w.uni.ID, alice, true); err != nil || len(active) != 0 {
		t.Fatalf("active grants after revoke = %d, %v, want none", len(active), err)
	}
	if all, err := e.pol.Grants(e.admin, w.uni.ID, alice, false); err != nil || len(all) != 1 || all[0].RevokedAt == nil {
		t.Fatalf("all grants after revoke = %d, %v, want the revoked grant", len(all), err)
	}
	// Revoking again changes nothing.
	again, err := e.pol.RevokeGrant(e.admin, g.ID)
	if err != nil || again.RevokedAt == nil || !again.RevokedAt.Equal(*revoked.RevokedAt) {
		t.Fatalf("RevokeGrant again = %+v, %v, want the grant as revoked before", again, err)
	}
	if got := len(e.audit(t, w.uni.ID, "grant.revoke", g.ID)); got != 1 {
		t.Fatalf("grant.revoke audit entries: got %d, want 1", got)
	}
	if got := len(e.audit(t, w.uni.ID, "grant.create", g.ID)); got != 1 {
		t.Fatalf("grant.create audit entries: got %d, want 1", got)
	}
	// Who may revoke.
	if _, err := e.pol.RevokeGrant(w.aliceCtx, g.ID); !errs.Is(err, errs.NotFound) {
		t.Fatalf("RevokeGrant as member: got %v, want not_found", err)
	}
	if _, err := e.pol.RevokeGrant(w.carolCtx, g.ID); !errs.Is(err, errs.NotFound) {
		t.Fatalf("RevokeGrant as another tenant's member: got %v, want not_found", err)
	}
	if _, err := e.pol.RevokeGrant(e.admin, "grt_missing"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("RevokeGrant(missing): got %v, want not_found", err)
	}
	if _, err := e.pol.Grants(w.aliceCtx, "", "", false); !errs.Is(err, errs.Forbidden) {
		t.Fatalf("Grants as member: got %v, want forbidden", err)
	}
	if _, err := e.pol.Grants(w.bobCtx, w.other.ID, "", false); !errs.Is(err, errs.NotFound) {
		t.Fatalf("Grants(other tenant) as tenant admin: got %v, want not_found", err)
	}
}

// ---- keys ----

// keyOf makes a key for user as the platform admin and returns it.
func (e *env) keyOf(t *testing.T, userID, name string) *tenancy.Key {
	t.Helper()
	k, _, err := e.ten.CreateKey(e.admin, tenancy.KeyInput{UserID: userID, Name: name})
	if err != nil {
		t.Fatalf("CreateKey(%s) = %v, want nil", userID, err)
	}
	return k
}

// TestKeyLimitsRoles: a key's limits are set by admins of the key's
// tenant only; its owner may read them, nobody else in the tenant, and
// another tenant's admin finds no such scope.
func TestKeyLimitsRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	aliceKey := scope(policy.KindKey, e.keyOf(t, w.alice.ID, "ci").ID)
	carolKey := scope(policy.KindKey, e.keyOf(t, w.carol.ID, "ci").ID)
	small := `{"limits":{"requests":"2/min","models":["small"]}}`
	for _, c := range []struct {
		who   string
		ctx   context.Context
		scope string
		code  errs.Code
	}{
		{"tenant admin", w.bobCtx, aliceKey, ""},
		{"platform admin", e.admin, carolKey, ""},
		{"owner, a member", w.aliceCtx, aliceKey, errs.Forbidden},
		{"admin of another tenant", w.bobCtx, carolKey, errs.NotFound},
		{"member of another tenant", w.aliceCtx, carolKey, errs.NotFound},
		{"missing key", e.admin, scope(policy.KindKey, "key_missing"), errs.NotFound},
	} {
		t.Run(c.who, func(t *testing.T) {
			_ = e.pol.ClearLimits(e.admin, c.scope)
			_, err := e.pol.SetLimits(c.ctx, c.scope, limitsIn(t, small))
			wantErr(t, err, c.code, "-")
			if c.code == "" {
				if got := e.settings(t, c.scope); got != ` {"requests":"2/min","models":["small"]}` {
					t.Fatalf("settings of %s: got %s", c.scope, got)
				}
			}
		})
	}
	// Reading: the owner and admins; another member of the tenant, or of
	// another tenant, finds nothing.
	if _, err := e.pol.Limits(w.aliceCtx, aliceKey); err != nil {
		t.Fatalf("owner reading its key's limits: %v", err)
	}
	carlCtx := e.login(t, w.carl.ID)
	_, err := e.pol.Limits(carlCtx, aliceKey)
	wantErr(t, err, errs.NotFound, "scope")
	_, err = e.pol.Limits(w.carolCtx, aliceKey)
	wantErr(t, err, errs.NotFound, "scope")
	// A revoked key's limits cannot be set.
	k := e.keyOf(t, w.alice.ID, "old")
	if _, err := e.ten.RevokeKey(e.admin, k.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.pol.SetLimits(e.admin, scope(policy.KindKey, k.ID), limitsIn(t, small))
	wantErr(t, err, errs.Conflict, "scope")
}

// TestKeyLimitsWithinUser: a key's caps stay within its user's (its one
// parent), and a user's may not fall below a key's that has its own.
func TestKeyLimitsWithinUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	key := scope(policy.KindKey, e.keyOf(t, w.alice.ID, "ci").ID)
	user := scope(policy.KindUser, w.alice.ID)
	if _, err := e.pol.SetLimits(w.bobCtx, user, limitsIn(t, `{"limits":{"requests":"10/min"}}`)); err != nil {
		t.Fatal(err)
	}
	_, err := e.pol.SetLimits(w.bobCtx, key, limitsIn(t, `{"limits":{"requests":"20/min"}}`))
	wantErr(t, err, errs.Invalid, "limits.requests")
	if _, err := e.pol.SetLimits(w.bobCtx, key, limitsIn(t, `{"limits":{"requests":"5/min"}}`)); err != nil {
		t.Fatalf("key within its user: %v", err)
	}
	_, err = e.pol.SetLimits(w.bobCtx, user, limitsIn(t, `{"limits":{"requests":"4/min"}}`))
	wantErr(t, err, errs.Invalid, "limits.requests")
}

// TestCreateKeyWithLimits: a key and its limits are made in one commit;
// when the limits are refused, no key is left behind.
func TestCreateKeyWithLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	in := policy.KeyInput{KeyInput: tenancy.KeyInput{UserID: w.alice.ID, Name: "ci", ExpiresIn: "720h"}}
	spec := specOf(t, `{"requests":{"limit":10,"period":"1m"},"models":["gpt-4o-mini"]}`)
	in.Limits = &spec
	k, secret, view, err := e.pol.CreateKey(w.bobCtx, in)
	if err != nil {
		t.Fatalf("CreateKey = %v, want nil", err)
	}
	if secret == "" || k.ExpiresAt == nil || !k.ExpiresAt.Equal(t0.Add(720*time.Hour)) {
		t.Fatalf("key: got %+v (secret %q), want a secret and expiry at t0+720h", k, secret)
	}
	if view.Scope != "key/"+k.ID || jsonOf(t, view.Effective) != `{"requests":"10/min","models":["gpt-4o-mini"]}` {
		t.Fatalf("view: got %s, want key/%s limited to 10/min and gpt-4o-mini", jsonOf(t, view), k.ID)
	}
	ch, err := e.mgr.Current().ChainFor(w.uni.ID, w.alice.ID, w.p.ID, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if last := ch.Scopes[len(ch.Scopes)-1]; last.Key != "key/"+k.ID || last.Limits == nil {
		t.Fatalf("chain after create: innermost %s (limits %v), want key/%s with limits", last.Key, last.Limits, k.ID)
	}
	if len(e.audit(t, w.uni.ID, "key.create", k.ID)) != 1 || len(e.audit(t, w.uni.ID, "limits.set", "key/"+k.ID)) != 1 {
		t.Fatal("want one key.create and one limits.set audit entry")
	}
	keysOf := func() int {
		ks, err := e.ten.Keys(e.admin, tenancy.Filter{UserID: w.alice.ID})
		if err != nil {
			t.Fatal(err)
		}
		return len(ks)
	}
	before := keysOf()
	for _, c := range []struct {
		name  string
		ctx   context.Context
		in    policy.KeyInput
		code  errs.Code
		field string
	}{
		{"member limiting their own key", w.aliceCtx, policy.KeyInput{Limits: &spec}, errs.Forbidden, "limits"},
		{"unknown plan", w.bobCtx, policy.KeyInput{KeyInput: tenancy.KeyInput{UserID: w.alice.ID}, Plan: "gold"}, errs.Invalid, "plan"},
		{"above the tenant's limits", e.admin, policy.KeyInput{KeyInput: tenancy.KeyInput{UserID: w.alice.ID}, Limits: ptrSpec(specOf(t, `{"concurrency":99}`))}, errs.Invalid, "limits.concurrency"},
		{"bad limits", w.bobCtx, policy.KeyInput{KeyInput: tenancy.KeyInput{UserID: w.alice.ID}, Limits: ptrSpec(specOf(t, `{"concurrency":-1}`))}, errs.Invalid, "limits.concurrency"},
		{"bad expiry", w.bobCtx, policy.KeyInput{KeyInput: tenancy.KeyInput{UserID: w.alice.ID, ExpiresIn: "soon"}, Limits: &spec}, errs.Invalid, "expires_in"},
		{"user of another tenant", w.bobCtx, policy.KeyInput{KeyInput: tenancy.KeyInput{UserID: w.carol.ID}, Limits: &spec}, errs.NotFound, "user_id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "above the tenant's limits" {
				if _, err := e.pol.SetLimits(e.admin, scope(policy.KindTenant, w.uni.ID), limitsIn(t, `{"limits":{"concurrency":5}}`)); err != nil {
					t.Fatal(err)
				}
			}
			_, _, _, err := e.pol.CreateKey(c.ctx, c.in)
			wantErr(t, err, c.code, c.field)
			if n := keysOf(); n != before {
				t.Fatalf("a refused create left %d keys, want %d", n, before)
			}
		})
	}
}

func ptrSpec(s policy.Spec) *policy.Spec { return &s }

// TestKeyExpiry: expires_in is a duration or whole days, exclusive of
// expires_at, and applies to updates too.
func TestKeyExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.world(t)
	for _, c := range []struct {
		in    tenancy.KeyInput
		want  time.Time
		field string
	}{
		{tenancy.KeyInput{ExpiresIn: "720h"}, t0.Add(720 * time.Hour), ""},
		{tenancy.KeyInput{ExpiresIn: "30d"}, t0.Add(30 * 24 * time.Hour), ""},
		{tenancy.KeyInput{ExpiresIn: "0s"}, time.Time{}, "expires_in"},
		{tenancy.KeyInput{ExpiresIn: "-1h"}, time.Time{}, "expires_in"},
		{tenancy.KeyInput{ExpiresIn: "0d"}, time.Time{}, "expires_in"},
		{tenancy.KeyInput{ExpiresIn: "forever"}, time.Time{}, "expires_in"},
		{tenancy.KeyInput{ExpiresIn: "99999999d"}, time.Time{}, "expires_in"},
		{tenancy.KeyInput{ExpiresIn: "1h", ExpiresAt: ptrTime(t0.Add(time.Hour))}, time.Time{}, "expires_in"},
		{tenancy.KeyInput{ExpiresAt: ptrTime(t0.Add(-time.Hour))}, time.Time{}, "expires_at"},
	} {
		t.Run(c.in.ExpiresIn, func(t *testing.T) {
			c.in.UserID = w.alice.ID
			k, _, err := e.ten.CreateKey(e.admin, c.in)
			if c.field != "" {
				wantErr(t, err, errs.Invalid, c.field)
				return
			}
			if err != nil || k.ExpiresAt == nil || !k.ExpiresAt.Equal(c.want) {
				t.Fatalf("CreateKey = %+v, %v, want expiry %v", k, err, c.want)
			}
		})
	}
	k := e.keyOf(t, w.alice.ID, "later")
	in := "2h"
	k, err := e.ten.UpdateKey(e.admin, k.ID, tenancy.KeyPatch{ExpiresIn: &in})
	if err != nil || k.ExpiresAt == nil || !k.ExpiresAt.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("UpdateKey(expires_in 2h) = %+v, %v, want expiry at t0+2h", k, err)
	}
}

func ptrTime(t time.Time) *time.Time { return &t }
