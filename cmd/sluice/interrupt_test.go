package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKillNineRunIsInterrupted: a run waiting on a slow model when its
// server is killed with SIGKILL does not stay "running" for ever: the
// restarted server ends it as interrupted once its deadline (start + the
// user's run_timeout of 2 s) is a grace (1 s here) past, ended at the
// deadline, and the user's single slot is free again.
func TestKillNineRunIsInterrupted(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(cfgFile, []byte(`run_interrupt_grace: 1s
models:
  - {name: fast, provider: simulated, default: true}
  - {name: slow, provider: simulated, latency: 1h}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"SLUICE_ADMIN_KEY=" + faultAdmin, "SLUICE_DEFAULT_GLOBAL_RATE=none"}
	p := startProc(t, env, "--data", dir, "--config", cfgFile)
	member := applyPolicy(t, p.url, faultAdmin, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {concurrency: 1, run_timeout: 2s}}
`)
	flowJSON, err := os.ReadFile("../../examples/flows/basic-prompting.json")
	if err != nil {
		t.Fatal(err)
	}
	code, f := call(t, "POST", p.url+"/api/v1/flows", member.key, string(flowJSON))
	if code != 201 && code != 200 {
		t.Fatalf("upload: %d %v", code, f)
	}
	flowID := f["id"].(string)
	slowRun := `{"input_value":"slowly","tweaks":{"LanguageModelComponent-LsJMR":{"model_name":"slow"}}}`
	go func() {
		// Blocks on the slow model until the server dies.
		req, _ := http.NewRequest("POST", p.url+"/api/v1/run/"+flowID, strings.NewReader(slowRun))
		req.Header.Set("Authorization", "Bearer "+member.key)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	var runID string
	eventually(t, patience, "the run is recorded as running", func() bool {
		_, l := call(t, "GET", p.url+"/api/v1/runs", member.key, "")
		items, _ := l["items"].([]any)
		for _, it := range items {
			if r := it.(map[string]any); r["status"] == "running" {
				runID = r["id"].(string)
				return true
			}
		}
		return false
	})
	p.kill()

	q := startProc(t, env, "--data", dir, "--config", cfgFile)
	var r map[string]any
	waited := eventually(t, time.Minute, "the run left running is interrupted", func() bool {
		_, r = call(t, "GET", q.url+"/api/v1/runs/"+runID, member.key, "")
		return r["status"] == "interrupted"
	})
	t.Logf("interrupted %v after the restart", waited)
	started, _ := time.Parse(time.RFC3339Nano, r["started_at"].(string))
	ended, _ := time.Parse(time.RFC3339Nano, r["ended_at"].(string))
	deadline, _ := time.Parse(time.RFC3339Nano, r["deadline_at"].(string))
	if !ended.Equal(deadline) || deadline.Sub(started) != 2*time.Second || r["error_code"] != "unavailable" {
		t.Errorf("interrupted run: %v; want ended at its deadline, 2s after its start, error unavailable", r)
	}
	// Her one slot is free: a fast run is admitted and succeeds.
	code, out := call(t, "POST", q.url+"/api/v1/run/"+flowID, member.key, `{"input_value":"hello"}`)
	if code != 200 {
		b, _ := json.Marshal(out)
		t.Fatalf("a run after the restart: %d %s", code, b)
	}
}
