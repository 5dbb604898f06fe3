package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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

// limitsAt reads the limits the instance at url applies to the caller's
// chain, from its /api/v1/usage: "scope dimension/window" → limit.
func limitsAt(t *testing.T, url, key string) (map[string]float64, bool) {
	t.Helper()
	code, body := call(t, "GET", url+"/api/v1/usage", key, "")
	if code != 200 {
		return nil, false
	}
	out := map[string]float64{}
	scopes, _ := body["scopes"].([]any)
	for _, s := range scopes {
		sm := s.(map[string]any)
		dims, _ := sm["dimensions"].([]any)
		for _, d := range dims {
			dm := d.(map[string]any)
			if l, ok := dm["limit"].(float64); ok {
				w, _ := dm["window"].(string)
				out[fmt.Sprint(sm["scope"], " ", dm["dimension"], "/", w)] = l
			}
		}
	}
	return out, true
}

// seesPolicy waits until the instance at url decides on the same limits
// for the caller as the instance at ref (where the policy was applied):
// an instance authenticates a key from the store but decides on its policy
// snapshot, which trails the store by up to the watch interval, and an
// admission there in between is decided without the new limits.
func seesPolicy(t *testing.T, ref, url, key string) {
	t.Helper()
	var want map[string]float64
	eventually(t, patience, "the reference instance shows the caller's limits", func() bool {
		var ok bool
		want, ok = limitsAt(t, ref, key)
		return ok && len(want) > 0
	})
	eventually(t, patience, "instance sees the policy", func() bool {
		got, ok := limitsAt(t, url, key)
		return ok && reflect.DeepEqual(got, want)
	})
}
