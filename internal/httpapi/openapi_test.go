package httpapi

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/gateway"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/run"
)

// TestOpenAPIMatchesTheRoutes: with every optional part on, each route the
// server serves has its words in routeDocs and an operation in
// /openapi.json, and routeDocs names no route the server does not serve.
func TestOpenAPIMatchesTheRoutes(t *testing.T) {
	s := &Server{Runs: &run.Service{}, Files: &files.Service{}, Requests: &policy.Requests{}, Credits: &policy.Credits{},
		Alerts: &alerts.Service{}, Metrics: metrics.New(nil), Gateway: &gateway.Handler{}, Version: "test", Log: slog.New(slog.DiscardHandler)}
	h, served := s.handler()
	var routes []string
	for _, p := range served {
		if strings.Contains(p, " ") {
			routes = append(routes, p)
		}
	}
	slices.Sort(routes)
	if got, want := documented(), routes; !slices.Equal(got, want) {
		for _, r := range want {
			if _, ok := routeDocs[r]; !ok {
				t.Errorf("route %q is served but not in routeDocs (openapi_docs.go)", r)
			}
		}
		for _, d := range got {
			if !slices.Contains(want, d) {
				t.Errorf("routeDocs names %q, which the server does not serve", d)
			}
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/openapi.json", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /openapi.json: %d", rec.Code)
	}
	var doc struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	ops := 0
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		oa, params := openAPIPath(path)
		if oa != "/" {
			oa = strings.TrimSuffix(oa, "/")
		}
		op, ok := doc.Paths[oa][strings.ToLower(method)]
		if !ok {
			t.Errorf("route %s has no operation %s %s in the document", r, method, oa)
			continue
		}
		if op["summary"] == "" || op["summary"] == nil {
			t.Errorf("%s %s has no summary", method, oa)
		}
		if ps, _ := op["parameters"].([]any); len(ps) != len(params) {
			t.Errorf("%s %s: %d path parameters, want %d", method, oa, len(ps), len(params))
		}
	}
	for _, methods := range doc.Paths {
		ops += len(methods)
	}
	t.Logf("%d routes, %d operations on %d paths", len(routes), ops, len(doc.Paths))
	// The generated paths route back to the same patterns on the server.
	if op := doc.Paths["/api/v1/admin/limits/{scope}"]["put"]; op == nil {
		t.Error("the scope wildcard is not a path parameter")
	}
}
