package policydoc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/policydoc"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// server is the tenancy and policy services over one SQLite store, wired
// as the app wires them, with an Applier over both.
type server struct {
	ten   *tenancy.Service
	pol   *policy.Service
	mgr   *policy.Manager
	ap    *policydoc.Applier
	admin context.Context // a platform admin
}

func newServer(t *testing.T) *server {
	t.Helper()
	ctx := context.Background()
	store, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatalf("OpenSQLite = %v, want nil", err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("Close = %v, want nil", err)
		}
	})
	log := slog.New(slog.DiscardHandler)
	s := &server{admin: tenancy.WithPrincipal(ctx, tenancy.SystemPrincipal)}
	s.mgr = policy.NewManager(store, policy.Spec{}, log)
	s.pol = policy.NewService(store, s.mgr, log)
	s.ten = tenancy.NewService(store, log)
	s.ten.OnChange = func(ctx context.Context) {
		if err := s.mgr.Reload(ctx); err != nil {
			t.Errorf("reload after a tenancy change: %v", err)
		}
	}
	if err := s.pol.EnsureDefaultPlans(ctx); err != nil {
		t.Fatalf("EnsureDefaultPlans = %v, want nil", err)
	}
	if err := s.mgr.Reload(ctx); err != nil {
		t.Fatalf("Reload = %v, want nil", err)
	}
	s.ap = &policydoc.Applier{Tenancy: s.ten, Policy: s.pol}
	return s
}

// apply applies d as ctx and returns the changes as strings.
func (s *server) apply(t *testing.T, ctx context.Context, d *policydoc.Document, dry bool) []string {
	t.Helper()
	changes, err := s.ap.Apply(ctx, d, dry)
	if err != nil {
		t.Fatalf("Apply(dry run %v) = %v, want nil (changes so far: %v)", dry, err, changes)
	}
	return changeStrings(changes)
}

func changeStrings(cs []policydoc.Change) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.String())
	}
	return out
}

// export returns everything as YAML, as the platform admin sees it.
func (s *server) export(t *testing.T) []byte {
	t.Helper()
	d, err := s.ap.Export(s.admin)
	if err != nil {
		t.Fatalf("Export = %v, want nil", err)
	}
	y, err := d.YAML()
	if err != nil {
		t.Fatalf("YAML = %v, want nil", err)
	}
	return y
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	return string(b)
}

