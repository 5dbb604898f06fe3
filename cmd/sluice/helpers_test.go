package main

import (
	"os"
	"path/filepath"
	"testing"
)

// alice is the member the tests' policies define: user alice, working in
// project web, with a key.
type alice struct {
	userID, tenantID, keyID, key string
}

// applyPolicy applies policy through `sluice apply` against url and gives
// its user alice a key in her project web.
func applyPolicy(t *testing.T, url, admin, policy string) alice {
	t.Helper()
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := cli(t, url, admin, "apply", "-f", f); code != 0 {
		t.Fatalf("apply: %d %s %s", code, out, errOut)
	}
	var a alice
	_, users := call(t, "GET", url+"/api/v1/admin/users", admin, "")
	for _, u := range users["items"].([]any) {
		if m := u.(map[string]any); m["name"] == "alice" {
			a.userID = m["id"].(string)
			a.tenantID, _ = m["tenant_id"].(string)
		}
	}
	web := ""
	_, projects := call(t, "GET", url+"/api/v1/admin/projects", admin, "")
	for _, p := range projects["items"].([]any) {
		if m := p.(map[string]any); m["name"] == "web" {
			web = m["id"].(string)
		}
	}
	if a.userID == "" || web == "" {
		t.Fatalf("the policy must define user alice in project web: users %v, projects %v", users, projects)
	}
	code, key := call(t, "POST", url+"/api/v1/admin/keys", admin, `{"user_id":"`+a.userID+`","project_id":"`+web+`"}`)
	if code != 201 {
		t.Fatalf("key for alice: %d %v", code, key)
	}
	a.keyID, a.key = key["id"].(string), key["secret"].(string)
	return a
}
