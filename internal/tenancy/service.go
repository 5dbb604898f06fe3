package tenancy

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/sealed"
)

// Page sizes for lists.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Service applies the tenancy rules: validation, who may see and change what,
// and an audit entry for every change, written in the same transaction.
type Service struct {
	store Store
	clock func() time.Time
	log   *slog.Logger
	// OnChange, when set, runs after every committed change (the policy
	// manager rebuilds its view of the tree).
	OnChange func(ctx context.Context)

	auth   authCache
	sealer *sealed.Box // seals upstream keys (nil: none may be stored)
}

// update runs fn in a write transaction and, once it commits, tells
// OnChange.
func (s *Service) update(ctx context.Context, fn func(Tx) error) error {
	if err := s.store.Update(ctx, fn); err != nil {
		return err
	}
	s.ForgetKeys() // a key, user or membership may have changed
	if s.OnChange != nil {
		s.OnChange(ctx)
	}
	return nil
}

// NewService returns a Service over store.
func NewService(store Store, log *slog.Logger) *Service {
	return &Service{store: store, clock: time.Now, log: log}
}

// SetClock replaces the service's clock (tests).
func (s *Service) SetClock(now func() time.Time) { s.clock = now }

// now is the service's time, at the microsecond precision the store keeps,
// so an object returned from a write equals the one read back later.
func (s *Service) now() time.Time { return s.clock().UTC().Truncate(time.Microsecond) }

// SystemPrincipal acts for Sluice itself (bootstrap, policy files).
var SystemPrincipal = Principal{UserID: "system", UserName: "system", Role: RolePlatformAdmin}

func principal(ctx context.Context) (Principal, error) {
	p, ok := PrincipalFrom(ctx)
	if !ok {
		return Principal{}, errs.E(errs.Unauthorized, "an API key is required")
	}
	return p, nil
}

// mayAdmin decides whether p may administer objects of tenantID. Objects of
// another tenant are reported missing rather than forbidden, so that ids
// leak nothing across tenants.
func mayAdmin(p Principal, tenantID, what string) error {
	if p.AdminOf(tenantID) {
		return nil
	}
	if p.TenantID != tenantID {
		return errs.E(errs.NotFound, "%s not found", what)
	}
	return errs.E(errs.Forbidden, "only an admin of this tenant may do this to %s", what)
}

// mayRead decides whether p may see an object of tenantID. self is true when
// the object is p's own (their user, key or membership).
func mayRead(p Principal, tenantID, what string, self bool) error {
	if self || p.AdminOf(tenantID) {
		return nil
	}
	return mayAdmin(p, tenantID, what)
}

func pageOf(f Filter) (Filter, error) {
	switch {
	case f.Limit == 0:
		f.Limit = DefaultPageSize
	case f.Limit < 0 || f.Limit > MaxPageSize:
		return f, errs.Field(errs.Invalid, "limit", "limit must be between 1 and %d", MaxPageSize)
	}
	return f, nil
}

// scopeToTenant restricts a list filter to what p may see.
func scopeToTenant(p Principal, f Filter) (Filter, error) {
	if p.IsPlatformAdmin() {
		return f, nil
	}
	if f.TenantID != "" && f.TenantID != p.TenantID {
		return f, errs.E(errs.NotFound, "tenant not found")
	}
	f.TenantID = p.TenantID
	return f, nil
}

func (s *Service) audit(tx Tx, p Principal, tenantID, action, kind, objID string, before, after any) error {
	e := &AuditEntry{
		ID: id.NewAt("aud", s.now()), At: s.now().UTC(), ActorUser: p.UserID, ActorKey: p.KeyID,
		TenantID: tenantID, Action: action, ObjectKind: kind, ObjectID: objID,
	}
	var err error
	if before != nil {
		if e.Before, err = json.Marshal(before); err != nil {
			return errs.Wrap(err, "audit %s", action)
		}
	}
	if after != nil {
		if e.After, err = json.Marshal(after); err != nil {
			return errs.Wrap(err, "audit %s", action)
		}
	}
	return tx.InsertAudit(e)
}

// ---- tenants ----

// TenantInput creates a tenant.
type TenantInput struct {
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	Timezone    string `json:"timezone"`
}

// TenantPatch changes a tenant; nil fields stay as they are.
type TenantPatch struct {
	Name        *string `json:"name"`
	DisplayName *string `json:"display_name"`
	Timezone    *string `json:"timezone"`
}

