// Package httpapi is Sluice's REST API: routing, authentication by API key,
// request ids and logs, strict JSON decoding and the one error shape.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/gateway"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/whatif"
)

// Server serves the API.
type Server struct {
	// Version is reported by /healthz.
	Version string
	Tenancy *tenancy.Service
	Policy  *policy.Service
	Meter   *metering.Meter
	Runs    *run.Service
	// Files, when set with Runs, serves LangFlow's file routes on the
	// projects' file storage.
	Files        *files.Service
	Log          *slog.Logger
	MaxBodyBytes int64
	// Settle bounds what a settle may report; nil is DefaultSettleBounds.
	Settle *SettleBounds
	// Ready reports whether the server can serve (store reachable, …).
	Ready func(ctx context.Context) map[string]error
	// Mode reports the quota engine's mode for /readyz: normal, degraded,
	// read_only.
	Mode func() string
	// Sandbox reports for /readyz how memory caps are enforced: v2, v1
	// (cgroup versions) or none.
	Sandbox func() string
	// Metrics, when set, records requests and serves /metrics.
	Metrics *metrics.Metrics
	// Quarantine, when set, lists refused usage events to platform admins.
	Quarantine QuarantineLister
	// Gateway, when set, serves the OpenAI-compatible API under /v1/
	// (it authenticates its callers itself, with OpenAI's error shape).
	Gateway http.Handler
	// Front, when set, serves LangFlow's run, webhook, build, flow and file
	// routes (FrontPaths) by governing an upstream LangFlow, instead of
	// Sluice's own flow runtime. It authenticates its callers itself.
	Front      http.Handler
	FrontPaths []string
	// Alerts, when set, serves the alert webhooks and delivery log.
	Alerts *alerts.Service

	// Requests, when set, serves quota requests (/api/v1/quota-requests).
	Requests *policy.Requests
	// Credits, when set, serves prepaid credit (/api/v1/credits, …).
	Credits *policy.Credits
	// WhatIf bounds policy what-if replays (zero: whatif's defaults).
	WhatIf whatif.Options

	// Console, when set, serves the web console's HTML pages under
	// /console/ and GET / redirects there. They are pages, not API: they
	// are mounted beside the recorded routes, so the OpenAPI document
	// leaves them out (TestConsoleIsNotInOpenAPI).
	Console http.Handler
}

// Handler returns the API's root handler.
func (s *Server) Handler() http.Handler {
	h, _ := s.handler()
	return h
}

// handler builds the root handler and lists the routes it serves (method
// and pattern, as registered): the OpenAPI document's source.
func (s *Server) handler() (http.Handler, []string) {
	mux := newRoutes()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics.Handler())
	}

	api := newRoutes()
	api.HandleFunc("GET /api/v1/me", s.me)
	s.tenancyRoutes(api)
	s.quotaRoutes(api)
	s.policyRoutes(api)
	s.policyDocRoutes(api)
	s.runRoutes(api)
	s.fileRoutes(api)
	s.usageAdminRoutes(api)
	s.historyRoutes(api)
	s.alertRoutes(api)
	s.requestRoutes(api)
	s.creditRoutes(api)
	s.whatIfRoutes(api)
	// Not routes: the answers for paths no route serves.
	api.m.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.Log, errs.E(errs.NotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	mux.m.Handle("/api/", s.authenticate(api.m))
	served := append(slices.Clone(mux.patterns), api.patterns...)
	if s.Gateway != nil {
		mux.m.Handle("/v1/", s.Gateway)
		if g, ok := s.Gateway.(interface{ Routes(gateway.Mux) }); ok {
			gw := newRoutes()
			g.Routes(gw)
			served = append(served, gw.patterns...)
		}
	}
	if s.Front != nil {
		// LangFlow's own API, proxied: docs/langflow-front.md, not Sluice's
		// OpenAPI document.
		for _, p := range s.FrontPaths {
			mux.m.Handle(p, s.Front)
		}
	}
	if s.Console != nil {
		mux.m.Handle("/console/", s.Console)
		mux.m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/console/", http.StatusFound)
		})
	}
	served = append(served, "GET /openapi.json")
	doc := s.openAPI(served)
	mux.m.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	})
	mux.m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.Log, errs.E(errs.NotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.withRequestLog(mux.m), served
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": s.Version})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	checks := map[string]string{}
	status := http.StatusOK
	if s.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		for name, err := range s.Ready(ctx) {
			if err != nil {
				checks[name] = "unavailable"
				status = http.StatusServiceUnavailable
				s.Log.LogAttrs(r.Context(), slog.LevelWarn, "readiness check failed", slog.String("check", name), slog.String("error", err.Error()))
				continue
			}
			checks[name] = "ok"
		}
	}
	body := map[string]any{"status": "ready", "checks": checks}
	if s.Mode != nil {
		body["mode"] = s.Mode()
	}
	if s.Sandbox != nil {
		body["sandbox"] = s.Sandbox()
	}
	if status != http.StatusOK {
		body["status"] = "unavailable"
	}
	writeJSON(w, status, body)
}

