package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// A quota request is a user's ask for more of one dimension of one scope
// for a while. An admin who may change the scope's limits approves it,
// which inserts a temporary grant in the same transaction (and so raises
// the limit at the next decision, and lowers it again when the grant
// expires), or denies it with a reason. Every step is in the audit log.

// The statuses of a quota request. Only a pending request changes, once.
const (
	RequestPending   = "pending"
	RequestApproved  = "approved"
	RequestDenied    = "denied"
	RequestCancelled = "cancelled"
)

// MaxPendingRequests bounds how many requests one user may have waiting,
// so that asking cannot flood the admins or the table.
const MaxPendingRequests = 10

// maxRequestText bounds a reason or a note.
const maxRequestText = 500

// maxRequestUnits keeps an amount exact through every conversion (JSON
// numbers, micro-USD).
const maxRequestUnits = 1 << 52

// QuotaRequest is one ask for more quota and what became of it.
type QuotaRequest struct {
	ID        string `json:"id"`
	TenantID  string `json:"tenant_id,omitempty"`
	Scope     string `json:"scope"`
	Dimension string `json:"dimension"`
	// Amount is in the dimension's unit, micro-USD for cost (the API shows
	// US dollars).
	Amount int64 `json:"-"`
	// Limits is the grant asked for, as POST /api/v1/admin/grants takes it.
	Limits      Spec       `json:"limits"`
	Duration    Duration   `json:"duration"`
	Reason      string     `json:"reason"`
	RequestedBy string     `json:"requested_by"`
	Status      string     `json:"status"`
	CreatedAt   time.Time  `json:"created_at"`
	DecidedBy   string     `json:"decided_by,omitempty"`
	DecidedAt   *time.Time `json:"decided_at,omitempty"`
	// Note is the approver's note, or the reason for a denial.
	Note          string     `json:"note,omitempty"`
	GrantedAmount int64      `json:"-"`
	GrantID       string     `json:"grant_id,omitempty"`
	ExpiresAt     *time.Time `json:"expires_at,omitempty"` // the grant's
	// GrantActive, on an approved request, says whether its grant still
	// raises the limit (false once it expired): computed when read.
	GrantActive *bool `json:"grant_active,omitempty"`
}

// GrantEnded reports whether q was approved and its grant has expired.
func (q *QuotaRequest) GrantEnded() bool { return q.GrantActive != nil && !*q.GrantActive }

// markGrant sets q's GrantActive as of now.
func (q *QuotaRequest) markGrant(now time.Time) {
	if q.Status == RequestApproved && q.ExpiresAt != nil {
		active := now.Before(*q.ExpiresAt)
		q.GrantActive = &active
	}
}

// MarshalJSON shows the amounts in the dimension's unit (US dollars for
// cost) and names the unit.
func (q QuotaRequest) MarshalJSON() ([]byte, error) {
	type plain QuotaRequest
	out := struct {
		plain
		Amount        any    `json:"amount"`
		Unit          string `json:"unit"`
		GrantedAmount any    `json:"granted_amount,omitempty"`
	}{plain: plain(q), Amount: shownAmount(q.Dimension, q.Amount), Unit: unitOf(q.Dimension, q.Limits)}
	if q.GrantedAmount != 0 {
		out.GrantedAmount = shownAmount(q.Dimension, q.GrantedAmount)
	}
	return json.Marshal(out)
}

// RequestFilter narrows a list of quota requests; empty fields do not
// filter.
type RequestFilter struct {
	TenantID    string
	RequestedBy string
	Status      string
	Scope       string
	tenancy.Page
}

// RequestStore persists quota requests beside the policy: approving one
// inserts a grant in the same transaction.
type RequestStore interface {
	// UpdateRequests runs fn in a read-write transaction that, like
	// UpdatePolicy's, bumps the change counter.
	UpdateRequests(ctx context.Context, fn func(RequestTx) error) error
	ViewRequests(ctx context.Context, fn func(RequestTx) error) error
}

