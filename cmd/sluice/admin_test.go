package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestCLIVirtualKeys drives a key's life from the CLI: created with an
// expiry and limits in one command, its limits read, changed and cleared
// through `sluice limits`, its spend listed by `sluice usage keys`.
func TestCLIVirtualKeys(t *testing.T) {
	s := start(t, testConfig(t))
	admin := keyPattern.FindString(s.stdout.String())
	run := func(want int, args ...string) string {
		t.Helper()
		code, out, errOut := cli(t, s.url, admin, args...)
		if code != want {
			t.Fatalf("sluice %s: exit %d, want %d: %s%s", strings.Join(args, " "), code, want, out, errOut)
		}
		return out + errOut
	}
	id := func(out string) string {
		t.Helper()
		var v struct{ ID string }
		if err := json.Unmarshal([]byte(out), &v); err != nil || v.ID == "" {
			t.Fatalf("no id in %s (%v)", out, err)
		}
		return v.ID
	}
	tenant := id(run(0, "tenants", "create", "--name", "acme"))
	user := id(run(0, "users", "create", "--tenant-id", tenant, "--name", "ci-bot"))
	out := run(0, "keys", "create", "--user-id", user, "--name", "ci", "--expires-in", "720h",
		"--limits", `{"requests":{"limit":10,"period":"1m"},"models":["gpt-4o-mini"]}`)
	var k struct {
		ID, Secret string
		ExpiresAt  string `json:"expires_at"`
		Limits     struct {
			Scope     string
			Effective map[string]any
		}
	}
	if err := json.Unmarshal([]byte(out), &k); err != nil || k.Secret == "" || k.ExpiresAt == "" ||
		k.Limits.Scope != "key/"+k.ID || k.Limits.Effective["requests"] != "10/min" {
		t.Fatalf("keys create: %s (%v)", out, err)
	}
	if out := run(0, "limits", "get", "key/"+k.ID); !strings.Contains(out, `"10/min"`) {
		t.Fatalf("limits get: %s", out)
	}
	run(0, "limits", "set", "key/"+k.ID, "--limits", `{"requests":"1/min"}`)
	if out := run(0, "limits", "list", "--tenant-id", tenant); !strings.Contains(out, "key/"+k.ID) || !strings.Contains(out, `"1/min"`) {
		t.Fatalf("limits list: %s", out)
	}
	if out := run(0, "usage", "keys", "--tenant-id", tenant); !strings.Contains(out, `"items": []`) {
		t.Fatalf("usage keys before any use: %s", out)
	}
	run(0, "limits", "clear", "key/"+k.ID)
	if out := run(0, "limits", "get", "key/"+k.ID); strings.Contains(out, "1/min") {
		t.Fatalf("limits after clear: %s", out)
	}
	// Mistakes are the command line's, or name the field.
	run(2, "keys", "create", "--limits", "{not json")
	run(2, "keys", "update", k.ID, "--limits", `{"requests":"1/min"}`)
	run(2, "limits", "set")
	run(2, "usage", "keys", "--scope", "x")
	if out := run(1, "limits", "set", "key/nope/x", "--limits", "{}"); !strings.Contains(out, "field scope") {
		t.Fatalf("bad scope: %s", out)
	}
}
