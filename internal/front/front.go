// Package front governs an existing LangFlow server: Sluice stands in front
// of LangFlow's API, authenticates callers with their Sluice keys, admits
// each run through the governed-call pipeline (a request, a concurrency
// slot held until the answer or stream ends or the caller leaves, the
// chain's run timeout), forwards it with the LangFlow key Sluice holds,
// relays answers and streams unbuffered, records the usage LangFlow
// reports, and refuses the endpoints that would let a caller run code or
// skip authentication on the LangFlow server. Flows, custom components
// and third-party integrations stay in LangFlow, unmoved.
package front

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Authenticator resolves a Sluice key (*tenancy.Service).
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (tenancy.Principal, error)
}

// KeyResolver returns the upstream key held for a user or their project
// ("" when none is): *tenancy.Service.
type KeyResolver interface {
	ForwardKey(ctx context.Context, service, tenantID, userID, projectID string) (string, error)
}

// fwdKey carries the LangFlow key a request forwards with.
type fwdKey struct{}

// Handler is the front.
type Handler struct {
	// Upstream is the LangFlow server's base URL (http://langflow:7860).
	Upstream *url.URL
	// Key is the LangFlow API key Sluice forwards with; callers never see
	// it nor send their own.
	Key llm.Secret
	// Keys, when set, holds the LangFlow keys of users and projects: a
	// caller's call forwards with their own key, else their project's,
	// else Key, so LangFlow attributes each run to a person.
	Keys KeyResolver
	Auth Authenticator
	Gate *gate.Gate
	Log  *slog.Logger
	// CodeTenants lists the tenants whose callers may use the endpoints
	// that run code on the LangFlow server (validate/code, custom
	// components, flow create and update). Everyone else is refused.
	CodeTenants []string
	// ChargeReportedUsage charges the tokens LangFlow reports for a run to
	// the caller's token budgets. Off when LangFlow's model components
	// call Sluice's /v1 (their tokens are metered there, exactly).
	ChargeReportedUsage bool
	// Transport reaches the upstream (nil: a shared one).
	Transport http.RoundTripper

	once  sync.Once
	proxy *httputil.ReverseProxy
	jobs  jobs
}

// Paths the front serves, for the server's mux.
var Paths = []string{
	"/api/v1/run/", "/api/v1/webhook/", "/api/v1/build/", "/api/v1/build_public_tmp/",
	"/api/v1/flows/", "/api/v1/flows", "/api/v1/files/", "/api/v2/files/", "/api/v2/files",
	"/api/v1/validate/", "/api/v1/custom_component", "/api/v1/custom_component/", "/api/v1/auto_login",
}

// ctxKey carries a request's slot to the proxy's hooks.
type ctxKey struct{}

type proxied struct {
	slot  *Slot
	track *usageTracker
	job   bool // a build: its slot is kept for the job's events
}

// Slot is the admission a proxied run holds.
type Slot = gate.Slot

func (h *Handler) init() {
	h.once.Do(func() {
		tr := h.Transport
		if tr == nil {
			tr = http.DefaultTransport
		}
		h.proxy = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(h.Upstream)
				pr.Out.Host = h.Upstream.Host
				// The caller's Sluice key goes no further; LangFlow gets
				// the key Sluice holds.
				pr.Out.Header.Del("Authorization")
				pr.Out.Header.Del("X-Api-Key")
				q := pr.Out.URL.Query()
				if q.Has("x-api-key") {
					q.Del("x-api-key")
					pr.Out.URL.RawQuery = q.Encode()
				}
				if k := h.keyFor(pr.In.Context()); k != "" {
					pr.Out.Header.Set("X-Api-Key", k)
				}
				pr.SetXForwarded()
				if pr.Out.Body != nil {
					pr.Out.Body = &untilEOF{ReadCloser: pr.Out.Body}
				}
			},
			FlushInterval:  -1, // streams pass through as they come
			Transport:      tr,
			ErrorLog:       slog.NewLogLogger(h.Log.Handler(), slog.LevelWarn), // an answer cut on its way, in Sluice's log
			ModifyResponse: h.modifyResponse,
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				if errors.Is(r.Context().Err(), context.DeadlineExceeded) {
					px, _ := r.Context().Value(ctxKey{}).(*proxied)
					limit := ""
					if px != nil {
						limit = " of " + px.slot.Timeout.String()
					}
					writeDetail(w, errs.E(errs.Unavailable, "the run passed its run_timeout%s and was stopped", limit), http.StatusGatewayTimeout)
					return
				}
				if r.Context().Err() != nil {
					return // the caller left: nothing to say
				}
				h.Log.LogAttrs(r.Context(), slog.LevelWarn, "langflow front: upstream failed", slog.String("error", err.Error()))
				writeDetail(w, errs.E(errs.Unavailable, "the LangFlow server is unavailable"), http.StatusBadGateway)
			},
		}
	})
}

