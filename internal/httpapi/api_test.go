package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// env is a running API over a real SQLite store, with a platform admin key.
type env struct {
	t      *testing.T
	url    string
	admin  string
	svc    *tenancy.Service
	policy *policy.Service
	meter  *metering.Meter
	rec    *usage.Recorder
	store  *sqlstore.Store
	runs   *run.Service
	logs   *syncBuffer
	clock  *clock
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newEnv starts the API. The flow runtime is wired as cmd/sluice does it:
// with no models, the built-in simulated model stands in for every model a
// flow names (demo mode); with models, exactly that model table is used.
func newEnv(t *testing.T, models ...llm.ModelConfig) *env {
	t.Helper()
	ctx := context.Background()
	store, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "sluice.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	svc := tenancy.NewService(store, log)
	clk := &clock{now: time.Now()}
	svc.SetClock(clk.Now)
	res, err := svc.Bootstrap(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	mgr := policy.NewManager(store, policy.Spec{}, log)
	mgr.SetClock(clk.Now)
	pol := policy.NewService(store, mgr, log)
	if err := pol.EnsureDefaultPlans(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mgr.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	svc.OnChange = func(ctx context.Context) { _ = mgr.Reload(ctx) }
	engine := quota.NewMemory(quota.Options{Now: clk.Now})
	t.Cleanup(func() { engine.Close() })
	rec := usage.NewRecorder(store, log, 10*time.Millisecond)
	t.Cleanup(func() { rec.Close() })
	meter := metering.New(engine, mgr, rec, log)
	registry, err := llm.NewRegistry(models, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	exec := &run.Executor{Meter: meter, Models: registry, Messages: store, Guard: &run.Guard{}, Log: log, DemoModels: len(models) == 0}
	runs := &run.Service{Store: store, Tenancy: svc, Exec: exec, Log: log}
	srv := &httpapi.Server{Tenancy: svc, Policy: pol, Meter: meter, Runs: runs, Log: log, MaxBodyBytes: 1 << 20, Quarantine: store,
		Ready: func(ctx context.Context) map[string]error { return map[string]error{"store": store.Ping(ctx)} }}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &env{t: t, url: ts.URL, admin: res.Secret, svc: svc, policy: pol, meter: meter, rec: rec, store: store, runs: runs, logs: logs, clock: clk}
}

// resp is a decoded response.
type resp struct {
	status int
	body   map[string]any
	raw    string
	header http.Header
}

func (r resp) str(key string) string {
	v, _ := r.body[key].(string)
	return v
}

func (r resp) errCode() string {
	e, _ := r.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (r resp) errField() string {
	e, _ := r.body["error"].(map[string]any)
	f, _ := e["field"].(string)
	return f
}

func (r resp) items() []map[string]any {
	raw, _ := r.body["items"].([]any)
	out := make([]map[string]any, 0, len(raw))
	for _, v := range raw {
		out = append(out, v.(map[string]any))
	}
	return out
}

// do sends body (a string is sent verbatim, anything else as JSON).
func (e *env) do(key, method, path string, body any) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	hr, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer hr.Body.Close()
	data, _ := io.ReadAll(hr.Body)
	r := resp{status: hr.StatusCode, raw: string(data), header: hr.Header}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &r.body); err != nil {
			e.t.Fatalf("%s %s: response is not a JSON object: %s", method, path, data)
		}
	}
	return r
}

// must sends and requires the status.
func (e *env) must(want int, key, method, path string, body any) resp {
	e.t.Helper()
	r := e.do(key, method, path, body)
	if r.status != want {
		e.t.Fatalf("%s %s: got status %d, want %d: %s", method, path, r.status, want, r.raw)
	}
	return r
}

// world is one tenant's objects, made by the platform admin.
type world struct {
	tenant, dept, subDept, project, admin, member, other string
	adminKey, memberKey, adminKeyID, memberKeyID         string
}

func (e *env) makeWorld(name string) world {
	e.t.Helper()
	var w world
	w.tenant = e.must(201, e.admin, "POST", "/api/v1/admin/tenants", map[string]any{"name": name, "timezone": "Europe/Berlin"}).str("id")
	w.dept = e.must(201, e.admin, "POST", "/api/v1/admin/departments", map[string]any{"tenant_id": w.tenant, "name": "eng"}).str("id")
	w.subDept = e.must(201, e.admin, "POST", "/api/v1/admin/departments", map[string]any{"tenant_id": w.tenant, "parent_id": w.dept, "name": "ml"}).str("id")
	w.project = e.must(201, e.admin, "POST", "/api/v1/admin/projects", map[string]any{"tenant_id": w.tenant, "department_id": w.subDept, "name": "chatbot"}).str("id")
	w.admin = e.must(201, e.admin, "POST", "/api/v1/admin/users", map[string]any{"tenant_id": w.tenant, "name": "boss", "role": "tenant_admin"}).str("id")
	w.member = e.must(201, e.admin, "POST", "/api/v1/admin/users", map[string]any{"tenant_id": w.tenant, "name": "alice"}).str("id")
	w.other = e.must(201, e.admin, "POST", "/api/v1/admin/users", map[string]any{"tenant_id": w.tenant, "name": "bob"}).str("id")
	e.must(201, e.admin, "POST", "/api/v1/admin/memberships", map[string]any{"user_id": w.member, "project_id": w.project})
	k := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.admin, "name": "admin-key"})
	w.adminKey, w.adminKeyID = k.str("secret"), k.str("id")
	k = e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.member, "project_id": w.project})
	w.memberKey, w.memberKeyID = k.str("secret"), k.str("id")
	return w
}

