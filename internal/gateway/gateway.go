// Package gateway is Sluice's OpenAI-compatible API: /v1/chat/completions,
// /v1/completions, /v1/embeddings and /v1/models, authenticated with Sluice
// keys as Authorization: Bearer, so that any OpenAI client, script or
// LangFlow model component governed by Sluice changes only its base URL and
// key. Every call goes through the governed-call pipeline (gate): counted,
// admitted, routed over the model's deployments, passed through to the
// provider as the caller wrote it (streams chunk by chunk), and settled with
// what the provider reported or, when a stream is cut, what was produced.
// Answers and errors use OpenAI's wire format and headers.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Authenticator resolves a Sluice key (*tenancy.Service).
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (tenancy.Principal, error)
}

// Policy is the policy in force (*policy.Manager): the caller's chain says
// which models it may use.
type Policy interface {
	Current() *policy.Snapshot
}

// Handler serves the OpenAI-compatible API.
type Handler struct {
	Auth   Authenticator
	Gate   *gate.Gate
	Models *llm.Registry
	Policy Policy
	Log    *slog.Logger
	// MaxBodyBytes bounds a request body (0: 8 MiB).
	MaxBodyBytes int64
	// MaxTokensDefault is the output reserved for a call that asks none
	// (0: 4096), within the model's context window.
	MaxTokensDefault int
	// LogPrompts puts the prompt text in the call log. Off by default:
	// prompts are the users' data.
	LogPrompts bool
	// TTL is how long a call's reservation lives unsettled (0: 15 min).
	TTL time.Duration
	// QueueUsage answers without waiting for each call's usage event to
	// be committed (gateway.usage_commit: queued); see
	// metering.Meter.SettleQueued for what that trades.
	QueueUsage bool
	// Demo serves every model name on the default model: with no model
	// table configured, clients written for gpt-4o run on the built-in
	// simulated model (its answers say so).
	Demo bool

	muxOnce sync.Once
	mux     *http.ServeMux
}

// Mux is where Routes registers the API: an *http.ServeMux, or one that
// also lists the routes (the server's OpenAPI document).
type Mux interface {
	HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request))
}

// Routes registers the API on mux. Its last pattern, /v1/, answers
// OpenAI's 404 for the paths the others do not serve.
func (h *Handler) Routes(mux Mux) {
	mux.HandleFunc("POST /v1/chat/completions", h.chat)
	mux.HandleFunc("POST /v1/completions", h.completions)
	mux.HandleFunc("POST /v1/embeddings", h.embeddings)
	mux.HandleFunc("GET /v1/models", h.models)
	mux.HandleFunc("GET /v1/models/{model...}", h.model)
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request_error", "unknown_url", "",
			"Unknown request URL: "+r.Method+" "+r.URL.Path+". Sluice serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models.")
	})
}

// ServeHTTP serves the API on its own (its routes built once).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.muxOnce.Do(func() {
		h.mux = http.NewServeMux()
		h.Routes(h.mux)
	})
	h.mux.ServeHTTP(w, r)
}

// caller is an authenticated request's principal and chain.
type caller struct {
	p     tenancy.Principal
	who   metering.Who
	chain *policy.Chain
}

// authenticate resolves the caller's key and chain, or answers the error.
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request) (*caller, bool) {
	p, err := h.Auth.Authenticate(r.Context(), bearer(r))
	if err != nil {
		h.fail(w, r, err)
		return nil, false
	}
	c := &caller{p: p, who: metering.Who{TenantID: p.TenantID, UserID: p.UserID, ProjectID: p.ProjectID, KeyID: p.KeyID}}
	if h.Policy != nil {
		chain, err := h.Policy.Current().ChainFor(p.TenantID, p.UserID, p.ProjectID, p.KeyID)
		if err != nil {
			h.fail(w, r, err)
			return nil, false
		}
		c.chain = chain
	}
	return c, true
}

// bearer reads the key from Authorization: Bearer (what OpenAI clients
// send) or x-api-key.
func bearer(r *http.Request) string {
	if v := r.Header.Get("Authorization"); len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return strings.TrimSpace(r.Header.Get("X-Api-Key"))
}

// allowed reports whether the chain lets its caller use model.
func (c *caller) allowed(model string) bool { return gate.Allows(c.chain, model) }

