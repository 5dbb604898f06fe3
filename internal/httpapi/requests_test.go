package httpapi_test

import (
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/policy"
)

// withRequests serves e's API again with the quota request workflow
// wired as cmd/sluice wires it, on e's fake clock.
func withRequests(e *env) {
	e.t.Helper()
	rq := policy.NewRequests(e.store, e.policy)
	rq.SetClock(e.clock.Now)
	srv := &httpapi.Server{Tenancy: e.svc, Policy: e.policy, Meter: e.meter, Requests: rq, Log: slog.New(slog.NewJSONHandler(e.logs, nil)), MaxBodyBytes: 1 << 20}
	ts := httptest.NewServer(srv.Handler())
	e.t.Cleanup(ts.Close)
	e.url = ts.URL
}

// auditOf returns the actions of the audit entries on object, oldest first.
func (e *env) auditOf(object string) []string {
	e.t.Helper()
	var out []string
	items := e.must(200, e.admin, "GET", "/api/v1/admin/audit?limit=1000", nil).items()
	for i := len(items) - 1; i >= 0; i-- {
		if items[i]["object_id"] == object {
			out = append(out, items[i]["action"].(string))
		}
	}
	return out
}

// TestQuotaRequestApprovedRaisesAtOnceAndExpires: a member out of tokens
// asks for more; a member cannot approve, another tenant's admin cannot
// even see the request; the tenant's admin approves a different amount,
// and the acquire that was refused passes at once; the grant lapses by
// itself on the clock; a request is decided once; every step is audited.
func TestQuotaRequestApprovedRaisesAtOnceAndExpires(t *testing.T) {
	e := newEnv(t)
	withRequests(e)
	w := e.makeWorld("acme")
	other := e.makeWorld("globex")
	user := "user/" + w.member
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/"+user, map[string]any{"limits": map[string]any{"tokens": "1000/day"}})
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 800})
	if r := e.must(429, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 500}); errBody(r)["scope"] != user {
		t.Fatalf("denial before the request: got scope %v, want %s: %s", errBody(r)["scope"], user, r.raw)
	}

	// No scope: the innermost scope of the member's chain that limits
	// tokens per day, their user's (membership and key limit nothing).
	q := e.must(201, w.memberKey, "POST", "/api/v1/quota-requests", map[string]any{
		"dimension": "tokens_day", "amount": 2000, "duration": "72h", "reason": "exam week"})
	qid := q.str("id")
	if q.str("scope") != user || q.str("status") != "pending" || num(q.body, "amount") != 2000 || q.str("unit") != "tokens/day" ||
		q.str("requested_by") != w.member || q.str("tenant_id") != w.tenant {
		t.Fatalf("created request: %s", q.raw)
	}
	if lim, _ := q.body["limits"].(map[string]any); lim["tokens"] != "2000/day" {
		t.Fatalf("request limits: got %v, want tokens 2000/day", q.body["limits"])
	}
	if got := e.must(200, w.memberKey, "GET", "/api/v1/quota-requests/"+qid, nil); got.str("status") != "pending" {
		t.Fatalf("requester's view: %s", got.raw)
	}

	// Who may see and decide.
	if r := e.do(w.memberKey, "POST", "/api/v1/quota-requests/"+qid+"/approve", map[string]any{}); r.status != 403 {
		t.Fatalf("member approves own request: got %d, want 403: %s", r.status, r.raw)
	}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/api/v1/quota-requests/" + qid, nil},
		{"POST", "/api/v1/quota-requests/" + qid + "/approve", map[string]any{"note": "yes"}},
		{"POST", "/api/v1/quota-requests/" + qid + "/deny", map[string]any{"reason": "no"}},
		{"POST", "/api/v1/quota-requests/" + qid + "/cancel", nil},
	} {
		if r := e.do(other.adminKey, c.method, c.path, c.body); r.status != 404 || r.errCode() != "not_found" {
			t.Fatalf("other tenant's admin %s %s: got %d, want 404: %s", c.method, c.path, r.status, r.raw)
		}
	}
	if items := e.must(200, other.adminKey, "GET", "/api/v1/quota-requests", nil).items(); len(items) != 0 {
		t.Fatalf("other tenant's admin lists %d requests, want 0", len(items))
	}
	pending := e.must(200, w.adminKey, "GET", "/api/v1/quota-requests?status=pending", nil).items()
	if len(pending) != 1 || pending[0]["id"] != qid {
		t.Fatalf("tenant admin's pending list: got %v, want the request", pending)
	}
	if e.auditOf(qid)[0] != "quota_request.create" {
		t.Fatalf("audit of the request: got %v, want quota_request.create first", e.auditOf(qid))
	}

	// Approved for less than asked: in force at the next decision.
	decidedAt := e.clock.Now().Truncate(time.Microsecond)
	a := e.must(200, w.adminKey, "POST", "/api/v1/quota-requests/"+qid+"/approve", map[string]any{"amount": 1500, "note": "1500 is enough"})
	if a.str("status") != "approved" || num(a.body, "granted_amount") != 1500 || a.str("grant_id") == "" ||
		a.str("decided_by") != w.admin || a.str("note") != "1500 is enough" {
		t.Fatalf("approved request: %s", a.raw)
	}
	exp, err := time.Parse(time.RFC3339Nano, a.str("expires_at"))
	if err != nil || exp.Sub(decidedAt) != 72*time.Hour {
		t.Fatalf("expires_at: got %s (%v), want 72h after the decision at %v", a.str("expires_at"), err, decidedAt)
	}
	if u := e.usageOf(w.memberKey, "", user, "tokens", "day"); num(u, "limit") != 2500 {
		t.Fatalf("user limit after approval: got %v, want 2500", u)
	}
	e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 500})
	grants := e.must(200, w.adminKey, "GET", "/api/v1/admin/grants?active=true", nil).items()
	if len(grants) != 1 || grants[0]["id"] != a.str("grant_id") || !strings.Contains(grants[0]["reason"].(string), qid) {
		t.Fatalf("active grants: got %v, want the request's grant", grants)
	}

	// Decided once.
	if r := e.do(w.adminKey, "POST", "/api/v1/quota-requests/"+qid+"/approve", nil); r.status != 409 {
		t.Fatalf("second approval: got %d, want 409: %s", r.status, r.raw)
	}
	if r := e.do(e.admin, "POST", "/api/v1/quota-requests/"+qid+"/deny", map[string]any{"reason": "changed my mind"}); r.status != 409 {
		t.Fatalf("deny after approval: got %d, want 409: %s", r.status, r.raw)
	}
	if got, want := strings.Join(e.auditOf(qid), ","), "quota_request.create,quota_request.approve"; got != want {
		t.Fatalf("audit of the request: got %s, want %s", got, want)
	}
	if got := strings.Join(e.auditOf(a.str("grant_id")), ","); got != "grant.create" {
		t.Fatalf("audit of the grant: got %s, want grant.create", got)
	}
	if got := e.must(200, w.memberKey, "GET", "/api/v1/quota-requests/"+qid, nil); got.str("status") != "approved" || got.body["grant_active"] != true {
		t.Fatalf("requester sees: %s, want approved with its grant active", got.raw)
	}

	// The grant lapses by itself: the next day's budget is the plain one.
	e.clock.Advance(72*time.Hour + time.Second)
	if u := e.usageOf(w.memberKey, "", user, "tokens", "day"); num(u, "limit") != 1000 {
		t.Fatalf("user limit after the grant expired: got %v, want 1000", u)
	}
	if r := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 1500}); r.status != 429 {
		t.Fatalf("acquire of 1500 after expiry: got %d, want 429: %s", r.status, r.raw)
	}
	// The request says so: approved, its grant no longer active.
	if got := e.must(200, w.memberKey, "GET", "/api/v1/quota-requests?status=approved", nil).items(); len(got) != 1 || got[0]["grant_active"] != false {
		t.Fatalf("requester's list after the grant expired: %v, want its grant_active false", got)
	}
}

