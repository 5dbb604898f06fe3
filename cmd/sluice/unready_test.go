package main

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

// TestSandboxUnready: with no usable cgroup, sandbox.unenforced: unready
// makes /readyz answer 503 with the sandbox check failing (an orchestrator
// then sends the server no traffic) and refuses capped runs; refuse, the
// default, keeps the server ready.
func TestSandboxUnready(t *testing.T) {
	tests := []struct {
		unenforced string
		wantCode   int
		wantCheck  string
	}{
		{config.UnenforcedUnready, http.StatusServiceUnavailable, "unavailable"},
		{config.UnenforcedRefuse, http.StatusOK, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.unenforced, func(t *testing.T) {
			s, key := sandboxApp(t, func(c *config.Config) {
				c.Sandbox.CgroupRoot = "/nonexistent/sluice"
				c.Sandbox.Unenforced = tt.unenforced
			})
			resp, err := http.Get(s.url + "/readyz")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Status  string            `json:"status"`
				Sandbox string            `json:"sandbox"`
				Checks  map[string]string `json:"checks"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantCode || body.Checks["sandbox"] != tt.wantCheck || body.Sandbox != "none" {
				t.Errorf("/readyz: got %d %+v, want %d with sandbox none and check %s", resp.StatusCode, body, tt.wantCode, tt.wantCheck)
			}
			if code, m := call(t, "POST", s.url+"/api/v1/run/alloc", key, `{"input_value":"hi"}`); code != http.StatusServiceUnavailable {
				t.Errorf("capped run: got %d %v, want 503", code, m)
			}
		})
	}
}
