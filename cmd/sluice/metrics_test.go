package main

import (
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestMetricsAndShippedRules: after a run, /metrics shows the run, the
// model call and its tokens; and every metric the shipped alert rules and
// Grafana dashboard use exists.
func TestMetricsAndShippedRules(t *testing.T) {
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	s := start(t, cfg)
	admin := string(cfg.AdminKey)
	_, tnt := call(t, "POST", s.url+"/api/v1/admin/tenants", admin, `{"name":"acme"}`)
	_, prj := call(t, "POST", s.url+"/api/v1/admin/projects", admin, `{"name":"web","tenant_id":"`+tnt["id"].(string)+`"}`)
	_, usr := call(t, "POST", s.url+"/api/v1/admin/users", admin, `{"name":"boss","role":"tenant_admin","tenant_id":"`+tnt["id"].(string)+`"}`)
	_, key := call(t, "POST", s.url+"/api/v1/admin/keys", admin, `{"user_id":"`+usr["id"].(string)+`","project_id":"`+prj["id"].(string)+`"}`)
	flowJSON := `{"nodes":[{"id":"in","type":"ChatInput","data":{}},{"id":"m","type":"LanguageModelComponent","data":{}},{"id":"out","type":"ChatOutput","data":{}}],
		"edges":[{"source":"in","target":"m"},{"source":"m","target":"out"}]}`
	req, _ := http.NewRequest("POST", s.url+"/api/v1/flows?endpoint_name=tiny", strings.NewReader(flowJSON))
	req.Header.Set("x-api-key", key["secret"].(string))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 201 {
		t.Fatalf("upload: %v %v", resp, err)
	}
	if code, m := call(t, "POST", s.url+"/api/v1/run/tiny", key["secret"].(string), `{"input_value":"hi"}`); code != 200 {
		t.Fatalf("run: %d %v", code, m)
	}
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`sluice_runs_total{status="succeeded"} 1`,
		`sluice_model_calls_total{model="simulated",outcome="ok",provider="simulated"} 1`,
		`sluice_tokens_total{direction="input",model="simulated"}`,
		`sluice_quota_decisions_total{dimension="",kind="run",result="admitted"} 1`,
		`sluice_quota_mode{mode="normal"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The rules and the dashboard use only metrics Sluice exports.
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\w+) `).FindAllStringSubmatch(string(body), -1) {
		exported[m[1]] = true
	}
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	data, err := os.ReadFile("../../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	dash, err := os.ReadFile("../../deploy/grafana/sluice.json")
	if err != nil {
		t.Fatal(err)
	}
	exprs := string(dash)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs += "\n" + r.Expr
		}
	}
	for _, name := range regexp.MustCompile(`sluice_\w+`).FindAllString(exprs, -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !exported[base] {
			t.Errorf("the shipped rules or dashboard use %s, which Sluice does not export", name)
		}
	}
}
