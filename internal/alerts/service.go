package alerts

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/sealed"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Service is the admin API's door to alerts: the tenants' webhooks and
// the delivery log, with who may see and change what.
type Service struct {
	Store Store
	// Box seals webhook secrets; nil, none can be set.
	Box *sealed.Box
	// CheckURL refuses a webhook URL the SSRF guard would refuse (loopback,
	// private and link-local destinations not in allow_hosts); nil checks
	// the form only. Deliveries dial through the guard as well, so a name
	// that later resolves somewhere private is refused then.
	CheckURL func(raw string) error
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Secret bounds.
const (
	minSecret = 16
	maxSecret = 256
	maxURL    = 2048
)

// WebhookSet is the answer to setting a webhook: Secret is there only
// when Sluice generated it, this once.
type WebhookSet struct {
	*Webhook
	Secret string `json:"secret,omitempty"`
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// adminTenant resolves whose webhook a call is about: a tenant admin's
// own tenant (another's is not found), any tenant for a platform admin
// (who must name it). Members may not.
func adminTenant(ctx context.Context, tenantID string) (tenancy.Principal, string, error) {
	p, ok := tenancy.PrincipalFrom(ctx)
	if !ok {
		return p, "", errs.E(errs.Unauthorized, "no caller")
	}
	if tenantID == "" {
		tenantID = p.TenantID
	}
	switch {
	case tenantID == "":
		return p, "", errs.Field(errs.Invalid, "tenant_id", "tenant_id is required (the platform's own webhook is set in the configuration, alerts.webhook)")
	case p.AdminOf(tenantID):
		return p, tenantID, nil
	case p.TenantID == tenantID:
		return p, "", errs.E(errs.Forbidden, "only an admin of the tenant may manage its alert webhook")
	}
	return p, "", errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID)
}

// CheckWebhookURL checks a webhook URL's form: absolute http(s), no
// credentials, no fragment, at most 2048 bytes.
func CheckWebhookURL(raw string) error {
	if raw == "" {
		return errs.Field(errs.Invalid, "url", "url is required")
	}
	if len(raw) > maxURL {
		return errs.Field(errs.Invalid, "url", "url is %d bytes long; the maximum is %d", len(raw), maxURL)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errs.Field(errs.Invalid, "url", "url must be an absolute http or https URL")
	}
	if u.User != nil {
		return errs.Field(errs.Invalid, "url", "url must not hold credentials: the signature authenticates the sender")
	}
	if u.Fragment != "" {
		return errs.Field(errs.Invalid, "url", "url must not have a fragment")
	}
	return nil
}

func checkSecret(v string) error {
	if len(v) < minSecret || len(v) > maxSecret {
		return errs.Field(errs.Invalid, "secret", "secret must be %d to %d bytes long (or omitted: one is generated)", minSecret, maxSecret)
	}
	for _, r := range v {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return errs.Field(errs.Invalid, "secret", "secret must be printable and contain no spaces")
		}
	}
	return nil
}

// NewSecret returns a fresh webhook secret: "whsec_" and 32 random bytes.
func NewSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return "whsec_" + base64.RawURLEncoding.EncodeToString(b[:])
}

// SetWebhook sets the tenant's webhook (tenantID "" for the caller's own),
// replacing any earlier one. Without a secret one is generated and
// returned this once; a given secret is never echoed. The audit entry
// names the URL's host, never the URL (which may hold a token) or the
// secret.
func (s *Service) SetWebhook(ctx context.Context, tenantID, rawURL, secret string) (*WebhookSet, error) {
	p, tenantID, err := adminTenant(ctx, tenantID)
	if err != nil {
		return nil, err
	}
	rawURL = strings.TrimSpace(rawURL)
	if err := CheckWebhookURL(rawURL); err != nil {
		return nil, err
	}
	if s.CheckURL != nil {
		if err := s.CheckURL(rawURL); err != nil {
			return nil, errs.Field(errs.Invalid, "url", "%s", messageOf(err))
		}
	}
	out := &WebhookSet{}
	if secret == "" {
		secret = NewSecret()
		out.Secret = secret
	} else if err := checkSecret(secret); err != nil {
		return nil, err
	}
	if s.Box == nil {
		return nil, errs.E(errs.Conflict, "this server has no secret to seal webhook secrets with: an operator sets one (secret_key_env, SLUICE_SECRET_KEY by default, at least %d bytes) and restarts", sealed.MinSecret)
	}
	// A platform admin may name any tenant: it must exist.
	if name, _, err := s.Store.ScopeNames(ctx, tenantID, ""); err != nil {
		return nil, err
	} else if name == "" {
		return nil, errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID)
	}
	now := s.now()
	w := &Webhook{TenantID: tenantID, URL: rawURL, UpdatedBy: p.UserID, UpdatedAt: now.UTC()}
	w.Sealed = s.Box.Seal([]byte(secret), webhookAAD(tenantID))
	audit, err := auditEntry(p, now, tenantID, "alert_webhook.set", map[string]string{"host": hostOf(rawURL)})
	if err != nil {
		return nil, err
	}
	if err := s.Store.PutWebhook(ctx, w, audit); err != nil {
		return nil, err
	}
	out.Webhook = w
	return out, nil
}