func sameChanges(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: got changes\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func (s *server) tenant(t *testing.T, name string) *tenancy.Tenant {
	t.Helper()
	ts, err := s.ten.Tenants(s.admin, tenancy.Filter{})
	if err != nil {
		t.Fatalf("Tenants = %v, want nil", err)
	}
	for _, x := range ts {
		if x.Name == name {
			return x
		}
	}
	t.Fatalf("no tenant %s", name)
	return nil
}

func TestApplyUniversity(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	doc := parse(t, readTestdata(t, "university.yaml"))
	want := []string{
		"~ plan free", // the shipped free plan differs from the document's
		"+ tenant university",
		"+ department university/cs101",
		`~ limits university/cs101: {"tokens":"500000/day"}`,
		"+ project university/cs101/group-1",
		"+ project university/cs101/group-2",
		"+ user university/users/alice",
		`~ limits university/users/alice: plan free, limits {"concurrency":2}`,
		"+ membership university/users/alice@group-1",
	}

	// A dry run reports and changes nothing.
	before := s.export(t)
	sameChanges(t, "dry run", s.apply(t, s.admin, doc, true), want)
	if after := s.export(t); !bytes.Equal(after, before) {
		t.Fatalf("a dry run changed the state:\nbefore\n%s\nafter\n%s", before, after)
	}

	sameChanges(t, "apply", s.apply(t, s.admin, doc, false), want)

	// What was made.
	uni := s.tenant(t, "university")
	if uni.Timezone != "Asia/Shanghai" {
		t.Errorf("tenant time zone: got %s, want Asia/Shanghai", uni.Timezone)
	}
	depts, err := s.ten.Departments(s.admin, tenancy.Filter{TenantID: uni.ID})
	if err != nil || len(depts) != 1 || depts[0].Name != "cs101" || depts[0].ParentID != "" {
		t.Fatalf("departments = %+v, %v, want cs101 at the root", depts, err)
	}
	cs101 := depts[0]
	projects, err := s.ten.Projects(s.admin, tenancy.Filter{TenantID: uni.ID})
	if err != nil || len(projects) != 2 {
		t.Fatalf("projects = %+v, %v, want two", projects, err)
	}
	byName := map[string]*tenancy.Project{}
	for _, p := range projects {
		byName[p.Name] = p
		if p.DepartmentID != cs101.ID {
			t.Errorf("project %s: got department %q, want cs101 (%s)", p.Name, p.DepartmentID, cs101.ID)
		}
	}
	users, err := s.ten.Users(s.admin, tenancy.Filter{TenantID: uni.ID})
	if err != nil || len(users) != 1 || users[0].Name != "alice" || users[0].Role != tenancy.RoleMember {
		t.Fatalf("users = %+v, %v, want member alice", users, err)
	}
	alice := users[0]
	if _, err := s.ten.Membership(s.admin, alice.ID, byName["group-1"].ID); err != nil {
		t.Errorf("alice in group-1: %v, want a membership", err)
	}
	if _, err := s.ten.Membership(s.admin, alice.ID, byName["group-2"].ID); !errs.Is(err, errs.NotFound) {
		t.Errorf("alice in group-2: got %v, want not_found", err)
	}
	v, err := s.pol.Limits(s.admin, policy.ScopeName(policy.KindUser, alice.ID))
	if err != nil {
		t.Fatalf("Limits(alice) = %v, want nil", err)
	}
	if got := jsonOf(t, v.Effective); v.Plan != "free" || got != `{"requests":"10/min","tokens":"100000/day","gpu_seconds":"0/month","concurrency":2}` {
		t.Errorf("alice: got plan %q effective %s, want plan free with concurrency 2", v.Plan, got)
	}
	if v.Priority != policy.PriorityLow {
		t.Errorf("alice priority: got %q, want low", v.Priority)
	}
	// And the engine's view has it, live.
	ch, err := s.mgr.Current().Chain(uni.ID, alice.ID, byName["group-1"].ID)
	if err != nil {
		t.Fatalf("Chain = %v, want nil", err)
	}
	wantKeys := []string{"global", "tenant/" + uni.ID, "department/" + cs101.ID, "project/" + byName["group-1"].ID,
		"user/" + alice.ID, policy.MembershipScope(alice.ID, byName["group-1"].ID)}
	var keys []string
	for _, sc := range ch.Scopes {
		keys = append(keys, sc.Key)
	}
	if !reflect.DeepEqual(keys, wantKeys) {
		t.Fatalf("chain: got %v, want %v", keys, wantKeys)
	}
	if ch.Scopes[2].Limits == nil || ch.Scopes[1].Loc.String() != "Asia/Shanghai" || ch.Priority != policy.PriorityLow {
		t.Fatalf("chain: got pool limits %+v, tenant zone %v, priority %q, want the pool, Asia/Shanghai, low",
			ch.Scopes[2].Limits, ch.Scopes[1].Loc, ch.Priority)
	}
	if n, ok := ch.Scopes[2].Limits.TokensDay.Max(); !ok || n != 500_000 {
		t.Fatalf("class pool: got %d, %v, want 500000", n, ok)
	}

	// Applying again changes nothing.
	sameChanges(t, "dry run again", s.apply(t, s.admin, doc, true), []string{})
	sameChanges(t, "apply again", s.apply(t, s.admin, doc, false), []string{})

	// Raising the pool is exactly one change.
	edited := parse(t, bytes.Replace(readTestdata(t, "university.yaml"), []byte("500000/day"), []byte("600000/day"), 1))
	raise := []string{`~ limits university/cs101: {"tokens":"600000/day"}`}
	sameChanges(t, "dry run of the raise", s.apply(t, s.admin, edited, true), raise)
	sameChanges(t, "raise", s.apply(t, s.admin, edited, false), raise)
	ch, _ = s.mgr.Current().Chain(uni.ID, alice.ID, byName["group-1"].ID)
	if n, _ := ch.Scopes[2].Limits.TokensDay.Max(); n != 600_000 {
		t.Fatalf("class pool after the raise: got %d, want 600000", n)
	}
	sameChanges(t, "apply the raise again", s.apply(t, s.admin, edited, false), []string{})

	// Export → YAML → Parse → Apply changes nothing.
	y := s.export(t)
	sameChanges(t, "apply the export", s.apply(t, s.admin, parse(t, y), false), []string{})
	if after := s.export(t); !bytes.Equal(after, y) {
		t.Fatalf("export changed by applying itself:\nbefore\n%s\nafter\n%s", y, after)
	}
	for _, want := range []string{"university", "cs101", "600000/day", "group-1", "group-2", "alice", "Asia/Shanghai"} {
		if !bytes.Contains(y, []byte(want)) {
			t.Errorf("export lacks %q:\n%s", want, y)
		}
	}
}

func TestApplyEverythingRoundTrip(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	doc := parse(t, readTestdata(t, "everything.yaml"))
	first := s.apply(t, s.admin, doc, false)
	if len(first) < 20 {
		t.Fatalf("first apply: got %d changes, want every object and setting:\n%s", len(first), strings.Join(first, "\n"))
	}
	sameChanges(t, "apply again", s.apply(t, s.admin, doc, false), []string{})
	y := s.export(t)
	exported := parse(t, y)
	sameChanges(t, "dry run of the export", s.apply(t, s.admin, exported, true), []string{})
	sameChanges(t, "apply the export", s.apply(t, s.admin, exported, false), []string{})

	// The export holds what the document said.
	var uni *policydoc.Tenant
	for i := range exported.Tenants {
		if exported.Tenants[i].Name == "university" {
			uni = &exported.Tenants[i]
		}
	}
	if uni == nil || uni.Plan != "pro" || uni.DisplayName != "The University" || len(uni.Departments) != 2 {
		t.Fatalf("exported university: got %+v", uni)
	}
	var alice *policydoc.User
	for i := range uni.Users {
		if uni.Users[i].Name == "alice" {
			alice = &uni.Users[i]
		}
	}
	if alice == nil || !reflect.DeepEqual(alice.Projects, []string{"group-1", "staff"}) || alice.Plan != "free" {
		t.Fatalf("exported alice: got %+v, want plan free in group-1 and staff", alice)
	}
	if exported.Global == nil || jsonOf(t, exported.Global.Limits) != `{"requests":"1000/s","concurrency":500}` {
		t.Fatalf("exported global: got %+v", exported.Global)
	}

	// The same document applied to a fresh server gives the same export.
	fresh := newServer(t)
	fresh.apply(t, fresh.admin, exported, false)
	if got := fresh.export(t); !bytes.Equal(got, y) {
		t.Fatalf("export of a server built from the export differs:\n%s\nwant\n%s", got, y)
	}
}

func TestApplyStopsAtFirstError(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	doc := parse(t, []byte(`tenants: [{name: uni, projects: [{name: p}], users: [{name: u, plan: platinum}, {name: v}]}]`))
	changes, err := s.ap.Apply(s.admin, doc, false)
	var e *errs.Error
	if !errs.Is(err, errs.Invalid) || !errors.As(err, &e) || e.Field != "plan" {
		t.Fatalf("Apply with an unknown plan: got %v, want invalid on field plan", err)
	}
	sameChanges(t, "applied before the error", changeStrings(changes), []string{
		"+ tenant uni", "+ project uni/p", "+ user uni/users/u", "~ limits uni/users/u: plan platinum, limits {}",
	})
	// What came before the error stays; what came after is not done.
	uni := s.tenant(t, "uni")
	users, err := s.ten.Users(s.admin, tenancy.Filter{TenantID: uni.ID})
	if err != nil || len(users) != 1 || users[0].Name != "u" {
		t.Fatalf("users after the failed apply = %+v, %v, want only u", users, err)
	}
}

func TestApplyAsTenantAdmin(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	s.apply(t, s.admin, parse(t, readTestdata(t, "university.yaml")), false)
	s.apply(t, s.admin, parse(t, []byte(`tenants: [{name: other, projects: [{name: x}], users: [{name: olga}]}]`)), false)
	uni := s.tenant(t, "university")
	dean, err := s.ten.CreateUser(s.admin, tenancy.UserInput{TenantID: uni.ID, Name: "dean", Role: tenancy.RoleTenantAdmin})
	if err != nil {
		t.Fatalf("CreateUser(dean) = %v, want nil", err)
	}
	deanCtx := tenancy.WithPrincipal(context.Background(), tenancy.Principal{UserID: dean.ID, UserName: "dean", TenantID: uni.ID, Role: tenancy.RoleTenantAdmin})

	for _, c := range []struct {
		name, doc string
		code      errs.Code
	}{
		{"another tenant's limits", `tenants: [{name: other, limits: {concurrency: 1}}]`, errs.Forbidden},
		{"another tenant's objects", `tenants: [{name: other, projects: [{name: x}, {name: y}], users: [{name: olga, projects: [y]}]}]`, errs.Forbidden},
		{"own tenant's limits", `tenants: [{name: university, limits: {concurrency: 1}}]`, errs.Forbidden},
		{"a plan", `plans: {free: {priority: high, limits: {}}}`, errs.Forbidden},
		{"global limits", `global: {limits: {concurrency: 1}}`, errs.Forbidden},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := s.export(t)
			_, err := s.ap.Apply(deanCtx, parse(t, []byte(c.doc)), false)
			if !errs.Is(err, c.code) {
				t.Fatalf("Apply as tenant admin: got %v, want %s", err, c.code)
			}
			if after := s.export(t); !bytes.Equal(after, before) {
				t.Fatalf("a refused apply changed the state:\nbefore\n%s\nafter\n%s", before, after)
			}
		})
	}

	// Inside its own tenant the tenant admin may apply.
	own := parse(t, []byte(`tenants: [{name: university, departments: [{name: cs101, limits: {tokens: 400000/day}, projects: [{name: group-3}]}]}]`))
	got := s.apply(t, deanCtx, own, false)
	sameChanges(t, "tenant admin's own tenant", got, []string{
		`~ limits university/cs101: {"tokens":"400000/day"}`,
		"+ project university/cs101/group-3",
	})
	// Its export is its tenant alone, without plans or global limits.
	d, err := s.ap.Export(deanCtx)
	if err != nil {
		t.Fatalf("Export as tenant admin = %v, want nil", err)
	}
	if len(d.Tenants) != 1 || d.Tenants[0].Name != "university" || d.Plans != nil || d.Global != nil {
		t.Fatalf("tenant admin's export: got %d tenants, plans %v, global %v, want only university", len(d.Tenants), d.Plans, d.Global)
	}
	member := tenancy.WithPrincipal(context.Background(), tenancy.Principal{UserID: "usr_x", TenantID: uni.ID, Role: tenancy.RoleMember})
	if _, err := s.ap.Export(member); !errs.Is(err, errs.Forbidden) {
		t.Fatalf("Export as member: got %v, want forbidden", err)
	}
	if _, err := s.ap.Export(context.Background()); !errs.Is(err, errs.Unauthorized) {
		t.Fatalf("Export without a principal: got %v, want unauthorized", err)
	}
}

