package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/metering"
)

// alertHook is an alert endpoint: it keeps what it is sent.
type alertHook struct {
	srv  *httptest.Server
	mu   sync.Mutex
	got  []alertHookReq
	name string
}

type alertHookReq struct {
	sig  string
	body []byte
	ev   alerts.Event
}

func newAlertHook(t *testing.T, name string) *alertHook {
	h := &alertHook{name: name}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var ev alerts.Event
		_ = json.Unmarshal(b, &ev)
		h.mu.Lock()
		h.got = append(h.got, alertHookReq{sig: r.Header.Get(alerts.SignatureHeader), body: b, ev: ev})
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// wait returns the requests once n have come, failing after 15 s.
func (h *alertHook) wait(t *testing.T, n int) []alertHookReq {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		h.mu.Lock()
		got := append([]alertHookReq(nil), h.got...)
		h.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s webhook: %d requests after 15s, want %d", h.name, len(got), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAlertsEndToEnd: the app sends a crossing of alice's daily budget to
// her tenant's webhook (through the SSRF guard, allowed to loopback here)
// and to the platform's, each signed with its own secret, logs and counts
// it, shows it in the delivery log, and tells callers their percentage
// in a header on governed responses.
func TestAlertsEndToEnd(t *testing.T) {
	tenantHook, platformHook := newAlertHook(t, "tenant"), newAlertHook(t, "platform")
	t.Setenv("SLUICE_SECRET_KEY", "a-server-secret-of-at-least-32-bytes!!")
	t.Setenv("TEST_ALERT_SECRET", "platform-alert-secret-0123456789")
	cfg := testConfig(t)
	cfg.AdminKey = gwAdmin
	cfg.AllowHosts = []string{"127.0.0.1:*"}
	cfg.Alerts.Interval = config.Duration(100 * time.Millisecond)
	cfg.Alerts.Webhook = config.AlertWebhook{URL: platformHook.srv.URL + "/sluice", SecretEnv: "TEST_ALERT_SECRET"}
	s := start(t, cfg)
	a := applyPolicy(t, s.url, gwAdmin, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 10000/day}}
`)
	code, hook := call(t, "PUT", s.url+"/api/v1/admin/alerts/webhook", gwAdmin, `{"tenant_id":"`+a.tenantID+`","url":"`+tenantHook.srv.URL+`"}`)
	tenantSecret, _ := hook["secret"].(string)
	if code != 200 || tenantSecret == "" {
		t.Fatalf("set the tenant's webhook: %d %v", code, hook)
	}

	code, adm := call(t, "POST", s.url+"/api/v1/quota/acquire", a.key, `{"tokens":9500}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, adm)
	}
	if code, body := call(t, "POST", s.url+"/api/v1/quota/settle", a.key, `{"ticket":"`+adm["ticket"].(string)+`","input_tokens":9500}`); code != 200 {
		t.Fatalf("settle: %d %v", code, body)
	}

	for _, c := range []struct {
		h      *alertHook
		secret string
	}{{tenantHook, tenantSecret}, {platformHook, "platform-alert-secret-0123456789"}} {
		got := c.h.wait(t, 2)
		var ths []int
		for _, r := range got {
			if err := alerts.Verify(c.secret, r.sig, r.body, time.Now(), time.Minute); err != nil {
				t.Errorf("%s webhook signature: %v", c.h.name, err)
			}
			if r.ev.Scope.Key != "user/"+a.userID || r.ev.Scope.Name != "alice" || r.ev.Tenant == nil || r.ev.Tenant.Name != "acme" ||
				r.ev.Dimension != "tokens" || r.ev.Window != "day" || r.ev.Used != 9500 || r.ev.Limit != 10000 {
				t.Errorf("%s webhook event: %s", c.h.name, r.body)
			}
			ths = append(ths, r.ev.Threshold)
		}
		if len(got) != 2 || !(ths[0] == 80 && ths[1] == 90 || ths[0] == 90 && ths[1] == 80) {
			t.Errorf("%s webhook thresholds: %v, want 80 and 90", c.h.name, ths)
		}
	}

	// A governed response tells alice how much of her tightest budget is
	// used, her coming reservation included.
	req, _ := http.NewRequest("POST", s.url+"/v1/chat/completions",
		bytes.NewReader([]byte(`{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`)))
	req.Header.Set("Authorization", "Bearer "+a.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	v := resp.Header.Get(metering.QuotaUsedHeader)
	pct, perr := strconv.ParseFloat(strings.TrimPrefix(v, "tokens/day="), 64)
	if resp.StatusCode != 200 || !strings.HasPrefix(v, "tokens/day=") || perr != nil || pct <= 95 || pct > 100 {
		t.Errorf("chat: %d, X-Sluice-Quota-Used %q, want tokens/day= above 95", resp.StatusCode, v)
	}

	// Logged once each, counted, and in the delivery log.
	if n := strings.Count(s.logs.String(), `"msg":"quota threshold crossed"`); n != 2 {
		t.Errorf("threshold log lines: %d, want 2", n)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, log := call(t, "GET", s.url+"/api/v1/admin/alerts/deliveries?status=delivered", gwAdmin, "")
		items, _ := log["items"].([]any)
		if len(items) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivered in the log: %d, want 4: %v", len(items), log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mreq, _ := http.NewRequest("GET", s.url+"/metrics", nil)
	mresp, err := http.DefaultClient.Do(mreq)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{`sluice_quota_alerts_total{dimension="tokens",threshold="80",window="day"} 1`,
		`sluice_alert_deliveries_total{outcome="delivered",target="tenant"} 2`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
