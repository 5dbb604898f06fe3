package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sealed"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// alertsEnv is env with threshold alerts wired as cmd/sluice wires them.
type alertsEnv struct {
	*env
	alerter *alerts.Alerter
	disp    *alerts.Dispatcher
}

func newAlertsEnv(t *testing.T) *alertsEnv {
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
	tracker := alerts.NewTracker(0, clk.Now)
	meter := metering.New(tracker.Watch(engine), mgr, rec, log)
	box, err := sealed.New([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	// The guard refuses private destinations, but lets the test's
	// receivers on loopback through, as allow_hosts would.
	guard := &run.Guard{AllowHosts: []string{"127.0.0.1:*"}}
	al := &alerts.Alerter{Tracker: tracker, Usage: meter, Policy: mgr.Current, Store: store, Log: log, Now: clk.Now}
	disp := &alerts.Dispatcher{Store: store, Box: box, Client: guard.Client(5 * time.Second), Log: log, Now: clk.Now}
	al.Queued = disp.Wake
	rq := policy.NewRequests(store, pol)
	rq.SetClock(clk.Now)
	srv := &httpapi.Server{Tenancy: svc, Policy: pol, Meter: meter, Log: log, MaxBodyBytes: 1 << 20, Quarantine: store, Requests: rq,
		Alerts: &alerts.Service{Store: store, Box: box, Now: clk.Now, CheckURL: func(raw string) error {
			_, err := guard.CheckURL(raw)
			return err
		}}}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &alertsEnv{env: &env{t: t, url: ts.URL, admin: res.Secret, svc: svc, policy: pol, meter: meter, rec: rec, store: store, logs: logs, clock: clk},
		alerter: al, disp: disp}
}

// hook is a tenant's endpoint: it records what it is sent.
type hook struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []hookReq
}

type hookReq struct {
	sig  string
	body []byte
}

func newHook(t *testing.T) *hook {
	h := &hook{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.reqs = append(h.reqs, hookReq{sig: r.Header.Get(alerts.SignatureHeader), body: b})
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func TestAlertWebhookAndDeliveries(t *testing.T) {
	e := newAlertsEnv(t)
	w := e.makeWorld("acme")
	o := e.makeWorld("other")
	h := newHook(t)
	path := "/api/v1/admin/alerts/webhook"

	// Who may set it: the tenant's admins; a member is forbidden, another
	// tenant's admin finds no such tenant.
	if r := e.do(w.memberKey, "PUT", path, map[string]any{"url": h.srv.URL}); r.status != 403 {
		t.Fatalf("member sets the webhook: %d %s, want 403", r.status, r.raw)
	}
	if r := e.do(o.adminKey, "PUT", path, map[string]any{"url": h.srv.URL, "tenant_id": w.tenant}); r.status != 404 {
		t.Fatalf("another tenant's admin: %d %s, want 404", r.status, r.raw)
	}
	if r := e.do(e.admin, "PUT", path, map[string]any{"url": h.srv.URL, "tenant_id": "ten_nope"}); r.status != 404 || errBody(r)["field"] != "tenant_id" {
		t.Fatalf("unknown tenant: %d %s, want 404 naming tenant_id", r.status, r.raw)
	}
	// Bad URLs name the field; the SSRF guard refuses private addresses.
	for _, u := range []string{"ftp://x.example/", "http://user:pw@x.example/", "http://10.1.2.3/hook", "http://localhost:9/"} {
		if r := e.do(w.adminKey, "PUT", path, map[string]any{"url": u}); r.status != 400 || errBody(r)["field"] != "url" {
			t.Fatalf("url %s: %d %s, want 400 naming url", u, r.status, r.raw)
		}
	}
	if r := e.do(w.adminKey, "PUT", path, map[string]any{"url": h.srv.URL, "secret": "short"}); r.status != 400 || errBody(r)["field"] != "secret" {
		t.Fatalf("short secret: %d %s, want 400 naming secret", r.status, r.raw)
	}
	// A given secret is never echoed.
	r := e.must(200, w.adminKey, "PUT", path, map[string]any{"url": h.srv.URL, "secret": "my-own-secret-of-some-length"})
	if strings.Contains(r.raw, "my-own-secret") || r.str("secret") != "" {
		t.Fatalf("a given secret came back: %s", r.raw)
	}
	// Without one, Sluice generates it and shows it this once.
	r = e.must(200, w.adminKey, "PUT", path, map[string]any{"url": h.srv.URL})
	secret := r.str("secret")
	if !strings.HasPrefix(secret, "whsec_") || r.header.Get("Cache-Control") != "no-store" || r.str("url") != h.srv.URL {
		t.Fatalf("generated secret: %s (Cache-Control %q)", r.raw, r.header.Get("Cache-Control"))
	}
	if g := e.must(200, w.adminKey, "GET", path, nil); strings.Contains(g.raw, secret) || g.str("url") != h.srv.URL {
		t.Fatalf("GET webhook: %s", g.raw)
	}
	if a := e.must(200, e.admin, "GET", "/api/v1/admin/audit?limit=1000", nil); !strings.Contains(a.raw, "alert_webhook.set") ||
		strings.Contains(a.raw, secret) || strings.Contains(a.raw, "my-own-secret") {
		t.Fatalf("audit: want alert_webhook.set and no secret: %s", a.raw)
	}

	// 95% of the tenant's day budget: 80 and 90 are crossed.
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/tenant/"+w.tenant, map[string]any{"limits": map[string]any{"tokens": []string{"1000/day", "3000/month"}}})
	a := e.must(200, w.memberKey, "POST", "/api/v1/quota/acquire", map[string]any{"tokens": 950})
	e.must(200, w.memberKey, "POST", "/api/v1/quota/settle", map[string]any{"ticket": a.str("ticket"), "input_tokens": 950})
	if u := e.usageOf(w.memberKey, "", "tenant/"+w.tenant, "tokens", "day"); num(u, "percent") != 95 {
		t.Fatalf("percent of the day: %v, want 95", u)
	}
	if u := e.usageOf(w.memberKey, "", "tenant/"+w.tenant, "tokens", "month"); num(u, "percent") != 31.7 {
		t.Fatalf("percent of the month: %v, want 31.7 (one decimal)", u)
	}
	n, err := e.alerter.Sweep(context.Background())
	if err != nil || n != 2 {
		t.Fatalf("sweep: %d events (%v), want 2", n, err)
	}
	if n, err := e.disp.DeliverDue(context.Background()); err != nil || n != 2 {
		t.Fatalf("deliver: %d (%v), want 2", n, err)
	}
	h.mu.Lock()
	reqs := append([]hookReq(nil), h.reqs...)
	h.mu.Unlock()
	if len(reqs) != 2 {
		t.Fatalf("webhooks received: %d, want 2", len(reqs))
	}
	for _, q := range reqs {
		if err := alerts.Verify(secret, q.sig, q.body, e.clock.Now(), time.Minute); err != nil {
			t.Errorf("signature with the generated secret: %v", err)
		}
		if err := alerts.Verify("my-own-secret-of-some-length", q.sig, q.body, e.clock.Now(), time.Minute); err == nil {
			t.Errorf("the replaced secret verifies")
		}
		if !strings.Contains(string(q.body), `"name":"acme"`) || !strings.Contains(string(q.body), `"type":"quota.threshold"`) {
			t.Errorf("body: %s", q.body)
		}
	}

	// The log: the tenant's admins see their tenant's deliveries, others not.
	dl := "/api/v1/admin/alerts/deliveries"
	items := e.must(200, w.adminKey, "GET", dl, nil).items()
	if len(items) != 2 {
		t.Fatalf("tenant admin's log: %d items, want 2", len(items))
	}
	first := items[0]
	if first["status"] != "delivered" || first["target"] != "tenant" || num(first, "attempts") != 1 || num(first, "last_status_code") != 200 ||
		first["scope"] != "tenant/"+w.tenant || first["dimension"] != "tokens" || first["window"] != "day" {
		t.Fatalf("delivery: %v", first)
	}
	if got := e.must(200, o.adminKey, "GET", dl, nil).items(); len(got) != 0 {
		t.Fatalf("another tenant's admin sees %d deliveries, want 0", len(got))
	}
	if r := e.do(o.adminKey, "GET", dl+"?tenant_id="+w.tenant, nil); r.status != 404 {
		t.Fatalf("another tenant's log by id: %d, want 404", r.status)
	}
	if r := e.do(w.memberKey, "GET", dl, nil); r.status != 403 {
		t.Fatalf("member reads the log: %d, want 403", r.status)
	}
	if got := e.must(200, e.admin, "GET", dl+"?tenant_id="+w.tenant+"&status=delivered", nil).items(); len(got) != 2 {
		t.Fatalf("platform admin's log of the tenant: %d, want 2", len(got))
	}
	if r := e.do(e.admin, "GET", dl+"?status=lost", nil); r.status != 400 || errBody(r)["field"] != "status" {
		t.Fatalf("bad status: %d %s", r.status, r.raw)
	}

	// Removing the webhook: 204, then 404.
	e.must(204, w.adminKey, "DELETE", path, nil)
	if r := e.do(w.adminKey, "GET", path, nil); r.status != 404 {
		t.Fatalf("GET after delete: %d, want 404", r.status)
	}
}

// TestQuotaRequestsAnnouncedToTheWebhook: each step of a quota request
// (asked, approved) is a signed delivery to the tenant's alert webhook,
// queued with the step itself; a tenant without a webhook queues nothing.
func TestQuotaRequestsAnnouncedToTheWebhook(t *testing.T) {
	e := newAlertsEnv(t)
	w := e.makeWorld("acme")
	o := e.makeWorld("other")
	h := newHook(t)
	secret := e.must(200, w.adminKey, "PUT", "/api/v1/admin/alerts/webhook", map[string]any{"url": h.srv.URL}).str("secret")
	for _, x := range []world{w, o} {
		e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+x.member, map[string]any{"limits": map[string]any{"tokens": "1000/day"}})
	}
	ask := map[string]any{"dimension": "tokens_day", "amount": 500, "duration": "24h", "reason": "exam week"}
	qid := e.must(201, w.memberKey, "POST", "/api/v1/quota-requests", ask).str("id")
	e.must(200, w.adminKey, "POST", "/api/v1/quota-requests/"+qid+"/approve", map[string]any{})
	e.must(201, o.memberKey, "POST", "/api/v1/quota-requests", ask)
	if n, err := e.disp.DeliverDue(context.Background()); err != nil || n != 2 {
		t.Fatalf("deliver: %d (%v), want 2 (acme's two steps; other has no webhook)", n, err)
	}
	h.mu.Lock()
	reqs := append([]hookReq(nil), h.reqs...)
	h.mu.Unlock()
	var types []string
	for _, q := range reqs {
		if err := alerts.Verify(secret, q.sig, q.body, e.clock.Now(), time.Minute); err != nil {
			t.Errorf("signature: %v", err)
		}
		var ev struct {
			Type     string `json:"type"`
			TenantID string `json:"tenant_id"`
			Request  struct {
				ID, Status string
			} `json:"request"`
		}
		if err := json.Unmarshal(q.body, &ev); err != nil || ev.TenantID != w.tenant || ev.Request.ID != qid {
			t.Errorf("body %s: want acme's request %s", q.body, qid)
		}
		types = append(types, ev.Type+"/"+ev.Request.Status)
	}
	slices.Sort(types)
	if got := strings.Join(types, ","); got != "quota_request.approve/approved,quota_request.create/pending" {
		t.Errorf("announced: %s, want the request created (pending) and approved", got)
	}
}
