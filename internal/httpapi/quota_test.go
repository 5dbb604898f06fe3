package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// num reads a JSON number field.
func num(m map[string]any, key string) float64 {
	v, _ := m[key].(float64)
	return v
}

func errBody(r resp) map[string]any {
	e, _ := r.body["error"].(map[string]any)
	return e
}

// usageOf returns the report of one scope and dimension/window from
// GET /api/v1/usage as key.
func (e *env) usageOf(key, query, scope, dim, window string) map[string]any {
	e.t.Helper()
	r := e.must(200, key, "GET", "/api/v1/usage"+query, nil)
	for _, s := range r.body["scopes"].([]any) {
		sm := s.(map[string]any)
		if sm["scope"] != scope {
			continue
		}
		for _, d := range sm["dimensions"].([]any) {
			dm := d.(map[string]any)
			if dm["dimension"] == dim && (window == "" || dm["window"] == window) {
				return dm
			}
		}
		return map[string]any{}
	}
	e.t.Fatalf("usage has no scope %s: %s", scope, r.raw)
	return nil
}

func (e *env) setLimits(key, scope string, body any) resp {
	e.t.Helper()
	return e.do(key, "PUT", "/api/v1/admin/limits/"+scope, body)
}

func TestAcquireSettleRoundTrip(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	if r := e.setLimits(e.admin, "tenant/"+w.tenant, map[string]any{"limits": map[string]any{"tokens": "10000/day", "requests": "100/min"}}); r.status != 200 {
		t.Fatalf("set limits: %d %s", r.status, r.raw)
	}
	a := e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 3000})
	if a.str("ticket") == "" || num(a.body, "tokens") != 3000 {
		t.Fatalf("acquire: %s", a.raw)
	}
	wantScopes := []string{"global", "tenant/" + w.tenant, "department/" + w.dept, "department/" + w.subDept, "project/" + w.project,
		"user/" + w.member, "membership/" + w.member + "@" + w.project, "key/" + w.memberKeyID}
	if got := fmt.Sprint(a.body["scopes"]); got != fmt.Sprint(wantScopes) {
		t.Fatalf("scopes: got %s, want %v", got, wantScopes)
	}
	if a.header.Get("RateLimit-Limit") != "100" || a.header.Get("RateLimit-Remaining") != "99" {
		t.Fatalf("RateLimit headers: %v", a.header)
	}
	if a.header.Get("x-ratelimit-remaining-tokens") != "7000" {
		t.Fatalf("x-ratelimit-remaining-tokens: got %q, want 7000", a.header.Get("x-ratelimit-remaining-tokens"))
	}
	// The reservation counts while the ticket is open.
	if u := e.usageOf(w.memberKey, "", "tenant/"+w.tenant, "tokens", "day"); num(u, "used") != 3000 {
		t.Fatalf("reserved use: %v", u)
	}
	s := e.must(200, w.memberKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "input_tokens": 400, "output_tokens": 600})
	if num(s.body, "reserved_tokens") != 3000 || num(s.body, "input_tokens") != 400 {
		t.Fatalf("settle: %s", s.raw)
	}
	// Replaying the settle changes nothing.
	s2 := e.must(200, w.memberKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "input_tokens": 9999})
	if num(s2.body, "input_tokens") != 400 || s2.str("settled_at") != s.str("settled_at") {
		t.Fatalf("replayed settle: %s, want the first result %s", s2.raw, s.raw)
	}
	u := e.usageOf(w.memberKey, "", "tenant/"+w.tenant, "tokens", "day")
	if num(u, "used") != 1000 || num(u, "remaining") != 9000 || num(u, "percent") != 10 || num(u, "limit") != 10000 {
		t.Fatalf("usage after settle: %v", u)
	}
	// Parents' use equals the sum of their children's: every scope saw 1000
	// (but the key's, which limits nothing: the engine does not count it).
	for _, sc := range wantScopes[1 : len(wantScopes)-1] {
		if got := num(e.usageOf(e.admin, "?scope="+sc, sc, "tokens", "day"), "used"); got != 1000 {
			t.Errorf("%s used %v tokens, want 1000", sc, got)
		}
	}
	// The event is durable and rolled up once, despite the replay.
	if err := e.rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	rolls, err := e.store.Rollups(context.Background(), []string{e.clock.Now().In(time.FixedZone("Berlin", 0)).Format("2006-01")})
	if err != nil {
		t.Fatal(err)
	}
	for _, rl := range rolls {
		if rl.Scope == "user/"+w.member && rl.Tokens != 1000 {
			t.Fatalf("roll-up of the user: %d tokens, want 1000", rl.Tokens)
		}
	}
	// Unknown tickets are a clear 404.
	if r := e.do(w.memberKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": "nope"}); r.status != 404 || r.errField() != "ticket" {
		t.Fatalf("unknown ticket: %d %s", r.status, r.raw)
	}
}