// Webhook returns the tenant's webhook (never its secret).
func (s *Service) Webhook(ctx context.Context, tenantID string) (*Webhook, error) {
	_, tenantID, err := adminTenant(ctx, tenantID)
	if err != nil {
		return nil, err
	}
	w, err := s.Store.AlertWebhook(ctx, tenantID)
	if errs.Is(err, errs.NotFound) {
		return nil, errs.E(errs.NotFound, "tenant %s has no alert webhook", tenantID)
	}
	return w, err
}

// DeleteWebhook removes the tenant's webhook: its pending deliveries fail
// at their next attempt.
func (s *Service) DeleteWebhook(ctx context.Context, tenantID string) error {
	p, tenantID, err := adminTenant(ctx, tenantID)
	if err != nil {
		return err
	}
	audit, err := auditEntry(p, s.now(), tenantID, "alert_webhook.delete", nil)
	if err != nil {
		return err
	}
	err = s.Store.DeleteWebhook(ctx, tenantID, audit)
	if errs.Is(err, errs.NotFound) {
		return errs.E(errs.NotFound, "tenant %s has no alert webhook", tenantID)
	}
	return err
}

// Deliveries lists the delivery log, newest first: a platform admin sees
// every delivery (or one tenant's, f.TenantID), a tenant admin only their
// tenant's deliveries to its own webhook (not those to the platform's).
func (s *Service) Deliveries(ctx context.Context, f DeliveryFilter) ([]*Delivery, error) {
	p, ok := tenancy.PrincipalFrom(ctx)
	if !ok {
		return nil, errs.E(errs.Unauthorized, "no caller")
	}
	if !p.IsPlatformAdmin() {
		if f.TenantID != "" && f.TenantID != p.TenantID {
			return nil, errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", f.TenantID)
		}
		if !p.AdminOf(p.TenantID) {
			return nil, errs.E(errs.Forbidden, "only admins may read the alert delivery log")
		}
		f.TenantID = p.TenantID
		if f.Target == TargetGlobal {
			return nil, errs.Field(errs.Forbidden, "target", "only platform admins see deliveries to the platform's webhook")
		}
		f.Target = TargetTenant
	}
	switch f.Target {
	case "", TargetTenant, TargetGlobal:
	default:
		return nil, errs.Field(errs.Invalid, "target", "target must be %s or %s", TargetTenant, TargetGlobal)
	}
	switch f.Status {
	case "", StatusPending, StatusDelivered, StatusFailed:
	default:
		return nil, errs.Field(errs.Invalid, "status", "status must be %s, %s or %s", StatusPending, StatusDelivered, StatusFailed)
	}
	return s.Store.Deliveries(ctx, f)
}

// auditEntry is an audit log entry for a webhook change.
func auditEntry(p tenancy.Principal, now time.Time, tenantID, action string, after any) (*tenancy.AuditEntry, error) {
	e := &tenancy.AuditEntry{ID: id.NewAt("aud", now), At: now.UTC(), ActorUser: p.UserID, ActorKey: p.KeyID,
		TenantID: tenantID, Action: action, ObjectKind: "alert_webhook", ObjectID: tenantID}
	if after != nil {
		b, err := json.Marshal(after)
		if err != nil {
			return nil, errs.Wrap(err, "audit %s", action)
		}
		e.After = b
	}
	return e, nil
}

// messageOf is an error's message fit for the caller.
func messageOf(err error) string {
	var e *errs.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
