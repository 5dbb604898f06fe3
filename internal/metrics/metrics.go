// Package metrics owns Sluice's Prometheus metrics: one registry per app
// (so tests can start many apps in one process), with the counters and
// gauges every other package reports through. Label values never carry
// tenant or user ids, which would explode cardinality and leak who uses
// the platform; per-tenant figures live in the usage API.
package metrics

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the set of Sluice's metrics.
type Metrics struct {
	Registry *prometheus.Registry

	HTTPRequests  *prometheus.CounterVec
	HTTPDuration  *prometheus.HistogramVec
	Decisions     *prometheus.CounterVec
	Settlements   prometheus.Counter
	QuotaMode     *prometheus.GaugeVec
	EventsPending prometheus.GaugeFunc
	Runs          *prometheus.CounterVec
	ModelCalls    *prometheus.CounterVec
	Tokens        *prometheus.CounterVec
	PolicyVersion prometheus.Gauge
	// UsageQuarantinedTotal counts usage events the store refused as
	// malformed and set aside (GET /api/v1/admin/usage/quarantine).
	UsageQuarantinedTotal prometheus.Counter
	// UsageRefusedTotal counts usage events turned away because the
	// queue was full, by how: "commit" (the caller got 503) or "dropped".
	UsageRefusedTotal *prometheus.CounterVec
	// RedisCallDuration is the latency of the quota engine's Redis calls,
	// by operation (acquire, settle, charge, heartbeat, use, void, …) and
	// outcome (ok, timeout, canceled, error).
	RedisCallDuration *prometheus.HistogramVec
	// QueueWaits is how long admissions waited for a concurrency slot, by
	// class and outcome (admitted, refused, timeout, full, cancelled).
	QueueWaits *prometheus.HistogramVec
	// QueueLength is how many admissions wait for a slot on this instance.
	QueueLength prometheus.GaugeFunc
	queueLen    atomic.Pointer[func() int]
	// QuotaAlerts counts threshold events this instance announced
	// (docs/alerts.md), by dimension, window and threshold percent.
	QuotaAlerts *prometheus.CounterVec
	// AlertDeliveries counts webhook attempts by target (tenant, global)
	// and outcome (delivered, retry, failed), and deliveries not queued
	// because the outbox was full (dropped).
	AlertDeliveries *prometheus.CounterVec
}

// SetQueueLength makes QueueLength report n.
func (m *Metrics) SetQueueLength(n func() int) { m.queueLen.Store(&n) }

// New registers every metric in a fresh registry. pending reports queued
// usage events (nil for none).
func New(pending func() float64) *Metrics {
	if pending == nil {
		pending = func() float64 { return 0 }
	}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_http_requests_total", Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sluice_http_request_duration_seconds", Help: "HTTP request latency by route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_quota_decisions_total", Help: "Quota decisions by kind (run, model_call, metering), result (admitted, denied, error) and the denying dimension.",
		}, []string{"kind", "result", "dimension"}),
		Settlements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_quota_settlements_total", Help: "Tickets settled.",
		}),
		QuotaMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_quota_mode", Help: "1 for the quota engine's current mode (normal, degraded, read_only), 0 for the others.",
		}, []string{"mode"}),
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_runs_total", Help: "Flow runs by final status.",
		}, []string{"status"}),
		ModelCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_model_calls_total", Help: "Model calls by model, provider and outcome.",
		}, []string{"model", "provider", "outcome"}),
		Tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_tokens_total", Help: "Tokens used by model and direction (input, output).",
		}, []string{"model", "direction"}),
		PolicyVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_policy_version", Help: "Version of the policy snapshot in force on this instance.",
		}),
	}
	m.UsageQuarantinedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sluice_usage_events_quarantined_total", Help: "Usage events the store refused as malformed and set aside in the quarantine.",
	})
	m.UsageRefusedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_usage_events_refused_total", Help: "Usage events turned away because the write queue was full: commit (answered 503) or dropped (logged).",
	}, []string{"how"})
	m.RedisCallDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sluice_redis_call_duration_seconds", Help: "Latency of the quota engine's Redis calls by operation and outcome (ok, timeout, canceled, error).",
		Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"op", "outcome"})
	m.QuotaAlerts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_quota_alerts_total", Help: "Quota threshold events announced by this instance, by dimension, window and threshold percent.",
	}, []string{"dimension", "window", "threshold"})
	m.AlertDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_alert_deliveries_total", Help: "Alert webhook attempts by target (tenant, global) and outcome (delivered, retry, failed), and deliveries dropped because the outbox was full.",
	}, []string{"target", "outcome"})
	m.EventsPending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_usage_events_pending", Help: "Usage events queued and not yet written to the store.",
	}, pending)
	m.QueueWaits = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sluice_admission_queue_wait_seconds", Help: "How long admissions waited for a full concurrency limit, by class (high, normal, low) and outcome (admitted, refused, timeout, full, cancelled).",
		Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"class", "outcome"})
	m.QueueLength = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_admission_queue_length", Help: "Admissions waiting for a concurrency slot on this instance.",
	}, func() float64 {
		if f := m.queueLen.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	m.Registry.MustRegister(m.QueueWaits, m.QueueLength)
	m.Registry.MustRegister(m.HTTPRequests, m.HTTPDuration, m.Decisions, m.Settlements, m.QuotaMode, m.EventsPending,
		m.Runs, m.ModelCalls, m.Tokens, m.PolicyVersion, m.UsageQuarantinedTotal, m.UsageRefusedTotal,
		m.RedisCallDuration, m.QuotaAlerts, m.AlertDeliveries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.SetMode("normal")
	return m
}

// SetMode marks the quota engine's mode.
func (m *Metrics) SetMode(mode string) {
	for _, k := range []string{"normal", "degraded", "read_only"} {
		v := 0.0
		if k == mode {
			v = 1
		}
		m.QuotaMode.WithLabelValues(k).Set(v)
	}
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// ObserveHTTP records one request.
func (m *Metrics) ObserveHTTP(route string, code int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	m.HTTPRequests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.HTTPDuration.WithLabelValues(route).Observe(d.Seconds())
}

// ObserveRedisCall records one Redis call of the quota engine (it is
// redisquota.Options.Observe).
func (m *Metrics) ObserveRedisCall(op, outcome string, d time.Duration) {
	m.RedisCallDuration.WithLabelValues(op, outcome).Observe(d.Seconds())
}

// UsageQuarantined counts n usage events set aside as malformed (it makes
// Metrics a usage.Observer).
func (m *Metrics) UsageQuarantined(n int) { m.UsageQuarantinedTotal.Add(float64(n)) }

// UsageRefused counts n usage events turned away by a full queue.
func (m *Metrics) UsageRefused(n int, dropped bool) {
	how := "commit"
	if dropped {
		how = "dropped"
	}
	m.UsageRefusedTotal.WithLabelValues(how).Add(float64(n))
}
