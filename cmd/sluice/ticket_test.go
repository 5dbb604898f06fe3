package main

import (
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// ticketWorld is two instances on one PostgreSQL and one Redis, with
// tenant acme (members alice and bob in project web, tenant admin boss)
// and tenant rival (tenant admin eve).
type ticketWorld struct {
	apps                     []*started
	db                       string
	admin                    string
	alice, bob, boss, eve    string // keys
	aliceID                  string
	aliceScopes, rivalScopes []string
}

const ticketPolicy = `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {max_tokens_per_call: 500}}
      - {name: bob, projects: [web]}
      - {name: boss, role: tenant_admin}
  - name: rival
    projects: [{name: ops}]
    users:
      - {name: eve, role: tenant_admin, projects: [ops]}
`

func startTicketWorld(t *testing.T) *ticketWorld {
	t.Helper()
	w := &ticketWorld{db: freshPostgres(t), admin: "operator-chosen-admin-key-0123456789abcdef"}
	redis := startRedis(t)
	for range 2 {
		cfg := testConfig(t)
		cfg.DatabaseURL, cfg.RedisURL, cfg.Instances = w.db, redis.url(), 2
		cfg.DefaultGlobalRate = "none"
		// Authorisation is about normal mode: a loaded -race run must not
		// time out into degraded mode.
		cfg.RedisTimeout = config.Duration(5 * time.Second)
		cfg.AdminKey = config.Secret(w.admin)
		w.apps = append(w.apps, start(t, cfg))
	}
	a := applyPolicy(t, w.apps[0].url, w.admin, ticketPolicy)
	w.alice, w.aliceID = a.key, a.userID
	ids := map[string]string{}
	_, users := call(t, "GET", w.apps[0].url+"/api/v1/admin/users", w.admin, "")
	for _, u := range users["items"].([]any) {
		m := u.(map[string]any)
		ids[m["name"].(string)] = m["id"].(string)
	}
	_, projects := call(t, "GET", w.apps[0].url+"/api/v1/admin/projects", w.admin, "")
	for _, p := range projects["items"].([]any) {
		m := p.(map[string]any)
		ids[m["name"].(string)] = m["id"].(string)
	}
	key := func(user, project string) string {
		t.Helper()
		body := `{"user_id":"` + ids[user] + `"}`
		if project != "" {
			body = `{"user_id":"` + ids[user] + `","project_id":"` + ids[project] + `"}`
		}
		code, k := call(t, "POST", w.apps[0].url+"/api/v1/admin/keys", w.admin, body)
		if code != 201 {
			t.Fatalf("key for %s: %d %v", user, code, k)
		}
		return k["secret"].(string)
	}
	w.bob, w.boss, w.eve = key("bob", "web"), key("boss", ""), key("eve", "ops")
	for _, app := range w.apps {
		eventually(t, patience, "instance sees the policy", func() bool {
			code, _ := call(t, "GET", app.url+"/api/v1/usage", w.bob, "")
			return code == 200
		})
	}
	w.aliceScopes = w.acquire(t, 0, `{"tokens":1}`).scopes
	_, rival := call(t, "POST", w.apps[0].url+"/api/v1/quota/acquire", w.eve, `{"tokens":1}`)
	for _, s := range rival["scopes"].([]any) {
		w.rivalScopes = append(w.rivalScopes, s.(string))
	}
	return w
}

type acquired struct {
	id     string
	scopes []string
}

// acquire takes a ticket for alice on instance i.
func (w *ticketWorld) acquire(t *testing.T, i int, body string) acquired {
	t.Helper()
	code, m := call(t, "POST", w.apps[i].url+"/api/v1/quota/acquire", w.alice, body)
	if code != 200 {
		t.Fatalf("acquire: got %d %v, want 200", code, m)
	}
	a := acquired{id: m["ticket"].(string)}
	for _, s := range m["scopes"].([]any) {
		a.scopes = append(a.scopes, s.(string))
	}
	return a
}

// events counts the usage events recorded for a ticket.
func (w *ticketWorld) events(t *testing.T, ticket string) int {
	t.Helper()
	db, err := sql.Open("pgx", w.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM usage_events WHERE id = $1`, ticket).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// wantUnknown checks an answer is the one for a ticket that does not
// exist: 404, code not_found, field ticket, and the same message.
func wantUnknown(t *testing.T, what string, code int, m map[string]any, ticket string) {
	t.Helper()
	e, _ := m["error"].(map[string]any)
	want := fmt.Sprintf("ticket %s is unknown or expired", ticket)
	if code != 404 || e["code"] != "not_found" || e["field"] != "ticket" || e["message"] != want || len(e) != 4 {
		t.Errorf("%s: got %d %v, want 404 not_found on field ticket, %q, and nothing more", what, code, m, want)
	}
}

// TestTicketsAnswerOnlyTheirOwners: a ticket may be read, heartbeated and
// settled by its user, an admin of its tenant or a platform admin, on the
// instance that issued it or another; everyone else is told it does not
// exist, in the words used for a ticket that does not.
func TestTicketsAnswerOnlyTheirOwners(t *testing.T) {
	w := startTicketWorld(t)
	for _, inst := range []struct {
		name string
		i    int
	}{{"same instance", 0}, {"other instance", 1}} {
		for _, tt := range []struct {
			name    string
			key     string
			allowed bool
		}{
			{"owner", w.alice, true},
			{"member of the same tenant", w.bob, false},
			{"admin of another tenant", w.eve, false},
			{"admin of the tenant", w.boss, true},
			{"platform admin", w.admin, true},
		} {
			t.Run(inst.name+"/"+tt.name, func(t *testing.T) {
				tk := w.acquire(t, 0, `{"tokens":1000,"concurrency":true}`)
				url := w.apps[inst.i].url
				code, got := call(t, "GET", url+"/api/v1/quota/tickets/"+tk.id, tt.key, "")
				if tt.allowed {
					if code != 200 || got["user_id"] != w.aliceID || got["status"] != "live" || got["reserved_tokens"] != 1000.0 ||
						got["max_tokens_per_call"] != 500.0 {
						t.Errorf("read: got %d %v, want 200, alice's live ticket of 1000 tokens capped at 500 per call", code, got)
					}
				} else {
					wantUnknown(t, "read", code, got, tk.id)
				}
				code, got = call(t, "POST", url+"/api/v1/quota/heartbeat", tt.key, `{"ticket":"`+tk.id+`","ttl_seconds":60}`)
				if tt.allowed && code != 200 {
					t.Errorf("heartbeat: got %d %v, want 200", code, got)
				} else if !tt.allowed {
					wantUnknown(t, "heartbeat", code, got, tk.id)
				}
				settle := `{"ticket":"` + tk.id + `","input_tokens":300,"output_tokens":200}`
				code, got = call(t, "POST", url+"/api/v1/quota/settle", tt.key, settle)
				if tt.allowed {
					if code != 200 || got["input_tokens"] != 300.0 {
						t.Errorf("settle: got %d %v, want 200", code, got)
					}
				} else {
					wantUnknown(t, "settle", code, got, tk.id)
					// Still alice's, live, and hers to settle.
					if code, got := call(t, "POST", url+"/api/v1/quota/settle", w.alice, settle); code != 200 {
						t.Fatalf("owner's settle after refusals: got %d %v, want 200", code, got)
					}
				}
				if n := w.events(t, tk.id); n != 1 {
					t.Errorf("usage events for the ticket: got %d, want 1", n)
				}
				// A settled ticket stays readable by those allowed.
				code, got = call(t, "GET", url+"/api/v1/quota/tickets/"+tk.id, tt.key, "")
				if tt.allowed && (code != 200 || got["status"] != "settled") {
					t.Errorf("read settled: got %d %v, want 200 settled", code, got)
				} else if !tt.allowed {
					wantUnknown(t, "read settled", code, got, tk.id)
				}
			})
		}
	}
	// An id that never existed gets the same answer, from anyone.
	for _, key := range []string{w.alice, w.bob, w.admin} {
		code, got := call(t, "GET", w.apps[1].url+"/api/v1/quota/tickets/tkt_nosuchticket", key, "")
		wantUnknown(t, "read unknown", code, got, "tkt_nosuchticket")
		code, got = call(t, "POST", w.apps[1].url+"/api/v1/quota/settle", key, `{"ticket":"tkt_nosuchticket"}`)
		wantUnknown(t, "settle unknown", code, got, "tkt_nosuchticket")
	}
}

// TestSettleOnAnotherInstanceRecordsOneEvent: a ticket acquired on one
// instance and settled on another charges the shared counters and writes
// exactly one usage event, however often the settle is replayed, and on
// whichever instance.
func TestSettleOnAnotherInstanceRecordsOneEvent(t *testing.T) {
	w := startTicketWorld(t)
	tk := w.acquire(t, 0, `{"tokens":1000,"model":"m1"}`)
	settle := `{"ticket":"` + tk.id + `","input_tokens":120,"output_tokens":80}`
	code, first := call(t, "POST", w.apps[1].url+"/api/v1/quota/settle", w.alice, settle)
	if code != 200 || first["reserved_tokens"] != 1000.0 {
		t.Fatalf("settle elsewhere: got %d %v, want 200 with the reservation of 1000", code, first)
	}
	if n := w.events(t, tk.id); n != 1 {
		t.Fatalf("usage events after the settle: got %d, want 1", n)
	}
	for i := range w.apps {
		code, again := call(t, "POST", w.apps[i].url+"/api/v1/quota/settle", w.alice, `{"ticket":"`+tk.id+`","input_tokens":9}`)
		if code != 200 || again["input_tokens"] != 120.0 || again["settled_at"] != first["settled_at"] {
			t.Errorf("replay on instance %d: got %d %v, want the first settlement %v", i, code, again, first)
		}
	}
	if n := w.events(t, tk.id); n != 1 {
		t.Errorf("usage events after replays: got %d, want 1", n)
	}
	var model, user string
	db, _ := sql.Open("pgx", w.db)
	defer db.Close()
	if err := db.QueryRow(`SELECT model, user_id FROM usage_events WHERE id = $1`, tk.id).Scan(&model, &user); err != nil {
		t.Fatal(err)
	}
	if model != "m1" || user != w.aliceID {
		t.Errorf("event: got model %q user %q, want m1 and alice %s", model, user, w.aliceID)
	}
}

// TestSettleBounds: a member settles at most the reservation plus
// max_tokens_per_call (or the configured overrun); a tenant admin up to the
// sanity bound; and no amount, however large, answers anything but 400.
func TestSettleBounds(t *testing.T) {
	w := startTicketWorld(t)
	url := w.apps[1].url
	tk := w.acquire(t, 0, `{"tokens":1000,"gpu_seconds":2,"cost_usd":0.5}`)
	for _, tt := range []struct {
		name, key, body, field string
	}{
		{"member tokens beyond reservation + max_tokens_per_call", w.alice, `"input_tokens":1000,"output_tokens":501`, "output_tokens"},
		{"member input alone beyond", w.alice, `"input_tokens":1501`, "input_tokens"},
		{"member gpu beyond reservation + 60 s", w.alice, `"gpu_seconds":62.001`, "gpu_seconds"},
		{"member cost beyond reservation + $1", w.alice, `"cost_usd":1.51`, "cost_usd"},
		{"admin beyond the sanity bound", w.boss, `"output_tokens":1000000001`, "output_tokens"},
		{"admin gpu beyond the sanity bound", w.boss, `"gpu_seconds":10000001`, "gpu_seconds"},
		{"cost that overflows micro-USD", w.admin, `"cost_usd":1e13`, "cost_usd"},
		{"gpu that overflows milliseconds", w.admin, `"gpu_seconds":1e16`, "gpu_seconds"},
		{"tokens whose sum is out of range", w.admin, `"input_tokens":4503599627370496,"output_tokens":4503599627370496`, "output_tokens"},
		{"negative tokens", w.alice, `"input_tokens":-1`, "input_tokens"},
		{"model with a NUL", w.alice, `"model":"m\u0000"`, "model"},
	} {
		code, got := call(t, "POST", url+"/api/v1/quota/settle", tt.key, `{"ticket":"`+tk.id+`",`+tt.body+`}`)
		e, _ := got["error"].(map[string]any)
		if code != 400 || e["field"] != tt.field {
			t.Errorf("%s: got %d %v, want 400 naming %s", tt.name, code, got, tt.field)
		}
	}
	// Within the bounds: the member at the edge.
	if code, got := call(t, "POST", url+"/api/v1/quota/settle", w.alice,
		`{"ticket":"`+tk.id+`","input_tokens":1000,"output_tokens":500,"gpu_seconds":62,"cost_usd":1.5}`); code != 200 || got["overrun"] != true {
		t.Fatalf("settle at the member's bound: got %d %v, want 200 with overrun", code, got)
	}
	// A tenant admin reports a large overrun on a member's ticket.
	tk = w.acquire(t, 0, `{"tokens":10}`)
	if code, got := call(t, "POST", url+"/api/v1/quota/settle", w.boss, `{"ticket":"`+tk.id+`","output_tokens":1000000}`); code != 200 {
		t.Fatalf("tenant admin's overrun within the sanity bound: got %d %v, want 200", code, got)
	}

	// Acquire refuses out-of-range amounts likewise.
	for _, tt := range []struct{ body, field string }{
		{`{"cost_usd":1e13}`, "cost_usd"},
		{`{"gpu_seconds":1e16}`, "gpu_seconds"},
		{`{"tokens":4503599627370497}`, "tokens"},
		{`{"ttl_seconds":1e300}`, "ttl_seconds"},
		{`{"model":"` + strings.Repeat("m", 300) + `"}`, "model"},
	} {
		code, got := call(t, "POST", url+"/api/v1/quota/acquire", w.alice, tt.body)
		e, _ := got["error"].(map[string]any)
		if code != 400 || e["field"] != tt.field {
			t.Errorf("acquire %s: got %d %v, want 400 naming %s", tt.body, code, got, tt.field)
		}
	}
	code, got := call(t, "POST", url+"/api/v1/quota/heartbeat", w.alice, `{"ticket":"`+tk.id+`","ttl_seconds":1e300}`)
	if e, _ := got["error"].(map[string]any); code != 400 || e["field"] != "ttl_seconds" {
		t.Errorf("heartbeat ttl 1e300: got %d %v, want 400 naming ttl_seconds", code, got)
	}
}

// TestUsageScopesOfMembers: a member reads only the scopes of their own
// chain; any other, global included, answers as a scope that does not
// exist.
func TestUsageScopesOfMembers(t *testing.T) {
	w := startTicketWorld(t)
	url := w.apps[1].url
	var aliceUser, tenant string
	for _, s := range w.aliceScopes {
		switch {
		case strings.HasPrefix(s, "user/"):
			aliceUser = s
		case strings.HasPrefix(s, "tenant/"):
			tenant = s
		}
	}
	for _, tt := range []struct {
		key, scope string
		want       int
	}{
		{w.bob, tenant, 200},
		{w.alice, aliceUser, 200},
		{w.bob, aliceUser, 404},
		{w.bob, "global", 404},
		{w.bob, w.rivalScopes[1], 404},
		{w.bob, "user/usr_nosuchuser", 404},
		{w.boss, aliceUser, 200},
		{w.eve, aliceUser, 404},
		{w.admin, "global", 200},
	} {
		code, got := call(t, "GET", url+"/api/v1/usage?scope="+tt.scope, tt.key, "")
		if code != tt.want {
			t.Errorf("usage of %s: got %d %v, want %d", tt.scope, code, got, tt.want)
			continue
		}
		if code == 404 && tt.key == w.bob {
			e, _ := got["error"].(map[string]any)
			if want := "scope " + tt.scope + " not found"; e["message"] != want || e["field"] != "scope" {
				t.Errorf("usage of %s: got %v, want the answer for a scope that does not exist (%q)", tt.scope, got, want)
			}
		}
	}
}
