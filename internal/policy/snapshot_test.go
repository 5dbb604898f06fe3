package policy_test

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// tree is a fixed tenancy tree:
//
//	ten_a "uni" (Asia/Shanghai): dep_1 > dep_2 > prj_p; prj_0 directly under the tenant
//	ten_b "other" (UTC): prj_q
//	ten_c "odd" (an unknown time zone): prj_c
func tree() policy.Tree {
	return policy.Tree{
		Tenants: []policy.TreeTenant{
			{ID: "ten_a", Name: "uni", Timezone: "Asia/Shanghai"},
			{ID: "ten_b", Name: "other", Timezone: "UTC"},
			{ID: "ten_c", Name: "odd", Timezone: "Mars/Olympus_Mons"},
		},
		Departments: []policy.TreeDepartment{
			{ID: "dep_2", TenantID: "ten_a", ParentID: "dep_1", Name: "cs101"}, // listed before its parent on purpose
			{ID: "dep_1", TenantID: "ten_a", Name: "faculty"},
		},
		Projects: []policy.TreeProject{
			{ID: "prj_p", TenantID: "ten_a", DepartmentID: "dep_2", Name: "group-1"},
			{ID: "prj_0", TenantID: "ten_a", Name: "root"},
			{ID: "prj_q", TenantID: "ten_b", Name: "q"},
			{ID: "prj_c", TenantID: "ten_c", Name: "c"},
		},
	}
}

func plans(t *testing.T) []*policy.Plan {
	t.Helper()
	return []*policy.Plan{
		{Name: "free", Priority: policy.PriorityLow, Limits: specOf(t, `{"requests":"10/min","tokens":"100000/day","concurrency":1}`)},
		{Name: "ent", Priority: policy.PriorityHigh, Limits: specOf(t, `{"requests":"600/min","concurrency":50}`)},
	}
}

func settings(t *testing.T, sc, plan, limits string) *policy.ScopeLimits {
	t.Helper()
	return &policy.ScopeLimits{Scope: sc, Plan: plan, Limits: specOf(t, limits)}
}

func TestChain(t *testing.T) {
	t.Parallel()
	shanghai, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatalf("LoadLocation: %v", err)
	}
	snap := policy.NewSnapshot(&policy.Data{Tree: tree()}, policy.Spec{}, 1, t0)
	for _, c := range []struct {
		name                  string
		tenant, user, project string
		want                  []string
		loc                   *time.Location // of every scope but global
		code                  errs.Code
		field                 string
	}{
		{name: "project under nested departments", tenant: "ten_a", user: "usr_u", project: "prj_p",
			want: []string{"global", "tenant/ten_a", "department/dep_1", "department/dep_2", "project/prj_p", "user/usr_u", "membership/usr_u@prj_p"},
			loc:  shanghai},
		{name: "project directly under the tenant", tenant: "ten_a", user: "usr_u", project: "prj_0",
			want: []string{"global", "tenant/ten_a", "project/prj_0", "user/usr_u", "membership/usr_u@prj_0"}, loc: shanghai},
		{name: "no project", tenant: "ten_a", user: "usr_u",
			want: []string{"global", "tenant/ten_a", "user/usr_u"}, loc: shanghai},
		{name: "platform admin", user: "usr_admin",
			want: []string{"global", "user/usr_admin"}, loc: time.UTC},
		{name: "UTC tenant", tenant: "ten_b", user: "usr_v", project: "prj_q",
			want: []string{"global", "tenant/ten_b", "project/prj_q", "user/usr_v", "membership/usr_v@prj_q"}, loc: time.UTC},
		{name: "unknown time zone falls back to UTC", tenant: "ten_c", user: "usr_w", project: "prj_c",
			want: []string{"global", "tenant/ten_c", "project/prj_c", "user/usr_w", "membership/usr_w@prj_c"}, loc: time.UTC},
		{name: "project of another tenant", tenant: "ten_a", user: "usr_u", project: "prj_q", code: errs.NotFound, field: "project_id"},
		{name: "missing project", tenant: "ten_a", user: "usr_u", project: "prj_missing", code: errs.NotFound, field: "project_id"},
		{name: "platform admin in a tenant's project", user: "usr_admin", project: "prj_p", code: errs.NotFound, field: "project_id"},
		{name: "missing tenant", tenant: "ten_missing", user: "usr_u", code: errs.NotFound, field: "-"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ch, err := snap.Chain(c.tenant, c.user, c.project)
			if c.code != "" {
				wantErr(t, err, c.code, c.field)
				return
			}
			if err != nil {
				t.Fatalf("Chain = %v, want nil", err)
			}
			var keys []string
			for _, s := range ch.Scopes {
				keys = append(keys, s.Key)
			}
			if !reflect.DeepEqual(keys, c.want) {
				t.Fatalf("scopes: got %v, want %v", keys, c.want)
			}
			for _, s := range ch.Scopes {
				want := c.loc
				if s.Key == policy.GlobalScope {
					want = time.UTC
				}
				if s.Loc == nil || s.Loc.String() != want.String() {
					t.Errorf("%s: got Loc %v, want %v", s.Key, s.Loc, want)
				}
				if s.Limits != nil {
					t.Errorf("%s: got limits %+v, want none (nothing is set)", s.Key, s.Limits)
				}
			}
			if ch.Priority != policy.PriorityNormal {
				t.Errorf("priority with no plans: got %q, want normal", ch.Priority)
			}
		})
	}
	if got := snap.Location("ten_a").String(); got != "Asia/Shanghai" {
		t.Errorf("Location(ten_a): got %s, want Asia/Shanghai", got)
	}
	if got := snap.Location("ten_missing"); got != time.UTC {
		t.Errorf("Location(missing): got %v, want UTC", got)
	}
}

