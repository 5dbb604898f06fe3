package httpapi_test

import (
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// withCredits serves e's API again with prepaid credit wired as
// cmd/sluice wires it, on e's fake clock.
func withCredits(e *env) {
	e.t.Helper()
	cr := policy.NewCredits(e.store, e.policy)
	cr.SetClock(e.clock.Now)
	srv := &httpapi.Server{Tenancy: e.svc, Policy: e.policy, Meter: e.meter, Credits: cr, Log: slog.New(slog.NewJSONHandler(e.logs, nil)),
		MaxBodyBytes: 1 << 20}
	ts := httptest.NewServer(srv.Handler())
	e.t.Cleanup(ts.Close)
	e.url = ts.URL
}

// TestCreditTopUpAndBalance: admins top a scope up, members of the scope
// see its balance and history, nobody else does.
func TestCreditTopUpAndBalance(t *testing.T) {
	e := newEnv(t)
	withCredits(e)
	w := e.makeWorld("acme")
	other := e.makeWorld("globex")
	user, project := "user/"+w.member, "project/"+w.project
	bobKey := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other}).str("secret")

	first := e.must(200, w.adminKey, "POST", "/api/v1/admin/credits/"+user+"/topup", map[string]any{"tokens": 50000, "note": "welcome"})
	if num(first.body, "balance_tokens") != 50000 || first.str("kind") != "topup" || first.str("actor_user_id") != w.admin {
		t.Fatalf("first top-up: %s", first.raw)
	}
	second := e.must(200, e.admin, "POST", "/api/v1/admin/credits/"+user+"/topup", map[string]any{"tokens": 1000, "cost_usd": 2.5})
	if num(second.body, "balance_tokens") != 51000 || num(second.body, "balance_cost_usd") != 2.5 {
		t.Fatalf("second top-up: %s", second.raw)
	}
	e.must(200, w.adminKey, "POST", "/api/v1/admin/credits/"+project+"/topup", map[string]any{"tokens": 7})

	for _, c := range []struct {
		name, key, scope string
		body             any
		status           int
		field            string
	}{
		{"member", w.memberKey, user, map[string]any{"tokens": 1}, 403, ""},
		{"other tenant's admin", other.adminKey, user, map[string]any{"tokens": 1}, 404, "scope"},
		{"tenant admin on the tenant", w.adminKey, "tenant/" + w.tenant, map[string]any{"tokens": 1}, 403, ""},
		{"nothing", w.adminKey, user, map[string]any{"note": "x"}, 400, "tokens"},
		{"negative", w.adminKey, user, map[string]any{"tokens": -5}, 400, "tokens"},
		{"too much money", w.adminKey, user, map[string]any{"cost_usd": 1e9}, 400, "cost_usd"},
		{"bad scope", w.adminKey, "user", map[string]any{"tokens": 1}, 400, "scope"},
	} {
		r := e.do(c.key, "POST", "/api/v1/admin/credits/"+c.scope+"/topup", c.body)
		if r.status != c.status || r.errField() != c.field {
			t.Errorf("top-up by %s: got %d field %q, want %d field %q: %s", c.name, r.status, r.errField(), c.status, c.field, r.raw)
		}
	}
	if r := e.do(w.adminKey, "POST", "/api/v1/admin/credits/"+user, map[string]any{"tokens": 1}); r.status != 404 {
		t.Fatalf("POST without /topup: got %d, want 404", r.status)
	}

	// The member sees their own balance (the default scope) and their
	// project's; not another member's.
	b := e.must(200, w.memberKey, "GET", "/api/v1/credits", nil)
	entries, _ := b.body["entries"].([]any)
	if b.str("scope") != user || num(b.body, "tokens") != 51000 || num(b.body, "cost_usd") != 2.5 || len(entries) != 2 {
		t.Fatalf("member's balance: %s", b.raw)
	}
	if p := e.must(200, w.memberKey, "GET", "/api/v1/credits?scope="+project, nil); num(p.body, "tokens") != 7 {
		t.Fatalf("project balance as a member: %s", p.raw)
	}
	if r := e.do(bobKey, "GET", "/api/v1/credits?scope="+user, nil); r.status != 403 {
		t.Fatalf("another member of the tenant reads the balance: got %d, want 403 (as for the scope's limits)", r.status)
	}
	if r := e.do(other.adminKey, "GET", "/api/v1/credits?scope="+user, nil); r.status != 404 {
		t.Fatalf("another tenant's admin reads the balance: got %d, want 404", r.status)
	}
	page := e.must(200, w.memberKey, "GET", "/api/v1/credits?limit=1", nil)
	if got, _ := page.body["entries"].([]any); len(got) != 1 || page.str("next") == "" {
		t.Fatalf("first page of history: %s", page.raw)
	}
	if got := strings.Join(e.auditOf(first.str("id")), ","); got != "credit.topup" {
		t.Fatalf("audit of the top-up: got %s, want credit.topup", got)
	}
}

