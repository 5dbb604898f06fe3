package main

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// freshPostgres creates a database on the test PostgreSQL server and
// returns its URL; it is dropped when the test ends.
func freshPostgres(t *testing.T) string {
	t.Helper()
	base := os.Getenv("SLUICE_TEST_POSTGRES_URL")
	if base == "" {
		t.Fatal("SLUICE_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL")
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	var b [6]byte
	rand.Read(b[:])
	name := "sluice_app_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
		admin.Close()
	})
	u, _ := url.Parse(base)
	u.Path = "/" + name
	return u.String()
}

// patience is how long a test waits for something that happens in well
// under a second on a developer's machine (a limit propagated, an instance
// degraded): far more than a loaded two-core CI machine under -race needs,
// so a slow machine is never a failure. How long it did take is logged;
// speed belongs in benchmarks.
const patience = time.Minute

// eventually retries check until it passes or within has passed, and
// returns how long it took (logged, never asserted).
func eventually(t *testing.T, within time.Duration, what string, check func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if check() {
			took := time.Since(start)
			t.Logf("%s after %s", what, took.Round(time.Millisecond))
			return took
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPolicyChangesReachEveryInstance: three instances on one PostgreSQL
// database; a limit changed through one is enforced by the others without
// restart (in about a second: the time is logged); read-only mode likewise.
func TestPolicyChangesReachEveryInstance(t *testing.T) {
	dbURL := freshPostgres(t)
	admin := "operator-chosen-admin-key-0123456789abcdef"
	var apps []*started
	for range 3 {
		cfg := testConfig(t)
		cfg.DatabaseURL = dbURL
		cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
		apps = append(apps, start(t, cfg))
	}
	a, b, c := apps[0], apps[1], apps[2]
	member := applyPolicy(t, a.url, admin, "tenants:\n  - name: acme\n    projects: [{name: web}]\n    users: [{name: alice, projects: [web]}]\n")
	aliceKey, alice := member.key, member.userID

	// Instance C admits 5,000 tokens before any limit exists.
	if code, m := call(t, "POST", c.url+"/api/v1/quota/acquire", aliceKey, `{"tokens":5000,"requests":0}`); code != 200 {
		t.Fatalf("before the limit: %d %v", code, m)
	}
	// A limit set through A reaches C.
	if code, m := call(t, "PUT", a.url+"/api/v1/admin/limits/user/"+alice, admin, `{"limits":{"tokens_rate":"100/min"}}`); code != 200 {
		t.Fatalf("set limit: %d %v", code, m)
	}
	eventually(t, patience, "limit set on A enforced by C", func() bool {
		code, m := call(t, "POST", c.url+"/api/v1/quota/acquire", aliceKey, `{"tokens":5000,"requests":0}`)
		if code != 429 {
			t.Logf("C answered %d %v", code, m)
		}
		return code == 429
	})

	// Read-only mode set on B stops new work on A; reads continue.
	if code, m := call(t, "PUT", b.url+"/api/v1/admin/platform", admin, `{"read_only":true,"message":"maintenance until 14:00"}`); code != 200 {
		t.Fatalf("read-only: %d %v", code, m)
	}
	eventually(t, patience, "read-only set on B seen by A", func() bool {
		code, m := call(t, "POST", a.url+"/api/v1/quota/acquire", aliceKey, `{}`)
		e, _ := m["error"].(map[string]any)
		return code == 503 && strings.Contains(e["message"].(string), "maintenance until 14:00")
	})
	if code, _ := call(t, "GET", a.url+"/api/v1/usage", aliceKey, ""); code != 200 {
		t.Fatalf("reads in read-only mode: %d", code)
	}
	_, ready := call(t, "GET", a.url+"/readyz", "", "")
	if ready["mode"] != "read_only" {
		t.Fatalf("readyz mode: %v", ready)
	}
	call(t, "PUT", c.url+"/api/v1/admin/platform", admin, `{"read_only":false}`)
	eventually(t, patience, "read-only lifted", func() bool {
		code, _ := call(t, "POST", a.url+"/api/v1/quota/acquire", aliceKey, `{}`)
		return code == 200
	})

	// A key revoked through A is refused by C, although C
	// had just resolved (and remembered) it.
	if code, _ := call(t, "GET", c.url+"/api/v1/me", aliceKey, ""); code != 200 {
		t.Fatalf("me on C: %d", code)
	}
	if code, m := call(t, "DELETE", a.url+"/api/v1/admin/keys/"+member.keyID, admin, ""); code != 200 {
		t.Fatalf("revoke: %d %v", code, m)
	}
	if code, _ := call(t, "GET", a.url+"/api/v1/me", aliceKey, ""); code != 401 {
		t.Fatalf("revoked key on the instance that revoked it: %d, want 401 at once", code)
	}
	eventually(t, patience, "revocation reaches C", func() bool {
		code, _ := call(t, "GET", c.url+"/api/v1/me", aliceKey, "")
		return code == 401
	})
}

// TestPolicyFileWatched: a policy file is applied at start and re-applied
// when it changes; an invalid version is rejected and the last good policy
// stays in force.
func TestPolicyFileWatched(t *testing.T) {
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	admin := string(cfg.AdminKey)
	cfg.PolicyFile = filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		// Replace atomically, as a ConfigMap update does.
		tmp := cfg.PolicyFile + ".tmp"
		os.WriteFile(tmp, []byte(s), 0o600)
		os.Rename(tmp, cfg.PolicyFile)
	}
	write("tenants:\n  - name: acme\n    limits: {tokens: 1000/day}\n")
	s := start(t, cfg)
	tenantLimit := func() string {
		_, ts := call(t, "GET", s.url+"/api/v1/admin/tenants", admin, "")
		items, _ := ts["items"].([]any)
		if len(items) == 0 {
			return ""
		}
		id := items[0].(map[string]any)["id"].(string)
		_, l := call(t, "GET", s.url+"/api/v1/admin/limits/tenant/"+id, admin, "")
		lim, _ := l["limits"].(map[string]any)
		tok, _ := lim["tokens"].(string)
		return tok
	}
	eventually(t, patience, "policy file applied at start", func() bool { return tenantLimit() == "1000/day" })
	write("tenants:\n  - name: acme\n    limits: {tokens: 2000/day}\n")
	eventually(t, patience, "changed policy file applied", func() bool { return tenantLimit() == "2000/day" })
	write("tenants:\n  - name: acme\n    limits: {tokens: lots}\n")
	eventually(t, patience, "invalid policy file rejected in the log", func() bool {
		return strings.Contains(s.logs.String(), "policy file rejected")
	})
	if got := tenantLimit(); got != "2000/day" {
		t.Fatalf("after an invalid file: limit %q, want the last good 2000/day", got)
	}
}
