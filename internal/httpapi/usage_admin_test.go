package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// fakeQuarantine lists a fixed quarantine, honouring after and limit.
type fakeQuarantine []usage.Quarantined

func (f fakeQuarantine) UsageQuarantine(ctx context.Context, after string, limit int) ([]usage.Quarantined, error) {
	out := []usage.Quarantined{}
	for _, q := range f {
		if q.ID > after && len(out) < limit {
			out = append(out, q)
		}
	}
	return out, nil
}

func TestUsageQuarantineRoute(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	q := fakeQuarantine{
		{ID: "uq_1", EventID: "tkt_1", TenantID: "ten_a", Event: `{"model":"\"gpt\\x00\""}`, Error: "invalid: SQLSTATE 22021", At: at},
		{ID: "uq_2", EventID: "tkt_2", TenantID: "ten_b", Event: `{}`, Error: "invalid: too long", At: at},
	}
	platform := tenancy.Principal{UserID: "usr_root", Role: tenancy.RolePlatformAdmin}
	tenantAdmin := tenancy.Principal{UserID: "usr_boss", TenantID: "ten_a", Role: tenancy.RoleTenantAdmin}
	for _, c := range []struct {
		name      string
		who       tenancy.Principal
		lister    QuarantineLister
		query     string
		status    int
		wantIDs   []string
		wantNext  string
		wantCode  string
		wantField string
	}{
		{"everything", platform, q, "", 200, []string{"uq_1", "uq_2"}, "", "", ""},
		{"one page", platform, q, "?limit=1", 200, []string{"uq_1"}, "uq_1", "", ""},
		{"next page", platform, q, "?after=uq_1&limit=1", 200, []string{"uq_2"}, "uq_2", "", ""},
		{"empty", platform, fakeQuarantine{}, "", 200, []string{}, "", "", ""},
		{"tenant admin", tenantAdmin, q, "", 403, nil, "", "forbidden", ""},
		{"bad limit", platform, q, "?limit=0", 400, nil, "", "invalid", "limit"},
		{"unknown parameter", platform, q, "?tenant=ten_a", 400, nil, "", "invalid", "tenant"},
		{"no quarantine", platform, nil, "", 404, nil, "", "not_found", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Server{Log: slog.New(slog.DiscardHandler), Quarantine: c.lister}
			mux := newRoutes()
			s.usageAdminRoutes(mux)
			req := httptest.NewRequest("GET", "/api/v1/admin/usage/quarantine"+c.query, nil)
			req = req.WithContext(tenancy.WithPrincipal(req.Context(), c.who))
			rec := httptest.NewRecorder()
			mux.m.ServeHTTP(rec, req)
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != c.status {
				t.Fatalf("status: got %d, want %d (%s)", rec.Code, c.status, body)
			}
			var got struct {
				Items []usage.Quarantined `json:"items"`
				Next  string              `json:"next"`
				Error struct {
					Code  string `json:"code"`
					Field string `json:"field"`
				} `json:"error"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if c.status != 200 {
				if got.Error.Code != c.wantCode || got.Error.Field != c.wantField {
					t.Fatalf("error: got %q field %q, want %q field %q", got.Error.Code, got.Error.Field, c.wantCode, c.wantField)
				}
				return
			}
			ids := []string{}
			for _, it := range got.Items {
				ids = append(ids, it.ID)
				if it.EventID == "" || it.Error == "" || it.Event == "" || !it.At.Equal(at) {
					t.Errorf("item %s: got %+v, want event id, event, error and time", it.ID, it)
				}
			}
			if len(ids) != len(c.wantIDs) || (len(ids) > 0 && ids[0] != c.wantIDs[0]) || got.Next != c.wantNext {
				t.Fatalf("page: got %v next %q, want %v next %q", ids, got.Next, c.wantIDs, c.wantNext)
			}
		})
	}
}