func TestDenialShapeAndAllOrNothing(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"tokens": "1000/day"}})
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 800})
	before := num(e.usageOf(e.admin, "?scope=tenant/"+w.tenant, "tenant/"+w.tenant, "tokens", "day"), "used")
	r := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 300})
	if r.status != 429 {
		t.Fatalf("over budget: got %d, want 429: %s", r.status, r.raw)
	}
	eb := errBody(r)
	if eb["code"] != "quota_exceeded" || eb["scope"] != "user/"+w.member || eb["dimension"] != "tokens" || eb["window"] != "day" ||
		num(eb, "limit") != 1000 || num(eb, "used") != 800 || num(eb, "requested") != 300 || eb["reset_at"] == nil {
		t.Fatalf("denial body: %s", r.raw)
	}
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra <= 0 || ra > 86400 {
		t.Fatalf("Retry-After: %q", r.header.Get("Retry-After"))
	}
	// Nothing was charged anywhere by the denial.
	if after := num(e.usageOf(e.admin, "?scope=tenant/"+w.tenant, "tenant/"+w.tenant, "tokens", "day"), "used"); after != before {
		t.Fatalf("denial charged the tenant: %v → %v", before, after)
	}
	// A smaller ask can be clamped to what remains.
	c := e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 300, "min_tokens": 100})
	if num(c.body, "tokens") != 200 || c.body["clamped"] != true {
		t.Fatalf("clamp: %s", c.raw)
	}
}

func TestRateLimitHeadersAndRetryAfter(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/tenant/"+w.tenant, map[string]any{"plan": "free"})
	for i := range 10 {
		e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{})
		_ = i
	}
	r := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{})
	if r.status != 429 || r.errCode() != "rate_limited" || r.header.Get("Retry-After") != "6" || r.header.Get("RateLimit-Remaining") != "0" {
		t.Fatalf("11th request of 10/min: %d %v %s", r.status, r.header, r.raw)
	}
	e.clock.Advance(6 * time.Second)
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{})
}

func TestClassPoolPausesEveryoneUntilRaised(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("university")
	// bob works in a second group under the same department.
	g2 := e.must(201, e.admin, "POST", "/api/v1/admin/projects", map[string]any{"tenant_id": w.tenant, "department_id": w.subDept, "name": "group-2"}).str("id")
	e.must(201, e.admin, "POST", "/api/v1/admin/memberships", map[string]any{"user_id": w.other, "project_id": g2})
	bobKey := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other, "project_id": g2}).str("secret")
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/department/"+w.dept, map[string]any{"limits": map[string]any{"tokens": "1000/day"}})

	settle := func(key string, tokens int) {
		t.Helper()
		a := e.must(200, key, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": tokens})
		e.must(200, key, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "input_tokens": tokens})
	}
	settle(w.memberKey, 600)
	settle(bobKey, 400)
	for _, key := range []string{w.memberKey, bobKey} {
		r := e.do(key, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 1})
		if r.status != 429 || errBody(r)["scope"] != "department/"+w.dept {
			t.Fatalf("empty pool: got %d %s, want 429 at the department", r.status, r.raw)
		}
	}
	// The tenant admin raises the pool: the next decision uses it, no restart.
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/department/"+w.dept, map[string]any{"limits": map[string]any{"tokens": "2000/day"}})
	settle(bobKey, 500)
	u := e.usageOf(w.memberKey, "", "department/"+w.dept, "tokens", "day")
	if num(u, "used") != 1500 || num(u, "limit") != 2000 {
		t.Fatalf("pool after raise: %v", u)
	}
	// The change is audited with before and after.
	found := false
	for _, a := range e.must(200, e.admin, "GET", "/api/v1/admin/audit", nil).items() {
		if a["action"] == "limits.set" && a["object_id"] == "department/"+w.dept && a["before"] != nil && a["after"] != nil {
			found = true
		}
	}
	if !found {
		t.Fatal("no audit entry with before and after for the limit change")
	}
	// A temporary grant raises it too, until it expires.
	e.must(201, w.adminKey, "POST", "/api/v1/admin/grants", map[string]any{"scope": "department/" + w.dept,
		"limits": map[string]any{"tokens": "1000/day"}, "expires_at": e.clock.Now().Add(time.Hour).Format(time.RFC3339Nano), "reason": "exam week"})
	if u := e.usageOf(w.memberKey, "", "department/"+w.dept, "tokens", "day"); num(u, "limit") != 3000 {
		t.Fatalf("limit with grant: %v", u)
	}
	e.clock.Advance(2 * time.Hour)
	if u := e.usageOf(w.memberKey, "", "department/"+w.dept, "tokens", "day"); num(u, "limit") != 2000 {
		t.Fatalf("limit after the grant expired: %v", u)
	}
}