func (e *env) auditCount() int {
	e.t.Helper()
	return len(e.must(200, e.admin, "GET", "/api/v1/admin/audit?limit=1000", nil).items())
}

func TestHealthAndReady(t *testing.T) {
	e := newEnv(t)
	if r := e.must(200, "", "GET", "/healthz", nil); r.str("status") != "ok" {
		t.Fatalf("healthz: got %s", r.raw)
	}
	r := e.must(200, "", "GET", "/readyz", nil)
	if checks, _ := r.body["checks"].(map[string]any); checks["store"] != "ok" {
		t.Fatalf("readyz: got %s, want store ok", r.raw)
	}
}

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	tests := []struct {
		name   string
		header func(*http.Request)
		want   int
	}{
		{"no key", func(*http.Request) {}, 401},
		{"unknown key", func(r *http.Request) { r.Header.Set("Authorization", "Bearer slk_nope") }, 401},
		{"bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+w.memberKey) }, 200},
		{"x-api-key", func(r *http.Request) { r.Header.Set("x-api-key", w.memberKey) }, 200},
		{"huge key", func(r *http.Request) { r.Header.Set("x-api-key", strings.Repeat("k", 5000)) }, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", e.url+"/api/v1/me", nil)
			tt.header(req)
			hr, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			hr.Body.Close()
			if hr.StatusCode != tt.want {
				t.Fatalf("got %d, want %d", hr.StatusCode, tt.want)
			}
			if tt.want == 401 && hr.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	me := e.must(200, w.memberKey, "GET", "/api/v1/me", nil)
	if me.str("user_id") != w.member || me.str("tenant_id") != w.tenant || me.str("project_id") != w.project || me.str("role") != "member" {
		t.Fatalf("me: got %s", me.raw)
	}
}

func TestRevokedKeyRefusedEverywhereAtOnce(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	paths := []string{"/api/v1/me", "/api/v1/admin/users/" + w.admin, "/api/v1/admin/tenants", "/api/v1/admin/keys"}
	for _, p := range paths {
		e.must(200, w.adminKey, "GET", p, nil)
	}
	r := e.must(200, e.admin, "DELETE", "/api/v1/admin/keys/"+w.adminKeyID, nil)
	if r.str("revoked_at") == "" {
		t.Fatalf("revoke: got %s, want revoked_at set", r.raw)
	}
	for _, p := range paths {
		if r := e.do(w.adminKey, "GET", p, nil); r.status != 401 || !strings.Contains(r.raw, "revoked") {
			t.Fatalf("GET %s with revoked key: got %d %s, want 401 revoked", p, r.status, r.raw)
		}
	}
	// Revoking again changes nothing; updating a revoked key is refused.
	e.must(200, e.admin, "POST", "/api/v1/admin/keys/"+w.adminKeyID+"/revoke", nil)
	e.must(409, e.admin, "PATCH", "/api/v1/admin/keys/"+w.adminKeyID, map[string]any{"name": "again"})
}

func TestExpiredKeyRefused(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	exp := e.clock.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	k := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other, "expires_at": exp})
	e.must(200, k.str("secret"), "GET", "/api/v1/me", nil)
	e.clock.Advance(time.Hour + time.Second)
	if r := e.do(k.str("secret"), "GET", "/api/v1/me", nil); r.status != 401 || !strings.Contains(r.raw, "expired") {
		t.Fatalf("expired key: got %d %s", r.status, r.raw)
	}
	e.must(400, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other, "expires_at": "2001-01-01T00:00:00Z"})
	if r := e.do(e.admin, "POST", "/api/v1/admin/keys", `{"user_id":"`+w.other+`","expires_at":"tomorrow"}`); r.status != 400 || r.errField() != "expires_at" {
		t.Fatalf("bad expires_at: got %d %s", r.status, r.raw)
	}
}

