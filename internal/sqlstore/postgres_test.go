package sqlstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// ---- PostgreSQL entry points ----

// pgServer returns the URL of the PostgreSQL server the tests use. It fails
// the test when none is configured: CI always has one, and a skipped store
// suite would pass without testing anything.
func pgServer(t *testing.T) string {
	t.Helper()
	u := os.Getenv("SLUICE_TEST_POSTGRES_URL")
	if u == "" {
		t.Fatal("SLUICE_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts a throwaway PostgreSQL server and sets it")
	}
	return u
}

// pgDatabase creates an empty database for this test only, dropped when the
// test ends, and returns its URL.
func pgDatabase(t *testing.T) string {
	t.Helper()
	server := pgServer(t)
	admin, err := sql.Open("pgx", server)
	if err != nil {
		t.Fatalf("open %s: %v", Redact(server), err)
	}
	defer admin.Close()
	var b [8]byte
	rand.Read(b[:])
	name := "sluice_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	// Registered before the caller's Close, so it runs after it.
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", server)
		if err != nil {
			t.Errorf("open %s: %v", Redact(server), err)
			return
		}
		defer admin.Close()
		if _, err := admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("SLUICE_TEST_POSTGRES_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// openPostgres opens a migrated store in a database of its own.
func openPostgres(t *testing.T) *Store {
	t.Helper()
	s, err := OpenPostgres(context.Background(), pgDatabase(t))
	if err != nil {
		t.Fatalf("OpenPostgres = %v, want nil", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close = %v, want nil", err)
		}
	})
	return s
}

func TestPostgres(t *testing.T) {
	pgServer(t)
	runStoreSuite(t, openPostgres)
}

// TestPolicyAndUsage runs the policy and usage queries, which the tenancy
// suite does not reach, on both engines.
func TestPolicyAndUsage(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func(*testing.T) *Store) {
		t.Run("Policy", func(t *testing.T) { t.Parallel(); testPolicy(t, open(t)) })
		t.Run("Usage", func(t *testing.T) { t.Parallel(); testUsage(t, open(t)) })
		t.Run("KeyScopes", func(t *testing.T) { t.Parallel(); testKeyScopes(t, open(t)) })
	})
}

func updatePolicy(t *testing.T, s *Store, fn func(policy.Tx) error) {
	t.Helper()
	if err := s.UpdatePolicy(context.Background(), fn); err != nil {
		t.Fatalf("UpdatePolicy = %v, want nil", err)
	}
}

func viewPolicy(t *testing.T, s *Store, fn func(policy.Tx) error) {
	t.Helper()
	if err := s.ViewPolicy(context.Background(), fn); err != nil {
		t.Fatalf("ViewPolicy = %v, want nil", err)
	}
}