func TestChildMayNotExceedParent(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/tenant/"+w.tenant, map[string]any{"limits": map[string]any{"tokens": "1000/day", "concurrency": 3}})
	for _, tt := range []struct {
		scope, field string
		limits       map[string]any
	}{
		{"department/" + w.dept, "limits.tokens", map[string]any{"tokens": "2000/day"}},
		{"user/" + w.member, "limits.concurrency", map[string]any{"concurrency": 4}},
	} {
		if r := e.setLimits(w.adminKey, tt.scope, map[string]any{"limits": tt.limits}); r.status != 400 || r.errField() != tt.field {
			t.Errorf("%s %v: got %d %s, want 400 field %s", tt.scope, tt.limits, r.status, r.raw, tt.field)
		}
	}
	// Within the parent is fine; the sum of children may exceed it.
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"tokens": "800/day"}})
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/user/"+w.other, map[string]any{"limits": map[string]any{"tokens": "800/day"}})
	// Roles: a tenant admin may not set its own tenant's limits; a member none.
	if r := e.setLimits(w.adminKey, "tenant/"+w.tenant, map[string]any{"limits": map[string]any{"tokens": "9/day"}}); r.status != 403 {
		t.Fatalf("tenant admin on its tenant: %d %s", r.status, r.raw)
	}
	if r := e.setLimits(w.memberKey, "user/"+w.member, map[string]any{"limits": map[string]any{"tokens": "9/day"}}); r.status != 403 {
		t.Fatalf("member on itself: %d %s", r.status, r.raw)
	}
	if r := e.setLimits(e.admin, "galaxy/x", map[string]any{}); r.status != 400 || r.errField() != "scope" {
		t.Fatalf("bad scope: %d %s", r.status, r.raw)
	}
	if r := e.setLimits(e.admin, "user/"+w.member, map[string]any{"limits": map[string]any{"tokens": "lots"}}); r.status != 400 || r.errField() != "limits.tokens" {
		t.Fatalf("bad limit value: %d %s", r.status, r.raw)
	}
}

func TestConcurrencyAndModels(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"concurrency": 2, "models": []string{"small"}}})
	t1 := e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"concurrency": true}).str("ticket")
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"concurrency": true})
	r := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"concurrency": true})
	if r.status != 429 || errBody(r)["dimension"] != "concurrency" {
		t.Fatalf("third run: %d %s", r.status, r.raw)
	}
	e.must(200, w.memberKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": t1})
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"concurrency": true})
	// An abandoned lease comes back after its TTL.
	e.clock.Advance(6 * time.Minute)
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"concurrency": true})

	if r := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"model": "huge-70b"}); r.status != http.StatusForbidden || r.errCode() != "model_not_allowed" {
		t.Fatalf("model not allowed: %d %s", r.status, r.raw)
	}
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"model": "small"})
}