// TestQuotaRequestDenyCancelAndValidation: denial needs and shows a
// reason; only the requester cancels; bad input names the field; a
// member's scopes are their own; pending requests are bounded; a tenant's
// own scope is a platform admin's to raise.
func TestQuotaRequestDenyCancelAndValidation(t *testing.T) {
	e := newEnv(t)
	withRequests(e)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/tenant/"+w.tenant, map[string]any{"limits": map[string]any{
		"tokens": "100000/day", "requests": "100/min", "cost": "$50/month", "concurrency": 10}})
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"tokens": "5000/day"}})
	bobKey := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other}).str("secret")
	ask := func(key string, body map[string]any) resp {
		t.Helper()
		full := map[string]any{"dimension": "tokens_day", "amount": 1000, "duration": "24h", "reason": "demo"}
		for k, v := range body {
			if v == nil {
				delete(full, k)
			} else {
				full[k] = v
			}
		}
		return e.do(key, "POST", "/api/v1/quota-requests", full)
	}

	for _, c := range []struct {
		name   string
		body   map[string]any
		status int
		field  string
	}{
		{"no dimension", map[string]any{"dimension": nil}, 400, "dimension"},
		{"unknown dimension", map[string]any{"dimension": "memory_per_run"}, 400, "dimension"},
		{"no amount", map[string]any{"amount": nil}, 400, "amount"},
		{"negative amount", map[string]any{"amount": -5}, 400, "amount"},
		{"fractional tokens", map[string]any{"amount": 1.5}, 400, "amount"},
		{"amount as text", map[string]any{"amount": "1000"}, 400, "amount"},
		{"no duration", map[string]any{"duration": nil}, 400, "duration"},
		{"bad duration", map[string]any{"duration": "forever"}, 400, "duration"},
		{"duration over a year", map[string]any{"duration": "400d"}, 400, "duration"},
		{"no reason", map[string]any{"reason": "  "}, 400, "reason"},
		{"long reason", map[string]any{"reason": strings.Repeat("x", 501)}, 400, "reason"},
		{"global scope", map[string]any{"scope": "global"}, 400, "scope"},
		{"malformed scope", map[string]any{"scope": "user"}, 400, "scope"},
		{"another user's scope", map[string]any{"scope": "user/" + w.other}, 404, "scope"},
		{"a scope that limits nothing", map[string]any{"scope": "project/" + w.project}, 400, "scope"},
		{"unknown field", map[string]any{"scop": "x"}, 400, "scop"},
	} {
		r := ask(w.memberKey, c.body)
		if r.status != c.status || r.errField() != c.field {
			t.Errorf("%s: got %d field %q, want %d field %q: %s", c.name, r.status, r.errField(), c.status, c.field, r.raw)
		}
	}

	// Cost is asked in US dollars.
	cost := ask(w.memberKey, map[string]any{"dimension": "cost", "amount": 12.5})
	if cost.status != 201 || num(cost.body, "amount") != 12.5 || cost.str("scope") != "tenant/"+w.tenant {
		t.Fatalf("cost request: %d %s", cost.status, cost.raw)
	}
	if lim, _ := cost.body["limits"].(map[string]any); lim["cost"] != "$12.5/month" {
		t.Fatalf("cost request limits: got %v, want $12.5/month", cost.body["limits"])
	}
	// A tenant's own limits are a platform admin's to raise.
	if r := e.do(w.adminKey, "POST", "/api/v1/quota-requests/"+cost.str("id")+"/approve", nil); r.status != 403 {
		t.Fatalf("tenant admin approves a raise of the tenant: got %d, want 403: %s", r.status, r.raw)
	}
	if r := e.must(200, e.admin, "POST", "/api/v1/quota-requests/"+cost.str("id")+"/approve", map[string]any{"duration": "1h"}); num(r.body, "granted_amount") != 12.5 {
		t.Fatalf("platform admin approves: %s", r.raw)
	}
	if v := e.must(200, e.admin, "GET", "/api/v1/admin/limits/tenant/"+w.tenant, nil); v.body["effective"].(map[string]any)["cost"] != "$62.5/month" {
		t.Fatalf("tenant's effective cost after approval: %s", v.raw)
	}
	// Rates are raised in the scope's own period.
	rate := ask(w.memberKey, map[string]any{"dimension": "requests", "amount": 30})
	if rate.status != 201 || rate.str("unit") != "requests/min" {
		t.Fatalf("rate request: %d %s", rate.status, rate.raw)
	}

	// Deny: a reason is required, and the requester sees it.
	q := ask(w.memberKey, nil)
	qid := q.str("id")
	if r := e.do(w.adminKey, "POST", "/api/v1/quota-requests/"+qid+"/deny", map[string]any{}); r.status != 400 || r.errField() != "reason" {
		t.Fatalf("deny without a reason: got %d field %q, want 400 field reason: %s", r.status, r.errField(), r.raw)
	}
	e.must(200, w.adminKey, "POST", "/api/v1/quota-requests/"+qid+"/deny", map[string]any{"reason": "the pool is for the exam"})
	if got := e.must(200, w.memberKey, "GET", "/api/v1/quota-requests/"+qid, nil); got.str("status") != "denied" ||
		got.str("note") != "the pool is for the exam" || got.str("decided_by") != w.admin || got.str("grant_id") != "" {
		t.Fatalf("denied request as its requester sees it: %s", got.raw)
	}
	if r := e.do(w.adminKey, "POST", "/api/v1/quota-requests/"+qid+"/approve", nil); r.status != 409 {
		t.Fatalf("approve after denial: got %d, want 409: %s", r.status, r.raw)
	}
	if got, want := strings.Join(e.auditOf(qid), ","), "quota_request.create,quota_request.deny"; got != want {
		t.Fatalf("audit of the denied request: got %s, want %s", got, want)
	}

	// Another member of the tenant sees none of it.
	if r := e.do(bobKey, "GET", "/api/v1/quota-requests/"+qid, nil); r.status != 404 {
		t.Fatalf("another member reads the request: got %d, want 404", r.status)
	}
	if r := e.do(bobKey, "POST", "/api/v1/quota-requests/"+qid+"/cancel", nil); r.status != 404 {
		t.Fatalf("another member cancels the request: got %d, want 404", r.status)
	}
	if items := e.must(200, bobKey, "GET", "/api/v1/quota-requests", nil).items(); len(items) != 0 {
		t.Fatalf("another member lists %d requests, want 0", len(items))
	}
	if r := e.do(bobKey, "GET", "/api/v1/quota-requests?user_id="+w.member, nil); r.status != 403 {
		t.Fatalf("a member lists another's requests: got %d, want 403", r.status)
	}
	if r := e.do(w.memberKey, "GET", "/api/v1/quota-requests?status=maybe", nil); r.status != 400 || r.errField() != "status" {
		t.Fatalf("bad status filter: got %d field %q, want 400 status", r.status, r.errField())
	}

	// Cancel: the requester's, once, while pending.
	c := ask(w.memberKey, nil)
	if r := e.do(w.adminKey, "POST", "/api/v1/quota-requests/"+c.str("id")+"/cancel", nil); r.status != 403 {
		t.Fatalf("admin cancels a member's request: got %d, want 403", r.status)
	}
	if r := e.must(200, w.memberKey, "POST", "/api/v1/quota-requests/"+c.str("id")+"/cancel", nil); r.str("status") != "cancelled" {
		t.Fatalf("cancelled: %s", r.raw)
	}
	if r := e.do(w.memberKey, "POST", "/api/v1/quota-requests/"+c.str("id")+"/cancel", nil); r.status != 409 {
		t.Fatalf("cancel twice: got %d, want 409", r.status)
	}

	// At most MaxPendingRequests wait per user (rate is pending already).
	for i := 1; i < policy.MaxPendingRequests; i++ {
		if r := ask(w.memberKey, nil); r.status != 201 {
			t.Fatalf("pending request %d: got %d: %s", i+1, r.status, r.raw)
		}
	}
	if r := ask(w.memberKey, nil); r.status != 409 || !strings.Contains(r.raw, "pending") {
		t.Fatalf("request over the bound: got %d, want 409: %s", r.status, r.raw)
	}
	mine := e.must(200, w.memberKey, "GET", "/api/v1/quota-requests?status=pending", nil).items()
	if len(mine) != policy.MaxPendingRequests {
		t.Fatalf("member's pending requests: got %d, want %d", len(mine), policy.MaxPendingRequests)
	}
	for _, m := range mine {
		if m["requested_by"] != w.member {
			t.Fatalf("member lists a request of %v", m["requested_by"])
		}
	}
	page := e.must(200, w.adminKey, "GET", "/api/v1/quota-requests?limit=4", nil)
	if len(page.items()) != 4 || page.str("next") == "" {
		t.Fatalf("first page of 4: %s", page.raw)
	}
}