func TestKeySecretShownOnceStoredHashed(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	k := e.must(201, w.adminKey, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.member, "project_id": w.project, "name": "ci"})
	secret := k.str("secret")
	if !strings.HasPrefix(secret, tenancy.KeyPrefix) || len(secret) < 40 {
		t.Fatalf("secret %q: want slk_ and at least 32 random bytes", secret)
	}
	if !strings.HasPrefix(secret, k.str("prefix")) || len(k.str("prefix")) >= len(secret)/2 {
		t.Fatalf("prefix %q of %q: want a short visible prefix", k.str("prefix"), secret)
	}
	if k.header.Get("Cache-Control") != "no-store" {
		t.Fatal("key creation response is cacheable")
	}
	for _, path := range []string{"/api/v1/admin/keys/" + k.str("id"), "/api/v1/admin/keys?user_id=" + w.member, "/api/v1/admin/audit?limit=1000"} {
		r := e.must(200, e.admin, "GET", path, nil)
		if strings.Contains(r.raw, secret) || strings.Contains(r.raw, `"secret"`) || strings.Contains(r.raw, `"hash"`) {
			t.Fatalf("GET %s reveals the key: %s", path, r.raw)
		}
	}
	if strings.Contains(e.logs.String(), secret) || strings.Contains(e.logs.String(), e.admin) {
		t.Fatal("a key appears in the logs")
	}
	// The member can use it in their project.
	if me := e.must(200, secret, "GET", "/api/v1/me", nil); me.str("project_id") != w.project {
		t.Fatalf("me: got %s", me.raw)
	}
	// A member's key may not default to a project they are not in.
	p2 := e.must(201, e.admin, "POST", "/api/v1/admin/projects", map[string]any{"tenant_id": w.tenant, "name": "other"}).str("id")
	if r := e.do(e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.member, "project_id": p2}); r.status != 400 || r.errField() != "project_id" {
		t.Fatalf("key for non-member project: got %d %s", r.status, r.raw)
	}
}

