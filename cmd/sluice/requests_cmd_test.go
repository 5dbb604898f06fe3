package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestCLIQuotaRequests drives a quota request from the CLI against the
// app: a member asks, lists and sees the status; a member cannot approve;
// the tenant's admin approves for another amount, and the limit is raised
// at once; a second ask is denied with a reason; mistakes are the command
// line's.
func TestCLIQuotaRequests(t *testing.T) {
	s := start(t, testConfig(t))
	root := keyPattern.FindString(s.stdout.String())
	run := func(key string, want int, args ...string) string {
		t.Helper()
		code, out, errOut := cli(t, s.url, key, args...)
		if code != want {
			t.Fatalf("sluice %s: exit %d, want %d: %s%s", strings.Join(args, " "), code, want, out, errOut)
		}
		return out + errOut
	}
	obj := func(out string) map[string]any {
		t.Helper()
		var v map[string]any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("not a JSON object: %s (%v)", out, err)
		}
		return v
	}
	tenant := obj(run(root, 0, "tenants", "create", "--name", "uni"))["id"].(string)
	project := obj(run(root, 0, "projects", "create", "--tenant-id", tenant, "--name", "lab"))["id"].(string)
	alice := obj(run(root, 0, "users", "create", "--tenant-id", tenant, "--name", "alice"))["id"].(string)
	boss := obj(run(root, 0, "users", "create", "--tenant-id", tenant, "--name", "boss", "--role", "tenant_admin"))["id"].(string)
	run(root, 0, "memberships", "add", "--user-id", alice, "--project-id", project)
	aliceKey := obj(run(root, 0, "keys", "create", "--user-id", alice, "--project-id", project))["secret"].(string)
	bossKey := obj(run(root, 0, "keys", "create", "--user-id", boss))["secret"].(string)
	run(root, 0, "limits", "set", "user/"+alice, "--limits", `{"tokens":"1000/day"}`)

	q := obj(run(aliceKey, 0, "requests", "create", "--dimension", "tokens_day", "--amount", "50000", "--duration", "72h",
		"--reason", "exam week"))
	id := q["id"].(string)
	if q["status"] != "pending" || q["scope"] != "user/"+alice || q["amount"] != float64(50000) {
		t.Fatalf("requests create: %v", q)
	}
	if out := run(aliceKey, 0, "requests", "list", "--status", "pending"); !strings.Contains(out, id) {
		t.Fatalf("requests list as the requester: %s", out)
	}
	if out := run(aliceKey, 1, "requests", "approve", id); !strings.Contains(out, "forbidden") {
		t.Fatalf("member approves: %s", out)
	}
	a := obj(run(bossKey, 0, "requests", "approve", id, "--amount", "20000", "--note", "20k will do"))
	if a["status"] != "approved" || a["granted_amount"] != float64(20000) || a["grant_id"] == "" {
		t.Fatalf("requests approve: %v", a)
	}
	if out := run(aliceKey, 0, "usage", "--scope", "user/"+alice); !strings.Contains(out, `"limit": 21000`) {
		t.Fatalf("usage after approval, want a limit of 21000: %s", out)
	}
	if out := run(bossKey, 1, "requests", "deny", id, "--reason", "late"); !strings.Contains(out, "conflict") {
		t.Fatalf("deny after approval: %s", out)
	}

	id2 := obj(run(aliceKey, 0, "requests", "create", "--dimension", "tokens_day", "--amount", "1", "--duration", "1d", "--reason", "more"))["id"].(string)
	run(bossKey, 0, "requests", "deny", id2, "--reason", "one raise a week")
	if got := obj(run(aliceKey, 0, "requests", "get", id2)); got["status"] != "denied" || got["note"] != "one raise a week" {
		t.Fatalf("requests get after denial: %v", got)
	}
	id3 := obj(run(aliceKey, 0, "requests", "create", "--dimension", "tokens_day", "--amount", "1", "--duration", "1d", "--reason", "x"))["id"].(string)
	if got := obj(run(aliceKey, 0, "requests", "cancel", id3)); got["status"] != "cancelled" {
		t.Fatalf("requests cancel: %v", got)
	}

	run(aliceKey, 2, "requests")
	run(aliceKey, 2, "requests", "frob")
	run(aliceKey, 2, "requests", "approve")
	run(aliceKey, 2, "requests", "deny", id2)
	run(aliceKey, 2, "requests", "create", "--amount", "lots")
	run(aliceKey, 2, "requests", "list", "--reason", "x")
	if out := run(aliceKey, 1, "requests", "create", "--dimension", "tokens_day", "--amount", "5", "--duration", "soon", "--reason", "x"); !strings.Contains(out, "field duration") {
		t.Fatalf("bad duration: %s", out)
	}
}