// route returns the deployments to try for model, in routing order
// (dedicated to the caller's tenant or plan first, weighted, healthy
// before cooling down, then fallback models), leaving out fallback models
// the caller may not use; or it answers the error: 404 for a model Sluice
// does not serve, 403 for one the caller may not use.
func (h *Handler) route(w http.ResponseWriter, r *http.Request, c *caller, model string) ([]*llm.Model, bool) {
	if model == "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "model", "you must provide a model parameter")
		return nil, false
	}
	var tags llm.RouteTags
	tags.Tenant, tags.Plan = gate.Route(c.p.TenantID, c.chain)
	cands, err := h.Models.Route(model, tags)
	if err != nil && h.Demo && !errs.Is(err, errs.Forbidden) {
		cands, err = h.Models.Route(h.Models.Default().Name(), tags)
	}
	switch {
	case errs.Is(err, errs.Forbidden):
		writeError(w, http.StatusForbidden, "invalid_request_error", "model_not_allowed", "model",
			"The model `"+model+"` runs on deployments dedicated to other customers.")
		return nil, false
	case err != nil:
		writeError(w, http.StatusNotFound, "invalid_request_error", "model_not_found", "model",
			"The model `"+model+"` does not exist or you do not have access to it.")
		return nil, false
	}
	if !c.allowed(cands[0].Name()) {
		writeError(w, http.StatusForbidden, "invalid_request_error", "model_not_allowed", "model",
			"The model `"+model+"` is not allowed for your key, user or project by Sluice's policy.")
		return nil, false
	}
	kept := cands[:0:0]
	for _, m := range cands {
		if c.allowed(m.Name()) {
			kept = append(kept, m)
		}
	}
	return kept, true
}

// ---- /v1/models ----

type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (h *Handler) models(w http.ResponseWriter, r *http.Request) {
	c, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	data := []modelObject{}
	var tags llm.RouteTags
	tags.Tenant, tags.Plan = gate.Route(c.p.TenantID, c.chain)
	for _, m := range h.Models.Models() {
		if _, err := h.Models.Route(m.Name(), tags); err != nil {
			continue // on deployments dedicated to others
		}
		if c.allowed(m.Name()) {
			data = append(data, modelObject{ID: m.Name(), Object: "model", OwnedBy: ownedBy(m)})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

func (h *Handler) model(w http.ResponseWriter, r *http.Request) {
	c, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	name := r.PathValue("model")
	m, err := h.Models.Lookup(name)
	if err != nil || !c.allowed(m.Name()) {
		writeError(w, http.StatusNotFound, "invalid_request_error", "model_not_found", "model",
			"The model `"+name+"` does not exist or you do not have access to it.")
		return
	}
	writeJSON(w, http.StatusOK, modelObject{ID: m.Name(), Object: "model", OwnedBy: ownedBy(m)})
}

func ownedBy(m *llm.Model) string { return "sluice:" + m.Config().Provider }

// ---- errors and headers ----

// errorBody is OpenAI's error shape.
type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, typ, code, param, msg string) {
	var b errorBody
	b.Error.Message, b.Error.Type = msg, typ
	if param != "" {
		b.Error.Param = &param
	}
	if code != "" {
		b.Error.Code = &code
	}
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers err in OpenAI's error shape: a quota denial as 429 (or 403
// for a model the caller may not use) with Retry-After and the
// x-ratelimit-* headers, a provider failure as the provider's client error
// or 502/504, Sluice's own errors by their code.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var d *quota.Denial
	if errors.As(err, &d) {
		note := admission.Note(err)
		if note != "" {
			note = " " + strings.ToUpper(note[:1]) + note[1:] + "."
		}
		var sd *metering.SharedDenial
		if errors.As(err, &sd) {
			writeSharedDenial(w, d, sd, note)
			return
		}
		writeDenial(w, d, note)
		return
	}
	var pe *llm.ProviderError
	if errors.As(err, &pe) {
		h.providerFailure(w, r, pe)
		return
	}
	var e *errs.Error
	if !errors.As(err, &e) {
		if errors.Is(err, context.Canceled) {
			return // the caller is gone
		}
		e = &errs.Error{Code: errs.Internal, Message: "internal error"}
		h.Log.LogAttrs(r.Context(), slog.LevelError, "gateway: internal error", slog.String("error", err.Error()))
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(e.RetryAfter.Seconds())), 10))
	}
	switch e.Code {
	case errs.Unauthorized:
		writeError(w, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "", e.Message)
	case errs.Forbidden, errs.ModelNotAllowed:
		writeError(w, http.StatusForbidden, "invalid_request_error", "permission_denied", e.Field, e.Message)
	case errs.NotFound:
		writeError(w, http.StatusNotFound, "invalid_request_error", "not_found", e.Field, e.Message)
	case errs.Invalid, errs.Unprocessable, errs.Conflict:
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", e.Field, e.Message)
	case errs.TooLarge:
		writeError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", e.Field, e.Message)
	case errs.RateLimited:
		writeError(w, http.StatusTooManyRequests, "requests", "rate_limit_exceeded", "", e.Message)
	case errs.QuotaExceeded:
		writeError(w, http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota", "", e.Message)
	case errs.Unavailable:
		writeError(w, http.StatusServiceUnavailable, "server_error", "service_unavailable", "", e.Message)
	default:
		msg := "internal error"
		if rid := w.Header().Get("X-Request-Id"); rid != "" {
			msg += " (request " + rid + ")"
		}
		writeError(w, http.StatusInternalServerError, "server_error", "", "", msg)
	}
}

