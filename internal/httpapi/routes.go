package httpapi

import "net/http"

// routes is a ServeMux that remembers the patterns registered on it, so
// that the OpenAPI document is generated from the routes the server
// really serves (openapi.go).
type routes struct {
	m        *http.ServeMux
	patterns []string
}

func newRoutes() *routes { return &routes{m: http.NewServeMux()} }

// HandleFunc registers handler for pattern, as http.ServeMux does.
func (r *routes) HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request)) {
	r.m.HandleFunc(pattern, handler)
	r.patterns = append(r.patterns, pattern)
}

// Handle registers h for pattern, as http.ServeMux does.
func (r *routes) Handle(pattern string, h http.Handler) {
	r.m.Handle(pattern, h)
	r.patterns = append(r.patterns, pattern)
}