func (t *Tenant) check() error {
	if err := ValidName("name", t.Name); err != nil {
		return err
	}
	if err := validDisplayName(t.DisplayName); err != nil {
		return err
	}
	return ValidTimezone("timezone", t.Timezone)
}

// CreateTenant creates a tenant. Platform admins only.
func (s *Service) CreateTenant(ctx context.Context, in TenantInput) (*Tenant, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() {
		return nil, errs.E(errs.Forbidden, "only a platform admin may create tenants")
	}
	now := s.now().UTC()
	t := &Tenant{ID: id.NewAt("ten", now), Name: in.Name, DisplayName: in.DisplayName, Timezone: in.Timezone, CreatedAt: now, UpdatedAt: now}
	if t.Timezone == "" {
		t.Timezone = "UTC"
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	err = s.update(ctx, func(tx Tx) error {
		if err := tx.InsertTenant(t); err != nil {
			return err
		}
		return s.audit(tx, p, t.ID, "tenant.create", "tenant", t.ID, nil, t)
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Tenant returns one tenant.
func (s *Service) Tenant(ctx context.Context, tenantID string) (*Tenant, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() && p.TenantID != tenantID {
		return nil, errs.E(errs.NotFound, "tenant not found")
	}
	var t *Tenant
	err = s.store.View(ctx, func(tx Tx) (err error) {
		t, err = tx.Tenant(tenantID)
		return err
	})
	return t, err
}

// Tenants lists the tenants p may see.
func (s *Service) Tenants(ctx context.Context, f Filter) ([]*Tenant, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if f, err = pageOf(f); err != nil {
		return nil, err
	}
	if f, err = scopeToTenant(p, f); err != nil {
		return nil, err
	}
	var out []*Tenant
	err = s.store.View(ctx, func(tx Tx) (err error) {
		out, err = tx.Tenants(f)
		return err
	})
	return out, err
}

// UpdateTenant changes a tenant.
func (s *Service) UpdateTenant(ctx context.Context, tenantID string, in TenantPatch) (*Tenant, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := mayAdmin(p, tenantID, "tenant"); err != nil {
		return nil, err
	}
	var t *Tenant
	err = s.update(ctx, func(tx Tx) error {
		before, err := tx.Tenant(tenantID)
		if err != nil {
			return err
		}
		after := *before
		setIf(&after.Name, in.Name)
		setIf(&after.DisplayName, in.DisplayName)
		setIf(&after.Timezone, in.Timezone)
		if err := after.check(); err != nil {
			return err
		}
		after.UpdatedAt = s.now().UTC()
		if err := tx.UpdateTenant(&after); err != nil {
			return err
		}
		t = &after
		return s.audit(tx, p, tenantID, "tenant.update", "tenant", tenantID, before, t)
	})
	return t, err
}

// DeleteTenant deletes an empty tenant. Platform admins only.
func (s *Service) DeleteTenant(ctx context.Context, tenantID string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	if !p.IsPlatformAdmin() {
		if p.TenantID != tenantID {
			return errs.E(errs.NotFound, "tenant not found")
		}
		return errs.E(errs.Forbidden, "only a platform admin may delete tenants")
	}
	return s.update(ctx, func(tx Tx) error {
		t, err := tx.Tenant(tenantID)
		if err != nil {
			return err
		}
		one := Filter{TenantID: tenantID, Page: Page{Limit: 1}}
		if ds, err := tx.Departments(one); err != nil {
			return err
		} else if len(ds) > 0 {
			return errs.Field(errs.Conflict, "departments", "tenant %s still has departments; delete them first", t.Name)
		}
		if ps, err := tx.Projects(one); err != nil {
			return err
		} else if len(ps) > 0 {
			return errs.Field(errs.Conflict, "projects", "tenant %s still has projects; delete them first", t.Name)
		}
		if us, err := tx.Users(one); err != nil {
			return err
		} else if len(us) > 0 {
			return errs.Field(errs.Conflict, "users", "tenant %s still has users; delete them first", t.Name)
		}
		if err := tx.DeleteTenant(tenantID); err != nil {
			return err
		}
		return s.audit(tx, p, tenantID, "tenant.delete", "tenant", tenantID, t, nil)
	})
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}
