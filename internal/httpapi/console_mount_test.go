package httpapi

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestConsoleIsNotInOpenAPI: the console's pages are mounted beside the
// recorded routes, on purpose: they are HTML, not API. The server serves
// them (and GET / redirects to them), and neither the route list the
// OpenAPI document is made from nor the document names them.
func TestConsoleIsNotInOpenAPI(t *testing.T) {
	console := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Console", "yes")
		w.WriteHeader(http.StatusTeapot)
	})
	s := &Server{Console: console, Version: "test", Log: slog.New(slog.DiscardHandler)}
	h, served := s.handler()
	for _, p := range served {
		if strings.Contains(p, "/console") || p == "GET /{$}" || p == "GET /" {
			t.Errorf("route %q is in the OpenAPI route list; the console is not API", p)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/openapi.json", nil))
	if strings.Contains(rec.Body.String(), "/console") {
		t.Error("/openapi.json names a console path")
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/console/keys", nil))
	if rec.Code != http.StatusTeapot || rec.Header().Get("X-Console") != "yes" {
		t.Errorf("GET /console/keys: %d, want the console's answer", rec.Code)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusFound || rec.Header().Get("Location") != "/console/" {
		t.Errorf("GET /: %d to %q, want 302 to /console/", rec.Code, rec.Header().Get("Location"))
	}
	// Without a console, / is the API's 404 as before.
	h = (&Server{Version: "test", Log: slog.New(slog.DiscardHandler)}).Handler()
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("GET / without a console: %d, want 404", rec.Code)
	}
}
