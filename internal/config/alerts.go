package config

import (
	"net/url"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/errs"
)

// Alerts configures quota threshold alerts (docs/alerts.md): events when a
// scope's budget reaches a percentage of its limit, logged, counted and
// sent as signed webhooks to the tenant's endpoint and the platform's.
type Alerts struct {
	// Enabled runs the alerts (default true).
	Enabled bool `yaml:"enabled"`
	// Thresholds are the percentages of a limit alerted on, ascending;
	// empty means 80, 90, 100.
	Thresholds []int `yaml:"thresholds"`
	// Interval is how often an instance looks at the budgets its
	// admissions touched, and at the outbox (default 5s).
	Interval Duration `yaml:"interval"`
	// Webhook is the platform's own endpoint, which gets every event.
	Webhook AlertWebhook `yaml:"webhook"`
	// MaxAttempts bounds the attempts at one delivery (default 10).
	MaxAttempts int `yaml:"max_attempts"`
	// Backoff is the wait before the first retry, doubling for each
	// further one (default 1s), up to MaxBackoff (default 10m).
	Backoff    Duration `yaml:"backoff"`
	MaxBackoff Duration `yaml:"max_backoff"`
	// Timeout bounds one attempt (default 10s).
	Timeout Duration `yaml:"timeout"`
	// OutboxMax bounds the undelivered deliveries (default 10000): past
	// it, new events are still logged and counted but their webhooks are
	// not queued (logged at error level, counted as dropped).
	OutboxMax int `yaml:"outbox_max"`
}

// AlertWebhook is the platform's alert endpoint.
type AlertWebhook struct {
	// URL receives every event; empty for none. The operator's choice:
	// it may be internal (no SSRF guard applies to it).
	URL string `yaml:"url"`
	// SecretEnv names the environment variable holding the signing
	// secret (read at start, never printed; required with URL).
	SecretEnv string `yaml:"secret_env"`
}

// defaultAlerts are the alert settings when nothing is set.
func defaultAlerts() Alerts {
	return Alerts{Enabled: true, Interval: Duration(5 * time.Second), MaxAttempts: alerts.DefaultMaxAttempts,
		Backoff: Duration(alerts.DefaultBackoff), MaxBackoff: Duration(alerts.DefaultMaxBackoff),
		Timeout: Duration(alerts.DefaultTimeout), OutboxMax: alerts.DefaultOutboxMax,
		Webhook: AlertWebhook{SecretEnv: "SLUICE_ALERT_WEBHOOK_SECRET"}}
}

// validateAlerts checks the alerts section.
func (c *Config) validateAlerts() error {
	a := c.Alerts
	if len(a.Thresholds) > 0 {
		if err := alerts.ValidateThresholds(a.Thresholds); err != nil {
			return errs.Field(errs.Invalid, "alerts.thresholds", "alerts.thresholds: %v", err)
		}
	}
	if a.Interval < Duration(100*time.Millisecond) || a.Interval > Duration(time.Minute) {
		return errs.Field(errs.Invalid, "alerts.interval", "alerts.interval must be between 100ms and 1m")
	}
	if a.MaxAttempts < 1 || a.MaxAttempts > 100 {
		return errs.Field(errs.Invalid, "alerts.max_attempts", "alerts.max_attempts must be between 1 and 100")
	}
	if a.Backoff <= 0 || a.Backoff > Duration(time.Hour) {
		return errs.Field(errs.Invalid, "alerts.backoff", "alerts.backoff must be between 0 and 1h")
	}
	if a.MaxBackoff < a.Backoff || a.MaxBackoff > Duration(24*time.Hour) {
		return errs.Field(errs.Invalid, "alerts.max_backoff", "alerts.max_backoff must be at least alerts.backoff and at most 24h")
	}
	if a.Timeout <= 0 || a.Timeout > Duration(time.Minute) {
		return errs.Field(errs.Invalid, "alerts.timeout", "alerts.timeout must be between 0 and 1m")
	}
	if a.OutboxMax < 1 || a.OutboxMax > 10_000_000 {
		return errs.Field(errs.Invalid, "alerts.outbox_max", "alerts.outbox_max must be between 1 and 10000000")
	}
	if u := a.Webhook.URL; u != "" {
		if err := alerts.CheckWebhookURL(u); err != nil {
			return errs.Field(errs.Invalid, "alerts.webhook.url", "alerts.webhook.url %q is not an http(s) URL without credentials", redactQuery(u))
		}
		if a.Webhook.SecretEnv == "" {
			return errs.Field(errs.Invalid, "alerts.webhook.secret_env", "alerts.webhook.secret_env is required with alerts.webhook.url: webhooks are signed")
		}
	}
	if v := a.Webhook.SecretEnv; v != "" && !envVarName.MatchString(v) {
		return errs.Field(errs.Invalid, "alerts.webhook.secret_env", "alerts.webhook.secret_env %q is not an environment variable name", v)
	}
	return nil
}

// redactQuery drops a URL's query (it may hold a token) for messages.
func redactQuery(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparseable URL>"
	}
	u.RawQuery, u.User = "", nil
	return u.String()
}
