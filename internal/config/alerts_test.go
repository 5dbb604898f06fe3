package config_test

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

func TestAlertsConfig(t *testing.T) {
	for _, c := range []struct {
		yaml, field string
	}{
		{"alerts: {thresholds: [50, 75, 100]}", ""},
		{"alerts: {webhook: {url: 'https://hooks.example/sluice', secret_env: HOOK_SECRET}}", ""},
		{"alerts: {thresholds: [90, 80]}", "alerts.thresholds"},
		{"alerts: {thresholds: [0]}", "alerts.thresholds"},
		{"alerts: {interval: 10ms}", "alerts.interval"},
		{"alerts: {max_attempts: 0}", "alerts.max_attempts"},
		{"alerts: {backoff: 2m, max_backoff: 1m}", "alerts.max_backoff"},
		{"alerts: {outbox_max: 0}", "alerts.outbox_max"},
		{"alerts: {webhook: {url: 'ftp://hooks.example/'}}", "alerts.webhook.url"},
		{"alerts: {webhook: {url: 'https://hooks.example/', secret_env: ''}}", "alerts.webhook.secret_env"},
		{"alerts: {webhook: {secret_env: 'not a name'}}", "alerts.webhook.secret_env"},
	} {
		cfg := config.Default()
		if err := cfg.Parse(strings.NewReader(c.yaml)); err != nil {
			t.Fatalf("%s: %v", c.yaml, err)
		}
		err := cfg.Validate()
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: got %v, want valid", c.yaml, err)
		case c.field != "" && err == nil:
			t.Errorf("%s: valid, want an error naming %s", c.yaml, c.field)
		case c.field != "" && fieldOf(t, err) != c.field:
			t.Errorf("%s: field %s, want %s", c.yaml, fieldOf(t, err), c.field)
		}
	}
}