func testPolicy(t *testing.T, s *Store) {
	w := newWorld(t, s)
	gold := &policy.Plan{Name: "gold", Description: "more", Priority: policy.PriorityHigh,
		Limits: policy.Spec{Concurrency: ptr(int64(8)), Models: []string{"gpt-4o"}}, CreatedAt: base, UpdatedAt: base}
	basic := &policy.Plan{Name: "basic", Priority: policy.PriorityLow, Limits: policy.Spec{MaxSteps: ptr(int64(10))},
		CreatedAt: base, UpdatedAt: base}
	updatePolicy(t, s, func(tx policy.Tx) error {
		for _, p := range []*policy.Plan{gold, basic} {
			if err := tx.PutPlan(p); err != nil {
				return err
			}
		}
		return nil
	})
	// PutPlan again updates in place and keeps created_at.
	changed := *gold
	changed.Description, changed.Priority, changed.CreatedAt, changed.UpdatedAt = "even more", policy.PriorityNormal, base.Add(time.Hour), base.Add(time.Hour)
	updatePolicy(t, s, func(tx policy.Tx) error { return tx.PutPlan(&changed) })
	wantGold := changed
	wantGold.CreatedAt = base
	viewPolicy(t, s, func(tx policy.Tx) error {
		got, err := tx.Plans()
		if err != nil {
			return err
		}
		same(t, got, []*policy.Plan{basic, &wantGold})
		one, err := tx.Plan("gold")
		if err != nil {
			return err
		}
		same(t, one, &wantGold)
		_, err = tx.Plan("none")
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})

	scopes := []*policy.ScopeLimits{
		{Scope: "tenant:" + w.A.ID, TenantID: w.A.ID, Plan: "gold", UpdatedAt: base},
		// A guarantee travels inside limits_json; a model named like its
		// key does not confuse the decoding.
		{Scope: "user:" + w.ua1.ID, TenantID: w.A.ID, Plan: "gold", Limits: policy.Spec{Concurrency: ptr(int64(1))},
			Guaranteed: &policy.Spec{Concurrency: ptr(int64(1)), Tokens: policy.Budgets{{Amount: 5, Window: quota.WindowDay}}}, UpdatedAt: base},
		{Scope: "tenant:" + w.B.ID, TenantID: w.B.ID, Plan: "basic", UpdatedAt: base},
		{Scope: "global", Limits: policy.Spec{MaxSteps: ptr(int64(100)), Models: []string{"guaranteed"}}, UpdatedAt: base},
	}
	updatePolicy(t, s, func(tx policy.Tx) error {
		for _, sl := range scopes {
			if err := tx.PutScopeLimits(sl); err != nil {
				return err
			}
		}
		moved := *scopes[2]
		moved.Plan, moved.UpdatedAt = "gold", base.Add(time.Minute)
		scopes[2] = &moved
		return tx.PutScopeLimits(&moved) // upsert
	})
	viewPolicy(t, s, func(tx policy.Tx) error {
		if n, err := tx.PlanUsers("gold"); err != nil || n != 3 {
			t.Errorf("PlanUsers(gold) = %d, %v, want 3, nil", n, err)
		}
		if n, err := tx.PlanUsers("basic"); err != nil || n != 0 {
			t.Errorf("PlanUsers(basic) = %d, %v, want 0, nil", n, err)
		}
		all, err := tx.ListScopeLimits("")
		if err != nil {
			return err
		}
		same(t, all, []*policy.ScopeLimits{scopes[3], scopes[0], scopes[2], scopes[1]}) // by scope; A was made before B
		ofA, err := tx.ListScopeLimits(w.A.ID)
		if err != nil {
			return err
		}
		same(t, ofA, []*policy.ScopeLimits{scopes[0], scopes[1]})
		got, err := tx.ScopeLimits("global")
		if err != nil {
			return err
		}
		same(t, got, scopes[3])
		return nil
	})
	updatePolicy(t, s, func(tx policy.Tx) error {
		if err := tx.DeleteScopeLimits("global"); err != nil {
			return err
		}
		return tx.DeletePlan("basic")
	})
	err := s.UpdatePolicy(context.Background(), func(tx policy.Tx) error { return tx.DeleteScopeLimits("global") })
	wantCode(t, err, errs.NotFound, "-")

	now := time.Now().UTC().Truncate(time.Microsecond)
	grants := []*policy.Grant{
		{ID: "gra_1", Scope: "user:" + w.ua1.ID, TenantID: w.A.ID, Limits: policy.Spec{MaxSteps: ptr(int64(5))}, Reason: "demo",
			CreatedBy: w.ua1.ID, CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
		{ID: "gra_2", Scope: "user:" + w.ua1.ID, TenantID: w.A.ID, CreatedAt: now, ExpiresAt: now.Add(-time.Minute)},
		{ID: "gra_3", Scope: "user:" + w.ub1.ID, TenantID: w.B.ID, CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
	}
	updatePolicy(t, s, func(tx policy.Tx) error {
		for _, g := range grants {
			if err := tx.InsertGrant(g); err != nil {
				return err
			}
		}
		revoked := *grants[2]
		revoked.RevokedAt, revoked.Reason = ptr(now), "done"
		grants[2] = &revoked
		return tx.UpdateGrant(&revoked)
	})
	viewPolicy(t, s, func(tx policy.Tx) error {
		for _, tt := range []struct {
			tenant, scope string
			at            time.Time
			want          []*policy.Grant
		}{
			{"", "", time.Time{}, grants},
			{w.A.ID, "", time.Time{}, grants[:2]},
			{"", "user:" + w.ua1.ID, now, grants[:1]},
			{w.B.ID, "", now, []*policy.Grant{}},
		} {
			got, err := tx.Grants(tt.tenant, tt.scope, tt.at)
			if err != nil {
				return err
			}
			same(t, got, tt.want)
		}
		g, err := tx.Grant("gra_3")
		if err != nil {
			return err
		}
		same(t, g, grants[2])

		tree, err := tx.Tree()
		if err != nil {
			return err
		}
		if len(tree.Tenants) != 2 || len(tree.Departments) != 4 || len(tree.Projects) != 4 {
			t.Errorf("Tree() = %d tenants, %d departments, %d projects, want 2, 4, 4",
				len(tree.Tenants), len(tree.Departments), len(tree.Projects))
		}
		for _, d := range tree.Departments {
			if want := map[string]string{w.a1x.ID: w.a1.ID}[d.ID]; d.ParentID != want {
				t.Errorf("Tree() department %s parent = %q, want %q", d.Name, d.ParentID, want)
			}
		}
		return nil
	})
	// A policy view cannot write either.
	if err := s.ViewPolicy(context.Background(), func(tx policy.Tx) error { return tx.PutPlan(basic) }); err == nil {
		t.Errorf("PutPlan in ViewPolicy = nil, want an error")
	}
}

func testUsage(t *testing.T, s *Store) {
	ctx := context.Background()
	berlin := time.FixedZone("CET", 3600)
	at := time.Date(2026, 11, 30, 23, 30, 0, 0, time.UTC) // already December 1st in Berlin
	ev := func(id string, d time.Duration, in, out int64) usage.Event {
		return usage.Event{ID: id, At: at.Add(d), TenantID: "ten_a", UserID: "usr_a", ProjectID: "prj_a", Kind: "metering",
			Model: "gpt-4o", Requests: 1, InputTokens: in, OutputTokens: out, GPUMillis: 7, CostMicros: 1_000_000_000_000,
			Scopes: []string{"global", "tenant:ten_a", "user:usr_a"}, Loc: berlin}
	}
	batch := []usage.Event{ev("evt_1", 0, 10, 5), ev("evt_2", time.Minute, 100, 50)}
	if n, err := s.RecordUsage(ctx, batch); err != nil || n != 2 {
		t.Fatalf("RecordUsage = %d, %v, want 2, nil", n, err)
	}
	// A replayed batch with one new event adds only that one.
	if n, err := s.RecordUsage(ctx, append(batch, ev("evt_3", 2*time.Minute, 1, 1))); err != nil || n != 1 {
		t.Fatalf("RecordUsage(replay) = %d, %v, want 1, nil", n, err)
	}
	got, err := s.Rollups(ctx, []string{"2026-11-30", "2026-12-01", "2026-11", "2026-12"})
	if err != nil {
		t.Fatalf("Rollups = %v, want nil", err)
	}
	slices.SortFunc(got, func(a, b usage.Rollup) int { return strings.Compare(a.Scope+a.Period, b.Scope+b.Period) })
	r := func(scope, period string) usage.Rollup {
		return usage.Rollup{Scope: scope, Period: period, TenantID: "ten_a", Requests: 3, Tokens: 167, GPUMillis: 21, CostMicros: 3_000_000_000_000}
	}
	same(t, got, []usage.Rollup{
		r("global", "2026-11"), r("global", "2026-11-30"),
		r("tenant:ten_a", "2026-12"), r("tenant:ten_a", "2026-12-01"),
		r("user:usr_a", "2026-12"), r("user:usr_a", "2026-12-01"),
	})
	if got, err := s.Rollups(ctx, []string{"1999-01"}); err != nil || len(got) != 0 {
		t.Errorf("Rollups(no such period) = %v, %v, want none, nil", got, err)
	}

	events, err := s.UsageEvents(ctx, "ten_a", at, at.Add(time.Hour), 2)
	if err != nil {
		t.Fatalf("UsageEvents = %v, want nil", err)
	}
	if len(events) != 2 || events[0].ID != "evt_1" || events[1].ID != "evt_2" {
		t.Fatalf("UsageEvents(limit 2) = %+v, want evt_1, evt_2", events)
	}
	want := batch[1]
	want.Loc = nil
	same(t, events[1], want)
	if events, err := s.UsageEvents(ctx, "", at.Add(time.Minute), at.Add(2*time.Minute), 10); err != nil || len(events) != 1 {
		t.Errorf("UsageEvents([+1m, +2m)) = %d events, %v, want 1, nil", len(events), err)
	}
	if events, err := s.UsageEvents(ctx, "ten_other", at, at.Add(time.Hour), 10); err != nil || len(events) != 0 {
		t.Errorf("UsageEvents(other tenant) = %d events, %v, want 0, nil", len(events), err)
	}
}

func TestPostgresDialect(t *testing.T) {
	s := openPostgres(t)
	if got := s.Dialect(); got != "postgres" {
		t.Errorf("Dialect() = %q, want %q", got, "postgres")
	}
	if s.r.DB != s.w {
		t.Errorf("reads and writes use different pools, want one")
	}
	if got := s.w.Stats().MaxOpenConnections; got != 20 {
		t.Errorf("MaxOpenConnections = %d, want 20", got)
	}
}

func TestPostgresMigrateAndReopen(t *testing.T) {
	ctx := context.Background()
	dbURL := pgDatabase(t)
	ms, err := loadMigrations()
	if err != nil {
		t.Fatalf("loadMigrations = %v, want nil", err)
	}
	latest := ms[len(ms)-1].version

	s, err := OpenPostgres(ctx, dbURL)
	if err != nil {
		t.Fatalf("OpenPostgres(empty database) = %v, want nil", err)
	}
	if v, err := s.Version(ctx); err != nil || v != latest {
		t.Fatalf("Version() = %d, %v, want %d, nil", v, err, latest)
	}
	applied := appliedMigrations(t, s)
	if len(applied) != len(ms) {
		t.Fatalf("got %d rows in schema_migrations, want %d", len(applied), len(ms))
	}
	ten := newTenant("kept")
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertTenant(ten) })
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v, want nil", err)
	}

	for i := range 2 {
		s, err = OpenPostgres(ctx, dbURL)
		if err != nil {
			t.Fatalf("reopen %d: OpenPostgres = %v, want nil", i, err)
		}
		if got := appliedMigrations(t, s); !reflect.DeepEqual(got, applied) {
			t.Errorf("reopen %d: schema_migrations = %v, want unchanged %v", i, got, applied)
		}
		if v, err := s.migrate(ctx); err != nil || v != latest {
			t.Errorf("reopen %d: migrate() = %d, %v, want %d, nil", i, v, err, latest)
		}
		view(t, s, func(tx tenancy.Tx) error {
			got, err := tx.Tenant(ten.ID)
			if err != nil {
				return err
			}
			same(t, got, ten)
			return nil
		})
		if err := s.Close(); err != nil {
			t.Fatalf("reopen %d: Close = %v, want nil", i, err)
		}
	}
}