func TestChainPriorityAndLimits(t *testing.T) {
	t.Parallel()
	d := &policy.Data{Tree: tree(), Plans: plans(t), Scopes: []*policy.ScopeLimits{
		settings(t, "tenant/ten_a", "ent", `{}`),
		settings(t, "user/usr_u", "free", `{}`),
		settings(t, "department/dep_2", "", `{"tokens":"500000/day"}`),
	}}
	snap := policy.NewSnapshot(d, policy.Spec{}, 1, t0)
	for _, c := range []struct {
		name                  string
		tenant, user, project string
		want                  policy.Priority
	}{
		{"innermost plan is the user's", "ten_a", "usr_u", "prj_p", policy.PriorityLow},
		{"only the tenant has a plan", "ten_a", "usr_v", "prj_p", policy.PriorityHigh},
		{"no project", "ten_a", "usr_u", "", policy.PriorityLow},
		{"no plan anywhere", "ten_b", "usr_x", "prj_q", policy.PriorityNormal},
	} {
		t.Run(c.name, func(t *testing.T) {
			ch, err := snap.Chain(c.tenant, c.user, c.project)
			if err != nil {
				t.Fatalf("Chain = %v, want nil", err)
			}
			if ch.Priority != c.want {
				t.Fatalf("priority: got %q, want %q", ch.Priority, c.want)
			}
		})
	}
	ch, err := snap.Chain("ten_a", "usr_u", "prj_p")
	if err != nil {
		t.Fatalf("Chain = %v, want nil", err)
	}
	limited := map[string]bool{}
	for _, s := range ch.Scopes {
		limited[s.Key] = s.Limits != nil
	}
	want := map[string]bool{"global": false, "tenant/ten_a": true, "department/dep_1": false, "department/dep_2": true,
		"project/prj_p": false, "user/usr_u": true, "membership/usr_u@prj_p": false}
	if !reflect.DeepEqual(limited, want) {
		t.Fatalf("scopes with limits: got %v, want %v", limited, want)
	}
	bound(t, "dep_2 tokens/day", ch.Scopes[3].Limits.TokensDay, 500_000)
	bound(t, "user concurrency", ch.Scopes[5].Limits.Concurrency, 1)
}

