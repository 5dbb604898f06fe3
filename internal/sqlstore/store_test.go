package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// ---- SQLite entry points ----

func openSQLite(t *testing.T) *Store {
	t.Helper()
	s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatalf("OpenSQLite = %v, want nil", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close = %v, want nil", err)
		}
	})
	return s
}

func TestSQLite(t *testing.T) {
	runStoreSuite(t, openSQLite)
}

func TestSQLiteMigrateAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat before open: got %v, want not exist", err)
	}
	ms, err := loadMigrations()
	if err != nil {
		t.Fatalf("loadMigrations = %v, want nil", err)
	}
	latest := ms[len(ms)-1].version

	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("OpenSQLite(new file) = %v, want nil", err)
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

	// Re-opening runs nothing again and keeps the data.
	for i := range 2 {
		s, err = OpenSQLite(ctx, path)
		if err != nil {
			t.Fatalf("reopen %d: OpenSQLite = %v, want nil", i, err)
		}
		if v, err := s.Version(ctx); err != nil || v != latest {
			t.Errorf("reopen %d: Version() = %d, %v, want %d, nil", i, v, err, latest)
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

// appliedMigrations lists schema_migrations as "version name applied_at".
func appliedMigrations(t *testing.T, s *Store) []string {
	t.Helper()
	rows, err := s.r.Query(`SELECT version, name, applied_at FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatalf("query schema_migrations: %v", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v int
		var name string
		var at int64
		if err := rows.Scan(&v, &name, &at); err != nil {
			t.Fatalf("scan schema_migrations: %v", err)
		}
		out = append(out, fmt.Sprintf("%d %s %d", v, name, at))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("rows schema_migrations: %v", err)
	}
	return out
}

func TestSQLitePragmas(t *testing.T) {
	s := openSQLite(t)
	for _, db := range []struct {
		name string
		q    func(q string) (string, error)
	}{
		{"writer", func(q string) (v string, err error) { return v, s.w.QueryRow(q).Scan(&v) }},
		{"reader", func(q string) (v string, err error) { return v, s.r.QueryRow(q).Scan(&v) }},
	} {
		for _, p := range []struct{ pragma, want string }{
			{"journal_mode", "wal"},
			{"foreign_keys", "1"},
			{"busy_timeout", "10000"},
		} {
			got, err := db.q("PRAGMA " + p.pragma)
			if err != nil || got != p.want {
				t.Errorf("%s: PRAGMA %s = %q, %v, want %q, nil", db.name, p.pragma, got, err, p.want)
			}
		}
	}
	if got, err := func() (v string, err error) { return v, s.r.QueryRow("PRAGMA query_only").Scan(&v) }(); err != nil || got != "1" {
		t.Errorf("reader: PRAGMA query_only = %q, %v, want %q, nil", got, err, "1")
	}
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertTenant(newTenant("wal")) })
	var path string
	if err := s.w.QueryRow("SELECT file FROM pragma_database_list WHERE name = 'main'").Scan(&path); err != nil {
		t.Fatalf("database file: %v", err)
	}
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Errorf("stat %s-wal: got %v, want the WAL file to exist", path, err)
	}
	if got := s.Dialect(); got != "sqlite" {
		t.Errorf("Dialect() = %q, want %q", got, "sqlite")
	}
}

func TestSQLiteOddPath(t *testing.T) {
	// The path becomes a file: URI; characters that mean something in a URI
	// must still name the file they spell.
	dir := filepath.Join(t.TempDir(), "a dir #1 %20 ?x=y")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "my db?.db")
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenSQLite(%q) = %v, want nil", path, err)
	}
	defer s.Close()
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertTenant(newTenant("odd")) })
	if _, err := os.Stat(path); err != nil {
		t.Errorf("stat %q: got %v, want the database there", path, err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "my db?.db") {
			t.Errorf("found %q in %s (all: %q), want only the database and its WAL files", n, dir, names)
		}
	}
}

func TestLoadMigrations(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatalf("loadMigrations = %v, want nil", err)
	}
	if len(ms) == 0 {
		t.Fatal("got no migrations, want at least one")
	}
	if ms[0].version != 1 {
		t.Errorf("first migration version = %d, want 1", ms[0].version)
	}
	for i, m := range ms {
		if i > 0 && m.version <= ms[i-1].version {
			t.Errorf("migration %s version %d after %d, want increasing", m.name, m.version, ms[i-1].version)
		}
		if !strings.HasSuffix(m.name, ".sql") || strings.Contains(m.name, "/") {
			t.Errorf("migration name %q, want a bare file name ending .sql", m.name)
		}
		if len(statements(m.sql)) == 0 {
			t.Errorf("migration %s has no statements, want some", m.name)
		}
	}
}

func TestStatements(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"empty", "", nil},
		{"blank and comments only", "\n  \n-- one\n   -- two\n\n", nil},
		{"one statement", "CREATE TABLE a (x INT);", []string{"CREATE TABLE a (x INT);"}},
		{"two on their own lines", "CREATE TABLE a (x INT);\nCREATE TABLE b (y INT);\n",
			[]string{"CREATE TABLE a (x INT);", "CREATE TABLE b (y INT);"}},
		{
			"multi-line with comments between and inside",
			"-- header\n\nCREATE TABLE a (\n    -- the key\n    id TEXT PRIMARY KEY,\n    n  INT\n);\n-- next\nCREATE INDEX a_n ON a (n);\n",
			[]string{"CREATE TABLE a (\n    id TEXT PRIMARY KEY,\n    n  INT\n);", "CREATE INDEX a_n ON a (n);"},
		},
		{"indented terminator and trailing spaces", "  CREATE TABLE a (x INT)\n  ;  \n", []string{"CREATE TABLE a (x INT)\n  ;"}},
		{"semicolon mid-line does not split", "INSERT INTO a VALUES (1); INSERT INTO a VALUES (2);\n",
			[]string{"INSERT INTO a VALUES (1); INSERT INTO a VALUES (2);"}},
		{"last statement without semicolon", "CREATE TABLE a (x INT);\nCREATE TABLE b (y INT)\n",
			[]string{"CREATE TABLE a (x INT);", "CREATE TABLE b (y INT)"}},
		{"CRLF line ends", "CREATE TABLE a (x INT);\r\nCREATE TABLE b (y INT);\r\n",
			[]string{"CREATE TABLE a (x INT);", "CREATE TABLE b (y INT);"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statements(tt.src); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("statements(%q) = %q, want %q", tt.src, got, tt.want)
			}
		})
	}
}

func TestRebind(t *testing.T) {
	q := "SELECT a FROM t WHERE b = ? AND c IN (?, ?)"
	if got := sqlite.rebind(q); got != q {
		t.Errorf("sqlite rebind = %q, want %q unchanged", got, q)
	}
	pg := dialect{dollar: true}
	if got, want := pg.rebind(q), "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"; got != want {
		t.Errorf("dollar rebind = %q, want %q", got, want)
	}
}

// ---- the suite ----

// runStoreSuite checks a Store against the tenancy.Tx contract. open returns
// a fresh, migrated, empty store that is closed when t ends; every subtest
// opens its own.
func runStoreSuite(t *testing.T, open func(t *testing.T) *Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s *Store)
	}{
		{"Migrated", testMigrated},
		{"Tenants", testTenants},
		{"Departments", testDepartments},
		{"Projects", testProjects},
		{"Users", testUsers},
		{"Memberships", testMemberships},
		{"Keys", testKeys},
		{"Audit", testAudit},
		{"AuditDefaultLimit", testAuditDefaultLimit},
		{"Filters", testFilters},
		{"Paging", testPaging},
		{"Conflicts", testConflicts},
		{"SameNameElsewhere", testSameNameElsewhere},
		{"NotFound", testNotFound},
		{"Rollback", testRollback},
		{"ViewIsReadOnly", testViewIsReadOnly},
		{"ForeignKeys", testForeignKeys},
		{"DeleteProjectKeepsKeys", testDeleteProjectKeepsKeys},
		{"CountActiveKeys", testCountActiveKeys},
		{"DeleteRevokedKeys", testDeleteRevokedKeys},
		{"MicrosecondTimes", testMicrosecondTimes},
		{"ConcurrentWriters", testConcurrentWriters},
		{"ReadersDoNotWaitForWriter", testReadersDoNotWaitForWriter},
		{"CancelledContext", testCancelledContext},
		{"CancelledIsUnavailable", testCancelledIsUnavailable},
		{"Files", testFiles},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
}

// ---- helpers ----

// base is a fixed, microsecond-precise instant: what the store keeps.
var base = time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.UTC)

func update(t *testing.T, s *Store, fn func(tenancy.Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update = %v, want nil", err)
	}
}

func view(t *testing.T, s *Store, fn func(tenancy.Tx) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatalf("View = %v, want nil", err)
	}
}

// same fails unless got and want are deeply equal.
func same[T any](t *testing.T, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %s, want %s", show(got), show(want))
	}
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%+v", v)
	}
	return string(b)
}

// wantCode fails unless err carries code (and, when field is not "-", that field).
func wantCode(t *testing.T, err error, code errs.Code, field string) {
	t.Helper()
	if !errs.Is(err, code) {
		t.Fatalf("got error %v (code %q), want code %q", err, errs.CodeOf(err), code)
	}
	if field == "-" {
		return
	}
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T, want *errs.Error", err)
	}
	if e.Field != field {
		t.Errorf("got field %q, want %q (error %v)", e.Field, field, err)
	}
}

func newTenant(name string) *tenancy.Tenant {
	return &tenancy.Tenant{ID: id.New("ten"), Name: name, DisplayName: strings.ToUpper(name), Timezone: "Europe/Berlin",
		CreatedAt: base, UpdatedAt: base.Add(time.Second)}
}

func newDepartment(tenantID, parentID, name string) *tenancy.Department {
	return &tenancy.Department{ID: id.New("dep"), TenantID: tenantID, ParentID: parentID, Name: name, DisplayName: name + " dept",
		CreatedAt: base, UpdatedAt: base}
}

func newProject(tenantID, deptID, name string) *tenancy.Project {
	return &tenancy.Project{ID: id.New("prj"), TenantID: tenantID, DepartmentID: deptID, Name: name, DisplayName: name + " project",
		CreatedAt: base, UpdatedAt: base}
}

func newUser(tenantID, name string, role tenancy.Role) *tenancy.User {
	return &tenancy.User{ID: id.New("usr"), TenantID: tenantID, Name: name, DisplayName: name + " person",
		Email: name + "@example.com", Role: role, CreatedAt: base, UpdatedAt: base}
}

func newMembership(u *tenancy.User, p *tenancy.Project) *tenancy.Membership {
	return &tenancy.Membership{UserID: u.ID, ProjectID: p.ID, TenantID: p.TenantID, CreatedAt: base}
}

func newKey(u *tenancy.User, projectID string) *tenancy.Key {
	kid := id.New("key")
	return &tenancy.Key{ID: kid, Prefix: "slk_" + kid[len(kid)-8:], Name: "key " + kid, UserID: u.ID, TenantID: u.TenantID,
		ProjectID: projectID, CreatedAt: base, Hash: tenancy.HashSecret(kid)}
}

func ptr[T any](v T) *T { return &v }

// world is a small tenancy tree:
//
//	tenant A: departments a1 (with child a1x) and a2; projects pa0 (root),
//	          pa1 (in a1), pa1x (in a1x); users ua1, ua2
//	tenant B: department b1; project pb1 (in b1); user ub1
//	platform admin: admin (no tenant)
type world struct {
	A, B                *tenancy.Tenant
	a1, a1x, a2, b1     *tenancy.Department
	pa0, pa1, pa1x, pb1 *tenancy.Project
	admin, ua1, ua2     *tenancy.User
	ub1                 *tenancy.User
	members             []*tenancy.Membership
	kAdmin, kUA1, kUA2  *tenancy.Key
	kUB1                *tenancy.Key
}

func newWorld(t *testing.T, s *Store) *world {
	t.Helper()
	w := &world{}
	w.A, w.B = newTenant("alpha"), newTenant("beta")
	w.a1 = newDepartment(w.A.ID, "", "research")
	w.a1x = newDepartment(w.A.ID, w.a1.ID, "ml")
	w.a2 = newDepartment(w.A.ID, "", "sales")
	w.b1 = newDepartment(w.B.ID, "", "ops")
	w.pa0 = newProject(w.A.ID, "", "website")
	w.pa1 = newProject(w.A.ID, w.a1.ID, "lab")
	w.pa1x = newProject(w.A.ID, w.a1x.ID, "models")
	w.pb1 = newProject(w.B.ID, w.b1.ID, "infra")
	w.admin = newUser("", "root", tenancy.RolePlatformAdmin)
	w.ua1 = newUser(w.A.ID, "ann", tenancy.RoleTenantAdmin)
	w.ua2 = newUser(w.A.ID, "bob", tenancy.RoleMember)
	w.ub1 = newUser(w.B.ID, "cat", tenancy.RoleMember)
	w.members = []*tenancy.Membership{
		newMembership(w.ua1, w.pa0), newMembership(w.ua1, w.pa1), newMembership(w.ua2, w.pa1), newMembership(w.ub1, w.pb1),
	}
	w.kAdmin = newKey(w.admin, "")
	w.kUA1 = newKey(w.ua1, w.pa1.ID)
	w.kUA2 = newKey(w.ua2, "")
	w.kUB1 = newKey(w.ub1, w.pb1.ID)
	update(t, s, func(tx tenancy.Tx) error {
		for _, v := range []*tenancy.Tenant{w.A, w.B} {
			if err := tx.InsertTenant(v); err != nil {
				return err
			}
		}
		for _, v := range []*tenancy.Department{w.a1, w.a1x, w.a2, w.b1} {
			if err := tx.InsertDepartment(v); err != nil {
				return err
			}
		}
		for _, v := range []*tenancy.Project{w.pa0, w.pa1, w.pa1x, w.pb1} {
			if err := tx.InsertProject(v); err != nil {
				return err
			}
		}
		for _, v := range []*tenancy.User{w.admin, w.ua1, w.ua2, w.ub1} {
			if err := tx.InsertUser(v); err != nil {
				return err
			}
		}
		for _, v := range w.members {
			if err := tx.InsertMembership(v); err != nil {
				return err
			}
		}
		for _, v := range []*tenancy.Key{w.kAdmin, w.kUA1, w.kUA2, w.kUB1} {
			if err := tx.InsertKey(v); err != nil {
				return err
			}
		}
		return nil
	})
	return w
}

func memberKey(m *tenancy.Membership) string { return m.UserID + "@" + m.ProjectID }

// ids maps a list to the ids a page is keyed on.
func ids[T any](vs []*T, idOf func(*T) string) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, idOf(v))
	}
	return out
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	if s == nil {
		return []string{}
	}
	return s
}

// ---- subtests ----

func testMigrated(t *testing.T, s *Store) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatalf("loadMigrations = %v, want nil", err)
	}
	v, err := s.Version(context.Background())
	if err != nil || v != ms[len(ms)-1].version {
		t.Errorf("Version() = %d, %v, want %d, nil", v, err, ms[len(ms)-1].version)
	}
	var n int
	if err := s.r.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(ms) {
		t.Errorf("schema_migrations rows = %d, %v, want %d, nil", n, err, len(ms))
	}
	if err := s.Ping(context.Background()); err != nil {
		t.Errorf("Ping = %v, want nil", err)
	}
	view(t, s, func(tx tenancy.Tx) error {
		ts, err := tx.Tenants(tenancy.Filter{})
		if err != nil {
			return err
		}
		if ts == nil || len(ts) != 0 {
			t.Errorf("Tenants on a new store = %#v, want an empty, non-nil list", ts)
		}
		return nil
	})
}

func testTenants(t *testing.T, s *Store) {
	ten := newTenant("acme")
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertTenant(ten) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Tenant(ten.ID)
		if err != nil {
			return err
		}
		same(t, got, ten)
		got, err = tx.TenantByName("acme")
		if err != nil {
			return err
		}
		same(t, got, ten)
		list, err := tx.Tenants(tenancy.Filter{})
		if err != nil {
			return err
		}
		same(t, list, []*tenancy.Tenant{ten})
		return nil
	})

	changed := *ten
	changed.Name, changed.DisplayName, changed.Timezone = "acme2", "", "UTC"
	changed.UpdatedAt = base.Add(time.Hour)
	changed.CreatedAt = base.Add(-time.Hour) // not updatable: the store keeps the original
	update(t, s, func(tx tenancy.Tx) error { return tx.UpdateTenant(&changed) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Tenant(ten.ID)
		if err != nil {
			return err
		}
		want := changed
		want.CreatedAt = ten.CreatedAt
		same(t, got, &want)
		if _, err := tx.TenantByName("acme"); !errs.Is(err, errs.NotFound) {
			t.Errorf("TenantByName(old name) = %v, want not_found", err)
		}
		return nil
	})

	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteTenant(ten.ID) })
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Tenant(ten.ID)
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})
}

func testDepartments(t *testing.T, s *Store) {
	w := newWorld(t, s)
	view(t, s, func(tx tenancy.Tx) error {
		for _, d := range []*tenancy.Department{w.a1, w.a1x, w.a2, w.b1} {
			got, err := tx.Department(d.ID)
			if err != nil {
				return err
			}
			same(t, got, d)
		}
		return nil
	})

	// Move a1x to the tenant root and rename it; then under a2.
	moved := *w.a1x
	moved.ParentID, moved.Name, moved.DisplayName, moved.UpdatedAt = "", "ml-root", "ML", base.Add(time.Minute)
	update(t, s, func(tx tenancy.Tx) error { return tx.UpdateDepartment(&moved) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Department(moved.ID)
		if err != nil {
			return err
		}
		same(t, got, &moved)
		return nil
	})
	moved.ParentID = w.a2.ID
	update(t, s, func(tx tenancy.Tx) error { return tx.UpdateDepartment(&moved) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Department(moved.ID)
		if err != nil {
			return err
		}
		same(t, got, &moved)
		return nil
	})

	// pa1x still names a1x: delete the project first, then the department.
	update(t, s, func(tx tenancy.Tx) error {
		if err := tx.DeleteProject(w.pa1x.ID); err != nil {
			return err
		}
		return tx.DeleteDepartment(moved.ID)
	})
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Department(moved.ID)
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})
}

func testProjects(t *testing.T, s *Store) {
	w := newWorld(t, s)
	view(t, s, func(tx tenancy.Tx) error {
		for _, p := range []*tenancy.Project{w.pa0, w.pa1, w.pa1x, w.pb1} {
			got, err := tx.Project(p.ID)
			if err != nil {
				return err
			}
			same(t, got, p)
		}
		return nil
	})
	for _, dept := range []string{w.a2.ID, "", w.a1x.ID} {
		p := *w.pa0
		p.DepartmentID, p.Name, p.DisplayName, p.UpdatedAt = dept, "site-"+dept, "", base.Add(time.Hour)
		update(t, s, func(tx tenancy.Tx) error { return tx.UpdateProject(&p) })
		view(t, s, func(tx tenancy.Tx) error {
			got, err := tx.Project(p.ID)
			if err != nil {
				return err
			}
			same(t, got, &p)
			return nil
		})
	}
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteProject(w.pa1x.ID) })
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Project(w.pa1x.ID)
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})
}

func testUsers(t *testing.T, s *Store) {
	w := newWorld(t, s)
	view(t, s, func(tx tenancy.Tx) error {
		for _, u := range []*tenancy.User{w.admin, w.ua1, w.ua2, w.ub1} {
			got, err := tx.User(u.ID)
			if err != nil {
				return err
			}
			same(t, got, u)
		}
		return nil
	})
	for _, u := range []*tenancy.User{w.admin, w.ua2} {
		changed := *u
		changed.Name, changed.DisplayName, changed.Email = u.Name+"-renamed", "", ""
		changed.Role, changed.UpdatedAt = tenancy.RoleTenantAdmin, base.Add(2*time.Hour)
		update(t, s, func(tx tenancy.Tx) error { return tx.UpdateUser(&changed) })
		view(t, s, func(tx tenancy.Tx) error {
			got, err := tx.User(u.ID)
			if err != nil {
				return err
			}
			same(t, got, &changed)
			return nil
		})
	}
	// A user without memberships or keys can go.
	lone := newUser(w.A.ID, "lone", tenancy.RoleMember)
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertUser(lone) })
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteUser(lone.ID) })
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.User(lone.ID)
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})
}

func testMemberships(t *testing.T, s *Store) {
	w := newWorld(t, s)
	view(t, s, func(tx tenancy.Tx) error {
		for _, m := range w.members {
			got, err := tx.Membership(m.UserID, m.ProjectID)
			if err != nil {
				return err
			}
			same(t, got, m)
		}
		return nil
	})
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteMembership(w.ua1.ID, w.pa0.ID) })
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Membership(w.ua1.ID, w.pa0.ID)
		wantCode(t, err, errs.NotFound, "-")
		if _, err := tx.Membership(w.ua1.ID, w.pa1.ID); err != nil {
			t.Errorf("Membership(ua1, pa1) after deleting (ua1, pa0) = %v, want nil", err)
		}
		return nil
	})

	// DeleteMemberships by project, then by user.
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteMemberships(tenancy.Filter{ProjectID: w.pa1.ID}) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Memberships(tenancy.Filter{})
		if err != nil {
			return err
		}
		same(t, ids(got, memberKey), []string{memberKey(w.members[3])})
		return nil
	})
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteMemberships(tenancy.Filter{UserID: w.ub1.ID}) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Memberships(tenancy.Filter{})
		if err != nil {
			return err
		}
		same(t, got, []*tenancy.Membership{})
		return nil
	})

	// Refusing an unfiltered delete protects everyone's memberships.
	w2 := newMembership(w.ua1, w.pa0)
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertMembership(w2) })
	for _, f := range []tenancy.Filter{{}, {TenantID: w.A.ID}} {
		err := s.Update(context.Background(), func(tx tenancy.Tx) error { return tx.DeleteMemberships(f) })
		if err == nil {
			t.Errorf("DeleteMemberships(%+v) = nil, want an error", f)
		}
	}
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Membership(w2.UserID, w2.ProjectID)
		return err
	})
}

func testKeys(t *testing.T, s *Store) {
	w := newWorld(t, s)
	view(t, s, func(tx tenancy.Tx) error {
		for _, k := range []*tenancy.Key{w.kAdmin, w.kUA1, w.kUA2, w.kUB1} {
			got, err := tx.Key(k.ID)
			if err != nil {
				return err
			}
			same(t, got, k)
			got, err = tx.KeyByHash(k.Hash)
			if err != nil {
				return err
			}
			same(t, got, k)
		}
		return nil
	})

	// Keys created with expiry and revocation set.
	full := newKey(w.ua1, w.pa0.ID)
	full.ExpiresAt, full.RevokedAt = ptr(base.Add(24*time.Hour)), ptr(base.Add(time.Hour))
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertKey(full) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Key(full.ID)
		if err != nil {
			return err
		}
		same(t, got, full)
		return nil
	})

	// UpdateKey changes name, project, expiry and revocation (set and clear).
	steps := []func(k *tenancy.Key){
		func(k *tenancy.Key) { k.Name, k.ProjectID = "renamed", w.pa1.ID },
		func(k *tenancy.Key) { k.ExpiresAt = ptr(base.Add(48 * time.Hour)) },
		func(k *tenancy.Key) { k.RevokedAt = ptr(base.Add(3 * time.Hour)) },
		func(k *tenancy.Key) { k.ExpiresAt, k.RevokedAt, k.ProjectID, k.Name = nil, nil, "", "" },
	}
	k := *w.kUA2
	for i, step := range steps {
		step(&k)
		update(t, s, func(tx tenancy.Tx) error { return tx.UpdateKey(&k) })
		view(t, s, func(tx tenancy.Tx) error {
			got, err := tx.Key(k.ID)
			if err != nil {
				return err
			}
			if !reflect.DeepEqual(got, &k) {
				t.Errorf("step %d: got %s, want %s", i, show(got), show(&k))
			}
			return nil
		})
	}

	// The hash identifies a key; a one-bit change finds nothing.
	view(t, s, func(tx tenancy.Tx) error {
		h := slices.Clone(w.kUA1.Hash)
		h[0] ^= 1
		_, err := tx.KeyByHash(h)
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})
}

func testAudit(t *testing.T, s *Store) {
	ten := newTenant("audited")
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertTenant(ten) })
	at := base
	var all, ofTenant []*tenancy.AuditEntry
	for i := range 9 {
		at = at.Add(time.Second)
		e := &tenancy.AuditEntry{
			ID: id.NewAt("aud", at), At: at, ActorUser: "usr_x", ActorKey: "key_x",
			Action: fmt.Sprintf("thing.%d", i), ObjectKind: "thing", ObjectID: fmt.Sprintf("thg_%d", i),
		}
		switch i % 3 {
		case 0:
			e.TenantID = ten.ID
			e.After = json.RawMessage(`{"n":` + fmt.Sprint(i) + `}`)
			ofTenant = append(ofTenant, e)
		case 1:
			e.TenantID = ten.ID
			e.Before = json.RawMessage(`{"name":"old"}`)
			e.After = json.RawMessage(`{"name":"new"}`)
			ofTenant = append(ofTenant, e)
		case 2: // platform-level: no tenant, no actor
			e.ActorUser, e.ActorKey, e.Before = "", "", json.RawMessage(`[1,2]`)
		}
		all = append(all, e)
	}
	update(t, s, func(tx tenancy.Tx) error {
		// Insert out of order: the id, not insertion order, decides.
		for _, i := range []int{4, 0, 8, 2, 6, 1, 3, 7, 5} {
			if err := tx.InsertAudit(all[i]); err != nil {
				return err
			}
		}
		return nil
	})
	newestFirst := func(es []*tenancy.AuditEntry) []*tenancy.AuditEntry {
		out := slices.Clone(es)
		slices.Reverse(out)
		return out
	}
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Audit(tenancy.Filter{Page: tenancy.Page{Limit: 100}})
		if err != nil {
			return err
		}
		same(t, got, newestFirst(all))

		got, err = tx.Audit(tenancy.Filter{TenantID: ten.ID, Page: tenancy.Page{Limit: 100}})
		if err != nil {
			return err
		}
		same(t, got, newestFirst(ofTenant))

		// Pages of 2 walk backwards in time until an empty page.
		var paged []*tenancy.AuditEntry
		f := tenancy.Filter{TenantID: ten.ID, Page: tenancy.Page{Limit: 2}}
		for pages := 0; ; pages++ {
			if pages > len(ofTenant) {
				t.Fatalf("paging did not end after %d pages, want it to", pages)
			}
			page, err := tx.Audit(f)
			if err != nil {
				return err
			}
			if len(page) > 2 {
				t.Fatalf("page of %d entries, want at most 2", len(page))
			}
			if len(page) == 0 {
				break
			}
			paged = append(paged, page...)
			f.After = page[len(page)-1].ID
		}
		same(t, paged, newestFirst(ofTenant))
		return nil
	})
}

func testAuditDefaultLimit(t *testing.T, s *Store) {
	e := &tenancy.AuditEntry{ID: id.New("aud"), At: base, Action: "x.create", ObjectKind: "x", ObjectID: "x_1"}
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertAudit(e) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Audit(tenancy.Filter{})
		if err != nil {
			return err
		}
		same(t, got, []*tenancy.AuditEntry{e})
		return nil
	})
}

func testFilters(t *testing.T, s *Store) {
	w := newWorld(t, s)
	type list func(tx tenancy.Tx, f tenancy.Filter) ([]string, error)
	tenants := func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
		vs, err := tx.Tenants(f)
		return ids(vs, func(v *tenancy.Tenant) string { return v.ID }), err
	}
	departments := func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
		vs, err := tx.Departments(f)
		return ids(vs, func(v *tenancy.Department) string { return v.ID }), err
	}
	projects := func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
		vs, err := tx.Projects(f)
		return ids(vs, func(v *tenancy.Project) string { return v.ID }), err
	}
	users := func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
		vs, err := tx.Users(f)
		return ids(vs, func(v *tenancy.User) string { return v.ID }), err
	}
	memberships := func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
		vs, err := tx.Memberships(f)
		return ids(vs, memberKey), err
	}
	keys := func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
		vs, err := tx.Keys(f)
		return ids(vs, func(v *tenancy.Key) string { return v.ID }), err
	}
	m := func(i int) string { return memberKey(w.members[i]) }
	tests := []struct {
		name string
		list list
		f    tenancy.Filter
		want []string
	}{
		{"tenants all", tenants, tenancy.Filter{}, sorted(w.A.ID, w.B.ID)},
		{"tenants by id", tenants, tenancy.Filter{TenantID: w.B.ID}, sorted(w.B.ID)},
		{"tenants unknown id", tenants, tenancy.Filter{TenantID: "ten_none"}, sorted()},

		{"departments all", departments, tenancy.Filter{}, sorted(w.a1.ID, w.a1x.ID, w.a2.ID, w.b1.ID)},
		{"departments of tenant", departments, tenancy.Filter{TenantID: w.A.ID}, sorted(w.a1.ID, w.a1x.ID, w.a2.ID)},
		{"departments root of tenant", departments, tenancy.Filter{TenantID: w.A.ID, Root: true}, sorted(w.a1.ID, w.a2.ID)},
		{"departments root everywhere", departments, tenancy.Filter{Root: true}, sorted(w.a1.ID, w.a2.ID, w.b1.ID)},
		{"departments by parent", departments, tenancy.Filter{ParentID: w.a1.ID}, sorted(w.a1x.ID)},
		{"departments by leaf parent", departments, tenancy.Filter{ParentID: w.a1x.ID}, sorted()},
		{"departments parent in other tenant", departments, tenancy.Filter{TenantID: w.B.ID, ParentID: w.a1.ID}, sorted()},

		{"projects all", projects, tenancy.Filter{}, sorted(w.pa0.ID, w.pa1.ID, w.pa1x.ID, w.pb1.ID)},
		{"projects of tenant", projects, tenancy.Filter{TenantID: w.B.ID}, sorted(w.pb1.ID)},
		{"projects root", projects, tenancy.Filter{TenantID: w.A.ID, Root: true}, sorted(w.pa0.ID)},
		{"projects by department", projects, tenancy.Filter{DepartmentID: w.a1.ID}, sorted(w.pa1.ID)},
		{"projects by nested department", projects, tenancy.Filter{DepartmentID: w.a1x.ID}, sorted(w.pa1x.ID)},
		{"projects by empty department", projects, tenancy.Filter{DepartmentID: w.a2.ID}, sorted()},
		{"projects of user", projects, tenancy.Filter{UserID: w.ua1.ID}, sorted(w.pa0.ID, w.pa1.ID)},
		{"projects of user in department", projects, tenancy.Filter{UserID: w.ua1.ID, DepartmentID: w.a1.ID}, sorted(w.pa1.ID)},
		{"projects of user without memberships", projects, tenancy.Filter{UserID: w.admin.ID}, sorted()},

		{"users all", users, tenancy.Filter{}, sorted(w.admin.ID, w.ua1.ID, w.ua2.ID, w.ub1.ID)},
		{"users of tenant", users, tenancy.Filter{TenantID: w.A.ID}, sorted(w.ua1.ID, w.ua2.ID)},
		{"users root are platform admins", users, tenancy.Filter{Root: true}, sorted(w.admin.ID)},
		{"users by id", users, tenancy.Filter{UserID: w.ub1.ID}, sorted(w.ub1.ID)},
		{"users by id in other tenant", users, tenancy.Filter{UserID: w.ub1.ID, TenantID: w.A.ID}, sorted()},
		{"users of project", users, tenancy.Filter{ProjectID: w.pa1.ID}, sorted(w.ua1.ID, w.ua2.ID)},
		{"users of project without members", users, tenancy.Filter{ProjectID: w.pa1x.ID}, sorted()},

		{"memberships all", memberships, tenancy.Filter{}, sorted(m(0), m(1), m(2), m(3))},
		{"memberships of tenant", memberships, tenancy.Filter{TenantID: w.A.ID}, sorted(m(0), m(1), m(2))},
		{"memberships of user", memberships, tenancy.Filter{UserID: w.ua1.ID}, sorted(m(0), m(1))},
		{"memberships of project", memberships, tenancy.Filter{ProjectID: w.pa1.ID}, sorted(m(1), m(2))},
		{"memberships of user and project", memberships, tenancy.Filter{UserID: w.ua2.ID, ProjectID: w.pa1.ID}, sorted(m(2))},

		{"keys all", keys, tenancy.Filter{}, sorted(w.kAdmin.ID, w.kUA1.ID, w.kUA2.ID, w.kUB1.ID)},
		{"keys of tenant", keys, tenancy.Filter{TenantID: w.A.ID}, sorted(w.kUA1.ID, w.kUA2.ID)},
		{"keys of user", keys, tenancy.Filter{UserID: w.admin.ID}, sorted(w.kAdmin.ID)},
		{"keys of project", keys, tenancy.Filter{ProjectID: w.pb1.ID}, sorted(w.kUB1.ID)},
		{"keys of user in other project", keys, tenancy.Filter{UserID: w.ua1.ID, ProjectID: w.pb1.ID}, sorted()},

		{"limit", tenants, tenancy.Filter{Page: tenancy.Page{Limit: 1}}, sorted(w.A.ID, w.B.ID)[:1]},
		{"after", departments, tenancy.Filter{TenantID: w.A.ID, Page: tenancy.Page{After: sorted(w.a1.ID, w.a1x.ID, w.a2.ID)[0]}},
			sorted(w.a1.ID, w.a1x.ID, w.a2.ID)[1:]},
	}
	view(t, s, func(tx tenancy.Tx) error {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := tt.list(tx, tt.f)
				if err != nil {
					t.Fatalf("list(%+v) = %v, want nil", tt.f, err)
				}
				if !slices.Equal(got, tt.want) {
					t.Errorf("list(%+v) = %q, want %q", tt.f, got, tt.want)
				}
			})
		}
		return nil
	})
}

func testPaging(t *testing.T, s *Store) {
	const n = 7
	ten := newTenant("paged")
	dept := newDepartment(ten.ID, "", "parent")
	proj := newProject(ten.ID, "", "shared")
	owner := newUser(ten.ID, "owner", tenancy.RoleMember)
	update(t, s, func(tx tenancy.Tx) error {
		for _, err := range []error{tx.InsertTenant(ten), tx.InsertDepartment(dept), tx.InsertProject(proj), tx.InsertUser(owner)} {
			if err != nil {
				return err
			}
		}
		for i := range n {
			tn := newTenant(fmt.Sprintf("t%d", i))
			d := newDepartment(ten.ID, dept.ID, fmt.Sprintf("d%d", i))
			p := newProject(ten.ID, dept.ID, fmt.Sprintf("p%d", i))
			u := newUser(ten.ID, fmt.Sprintf("u%d", i), tenancy.RoleMember)
			for _, err := range []error{tx.InsertTenant(tn), tx.InsertDepartment(d), tx.InsertProject(p), tx.InsertUser(u),
				tx.InsertMembership(newMembership(u, proj)), tx.InsertKey(newKey(owner, ""))} {
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	kinds := []struct {
		name string
		f    tenancy.Filter
		list func(tx tenancy.Tx, f tenancy.Filter) ([]string, error)
	}{
		{"tenants", tenancy.Filter{}, func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
			vs, err := tx.Tenants(f)
			return ids(vs, func(v *tenancy.Tenant) string { return v.ID }), err
		}},
		{"departments", tenancy.Filter{ParentID: dept.ID}, func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
			vs, err := tx.Departments(f)
			return ids(vs, func(v *tenancy.Department) string { return v.ID }), err
		}},
		{"projects", tenancy.Filter{DepartmentID: dept.ID}, func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
			vs, err := tx.Projects(f)
			return ids(vs, func(v *tenancy.Project) string { return v.ID }), err
		}},
		{"users", tenancy.Filter{ProjectID: proj.ID}, func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
			vs, err := tx.Users(f)
			return ids(vs, func(v *tenancy.User) string { return v.ID }), err
		}},
		{"memberships", tenancy.Filter{ProjectID: proj.ID}, func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
			vs, err := tx.Memberships(f)
			return ids(vs, memberKey), err
		}},
		{"keys", tenancy.Filter{UserID: owner.ID}, func(tx tenancy.Tx, f tenancy.Filter) ([]string, error) {
			vs, err := tx.Keys(f)
			return ids(vs, func(v *tenancy.Key) string { return v.ID }), err
		}},
	}
	view(t, s, func(tx tenancy.Tx) error {
		for _, k := range kinds {
			t.Run(k.name, func(t *testing.T) {
				all, err := k.list(tx, k.f) // Limit 0: the default page
				if err != nil {
					t.Fatalf("list = %v, want nil", err)
				}
				if len(all) < n || !slices.IsSorted(all) {
					t.Fatalf("list = %q, want at least %d ids in ascending order", all, n)
				}
				for _, limit := range []int{1, 3, n, n + 5} {
					var got []string
					var sizes []int
					f := k.f
					f.Limit = limit
					for {
						page, err := k.list(tx, f)
						if err != nil {
							t.Fatalf("limit %d after %q: list = %v, want nil", limit, f.After, err)
						}
						if len(page) > limit {
							t.Fatalf("limit %d: got a page of %d, want at most %d", limit, len(page), limit)
						}
						sizes = append(sizes, len(page))
						got = append(got, page...)
						if len(page) < limit {
							break
						}
						f.After = page[len(page)-1]
						if len(sizes) > len(all)+1 {
							t.Fatalf("limit %d: paging did not end after %d pages", limit, len(sizes))
						}
					}
					if !slices.Equal(got, all) {
						t.Errorf("limit %d: pages %v joined = %q, want %q", limit, sizes, got, all)
					}
				}
			})
		}
		return nil
	})
}

func testConflicts(t *testing.T, s *Store) {
	w := newWorld(t, s)
	tests := []struct {
		name  string
		fn    func(tx tenancy.Tx) error
		field string
	}{
		{"tenant name", func(tx tenancy.Tx) error { return tx.InsertTenant(newTenant(w.A.Name)) }, "name"},
		{"tenant rename", func(tx tenancy.Tx) error {
			b := *w.B
			b.Name = w.A.Name
			return tx.UpdateTenant(&b)
		}, "name"},
		{"root department in same tenant", func(tx tenancy.Tx) error {
			return tx.InsertDepartment(newDepartment(w.A.ID, "", w.a2.Name))
		}, "name"},
		{"child department in same parent", func(tx tenancy.Tx) error {
			return tx.InsertDepartment(newDepartment(w.A.ID, w.a1.ID, w.a1x.Name))
		}, "name"},
		{"department rename to a sibling", func(tx tenancy.Tx) error {
			d := *w.a2
			d.Name = w.a1.Name
			return tx.UpdateDepartment(&d)
		}, "name"},
		{"department moved next to its namesake", func(tx tenancy.Tx) error {
			d := newDepartment(w.A.ID, "", w.a1x.Name)
			if err := tx.InsertDepartment(d); err != nil {
				t.Errorf("InsertDepartment(root %q) = %v, want nil", d.Name, err)
				return nil
			}
			d.ParentID = w.a1.ID
			return tx.UpdateDepartment(d)
		}, "name"},
		{"project in same tenant, other department", func(tx tenancy.Tx) error {
			return tx.InsertProject(newProject(w.A.ID, w.a2.ID, w.pa1x.Name))
		}, "name"},
		{"project rename", func(tx tenancy.Tx) error {
			p := *w.pa1
			p.Name = w.pa0.Name
			return tx.UpdateProject(&p)
		}, "name"},
		{"user in same tenant", func(tx tenancy.Tx) error {
			return tx.InsertUser(newUser(w.A.ID, w.ua2.Name, tenancy.RoleMember))
		}, "name"},
		{"user rename", func(tx tenancy.Tx) error {
			u := *w.ua2
			u.Name = w.ua1.Name
			return tx.UpdateUser(&u)
		}, "name"},
		{"platform admins share one namespace", func(tx tenancy.Tx) error {
			return tx.InsertUser(newUser("", w.admin.Name, tenancy.RolePlatformAdmin))
		}, "name"},
		{"duplicate membership", func(tx tenancy.Tx) error {
			return tx.InsertMembership(newMembership(w.ua1, w.pa1))
		}, "user_id"},
		{"duplicate key hash", func(tx tenancy.Tx) error {
			k := newKey(w.ua1, "")
			k.Hash = w.kUB1.Hash
			return tx.InsertKey(k)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(context.Background(), tt.fn)
			wantCode(t, err, errs.Conflict, tt.field)
		})
	}
	// The failed attempts changed nothing.
	view(t, s, func(tx tenancy.Tx) error {
		for _, v := range []*tenancy.Tenant{w.A, w.B} {
			got, err := tx.Tenant(v.ID)
			if err != nil {
				return err
			}
			same(t, got, v)
		}
		ds, err := tx.Departments(tenancy.Filter{})
		if err != nil {
			return err
		}
		if len(ds) != 4 {
			t.Errorf("got %d departments, want 4", len(ds))
		}
		return nil
	})
}

func testSameNameElsewhere(t *testing.T, s *Store) {
	w := newWorld(t, s)
	tests := []struct {
		name string
		fn   func(tx tenancy.Tx) error
	}{
		{"department under another parent", func(tx tenancy.Tx) error {
			return tx.InsertDepartment(newDepartment(w.A.ID, w.a2.ID, w.a1x.Name))
		}},
		{"child named like a root department", func(tx tenancy.Tx) error {
			return tx.InsertDepartment(newDepartment(w.A.ID, w.a1.ID, w.a2.Name))
		}},
		{"root department in another tenant", func(tx tenancy.Tx) error {
			return tx.InsertDepartment(newDepartment(w.B.ID, "", w.a1.Name))
		}},
		{"project in another tenant", func(tx tenancy.Tx) error {
			return tx.InsertProject(newProject(w.B.ID, "", w.pa0.Name))
		}},
		{"project named like a department", func(tx tenancy.Tx) error {
			return tx.InsertProject(newProject(w.A.ID, w.a1.ID, w.a1.Name))
		}},
		{"user in another tenant", func(tx tenancy.Tx) error {
			return tx.InsertUser(newUser(w.B.ID, w.ua1.Name, tenancy.RoleMember))
		}},
		{"tenant user named like the platform admin", func(tx tenancy.Tx) error {
			return tx.InsertUser(newUser(w.A.ID, w.admin.Name, tenancy.RoleMember))
		}},
		{"platform admin named like a tenant user", func(tx tenancy.Tx) error {
			return tx.InsertUser(newUser("", w.ub1.Name, tenancy.RolePlatformAdmin))
		}},
		{"tenant named like a department", func(tx tenancy.Tx) error {
			return tx.InsertTenant(newTenant(w.a1.Name))
		}},
		{"rename to own name", func(tx tenancy.Tx) error {
			d := *w.a1
			d.DisplayName = "changed"
			return tx.UpdateDepartment(&d)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Update(context.Background(), tt.fn); err != nil {
				t.Errorf("got %v, want nil", err)
			}
		})
	}
}

func testNotFound(t *testing.T, s *Store) {
	w := newWorld(t, s)
	missing := func(prefix string) string { return id.New(prefix) }
	tests := []struct {
		name string
		fn   func(tx tenancy.Tx) error
	}{
		{"Tenant", func(tx tenancy.Tx) error { _, err := tx.Tenant(missing("ten")); return err }},
		{"TenantByName", func(tx tenancy.Tx) error { _, err := tx.TenantByName("nobody"); return err }},
		{"Tenant by name as id", func(tx tenancy.Tx) error { _, err := tx.Tenant(w.A.Name); return err }},
		{"Department", func(tx tenancy.Tx) error { _, err := tx.Department(missing("dep")); return err }},
		{"Project", func(tx tenancy.Tx) error { _, err := tx.Project(missing("prj")); return err }},
		{"User", func(tx tenancy.Tx) error { _, err := tx.User(missing("usr")); return err }},
		{"Membership", func(tx tenancy.Tx) error { _, err := tx.Membership(w.ub1.ID, w.pa0.ID); return err }},
		{"Key", func(tx tenancy.Tx) error { _, err := tx.Key(missing("key")); return err }},
		{"KeyByHash", func(tx tenancy.Tx) error { _, err := tx.KeyByHash(tenancy.HashSecret("nope")); return err }},
		{"KeyByHash empty", func(tx tenancy.Tx) error { _, err := tx.KeyByHash(nil); return err }},

		{"UpdateTenant", func(tx tenancy.Tx) error { v := newTenant("ghost"); return tx.UpdateTenant(v) }},
		{"UpdateDepartment", func(tx tenancy.Tx) error {
			return tx.UpdateDepartment(newDepartment(w.A.ID, "", "ghost"))
		}},
		{"UpdateProject", func(tx tenancy.Tx) error { return tx.UpdateProject(newProject(w.A.ID, "", "ghost")) }},
		{"UpdateUser", func(tx tenancy.Tx) error {
			return tx.UpdateUser(newUser(w.A.ID, "ghost", tenancy.RoleMember))
		}},
		{"UpdateKey", func(tx tenancy.Tx) error { return tx.UpdateKey(newKey(w.ua1, "")) }},

		{"DeleteTenant", func(tx tenancy.Tx) error { return tx.DeleteTenant(missing("ten")) }},
		{"DeleteDepartment", func(tx tenancy.Tx) error { return tx.DeleteDepartment(missing("dep")) }},
		{"DeleteProject", func(tx tenancy.Tx) error { return tx.DeleteProject(missing("prj")) }},
		{"DeleteUser", func(tx tenancy.Tx) error { return tx.DeleteUser(missing("usr")) }},
		{"DeleteMembership", func(tx tenancy.Tx) error { return tx.DeleteMembership(w.ub1.ID, w.pa0.ID) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(context.Background(), tt.fn)
			wantCode(t, err, errs.NotFound, "-")
		})
	}
}

func testRollback(t *testing.T, s *Store) {
	w := newWorld(t, s)
	sentinel := errs.E(errs.Invalid, "changed my mind")
	ten := newTenant("doomed")
	dept := newDepartment(ten.ID, "", "doomed")
	user := newUser(ten.ID, "doomed", tenancy.RoleMember)
	renamed := *w.A
	renamed.Name = "renamed"
	key := newKey(w.ua1, "")

	tests := []struct {
		name string
		fn   func(tx tenancy.Tx) error
		want error // nil: any error with code Conflict
	}{
		{"fn fails after writes", func(tx tenancy.Tx) error {
			for _, err := range []error{tx.InsertTenant(ten), tx.InsertDepartment(dept), tx.InsertUser(user),
				tx.UpdateTenant(&renamed), tx.InsertKey(key), tx.DeleteMembership(w.ua1.ID, w.pa0.ID)} {
				if err != nil {
					t.Errorf("write before failing = %v, want nil", err)
				}
			}
			// Writes are visible inside their own transaction.
			if _, err := tx.TenantByName("doomed"); err != nil {
				t.Errorf("TenantByName inside the transaction = %v, want nil", err)
			}
			return sentinel
		}, sentinel},
		{"a later write conflicts", func(tx tenancy.Tx) error {
			if err := tx.InsertTenant(ten); err != nil {
				return err
			}
			return tx.InsertTenant(newTenant(w.B.Name))
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(context.Background(), tt.fn)
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Update = %v, want fn's error %v", err, tt.want)
			}
			if tt.want == nil {
				wantCode(t, err, errs.Conflict, "name")
			}
			view(t, s, func(tx tenancy.Tx) error {
				for what, err := range map[string]error{
					"tenant":     func() error { _, err := tx.Tenant(ten.ID); return err }(),
					"department": func() error { _, err := tx.Department(dept.ID); return err }(),
					"user":       func() error { _, err := tx.User(user.ID); return err }(),
					"key":        func() error { _, err := tx.Key(key.ID); return err }(),
				} {
					if !errs.Is(err, errs.NotFound) {
						t.Errorf("%s after rollback: got %v, want not_found", what, err)
					}
				}
				got, err := tx.Tenant(w.A.ID)
				if err != nil {
					return err
				}
				same(t, got, w.A)
				if _, err := tx.Membership(w.ua1.ID, w.pa0.ID); err != nil {
					t.Errorf("deleted membership after rollback: got %v, want it back", err)
				}
				return nil
			})
		})
	}
}

func testViewIsReadOnly(t *testing.T, s *Store) {
	ten := newTenant("sneaky")
	err := s.View(context.Background(), func(tx tenancy.Tx) error { return tx.InsertTenant(ten) })
	if err == nil {
		t.Fatalf("InsertTenant in View = nil, want an error")
	}
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Tenant(ten.ID)
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})
}

func testForeignKeys(t *testing.T, s *Store) {
	w := newWorld(t, s)
	tests := []struct {
		name string
		fn   func(tx tenancy.Tx) error
	}{
		{"department in missing tenant", func(tx tenancy.Tx) error {
			return tx.InsertDepartment(newDepartment(id.New("ten"), "", "orphan"))
		}},
		{"department under missing parent", func(tx tenancy.Tx) error {
			return tx.InsertDepartment(newDepartment(w.A.ID, id.New("dep"), "orphan"))
		}},
		{"project in missing department", func(tx tenancy.Tx) error {
			return tx.InsertProject(newProject(w.A.ID, id.New("dep"), "orphan"))
		}},
		{"membership of missing user", func(tx tenancy.Tx) error {
			return tx.InsertMembership(&tenancy.Membership{UserID: id.New("usr"), ProjectID: w.pa0.ID, TenantID: w.A.ID, CreatedAt: base})
		}},
		{"key of missing user", func(tx tenancy.Tx) error {
			return tx.InsertKey(newKey(&tenancy.User{ID: id.New("usr")}, ""))
		}},
		{"tenant with children", func(tx tenancy.Tx) error { return tx.DeleteTenant(w.B.ID) }},
		{"department with children", func(tx tenancy.Tx) error { return tx.DeleteDepartment(w.a1.ID) }},
		{"project with members", func(tx tenancy.Tx) error { return tx.DeleteProject(w.pa0.ID) }},
		{"user with keys", func(tx tenancy.Tx) error { return tx.DeleteUser(w.ua2.ID) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Update(context.Background(), tt.fn); err == nil {
				t.Errorf("got nil, want a foreign-key error")
			}
		})
	}
	view(t, s, func(tx tenancy.Tx) error {
		for _, err := range []error{
			func() error { _, err := tx.Tenant(w.B.ID); return err }(),
			func() error { _, err := tx.Department(w.a1.ID); return err }(),
			func() error { _, err := tx.Project(w.pa0.ID); return err }(),
			func() error { _, err := tx.User(w.ua2.ID); return err }(),
		} {
			if err != nil {
				t.Errorf("object after a refused delete: %v, want it still there", err)
			}
		}
		return nil
	})
}

func testDeleteProjectKeepsKeys(t *testing.T, s *Store) {
	w := newWorld(t, s)
	revoked := newKey(w.ua1, w.pa1x.ID)
	revoked.RevokedAt = ptr(base.Add(time.Hour))
	expired := newKey(w.ua2, w.pa1x.ID)
	expired.ExpiresAt = ptr(base.Add(time.Hour))
	update(t, s, func(tx tenancy.Tx) error {
		if err := tx.InsertKey(revoked); err != nil {
			return err
		}
		return tx.InsertKey(expired)
	})
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteProject(w.pa1x.ID) })
	view(t, s, func(tx tenancy.Tx) error {
		for _, k := range []*tenancy.Key{revoked, expired} {
			got, err := tx.Key(k.ID)
			if err != nil {
				t.Errorf("Key(%s) after DeleteProject = %v, want the key kept", k.ID, err)
				continue
			}
			want := *k
			want.ProjectID = ""
			same(t, got, &want)
		}
		got, err := tx.Key(w.kUA1.ID) // another project's key is untouched
		if err != nil {
			return err
		}
		same(t, got, w.kUA1)
		return nil
	})
}

func testCountActiveKeys(t *testing.T, s *Store) {
	w := newWorld(t, s) // kUA1 (ua1, pa1) and kUA2 (ua2) are active
	now := time.Now().UTC().Truncate(time.Microsecond)
	mk := func(u *tenancy.User, project string, exp, rev *time.Time) *tenancy.Key {
		k := newKey(u, project)
		k.ExpiresAt, k.RevokedAt = exp, rev
		return k
	}
	keys := []*tenancy.Key{
		mk(w.ua1, w.pa1.ID, ptr(now.Add(time.Hour)), nil),                // active until later
		mk(w.ua1, w.pa1.ID, nil, ptr(now.Add(-time.Hour))),               // revoked
		mk(w.ua1, w.pa1.ID, ptr(now.Add(-time.Second)), nil),             // expired
		mk(w.ua1, "", ptr(now.Add(time.Hour)), ptr(now.Add(-time.Hour))), // revoked before expiry
		mk(w.ua2, w.pa1.ID, ptr(now.Add(-time.Hour)), nil),               // expired
		mk(w.ua2, w.pa0.ID, nil, nil),                                    // active
		mk(w.ua1, w.pa0.ID, nil, ptr(now.Add(time.Hour))),                // revocation time in the future still counts as revoked
	}
	update(t, s, func(tx tenancy.Tx) error {
		for _, k := range keys {
			if err := tx.InsertKey(k); err != nil {
				return err
			}
		}
		return nil
	})
	tests := []struct {
		name string
		f    tenancy.Filter
		want int
	}{
		{"user with mixed keys", tenancy.Filter{UserID: w.ua1.ID}, 2},
		{"other user", tenancy.Filter{UserID: w.ua2.ID}, 2},
		{"project", tenancy.Filter{ProjectID: w.pa1.ID}, 2},
		{"project with only dead keys of ua1", tenancy.Filter{ProjectID: w.pa0.ID, UserID: w.ua1.ID}, 0},
		{"user and project", tenancy.Filter{UserID: w.ua2.ID, ProjectID: w.pa0.ID}, 1},
		{"project without keys", tenancy.Filter{ProjectID: w.pa1x.ID}, 0},
		{"platform admin", tenancy.Filter{UserID: w.admin.ID}, 1},
	}
	view(t, s, func(tx tenancy.Tx) error {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := tx.CountActiveKeys(tt.f)
				if err != nil || got != tt.want {
					t.Errorf("CountActiveKeys(%+v) = %d, %v, want %d, nil", tt.f, got, err, tt.want)
				}
			})
		}
		return nil
	})
}

func testDeleteRevokedKeys(t *testing.T, s *Store) {
	w := newWorld(t, s)
	now := time.Now().UTC().Truncate(time.Microsecond)
	revoked := newKey(w.ua1, w.pa1.ID)
	revoked.RevokedAt = ptr(now.Add(-time.Minute))
	expired := newKey(w.ua1, "")
	expired.ExpiresAt = ptr(now.Add(-time.Minute))
	later := newKey(w.ua1, "")
	later.ExpiresAt = ptr(now.Add(time.Hour))
	othersRevoked := newKey(w.ua2, "")
	othersRevoked.RevokedAt = ptr(now.Add(-time.Minute))
	update(t, s, func(tx tenancy.Tx) error {
		for _, k := range []*tenancy.Key{revoked, expired, later, othersRevoked} {
			if err := tx.InsertKey(k); err != nil {
				return err
			}
		}
		return nil
	})
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteRevokedKeys(w.ua1.ID) })
	// A user without dead keys is fine too.
	update(t, s, func(tx tenancy.Tx) error { return tx.DeleteRevokedKeys(w.ub1.ID) })
	view(t, s, func(tx tenancy.Tx) error {
		got, err := tx.Keys(tenancy.Filter{UserID: w.ua1.ID})
		if err != nil {
			return err
		}
		same(t, ids(got, func(k *tenancy.Key) string { return k.ID }), sorted(w.kUA1.ID, later.ID))
		got, err = tx.Keys(tenancy.Filter{UserID: w.ua2.ID})
		if err != nil {
			return err
		}
		same(t, ids(got, func(k *tenancy.Key) string { return k.ID }), sorted(w.kUA2.ID, othersRevoked.ID))
		if _, err := tx.Key(w.kUB1.ID); err != nil {
			t.Errorf("Key(ub1's active key) = %v, want it kept", err)
		}
		return nil
	})
}

func testMicrosecondTimes(t *testing.T, s *Store) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		berlin = time.FixedZone("CET", 3600)
	}
	tests := []struct {
		name string
		at   time.Time
	}{
		{"nanoseconds", time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC)},
		{"other zone", time.Date(2025, 7, 2, 3, 4, 5, 999999999, berlin)},
		{"wall clock with monotonic reading", time.Now()},
		{"epoch", time.Unix(0, 0)},
		{"before epoch", time.Date(1969, 12, 31, 23, 59, 59, 500000000, time.UTC)},
		{"far future", time.Date(2999, 12, 31, 23, 59, 59, 999999000, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.at.Truncate(time.Microsecond)
			ten := newTenant("t-" + id.New(""))
			ten.CreatedAt, ten.UpdatedAt = tt.at, tt.at
			w := newUser(ten.ID, "u", tenancy.RoleMember)
			k := newKey(w, "")
			k.CreatedAt, k.ExpiresAt, k.RevokedAt = tt.at, ptr(tt.at), ptr(tt.at)
			e := &tenancy.AuditEntry{ID: id.New("aud"), At: tt.at, Action: "a", ObjectKind: "k", ObjectID: "o"}
			update(t, s, func(tx tenancy.Tx) error {
				for _, err := range []error{tx.InsertTenant(ten), tx.InsertUser(w), tx.InsertKey(k), tx.InsertAudit(e)} {
					if err != nil {
						return err
					}
				}
				return nil
			})
			view(t, s, func(tx tenancy.Tx) error {
				gt, err := tx.Tenant(ten.ID)
				if err != nil {
					return err
				}
				gk, err := tx.Key(k.ID)
				if err != nil {
					return err
				}
				ga, err := tx.Audit(tenancy.Filter{Page: tenancy.Page{Limit: 1000}})
				if err != nil {
					return err
				}
				i := slices.IndexFunc(ga, func(a *tenancy.AuditEntry) bool { return a.ID == e.ID })
				if i < 0 {
					t.Fatalf("audit entry %s not listed, want it", e.ID)
				}
				for what, got := range map[string]time.Time{
					"tenant created_at": gt.CreatedAt, "tenant updated_at": gt.UpdatedAt,
					"key created_at": gk.CreatedAt, "key expires_at": *gk.ExpiresAt, "key revoked_at": *gk.RevokedAt,
					"audit at": ga[i].At,
				} {
					if !got.Equal(want) {
						t.Errorf("%s = %v, want %v", what, got, want)
					}
				}
				return nil
			})
		})
	}
}

func testConcurrentWriters(t *testing.T, s *Store) {
	const writers = 20
	ctx := context.Background()
	var wg sync.WaitGroup
	errc := make(chan error, 2*writers)
	for i := range writers {
		wg.Go(func() {
			errc <- s.Update(ctx, func(tx tenancy.Tx) error {
				ten := newTenant(fmt.Sprintf("c%02d", i))
				if err := tx.InsertTenant(ten); err != nil {
					return err
				}
				// Read-modify-write inside the transaction.
				got, err := tx.TenantByName(ten.Name)
				if err != nil {
					return err
				}
				got.DisplayName = "updated"
				return tx.UpdateTenant(got)
			})
		})
		wg.Go(func() {
			errc <- s.View(ctx, func(tx tenancy.Tx) error {
				_, err := tx.Tenants(tenancy.Filter{})
				return err
			})
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Errorf("concurrent Update/View = %v, want nil", err)
		}
	}
	view(t, s, func(tx tenancy.Tx) error {
		ts, err := tx.Tenants(tenancy.Filter{})
		if err != nil {
			return err
		}
		if len(ts) != writers {
			t.Errorf("got %d tenants, want %d", len(ts), writers)
		}
		for _, v := range ts {
			if v.DisplayName != "updated" {
				t.Errorf("tenant %s display name = %q, want %q", v.Name, v.DisplayName, "updated")
			}
		}
		return nil
	})
}

func testReadersDoNotWaitForWriter(t *testing.T, s *Store) {
	ctx := context.Background()
	before := newTenant("before")
	update(t, s, func(tx tenancy.Tx) error { return tx.InsertTenant(before) })
	during := newTenant("during")
	inside := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Update(ctx, func(tx tenancy.Tx) error {
			if err := tx.InsertTenant(during); err != nil {
				close(inside)
				return err
			}
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	// The writer holds its transaction open: a reader still answers, and
	// sees only committed data.
	err := s.View(ctx, func(tx tenancy.Tx) error {
		ts, err := tx.Tenants(tenancy.Filter{})
		if err != nil {
			return err
		}
		same(t, ids(ts, func(v *tenancy.Tenant) string { return v.ID }), []string{before.ID})
		return nil
	})
	close(release)
	if err != nil {
		t.Errorf("View during a write = %v, want nil", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Update = %v, want nil", err)
	}
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Tenant(during.ID)
		return err
	})
}

func testCancelledContext(t *testing.T, s *Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ten := newTenant("cancelled")
	if err := s.Update(ctx, func(tx tenancy.Tx) error { return tx.InsertTenant(ten) }); err == nil {
		t.Errorf("Update(cancelled ctx) = nil, want an error")
	}
	if err := s.View(ctx, func(tx tenancy.Tx) error { _, err := tx.Tenants(tenancy.Filter{}); return err }); err == nil {
		t.Errorf("View(cancelled ctx) = nil, want an error")
	}
	view(t, s, func(tx tenancy.Tx) error {
		_, err := tx.Tenant(ten.ID)
		wantCode(t, err, errs.NotFound, "-")
		return nil
	})
}

func testCancelledIsUnavailable(t *testing.T, s *Store) {
	tests := []struct {
		name string
		ctx  func() context.Context
	}{
		{"cancelled", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}},
		{"deadline passed", func() context.Context {
			ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
			t.Cleanup(cancel)
			return ctx
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(tt.ctx(), func(tx tenancy.Tx) error { return tx.InsertTenant(newTenant("late")) })
			wantCode(t, err, errs.Unavailable, "-")
			err = s.View(tt.ctx(), func(tx tenancy.Tx) error { _, err := tx.Tenant("ten_x"); return err })
			wantCode(t, err, errs.Unavailable, "-")
		})
	}
}

func TestSQLiteOpenErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("this is not a database\n", 512)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, path string }{
		{"missing directory", filepath.Join(dir, "no", "such", "dir", "s.db")},
		{"not a database", garbage},
		{"a directory", dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := OpenSQLite(context.Background(), tt.path)
			if err == nil {
				s.Close()
				t.Fatalf("OpenSQLite(%q) = nil error, want one", tt.path)
			}
		})
	}
}

// TestMigrateFillsAGap: a database that got a later migration before an
// earlier one (two branches merged in the other order) gets the earlier
// one at its next open, not only those above its highest version.
func TestMigrateFillsAGap(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{`DROP TABLE quota_requests`, `DROP TABLE credit_balances`, `DROP TABLE credit_entries`,
		`DROP TABLE credit_codes`, `DELETE FROM schema_migrations WHERE version = 13`} {
		if _, err := s.w.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("reopen with migration 13 missing: %v", err)
	}
	defer s.Close()
	var n int
	if err := s.w.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = 13`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("migration 13 applied %d times (%v), want once", n, err)
	}
	if _, err := s.w.ExecContext(ctx, `SELECT COUNT(*) FROM quota_requests`); err != nil {
		t.Errorf("quota_requests after the reopen: %v", err)
	}
}
