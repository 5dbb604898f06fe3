package policy_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// poolTree is tree() with a second project, prj_b, beside prj_p in dep_2.
func poolTree() policy.Tree {
	tr := tree()
	tr.Projects = append(tr.Projects, policy.TreeProject{ID: "prj_b", TenantID: "ten_a", DepartmentID: "dep_2", Name: "group-b"})
	return tr
}

func TestChainPaths(t *testing.T) {
	t.Parallel()
	pool := settings(t, "department/dep_2", "", `{"concurrency":4,"tokens":"1000/day","requests":"100/min"}`)
	a := settings(t, "project/prj_p", "", `{"concurrency":3}`)
	g := specOf(t, `{"concurrency":2,"tokens":"400/day"}`)
	a.Guaranteed = &g
	snap := policy.NewSnapshot(&policy.Data{Tree: poolTree(), Scopes: []*policy.ScopeLimits{pool, a}}, policy.Spec{}, 1, t0)

	bound(t, "borrow concurrency", snap.Effective("department/dep_2~borrow").Limits.Concurrency, 2)
	bound(t, "borrow tokens/day", snap.Effective("department/dep_2~borrow").Limits.TokensDay, 600)
	if l := snap.Effective("department/dep_2~borrow").Limits; !l.Requests.IsZero() {
		t.Fatalf("borrow part limits requests %+v, want only the guaranteed dimensions", l.Requests)
	}
	bound(t, "guarantee concurrency", snap.Effective("project/prj_p~guaranteed").Limits.Concurrency, 2)
	bound(t, "guarantee tokens/day", snap.Effective("project/prj_p~guaranteed").Limits.TokensDay, 400)
	if !snap.IsPool("department/dep_2") || snap.IsPool("department/dep_1") || snap.IsPool("tenant/ten_a") {
		t.Fatalf("IsPool: got dep_2 %v dep_1 %v ten_a %v, want only dep_2",
			snap.IsPool("department/dep_2"), snap.IsPool("department/dep_1"), snap.IsPool("tenant/ten_a"))
	}

	// A, with its guarantee: two paths.
	c, err := snap.ChainFor("ten_a", "usr_x", "prj_p", "key_1")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pools) != 1 || c.Pools[0].Scope != "department/dep_2" || c.Pools[0].Guaranteed == nil {
		t.Fatalf("pools %+v, want dep_2 with prj_p's guarantee", c.Pools)
	}
	real := []string{"global", "tenant/ten_a", "department/dep_1", "department/dep_2", "project/prj_p", "user/usr_x", "membership/usr_x@prj_p", "key/key_1"}
	if !slices.Equal(c.Keys, real) {
		t.Fatalf("Keys %v, want the real scopes %v", c.Keys, real)
	}
	guaranteed := []string{"global", "tenant/ten_a", "department/dep_1", "department/dep_2", "project/prj_p", "project/prj_p~guaranteed", "user/usr_x", "membership/usr_x@prj_p", "key/key_1"}
	borrowed := []string{"global", "tenant/ten_a", "department/dep_1", "department/dep_2~borrow", "department/dep_2", "project/prj_p", "user/usr_x", "membership/usr_x@prj_p", "key/key_1"}
	if p := c.Path(0); !slices.Equal(p.Keys, guaranteed) || !slices.Equal(c.PathKeys, guaranteed) {
		t.Fatalf("guaranteed path keys %v (PathKeys %v), want %v", p.Keys, c.PathKeys, guaranteed)
	}
	if p := c.Path(1); !slices.Equal(p.Keys, borrowed) {
		t.Fatalf("borrowed path keys %v, want %v", p.Keys, borrowed)
	}
	// The key limits nothing, so it is not an engine scope: the engine
	// scopes are the path's keys but the last.
	for _, p := range []policy.Path{c.Path(0), c.Path(1)} {
		var keys []string
		for _, sc := range p.Scopes {
			keys = append(keys, sc.Key)
		}
		if !slices.Equal(keys, p.Keys[:len(p.Keys)-1]) {
			t.Fatalf("engine scopes %v, want %v", keys, p.Keys[:len(p.Keys)-1])
		}
	}
	if sc := c.Scopes[5]; sc.Key != "project/prj_p~guaranteed" || sc.Tenant != "ten_a" || sc.Loc.String() != "Asia/Shanghai" {
		t.Fatalf("Scopes[5] = %s tenant %q loc %v, want prj_p's guarantee in ten_a's time zone", sc.Key, sc.Tenant, sc.Loc)
	}
	if c.BorrowAfter("project/prj_p~guaranteed") != 0 || c.BorrowAfter("department/dep_2") != 0 || c.BorrowAfter("project/prj_p") != -1 {
		t.Fatalf("BorrowAfter(guarantee, pool, own limit) = %d, %d, %d, want 0, 0, -1",
			c.BorrowAfter("project/prj_p~guaranteed"), c.BorrowAfter("department/dep_2"), c.BorrowAfter("project/prj_p"))
	}

	// B, without one: only the borrowed path, whatever the bits say.
	cb, err := snap.Chain("ten_a", "usr_y", "prj_b")
	if err != nil {
		t.Fatal(err)
	}
	wantB := []string{"global", "tenant/ten_a", "department/dep_1", "department/dep_2~borrow", "department/dep_2", "project/prj_b", "user/usr_y", "membership/usr_y@prj_b"}
	if !slices.Equal(cb.PathKeys, wantB) || !slices.Equal(cb.Path(1).Keys, wantB) || cb.BorrowAfter("department/dep_2") != -1 {
		t.Fatalf("B's path keys %v / %v, want %v", cb.PathKeys, cb.Path(1).Keys, wantB)
	}

	// Outside the pool: no synthetic scopes at all.
	c0, err := snap.Chain("ten_a", "usr_x", "prj_0")
	if err != nil {
		t.Fatal(err)
	}
	if len(c0.Pools) != 0 || !slices.Equal(c0.PathKeys, c0.Keys) || len(c0.Scopes) != len(c0.Keys) {
		t.Fatalf("chain outside the pool: pools %v path %v keys %v", c0.Pools, c0.PathKeys, c0.Keys)
	}
}