// TestChainWithKey: a request made with a key has the key's scope last,
// innermost, with its limits, and a plan on the key decides the chain's
// priority and plan. A key that limits nothing is named in Keys (usage
// events record it) but not given to the engine.
func TestChainWithKey(t *testing.T) {
	t.Parallel()
	tr := tree()
	tr.Keys = []policy.TreeKey{{ID: "key_ci", UserID: "usr_u", TenantID: "ten_a"}, {ID: "key_plan", UserID: "usr_u", TenantID: "ten_a"}}
	d := &policy.Data{Tree: tr, Plans: plans(t), Scopes: []*policy.ScopeLimits{
		settings(t, "tenant/ten_a", "ent", `{}`),
		settings(t, "key/key_ci", "", `{"requests":"2/min","models":["small"]}`),
		settings(t, "key/key_plan", "free", `{}`),
	}}
	snap := policy.NewSnapshot(d, policy.Spec{}, 1, t0)
	base := []string{"global", "tenant/ten_a", "department/dep_1", "department/dep_2", "project/prj_p", "user/usr_u", "membership/usr_u@prj_p"}
	for _, c := range []struct {
		name       string
		key        string
		wantKeys   []string
		wantScopes []string
		priority   policy.Priority
		plan       string
	}{
		{"limited key", "key_ci", append(base[:7:7], "key/key_ci"), append(base[:7:7], "key/key_ci"), policy.PriorityHigh, "ent"},
		{"key on a plan", "key_plan", append(base[:7:7], "key/key_plan"), append(base[:7:7], "key/key_plan"), policy.PriorityLow, "free"},
		{"key without settings", "key_bare", append(base[:7:7], "key/key_bare"), base, policy.PriorityHigh, "ent"},
		{"no key", "", base, base, policy.PriorityHigh, "ent"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ch, err := snap.ChainFor("ten_a", "usr_u", "prj_p", c.key)
			if err != nil {
				t.Fatalf("ChainFor = %v, want nil", err)
			}
			var scopes []string
			for _, s := range ch.Scopes {
				scopes = append(scopes, s.Key)
				if s.Key != policy.GlobalScope && (s.Tenant != "ten_a" || s.Loc.String() != "Asia/Shanghai") {
					t.Errorf("%s: got tenant %q zone %v, want ten_a in Asia/Shanghai", s.Key, s.Tenant, s.Loc)
				}
			}
			if !reflect.DeepEqual(ch.Keys, c.wantKeys) || !reflect.DeepEqual(scopes, c.wantScopes) {
				t.Fatalf("got keys %v scopes %v, want keys %v scopes %v", ch.Keys, scopes, c.wantKeys, c.wantScopes)
			}
			if ch.Priority != c.priority || ch.Plan != c.plan {
				t.Fatalf("got priority %q plan %q, want %q %q", ch.Priority, ch.Plan, c.priority, c.plan)
			}
		})
	}
	ch, err := snap.ChainFor("ten_a", "usr_u", "prj_p", "key_ci")
	if err != nil {
		t.Fatalf("ChainFor = %v, want nil", err)
	}
	last := ch.Scopes[len(ch.Scopes)-1]
	if l := last.Limits; l == nil || l.Requests != (quota.Rate{Limit: 2, Period: time.Minute}) || !reflect.DeepEqual(l.Models, []string{"small"}) {
		t.Fatalf("key scope limits: got %+v, want 2/min and models [small]", last.Limits)
	}
	// The cache tells keys apart: the same user without the key has no
	// key scope.
	if again, _ := snap.Chain("ten_a", "usr_u", "prj_p"); len(again.Keys) != len(base) {
		t.Fatalf("chain without key after one with: got %v, want %v", again.Keys, base)
	}
	// A key's tenant is known for keys with settings.
	if tn, ok := snap.ScopeTenant(policy.KindKey, "key_ci"); !ok || tn != "ten_a" {
		t.Fatalf("ScopeTenant(key_ci) = %q, %v, want ten_a, true", tn, ok)
	}
	if _, ok := snap.ScopeTenant(policy.KindKey, "key_bare"); ok {
		t.Fatal("ScopeTenant(key_bare) is known, want unknown (no settings: the caller asks the store)")
	}
	// A platform admin's key: global, user, key.
	if ch, _ := snap.ChainFor("", "usr_root", "", "key_root"); !reflect.DeepEqual(ch.Keys, []string{"global", "user/usr_root", "key/key_root"}) {
		t.Fatalf("platform admin's chain: got %v", ch.Keys)
	}
}