func TestMeteringOnBehalfAndTicketOwnership(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	// A tenant admin (e.g. the platform's service account) meters for alice.
	a := e.must(200, w.adminKey, "POST", "/api/v1/quota/acquire", map[string]any{"user_id": w.member, "project_id": w.project, "tokens": 10})
	// A member may not meter for others, nor settle their tickets.
	if r := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"user_id": w.other}); r.status != 404 && r.status != 403 {
		t.Fatalf("member on behalf of bob: %d %s", r.status, r.raw)
	}
	bobKey := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other}).str("secret")
	if r := e.do(bobKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket")}); r.status != 404 {
		t.Fatalf("bob settling alice's ticket: %d %s", r.status, r.raw)
	}
	e.must(200, w.memberKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "output_tokens": 5})
	// Bad input names the field.
	for body, field := range map[string]string{
		`{"tokens":-1}`:                  "tokens",
		`{"tokens":5,"min_tokens":6}`:    "min_tokens",
		`{"ttl_seconds":0}`:              "ttl_seconds",
		`{"gpu_seconds":"lots"}`:         "gpu_seconds",
		`{"project_id":"prj_nope"}`:      "project_id",
		`{"concurrency":true,"bogus":1}`: "bogus",
	} {
		if r := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", body); r.status/100 != 4 || r.errField() != field {
			t.Errorf("acquire %s: got %d field %q, want 4xx field %q", body, r.status, r.errField(), field)
		}
	}
}

func TestPolicyApplyAndExportOverHTTP(t *testing.T) {
	e := newEnv(t)
	doc := `
plans:
  free: {priority: low, limits: {requests: 10/min, tokens: 100000/day, concurrency: 1, gpu_seconds: 0/month}}
tenants:
  - name: university
    timezone: Asia/Shanghai
    departments:
      - name: cs101
        limits: {tokens: 500000/day}
        projects: [{name: group-1}, {name: group-2}]
    users:
      - {name: alice, plan: free, projects: [group-1], limits: {concurrency: 2}}
`
	dry := e.must(200, e.admin, "POST", "/api/v1/admin/policy?dry_run=true", doc)
	if n := len(dry.body["changes"].([]any)); n != 9 {
		t.Fatalf("dry run: %d changes, want 9: %s", n, dry.raw)
	}
	if r := e.must(200, e.admin, "GET", "/api/v1/admin/tenants", nil); len(r.items()) != 0 {
		t.Fatal("dry run created tenants")
	}
	e.must(200, e.admin, "POST", "/api/v1/admin/policy", doc)
	again := e.must(200, e.admin, "POST", "/api/v1/admin/policy", doc)
	if n := len(again.body["changes"].([]any)); n != 0 {
		t.Fatalf("second apply: %d changes, want 0: %s", n, again.raw)
	}
	req, _ := http.NewRequest("GET", e.url+"/api/v1/admin/policy?format=yaml", nil)
	req.Header.Set("x-api-key", e.admin)
	hr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	exported, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	round := e.must(200, e.admin, "POST", "/api/v1/admin/policy", string(exported))
	if n := len(round.body["changes"].([]any)); n != 0 {
		t.Fatalf("applying the export: %d changes, want 0: %s", n, round.raw)
	}
	if r := e.do(e.admin, "POST", "/api/v1/admin/policy", "tenants: [{name: x, colour: red}]"); r.status != 400 || r.errField() != "tenants[0].colour" {
		t.Fatalf("bad document: %d %s", r.status, r.raw)
	}
}

func TestDeletingAScopeDropsItsLimits(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.other, map[string]any{"limits": map[string]any{"concurrency": 1}})
	e.must(201, e.admin, "POST", "/api/v1/admin/grants", map[string]any{"scope": "user/" + w.other,
		"limits": map[string]any{"concurrency": 1}, "expires_at": e.clock.Now().Add(time.Hour).Format(time.RFC3339Nano)})
	// Membership limits: bob's go with him, alice's stay.
	e.must(201, e.admin, "POST", "/api/v1/admin/memberships", map[string]any{"user_id": w.other, "project_id": w.project})
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/membership/"+w.other+"@"+w.project, map[string]any{"limits": map[string]any{"concurrency": 1}})
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/membership/"+w.member+"@"+w.project, map[string]any{"limits": map[string]any{"concurrency": 1}})
	e.must(204, e.admin, "DELETE", "/api/v1/admin/users/"+w.other, nil)
	for _, path := range []string{"/api/v1/admin/limits", "/api/v1/admin/grants"} {
		if r := e.must(200, e.admin, "GET", path, nil); strings.Contains(r.raw, w.other) {
			t.Fatalf("GET %s still lists the deleted user's scope: %s", path, r.raw)
		}
	}
	if r := e.must(200, e.admin, "GET", "/api/v1/admin/limits", nil); !strings.Contains(r.raw, "membership/"+w.member+"@"+w.project) {
		t.Fatalf("alice's membership limits went with bob: %s", r.raw)
	}
}