// ServeHTTP serves one request of LangFlow's API.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.init()
	p, err := h.Auth.Authenticate(r.Context(), callerKey(r))
	if err != nil {
		writeDetail(w, err)
		return
	}
	if why := refused(r); why != "" && !h.codeAllowed(p.TenantID) {
		writeDetail(w, errs.E(errs.Forbidden, "%s is refused through Sluice: %s. An admin can allow it for a tenant (langflow_code_tenants)", r.URL.Path, why))
		return
	}
	if h.Keys != nil {
		k, err := h.Keys.ForwardKey(r.Context(), tenancy.ServiceLangflow, p.TenantID, p.UserID, p.ProjectID)
		if err != nil {
			// Never forward under another identity than the one held for
			// the caller: the call fails until the key is set again.
			h.Log.LogAttrs(r.Context(), slog.LevelError, "langflow front: the caller's LangFlow key cannot be used",
				slog.String("tenant", p.TenantID), slog.String("user", p.UserID), slog.String("error", err.Error()))
			writeDetail(w, err)
			return
		}
		if k != "" {
			r = r.WithContext(context.WithValue(r.Context(), fwdKey{}, k))
		}
	}
	who := metering.Who{TenantID: p.TenantID, UserID: p.UserID, ProjectID: p.ProjectID, KeyID: p.KeyID}
	switch kind := governed(r); kind {
	case "":
		if job := buildEvents(r); job != "" {
			h.serveEvents(w, r, job)
			return
		}
		h.proxy.ServeHTTP(w, r)
	default:
		h.serveRun(w, r, who, kind)
	}
}

// serveRun admits a run, proxies it under the run's timeout, and releases
// the slot with the usage LangFlow reported when the answer ends (or, for
// a build, when its job's events end).
func (h *Handler) serveRun(w http.ResponseWriter, r *http.Request, who metering.Who, kind string) {
	slot, err := h.Gate.Admit(r.Context(), who, kind)
	if err != nil {
		writeDetail(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), slot.Timeout)
	defer cancel()
	px := &proxied{slot: slot, track: &usageTracker{}, job: kind == "langflow_build"}
	ctx = context.WithValue(ctx, ctxKey{}, px)
	if px.job {
		// The build's slot outlives this request: the job runs on in
		// LangFlow until its events end.
		ctx = context.WithValue(context.WithoutCancel(ctx), ctxKey{}, px)
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, time.Minute)
		defer c2()
	}
	// Deferred: the proxy panics with http.ErrAbortHandler when the caller
	// leaves mid-answer, and the slot must be given back all the same.
	defer func() {
		if px.job && px.track.jobID != "" {
			key := h.keyFor(r.Context())
			h.jobs.hold(px.track.jobID, slot, func(u quota.Usage) { h.release(r.Context(), slot, u) },
				func(job string) { h.cancelJob(job, key) })
			return
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil {
			h.Log.LogAttrs(r.Context(), slog.LevelWarn, "langflow front: run stopped at its run_timeout",
				slog.String("tenant", who.TenantID), slog.String("user", who.UserID), slog.Duration("run_timeout", slot.Timeout))
		}
		h.release(r.Context(), slot, px.track.usage())
	}()
	h.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// untilEOF is the caller's request body as the transport reads it to
// LangFlow: once the body has ended, it answers io.EOF itself instead of
// reading the caller's body again. Having sent a body's Content-Length,
// http.Transport reads it once more to check it was no longer than
// declared; but the server closes a request's body when the answer
// starts (an HTTP/1 handler may not read its request once it has begun
// to answer), and LangFlow answers a stream at once. When that last read
// came after the first event had been relayed, it failed (invalid Read on
// closed Body), and the transport closed the connection the answer was
// still coming on: the caller's stream was cut and its slot freed while
// LangFlow ran on (golang.org/issue/40747).
type untilEOF struct {
	io.ReadCloser
	ended bool // read only by the transport's one writing goroutine
}

func (b *untilEOF) Read(p []byte) (int, error) {
	if b.ended {
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.ended = true
	}
	return n, err
}

// keyFor is the LangFlow key a request forwards with: the one held for
// its caller, else the server's.
func (h *Handler) keyFor(ctx context.Context) string {
	if k, _ := ctx.Value(fwdKey{}).(string); k != "" {
		return k
	}
	return h.Key.Reveal()
}

// cancelJob asks LangFlow to stop a build job whose run timeout passed,
// with the key the build was started with.
func (h *Handler) cancelJob(job, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := h.Upstream.JoinPath("/api/v1/build", job, "cancel")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return
	}
	if key != "" {
		req.Header.Set("X-Api-Key", key)
	}
	tr := h.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		h.Log.LogAttrs(ctx, slog.LevelWarn, "langflow front: cancelling a build past its run_timeout failed", slog.String("job", job), slog.String("error", err.Error()))
		return
	}
	resp.Body.Close()
	h.Log.LogAttrs(ctx, slog.LevelWarn, "langflow front: build job stopped at its run_timeout", slog.String("job", job), slog.Int("status", resp.StatusCode))
}

// release gives a run's slot back, recording the usage LangFlow reported.
func (h *Handler) release(ctx context.Context, slot *Slot, u quota.Usage) {
	if !h.ChargeReportedUsage {
		u = quota.Usage{} // metered where LangFlow's models called Sluice's /v1
	}
	err := slot.ReleaseUsed(ctx, u, nil)
	if err != nil {
		h.Log.LogAttrs(ctx, slog.LevelError, "langflow front: releasing a run's slot failed", slog.String("error", err.Error()))
	}
}

