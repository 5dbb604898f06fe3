package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/policy"
)

// TestPoolGuaranteeAcrossInstances: a department of 4 slots in which
// project web (alice) is guaranteed 2 and project lab (bob) has none, on
// three instances over one Redis, with the script engine and with the
// lease engine. Bob, asking on every instance, gets only the shared 2 and
// is told whose shared part is used up; alice still gets her 2; nobody
// gets a fifth.
func TestPoolGuaranteeAcrossInstances(t *testing.T) {
	t.Run("script", func(t *testing.T) { testPoolGuarantee(t, nil) })
	t.Run("lease", func(t *testing.T) { testPoolGuarantee(t, leaseEngine) })
}

func testPoolGuarantee(t *testing.T, engine func(*config.Config)) {
	c := startClusterWith(t, `
tenants:
  - name: acme
    departments:
      - name: research
        limits: {concurrency: 4}
        projects: [{name: web}, {name: lab}]
    users:
      - {name: alice, projects: [web]}
      - {name: bob, projects: [lab]}
`, time.Second, engine)
	url := c.apps[0].url
	ids := map[string]map[string]any{}
	_, projects := call(t, "GET", url+"/api/v1/admin/projects", c.admin, "")
	for _, p := range projects["items"].([]any) {
		m := p.(map[string]any)
		ids["project "+m["name"].(string)] = m
	}
	_, users := call(t, "GET", url+"/api/v1/admin/users", c.admin, "")
	for _, u := range users["items"].([]any) {
		m := u.(map[string]any)
		ids["user "+m["name"].(string)] = m
	}
	web, lab, bob := ids["project web"]["id"].(string), ids["project lab"]["id"].(string), ids["user bob"]["id"].(string)
	dept := "department/" + ids["project web"]["department_id"].(string)
	code, key := call(t, "POST", url+"/api/v1/admin/keys", c.admin, `{"user_id":"`+bob+`","project_id":"`+lab+`"}`)
	if code != 201 {
		t.Fatalf("bob's key: %d %v", code, key)
	}
	bobKey := key["secret"].(string)

	// Guarantees are checked: not more than the pool holds.
	if code, m := call(t, "PUT", url+"/api/v1/admin/limits/project/"+web, c.admin, `{"guaranteed":{"concurrency":5}}`); code != 400 || errBody(m)["field"] != "guaranteed.concurrency" {
		t.Fatalf("a guarantee above the pool: %d %v, want 400 naming guaranteed.concurrency", code, m)
	}
	if code, out, errOut := cli(t, url, c.admin, "limits", "set", "project/"+web, "--guaranteed", `{"concurrency":2}`); code != 0 {
		t.Fatalf("sluice limits set --guaranteed: %d %s %s", code, out, errOut)
	}
	for i, a := range c.apps {
		eventually(t, patience, fmt.Sprintf("instance %d sees the pool", i), func() bool {
			_ = a.app.policy.Manager().Reload(context.Background())
			return a.app.policy.Manager().Current().IsPool(dept)
		})
	}

	acquire := func(i int, key string) (int, map[string]any) {
		t.Helper()
		return call(t, "POST", c.apps[i%3].url+"/api/v1/quota/acquire", key, `{"concurrency":true,"requests":0,"ttl_seconds":600}`)
	}
	lease := engine != nil
	// take admits a slot on instance i. With the lease engine a slot
	// another instance leased and does not use comes back within its idle
	// interval, as for any limit: until then this instance may be refused.
	take := func(i int, key, what string) {
		t.Helper()
		if !lease {
			if code, m := acquire(i, key); code != 200 {
				t.Fatalf("%s: %d %v", what, code, m)
			}
			return
		}
		eventually(t, patience, what, func() bool {
			code, m := acquire(i, key)
			if code != 200 && code != 429 {
				t.Fatalf("%s: %d %v", what, code, m)
			}
			return code == 200
		})
	}
	refusedShared := func(i int, key, what string) {
		t.Helper()
		code, m := acquire(i, key)
		e := errBody(m)
		msg, _ := e["message"].(string)
		if code != 429 || e["scope"] != dept || e["part"] != "shared" ||
			!strings.Contains(msg, "the shared part of department research is used up") || !strings.Contains(msg, "ask an admin of acme") {
			t.Fatalf("%s on instance %d: %d %v, want 429 at the shared part of %s", what, i, code, m, dept)
		}
	}
	// Bob, on two instances: the shared part.
	for i := range 2 {
		take(i, bobKey, fmt.Sprintf("bob's slot %d", i+1))
	}
	// With alice idle, no more for bob, on any instance. (With the lease
	// engine this once left, on each refusing instance, the department
	// slot the refused acquire had leased: alice was then refused "4 of
	// 4" below with 2 in use.)
	for i := range 3 {
		refusedShared(i, bobKey, "bob's third slot")
	}
	// Alice's guarantee holds on the other instances; the pool is then
	// full and all that is left is refused at its shared part.
	for i := range 2 {
		take(i+1, c.key, fmt.Sprintf("alice's guaranteed slot %d", i+1))
	}
	for i := range 3 {
		refusedShared(i, bobKey, "bob's third slot")
		refusedShared(i, c.key, "alice's third slot")
	}

	// Her usage page shows the pool's shared part and her guarantee.
	_, u := call(t, "GET", c.apps[2].url+"/api/v1/usage", c.key, "")
	seen := map[string]string{}
	for _, s := range u["scopes"].([]any) {
		sm := s.(map[string]any)
		for _, d := range sm["dimensions"].([]any) {
			if dm := d.(map[string]any); dm["dimension"] == "concurrency" {
				kind, _ := sm["kind"].(string)
				seen[sm["scope"].(string)] = fmt.Sprintf("%s %v/%v", kind, dm["used"], dm["limit"])
			}
		}
	}
	want := map[string]string{dept + policy.BorrowSuffix: "pool_shared 2/2", "project/" + web + policy.GuaranteedSuffix: "guaranteed 2/2", dept: " 4/4"}
	for k, v := range want {
		got := seen[k]
		if lease {
			// Use counts slots leased to instances: only the kinds.
			got, _, _ = strings.Cut(got, " ")
			v, _, _ = strings.Cut(v, " ")
		}
		if _, ok := seen[k]; !ok || got != v {
			t.Fatalf("usage of %s: %q, want %q (all: %v)", k, seen[k], v, seen)
		}
	}
}

// errBody is the error object of an error answer.
func errBody(m map[string]any) map[string]any {
	e, _ := m["error"].(map[string]any)
	return e
}
