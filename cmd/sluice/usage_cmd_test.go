package main

import (
	"encoding/csv"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCLIUsageReport drives sluice usage report against the app: use
// settled through the metering API shows per project (every project of the
// tenant, the idle one too, none of another tenant's), by model, as CSV,
// JSON and a table; -h explains it; mistakes are the command line's or the
// server's, named.
func TestCLIUsageReport(t *testing.T) {
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
	id := func(out string) string {
		t.Helper()
		var v struct{ ID, Secret string }
		if err := json.Unmarshal([]byte(out), &v); err != nil || v.ID == "" {
			t.Fatalf("not an object with an id: %s (%v)", out, err)
		}
		if v.Secret != "" {
			return v.Secret
		}
		return v.ID
	}
	tenant := id(run(root, 0, "tenants", "create", "--name", "uni", "--timezone", "Asia/Shanghai"))
	lab := id(run(root, 0, "projects", "create", "--tenant-id", tenant, "--name", "lab"))
	web := id(run(root, 0, "projects", "create", "--tenant-id", tenant, "--name", "web"))
	idle := id(run(root, 0, "projects", "create", "--tenant-id", tenant, "--name", "idle"))
	alice := id(run(root, 0, "users", "create", "--tenant-id", tenant, "--name", "alice"))
	boss := id(run(root, 0, "users", "create", "--tenant-id", tenant, "--name", "boss", "--role", "tenant_admin"))
	run(root, 0, "memberships", "add", "--user-id", alice, "--project-id", lab)
	run(root, 0, "memberships", "add", "--user-id", alice, "--project-id", web)
	aliceKey := id(run(root, 0, "keys", "create", "--user-id", alice, "--project-id", lab))
	bossKey := id(run(root, 0, "keys", "create", "--user-id", boss))
	other := id(run(root, 0, "tenants", "create", "--name", "corp"))
	otherProject := id(run(root, 0, "projects", "create", "--tenant-id", other, "--name", "lab"))
	bob := id(run(root, 0, "users", "create", "--tenant-id", other, "--name", "bob"))
	run(root, 0, "memberships", "add", "--user-id", bob, "--project-id", otherProject)
	bobKey := id(run(root, 0, "keys", "create", "--user-id", bob, "--project-id", otherProject))

	spend := func(key, project, settle string) {
		t.Helper()
		code, adm := call(t, "POST", s.url+"/api/v1/quota/acquire", key, `{"tokens":1000,"gpu_seconds":5,"cost_usd":0.5,"project_id":"`+project+`"}`)
		if code != 200 {
			t.Fatalf("acquire: %d %v", code, adm)
		}
		if code, body := call(t, "POST", s.url+"/api/v1/quota/settle", key, `{"ticket":"`+adm["ticket"].(string)+`",`+settle+`}`); code != 200 {
			t.Fatalf("settle: %d %v", code, body)
		}
	}
	spend(aliceKey, lab, `"input_tokens":600,"output_tokens":40,"gpu_seconds":1.25,"cost_usd":0.001234,"model":"gpt-4o"`)
	spend(aliceKey, lab, `"input_tokens":7,"output_tokens":3,"gpu_seconds":0.5,"cost_usd":0.2,"model":"llama-70b"`)
	spend(aliceKey, web, `"input_tokens":100,"output_tokens":200,"model":"gpt-4o"`)
	spend(bobKey, otherProject, `"input_tokens":999,"output_tokens":999,"model":"gpt-4o"`)
	shanghai, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	month := time.Now().In(shanghai).Format("2006-01")

	out := run(bossKey, 0, "usage", "report", "--month", month, "--by", "project", "--format", "csv")
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatalf("CSV does not parse: %v\n%s", err, out)
	}
	first, last := month+"-01", time.Date(time.Now().In(shanghai).Year(), time.Now().In(shanghai).Month()+1, 0, 0, 0, 0, 0, time.UTC).Format("2006-01-02")
	want := [][]string{
		{"project", "project_id", "from", "to", "requests", "input_tokens", "output_tokens", "tokens", "gpu_seconds", "cost_usd"},
		{"lab", lab, first, last, "2", "607", "43", "650", "1.75", "0.201234"},
		{"web", web, first, last, "1", "100", "200", "300", "0", "0"},
		{"idle", idle, first, last, "0", "0", "0", "0", "0", "0"},
	}
	if !slices.EqualFunc(recs, want, slices.Equal) {
		t.Fatalf("usage report --by project --format csv:\n got %q\nwant %q", recs, want)
	}

	var h struct {
		Scope  string `json:"scope"`
		By     string `json:"by"`
		Totals struct {
			Tokens  int64   `json:"tokens"`
			CostUSD float64 `json:"cost_usd"`
		} `json:"totals"`
		Rows []struct {
			Model string `json:"model"`
		} `json:"rows"`
	}
	if err := json.Unmarshal([]byte(run(aliceKey, 0, "usage", "report", "--by", "model", "-o", "json")), &h); err != nil {
		t.Fatal(err)
	}
	if h.Scope != "user/"+alice || h.By != "model" || h.Totals.Tokens != 950 || len(h.Rows) != 2 {
		t.Fatalf("usage report --by model -o json (alice, by default herself): got %+v, want 950 tokens on two models", h)
	}
	table := run(bossKey, 0, "usage", "report", "--scope", "project/"+lab, "--group", "month", "--by", "model", "--format", "table")
	for _, w := range []string{"MODEL", "gpt-4o", "llama-70b", "TOTAL", "0.201234", month} {
		if !strings.Contains(table, w) {
			t.Fatalf("usage report table: want %q in\n%s", w, table)
		}
	}
	if out := run(bossKey, 0, "usage", "report", "--by", "project", "-o", "table"); !strings.Contains(out, "idle") || strings.Contains(out, otherProject) {
		t.Fatalf("usage report --by project table: %s", out)
	}

	if help := run(aliceKey, 0, "usage", "report", "-h"); !strings.Contains(help, "Examples:") || !strings.Contains(help, "--by project") {
		t.Fatalf("usage report -h: %s", help)
	}
	run(aliceKey, 2, "usage", "report", "--frob", "x")
	run(aliceKey, 2, "usage", "report", "--format", "xml")
	run(aliceKey, 2, "usage", "report", "--month", month, "--from", month)
	run(bossKey, 2, "usage", "report", "--by", "project", "--scope", "tenant/"+tenant)
	if out := run(aliceKey, 1, "usage", "report", "--month", "2026-13"); !strings.Contains(out, "field from") {
		t.Fatalf("a month that is none: %s", out)
	}
	if out := run(aliceKey, 1, "usage", "report", "--scope", "tenant/"+other); !strings.Contains(out, "not_found") {
		t.Fatalf("another tenant's scope: %s", out)
	}
}
