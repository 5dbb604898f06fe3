package tenancy

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/sealed"
)

// ServiceLangflow names the LangFlow server Sluice fronts, the one
// upstream service whose keys are held per user and project today.
const ServiceLangflow = "langflow"

// MaxUpstreamKey is the longest upstream key accepted, in bytes.
const MaxUpstreamKey = 1024

// UpstreamKey is the key Sluice forwards with, to an upstream service, on
// behalf of a user (scope user/ID) or a project (project/ID). Its value
// is stored sealed with the server's secret and never shown again: Hint
// is its last four characters, to tell keys apart.
type UpstreamKey struct {
	TenantID  string    `json:"tenant_id"`
	Service   string    `json:"service"`
	Scope     string    `json:"scope"`
	Hint      string    `json:"hint"`
	UpdatedBy string    `json:"updated_by"`
	UpdatedAt time.Time `json:"updated_at"`
	Sealed    string    `json:"-"`
}

// aad binds a sealed key to its row: moved to another, it does not open.
func upstreamAAD(tenantID, service, scope string) []byte {
	return []byte(tenantID + "\x00" + service + "\x00" + scope)
}

// SetSealer gives the service the box upstream keys are sealed with (the
// server's secret). Without one, storing an upstream key is refused.
func (s *Service) SetSealer(b *sealed.Box) { s.sealer = b }

// upstreamOwner resolves scope (user/ID or project/ID) to its tenant and
// checks that p may manage its upstream keys: the user themself or an
// admin of the user's tenant; for a project, an admin of its tenant.
// Anything p may not see is answered as not found.
func upstreamOwner(tx Tx, p Principal, scope string) (string, error) {
	kind, id, ok := strings.Cut(scope, "/")
	missing := errs.Field(errs.NotFound, "scope", "scope %s not found", scope)
	switch {
	case !ok || id == "":
		return "", errs.Field(errs.Invalid, "scope", "scope %q must be user/<user id> or project/<project id>", scope)
	case kind == "user":
		u, err := tx.User(id)
		if errs.Is(err, errs.NotFound) {
			return "", missing
		} else if err != nil {
			return "", err
		}
		if u.ID != p.UserID && !p.AdminOf(u.TenantID) {
			if p.TenantID == u.TenantID {
				return "", errs.Field(errs.Forbidden, "scope", "only %s or an admin of the tenant may set their upstream key", u.Name)
			}
			return "", missing
		}
		return u.TenantID, nil
	case kind == "project":
		pr, err := tx.Project(id)
		if errs.Is(err, errs.NotFound) {
			return "", missing
		} else if err != nil {
			return "", err
		}
		if !p.AdminOf(pr.TenantID) {
			if p.TenantID == pr.TenantID {
				return "", errs.Field(errs.Forbidden, "scope", "only an admin of the tenant may set a project's upstream key")
			}
			return "", missing
		}
		return pr.TenantID, nil
	}
	return "", errs.Field(errs.Invalid, "scope", "scope %q must be user/<user id> or project/<project id>", scope)
}

func checkUpstreamSecret(v string) error {
	if v == "" {
		return errs.Field(errs.Invalid, "api_key", "api_key is required")
	}
	if len(v) > MaxUpstreamKey {
		return errs.Field(errs.Invalid, "api_key", "api_key is %d bytes, at most %d are accepted", len(v), MaxUpstreamKey)
	}
	for _, r := range v {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return errs.Field(errs.Invalid, "api_key", "api_key must be printable and contain no spaces")
		}
	}
	return nil
}

func checkService(service string) error {
	if service != ServiceLangflow {
		return errs.Field(errs.Invalid, "service", "unknown upstream service %q (known: %s)", service, ServiceLangflow)
	}
	return nil
}

