// Package alerts owns quota threshold alerts: noticing that a scope's
// budget (tokens per day or month, GPU seconds, cost) has reached 80, 90
// or 100 percent of its limit (the thresholds are configurable), deciding
// once per period and threshold across every instance sharing the
// database which instance announces it, and announcing it: a log line, a
// metric, and signed webhooks delivered from a durable, bounded outbox with
// retries. It also owns the tenants' webhook endpoints.
//
// The pieces: a Tracker remembers which limited scopes are in use (fed by
// the quota engine's admissions, in memory, no I/O), an Alerter sweeps
// them every few seconds and records newly crossed thresholds (the
// database's unique key makes "once" hold across instances), a Dispatcher
// delivers the outbox, and a Service is the admin API's door to the
// webhooks and the delivery log.
package alerts

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/tenancy"
)

// EventType is the type of every threshold event.
const EventType = "quota.threshold"

// Delivery targets: the tenant's own webhook, or the platform's (config).
const (
	TargetTenant = "tenant"
	TargetGlobal = "global"
)

// Delivery states.
const (
	StatusPending   = "pending"
	StatusDelivered = "delivered"
	StatusFailed    = "failed"
)

// Event is one threshold crossing: a scope's use of one budget reached
// Threshold percent of its limit in one period. It is also the webhook's
// JSON body.
type Event struct {
	ID   string    `json:"id"`
	Type string    `json:"type"`
	At   time.Time `json:"at"`
	// Tenant is nil for the global scope.
	Tenant    *Named  `json:"tenant,omitempty"`
	Scope     Scope   `json:"scope"`
	Dimension string  `json:"dimension"`
	Window    string  `json:"window"`
	Period    string  `json:"period"`
	Threshold int     `json:"threshold"`
	Percent   float64 `json:"percent"`
	// Used and Limit are in Unit: tokens, seconds (GPU) or micro_usd.
	Used    int64     `json:"used"`
	Limit   int64     `json:"limit"`
	Unit    string    `json:"unit"`
	ResetAt time.Time `json:"reset_at"`
}

// Named is an object's id and, when known, its name.
type Named struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

// Scope names the scope an event is about: its key ("project/prj_…"),
// kind, id and, when known, name.
type Scope struct {
	Key  string `json:"key"`
	Kind string `json:"kind"`
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
}

// TenantID is the event's tenant, "" for the global scope.
func (e *Event) TenantID() string {
	if e.Tenant == nil {
		return ""
	}
	return e.Tenant.ID
}

// Webhook is a tenant's alert endpoint. Its secret is stored sealed with
// the server's secret and never shown again after it is set.
type Webhook struct {
	TenantID  string    `json:"tenant_id"`
	URL       string    `json:"url"`
	UpdatedBy string    `json:"updated_by"`
	UpdatedAt time.Time `json:"updated_at"`
	Sealed    string    `json:"-"`
}

// Delivery is one event's delivery to one endpoint, and its log: how many
// attempts, the last status code and error, when the next attempt is due.
type Delivery struct {
	ID       string `json:"id"`
	EventID  string `json:"event_id"`
	TenantID string `json:"tenant_id,omitempty"`
	Target   string `json:"target"`
	Status   string `json:"status"`
	Attempts int    `json:"attempts"`
	// NextAttemptAt is when a pending delivery is tried next (while an
	// attempt is under way: when another instance may take it over).
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	LastStatus    int        `json:"last_status_code,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	// URL is where the last attempt went.
	URL       string    `json:"url,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// The event, for the log's readers.
	Scope     string `json:"scope"`
	Dimension string `json:"dimension"`
	Window    string `json:"window"`
	Period    string `json:"period"`
	Threshold int    `json:"threshold"`

	// Body is the event's JSON, what is signed and sent.
	Body []byte `json:"-"`
	// next is NextAttemptAt as stored, for claiming.
	next time.Time
}

