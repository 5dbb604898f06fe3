package httpapi_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/policy"
)

// withCreditDraws is withCredits with the meter drawing credit, as
// cmd/sluice wires it.
func withCreditDraws(e *env) *policy.Credits {
	e.t.Helper()
	cr := policy.NewCredits(e.store, e.policy)
	cr.SetClock(e.clock.Now)
	e.meter.Credit = cr
	srv := &httpapi.Server{Tenancy: e.svc, Policy: e.policy, Meter: e.meter, Credits: cr, Log: slog.New(slog.NewJSONHandler(e.logs, nil)),
		MaxBodyBytes: 1 << 20}
	ts := httptest.NewServer(srv.Handler())
	e.t.Cleanup(ts.Close)
	e.url = ts.URL
	return cr
}

// TestCreditDrawnAfterTheBudget: a member past her daily token budget is
// admitted on her prepaid credit, which is drawn down only then and by
// the shortfall; when the day is over, what the draw did not use beyond
// the budget goes back to the balance (once, however often settling
// runs). A member without credit is refused as before.
func TestCreditDrawnAfterTheBudget(t *testing.T) {
	e := newEnv(t)
	cr := withCreditDraws(e)
	w := e.makeWorld("acme")
	user := "user/" + w.member
	for _, u := range []string{w.member, w.other} {
		e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+u, map[string]any{"limits": map[string]any{"tokens": "1000/day"}})
	}
	e.must(200, w.adminKey, "POST", "/api/v1/admin/credits/"+user+"/topup", map[string]any{"tokens": 5000})
	balance := func() (int64, []map[string]any) {
		r := e.must(200, w.memberKey, "GET", "/api/v1/credits?scope="+user, nil)
		var entries []map[string]any
		for _, x := range r.body["entries"].([]any) {
			entries = append(entries, x.(map[string]any))
		}
		return int64(num(r.body, "tokens")), entries
	}
	spend := func(key string, reserve, used int) resp {
		a := e.do(key, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": reserve})
		if a.status == 200 {
			e.must(200, key, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "input_tokens": used})
		}
		return a
	}

	// Within the budget: no draw.
	if a := spend(w.memberKey, 800, 800); a.status != 200 {
		t.Fatalf("800 of 1000: %d %s", a.status, a.raw)
	}
	if b, _ := balance(); b != 5000 {
		t.Fatalf("balance after use within the budget: %d, want 5000", b)
	}
	// Past it: 600 drawn (800 asked, 200 left), admitted; 300 used.
	if a := spend(w.memberKey, 800, 300); a.status != 200 {
		t.Fatalf("800 more with 5000 of credit: %d %s", a.status, a.raw)
	}
	b, entries := balance()
	last := entries[len(entries)-1]
	if b != 4400 || last["kind"] != "draw" || num(last, "tokens") != -600 {
		t.Fatalf("after the draw: balance %d, last entry %v; want 4400 and a draw of -600", b, last)
	}
	// The draw's grant is policy: the member's limit shows it, and the
	// balance left is beside it.
	u := e.must(200, w.memberKey, "GET", "/api/v1/usage", nil)
	if !strings.Contains(u.raw, `"limit":1600`) {
		t.Errorf("the member's usage does not show her budget raised to 1600 by the draw: %s", u.raw)
	}
	if cr, _ := u.body["credits"].([]any); len(cr) != 1 || cr[0].(map[string]any)["scope"] != user || num(cr[0].(map[string]any), "tokens") != 4400 {
		t.Errorf("the member's usage shows credits %v, want her 4400 tokens", u.body["credits"])
	}

	// Without credit the refusal stands.
	k := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other}).str("secret")
	spend(k, 800, 800)
	if a := spend(k, 800, 800); a.status != 429 || a.errCode() != "quota_exceeded" {
		t.Fatalf("past the budget without credit: %d %s, want 429 quota_exceeded", a.status, a.raw)
	}

	// The day ends: 1100 used, 100 beyond the budget, so 500 of the 600
	// drawn come back.
	ctx := context.Background()
	e.clock.Advance(48 * time.Hour)
	if n, err := cr.SettleDraws(ctx, e.clock.Now(), e.store.WindowUse); err != nil || n != 1 {
		t.Fatalf("SettleDraws: %d windows, %v; want 1", n, err)
	}
	b, entries = balance()
	last = entries[len(entries)-1]
	if b != 4900 || last["kind"] != "refund" || num(last, "tokens") != 500 {
		t.Fatalf("after settling: balance %d, last entry %v; want 4900 after a refund of 500", b, last)
	}
	if n, err := cr.SettleDraws(ctx, e.clock.Now(), e.store.WindowUse); err != nil || n != 0 {
		t.Fatalf("SettleDraws again: %d windows, %v; want 0", n, err)
	}
	if b, _ := balance(); b != 4900 {
		t.Fatalf("a second settling changed the balance to %d", b)
	}
	audit := e.must(200, e.admin, "GET", "/api/v1/admin/audit?limit=1000", nil).raw
	for _, action := range []string{"credit.draw", "credit.refund"} {
		if !strings.Contains(audit, `"`+action+`"`) {
			t.Errorf("the audit log has no %s", action)
		}
	}
}

// TestCreditOfOneKindOnly: a scope holding cost credit and no token
// credit is refused on tokens, and that refusal does not hide its cost
// credit: a refusal of its cost budget just after is lifted by a draw.
func TestCreditOfOneKindOnly(t *testing.T) {
	e := newEnv(t)
	withCreditDraws(e)
	w := e.makeWorld("acme")
	user := "user/" + w.member
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"tokens": "1000/day", "cost": "$1/month"}})
	e.must(200, w.adminKey, "POST", "/api/v1/admin/credits/"+user+"/topup", map[string]any{"cost_usd": 5})
	if a := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 1500}); a.status != 429 || errBody(a)["dimension"] != "tokens" {
		t.Fatalf("1500 tokens with no token credit: %d %s, want 429 on tokens", a.status, a.raw)
	}
	if a := e.do(w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 10, "cost_usd": 2}); a.status != 200 {
		t.Fatalf("$2 on a $1 budget with $5 of cost credit, just after a token refusal: %d %s, want 200", a.status, a.raw)
	}
}