func TestBadInputNamesTheFieldAndChangesNothing(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	long := strings.Repeat("a", tenancy.MaxNameLen+1)
	tests := []struct {
		name, method, path string
		body               any
		status             int
		field              string
	}{
		{"unknown field", "POST", "/api/v1/admin/tenants", `{"name":"x","colour":"red"}`, 400, "colour"},
		{"wrong type", "POST", "/api/v1/admin/tenants", `{"name":5}`, 400, "name"},
		{"wrong type in patch", "PATCH", "/api/v1/admin/tenants/" + w.tenant, `{"timezone":true}`, 400, "timezone"},
		{"over-long name", "POST", "/api/v1/admin/tenants", map[string]any{"name": long}, 400, "name"},
		{"empty name", "POST", "/api/v1/admin/projects", map[string]any{"tenant_id": w.tenant}, 400, "name"},
		{"bad characters", "POST", "/api/v1/admin/users", map[string]any{"tenant_id": w.tenant, "name": "a b"}, 400, "name"},
		{"bad timezone", "POST", "/api/v1/admin/tenants", map[string]any{"name": "x", "timezone": "Mars/Olympus"}, 400, "timezone"},
		{"bad role", "POST", "/api/v1/admin/users", map[string]any{"tenant_id": w.tenant, "name": "z", "role": "king"}, 400, "role"},
		{"bad email", "POST", "/api/v1/admin/users", map[string]any{"tenant_id": w.tenant, "name": "z", "email": "nope"}, 400, "email"},
		{"duplicate tenant", "POST", "/api/v1/admin/tenants", map[string]any{"name": "acme"}, 409, "name"},
		{"duplicate department in parent", "POST", "/api/v1/admin/departments", map[string]any{"tenant_id": w.tenant, "name": "eng"}, 409, "name"},
		{"duplicate project", "POST", "/api/v1/admin/projects", map[string]any{"tenant_id": w.tenant, "name": "chatbot"}, 409, "name"},
		{"duplicate user", "POST", "/api/v1/admin/users", map[string]any{"tenant_id": w.tenant, "name": "alice"}, 409, "name"},
		{"rename onto sibling", "PATCH", "/api/v1/admin/users/" + w.other, map[string]any{"name": "alice"}, 409, "name"},
		{"duplicate membership", "POST", "/api/v1/admin/memberships", map[string]any{"user_id": w.member, "project_id": w.project}, 409, "user_id"},
		{"missing tenant", "POST", "/api/v1/admin/departments", map[string]any{"tenant_id": "ten_nope", "name": "d"}, 400, "tenant_id"},
		{"missing parent", "POST", "/api/v1/admin/departments", map[string]any{"tenant_id": w.tenant, "parent_id": "dep_nope", "name": "d"}, 400, "parent_id"},
		{"cycle: self", "PATCH", "/api/v1/admin/departments/" + w.dept, map[string]any{"parent_id": w.dept}, 400, "parent_id"},
		{"cycle: descendant", "PATCH", "/api/v1/admin/departments/" + w.dept, map[string]any{"parent_id": w.subDept}, 400, "parent_id"},
		{"delete tenant with children", "DELETE", "/api/v1/admin/tenants/" + w.tenant, nil, 409, "departments"},
		{"delete department with children", "DELETE", "/api/v1/admin/departments/" + w.dept, nil, 409, "departments"},
		{"delete department with projects", "DELETE", "/api/v1/admin/departments/" + w.subDept, nil, 409, "projects"},
		{"delete project with keys", "DELETE", "/api/v1/admin/projects/" + w.project, nil, 409, "keys"},
		{"delete user with keys", "DELETE", "/api/v1/admin/users/" + w.member, nil, 409, "keys"},
		{"bad limit", "GET", "/api/v1/admin/tenants?limit=0", nil, 400, "limit"},
		{"unknown query parameter", "GET", "/api/v1/admin/users?tenant=x", nil, 400, "tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.auditCount()
			r := e.do(e.admin, tt.method, tt.path, tt.body)
			if r.status != tt.status || r.errField() != tt.field {
				t.Fatalf("got %d field %q, want %d field %q: %s", r.status, r.errField(), tt.status, tt.field, r.raw)
			}
			if r.body["error"].(map[string]any)["request_id"] == "" {
				t.Fatal("error without request_id")
			}
			if after := e.auditCount(); after != before {
				t.Fatalf("a refused request changed something: audit entries %d → %d", before, after)
			}
		})
	}
	// The objects are as they were.
	if d := e.must(200, e.admin, "GET", "/api/v1/admin/departments/"+w.dept, nil); d.str("parent_id") != "" {
		t.Fatalf("department moved despite refusal: %s", d.raw)
	}
}

func TestBodiesAreBounded(t *testing.T) {
	e := newEnv(t)
	big := `{"name":"x","display_name":"` + strings.Repeat("a", 2<<20) + `"}`
	if r := e.do(e.admin, "POST", "/api/v1/admin/tenants", big); r.status != 413 || r.errCode() != "too_large" {
		t.Fatalf("2 MiB body: got %d %s", r.status, r.raw)
	}
	for _, body := range []string{"", "[]", `{"name":"x"} {"name":"y"}`, `{"name":`} {
		if r := e.do(e.admin, "POST", "/api/v1/admin/tenants", body); r.status != 400 {
			t.Fatalf("body %q: got %d, want 400", body, r.status)
		}
	}
}

