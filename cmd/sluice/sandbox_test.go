package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/sandbox"
)

func init() {
	// Workers started by apps in these tests are this test binary, which
	// acts as sluice with SLUICE_TEST_MAIN=1 (TestMain).
	testWorkerEnv = []string{"SLUICE_TEST_MAIN=1"}
	// Flows with the test component validate here; the workers implement
	// it when sandbox.worker_env enables it.
	flow.Components[sandbox.TypeTestAllocate] = sandbox.TestAllocateComponent
}

const allocFlowJSON = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"alloc","type":"TestAllocate","data":{"mib":16}},{"id":"out","type":"ChatOutput"}],
"edges":[{"source":"in","target":"alloc"},{"source":"alloc","target":"out"}]}`

// sandboxApp starts an app whose workers implement the test component, and
// returns it with a key for alice, whose project caps runs at 128 MiB.
func sandboxApp(t *testing.T, modify func(*config.Config)) (*started, string) {
	t.Helper()
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	cfg.DefaultGlobalRate = "none"
	cfg.Sandbox.WorkerEnv = []string{sandbox.TestComponentsEnv + "=1"}
	if modify != nil {
		modify(&cfg)
	}
	s := start(t, cfg)
	admin := string(cfg.AdminKey)
	aliceKey := applyPolicy(t, s.url, admin, `
tenants:
  - name: acme
    projects: [{name: web, limits: {memory_per_run: 128MiB, run_timeout: 30s}}]
    users:
      - {name: alice, projects: [web]}
`).key
	if code, m := call(t, "POST", s.url+"/api/v1/flows?name=alloc", aliceKey, allocFlowJSON); code != 201 {
		t.Fatalf("upload flow: %d %v", code, m)
	}
	return s, aliceKey
}

func readyz(t *testing.T, url string) map[string]any {
	t.Helper()
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(b, &m)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %d %s", resp.StatusCode, b)
	}
	return m
}

// TestSandboxedRunsThroughTheAPI: a flow run whose project caps memory runs
// in a worker held to the cap: /readyz names the cgroup version, the run
// record has the peak and CPU time, and a run over the cap is a 429 with
// status memory_limit_exceeded while the server carries on.
func TestSandboxedRunsThroughTheAPI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root to create memory cgroups (euid %d); run it as root, as CI does", os.Geteuid())
	}
	s, key := sandboxApp(t, nil)
	ready := readyz(t, s.url)
	mode, _ := ready["sandbox"].(string)
	if mode != "v1" && mode != "v2" {
		t.Fatalf("/readyz sandbox = %q (%v), want v1 or v2: this test needs a writable memory cgroup", mode, ready)
	}
	if checks, _ := ready["checks"].(map[string]any); checks["sandbox"] != "ok" {
		t.Errorf("/readyz checks = %v, want sandbox ok", ready["checks"])
	}

	code, body := call(t, "POST", s.url+"/api/v1/run/alloc", key, `{"input_value":"hi"}`)
	if code != 200 {
		t.Fatalf("16 MiB run under a 128 MiB cap: %d %v", code, body)
	}
	runID, _ := body["run_id"].(string)
	code, rec := call(t, "GET", s.url+"/api/v1/runs/"+runID, key, "")
	if code != 200 || rec["status"] != "succeeded" || rec["memory_enforced"] != true {
		t.Fatalf("run record: %d %v, want succeeded with memory_enforced", code, rec)
	}
	if peak, _ := rec["peak_memory_bytes"].(float64); peak <= 16<<20 {
		t.Errorf("peak_memory_bytes %v, want more than the 16 MiB allocated", rec["peak_memory_bytes"])
	}
	if cpu, _ := rec["cpu_ms"].(float64); cpu <= 0 {
		t.Errorf("cpu_ms %v, want > 0", rec["cpu_ms"])
	}
	// The run's usage event carries its peak memory and CPU time too.
	if err := s.app.recorder.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	events, err := s.app.store.UsageEvents(context.Background(), "", time.Now().Add(-time.Hour), time.Now().Add(time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range events {
		if ev.Kind == "run" && ev.PeakMemory > 16<<20 && ev.CPUMillis > 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("no run usage event with the peak memory and CPU time: %+v", events)
	}

	code, body = call(t, "POST", s.url+"/api/v1/run/alloc", key, `{"input_value":"hi","tweaks":{"alloc":{"mib":1024}}}`)
	e, _ := body["error"].(map[string]any)
	if code != 429 || e["status"] != "memory_limit_exceeded" || e["code"] != "quota_exceeded" || e["node_id"] != "alloc" ||
		!strings.Contains(e["message"].(string), "128 MiB") {
		t.Errorf("1 GiB run under a 128 MiB cap: %d %v, want 429 memory_limit_exceeded at node alloc naming the cap", code, body)
	}
	if resp, err := http.Get(s.url + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("/healthz after the OOM: %v %v", err, resp)
	}
	if code, _ := call(t, "POST", s.url+"/api/v1/run/alloc", key, `{"input_value":"again"}`); code != 200 {
		t.Errorf("a run after the OOM: %d, want 200", code)
	}
}

// TestSandboxWithoutCgroups: with no usable cgroup the server says so in
// its log and /readyz, refuses capped runs with a 503 saying why, or, told
// to, runs them and records memory_enforced false.
func TestSandboxWithoutCgroups(t *testing.T) {
	s, key := sandboxApp(t, func(c *config.Config) { c.Sandbox.CgroupRoot = "/nonexistent/sluice" })
	if mode := readyz(t, s.url)["sandbox"]; mode != "none" {
		t.Errorf("/readyz sandbox = %v, want none", mode)
	}
	if logs := s.logs.String(); !strings.Contains(logs, "memory caps CANNOT be enforced") || !strings.Contains(logs, "/nonexistent/sluice") {
		t.Errorf("the start-up log does not say that memory caps cannot be enforced, and why: %s", logs)
	}
	code, body := call(t, "POST", s.url+"/api/v1/run/alloc", key, `{"input_value":"hi"}`)
	e, _ := body["error"].(map[string]any)
	if code != 503 || e["code"] != "unavailable" || !strings.Contains(e["message"].(string), "cannot enforce memory caps") {
		t.Errorf("capped run without cgroups: %d %v, want 503 unavailable saying memory caps cannot be enforced", code, body)
	}

	s, key = sandboxApp(t, func(c *config.Config) {
		c.Sandbox.CgroupRoot = "/nonexistent/sluice"
		c.Sandbox.Unenforced = config.UnenforcedRun
	})
	code, body = call(t, "POST", s.url+"/api/v1/run/alloc", key, `{"input_value":"hi"}`)
	if code != 200 {
		t.Fatalf("capped run with unenforced: run: %d %v", code, body)
	}
	_, rec := call(t, "GET", s.url+"/api/v1/runs/"+body["run_id"].(string), key, "")
	if rec["status"] != "succeeded" || rec["memory_enforced"] != false {
		t.Errorf("run record %v, want succeeded with memory_enforced false", rec)
	}
	if peak, _ := rec["peak_memory_bytes"].(float64); peak <= 16<<20 {
		t.Errorf("peak_memory_bytes %v, want the worker's max RSS, more than the 16 MiB allocated", rec["peak_memory_bytes"])
	}
}