// modifyResponse watches a governed answer for the usage LangFlow reports
// and a build's job id.
func (h *Handler) modifyResponse(resp *http.Response) error {
	px, _ := resp.Request.Context().Value(ctxKey{}).(*proxied)
	if px == nil || resp.StatusCode >= 300 {
		return nil
	}
	resp.Body = px.track.wrap(resp.Body)
	return nil
}

// serveEvents relays a build job's events and releases the build's slot
// when they end.
func (h *Handler) serveEvents(w http.ResponseWriter, r *http.Request, job string) {
	slot, release := h.jobs.take(job)
	if slot == nil {
		h.proxy.ServeHTTP(w, r)
		return
	}
	px := &proxied{slot: slot, track: &usageTracker{}}
	ctx, cancel := context.WithTimeout(r.Context(), slot.Timeout)
	defer cancel()
	defer func() { release(px.track.usage()) }() // also when the proxy aborts
	h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, ctxKey{}, px)))
}

func (h *Handler) codeAllowed(tenantID string) bool {
	for _, t := range h.CodeTenants {
		if t == tenantID && t != "" {
			return true
		}
	}
	return false
}

// callerKey reads the caller's Sluice key where LangFlow accepts its own:
// x-api-key, Authorization: Bearer, or ?x-api-key=.
func callerKey(r *http.Request) string {
	if v := r.Header.Get("X-Api-Key"); v != "" {
		return strings.TrimSpace(v)
	}
	if v := r.Header.Get("Authorization"); len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return r.URL.Query().Get("x-api-key")
}

// governed names the kind of run a request starts, "" for one that starts
// none (reads, uploads, a build's events).
func governed(r *http.Request) string {
	p := r.URL.Path
	switch {
	case r.Method != http.MethodPost:
		return ""
	case strings.HasPrefix(p, "/api/v1/run/"):
		return "langflow_run"
	case strings.HasPrefix(p, "/api/v1/webhook/"):
		return "langflow_webhook"
	case strings.HasPrefix(p, "/api/v1/build/") && strings.HasSuffix(p, "/flow"):
		return "langflow_build"
	}
	return ""
}

// buildEvents returns the job id of a build's events stream.
func buildEvents(r *http.Request) string {
	rest, ok := strings.CutPrefix(r.URL.Path, "/api/v1/build/")
	if !ok || r.Method != http.MethodGet {
		return ""
	}
	job, ok := strings.CutSuffix(rest, "/events")
	if !ok || strings.Contains(job, "/") {
		return ""
	}
	return job
}

// refused says why a request would let its caller run code or skip
// authentication on the LangFlow server ("" when it would not).
func refused(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/api/v1/validate/"):
		return "it runs the code it is given on the LangFlow server"
	case p == "/api/v1/custom_component" || strings.HasPrefix(p, "/api/v1/custom_component/"):
		return "it builds a component from the code it is given"
	case strings.HasPrefix(p, "/api/v1/build_public_tmp/"):
		return "it runs a public flow without authentication"
	case p == "/api/v1/auto_login":
		return "it logs in without a key"
	case (p == "/api/v1/flows" || strings.HasPrefix(p, "/api/v1/flows/")) && r.Method != http.MethodGet && r.Method != http.MethodHead:
		return "a flow written through it carries component code that LangFlow runs"
	}
	return ""
}

// writeDetail answers an error as LangFlow does ({"detail": …}) with
// Sluice's error object beside it.
func writeDetail(w http.ResponseWriter, err error, status ...int) {
	var e *errs.Error
	if !errors.As(err, &e) {
		e = &errs.Error{Code: errs.Internal, Message: "internal error"}
	}
	msg := e.Message
	var d *quota.Denial
	if errors.As(err, &d) {
		e = &errs.Error{Code: errs.Code(d.Code), Message: d.Error()}
		msg = d.Error()
		if d.RetryAfter > 0 {
			w.Header().Set("Retry-After", itoa(int64(d.RetryAfter.Seconds()+0.999)))
		}
	}
	code := statusOf(e.Code)
	if len(status) > 0 {
		code = status[0]
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	body := map[string]any{"detail": msg, "error": map[string]any{"code": e.Code, "message": msg}}
	if e.Field != "" {
		body["error"].(map[string]any)["field"] = e.Field
	}
	_ = json.NewEncoder(w).Encode(body)
}

func statusOf(c errs.Code) int {
	switch c {
	case errs.Unauthorized:
		return http.StatusUnauthorized
	case errs.Forbidden, errs.ModelNotAllowed:
		return http.StatusForbidden
	case errs.NotFound:
		return http.StatusNotFound
	case errs.Invalid:
		return http.StatusBadRequest
	case errs.Unprocessable:
		return http.StatusUnprocessableEntity
	case errs.RateLimited, errs.QuotaExceeded:
		return http.StatusTooManyRequests
	case errs.Unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