// RequestTx is a policy transaction that also reads and writes quota
// requests.
type RequestTx interface {
	Tx
	InsertQuotaRequest(q *QuotaRequest) error
	QuotaRequest(id string) (*QuotaRequest, error)
	// QuotaRequests lists requests by id.
	QuotaRequests(f RequestFilter) ([]*QuotaRequest, error)
	// PendingQuotaRequests counts a user's pending requests. Concurrent
	// transactions that call it for the same user run one after another
	// from there on, so a bound checked on its answer holds.
	PendingQuotaRequests(userID string) (int, error)
	// DecideQuotaRequest stores q's status and decision if the stored
	// request is still pending, and answers errs.Conflict if it is not.
	DecideQuotaRequest(q *QuotaRequest) error
}

// Requests is the quota request workflow.
type Requests struct {
	store RequestStore
	pol   *Service
	log   *slog.Logger
	now   func() time.Time
}

// NewRequests returns the workflow over store; pol's manager is reloaded
// after an approval, so the grant counts at the next decision.
func NewRequests(store RequestStore, pol *Service) *Requests {
	return &Requests{store: store, pol: pol, log: pol.log, now: time.Now}
}

// SetClock replaces the workflow's clock (tests).
func (r *Requests) SetClock(now func() time.Time) { r.now = now }

func (r *Requests) audit(tx RequestTx, p tenancy.Principal, tenantID, action, kind, objID string, before, after any) error {
	now := r.now().UTC()
	e := &tenancy.AuditEntry{ID: id.NewAt("aud", now), At: now, ActorUser: p.UserID, ActorKey: p.KeyID,
		TenantID: tenantID, Action: action, ObjectKind: kind, ObjectID: objID}
	if before != nil {
		e.Before, _ = json.Marshal(before)
	}
	if after != nil {
		e.After, _ = json.Marshal(after)
	}
	if err := tx.InsertAudit(e); err != nil {
		return err
	}
	if kind != "quota_request" || tenantID == "" {
		return nil
	}
	n, ok := tx.(WebhookQueuer)
	if !ok {
		return nil
	}
	// The tenant's alert webhook hears of every step, in the same
	// transaction: a request is never created or decided unannounced.
	ev := RequestEvent{ID: id.NewAt("evt", now), Type: action, At: now, TenantID: tenantID, Request: after}
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	queued, err := n.QueueTenantWebhook(tenantID, ev.ID, body, now)
	if err == nil && !queued && r.log != nil {
		r.log.Debug("quota request notice not queued (no webhook, or the outbox is full)", slog.String("tenant_id", tenantID), slog.String("event", ev.Type))
	}
	return err
}

// WebhookQueuer queues, in a transaction, a signed delivery of body to a
// tenant's alert webhook (sqlstore): false when the tenant has none or
// the outbox is full.
type WebhookQueuer interface {
	QueueTenantWebhook(tenantID, eventID string, body []byte, at time.Time) (bool, error)
}

// RequestEvent is the webhook body announcing a step of a quota request:
// Type is quota_request.create, .approve, .deny or .cancel, Request the
// request after it.
type RequestEvent struct {
	ID       string    `json:"id"`
	Type     string    `json:"type"`
	At       time.Time `json:"at"`
	TenantID string    `json:"tenant_id"`
	Request  any       `json:"request"`
}

// ---- dimensions ----

// requestDimensions are what a request may ask more of: the amounts a
// grant raises, with tokens split by window.
var requestDimensions = []string{"requests", "tokens_rate", "tokens_day", "tokens_month", "gpu_seconds", "cost", "concurrency"}

func validDimension(d string) error {
	if d == "" {
		return errs.Field(errs.Invalid, "dimension", "dimension is required: one of %s", strings.Join(requestDimensions, ", "))
	}
	if !slices.Contains(requestDimensions, d) {
		return errs.Field(errs.Invalid, "dimension", "dimension %q is not one of %s", d, strings.Join(requestDimensions, ", "))
	}
	return nil
}