func TestSplitSynthetic(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, real, suffix string
		ok               bool
	}{
		{"department/d~borrow", "department/d", policy.BorrowSuffix, true},
		{"project/p~guaranteed", "project/p", policy.GuaranteedSuffix, true},
		{"project/p", "project/p", "", false},
		{"project/p~other", "project/p~other", "", false},
	} {
		r, s, ok := policy.SplitSynthetic(tc.in)
		if r != tc.real || s != tc.suffix || ok != tc.ok {
			t.Errorf("SplitSynthetic(%q) = %q, %q, %v, want %q, %q, %v", tc.in, r, s, ok, tc.real, tc.suffix, tc.ok)
		}
	}
}

func TestGuaranteeValidation(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	p2, err := e.ten.CreateProject(e.admin, tenancy.ProjectInput{TenantID: w.uni.ID, DepartmentID: w.d2.ID, Name: "group-2"})
	if err != nil {
		t.Fatal(err)
	}
	d2, p, pb := scope(policy.KindDepartment, w.d2.ID), scope(policy.KindProject, w.p.ID), scope(policy.KindProject, p2.ID)
	set := func(sc, j string) error {
		t.Helper()
		_, err := e.pol.SetLimits(w.bobCtx, sc, limitsIn(t, j))
		return err
	}

	// The parent limits nothing yet.
	wantErr(t, set(p, `{"guaranteed":{"concurrency":2}}`), errs.Invalid, "guaranteed.concurrency")
	wantErr(t, set(d2, `{"limits":{"concurrency":4,"tokens":"1000/day"}}`), "", "")
	// Only budgets and concurrency, never a rate.
	wantErr(t, set(p, `{"guaranteed":{"requests":"10/min"}}`), errs.Invalid, "guaranteed.requests")
	wantErr(t, set(p, `{"guaranteed":{}}`), errs.Invalid, "guaranteed")
	// A month budget the parent does not set.
	wantErr(t, set(p, `{"guaranteed":{"tokens":"10/month"}}`), errs.Invalid, "guaranteed.tokens")
	// Above the child's own limit.
	wantErr(t, set(p, `{"limits":{"concurrency":1},"guaranteed":{"concurrency":2}}`), errs.Invalid, "guaranteed.concurrency")
	// Only departments and projects.
	wantErr(t, set(scope(policy.KindUser, w.alice.ID), `{"guaranteed":{"concurrency":1}}`), errs.Invalid, "guaranteed")
	_, err = e.pol.SetLimits(e.admin, scope(policy.KindTenant, w.uni.ID), limitsIn(t, `{"guaranteed":{"concurrency":1}}`))
	wantErr(t, err, errs.Invalid, "guaranteed")

	wantErr(t, set(p, `{"limits":{"concurrency":3},"guaranteed":{"concurrency":2,"tokens":"400/day"}}`), "", "")
	// The sum of the guarantees must fit in the pool.
	wantErr(t, set(pb, `{"guaranteed":{"concurrency":3}}`), errs.Invalid, "guaranteed.concurrency")
	wantErr(t, set(pb, `{"guaranteed":{"tokens":"700/day"}}`), errs.Invalid, "guaranteed.tokens")
	wantErr(t, set(pb, `{"guaranteed":{"concurrency":2,"tokens":"600/day"}}`), "", "")
	// Changing one's own guarantee is not counted twice.
	wantErr(t, set(pb, `{"guaranteed":{"concurrency":2,"tokens":"500/day"}}`), "", "")
	// The pool may not shrink below its children's guarantees, nor go.
	wantErr(t, set(d2, `{"limits":{"concurrency":3,"tokens":"1000/day"}}`), errs.Invalid, "limits.concurrency")
	wantErr(t, set(d2, `{"limits":{"concurrency":4}}`), errs.Invalid, "limits.tokens")
	wantErr(t, e.pol.ClearLimits(w.bobCtx, d2), errs.Conflict, "scope")

	// What was stored reads back, the pool shows its shared part, and the
	// change is audited with the guarantee.
	v, err := e.pol.Limits(w.bobCtx, p)
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonOf(t, v.Guaranteed); got != `{"tokens":"400/day","concurrency":2}` {
		t.Fatalf("p's guarantee reads back %s", got)
	}
	pv, err := e.pol.Limits(w.bobCtx, d2)
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonOf(t, pv.Shared); got != `{"tokens":"100/day","concurrency":0}` {
		t.Fatalf("d2's shared part %s, want tokens 1000-400-500 and concurrency 4-2-2", got)
	}
	au := e.audit(t, w.uni.ID, "limits.set", p)
	if len(au) == 0 || !strings.Contains(string(au[0].After), `"guaranteed"`) {
		t.Fatalf("audit of p's limits: %d entries, want the last to hold the guarantee", len(au))
	}
}

func TestLimitsInputGuaranteedField(t *testing.T) {
	t.Parallel()
	var in policy.LimitsInput
	err := json.Unmarshal([]byte(`{"guaranteed":{"concurency":2}}`), &in)
	wantErr(t, err, errs.Invalid, "guaranteed.concurency")
	err = json.Unmarshal([]byte(`{"limits":{"concurrency":1},"guaranteed":{"concurrency":2},"plan":"pro"}`), &in)
	if err != nil || in.Guaranteed == nil || *in.Guaranteed.Concurrency != 2 || in.Plan != "pro" || *in.Limits.Concurrency != 1 {
		t.Fatalf("decode = %+v, %v", in, err)
	}
	if err := json.Unmarshal([]byte(`{"limits":{},"extra":1}`), &in); err == nil {
		t.Fatalf("an unknown field decoded without error")
	}
}
