package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
)

// appAlerts is the threshold alerts' part of the app (nil pieces when
// alerts.enabled is off).
type appAlerts struct {
	tracker    *alerts.Tracker
	alerter    *alerts.Alerter
	dispatcher *alerts.Dispatcher
	service    *alerts.Service
}

// watchAdmissions returns the backend the meter decides on: the engine,
// with its admissions reported to the alerts' tracker when alerts are on.
func (a *App) watchAdmissions(b quota.Backend) quota.Backend {
	if !a.cfg.Alerts.Enabled {
		return b
	}
	a.alerts.tracker = alerts.NewTracker(0, nil)
	return a.alerts.tracker.Watch(b)
}

// startAlerts builds the alerter, the webhook dispatcher and the admin
// service. Tenants' webhooks are sent through the SSRF guard (a tenant
// admin chose the URL); the platform's, which the operator configured, is
// not.
func (a *App) startAlerts(guard *run.Guard) error {
	c := a.cfg.Alerts
	if !c.Enabled {
		return nil
	}
	var global alerts.Endpoint
	if c.Webhook.URL != "" {
		secret := strings.TrimSpace(os.Getenv(c.Webhook.SecretEnv))
		if secret == "" {
			return fmt.Errorf("alerts.webhook.secret_env: environment variable %s is not set (webhooks are signed with it)", c.Webhook.SecretEnv)
		}
		global = alerts.Endpoint{URL: c.Webhook.URL, Secret: secret}
	}
	timeout := time.Duration(c.Timeout)
	d := &alerts.Dispatcher{Store: a.store, Box: a.sealer, Global: global,
		Client: guard.Client(timeout), GlobalClient: &http.Client{Timeout: timeout},
		MaxAttempts: c.MaxAttempts, Backoff: time.Duration(c.Backoff), MaxBackoff: time.Duration(c.MaxBackoff), Timeout: timeout,
		Log: a.log, OnAttempt: func(target, outcome string) { a.metrics.AlertDeliveries.WithLabelValues(target, outcome).Inc() }}
	a.alerts.dispatcher = d
	a.alerts.alerter = &alerts.Alerter{Tracker: a.alerts.tracker, Usage: a.meter, Policy: a.policy.Manager().Current,
		Store: a.store, Log: a.log, Thresholds: c.Thresholds, Global: global.URL != "", OutboxMax: c.OutboxMax,
		OnAlert: func(ev *alerts.Event) {
			a.metrics.QuotaAlerts.WithLabelValues(ev.Dimension, ev.Window, strconv.Itoa(ev.Threshold)).Inc()
		},
		OnDropped: func(n int) { a.metrics.AlertDeliveries.WithLabelValues("outbox", "dropped").Add(float64(n)) },
		Queued:    d.Wake}
	a.alerts.service = &alerts.Service{Store: a.store, Box: a.sealer, CheckURL: func(raw string) error {
		_, err := guard.CheckURL(raw)
		return err
	}}
	return nil
}

// runAlerts starts the alerter's sweep and the dispatcher, owned by the
// app's background group.
func (a *App) runAlerts(ctx context.Context) {
	if a.alerts.alerter == nil {
		return
	}
	every := time.Duration(a.cfg.Alerts.Interval)
	a.background.Add(2)
	go func() {
		defer a.background.Done()
		a.alerts.alerter.Run(ctx, every)
	}()
	go func() {
		defer a.background.Done()
		a.alerts.dispatcher.Run(ctx, every)
	}()
}