// TestVirtualKeyInOneCall: a tenant admin creates a limited key in one
// call; the key's scope is the innermost of its requests' chain, shown on
// /api/v1/usage, denies the 11th request of 10 a minute and any model but
// its own, while the same user's other key is not limited by it.
func TestVirtualKeyInOneCall(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	body := `{"name":"ci","expires_in":"720h","limits":{"requests":{"limit":10,"period":"1m"},"models":["gpt-4o-mini"]}}`
	k := e.must(201, w.adminKey, "POST", "/api/v1/admin/keys", body)
	id, secret := k.str("id"), k.str("secret")
	lim, _ := k.body["limits"].(map[string]any)
	eff, _ := lim["effective"].(map[string]any)
	if lim["scope"] != "key/"+id || eff["requests"] != "10/min" || fmt.Sprint(eff["models"]) != "[gpt-4o-mini]" {
		t.Fatalf("created key's limits: got %s, want key/%s at 10/min on gpt-4o-mini", k.raw, id)
	}
	if exp, err := time.Parse(time.RFC3339Nano, k.str("expires_at")); err != nil || exp.Sub(e.clock.Now()).Round(time.Hour) != 720*time.Hour {
		t.Fatalf("expires_at: got %q, want 720h from now", k.str("expires_at"))
	}
	if u := e.usageOf(secret, "", "key/"+id, "requests", ""); num(u, "limit") != 10 {
		t.Fatalf("usage of the key's scope: got %v, want a limit of 10", u)
	}
	for i := range 10 {
		e.must(200, secret, "POST", "/api/v1/quota/acquire", map[string]any{"model": "gpt-4o-mini"})
		_ = i
	}
	r := e.do(secret, "POST", "/api/v1/quota/acquire", map[string]any{"model": "gpt-4o-mini"})
	if r.status != 429 || errBody(r)["scope"] != "key/"+id || errBody(r)["dimension"] != "requests" {
		t.Fatalf("11th request: got %d %s, want 429 at key/%s", r.status, r.raw, id)
	}
	// The admin's own bootstrap key is untouched by ci's limits.
	e.must(200, w.adminKey, "POST", "/api/v1/quota/acquire", map[string]any{"model": "gpt-4o-mini"})
	e.clock.Advance(time.Minute)
	if r := e.do(secret, "POST", "/api/v1/quota/acquire", map[string]any{"model": "gpt-4"}); r.status != 403 || r.errCode() != "model_not_allowed" {
		t.Fatalf("another model: got %d %s, want 403 model_not_allowed", r.status, r.raw)
	}
	// A key with no limits of its own is still shown among its chain's
	// scopes, without meters.
	r = e.must(200, w.memberKey, "GET", "/api/v1/usage", nil)
	if !strings.Contains(r.raw, `"scope":"key/`+w.memberKeyID+`"`) {
		t.Fatalf("usage of a member's unlimited key: %s, want key/%s among the scopes", r.raw, w.memberKeyID)
	}
	// The limits are those of the scope, through the limits API.
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/key/"+id, map[string]any{"limits": map[string]any{"requests": "1/min"}})
	e.must(200, secret, "POST", "/api/v1/quota/acquire", map[string]any{})
	if r := e.do(secret, "POST", "/api/v1/quota/acquire", map[string]any{}); r.status != 429 {
		t.Fatalf("after lowering to 1/min: got %d %s, want 429", r.status, r.raw)
	}
}

