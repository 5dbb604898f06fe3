package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// alertCommands are a tenant's alert webhook and the delivery log
// (docs/alerts.md). The server answers 404 for all of them when it runs
// no alerts (alerts.enabled).
func alertCommands(add func(*command)) {
	const wpath = "/api/v1/admin/alerts/webhook"
	fHookTenant := flagSpec{"tenant", "NAME", "whose webhook, by name or id (default: your tenant; platform admins name one)"}
	tenantQ := func(x *invocation) url.Values {
		q := url.Values{}
		if t := x.flags["tenant_id"]; t != "" {
			q.Set("tenant_id", t)
		}
		return q
	}
	add(&command{path: []string{"alerts", "webhook", "get"}, nargs: 0, summary: "the tenant's alert webhook (its URL; never its secret)",
		flags: []flagSpec{fHookTenant}, examples: []string{"sluice alerts webhook get", "sluice alerts webhook get --tenant university"},
		run: func(x *invocation) error { return x.show(http.MethodGet, wpath, tenantQ(x), nil) }})
	add(&command{path: []string{"alerts", "webhook", "set"}, nargs: 0, summary: "send the tenant's threshold alerts to a URL, signed",
		about: `Each alert is POSTed to --url signed with HMAC-SHA256 of a secret (docs/alerts.md). Without
--secret-file the server makes one and this answer shows it, this once: keep it to check the
signatures. With --secret-file ("-": standard input) that secret is used and never shown.`,
		flags: []flagSpec{fHookTenant, {"url", "URL", "where alerts go: an http or https URL (the server's address guard applies)"},
			{"secret-file", "FILE", "a file holding the signing secret (default: the server makes one)"}},
		fieldFlags: map[string]string{"secret": "secret-file"},
		examples: []string{"sluice alerts webhook set --tenant university --url https://hooks.example.edu/sluice",
			"sluice alerts webhook set --url https://hooks.example.edu/sluice --secret-file hook.secret"},
		run: func(x *invocation) error {
			if err := need(x, "url"); err != nil {
				return err
			}
			b := map[string]any{"url": x.flags["url"]}
			if t := x.flags["tenant_id"]; t != "" {
				b["tenant_id"] = t
			}
			if _, ok := x.flags["secret_file"]; ok {
				secret, err := readSecret(x, "secret-file")
				if err != nil {
					return err
				}
				b["secret"] = secret
			}
			raw, err := x.showing(http.MethodPut, wpath, nil, b)
			if err != nil {
				return err
			}
			var out struct {
				Secret string `json:"secret"`
			}
			if json.Unmarshal(raw, &out) == nil && out.Secret != "" {
				fmt.Fprintln(x.stderr, "the webhook's signing secret is shown this once: keep it to check the alerts' signatures")
			}
			return nil
		}})
	add(&command{path: []string{"alerts", "webhook", "delete"}, nargs: 0, summary: "stop sending the tenant's alerts to its webhook",
		flags: []flagSpec{fHookTenant}, examples: []string{"sluice alerts webhook delete --tenant university"},
		run: func(x *invocation) error {
			if err := x.show(http.MethodDelete, wpath, tenantQ(x), nil); err != nil {
				return err
			}
			fmt.Fprintln(x.stderr, "alert webhook deleted")
			return nil
		}})
	add(&command{path: []string{"alerts", "deliveries"}, nargs: 0, summary: "the alerts' delivery log, newest first",
		flags: []flagSpec{{"tenant", "NAME", "one tenant's (platform admins; tenant admins see their own)"},
			{"target", "T", "tenant (its webhook) or global (the platform's)"}, {"status", "S", "pending, delivered or failed"}, fLimit, fAfter},
		view: &view{columns: []column{field("CREATED", "created_at"), scopeCol("scope"), field("DIMENSION", "dimension"), field("WINDOW", "window"),
			field("THRESHOLD", "threshold"), field("TARGET", "target"), field("STATUS", "status"), field("ATTEMPTS", "attempts"),
			field("HTTP", "last_status_code"), field("LAST ERROR", "last_error"), field("ID", "id")}},
		examples: []string{"sluice alerts deliveries --status failed", "sluice alerts deliveries --tenant university --limit 20 -o json"},
		run: func(x *invocation) error {
			return x.show(http.MethodGet, "/api/v1/admin/alerts/deliveries", query(x.flags), nil)
		}})
}

// showing is show that also returns the answer, for a note after it.
func (x *invocation) showing(method, path string, q url.Values, body any) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := x.c.Do(x.ctx, method, path, q, body, &raw); err != nil {
		return nil, err
	}
	return raw, printRaw(x.out(), raw)
}