func TestCRUDEveryObject(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	// Tenants.
	e.must(200, e.admin, "PATCH", "/api/v1/admin/tenants/"+w.tenant, map[string]any{"display_name": "ACME Inc.", "timezone": "Asia/Shanghai"})
	if r := e.must(200, e.admin, "GET", "/api/v1/admin/tenants/"+w.tenant, nil); r.str("timezone") != "Asia/Shanghai" || r.str("display_name") != "ACME Inc." {
		t.Fatalf("tenant after update: %s", r.raw)
	}
	// Departments: move sub-department to the root and back.
	e.must(200, e.admin, "PATCH", "/api/v1/admin/departments/"+w.subDept, map[string]any{"parent_id": ""})
	if n := len(e.must(200, e.admin, "GET", "/api/v1/admin/departments?root=true&tenant_id="+w.tenant, nil).items()); n != 2 {
		t.Fatalf("root departments: got %d, want 2", n)
	}
	e.must(200, e.admin, "PATCH", "/api/v1/admin/departments/"+w.subDept, map[string]any{"parent_id": w.dept})
	if r := e.must(200, e.admin, "GET", "/api/v1/admin/departments?parent_id="+w.dept, nil); len(r.items()) != 1 {
		t.Fatalf("children of eng: %s", r.raw)
	}
	// Projects: move to the tenant root.
	e.must(200, e.admin, "PATCH", "/api/v1/admin/projects/"+w.project, map[string]any{"department_id": ""})
	// Users.
	if r := e.must(200, w.adminKey, "PATCH", "/api/v1/admin/users/"+w.other, map[string]any{"email": "bob@example.org", "role": "tenant_admin"}); r.str("role") != "tenant_admin" {
		t.Fatalf("user update: %s", r.raw)
	}
	// Memberships.
	if r := e.must(200, e.admin, "GET", "/api/v1/admin/memberships?project_id="+w.project, nil); len(r.items()) != 1 {
		t.Fatalf("memberships: %s", r.raw)
	}
	e.must(201, e.admin, "POST", "/api/v1/admin/memberships", map[string]any{"user_id": w.other, "project_id": w.project})
	e.must(204, e.admin, "DELETE", "/api/v1/admin/memberships/"+w.other+"/"+w.project, nil)
	e.must(404, e.admin, "DELETE", "/api/v1/admin/memberships/"+w.other+"/"+w.project, nil)
	// Keys.
	if r := e.must(200, e.admin, "PATCH", "/api/v1/admin/keys/"+w.memberKeyID, map[string]any{"name": "laptop"}); r.str("name") != "laptop" {
		t.Fatalf("key update: %s", r.raw)
	}
	// Tear everything down in order; each delete is 204 and the object is gone.
	e.must(200, e.admin, "DELETE", "/api/v1/admin/keys/"+w.memberKeyID, nil)
	e.must(200, e.admin, "DELETE", "/api/v1/admin/keys/"+w.adminKeyID, nil)
	for _, path := range []string{
		"/api/v1/admin/projects/" + w.project,
		"/api/v1/admin/departments/" + w.subDept,
		"/api/v1/admin/departments/" + w.dept,
		"/api/v1/admin/users/" + w.member,
		"/api/v1/admin/users/" + w.admin,
		"/api/v1/admin/users/" + w.other,
		"/api/v1/admin/tenants/" + w.tenant,
	} {
		e.must(204, e.admin, "DELETE", path, nil)
		e.must(404, e.admin, "GET", path, nil)
	}
	// Every change is in the audit log with before and after.
	audit := e.must(200, e.admin, "GET", "/api/v1/admin/audit?limit=1000", nil).items()
	actions := map[string]int{}
	for _, a := range audit {
		actions[a["action"].(string)]++
	}
	for _, want := range []string{"tenant.create", "tenant.update", "tenant.delete", "department.update", "project.update",
		"user.update", "membership.create", "membership.delete", "key.create", "key.revoke", "key.update"} {
		if actions[want] == 0 {
			t.Errorf("audit log has no %s: %v", want, actions)
		}
	}
}

func TestPaging(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"t1", "t2", "t3", "t4", "t5"} {
		e.must(201, e.admin, "POST", "/api/v1/admin/tenants", map[string]any{"name": n})
	}
	var seen []string
	after := ""
	for range 5 {
		r := e.must(200, e.admin, "GET", "/api/v1/admin/tenants?limit=2&after="+after, nil)
		for _, it := range r.items() {
			seen = append(seen, it["name"].(string))
		}
		after = r.str("next")
		if after == "" {
			break
		}
	}
	if strings.Join(seen, ",") != "t1,t2,t3,t4,t5" {
		t.Fatalf("paged tenants: got %v", seen)
	}
}

