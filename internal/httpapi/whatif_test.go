package httpapi_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// spend has the member of w use 100 tokens (50 in, 50 out) n times
// through the metering API: real usage events in the ledger.
func (e *env) spend(w world, n int) {
	e.t.Helper()
	for range n {
		a := e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 100})
		e.must(200, w.memberKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "input_tokens": 50, "output_tokens": 50})
	}
}

// chatbotDraft limits the chatbot project of tenant name (makeWorld's
// tree) to tokens a day.
func chatbotDraft(name, tokens string) string {
	return fmt.Sprintf(`tenants:
  - name: %s
    departments:
      - name: eng
        departments:
          - name: ml
            projects:
              - name: chatbot
                limits: {tokens: %s}
`, name, tokens)
}

type wallJSON struct {
	Scope, Name, Dimension, Window string
	Limit                          int64
	Denied                         struct{ Asks, Tokens int64 }
	FirstWallAt                    time.Time `json:"first_wall_at"`
}

func walls(t *testing.T, r resp) []wallJSON {
	t.Helper()
	var out []wallJSON
	raw, _ := r.body["walls"].([]any)
	for _, v := range raw {
		m := v.(map[string]any)
		d := m["denied"].(map[string]any)
		w := wallJSON{Scope: m["scope"].(string), Name: m["name"].(string), Dimension: m["dimension"].(string),
			Limit: int64(m["limit"].(float64))}
		w.Window, _ = m["window"].(string)
		w.Denied.Asks, w.Denied.Tokens = int64(d["asks"].(float64)), int64(d["tokens"].(float64))
		w.FirstWallAt, _ = time.Parse(time.RFC3339Nano, m["first_wall_at"].(string))
		out = append(out, w)
	}
	return out
}

func replayed(r resp, key string) int64 {
	m, _ := r.body["replayed"].(map[string]any)
	v, _ := m[key].(float64)
	return int64(v)
}

func TestWhatIfReplaysTheTenantsLedgerAndChangesNothing(t *testing.T) {
	e := newEnv(t)
	// Every call happens at one instant of the day in the tenants' zone
	// (Europe/Berlin), so that a day's budget sees them all.
	berlin, _ := time.LoadLocation("Europe/Berlin")
	now := e.clock.Now().In(berlin)
	noon := time.Date(now.Year(), now.Month(), now.Day(), 12, 0, 0, 0, berlin)
	if noon.After(now) {
		noon = noon.AddDate(0, 0, -1)
	}
	e.clock.Advance(noon.Sub(e.clock.Now()))
	a, b := e.makeWorld("acme"), e.makeWorld("beta")
	e.spend(a, 5)
	e.spend(b, 3)
	e.rec.Flush(context.Background())

	project := "project/" + a.project
	export := e.must(200, e.admin, "GET", "/api/v1/admin/policy", nil).raw
	limits := e.do(e.admin, "GET", "/api/v1/admin/limits/"+project, nil).raw
	audits := e.auditCount()
	use, err := e.meter.Use(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}

	// Acme's admin: 250 tokens a day for the chatbot would have let two
	// of the five calls through.
	r := e.must(200, a.adminKey, "POST", "/api/v1/admin/policy/what-if?window=7d", chatbotDraft("acme", "250/day"))
	got := walls(t, r)
	if len(got) != 1 {
		t.Fatalf("got walls %s, want one", r.raw)
	}
	if w := got[0]; w.Scope != project || w.Name != "project chatbot" || w.Dimension != "tokens" || w.Window != "day" ||
		w.Limit != 250 || w.Denied.Asks != 3 || w.Denied.Tokens != 300 || !w.FirstWallAt.Equal(noon) {
		t.Errorf("got wall %+v, want 3 calls of 100 tokens denied at project chatbot's 250/day from %s", w, noon)
	}
	if n := replayed(r, "events"); n != 5 {
		t.Errorf("replayed %d events, want acme's 5 (beta's are not acme's admin's)", n)
	}
	if r.str("tenant_id") != a.tenant {
		t.Errorf("got tenant_id %q, want %q", r.str("tenant_id"), a.tenant)
	}

	// A looser draft: nothing denied.
	if r := e.must(200, e.admin, "POST", "/api/v1/admin/policy/what-if?window=24h", chatbotDraft("acme", "1000/day")); len(walls(t, r)) != 0 || replayed(r, "events") != 8 {
		t.Errorf("looser draft (platform admin, every tenant): got %s, want no walls over 8 events", r.raw)
	}

	// Nothing changed: the policy, the limits, the audit log, the engine.
	if got := e.must(200, e.admin, "GET", "/api/v1/admin/policy", nil).raw; got != export {
		t.Errorf("the policy changed:\nbefore %s\nafter  %s", export, got)
	}
	if got := e.do(e.admin, "GET", "/api/v1/admin/limits/"+project, nil).raw; got != limits {
		t.Errorf("the project's limits changed:\nbefore %s\nafter  %s", limits, got)
	}
	if got := e.auditCount(); got != audits {
		t.Errorf("got %d audit entries, want %d", got, audits)
	}
	after, err := e.meter.Use(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, use) {
		t.Errorf("the live engine changed: before %+v, after %+v", use, after)
	}
	// The draft is not in force: a sixth call is admitted.
	e.spend(a, 1)
}