// SetUpstreamKey stores the key Sluice forwards with to service on behalf
// of scope, sealed, replacing any earlier one. The audit entry names the
// scope and the key's hint, never the key.
func (s *Service) SetUpstreamKey(ctx context.Context, service, scope, secret string) (*UpstreamKey, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkService(service); err != nil {
		return nil, err
	}
	if err := checkUpstreamSecret(secret); err != nil {
		return nil, err
	}
	if s.sealer == nil {
		return nil, errs.E(errs.Conflict, "this server has no secret to seal upstream keys with: an operator sets one (secret_key_env, SLUICE_SECRET_KEY by default, at least %d bytes) and restarts", sealed.MinSecret)
	}
	var k *UpstreamKey
	err = s.update(ctx, func(tx Tx) error {
		tenantID, err := upstreamOwner(tx, p, scope)
		if err != nil {
			return err
		}
		before, err := tx.UpstreamKey(tenantID, service, scope)
		if err != nil && !errs.Is(err, errs.NotFound) {
			return err
		}
		k = &UpstreamKey{TenantID: tenantID, Service: service, Scope: scope, Hint: "…" + secret[max(0, len(secret)-4):],
			UpdatedBy: p.UserID, UpdatedAt: s.now()}
		k.Sealed = s.sealer.Seal([]byte(secret), upstreamAAD(tenantID, service, scope))
		if err := tx.PutUpstreamKey(k); err != nil {
			return err
		}
		var b any
		if before != nil {
			b = before
		}
		return s.audit(tx, p, tenantID, "upstream_key.set", "upstream_key", service+":"+scope, b, k)
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// DeleteUpstreamKey removes the key held for scope: its calls forward
// with the next key that applies (the project's, then the server's).
func (s *Service) DeleteUpstreamKey(ctx context.Context, service, scope string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	if err := checkService(service); err != nil {
		return err
	}
	return s.update(ctx, func(tx Tx) error {
		tenantID, err := upstreamOwner(tx, p, scope)
		if err != nil {
			return err
		}
		before, err := tx.UpstreamKey(tenantID, service, scope)
		if err != nil {
			return err
		}
		if err := tx.DeleteUpstreamKey(tenantID, service, scope); err != nil {
			return err
		}
		return s.audit(tx, p, tenantID, "upstream_key.delete", "upstream_key", service+":"+scope, before, nil)
	})
}

// UpstreamKeys lists the keys held for service (hints, never values): a
// tenant admin sees the tenant's, a member their own.
func (s *Service) UpstreamKeys(ctx context.Context, service, tenantID string) ([]*UpstreamKey, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkService(service); err != nil {
		return nil, err
	}
	if tenantID == "" && !p.IsPlatformAdmin() {
		tenantID = p.TenantID // a platform admin without one sees every tenant's
	}
	if !p.IsPlatformAdmin() && tenantID != p.TenantID {
		return nil, errs.Field(errs.NotFound, "tenant_id", "tenant not found")
	}
	var out []*UpstreamKey
	err = s.store.View(ctx, func(tx Tx) error {
		all, err := tx.UpstreamKeys(tenantID, service)
		if err != nil {
			return err
		}
		for _, k := range all {
			if p.AdminOf(k.TenantID) || k.Scope == "user/"+p.UserID {
				out = append(out, k)
			}
		}
		return nil
	})
	if out == nil {
		out = []*UpstreamKey{}
	}
	return out, err
}

// ForwardKey returns the key to forward with to service for a call by
// userID in projectID: the user's own, else the project's, else "" (the
// server's own key then). A key that no longer opens (the server secret
// changed) fails the call rather than forwarding with another identity.
func (s *Service) ForwardKey(ctx context.Context, service, tenantID, userID, projectID string) (string, error) {
	scopes := []string{"user/" + userID}
	if projectID != "" {
		scopes = append(scopes, "project/"+projectID)
	}
	var found *UpstreamKey
	err := s.store.View(ctx, func(tx Tx) error {
		for _, sc := range scopes {
			k, err := tx.UpstreamKey(tenantID, service, sc)
			if errs.Is(err, errs.NotFound) {
				continue
			}
			if err != nil {
				return err
			}
			found = k
			return nil
		}
		return nil
	})
	if err != nil || found == nil {
		return "", err
	}
	if s.sealer == nil {
		return "", errs.E(errs.Unavailable, "the %s key held for %s cannot be opened: this server has no secret_key_env set", service, found.Scope)
	}
	v, err := s.sealer.Open(found.Sealed, upstreamAAD(tenantID, service, found.Scope))
	if err != nil {
		why := "it is corrupt"
		if errors.Is(err, sealed.ErrWrongSecret) {
			why = "it was sealed with a different server secret; set it again"
		}
		return "", errs.E(errs.Unavailable, "the %s key held for %s cannot be opened: %s", service, found.Scope, why)
	}
	return string(v), nil
}