// TestTenantIsolation: a tenant admin (and a member) of A can reach nothing
// of B, and nothing of B changes when they try.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t)
	a := e.makeWorld("a")
	b := e.makeWorld("b")
	objects := map[string]string{
		"tenant":          "/api/v1/admin/tenants/" + b.tenant,
		"department":      "/api/v1/admin/departments/" + b.dept,
		"sub-department":  "/api/v1/admin/departments/" + b.subDept,
		"project":         "/api/v1/admin/projects/" + b.project,
		"admin user":      "/api/v1/admin/users/" + b.admin,
		"member user":     "/api/v1/admin/users/" + b.member,
		"admin key":       "/api/v1/admin/keys/" + b.adminKeyID,
		"member key":      "/api/v1/admin/keys/" + b.memberKeyID,
		"membership":      "/api/v1/admin/memberships/" + b.member + "/" + b.project,
		"revoke":          "/api/v1/admin/keys/" + b.memberKeyID + "/revoke",
		"tenant list":     "/api/v1/admin/departments?tenant_id=" + b.tenant,
		"user list":       "/api/v1/admin/users?tenant_id=" + b.tenant,
		"key list":        "/api/v1/admin/keys?tenant_id=" + b.tenant,
		"audit list":      "/api/v1/admin/audit?tenant_id=" + b.tenant,
		"membership list": "/api/v1/admin/memberships?tenant_id=" + b.tenant,
	}
	for who, key := range map[string]string{"tenant admin of A": a.adminKey, "member of A": a.memberKey} {
		for what, path := range objects {
			methods := []string{"GET", "PATCH", "DELETE", "POST"}
			if strings.Contains(path, "?") {
				methods = []string{"GET"}
			}
			for _, method := range methods {
				t.Run(who+"/"+method+" "+what, func(t *testing.T) {
					body := any(nil)
					if method == "PATCH" || method == "POST" {
						body = map[string]any{"name": "pwned"}
					}
					r := e.do(key, method, path, body)
					if r.status != 404 && r.status != 403 && r.status != 405 && r.status != 400 {
						t.Fatalf("got %d, want 404/403: %s", r.status, r.raw)
					}
					if r.status == 400 && r.errField() != "name" {
						t.Fatalf("got 400 for another reason than the body: %s", r.raw)
					}
				})
			}
		}
		// Creating into B is refused too.
		for path, body := range map[string]map[string]any{
			"/api/v1/admin/departments": {"tenant_id": b.tenant, "name": "x"},
			"/api/v1/admin/projects":    {"tenant_id": b.tenant, "name": "x"},
			"/api/v1/admin/users":       {"tenant_id": b.tenant, "name": "x"},
			"/api/v1/admin/keys":        {"user_id": b.member},
			"/api/v1/admin/memberships": {"user_id": b.other, "project_id": b.project},
		} {
			if r := e.do(key, "POST", path, body); r.status != 404 && r.status != 403 {
				t.Errorf("%s: POST %s into B: got %d %s", who, path, r.status, r.raw)
			}
		}
		// Lists without a filter show nothing of B.
		for _, path := range []string{"/api/v1/admin/tenants", "/api/v1/admin/projects", "/api/v1/admin/users", "/api/v1/admin/keys", "/api/v1/admin/memberships"} {
			r := e.do(key, "GET", path, nil)
			if strings.Contains(r.raw, b.tenant) {
				t.Errorf("%s: GET %s shows tenant B: %s", who, path, r.raw)
			}
		}
	}
	// B is intact: every object still there, unchanged, B's keys still work.
	for what, path := range objects {
		if strings.Contains(path, "revoke") {
			continue
		}
		if r := e.do(e.admin, "GET", path, nil); r.status != 200 || strings.Contains(r.raw, "pwned") {
			t.Errorf("B's %s after the attempts: %d %s", what, r.status, r.raw)
		}
	}
	e.must(200, b.memberKey, "GET", "/api/v1/me", nil)
	e.must(200, b.adminKey, "GET", "/api/v1/me", nil)
}