func TestPostgresConcurrentOpen(t *testing.T) {
	// Instances starting together on a fresh database: without the lock
	// they race to create the same tables and one fails.
	const instances = 3
	ctx := context.Background()
	dbURL := pgDatabase(t)
	ms, err := loadMigrations()
	if err != nil {
		t.Fatalf("loadMigrations = %v, want nil", err)
	}
	stores := make([]*Store, instances)
	openErrs := make([]error, instances)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range instances {
		wg.Go(func() {
			<-start
			stores[i], openErrs[i] = OpenPostgres(ctx, dbURL)
		})
	}
	close(start)
	wg.Wait()
	for i := range instances {
		if openErrs[i] != nil {
			t.Errorf("instance %d: OpenPostgres = %v, want nil", i, openErrs[i])
			continue
		}
		defer stores[i].Close()
	}
	if t.Failed() {
		t.FailNow()
	}
	for i, s := range stores {
		if v, err := s.Version(ctx); err != nil || v != ms[len(ms)-1].version {
			t.Errorf("instance %d: Version() = %d, %v, want %d, nil", i, v, err, ms[len(ms)-1].version)
		}
	}
	applied := appliedMigrations(t, stores[0])
	if len(applied) != len(ms) {
		t.Errorf("schema_migrations = %q, want one row for each of %d migrations", applied, len(ms))
	}
	for i, row := range applied {
		if want := ms[i].name; !strings.Contains(row, " "+want+" ") {
			t.Errorf("schema_migrations row %d = %q, want migration %s", i, row, want)
		}
	}
}

