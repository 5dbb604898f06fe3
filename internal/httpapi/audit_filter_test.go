package httpapi_test

import (
	"net/url"
	"testing"
	"time"
)

// TestAuditFilters: the audit log filters by actor, action (exact or a
// prefix), object and time, in the store, together with the tenant's own
// scoping; a bad time names its parameter.
func TestAuditFilters(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"concurrency": 2}})
	e.must(200, w.adminKey, "PUT", "/api/v1/admin/limits/project/"+w.project, map[string]any{"limits": map[string]any{"concurrency": 5}})
	k := e.must(201, w.adminKey, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other}).str("id")

	list := func(q url.Values) []map[string]any {
		t.Helper()
		q.Set("limit", "1000")
		return e.must(200, w.adminKey, "GET", "/api/v1/admin/audit?"+q.Encode(), nil).items()
	}
	all := list(url.Values{})
	byAdmin := list(url.Values{"actor": {w.admin}})
	if len(byAdmin) != 3 {
		t.Fatalf("entries by the tenant admin: %d, want 3 (two limits, one key): %v", len(byAdmin), byAdmin)
	}
	if len(all) <= len(byAdmin) {
		t.Fatalf("all %d entries vs %d by the admin: the platform admin's set-up is missing", len(all), len(byAdmin))
	}
	for _, c := range []struct {
		q    url.Values
		want int
	}{
		{url.Values{"actor": {w.admin}, "action": {"limits.set"}}, 2},
		{url.Values{"actor": {w.admin}, "action": {"limits."}}, 2},
		{url.Values{"actor": {w.admin}, "action": {"limits*"}}, 2},
		{url.Values{"actor": {w.admin}, "action": {"limits"}}, 0}, // exact: no such action
		{url.Values{"object_id": {k}}, 1},
		{url.Values{"actor": {w.admin}, "object_kind": {"key"}}, 1},
		{url.Values{"actor": {w.admin}, "since": {e.clock.Now().Add(time.Hour).UTC().Format(time.RFC3339)}}, 0},
		{url.Values{"actor": {w.admin}, "until": {e.clock.Now().Add(time.Hour).UTC().Format(time.RFC3339)}}, 3},
	} {
		if got := list(c.q); len(got) != c.want {
			t.Errorf("%s: %d entries, want %d: %v", c.q.Encode(), len(got), c.want, got)
		}
	}
	if r := e.do(w.adminKey, "GET", "/api/v1/admin/audit?since=yesterday", nil); r.status != 400 || r.errField() != "since" {
		t.Errorf("since=yesterday: %d %s, want 400 naming since", r.status, r.raw)
	}
	if r := e.do(w.adminKey, "GET", "/api/v1/admin/audit?actorr=x", nil); r.status != 400 || r.errField() != "actorr" {
		t.Errorf("a typo: %d %s, want 400 naming actorr", r.status, r.raw)
	}
	// Another tenant's admin sees none of acme's, whatever the filter.
	other := e.makeWorld("globex")
	if got := e.must(200, other.adminKey, "GET", "/api/v1/admin/audit?actor="+w.admin, nil).items(); len(got) != 0 {
		t.Errorf("globex's admin filtering by acme's admin: %d entries, want 0", len(got))
	}
}