// TestVirtualKeyRights: a member may not create a limited key (nothing is
// created), nor set a key's limits; another tenant's admin finds no such
// scope; a member reads only their own keys' scopes.
func TestVirtualKeyRights(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	x := e.makeWorld("other")
	count := func() int {
		return len(e.must(200, e.admin, "GET", "/api/v1/admin/keys?user_id="+w.member, nil).items())
	}
	before := count()
	r := e.do(w.memberKey, "POST", "/api/v1/admin/keys", `{"name":"ci","limits":{"requests":"10/min"}}`)
	if r.status != 403 || r.errField() != "limits" {
		t.Fatalf("member creating a limited key: got %d %s, want 403 field limits", r.status, r.raw)
	}
	if n := count(); n != before {
		t.Fatalf("a refused create left %d keys, want %d", n, before)
	}
	mine := e.must(201, w.memberKey, "POST", "/api/v1/admin/keys", `{"name":"mine"}`).str("id")
	limits := map[string]any{"limits": map[string]any{"requests": "5/min"}}
	if r := e.setLimits(w.memberKey, "key/"+mine, limits); r.status != 403 {
		t.Fatalf("member setting its key's limits: got %d %s, want 403", r.status, r.raw)
	}
	if r := e.setLimits(x.adminKey, "key/"+mine, limits); r.status != 404 {
		t.Fatalf("another tenant's admin: got %d %s, want 404", r.status, r.raw)
	}
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/key/"+mine, limits)
	// The member reads its own keys' scopes, not another user's.
	if u := e.usageOf(w.memberKey, "?scope=key/"+mine, "key/"+mine, "requests", ""); num(u, "limit") != 5 {
		t.Fatalf("member reading its other key: %v", u)
	}
	if r := e.do(w.memberKey, "GET", "/api/v1/usage?scope=key/"+w.adminKeyID, nil); r.status != 404 {
		t.Fatalf("member reading another user's key: got %d %s, want 404", r.status, r.raw)
	}
	if r := e.do(x.adminKey, "GET", "/api/v1/admin/limits/key/"+mine, nil); r.status != 404 {
		t.Fatalf("another tenant's admin reading the key's limits: got %d %s, want 404", r.status, r.raw)
	}
	// Malformed scopes and expiries name their field.
	for _, c := range []struct{ method, path, body, field string }{
		{"PUT", "/api/v1/admin/limits/key/", `{}`, "scope"},
		{"PUT", "/api/v1/admin/limits/key/a/b", `{}`, "scope"},
		{"PUT", "/api/v1/admin/limits/key/key_nope", `{}`, "scope"},
		{"POST", "/api/v1/admin/keys", `{"expires_in":"soon"}`, "expires_in"},
		{"POST", "/api/v1/admin/keys", `{"expires_in":"1h","expires_at":"2099-01-01T00:00:00Z"}`, "expires_in"},
		{"POST", "/api/v1/admin/keys", `{"limits":{"requests":{"limit":10}}}`, "limits.requests"},
		{"POST", "/api/v1/admin/keys", `{"limits":{"requestz":"1/s"}}`, "limits.requestz"},
	} {
		if r := e.do(e.admin, c.method, c.path, c.body); r.status/100 != 4 || r.errField() != c.field {
			t.Errorf("%s %s %s: got %d %s, want 4xx field %s", c.method, c.path, c.body, r.status, r.raw, c.field)
		}
	}
}