func TestPostgresUniqueIsConflict(t *testing.T) {
	s := openPostgres(t)
	ten := newTenant("twice")
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertTenant(ten) })
	err := s.Update(context.Background(), func(tx tenancy.Tx) error { return tx.InsertTenant(newTenant("twice")) })
	wantCode(t, err, errs.Conflict, "name")

	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"unique_violation", &pgconn.PgError{Code: "23505"}, true},
		{"wrapped unique_violation", errors.Join(errors.New("insert"), &pgconn.PgError{Code: "23505"}), true},
		{"foreign_key_violation", &pgconn.PgError{Code: "23503"}, false},
		{"not a PostgreSQL error", errors.New("23505"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := postgres.isUnique(tt.err); got != tt.want {
				t.Errorf("isUnique(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestPostgresOpenErrors(t *testing.T) {
	const password = "s3cr3t-Pa55"
	server, err := url.Parse(pgServer(t))
	if err != nil {
		t.Fatalf("SLUICE_TEST_POSTGRES_URL: %v", err)
	}
	wrongDB := *server
	wrongDB.User = url.UserPassword("postgres", password)
	wrongDB.Path = "/sluice_no_such_database"
	tests := []struct{ name, url string }{
		{"not a postgres URL", "mysql://root:" + password + "@localhost/db"},
		{"unparseable", "postgres://u:" + password + "%zz@localhost/db"},
		{"bad port", "postgres://u:" + password + "@localhost:notaport/db"},
		{"bad sslmode", "postgres://u:" + password + "@localhost/db?sslmode=sometimes"},
		{"nobody listening", "postgres://u:" + password + "@127.0.0.1:1/db?sslmode=disable&connect_timeout=5"},
		{"no such database", wrongDB.String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := OpenPostgres(context.Background(), tt.url)
			if err == nil {
				s.Close()
				t.Fatalf("OpenPostgres = nil error, want one")
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("OpenPostgres error %q contains the password", err)
			}
		})
	}
}

func TestOpenChoosesByScheme(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	tests := []struct {
		name, url, dialect string
	}{
		{"empty", "", "sqlite"},
		{"sqlite without path", "sqlite:", "sqlite"},
		{"sqlite path", "sqlite:" + dir + "/other.db", "sqlite"},
		{"postgres", pgDatabase(t), "postgres"},
		{"postgresql", "postgresql" + strings.TrimPrefix(pgDatabase(t), "postgres"), "postgres"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(ctx, tt.url, dir)
			if err != nil {
				t.Fatalf("Open(%q) = %v, want nil", Redact(tt.url), err)
			}
			defer s.Close()
			if got := s.Dialect(); got != tt.dialect {
				t.Errorf("Open(%q).Dialect() = %q, want %q", Redact(tt.url), got, tt.dialect)
			}
		})
	}
	for _, bad := range []string{"mysql://u:p@h/db", "/srv/sluice.db", "file:sluice.db"} {
		if s, err := Open(ctx, bad, dir); err == nil {
			s.Close()
			t.Errorf("Open(%q) = nil error, want one", bad)
		}
	}
	for _, f := range []string{"sluice.db", "other.db"} {
		if _, err := os.Stat(dir + "/" + f); err != nil {
			t.Errorf("stat %s: %v, want the SQLite file there", f, err)
		}
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"sqlite:/srv/sluice.db", "sqlite:/srv/sluice.db"},
		{"sqlite:relative.db", "sqlite:relative.db"},
		{"postgres://db.internal/sluice", "postgres://db.internal/sluice"},
		{"postgres://sluice@db.internal:5432/sluice?sslmode=verify-full", "postgres://sluice@db.internal:5432/sluice?sslmode=verify-full"},
		{"postgres://sluice:hunter2@db.internal:5432/sluice", "postgres://sluice:xxxxx@db.internal:5432/sluice"},
		{"postgresql://sluice:p%40ss%2Fw0rd@db/sluice?sslmode=require", "postgresql://sluice:xxxxx@db/sluice?sslmode=require"},
		{"postgres://sluice:@db/sluice", "postgres://sluice:xxxxx@db/sluice"},
		{"postgres://db/sluice?user=sluice&password=hunter2", "postgres://db/sluice?password=xxxxx&user=sluice"},
		{"postgres://db/sluice?sslpassword=hunter2&sslmode=require", "postgres://db/sluice?sslmode=require&sslpassword=xxxxx"},
		{"postgres://db/sluice?password=hunter2;x", "postgres://db/sluice?xxxxx"},
		{"postgres://u:hunter2%zz@db/sluice", "<unparseable database URL>"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := Redact(tt.in)
			if got != tt.want {
				t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if strings.Contains(got, "hunter2") {
				t.Errorf("Redact(%q) = %q, want no password in it", tt.in, got)
			}
		})
	}
}

