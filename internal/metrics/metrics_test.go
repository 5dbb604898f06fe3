package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMetricsExposition(t *testing.T) {
	m := New(func() float64 { return 7 })
	m.ObserveHTTP("POST /api/v1/quota/acquire", 429, 3*time.Millisecond)
	m.ObserveHTTP("", 404, time.Millisecond)
	m.Decisions.WithLabelValues("metering", "denied", "tokens").Inc()
	m.SetMode("degraded")
	m.UsageQuarantined(2)
	m.UsageRefused(1, false)
	m.UsageRefused(3, true)
	m.QuotaAlerts.WithLabelValues("tokens", "month", "80").Inc()
	m.AlertDeliveries.WithLabelValues("tenant", "retry").Inc()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`sluice_http_requests_total{code="429",route="POST /api/v1/quota/acquire"} 1`,
		`sluice_http_requests_total{code="404",route="unmatched"} 1`,
		`sluice_quota_decisions_total{dimension="tokens",kind="metering",result="denied"} 1`,
		`sluice_quota_mode{mode="degraded"} 1`,
		`sluice_quota_mode{mode="normal"} 0`,
		`sluice_usage_events_pending 7`,
		`sluice_usage_events_quarantined_total 2`,
		`sluice_usage_events_refused_total{how="commit"} 1`,
		`sluice_usage_events_refused_total{how="dropped"} 3`,
		`sluice_quota_alerts_total{dimension="tokens",threshold="80",window="month"} 1`,
		`sluice_alert_deliveries_total{outcome="retry",target="tenant"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	// Two apps in one process do not collide.
	_ = New(nil)
}