func TestEffective(t *testing.T) {
	t.Parallel()
	revokedAt := t0.Add(-time.Minute)
	grant := func(id, sc, limits string, expires time.Time) *policy.Grant {
		return &policy.Grant{ID: id, Scope: sc, Limits: specOf(t, limits), ExpiresAt: expires}
	}
	revoked := grant("grt_revoked", "user/usr_u", `{"concurrency":100}`, t0.Add(time.Hour))
	revoked.RevokedAt = &revokedAt
	d := &policy.Data{Tree: tree(), Plans: plans(t),
		Scopes: []*policy.ScopeLimits{
			settings(t, "user/usr_u", "free", `{"concurrency":2,"tokens":"200000/day"}`),
			settings(t, "project/prj_p", "", `{"tokens":"50000/day"}`),
			settings(t, "user/usr_gone", "deleted-plan", `{"concurrency":4}`),
			settings(t, "tenant/ten_a", "ent", `{"requests":"100/min"}`),
		},
		Grants: []*policy.Grant{
			grant("grt_1", "user/usr_u", `{"tokens":"50000/day","concurrency":1}`, t0.Add(time.Hour)),
			grant("grt_2", "user/usr_u", `{"concurrency":1}`, t0.Add(3*time.Hour)),
			grant("grt_expired", "user/usr_u", `{"concurrency":100}`, t0),
			revoked,
			grant("grt_p", "project/prj_p", `{"concurrency":5}`, t0.Add(30*time.Minute)),
		},
	}
	snap := policy.NewSnapshot(d, policy.Spec{}, 7, t0)
	if snap.Version != 7 || !snap.BuiltAt.Equal(t0) {
		t.Errorf("Version, BuiltAt: got %d, %v, want 7, %v", snap.Version, snap.BuiltAt, t0)
	}
	if want := t0.Add(30 * time.Minute); !snap.ValidUntil.Equal(want) {
		t.Errorf("ValidUntil: got %v, want the first active grant's expiry %v", snap.ValidUntil, want)
	}
	for _, c := range []struct {
		scope    string
		spec     string
		plan     string
		priority policy.Priority
		grants   []string
		limited  bool
	}{
		// plan free → overrides (concurrency 2, tokens 200000) → grants (+50000, +1, +1)
		{"user/usr_u", `{"requests":"10/min","tokens":"250000/day","concurrency":4}`, "free", policy.PriorityLow, []string{"grt_1", "grt_2"}, true},
		// a grant on a limit the scope does not have creates none
		{"project/prj_p", `{"tokens":"50000/day"}`, "", "", []string{"grt_p"}, true},
		// an override replaces the plan's value field by field
		{"tenant/ten_a", `{"requests":"100/min","concurrency":50}`, "ent", policy.PriorityHigh, nil, true},
		// a plan that no longer exists contributes nothing
		{"user/usr_gone", `{"concurrency":4}`, "", "", nil, true},
		{"membership/usr_u@prj_p", `{}`, "", "", nil, false},
		{"global", `{}`, "", "", nil, false},
	} {
		t.Run(c.scope, func(t *testing.T) {
			r := snap.Effective(c.scope)
			if got := jsonOf(t, r.Spec); got != c.spec {
				t.Errorf("spec: got %s, want %s", got, c.spec)
			}
			if r.Plan != c.plan || r.Priority != c.priority {
				t.Errorf("plan, priority: got %q, %q, want %q, %q", r.Plan, r.Priority, c.plan, c.priority)
			}
			var ids []string
			for _, g := range r.Grants {
				ids = append(ids, g.ID)
			}
			if !reflect.DeepEqual(ids, c.grants) {
				t.Errorf("grants: got %v, want %v", ids, c.grants)
			}
			if (r.Limits != nil) != c.limited {
				t.Errorf("limits: got %+v, want limited=%v", r.Limits, c.limited)
			}
		})
	}
	// The plan itself is not changed by resolving a scope that uses it.
	if p, _ := snap.Plan("free"); jsonOf(t, p.Limits) != `{"requests":"10/min","tokens":"100000/day","concurrency":1}` {
		t.Fatalf("plan free after resolution: got %s", jsonOf(t, p.Limits))
	}
	if got := len(snap.Scopes()); got != 4 {
		t.Errorf("Scopes: got %d, want 4", got)
	}
	if got := len(snap.Plans()); got != 2 {
		t.Errorf("Plans: got %d, want 2", got)
	}
}