// providerFailure answers a call every deployment failed: the provider's
// own complaint about the request (400, 404, 422: the caller can mend it),
// 429 when every deployment was rate limiting, 504 when none answered in
// time, else 502. The provider's credentials and internals stay hidden.
func (h *Handler) providerFailure(w http.ResponseWriter, r *http.Request, pe *llm.ProviderError) {
	h.Log.LogAttrs(r.Context(), slog.LevelWarn, "gateway: provider failed", slog.String("error", pe.Error()))
	switch {
	case pe.Status == http.StatusBadRequest || pe.Status == http.StatusNotFound || pe.Status == http.StatusUnprocessableEntity:
		typ := pe.Type
		if typ == "" {
			typ = "invalid_request_error"
		}
		writeError(w, http.StatusBadRequest, typ, pe.Code, "", "the model provider rejected the request: "+pe.Message)
	case pe.Status == http.StatusRequestEntityTooLarge:
		writeError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", "", "the model provider says the request is too large")
	case pe.Status == http.StatusTooManyRequests && pe.Retryable:
		if pe.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(pe.RetryAfter.Seconds())), 10))
		}
		writeError(w, http.StatusTooManyRequests, "requests", "rate_limit_exceeded", "", "every deployment of the model is rate limited by its provider; retry later")
	case errors.Is(pe, context.DeadlineExceeded):
		writeError(w, http.StatusGatewayTimeout, "server_error", "timeout", "", "the model provider did not answer in time")
	default:
		writeError(w, http.StatusBadGateway, "server_error", "upstream_error", "", "the model provider is unavailable")
	}
}

// writeSharedDenial answers a refusal at the shared part of a pool with
// guarantees: 429 saying that the pool's shared part is used up and who
// can raise it.
func writeSharedDenial(w http.ResponseWriter, d *quota.Denial, sd *metering.SharedDenial, note string) {
	retry := ""
	if d.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d.RetryAfter.Seconds())), 10))
		retry = " Please try again in " + resetString(d.RetryAfter) + "."
	}
	msg := sd.Message()
	msg = strings.ToUpper(msg[:1]) + msg[1:] + ": " + d.Dimension.String() + " used " + strconv.FormatInt(d.Used, 10) +
		" of " + strconv.FormatInt(d.Limit, 10) + "." + note + retry
	if d.Dimension == quota.DimConcurrency {
		writeError(w, http.StatusTooManyRequests, "requests", "rate_limit_exceeded", "", msg)
		return
	}
	writeError(w, http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota", "", msg)
}

// writeDenial answers a quota denial as OpenAI does: 429 with
// rate_limit_exceeded for a rate or concurrency limit, insufficient_quota
// for an exhausted budget, 403 for a model the policy does not allow.
func writeDenial(w http.ResponseWriter, d *quota.Denial, note string) {
	h := w.Header()
	if d.RetryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d.RetryAfter.Seconds())), 10))
	}
	switch d.Dimension {
	case quota.DimRequests:
		h.Set("x-ratelimit-limit-requests", strconv.FormatInt(d.Limit, 10))
		h.Set("x-ratelimit-remaining-requests", "0")
		h.Set("x-ratelimit-reset-requests", resetString(d.RetryAfter))
	case quota.DimTokens, quota.DimTokensRate:
		h.Set("x-ratelimit-limit-tokens", strconv.FormatInt(d.Limit, 10))
		h.Set("x-ratelimit-remaining-tokens", strconv.FormatInt(max(d.Limit-d.Used, 0), 10))
		h.Set("x-ratelimit-reset-tokens", resetString(time.Until(d.ResetAt)))
	}
	what := d.Dimension.String()
	if d.Window != quota.WindowNone {
		what += " per " + d.Window.String()
	}
	retry := ""
	if d.RetryAfter > 0 {
		retry = " Please try again in " + resetString(d.RetryAfter) + "."
	}
	switch {
	case d.Code == quota.CodeModelNotAllowed:
		writeError(w, http.StatusForbidden, "invalid_request_error", "model_not_allowed", "model",
			"The model `"+d.Model+"` is not allowed for "+d.Scope+" by Sluice's policy.")
	case d.Code == quota.CodeRateLimited && d.Dimension == quota.DimConcurrency:
		writeError(w, http.StatusTooManyRequests, "requests", "rate_limit_exceeded", "",
			"Concurrency limit reached at "+d.Scope+": "+strconv.FormatInt(d.Used, 10)+" of "+strconv.FormatInt(d.Limit, 10)+" in flight."+note+retry)
	case d.Code == quota.CodeRateLimited:
		typ := "requests"
		if d.Dimension != quota.DimRequests {
			typ = "tokens"
		}
		writeError(w, http.StatusTooManyRequests, typ, "rate_limit_exceeded", "",
			"Rate limit reached for "+what+" at "+d.Scope+": limit "+strconv.FormatInt(d.Limit, 10)+" per "+d.Period.String()+
				", requested "+strconv.FormatInt(d.Requested, 10)+"."+retry)
	default:
		writeError(w, http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota", "",
			"You exceeded your "+what+" quota at "+d.Scope+": used "+strconv.FormatInt(d.Used, 10)+" of "+strconv.FormatInt(d.Limit, 10)+
				", requested "+strconv.FormatInt(d.Requested, 10)+". Ask an admin of the scope for more."+retry)
	}
}