// TestCreditRedeemCodes: codes are shown once and stored hashed, redeem
// once, only in their tenant, and not after they expire.
func TestCreditRedeemCodes(t *testing.T) {
	e := newEnv(t)
	withCredits(e)
	w := e.makeWorld("acme")
	other := e.makeWorld("globex")
	if r := e.do(w.memberKey, "POST", "/api/v1/admin/credit-codes", map[string]any{"tokens": 100}); r.status != 403 {
		t.Fatalf("member makes codes: got %d, want 403", r.status)
	}
	if r := e.do(w.adminKey, "POST", "/api/v1/admin/credit-codes", map[string]any{"tokens": 100, "count": 101}); r.status != 400 || r.errField() != "count" {
		t.Fatalf("101 codes: got %d field %q, want 400 count", r.status, r.errField())
	}
	made := e.must(201, w.adminKey, "POST", "/api/v1/admin/credit-codes", map[string]any{"tokens": 2000, "count": 2, "note": "workshop",
		"expires_at": e.clock.Now().Add(48 * time.Hour).Format(time.RFC3339)})
	if made.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("codes answer Cache-Control: got %q, want no-store", made.header.Get("Cache-Control"))
	}
	codes := made.items()
	if len(codes) != 2 || !strings.HasPrefix(codes[0]["code"].(string), "slc_") || codes[0]["code"] == codes[1]["code"] {
		t.Fatalf("made codes: %s", made.raw)
	}
	code, code2 := codes[0]["code"].(string), codes[1]["code"].(string)
	listed := e.must(200, w.adminKey, "GET", "/api/v1/admin/credit-codes", nil)
	if strings.Contains(listed.raw, code) || strings.Contains(e.logs.String(), code) || len(listed.items()) != 2 {
		t.Fatalf("a code's secret is listed or logged: %s", listed.raw)
	}
	if strings.Contains(e.must(200, e.admin, "GET", "/api/v1/admin/audit?limit=1000", nil).raw, code) {
		t.Fatal("a code's secret is in the audit log")
	}
	var stored int
	if err := e.store.ViewCredits(t.Context(), func(tx policy.CreditTx) error {
		cs, err := tx.CreditCodes(w.tenant, tenancy.Page{Limit: 10})
		stored = len(cs)
		for _, c := range cs {
			if c.Secret != "" || c.Hash == "" || strings.Contains(code, c.Hash) {
				t.Errorf("stored code %s: secret %q hash %q, want only a hash", c.ID, c.Secret, c.Hash)
			}
		}
		return err
	}); err != nil || stored != 2 {
		t.Fatalf("stored codes: %d, %v", stored, err)
	}

	if r := e.do(other.memberKey, "POST", "/api/v1/credits/redeem", map[string]any{"code": code}); r.status != 404 || r.errField() != "code" {
		t.Fatalf("another tenant's member redeems: got %d field %q, want 404 code", r.status, r.errField())
	}
	if r := e.do(w.memberKey, "POST", "/api/v1/credits/redeem", map[string]any{"code": "slc_nope"}); r.status != 404 {
		t.Fatalf("unknown code: got %d, want 404", r.status)
	}
	if r := e.do(w.memberKey, "POST", "/api/v1/credits/redeem", map[string]any{"code": "hello"}); r.status != 400 || r.errField() != "code" {
		t.Fatalf("malformed code: got %d field %q, want 400 code", r.status, r.errField())
	}
	red := e.must(200, w.memberKey, "POST", "/api/v1/credits/redeem", map[string]any{"code": code})
	if red.str("scope") != "user/"+w.member || red.str("kind") != "redeem" || num(red.body, "balance_tokens") != 2000 || red.str("code_id") != codes[0]["id"] {
		t.Fatalf("redeemed: %s", red.raw)
	}
	if r := e.do(w.memberKey, "POST", "/api/v1/credits/redeem", map[string]any{"code": code}); r.status != 409 {
		t.Fatalf("redeem twice: got %d, want 409", r.status)
	}
	if got := strings.Join(e.auditOf(red.str("id")), ","); got != "credit.redeem" {
		t.Fatalf("audit of the redemption: got %s, want credit.redeem", got)
	}
	e.clock.Advance(48 * time.Hour)
	if r := e.do(w.memberKey, "POST", "/api/v1/credits/redeem", map[string]any{"code": code2}); r.status != 409 || !strings.Contains(r.raw, "expired") {
		t.Fatalf("expired code: got %d, want 409 expired: %s", r.status, r.raw)
	}
	if b := e.must(200, w.memberKey, "GET", "/api/v1/credits", nil); num(b.body, "tokens") != 2000 {
		t.Fatalf("balance after one redemption: %s", b.raw)
	}

	// A code bound to a scope credits that scope, whoever redeems it.
	bound := e.must(201, w.adminKey, "POST", "/api/v1/admin/credit-codes", map[string]any{"cost_usd": 5, "scope": "project/" + w.project}).items()[0]
	if r := e.must(200, w.memberKey, "POST", "/api/v1/credits/redeem", map[string]any{"code": bound["code"]}); r.str("scope") != "project/"+w.project ||
		num(r.body, "balance_cost_usd") != 5 {
		t.Fatalf("bound code redeemed: %s", r.raw)
	}
	if r := e.do(w.adminKey, "POST", "/api/v1/admin/credit-codes", map[string]any{"tokens": 1, "scope": "project/" + other.project}); r.status != 404 {
		t.Fatalf("code bound to another tenant's scope: got %d, want 404", r.status)
	}
}