func TestTenantAdminManagesOwnTenant(t *testing.T) {
	e := newEnv(t)
	a := e.makeWorld("a")
	// Creates objects in its tenant without naming it.
	d := e.must(201, a.adminKey, "POST", "/api/v1/admin/departments", map[string]any{"name": "sales"})
	if d.str("tenant_id") != a.tenant {
		t.Fatalf("department went to %s, want %s", d.str("tenant_id"), a.tenant)
	}
	u := e.must(201, a.adminKey, "POST", "/api/v1/admin/users", map[string]any{"name": "carol"})
	e.must(201, a.adminKey, "POST", "/api/v1/admin/memberships", map[string]any{"user_id": u.str("id"), "project_id": a.project})
	e.must(201, a.adminKey, "POST", "/api/v1/admin/keys", map[string]any{"user_id": u.str("id"), "project_id": a.project})
	// But may not create tenants, platform admins, or delete its tenant.
	e.must(403, a.adminKey, "POST", "/api/v1/admin/tenants", map[string]any{"name": "mine"})
	if r := e.do(a.adminKey, "POST", "/api/v1/admin/users", map[string]any{"name": "root2", "role": "platform_admin"}); r.status != 403 || r.errField() != "role" {
		t.Fatalf("tenant admin making a platform admin: %d %s", r.status, r.raw)
	}
	e.must(403, a.adminKey, "DELETE", "/api/v1/admin/tenants/"+a.tenant, nil)
	if r := e.do(a.adminKey, "PATCH", "/api/v1/admin/users/"+a.admin, map[string]any{"role": "member"}); r.status != 403 {
		t.Fatalf("changing own role: %d %s", r.status, r.raw)
	}
	// Sees its own tenant's audit log.
	if r := e.must(200, a.adminKey, "GET", "/api/v1/admin/audit", nil); len(r.items()) == 0 {
		t.Fatal("tenant admin sees no audit entries")
	}
}

func TestMemberSeesOnlyThemselves(t *testing.T) {
	e := newEnv(t)
	a := e.makeWorld("a")
	k := a.memberKey
	if r := e.must(200, k, "GET", "/api/v1/admin/users", nil); len(r.items()) != 1 || r.items()[0]["id"] != a.member {
		t.Fatalf("member's user list: %s", r.raw)
	}
	e.must(200, k, "GET", "/api/v1/admin/users/"+a.member, nil)
	e.must(404, k, "GET", "/api/v1/admin/users/"+a.other, nil)
	e.must(403, k, "GET", "/api/v1/admin/departments/"+a.dept, nil)
	e.must(403, k, "PATCH", "/api/v1/admin/projects/"+a.project, map[string]any{"name": "mine"})
	e.must(403, k, "PATCH", "/api/v1/admin/users/"+a.member, map[string]any{"role": "tenant_admin"})
	e.must(403, k, "POST", "/api/v1/admin/users", map[string]any{"name": "eve"})
	if r := e.must(200, k, "GET", "/api/v1/admin/projects", nil); len(r.items()) != 1 {
		t.Fatalf("member's projects: %s", r.raw)
	}
	// Own keys: create, list, revoke; not others'.
	nk := e.must(201, k, "POST", "/api/v1/admin/keys", map[string]any{"project_id": a.project, "name": "second"})
	if r := e.must(200, k, "GET", "/api/v1/admin/keys", nil); len(r.items()) != 2 {
		t.Fatalf("member's keys: %s", r.raw)
	}
	e.must(404, k, "GET", "/api/v1/admin/keys/"+a.adminKeyID, nil)
	e.must(403, k, "POST", "/api/v1/admin/keys", map[string]any{"user_id": a.other})
	e.must(200, k, "DELETE", "/api/v1/admin/keys/"+nk.str("id"), nil)
	e.must(401, nk.str("secret"), "GET", "/api/v1/me", nil)
}

func TestUnknownEndpoint(t *testing.T) {
	e := newEnv(t)
	if r := e.do(e.admin, "GET", "/api/v1/nope", nil); r.status != 404 || r.errCode() != "not_found" {
		t.Fatalf("got %d %s", r.status, r.raw)
	}
	if r := e.do("", "GET", "/nope", nil); r.status != 404 {
		t.Fatalf("got %d %s", r.status, r.raw)
	}
}