func TestEffectiveDefaultGlobal(t *testing.T) {
	t.Parallel()
	def := specOf(t, `{"requests":"1000/s"}`)
	for _, c := range []struct {
		name   string
		scopes []*policy.ScopeLimits
		want   string
	}{
		{"no global settings: the default", nil, `{"requests":"1000/s"}`},
		{"global settings replace the default", []*policy.ScopeLimits{settings(t, "global", "", `{"concurrency":100}`)}, `{"concurrency":100}`},
		{"a global plan replaces the default", []*policy.ScopeLimits{settings(t, "global", "ent", `{}`)}, `{"requests":"600/min","concurrency":50}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap := policy.NewSnapshot(&policy.Data{Tree: tree(), Plans: plans(t), Scopes: c.scopes}, def, 1, t0)
			r := snap.Effective(policy.GlobalScope)
			if got := jsonOf(t, r.Spec); got != c.want {
				t.Fatalf("global: got %s, want %s", got, c.want)
			}
			if r.Limits == nil {
				t.Fatalf("global limits: got none")
			}
			// The default applies to the global scope only.
			if r := snap.Effective("tenant/ten_a"); r.Limits != nil {
				t.Fatalf("tenant: got %+v, want no limits", r.Limits)
			}
			ch, err := snap.Chain("", "usr_admin", "")
			if err != nil || ch.Scopes[0].Limits == nil {
				t.Fatalf("Chain global scope: got %v, want limits", err)
			}
		})
	}
	snap := policy.NewSnapshot(&policy.Data{}, def, 1, t0)
	if want := (quota.Rate{Limit: 1000, Period: time.Second}); snap.Effective("global").Limits.Requests != want {
		t.Fatalf("default global requests: got %+v, want %+v", snap.Effective("global").Limits.Requests, want)
	}
}

func TestParents(t *testing.T) {
	t.Parallel()
	tr := tree()
	tr.Keys = []policy.TreeKey{{ID: "key_k", UserID: "usr_u", TenantID: "ten_a"}}
	snap := policy.NewSnapshot(&policy.Data{Tree: tr}, policy.Spec{}, 1, t0)
	for _, c := range []struct {
		kind, id, tenant string
		want             []string
	}{
		{policy.KindGlobal, "", "", nil},
		{policy.KindTenant, "ten_a", "ten_a", []string{"global"}},
		{policy.KindDepartment, "dep_1", "ten_a", []string{"tenant/ten_a"}},
		{policy.KindDepartment, "dep_2", "ten_a", []string{"department/dep_1"}},
		{policy.KindProject, "prj_p", "ten_a", []string{"department/dep_2"}},
		{policy.KindProject, "prj_0", "ten_a", []string{"tenant/ten_a"}},
		{policy.KindUser, "usr_u", "ten_a", []string{"tenant/ten_a"}},
		{policy.KindUser, "usr_admin", "", []string{"global"}},
		{policy.KindMembership, "usr_u@prj_p", "ten_a", []string{"user/usr_u", "project/prj_p"}},
		{policy.KindKey, "key_k", "ten_a", []string{"user/usr_u"}},
		{policy.KindKey, "key_unknown", "ten_a", nil},
	} {
		t.Run(c.kind+"/"+c.id, func(t *testing.T) {
			if got := snap.Parents(c.kind, c.id, c.tenant); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("Parents(%s, %s, %s) = %v, want %v", c.kind, c.id, c.tenant, got, c.want)
			}
		})
	}
}

// TestSnapshotConcurrentReaders resolves the same scopes and chains from
// many goroutines: the caches must be safe (run with -race) and every
// reader must see the same answer.
func TestSnapshotConcurrentReaders(t *testing.T) {
	t.Parallel()
	d := &policy.Data{Tree: tree(), Plans: plans(t), Scopes: []*policy.ScopeLimits{settings(t, "user/usr_u", "free", `{"concurrency":2}`)}}
	snap := policy.NewSnapshot(d, policy.Spec{}, 1, t0)
	var wg sync.WaitGroup
	type result struct {
		chain *policy.Chain
		spec  *policy.Resolved
		n     int64
	}
	results := make([]result, 16)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, err := snap.Chain("ten_a", "usr_u", "prj_p")
			if err != nil {
				t.Errorf("Chain = %v", err)
				return
			}
			n, _ := ch.Scopes[5].Limits.Concurrency.Max()
			results[i] = result{ch, snap.Effective("user/usr_u"), n}
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.n != 2 || jsonOf(t, r.spec.Spec) != jsonOf(t, results[0].spec.Spec) || len(r.chain.Scopes) != 7 {
			t.Fatalf("reader %d: got concurrency %d, spec %s, %d scopes, want 2, %s, 7",
				i, r.n, jsonOf(t, r.spec.Spec), len(r.chain.Scopes), jsonOf(t, results[0].spec.Spec))
		}
	}
}

func TestManagerBeforeReload(t *testing.T) {
	t.Parallel()
	def := specOf(t, `{"requests":"100/s"}`)
	m := policy.NewManager(nil, def, nil) // Current never touches the store
	snap := m.Current()
	if snap.Version != 0 {
		t.Fatalf("version before Reload: got %d, want 0", snap.Version)
	}
	if got := jsonOf(t, snap.Effective(policy.GlobalScope).Spec); got != `{"requests":"100/s"}` {
		t.Fatalf("global before Reload: got %s, want the default", got)
	}
	if got := jsonOf(t, m.DefaultGlobal()); got != `{"requests":"100/s"}` {
		t.Fatalf("DefaultGlobal: got %s, want the default", got)
	}
}

// TestManagerGrantExpiry shows an expired grant stops raising limits at its
// expiry, without a reload: the store is closed before the clock passes the
// expiry, so the rebuild cannot have read it.
func TestManagerGrantExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.admin
	ten, err := e.ten.CreateTenant(ctx, tenancy.TenantInput{Name: "uni", Timezone: "Asia/Shanghai"})
	if err != nil {
		t.Fatalf("CreateTenant = %v, want nil", err)
	}
	sc := policy.ScopeName(policy.KindTenant, ten.ID)
	if _, err := e.pol.SetLimits(ctx, sc, limitsIn(t, `{"limits":{"concurrency":5,"tokens":"1000/day"}}`)); err != nil {
		t.Fatalf("SetLimits = %v, want nil", err)
	}
	first, second := t0.Add(time.Hour), t0.Add(2*time.Hour)
	if _, err := e.pol.CreateGrant(ctx, policy.GrantInput{Scope: sc, Limits: specOf(t, `{"concurrency":3}`), ExpiresAt: first}); err != nil {
		t.Fatalf("CreateGrant(first) = %v, want nil", err)
	}
	if _, err := e.pol.CreateGrant(ctx, policy.GrantInput{Scope: sc, Limits: specOf(t, `{"tokens":"500/day"}`), ExpiresAt: second}); err != nil {
		t.Fatalf("CreateGrant(second) = %v, want nil", err)
	}
	check := func(when string, concurrency, tokens int64, grants int) *policy.Snapshot {
		t.Helper()
		snap := e.mgr.Current()
		r := snap.Effective(sc)
		bound(t, when+": concurrency", r.Limits.Concurrency, concurrency)
		bound(t, when+": tokens/day", r.Limits.TokensDay, tokens)
		if len(r.Grants) != grants {
			t.Fatalf("%s: got %d grants, want %d", when, len(r.Grants), grants)
		}
		ch, err := snap.Chain(ten.ID, "usr_x", "")
		if err != nil {
			t.Fatalf("%s: Chain = %v, want nil", when, err)
		}
		bound(t, when+": chain concurrency", ch.Scopes[1].Limits.Concurrency, concurrency)
		return snap
	}

	before := check("before expiry", 8, 1500, 2)
	if !before.ValidUntil.Equal(first) {
		t.Fatalf("ValidUntil: got %v, want %v", before.ValidUntil, first)
	}
	e.clock.Set(first.Add(-time.Nanosecond))
	if s := check("just before expiry", 8, 1500, 2); s != before {
		t.Fatalf("Current rebuilt the snapshot before any grant expired")
	}

	e.closeStore()
	if err := e.mgr.Reload(context.Background()); err == nil {
		t.Fatalf("Reload with the store closed: got nil, want an error")
	}

	e.clock.Set(first) // a grant is not active at its expiry
	afterFirst := check("at the first expiry", 5, 1500, 1)
	if afterFirst.Version <= before.Version || !afterFirst.ValidUntil.Equal(second) {
		t.Fatalf("rebuilt snapshot: got version %d valid until %v, want a version above %d valid until %v",
			afterFirst.Version, afterFirst.ValidUntil, before.Version, second)
	}
	if s := e.mgr.Current(); s != afterFirst {
		t.Fatalf("Current rebuilt the snapshot again without a new expiry")
	}

	e.clock.Set(second.Add(time.Minute))
	// Many readers at once see one rebuild and the same limits.
	var wg sync.WaitGroup
	snaps := make([]*policy.Snapshot, 8)
	for i := range snaps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			snaps[i] = e.mgr.Current()
		}()
	}
	wg.Wait()
	for i, s := range snaps {
		if s != snaps[0] {
			t.Fatalf("reader %d got snapshot version %d, want the same snapshot as reader 0 (version %d)", i, s.Version, snaps[0].Version)
		}
	}
	last := check("after both expiries", 5, 1000, 0)
	if !last.ValidUntil.IsZero() {
		t.Fatalf("ValidUntil with no active grant: got %v, want zero", last.ValidUntil)
	}
}

// TestReservedShare: with a share of the global concurrency reserved, the
// chains of the normal and low classes see the global limit less the
// share (at least one slot kept), the high class the whole of it.
func TestReservedShare(t *testing.T) {
	t.Parallel()
	d := &policy.Data{Tree: tree(), Plans: plans(t), Scopes: []*policy.ScopeLimits{
		settings(t, "global", "", `{"concurrency":10}`),
		settings(t, "tenant/ten_a", "ent", `{}`),
		settings(t, "user/usr_u", "free", `{}`),
	}, Platform: policy.Platform{ReservedShare: 0.2}}
	snap := policy.NewSnapshot(d, policy.Spec{}, 1, t0)
	for _, c := range []struct {
		user, tenant, project string
		want                  int64
	}{
		{"usr_v", "ten_a", "prj_p", 10}, // enterprise: high
		{"usr_u", "ten_a", "prj_p", 8},  // free: low
		{"usr_x", "ten_b", "prj_q", 8},  // no plan: normal
	} {
		ch, err := snap.Chain(c.tenant, c.user, c.project)
		if err != nil {
			t.Fatal(err)
		}
		bound(t, c.user+" sees global concurrency", ch.Scopes[0].Limits.Concurrency, c.want)
	}
	if l := snap.Effective("global").Limits; l == nil {
		t.Fatal("global limits gone")
	} else {
		bound(t, "global's own limit", l.Concurrency, 10)
	}
	d.Platform.ReservedShare = 0.01
	snap = policy.NewSnapshot(d, policy.Spec{}, 2, t0)
	ch, err := snap.Chain("ten_b", "usr_x", "prj_q")
	if err != nil {
		t.Fatal(err)
	}
	bound(t, "a small share still keeps one slot", ch.Scopes[0].Limits.Concurrency, 9)
}