// limitOf reports whether s limits dimension d and, for a rate, its
// period: a grant raises only limits that exist.
func limitOf(s *Spec, d string) (bool, time.Duration) {
	switch d {
	case "requests":
		if s.Requests != nil {
			return true, s.Requests.Period
		}
	case "tokens_rate":
		if s.TokensRate != nil {
			return true, s.TokensRate.Period
		}
	case "tokens_day":
		return s.Tokens.get(quota.WindowDay) != nil, 0
	case "tokens_month":
		return s.Tokens.get(quota.WindowMonth) != nil, 0
	case "gpu_seconds":
		return s.GPUSeconds != nil, 0
	case "cost":
		return s.Cost != nil, 0
	case "concurrency":
		return s.Concurrency != nil, 0
	}
	return false, 0
}

// grantSpec is the grant that raises dimension d by amount units; period
// is a rate's (the scope's own, so the amount reads as asked).
func grantSpec(d string, amount int64, period time.Duration) Spec {
	switch d {
	case "requests":
		return Spec{Requests: &RateSpec{Limit: amount, Period: period}}
	case "tokens_rate":
		return Spec{TokensRate: &RateSpec{Limit: amount, Period: period}}
	case "tokens_day":
		return Spec{Tokens: Budgets{{Amount: amount, Window: quota.WindowDay}}}
	case "tokens_month":
		return Spec{Tokens: Budgets{{Amount: amount, Window: quota.WindowMonth}}}
	case "gpu_seconds":
		return Spec{GPUSeconds: &Budget{Amount: amount, Window: quota.WindowMonth}}
	case "cost":
		return Spec{Cost: &Budget{Amount: amount, Window: quota.WindowMonth, Money: true}}
	case "concurrency":
		return Spec{Concurrency: &amount}
	}
	return Spec{}
}

// unitOf names the unit of a request's amount.
func unitOf(d string, asked Spec) string {
	switch d {
	case "requests":
		if asked.Requests != nil {
			return "requests/" + formatPeriod(asked.Requests.Period)
		}
	case "tokens_rate":
		if asked.TokensRate != nil {
			return "tokens/" + formatPeriod(asked.TokensRate.Period)
		}
	case "tokens_day":
		return "tokens/day"
	case "tokens_month":
		return "tokens/month"
	case "gpu_seconds":
		return "gpu_seconds/month"
	case "cost":
		return "USD/month"
	case "concurrency":
		return "runs"
	}
	return ""
}

func shownAmount(d string, units int64) any {
	if d == "cost" {
		return float64(units) / 1e6
	}
	return units
}

// amountUnits converts an amount as written (US dollars for cost) into
// the dimension's units.
func amountUnits(d string, v float64) (int64, error) {
	if !(v > 0) {
		return 0, errs.Field(errs.Invalid, "amount", "amount must be above 0")
	}
	if d == "cost" {
		v = math.Round(v * 1e6)
	} else if v != math.Trunc(v) {
		return 0, errs.Field(errs.Invalid, "amount", "amount of %s must be a whole number", d)
	}
	if v > maxRequestUnits || v < 1 {
		return 0, errs.Field(errs.Invalid, "amount", "amount %v is out of range", v)
	}
	return int64(v), nil
}

// parseLife reads how long a grant lasts: a duration such as "72h" or
// whole days such as "3d", at most MaxGrantLife.
func parseLife(field, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok && err != nil {
		if n, perr := strconv.ParseInt(days, 10, 64); perr == nil && n > 0 && n <= int64(MaxGrantLife/(24*time.Hour)) {
			d, err = time.Duration(n)*24*time.Hour, nil
		}
	}
	if err != nil || d <= 0 {
		return 0, errs.Field(errs.Invalid, field, "%s %q is not a positive duration such as 72h or 3d", field, s)
	}
	if d > MaxGrantLife {
		return 0, errs.Field(errs.Invalid, field, "%s %s is longer than a grant may last (%s)", field, s, MaxGrantLife)
	}
	return d, nil
}