func (s *Server) me(w http.ResponseWriter, r *http.Request) {
	p, _ := tenancy.PrincipalFrom(r.Context())
	writeJSON(w, http.StatusOK, p)
}

// ---- middleware ----

type ctxKey int

const requestIDKey ctxKey = iota

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "req_" + hex.EncodeToString(b[:])
}

// validRequestID accepts a caller's X-Request-Id only if it is short and
// plain, so that it cannot forge log lines.
func validRequestID(v string) bool {
	if v == "" || len(v) > 64 {
		return false
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// statusWriter remembers the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Flush lets streaming handlers flush through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withRequestLog assigns a request id, recovers panics into 500s and logs
// one line per request. It logs the path, never headers or bodies, so keys
// stay out of the logs.
func (s *Server) withRequestLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid := r.Header.Get("X-Request-Id")
		if !validRequestID(rid) {
			rid = newRequestID()
		}
		w.Header().Set("X-Request-Id", rid)
		sw := &statusWriter{ResponseWriter: w}
		info := &requestInfo{}
		ctx := context.WithValue(r.Context(), requestIDKey, rid)
		ctx = context.WithValue(ctx, requestInfoKey{}, info)
		r = r.WithContext(ctx)
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.Log.LogAttrs(ctx, slog.LevelError, "panic serving request", slog.String("request_id", rid), slog.Any("panic", v))
				if sw.status == 0 {
					writeError(sw, r, s.Log, errs.E(errs.Internal, "internal error"))
				}
			}
			attrs := []slog.Attr{
				slog.String("request_id", rid),
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", sw.status),
				slog.Int64("bytes", sw.bytes),
				slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			}
			if info.principal.UserID != "" {
				attrs = append(attrs, slog.String("tenant", info.principal.TenantID), slog.String("user", info.principal.UserID),
					slog.String("key", info.principal.KeyID))
			}
			s.Log.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
			if s.Metrics != nil {
				route := info.route
				if route == "" {
					route = r.Pattern
				}
				s.Metrics.ObserveHTTP(route, sw.status, time.Since(start))
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

// requestInfo lets inner handlers tell the request log who called.
type requestInfo struct {
	principal tenancy.Principal
	route     string // the matched pattern of the API mux
}

type requestInfoKey struct{}

// apiKey reads the caller's key from Authorization: Bearer or x-api-key.
func apiKey(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if k, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(k)
		}
		if k, ok := strings.CutPrefix(h, "bearer "); ok {
			return strings.TrimSpace(k)
		}
	}
	return strings.TrimSpace(r.Header.Get("X-Api-Key"))
}

// authenticate resolves the caller's key on every request, so a revoked or
// expired key is refused at once.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.Tenancy.Authenticate(r.Context(), apiKey(r))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		info, _ := r.Context().Value(requestInfoKey{}).(*requestInfo)
		if info != nil {
			info.principal = p
		}
		inner := r.WithContext(tenancy.WithPrincipal(r.Context(), p))
		next.ServeHTTP(w, inner)
		if info != nil {
			info.route = inner.Pattern
		}
	})
}
