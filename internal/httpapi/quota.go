package httpapi

import (
	"context"
	"errors"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

func (s *Server) quotaRoutes(mux *routes) {
	mux.HandleFunc("POST /api/v1/quota/acquire", s.acquire)
	mux.HandleFunc("POST /api/v1/quota/settle", s.settle)
	mux.HandleFunc("POST /api/v1/quota/heartbeat", s.heartbeat)
	mux.HandleFunc("GET /api/v1/quota/tickets/{id}", s.ticket)
	mux.HandleFunc("GET /api/v1/usage", s.usage)
}

// SettleBounds bound what one settle may report, in the engine's units. A
// member may settle a ticket's reservation plus the overrun: tokens up to
// the ticket's max_tokens_per_call beyond it, or OverrunTokens when its
// chain sets no such cap. A tenant or platform admin (a service account
// reporting its users' work) may settle up to the sanity bounds.
type SettleBounds struct {
	OverrunTokens, OverrunGPUMillis, OverrunCostMicros int64
	SanityTokens, SanityGPUMillis, SanityCostMicros    int64
}

// DefaultSettleBounds apply when Server.Settle is nil: config's defaults.
var DefaultSettleBounds = SettleBounds{
	OverrunTokens: 4096, OverrunGPUMillis: 60_000, OverrunCostMicros: 1_000_000,
	SanityTokens: 1e9, SanityGPUMillis: 1e10, SanityCostMicros: 1e12,
}

func (s *Server) settleBounds() *SettleBounds {
	if s.Settle != nil {
		return s.Settle
	}
	return &DefaultSettleBounds
}

// maxAmount is the largest amount (tokens, milliseconds, micro-USD) the
// engines count exactly; anything larger is refused before it can
// overflow a conversion.
const maxAmount = 1 << 52

// amount converts a non-negative decimal in a client's unit to whole
// engine units (rounded up), or names the field when it is out of range.
func amount(field string, v, scale float64) (int64, error) {
	if math.IsNaN(v) || v < 0 || v*scale > maxAmount {
		return 0, errs.Field(errs.Invalid, field, "%s must be between 0 and %.6g", field, maxAmount/scale)
	}
	return int64(math.Ceil(v * scale)), nil
}

// count checks a whole-number amount.
func count(field string, v int64) error {
	if v < 0 || v > maxAmount {
		return errs.Field(errs.Invalid, field, "%s must be between 0 and %d", field, int64(maxAmount))
	}
	return nil
}

// acquireRequest asks for admission on behalf of the caller, or, for
// admins, of a user of their tenant.
type acquireRequest struct {
	UserID      string   `json:"user_id"`
	ProjectID   string   `json:"project_id"`
	Requests    *int64   `json:"requests"`
	Tokens      int64    `json:"tokens"`
	MinTokens   int64    `json:"min_tokens"`
	GPUSeconds  float64  `json:"gpu_seconds"`
	CostUSD     float64  `json:"cost_usd"`
	Concurrency bool     `json:"concurrency"`
	Model       string   `json:"model"`
	TTLSeconds  *float64 `json:"ttl_seconds"`
}

type remainingView struct {
	Dimension string     `json:"dimension"`
	Window    string     `json:"window,omitempty"`
	Scope     string     `json:"scope"`
	Limit     int64      `json:"limit"`
	Remaining int64      `json:"remaining"`
	ResetAt   *time.Time `json:"reset_at,omitempty"`
}

type capsView struct {
	MemoryPerRun     int64   `json:"memory_per_run,omitempty"`
	RunTimeoutSecs   float64 `json:"run_timeout_seconds,omitempty"`
	MaxSteps         int64   `json:"max_steps,omitempty"`
	MaxTokensPerCall int64   `json:"max_tokens_per_call,omitempty"`
}

type acquireResponse struct {
	Ticket    string          `json:"ticket"`
	ExpiresAt time.Time       `json:"expires_at"`
	Tokens    int64           `json:"tokens"`
	Clamped   bool            `json:"clamped"`
	Priority  policy.Priority `json:"priority"`
	Caps      capsView        `json:"caps"`
	Scopes    []string        `json:"scopes"`
	Remaining []remainingView `json:"remaining"`
}

// who resolves whom a metering call charges: the caller in its key's
// project by default, with its key's own limits; another project the
// caller may work in; or, for an admin of the tenant, another user (then
// no key: the admin's key is not that user's).
func (s *Server) who(ctx context.Context, userID, projectID string) (metering.Who, error) {
	p, _ := tenancy.PrincipalFrom(ctx)
	w := metering.Who{TenantID: p.TenantID, UserID: p.UserID, ProjectID: p.ProjectID, KeyID: p.KeyID}
	if userID != "" && userID != p.UserID {
		u, err := s.Tenancy.User(ctx, userID)
		if err != nil {
			return w, errs.Field(errs.NotFound, "user_id", "user %s not found", userID)
		}
		if !p.AdminOf(u.TenantID) {
			return w, errs.Field(errs.Forbidden, "user_id", "only an admin of the tenant may meter on behalf of another user")
		}
		w.TenantID, w.UserID, w.ProjectID, w.KeyID = u.TenantID, u.ID, "", ""
	}
	if projectID != "" {
		w.ProjectID = projectID
	}
	// The key's own user in its own project was checked when it
	// authenticated; any other pair is checked here.
	if w.ProjectID != "" && (w.UserID != p.UserID || w.ProjectID != p.ProjectID) {
		if err := s.Tenancy.CanWorkIn(ctx, w.UserID, w.ProjectID); err != nil {
			return w, err
		}
	}
	return w, nil
}

func (s *Server) acquire(w http.ResponseWriter, r *http.Request) {
	var in acquireRequest
	if err := decode(r, s.MaxBodyBytes, &in); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	ask := quota.Ask{Requests: 1, Tokens: in.Tokens, MinTokens: in.MinTokens, Concurrency: in.Concurrency, Model: in.Model}
	if in.Requests != nil {
		ask.Requests = *in.Requests
	}
	err := usage.CheckText("model", in.Model, 0)
	for _, c := range []struct {
		field string
		v     int64
	}{{"requests", ask.Requests}, {"tokens", in.Tokens}, {"min_tokens", in.MinTokens}} {
		if err == nil {
			err = count(c.field, c.v)
		}
	}
	if err == nil {
		ask.GPUMillis, err = amount("gpu_seconds", in.GPUSeconds, 1000)
	}
	if err == nil {
		ask.CostMicros, err = amount("cost_usd", in.CostUSD, 1e6)
	}
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	if in.MinTokens > in.Tokens {
		writeError(w, r, s.Log, errs.Field(errs.Invalid, "min_tokens", "min_tokens must not exceed tokens"))
		return
	}
	ttl := 5 * time.Minute
	if in.TTLSeconds != nil {
		if !(*in.TTLSeconds > 0 && *in.TTLSeconds <= 86400) {
			writeError(w, r, s.Log, errs.Field(errs.Invalid, "ttl_seconds", "ttl_seconds must be between 0 and 86400"))
			return
		}
		ttl = time.Duration(*in.TTLSeconds * float64(time.Second))
	}
	who, err := s.who(r.Context(), in.UserID, in.ProjectID)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	// The decision API answers at once: its callers wait their own way.
	adm, err := s.Meter.Acquire(metering.NoWait(r.Context()), who, "metering", ask, ttl)
	if err != nil {
		writeQuotaError(w, r, s, err)
		return
	}
	setRateHeaders(w, &adm.Ticket)
	out := acquireResponse{Ticket: adm.ID, ExpiresAt: adm.ExpiresAt, Tokens: adm.Tokens, Clamped: adm.Clamped, Priority: adm.Priority,
		Caps: capsView{MemoryPerRun: adm.Caps.MemoryPerRun, RunTimeoutSecs: adm.Caps.RunTimeout.Seconds(),
			MaxSteps: adm.Caps.MaxSteps, MaxTokensPerCall: adm.Caps.MaxTokensPerCall},
		Remaining: []remainingView{}}
	out.Scopes = adm.Keys
	for _, rem := range adm.Remaining {
		if rem.Scope == "" {
			continue
		}
		v := remainingView{Dimension: rem.Dimension.String(), Window: rem.Window.String(), Scope: rem.Scope, Limit: rem.Limit, Remaining: rem.Remaining}
		if !rem.ResetAt.IsZero() {
			t := rem.ResetAt
			v.ResetAt = &t
		}
		if rem.Dimension == quota.DimGPUSeconds {
			v.Limit, v.Remaining = v.Limit/1000, v.Remaining/1000
		}
		out.Remaining = append(out.Remaining, v)
	}
	writeJSON(w, http.StatusOK, out)
}

// setRateHeaders adds the IETF RateLimit-* headers (for requests) and the
// OpenAI-style x-ratelimit-* headers (requests and tokens).
func setRateHeaders(w http.ResponseWriter, t *quota.Ticket) {
	h := w.Header()
	secs := func(at time.Time) string {
		if at.IsZero() {
			return "0"
		}
		return strconv.FormatInt(int64(math.Ceil(max(time.Until(at), 0).Seconds())), 10)
	}
	if req := t.Tightest(quota.DimRequests, quota.WindowNone); req.Scope != "" {
		h.Set("RateLimit-Limit", strconv.FormatInt(req.Limit, 10))
		h.Set("RateLimit-Remaining", strconv.FormatInt(req.Remaining, 10))
		h.Set("RateLimit-Reset", secs(req.ResetAt))
		h.Set("x-ratelimit-limit-requests", strconv.FormatInt(req.Limit, 10))
		h.Set("x-ratelimit-remaining-requests", strconv.FormatInt(req.Remaining, 10))
		h.Set("x-ratelimit-reset-requests", secs(req.ResetAt)+"s")
	}
	tok := t.Tightest(quota.DimTokens, quota.WindowDay)
	if month := t.Tightest(quota.DimTokens, quota.WindowMonth); month.Scope != "" && (tok.Scope == "" || month.Remaining < tok.Remaining) {
		tok = month
	}
	if rate := t.Tightest(quota.DimTokensRate, quota.WindowNone); rate.Scope != "" && (tok.Scope == "" || rate.Remaining < tok.Remaining) {
		tok = rate
	}
	if tok.Scope != "" {
		h.Set("x-ratelimit-limit-tokens", strconv.FormatInt(tok.Limit, 10))
		h.Set("x-ratelimit-remaining-tokens", strconv.FormatInt(tok.Remaining, 10))
		h.Set("x-ratelimit-reset-tokens", secs(tok.ResetAt)+"s")
	}
}

// writeQuotaError answers a denial with 429 (or 403 for a model that is not
// allowed), Retry-After, and the denial's details in the error body.
func writeQuotaError(w http.ResponseWriter, r *http.Request, s *Server, err error) {
	writeQuotaErrorExtra(w, r, s, err, nil)
}

// writeQuotaErrorExtra is writeQuotaError with more fields in the body.
func writeQuotaErrorExtra(w http.ResponseWriter, r *http.Request, s *Server, err error, more map[string]any) {
	var d *quota.Denial
	if !errors.As(err, &d) {
		writeErrorExtra(w, r, s.Log, err, more)
		return
	}
	code := errs.Code(d.Code)
	limit, used, requested := d.Limit, d.Used, d.Requested
	unit := ""
	switch d.Dimension {
	case quota.DimGPUSeconds:
		limit, used, requested, unit = limit/1000, (used+999)/1000, (requested+999)/1000, "seconds"
	case quota.DimCost:
		unit = "micro_usd"
	}
	extra := map[string]any{"scope": d.Scope, "dimension": d.Dimension.String()}
	for k, v := range more {
		extra[k] = v
	}
	if d.Code != quota.CodeModelNotAllowed {
		extra["limit"], extra["used"], extra["requested"] = limit, used, requested
		if d.Window != quota.WindowNone {
			extra["window"] = d.Window.String()
		}
		if d.Period > 0 {
			extra["period"] = d.Period.String()
		}
		if unit != "" {
			extra["unit"] = unit
		}
		if !d.ResetAt.IsZero() {
			extra["reset_at"] = d.ResetAt.UTC()
		}
	} else {
		extra["model"] = d.Model
	}
	if d.RetryAfter > 0 {
		secs := int64(math.Ceil(d.RetryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		extra["retry_after_seconds"] = secs
	}
	if d.Dimension == quota.DimRequests {
		w.Header().Set("RateLimit-Limit", strconv.FormatInt(d.Limit, 10))
		w.Header().Set("RateLimit-Remaining", "0")
		w.Header().Set("RateLimit-Reset", strconv.FormatInt(int64(math.Ceil(d.RetryAfter.Seconds())), 10))
	}
	msg := denialMessage(d, limit, used, requested)
	var sd *metering.SharedDenial
	if errors.As(err, &sd) {
		// The limit and use are those of the pool's shared part.
		msg = sd.Message() + "; in its shared part: " + msg
		extra["part"] = "shared"
	}
	if note := admission.Note(err); note != "" {
		msg += "; " + note
		var qe *admission.Error
		errors.As(err, &qe)
		if extra["queue"] = "timeout"; qe.Reason == admission.ErrQueueFull {
			extra["queue"] = "full"
		} else {
			extra["queued_ms"] = qe.Waited.Wait.Milliseconds()
		}
	}
	if node, ok := more["node_id"].(string); ok {
		msg = "node " + node + ": " + msg
	}
	writeErrorExtra(w, r, s.Log, &errs.Error{Code: code, Message: msg}, extra)
}

func denialMessage(d *quota.Denial, limit, used, requested int64) string {
	what := d.Dimension.String()
	if d.Window != quota.WindowNone {
		what += " per " + d.Window.String()
	}
	switch d.Code {
	case quota.CodeModelNotAllowed:
		return "model " + strconv.Quote(d.Model) + " is not allowed for " + d.Scope
	case quota.CodeRateLimited:
		if d.Dimension == quota.DimConcurrency {
			return "concurrency limit reached at " + d.Scope + ": " + strconv.FormatInt(used, 10) + " of " + strconv.FormatInt(limit, 10) + " runs in flight"
		}
		return what + " rate limit reached at " + d.Scope + " (" + strconv.FormatInt(limit, 10) + " per " + d.Period.String() + ")"
	}
	msg := what + " budget of " + d.Scope + " exhausted: used " + strconv.FormatInt(used, 10) + " of " + strconv.FormatInt(limit, 10) +
		", asked for " + strconv.FormatInt(requested, 10)
	if d.RetryAfter == 0 && requested > limit {
		msg += "; the ask is larger than the whole limit"
	}
	return msg
}

type settleRequest struct {
	Ticket       string  `json:"ticket"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	GPUSeconds   float64 `json:"gpu_seconds"`
	CostUSD      float64 `json:"cost_usd"`
	Model        string  `json:"model"`
}

type settleResponse struct {
	Ticket         string  `json:"ticket"`
	InputTokens    int64   `json:"input_tokens"`
	OutputTokens   int64   `json:"output_tokens"`
	GPUSeconds     float64 `json:"gpu_seconds"`
	CostUSD        float64 `json:"cost_usd"`
	ReservedTokens int64   `json:"reserved_tokens"`
	Overrun        bool    `json:"overrun"`
	// Late is true when the ticket had expired: its reservation was
	// released, and the use was charged on its own.
	Late      bool      `json:"late,omitempty"`
	SettledAt time.Time `json:"settled_at"`
}

// ticketFor returns the ticket if the caller may touch it: its own user,
// an admin of its tenant, or a platform admin. Everyone else gets the
// answer for a ticket that does not exist, word for word, so that a
// ticket id reveals nothing to them.
func (s *Server) ticketFor(ctx context.Context, id string) (*metering.TicketView, error) {
	if id == "" {
		return nil, errs.Field(errs.Invalid, "ticket", "ticket is required")
	}
	v, err := s.Meter.Ticket(ctx, id)
	if err != nil {
		return nil, err
	}
	p, _ := tenancy.PrincipalFrom(ctx)
	if p.IsPlatformAdmin() || p.AdminOf(v.Who.TenantID) || (v.Who.UserID == p.UserID && v.Who.TenantID == p.TenantID) {
		return v, nil
	}
	return nil, errs.Field(errs.NotFound, "ticket", "ticket %s is unknown or expired", id)
}

// checkSettleBounds refuses a settle that reports more than the caller may
// (see SettleBounds), naming the field.
func (s *Server) checkSettleBounds(ctx context.Context, v *metering.TicketView, u quota.Usage) error {
	b := s.settleBounds()
	extra := b.OverrunTokens
	if v.MaxTokensPerCall > 0 {
		extra = v.MaxTokensPerCall
	}
	tokLim, gpuLim, costLim := v.Tokens+extra, v.GPUMillis+b.OverrunGPUMillis, v.CostMicros+b.OverrunCostMicros
	who := "a member may settle on this ticket (its reservation plus the allowed overrun)"
	if p, _ := tenancy.PrincipalFrom(ctx); p.AdminOf(v.Who.TenantID) {
		tokLim, gpuLim, costLim = max(tokLim, b.SanityTokens), max(gpuLim, b.SanityGPUMillis), max(costLim, b.SanityCostMicros)
		who = "anyone may settle on one ticket"
	}
	if tokens := u.InputTokens + u.OutputTokens; tokens > tokLim {
		field := "output_tokens"
		if u.InputTokens > tokLim {
			field = "input_tokens"
		}
		return errs.Field(errs.Invalid, field, "input_tokens + output_tokens = %d is more than the %d tokens %s", tokens, tokLim, who)
	}
	if u.GPUMillis > gpuLim {
		return errs.Field(errs.Invalid, "gpu_seconds", "gpu_seconds %.3f is more than the %.3f %s", float64(u.GPUMillis)/1000, float64(gpuLim)/1000, who)
	}
	if u.CostMicros > costLim {
		return errs.Field(errs.Invalid, "cost_usd", "cost_usd %.6f is more than the %.6f %s", float64(u.CostMicros)/1e6, float64(costLim)/1e6, who)
	}
	return nil
}

func (s *Server) settle(w http.ResponseWriter, r *http.Request) {
	var in settleRequest
	if err := decode(r, s.MaxBodyBytes, &in); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	u := quota.Usage{InputTokens: in.InputTokens, OutputTokens: in.OutputTokens}
	err := count("input_tokens", in.InputTokens)
	if err == nil {
		err = count("output_tokens", in.OutputTokens)
	}
	if err == nil && in.InputTokens+in.OutputTokens > maxAmount {
		err = errs.Field(errs.Invalid, "output_tokens", "input_tokens + output_tokens must be at most %d", int64(maxAmount))
	}
	if err == nil {
		u.GPUMillis, err = amount("gpu_seconds", in.GPUSeconds, 1000)
	}
	if err == nil {
		u.CostMicros, err = amount("cost_usd", in.CostUSD, 1e6)
	}
	if err == nil {
		err = usage.CheckText("model", in.Model, 0)
	}
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	v, err := s.ticketFor(r.Context(), in.Ticket)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	// A replay changes nothing and returns the first settlement, whatever
	// it reports: only a first settle is bounded.
	if !v.Settled {
		if err := s.checkSettleBounds(r.Context(), v, u); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
	}
	// Settle even if the client goes away mid-request: the use happened.
	st, err := s.Meter.Settle(context.WithoutCancel(r.Context()), in.Ticket, u, in.Model)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, settleResponse{Ticket: st.TicketID, InputTokens: st.Usage.InputTokens, OutputTokens: st.Usage.OutputTokens,
		GPUSeconds: float64(st.Usage.GPUMillis) / 1000, CostUSD: float64(st.Usage.CostMicros) / 1e6,
		ReservedTokens: st.ReservedTokens, Overrun: st.Overrun, Late: st.Late, SettledAt: st.SettledAt})
}

// ticketResponse describes a ticket to its owner or an admin.
type ticketResponse struct {
	Ticket           string     `json:"ticket"`
	Status           string     `json:"status"` // live, settled or expired
	TenantID         string     `json:"tenant_id"`
	UserID           string     `json:"user_id"`
	ProjectID        string     `json:"project_id,omitempty"`
	Kind             string     `json:"kind"`
	Model            string     `json:"model,omitempty"`
	Scopes           []string   `json:"scopes"`
	ExpiresAt        *time.Time `json:"expires_at,omitempty"`
	ReservedTokens   int64      `json:"reserved_tokens"`
	ReservedGPUSecs  float64    `json:"reserved_gpu_seconds"`
	ReservedCostUSD  float64    `json:"reserved_cost_usd"`
	MaxTokensPerCall int64      `json:"max_tokens_per_call,omitempty"`
}

func (s *Server) ticket(w http.ResponseWriter, r *http.Request) {
	v, err := s.ticketFor(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	out := ticketResponse{Ticket: v.ID, Status: "live", TenantID: v.Who.TenantID, UserID: v.Who.UserID, ProjectID: v.Who.ProjectID,
		Kind: v.Kind, Model: v.Model, Scopes: v.Scopes, ReservedTokens: v.Tokens,
		ReservedGPUSecs: float64(v.GPUMillis) / 1000, ReservedCostUSD: float64(v.CostMicros) / 1e6, MaxTokensPerCall: v.MaxTokensPerCall}
	switch {
	case v.Settled:
		out.Status = "settled"
	case v.Expired:
		out.Status = "expired"
	}
	if !v.Settled && !v.ExpiresAt.IsZero() {
		out.ExpiresAt = &v.ExpiresAt
	}
	if out.Scopes == nil {
		out.Scopes = []string{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Ticket     string  `json:"ticket"`
		TTLSeconds float64 `json:"ttl_seconds"`
	}
	if err := decode(r, s.MaxBodyBytes, &in); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	if !(in.TTLSeconds > 0 && in.TTLSeconds <= 86400) {
		writeError(w, r, s.Log, errs.Field(errs.Invalid, "ttl_seconds", "ttl_seconds must be between 0 and 86400"))
		return
	}
	if _, err := s.ticketFor(r.Context(), in.Ticket); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	exp, err := s.Meter.Heartbeat(r.Context(), in.Ticket, time.Duration(in.TTLSeconds*float64(time.Second)))
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ticket": in.Ticket, "expires_at": exp})
}

// mayReadScope lets a member read a scope of their own chain only: of
// their key's project, or of a project they work in named by the scope,
// or the scope of one of their keys. Every other scope, global included,
// is answered as if it did not exist.
func (s *Server) mayReadScope(ctx context.Context, p tenancy.Principal, scope string) error {
	missing := errs.Field(errs.NotFound, "scope", "scope %s not found", scope)
	if scope == policy.GlobalScope {
		return missing
	}
	snap := s.Meter.Policy().Current()
	if chain, err := snap.ChainFor(p.TenantID, p.UserID, p.ProjectID, p.KeyID); err == nil && slices.Contains(chain.Keys, scope) {
		return nil
	}
	kind, id, err := policy.ParseScope("scope", scope)
	if err != nil {
		return err
	}
	project := ""
	switch kind {
	case policy.KindKey:
		if k, err := s.Tenancy.Key(ctx, id); err == nil && k.UserID == p.UserID {
			return nil
		}
		return missing
	case policy.KindProject:
		project = id
	case policy.KindMembership:
		if u, prj, _ := strings.Cut(id, "@"); u == p.UserID {
			project = prj
		}
	}
	if project == "" || project == p.ProjectID || s.Tenancy.CanWorkIn(ctx, p.UserID, project) != nil {
		return missing
	}
	if chain, err := snap.Chain(p.TenantID, p.UserID, project); err == nil && slices.Contains(chain.Keys, scope) {
		return nil
	}
	return missing
}

// usage shows the caller's limits and use on every scope of its chain, or
// those of ?scope=: for a member a scope of their own chain, for admins
// any scope they administer.
func (s *Server) usage(w http.ResponseWriter, r *http.Request) {
	p, _ := tenancy.PrincipalFrom(r.Context())
	q := r.URL.Query()
	for k := range q {
		if k != "scope" && k != "project_id" && k != "user_id" {
			writeError(w, r, s.Log, errs.Field(errs.Invalid, k, "unknown query parameter %q", k))
			return
		}
	}
	var scopes []string
	if scope := q.Get("scope"); scope != "" {
		if scope == policy.GlobalScope && !p.IsPlatformAdmin() {
			// The platform-wide pool is the operator's business, as in
			// the chain's own report below and the usage history.
			writeError(w, r, s.Log, errs.Field(errs.NotFound, "scope", "scope %s not found", scope))
			return
		}
		if !p.AdminOf(p.TenantID) {
			if err := s.mayReadScope(r.Context(), p, scope); err != nil {
				writeError(w, r, s.Log, err)
				return
			}
		}
		if _, err := s.Policy.Limits(r.Context(), scope); err != nil { // authorises the read
			writeError(w, r, s.Log, err)
			return
		}
		scopes = []string{scope}
	} else {
		who, err := s.who(r.Context(), q.Get("user_id"), q.Get("project_id"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		chain, err := s.Meter.Policy().Current().ChainFor(who.TenantID, who.UserID, who.ProjectID, who.KeyID)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		// Every scope of the chain, the caller's key included even when it
		// limits nothing (it then shows no meters: its spend is in the
		// usage ledger, GET /api/v1/admin/usage/keys).
		// A pool's shared part and the caller's guarantee show after
		// their real scopes.
		for _, sc := range chain.AllKeys() {
			if sc == policy.GlobalScope && !p.IsPlatformAdmin() {
				continue // the platform-wide pool is the operator's business
			}
			scopes = append(scopes, sc)
		}
	}
	rep, err := s.Meter.Report(r.Context(), p.TenantID, scopes)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	out := map[string]any{"scopes": rep}
	if s.Credits != nil {
		// Prepaid credit beside the budgets it extends (drawn once a
		// token or cost budget refuses).
		bs, err := s.Credits.Balances(r.Context(), scopes)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		credits := []map[string]any{}
		for _, b := range bs {
			if b.Tokens != 0 || b.CostMicros != 0 {
				credits = append(credits, map[string]any{"scope": b.Scope, "tokens": b.Tokens, "cost_usd": b.CostUSD})
			}
		}
		out["credits"] = credits
	}
	if q := s.Meter.Queue; q != nil {
		// Who waits for a slot on this instance, per scope of the chain.
		states := q.States(scopes, metering.QueueFlow(p.UserID, p.KeyID))
		if states == nil {
			states = []admission.State{}
		}
		out["queues"] = states
	}
	writeJSON(w, http.StatusOK, out)
}