func checkText(field, s string, required bool) (string, error) {
	s = strings.TrimSpace(s)
	if required && s == "" {
		return "", errs.Field(errs.Invalid, field, "%s is required", field)
	}
	if len(s) > maxRequestText {
		return "", errs.Field(errs.Invalid, field, "%s is longer than %d characters", field, maxRequestText)
	}
	return s, nil
}

// ---- asking ----

// RequestInput asks for more of one dimension. Scope empty means the
// innermost scope of the caller's chain (their key's project) that limits
// the dimension.
type RequestInput struct {
	Scope     string  `json:"scope"`
	Dimension string  `json:"dimension"`
	Amount    float64 `json:"amount"`
	Duration  string  `json:"duration"`
	Reason    string  `json:"reason"`
}

// Create records a pending request. A member may ask for any scope of
// their own chains (their user, memberships, keys, the projects they work
// in and the departments and tenant above); an admin for any scope of
// their tenant. Nobody asks for the global scope.
func (r *Requests) Create(ctx context.Context, in RequestInput) (*QuotaRequest, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := validDimension(in.Dimension); err != nil {
		return nil, err
	}
	units, err := amountUnits(in.Dimension, in.Amount)
	if err != nil {
		return nil, err
	}
	if in.Duration == "" {
		return nil, errs.Field(errs.Invalid, "duration", "duration is required: how long the raise should last, such as 72h or 3d")
	}
	life, err := parseLife("duration", in.Duration)
	if err != nil {
		return nil, err
	}
	reason, err := checkText("reason", in.Reason, true)
	if err != nil {
		return nil, err
	}
	var kind, oid string
	if in.Scope != "" {
		if kind, oid, err = ParseScope("scope", in.Scope); err != nil {
			return nil, err
		}
		if kind == KindGlobal {
			return nil, errs.Field(errs.Invalid, "scope", "the global limits are the operator's; a request names a scope of a tenant")
		}
	}
	var out *QuotaRequest
	err = r.store.UpdateRequests(ctx, func(tx RequestTx) error {
		snap := r.pol.mgr.Current()
		scope, kind, oid := in.Scope, kind, oid
		if scope == "" {
			d, err := defaultScope(snap, p, in.Dimension)
			if err != nil {
				return err
			}
			scope = d
			kind, oid, _ = ParseScope("scope", scope)
		}
		ref, err := resolveScope(tx, kind, oid)
		if err != nil {
			return err
		}
		if !p.AdminOf(ref.tenant) {
			own, err := ownScope(tx, snap, p, kind, oid, scope, ref)
			if err != nil {
				return err
			}
			if !own {
				return errs.Field(errs.NotFound, "scope", "scope %s not found", scope)
			}
		}
		ok, period := limitOf(&snap.Effective(scope).Spec, in.Dimension)
		if !ok {
			return errs.Field(errs.Invalid, "scope", "%s does not limit %s: a grant raises only limits that exist (see GET /api/v1/usage)", scope, in.Dimension)
		}
		asked := grantSpec(in.Dimension, units, period)
		if err := asked.Validate("amount."); err != nil {
			return errs.Field(errs.Invalid, "amount", "%v", err)
		}
		n, err := tx.PendingQuotaRequests(p.UserID)
		if err != nil {
			return err
		}
		if n >= MaxPendingRequests {
			return errs.E(errs.Conflict, "you have %d pending quota requests, the most allowed; cancel one or wait for a decision", n)
		}
		now := r.now().UTC().Truncate(time.Microsecond)
		out = &QuotaRequest{ID: id.NewAt("qrq", now), TenantID: ref.tenant, Scope: scope, Dimension: in.Dimension, Amount: units,
			Limits: asked, Duration: Duration(life), Reason: reason, RequestedBy: p.UserID, Status: RequestPending, CreatedAt: now}
		if err := tx.InsertQuotaRequest(out); err != nil {
			return err
		}
		return r.audit(tx, p, out.TenantID, "quota_request.create", "quota_request", out.ID, nil, out)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// defaultScope is the innermost scope of p's chain, global aside, whose
// effective limits limit dimension d: the one a raise helps first.
func defaultScope(snap *Snapshot, p tenancy.Principal, d string) (string, error) {
	chain, err := snap.ChainFor(p.TenantID, p.UserID, p.ProjectID, p.KeyID)
	if err != nil {
		return "", err
	}
	for i := len(chain.Keys) - 1; i >= 0; i-- {
		sc := chain.Keys[i]
		if sc == GlobalScope {
			continue
		}
		if ok, _ := limitOf(&snap.Effective(sc).Spec, d); ok {
			return sc, nil
		}
	}
	return "", errs.Field(errs.Invalid, "dimension", "no scope of your chain limits %s, so there is nothing to raise (name one with scope)", d)
}

// ownScope reports whether scope is one of p's own chains: their user,
// their memberships and keys, their tenant, and the projects they work in
// with the departments above them.
func ownScope(tx RequestTx, snap *Snapshot, p tenancy.Principal, kind, oid, scope string, ref scopeRef) (bool, error) {
	if ref.tenant != p.TenantID || p.TenantID == "" {
		return false, nil
	}
	switch kind {
	case KindKey:
		return ref.keyUser == p.UserID, nil
	case KindUser:
		return oid == p.UserID, nil
	case KindTenant:
		return true, nil
	case KindMembership:
		u, _, _ := cutAt(oid)
		return u == p.UserID, nil
	}
	ms, err := tx.Memberships(tenancy.Filter{UserID: p.UserID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if c, err := snap.Chain(p.TenantID, p.UserID, m.ProjectID); err == nil && slices.Contains(c.Keys, scope) {
			return true, nil
		}
	}
	return false, nil
}

// ---- reading ----

// visible reports whether p may see q: its requester, admins of its
// tenant, platform admins. Anyone else finds no such request.
func visible(p tenancy.Principal, q *QuotaRequest) bool {
	return q.RequestedBy == p.UserID || p.AdminOf(q.TenantID)
}

func notFound(reqID string) error {
	return errs.E(errs.NotFound, "quota request %s not found", reqID)
}

// Get returns one request the caller may see.
func (r *Requests) Get(ctx context.Context, reqID string) (*QuotaRequest, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var q *QuotaRequest
	err = r.store.ViewRequests(ctx, func(tx RequestTx) (err error) {
		q, err = tx.QuotaRequest(reqID)
		return err
	})
	if errs.Is(err, errs.NotFound) || (err == nil && !visible(p, q)) {
		return nil, notFound(reqID)
	}
	if q != nil {
		q.markGrant(r.now())
	}
	return q, err
}

// List lists the requests the caller may see: a member their own, a
// tenant admin their tenant's, a platform admin everyone's.
func (r *Requests) List(ctx context.Context, f RequestFilter) ([]*QuotaRequest, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	switch f.Status {
	case "", RequestPending, RequestApproved, RequestDenied, RequestCancelled:
	default:
		return nil, errs.Field(errs.Invalid, "status", "status %q is not pending, approved, denied or cancelled", f.Status)
	}
	if !p.IsPlatformAdmin() {
		if f.TenantID != "" && f.TenantID != p.TenantID {
			return nil, errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", f.TenantID)
		}
		f.TenantID = p.TenantID
		if p.Role != tenancy.RoleTenantAdmin {
			if f.RequestedBy != "" && f.RequestedBy != p.UserID {
				return nil, errs.Field(errs.Forbidden, "user_id", "members see only their own quota requests")
			}
			f.RequestedBy = p.UserID
		}
	}
	if f.Limit <= 0 {
		f.Limit = tenancy.DefaultPageSize
	}
	var out []*QuotaRequest
	err = r.store.ViewRequests(ctx, func(tx RequestTx) (err error) {
		out, err = tx.QuotaRequests(f)
		return err
	})
	now := r.now()
	for _, q := range out {
		q.markGrant(now)
	}
	return out, err
}

// ---- deciding ----

// ApproveInput approves a request, optionally for a different amount
// (in the dimension's unit, US dollars for cost) or for a different time:
// Duration from now, or until ExpiresAt. Without either the grant lasts
// the duration asked for, from now.
type ApproveInput struct {
	Amount    float64    `json:"amount"`
	Duration  string     `json:"duration"`
	ExpiresAt *time.Time `json:"expires_at"`
	Note      string     `json:"note"`
}

// DenyInput denies a request; the reason is required and shown to the
// requester.
type DenyInput struct {
	Reason string `json:"reason"`
}

// decide loads a pending request p may decide, runs fn on a copy, stores
// the copy as decided and audits action. Admins of the request's tenant
// decide it, but a raise (approval) of the tenant's own scope is a
// platform admin's, as setting its limits is.
func (r *Requests) decide(ctx context.Context, reqID, action string, raise bool, fn func(tx RequestTx, p tenancy.Principal, q *QuotaRequest, now time.Time) error) (*QuotaRequest, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var out *QuotaRequest
	err = r.store.UpdateRequests(ctx, func(tx RequestTx) error {
		before, err := tx.QuotaRequest(reqID)
		if errs.Is(err, errs.NotFound) {
			return notFound(reqID)
		}
		if err != nil {
			return err
		}
		if !visible(p, before) {
			return notFound(reqID)
		}
		if !p.AdminOf(before.TenantID) {
			return errs.E(errs.Forbidden, "only an admin of the request's tenant may decide a quota request")
		}
		kind, _, _ := ParseScope("scope", before.Scope)
		if raise && kind == KindTenant && !p.IsPlatformAdmin() {
			return errs.E(errs.Forbidden, "a tenant's own limits are raised by a platform admin; an admin of the tenant may deny the request")
		}
		if before.Status != RequestPending {
			return errs.E(errs.Conflict, "quota request %s is already %s", reqID, before.Status)
		}
		now := r.now().UTC().Truncate(time.Microsecond)
		after := *before
		after.DecidedBy, after.DecidedAt = p.UserID, &now
		if err := fn(tx, p, &after, now); err != nil {
			return err
		}
		if err := tx.DecideQuotaRequest(&after); err != nil {
			return err
		}
		out = &after
		return r.audit(tx, p, after.TenantID, action, "quota_request", after.ID, before, &after)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Approve grants a pending request: a temporary grant on its scope, in
// force at once and gone at its expiry. Admins of the scope's tenant
// approve (platform admins for a tenant's own scope).
func (r *Requests) Approve(ctx context.Context, reqID string, in ApproveInput) (*QuotaRequest, error) {
	note, err := checkText("note", in.Note, false)
	if err != nil {
		return nil, err
	}
	if in.Duration != "" && in.ExpiresAt != nil {
		return nil, errs.Field(errs.Invalid, "duration", "give duration or expires_at, not both")
	}
	var life time.Duration
	if in.Duration != "" {
		if life, err = parseLife("duration", in.Duration); err != nil {
			return nil, err
		}
	}
	out, err := r.decide(ctx, reqID, "quota_request.approve", true, func(tx RequestTx, p tenancy.Principal, q *QuotaRequest, now time.Time) error {
		units := q.Amount
		if in.Amount != 0 {
			u, err := amountUnits(q.Dimension, in.Amount)
			if err != nil {
				return err
			}
			units = u
		}
		var expires time.Time
		switch {
		case in.ExpiresAt != nil:
			expires = in.ExpiresAt.UTC().Truncate(time.Microsecond)
			if !expires.After(now) || expires.Sub(now) > MaxGrantLife {
				return errs.Field(errs.Invalid, "expires_at", "expires_at must be in the future and within %s", MaxGrantLife)
			}
		case life > 0:
			expires = now.Add(life)
		default:
			expires = now.Add(time.Duration(q.Duration))
		}
		kind, oid, _ := ParseScope("scope", q.Scope)
		if _, err := scopeTenant(tx, kind, oid); errs.Is(err, errs.NotFound) {
			return errs.E(errs.Conflict, "%s no longer exists; deny the request instead", q.Scope)
		} else if err != nil {
			return err
		}
		ok, _ := limitOf(&r.pol.mgr.Current().Effective(q.Scope).Spec, q.Dimension)
		if !ok {
			return errs.E(errs.Conflict, "%s no longer limits %s, so a grant would raise nothing; deny the request or set a limit first", q.Scope, q.Dimension)
		}
		_, period := limitOf(&q.Limits, q.Dimension)
		spec := grantSpec(q.Dimension, units, period)
		if err := spec.Validate("amount."); err != nil {
			return errs.Field(errs.Invalid, "amount", "%v", err)
		}
		reason := fmt.Sprintf("quota request %s: %s", q.ID, q.Reason)
		if len(reason) > maxRequestText {
			reason = reason[:maxRequestText]
		}
		g := &Grant{ID: id.NewAt("grt", now), Scope: q.Scope, TenantID: q.TenantID, Limits: spec, Reason: reason,
			CreatedBy: p.UserID, CreatedAt: now, ExpiresAt: expires}
		if err := tx.InsertGrant(g); err != nil {
			return err
		}
		if err := r.audit(tx, p, g.TenantID, "grant.create", "grant", g.ID, nil, g); err != nil {
			return err
		}
		q.Status, q.Note, q.GrantedAmount, q.GrantID, q.ExpiresAt = RequestApproved, note, units, g.ID, &expires
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := r.pol.mgr.Reload(ctx); err != nil {
		// The grant is committed; the next reload (the change watch) picks
		// it up.
		r.log.Error("policy reload after approving a quota request failed", slog.String("error", err.Error()))
	}
	return out, nil
}

// Deny refuses a pending request with a reason the requester sees.
func (r *Requests) Deny(ctx context.Context, reqID string, in DenyInput) (*QuotaRequest, error) {
	reason, err := checkText("reason", in.Reason, true)
	if err != nil {
		return nil, err
	}
	return r.decide(ctx, reqID, "quota_request.deny", false, func(_ RequestTx, _ tenancy.Principal, q *QuotaRequest, _ time.Time) error {
		q.Status, q.Note = RequestDenied, reason
		return nil
	})
}

// Cancel withdraws a pending request; only its requester may.
func (r *Requests) Cancel(ctx context.Context, reqID string) (*QuotaRequest, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var out *QuotaRequest
	err = r.store.UpdateRequests(ctx, func(tx RequestTx) error {
		before, err := tx.QuotaRequest(reqID)
		if errs.Is(err, errs.NotFound) || (err == nil && !visible(p, before)) {
			return notFound(reqID)
		}
		if err != nil {
			return err
		}
		if before.RequestedBy != p.UserID {
			return errs.E(errs.Forbidden, "only the requester may cancel a quota request; an admin denies it")
		}
		if before.Status != RequestPending {
			return errs.E(errs.Conflict, "quota request %s is already %s", reqID, before.Status)
		}
		now := r.now().UTC().Truncate(time.Microsecond)
		after := *before
		after.Status, after.DecidedBy, after.DecidedAt = RequestCancelled, p.UserID, &now
		if err := tx.DecideQuotaRequest(&after); err != nil {
			return err
		}
		out = &after
		return r.audit(tx, p, after.TenantID, "quota_request.cancel", "quota_request", after.ID, before, &after)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