func TestWhatIfIsTenantScoped(t *testing.T) {
	e := newEnv(t)
	a, b := e.makeWorld("acme"), e.makeWorld("beta")
	e.spend(a, 2)
	e.spend(b, 1)
	e.rec.Flush(context.Background())

	// Beta's admin cannot replay acme: not with a draft naming it, not by
	// its id, not with platform-wide settings.
	for _, c := range []struct {
		path, body, code, field string
	}{
		{"/api/v1/admin/policy/what-if", chatbotDraft("acme", "1/day"), "forbidden", "tenants[0].name"},
		{"/api/v1/admin/policy/what-if?tenant_id=" + a.tenant, chatbotDraft("beta", "1/day"), "not_found", "tenant_id"},
		{"/api/v1/admin/policy/what-if", "plans: {free: {limits: {tokens: 1/day}}}", "forbidden", "plans"},
		{"/api/v1/admin/policy/what-if", "global: {limits: {requests: 1/min}}", "forbidden", "global"},
	} {
		if r := e.do(b.adminKey, "POST", c.path, c.body); r.errCode() != c.code || r.errField() != c.field {
			t.Errorf("%s: got %d %s, want %s naming %s", c.path, r.status, r.raw, c.code, c.field)
		}
	}
	// Her own draft replays her tenant's ledger only.
	r := e.must(200, b.adminKey, "POST", "/api/v1/admin/policy/what-if", chatbotDraft("beta", "1/day"))
	if n := replayed(r, "events"); n != 1 || r.str("tenant_id") != b.tenant {
		t.Errorf("beta's replay: got %d events of %q, want 1 of beta's", n, r.str("tenant_id"))
	}
	for _, w := range walls(t, r) {
		if w.Scope != "project/"+b.project {
			t.Errorf("beta's replay shows a wall at %s, want only beta's project", w.Scope)
		}
	}
	// Members replay nothing.
	if r := e.do(b.memberKey, "POST", "/api/v1/admin/policy/what-if", chatbotDraft("beta", "1/day")); r.status != 403 {
		t.Errorf("member: got %d %s, want 403", r.status, r.raw)
	}
}

func TestWhatIfBadInputNamesTheField(t *testing.T) {
	e := newEnv(t)
	e.makeWorld("acme")
	for _, c := range []struct{ path, body, field string }{
		{"/api/v1/admin/policy/what-if?window=91d", chatbotDraft("acme", "1/day"), "window"},
		{"/api/v1/admin/policy/what-if?window=soon", chatbotDraft("acme", "1/day"), "window"},
		{"/api/v1/admin/policy/what-if?windw=7d", chatbotDraft("acme", "1/day"), "windw"},
		{"/api/v1/admin/policy/what-if", "tenants: [{name: acme, plan: platinum}]", "tenants[0].plan"},
		{"/api/v1/admin/policy/what-if", "tenants: [{name: acme, limits: {tokns: 1/day}}]", "tenants[0].limits.tokns"},
	} {
		if r := e.do(e.admin, "POST", c.path, c.body); r.status != 400 || r.errField() != c.field {
			t.Errorf("%s %q: got %d %s, want 400 naming %s", c.path, c.body, r.status, r.raw, c.field)
		}
	}
}