// setRateHeaders sets OpenAI's x-ratelimit-* headers from an admission:
// the tightest request rate and the tightest token limit (rate or budget)
// of the caller's chain, what remains after this call's reservation, and
// when each is whole again, in OpenAI's format ("1s", "6m0s").
func setRateHeaders(w http.ResponseWriter, t *quota.Ticket) {
	h := w.Header()
	if req := t.Tightest(quota.DimRequests, quota.WindowNone); req.Scope != "" {
		h.Set("x-ratelimit-limit-requests", strconv.FormatInt(req.Limit, 10))
		h.Set("x-ratelimit-remaining-requests", strconv.FormatInt(max(req.Remaining, 0), 10))
		h.Set("x-ratelimit-reset-requests", resetString(time.Until(req.ResetAt)))
	}
	tok := t.Tightest(quota.DimTokensRate, quota.WindowNone)
	for _, w := range []quota.Window{quota.WindowDay, quota.WindowMonth} {
		if b := t.Tightest(quota.DimTokens, w); b.Scope != "" && (tok.Scope == "" || b.Remaining < tok.Remaining) {
			tok = b
		}
	}
	if tok.Scope != "" {
		h.Set("x-ratelimit-limit-tokens", strconv.FormatInt(tok.Limit, 10))
		h.Set("x-ratelimit-remaining-tokens", strconv.FormatInt(max(tok.Remaining, 0), 10))
		h.Set("x-ratelimit-reset-tokens", resetString(time.Until(tok.ResetAt)))
	}
	if v := metering.QuotaUsed(t); v != "" {
		h.Set(metering.QuotaUsedHeader, v) // docs/alerts.md
	}
}

// resetString writes a wait as OpenAI does: "1s", "6m0s", "17ms".
func resetString(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// begin authenticates the caller and reads the request body into req, or
// answers the error (401, 413, 400) and returns false.
func (h *Handler) begin(w http.ResponseWriter, r *http.Request, req any) (*caller, []byte, bool) {
	cl, ok := h.authenticate(w, r)
	if !ok {
		return nil, nil, false
	}
	body, ok := h.readBody(w, r)
	if !ok {
		return nil, nil, false
	}
	if err := json.Unmarshal(body, req); err != nil {
		badJSON(w, err)
		return nil, nil, false
	}
	return cl, body, true
}

// readBody reads a bounded JSON body, or answers 413/400.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := h.MaxBodyBytes
	if limit <= 0 {
		limit = 8 << 20
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", "",
				"the request body is larger than "+strconv.FormatInt(limit, 10)+" bytes")
		} else {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "", "", "could not read the request body")
		}
		return nil, false
	}
	return b, true
}

// badJSON answers a body that is not the JSON object the endpoint takes.
func badJSON(w http.ResponseWriter, err error) {
	msg := "We could not parse the JSON body of your request: " + err.Error()
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", te.Field,
			"Invalid type for '"+te.Field+"': expected "+jsonKind(te.Type.Kind().String())+", got "+te.Value+".")
		return
	}
	writeError(w, http.StatusBadRequest, "invalid_request_error", "", "", msg)
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	case "struct", "map":
		return "an object"
	case "bool":
		return "a boolean"
	}
	return "a number"
}