// SetNext records the stored next-attempt time (the store's use).
func (d *Delivery) SetNext(t time.Time) {
	d.next = t
	d.NextAttemptAt = nil
	if d.Status == StatusPending {
		d.NextAttemptAt = &t
	}
}

// Next is the stored next-attempt time.
func (d *Delivery) Next() time.Time { return d.next }

// DeliveryFilter selects deliveries for the log, newest first.
type DeliveryFilter struct {
	TenantID string // "" every tenant's
	Target   string // "" both
	Status   string // "" any
	Before   string // page: ids before this one
	Limit    int
}

// Recorded is what RecordAlert did.
type Recorded struct {
	// Won is true when this call inserted the event: its caller
	// announces it. False: another instance (or an earlier sweep) did.
	Won bool
	// Queued counts the deliveries queued with it.
	Queued int
	// Dropped counts the deliveries not queued because the outbox was
	// full.
	Dropped int
}

// Store keeps events, the outbox and the webhooks (sqlstore.Store).
type Store interface {
	// RecordAlert inserts ev unless an event with its scope, dimension,
	// window, period and threshold exists. When it inserts, it queues in
	// the same transaction a delivery of body to the tenant's webhook (if
	// the tenant has one) and, if global, to the platform's; unless the
	// outbox already holds outboxMax pending deliveries, when it queues
	// none and reports them dropped.
	RecordAlert(ctx context.Context, ev *Event, body []byte, global bool, outboxMax int) (Recorded, error)
	// ScopeNames returns the tenant's name and the scope's ("" when
	// unknown).
	ScopeNames(ctx context.Context, tenantID, scope string) (tenantName, scopeName string, err error)

	PutWebhook(ctx context.Context, w *Webhook, audit *tenancy.AuditEntry) error
	// AlertWebhook returns a tenant's webhook, or errs.NotFound.
	AlertWebhook(ctx context.Context, tenantID string) (*Webhook, error)
	DeleteWebhook(ctx context.Context, tenantID string, audit *tenancy.AuditEntry) error

	// DueDeliveries lists up to limit pending deliveries due at now,
	// oldest due first.
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*Delivery, error)
	// ClaimDelivery takes d for one attempt, if no one else has since it
	// was read: its attempts grow by one and its next attempt moves to
	// leaseUntil (when another instance may take it over, should this one
	// die). False: another instance took it.
	ClaimDelivery(ctx context.Context, d *Delivery, leaseUntil, now time.Time) (bool, error)
	// FinishAttempt records the outcome of the attempt d.Attempts
	// (status, next attempt, last status code and error, URL); nothing if
	// another instance has taken the delivery over since.
	FinishAttempt(ctx context.Context, d *Delivery, now time.Time) error
	// PendingDeliveries counts the outbox's undelivered rows.
	PendingDeliveries(ctx context.Context) (int, error)
	Deliveries(ctx context.Context, f DeliveryFilter) ([]*Delivery, error)
	// PruneAlerts deletes events, and finished deliveries, from before
	// before.
	PruneAlerts(ctx context.Context, before time.Time) (int, error)
}

// SignatureHeader carries the webhook signature; EventIDHeader the event id.
const (
	SignatureHeader = "X-Sluice-Signature"
	EventIDHeader   = "X-Sluice-Event-Id"
)

// Sign returns the X-Sluice-Signature value for body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<unix seconds>.<body>" keyed
// with secret>". Signing the time with the body lets a receiver refuse a
// replayed delivery by its age.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + mac(secret, ts, body)
}

func mac(secret, ts string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Signature verification errors.
var (
	ErrBadSignature = errors.New("webhook signature does not match")
	ErrStale        = errors.New("webhook signature is too old or from the future")
)

// Verify checks a signature header for body as a receiver should: the
// HMAC matches (compared in constant time) and its time is within
// tolerance of now. It is the reference for receivers in other languages.
func Verify(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs []string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return fmt.Errorf("%w: header is not t=<unix>,v1=<hex>", ErrBadSignature)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}
