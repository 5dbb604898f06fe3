package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// call sends a JSON request and decodes the JSON answer.
func call(t *testing.T, method, url, key, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(data, &m)
	return resp.StatusCode, m
}

// TestRestartKeepsBudgets: usage settled before a restart still counts
// after it, so a restart never resets anyone's budget.
func TestRestartKeepsBudgets(t *testing.T) {
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	admin := string(cfg.AdminKey)
	s := start(t, cfg)

	aliceKey := applyPolicy(t, s.url, admin, `
tenants:
  - name: acme
    timezone: Asia/Shanghai
    limits: {tokens: 1000/day}
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web]}
`).key

	code, acq := call(t, "POST", s.url+"/api/v1/quota/acquire", aliceKey, `{"tokens":900}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, acq)
	}
	if code, _ := call(t, "POST", s.url+"/api/v1/quota/settle", aliceKey, `{"ticket":"`+acq["ticket"].(string)+`","input_tokens":300,"output_tokens":500}`); code != 200 {
		t.Fatalf("settle: %d", code)
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}

	s2 := start(t, cfg)
	if code, m := call(t, "POST", s2.url+"/api/v1/quota/acquire", aliceKey, `{"tokens":300}`); code != 429 {
		t.Fatalf("after restart, 800 of 1000 used, asking 300: got %d %v, want 429", code, m)
	}
	code, u := call(t, "GET", s2.url+"/api/v1/usage", aliceKey, "")
	if code != 200 {
		t.Fatalf("usage: %d", code)
	}
	b, _ := json.Marshal(u)
	if !bytes.Contains(b, []byte(`"used":800`)) {
		t.Fatalf("usage after restart does not show the 800 tokens used: %s", b)
	}
	if code, _ := call(t, "POST", s2.url+"/api/v1/quota/acquire", aliceKey, `{"tokens":200}`); code != 200 {
		t.Fatalf("the remaining 200 tokens: got %d, want 200", code)
	}
}
