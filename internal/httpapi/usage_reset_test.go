package httpapi_test

import (
	"testing"
	"time"
)

// TestUsageShowsResetBeforeAnyUse: a budget nothing has used yet still
// says when its window resets — the end of the day and of the month in the
// tenant's time zone (Europe/Berlin here), for the user's scope too, whose
// tenant the policy does not hold.
func TestUsageShowsResetBeforeAnyUse(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"tokens": []string{"1000/day", "30000/month"}}})
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now().In(berlin)
	want := map[string]time.Time{
		"day":   time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, berlin),
		"month": time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, berlin),
	}
	u := e.must(200, w.memberKey, "GET", "/api/v1/usage", nil)
	seen := 0
	for _, s := range u.body["scopes"].([]any) {
		sm := s.(map[string]any)
		if sm["scope"] != "user/"+w.member {
			continue
		}
		for _, d := range sm["dimensions"].([]any) {
			dm := d.(map[string]any)
			if dm["dimension"] != "tokens" {
				continue
			}
			win := dm["window"].(string)
			raw, _ := dm["reset_at"].(string)
			got, err := time.Parse(time.RFC3339Nano, raw)
			if err != nil || !got.Equal(want[win]) {
				t.Errorf("tokens/%s reset_at %q, want %s (the tenant's next %s)", win, raw, want[win], win)
			}
			seen++
		}
	}
	if seen != 2 {
		t.Fatalf("the user's scope shows %d token budgets, want 2: %s", seen, u.raw)
	}
}