// TestApplyKeys: a document sets the limits of existing API keys, named
// by name, prefix or id; it never creates one; a name two keys share is
// refused; the export names each limited key and applies back unchanged.
func TestApplyKeys(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	s.apply(t, s.admin, parse(t, []byte(`tenants: [{name: uni, projects: [{name: p}], users: [{name: alice, projects: [p]}]}]`)), false)
	uni := s.tenant(t, "uni")
	users, err := s.ten.Users(s.admin, tenancy.Filter{TenantID: uni.ID})
	if err != nil || len(users) != 1 {
		t.Fatalf("users = %v, %v", users, err)
	}
	alice := users[0].ID
	mk := func(name string) *tenancy.Key {
		k, _, err := s.ten.CreateKey(s.admin, tenancy.KeyInput{UserID: alice, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ci, nb, bare := mk("ci"), mk("notebook"), mk("")
	doc := `tenants: [{name: uni, users: [{name: alice, keys: [
  {name: ci, limits: {requests: 2/min, models: [small]}},
  {prefix: ` + nb.Prefix + `, plan: free},
  {id: ` + bare.ID + `, limits: {tokens: 1000/day}}]}]}]`
	got := s.apply(t, s.admin, parse(t, []byte(doc)), false)
	sameChanges(t, "first apply", got, []string{
		`~ limits uni/users/alice/keys/ci: {"requests":"2/min","models":["small"]}`,
		`~ limits uni/users/alice/keys/` + nb.Prefix + `: plan free, limits {}`,
		`~ limits uni/users/alice/keys/` + bare.ID + `: {"tokens":"1000/day"}`,
	})
	sameChanges(t, "apply again", s.apply(t, s.admin, parse(t, []byte(doc)), false), []string{})
	ch, err := s.mgr.Current().ChainFor(uni.ID, alice, "", ci.ID)
	if err != nil {
		t.Fatal(err)
	}
	if last := ch.Scopes[len(ch.Scopes)-1]; last.Key != "key/"+ci.ID || last.Limits == nil || len(last.Limits.Models) != 1 {
		t.Fatalf("ci's chain: innermost %s %+v, want key/%s with its models", last.Key, last.Limits, ci.ID)
	}
	// The export names ci and notebook by name, the nameless key by id.
	exported := parse(t, s.export(t))
	keys := exported.Tenants[0].Users[0].Keys
	if len(keys) != 3 || keys[0].Name != "ci" || keys[1].Name != "notebook" || keys[2].ID != bare.ID {
		t.Fatalf("exported keys: got %+v", keys)
	}
	sameChanges(t, "apply the export", s.apply(t, s.admin, exported, false), []string{})
	// Errors: no such key; a name two keys share.
	mk("ci")
	for _, c := range []struct {
		doc  string
		code errs.Code
	}{
		{`tenants: [{name: uni, users: [{name: alice, keys: [{name: gone, limits: {requests: 1/s}}]}]}]`, errs.NotFound},
		{`tenants: [{name: uni, users: [{name: alice, keys: [{name: ci, limits: {requests: 1/s}}]}]}]`, errs.Invalid},
		{`tenants: [{name: uni, users: [{name: zed, keys: [{name: ci, limits: {requests: 1/s}}]}]}]`, errs.NotFound},
	} {
		_, err := s.ap.Apply(s.admin, parse(t, []byte(c.doc)), true)
		var e *errs.Error
		if !errs.Is(err, c.code) || !errors.As(err, &e) || e.Field != "keys" {
			t.Errorf("Apply(%s) = %v, want %s on field keys", c.doc, err, c.code)
		}
	}
	// With two keys named ci, the export names the first by id.
	if keys := parse(t, s.export(t)).Tenants[0].Users[0].Keys; keys[0].ID != ci.ID {
		t.Fatalf("export with a shared name: got %+v, want ci by id", keys[0])
	}
}

func TestApplyGuarantee(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	doc := parse(t, readTestdata(t, "everything.yaml"))
	s.apply(t, s.admin, doc, false)
	snap := s.mgr.Current()
	var g1 string
	for _, sl := range snap.Scopes() {
		if sl.Guaranteed != nil {
			g1 = sl.Scope
		}
	}
	if g1 == "" || jsonOf(t, snap.Effective(policy.GuaranteedScope(g1)).Spec) != `{"tokens":"100000/day"}` {
		t.Fatalf("group-1's guarantee after apply: scope %q", g1)
	}
	// The department pools it: its shared part is the rest.
	var cs101 string
	for _, sl := range snap.Scopes() {
		if snap.IsPool(sl.Scope) {
			cs101 = sl.Scope
		}
	}
	if got := jsonOf(t, snap.Effective(policy.BorrowScope(cs101)).Spec); got != `{"tokens":"400000/day"}` {
		t.Fatalf("cs101's shared part: %s, want 500000 - 100000 a day", got)
	}

	// A guarantee of a rate is refused, naming where.
	_, err := policydoc.Parse([]byte(`
tenants:
  - name: t
    departments:
      - name: d
        limits: {concurrency: 2}
        projects: [{name: p, guaranteed: {requests: 10/min}}]
`))
	var e *errs.Error
	if !errors.As(err, &e) || e.Field != "tenants[0].departments[0].projects[0].guaranteed.requests" {
		t.Fatalf("parse a rate guarantee: got %v, want a field error at ...projects[0].guaranteed.requests", err)
	}
}