// testKeyScopes: the tree names the keys whose scopes have settings, with
// their owners; the roll-ups of key scopes are read by tenant; deleting a
// user's revoked keys drops their scopes' settings and grants.
func testKeyScopes(t *testing.T, s *Store) {
	ctx := context.Background()
	w := newWorld(t, s)
	now := time.Now().UTC().Truncate(time.Microsecond)
	keyScope := func(k *tenancy.Key) string { return "key/" + k.ID }
	updatePolicy(t, s, func(tx policy.Tx) error {
		for _, k := range []*tenancy.Key{w.kUA2, w.kUB1, w.kAdmin} {
			if err := tx.PutScopeLimits(&policy.ScopeLimits{Scope: keyScope(k), TenantID: k.TenantID,
				Limits: policy.Spec{Concurrency: ptr(int64(1))}, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return tx.InsertGrant(&policy.Grant{ID: "gra_k", Scope: keyScope(w.kUA2), TenantID: w.A.ID, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	})
	viewPolicy(t, s, func(tx policy.Tx) error {
		tree, err := tx.Tree()
		if err != nil {
			return err
		}
		got := map[string]policy.TreeKey{}
		for _, k := range tree.Keys {
			got[k.ID] = k
		}
		want := map[string]policy.TreeKey{
			w.kUA2.ID:   {ID: w.kUA2.ID, UserID: w.ua2.ID, TenantID: w.A.ID},
			w.kUB1.ID:   {ID: w.kUB1.ID, UserID: w.ub1.ID, TenantID: w.B.ID},
			w.kAdmin.ID: {ID: w.kAdmin.ID, UserID: w.admin.ID},
		}
		same(t, got, want)
		return nil
	})

	ev := func(id, tenant string, scopes ...string) usage.Event {
		return usage.Event{ID: id, At: now, TenantID: tenant, Kind: "metering", Requests: 1, InputTokens: 10, CostMicros: 5,
			Scopes: append([]string{"global"}, scopes...), Loc: time.UTC}
	}
	if _, err := s.RecordUsage(ctx, []usage.Event{
		ev("evt_1", w.A.ID, "user/"+w.ua2.ID, keyScope(w.kUA2)),
		ev("evt_2", w.A.ID, "user/"+w.ua2.ID, keyScope(w.kUA2)),
		ev("evt_3", w.B.ID, "user/"+w.ub1.ID, keyScope(w.kUB1)),
		ev("evt_4", w.A.ID, "user/"+w.ua1.ID),
	}); err != nil {
		t.Fatalf("RecordUsage = %v, want nil", err)
	}
	month := usage.MonthPeriod(now, time.UTC)
	roll := func(k *tenancy.Key, n int64) usage.Rollup {
		return usage.Rollup{Scope: keyScope(k), Period: month, TenantID: k.TenantID, Requests: n, Tokens: 10 * n, CostMicros: 5 * n}
	}
	for _, c := range []struct {
		tenant string
		want   []usage.Rollup
	}{
		{w.A.ID, []usage.Rollup{roll(w.kUA2, 2)}},
		{"", sortedRollups(roll(w.kUA2, 2), roll(w.kUB1, 1))},
	} {
		got, err := s.KindRollups(ctx, policy.KindKey, c.tenant, []string{month})
		if err != nil {
			t.Fatalf("KindRollups(%q) = %v, want nil", c.tenant, err)
		}
		same(t, got, c.want)
	}

	// Revoke ua2's key, then delete the user's revoked keys: its scope's
	// settings and grant go with it; others stay.
	update(t, s, func(tx tenancy.Tx) error {
		k := *w.kUA2
		k.RevokedAt = ptr(now)
		if err := tx.UpdateKey(&k); err != nil {
			return err
		}
		return tx.DeleteRevokedKeys(w.ua2.ID)
	})
	viewPolicy(t, s, func(tx policy.Tx) error {
		if _, err := tx.ScopeLimits(keyScope(w.kUA2)); !errs.Is(err, errs.NotFound) {
			t.Errorf("settings of a deleted key: got %v, want not found", err)
		}
		if g, err := tx.Grants("", keyScope(w.kUA2), time.Time{}); err != nil || len(g) != 0 {
			t.Errorf("grants of a deleted key: got %v, %v, want none", g, err)
		}
		if _, err := tx.ScopeLimits(keyScope(w.kUB1)); err != nil {
			t.Errorf("settings of another key: got %v, want them kept", err)
		}
		return nil
	})
}

func sortedRollups(rs ...usage.Rollup) []usage.Rollup {
	slices.SortFunc(rs, func(a, b usage.Rollup) int { return strings.Compare(a.Scope, b.Scope) })
	return rs
}

// eachEngine runs fn, in parallel, on SQLite and on PostgreSQL; open
// gives a fresh store of the engine.
func eachEngine(t *testing.T, fn func(t *testing.T, open func(*testing.T) *Store)) {
	for _, e := range []struct {
		name string
		open func(t *testing.T) *Store
	}{{"sqlite", openSQLite}, {"postgres", openPostgres}} {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			fn(t, e.open)
		})
	}
}