// TestKeySpendReport: spend per key, from the usage ledger, equals the
// sum of the events made with each key; admins see their tenant's keys,
// members their own.
func TestKeySpendReport(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	x := e.makeWorld("other")
	second := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.member, "project_id": w.project, "name": "ci"})
	spend := func(key string, in, out int, cost float64) {
		t.Helper()
		a := e.must(200, key, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": in + out})
		e.must(200, key, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "input_tokens": in, "output_tokens": out, "cost_usd": cost})
	}
	spend(w.memberKey, 100, 50, 0.25)
	spend(w.memberKey, 10, 5, 0.5)
	spend(second.str("secret"), 300, 0, 1)
	spend(x.memberKey, 7, 0, 0)
	if err := e.rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// What the ledger holds, summed by the key scope each event names.
	evs, err := e.store.UsageEvents(context.Background(), "", time.Unix(0, 0), e.clock.Now().Add(time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	type sum struct{ requests, tokens, micros int64 }
	want := map[string]sum{}
	for _, ev := range evs {
		for _, sc := range ev.Scopes {
			if id, ok := strings.CutPrefix(sc, "key/"); ok {
				s := want[id]
				want[id] = sum{s.requests + ev.Requests, s.tokens + ev.Tokens(), s.micros + ev.CostMicros}
			}
		}
	}
	if len(want) != 3 {
		t.Fatalf("events name %d keys, want 3: %+v", len(want), want)
	}
	period := e.clock.Now().In(mustZone(t, "Europe/Berlin")).Format("2006-01")
	report := func(key, query string) map[string]sum {
		t.Helper()
		r := e.must(200, key, "GET", "/api/v1/admin/usage/keys"+query, nil)
		if want := period; !strings.Contains(query, "period=") && r.str("period") != want {
			t.Fatalf("default period: got %q, want the tenant's month %q", r.str("period"), want)
		}
		got := map[string]sum{}
		for _, it := range r.items() {
			got[it["key_id"].(string)] = sum{int64(num(it, "requests")), int64(num(it, "tokens")), int64(math.Round(num(it, "cost_usd") * 1e6))}
			if it["key_id"] == second.str("id") && (it["name"] != "ci" || it["user_id"] != w.member || it["prefix"] != second.str("prefix")) {
				t.Errorf("item of ci: got %v, want its name, user and prefix", it)
			}
		}
		return got
	}
	only := func(ids ...string) map[string]sum {
		out := map[string]sum{}
		for _, id := range ids {
			out[id] = want[id]
		}
		return out
	}
	for _, c := range []struct {
		who, key, query string
		want            map[string]sum
	}{
		{"platform admin, all", e.admin, "?period=" + period, want},
		{"platform admin, one tenant", e.admin, "?tenant_id=" + x.tenant + "&period=" + period, only(x.memberKeyID)},
		{"tenant admin", w.adminKey, "", only(w.memberKeyID, second.str("id"))},
		{"tenant admin, one user", w.adminKey, "?user_id=" + w.member, only(w.memberKeyID, second.str("id"))},
		{"member", w.memberKey, "", only(w.memberKeyID, second.str("id"))},
		{"one page", w.adminKey, "?limit=1&after=" + min(w.memberKeyID, second.str("id")), only(max(w.memberKeyID, second.str("id")))},
	} {
		if got := report(c.key, c.query); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %+v, want %+v", c.who, got, c.want)
		}
	}
	if got := report(e.admin, "?period=2001-01"); len(got) != 0 {
		t.Errorf("a period without use: got %+v, want nothing", got)
	}
	for _, c := range []struct{ key, query, code, field string }{
		{w.adminKey, "?tenant_id=" + x.tenant, "not_found", "tenant_id"},
		{w.memberKey, "?user_id=" + w.other, "not_found", "user_id"},
		{w.adminKey, "?user_id=" + x.member, "not_found", "user_id"},
		{e.admin, "?period=May", "invalid", "period"},
		{e.admin, "?period=2026-13", "invalid", "period"},
		{e.admin, "?limit=0", "invalid", "limit"},
		{e.admin, "?scope=key/x", "invalid", "scope"},
	} {
		if r := e.do(c.key, "GET", "/api/v1/admin/usage/keys"+c.query, nil); r.errCode() != c.code || r.errField() != c.field {
			t.Errorf("GET %s: got %d %s, want %s field %s", c.query, r.status, r.raw, c.code, c.field)
		}
	}
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestGlobalUsageIsTheOperators: the platform-wide pool's use is read by
// platform admins only; a tenant admin or a member is told it does not
// exist, as for another tenant's scopes.
func TestGlobalUsageIsTheOperators(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	if r := e.do(e.admin, "GET", "/api/v1/usage?scope=global", nil); r.status != 200 {
		t.Errorf("platform admin: %d %s, want 200", r.status, r.raw)
	}
	for name, key := range map[string]string{"tenant admin": w.adminKey, "member": w.memberKey} {
		if r := e.do(key, "GET", "/api/v1/usage?scope=global", nil); r.status != 404 {
			t.Errorf("%s reading the global pool: %d %s, want 404", name, r.status, r.raw)
		}
	}
}
