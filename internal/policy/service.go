package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Service applies the policy rules to changes: who may change which
// scope's limits, that a child's caps stay within its parents', and an
// audit entry per change in the same transaction. After each change it
// reloads the manager's snapshot, so the next decision uses it.
type Service struct {
	store Store
	mgr   *Manager
	log   *slog.Logger
	now   func() time.Time
}

// NewService returns a policy service.
func NewService(store Store, mgr *Manager, log *slog.Logger) *Service {
	return &Service{store: store, mgr: mgr, log: log, now: time.Now}
}

// SetClock replaces the service's clock (tests).
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// Manager returns the snapshot manager.
func (s *Service) Manager() *Manager { return s.mgr }

func principal(ctx context.Context) (tenancy.Principal, error) {
	p, ok := tenancy.PrincipalFrom(ctx)
	if !ok {
		return p, errs.E(errs.Unauthorized, "an API key is required")
	}
	return p, nil
}

func (s *Service) update(ctx context.Context, fn func(Tx) error) error {
	if err := s.store.UpdatePolicy(ctx, fn); err != nil {
		return err
	}
	if err := s.mgr.Reload(ctx); err != nil {
		// The change is committed; the next reload picks it up.
		s.log.Error("policy reload after change failed", slog.String("error", err.Error()))
	}
	return nil
}

func (s *Service) audit(tx Tx, p tenancy.Principal, tenantID, action, kind, objID string, before, after any) error {
	now := s.now().UTC()
	e := &tenancy.AuditEntry{ID: id.NewAt("aud", now), At: now, ActorUser: p.UserID, ActorKey: p.KeyID,
		TenantID: tenantID, Action: action, ObjectKind: kind, ObjectID: objID}
	if before != nil {
		e.Before, _ = json.Marshal(before)
	}
	if after != nil {
		e.After, _ = json.Marshal(after)
	}
	return tx.InsertAudit(e)
}

// EnsureDefaultPlans creates the shipped plans when no plan exists yet.
func (s *Service) EnsureDefaultPlans(ctx context.Context) error {
	return s.update(ctx, func(tx Tx) error {
		plans, err := tx.Plans()
		if err != nil || len(plans) > 0 {
			return err
		}
		now := s.now().UTC().Truncate(time.Microsecond)
		for _, p := range DefaultPlans() {
			p.CreatedAt, p.UpdatedAt = now, now
			if err := tx.PutPlan(p); err != nil {
				return err
			}
			if err := s.audit(tx, tenancy.SystemPrincipal, "", "plan.create", "plan", p.Name, nil, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// ---- plans ----

// PlanInput creates or replaces a plan.
type PlanInput struct {
	Description string   `json:"description"`
	Priority    Priority `json:"priority"`
	Limits      Spec     `json:"limits"`
}

// Plans lists plans; every authenticated caller may read them.
func (s *Service) Plans(ctx context.Context) ([]*Plan, error) {
	if _, err := principal(ctx); err != nil {
		return nil, err
	}
	var out []*Plan
	err := s.store.ViewPolicy(ctx, func(tx Tx) (err error) {
		out, err = tx.Plans()
		return err
	})
	return out, err
}

// Plan returns one plan.
func (s *Service) Plan(ctx context.Context, name string) (*Plan, error) {
	if _, err := principal(ctx); err != nil {
		return nil, err
	}
	var out *Plan
	err := s.store.ViewPolicy(ctx, func(tx Tx) (err error) {
		out, err = tx.Plan(name)
		return err
	})
	return out, err
}

// PutPlan creates or replaces a plan. Platform admins only.
func (s *Service) PutPlan(ctx context.Context, name string, in PlanInput) (*Plan, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() {
		return nil, errs.E(errs.Forbidden, "only a platform admin may change plans")
	}
	if err := tenancy.ValidName("name", name); err != nil {
		return nil, err
	}
	if in.Priority == "" {
		in.Priority = PriorityNormal
	}
	if !in.Priority.valid() {
		return nil, errs.Field(errs.Invalid, "priority", "priority %q is not low, normal or high", in.Priority)
	}
	if err := in.Limits.Validate("limits."); err != nil {
		return nil, err
	}
	var out *Plan
	err = s.update(ctx, func(tx Tx) error {
		now := s.now().UTC().Truncate(time.Microsecond)
		before, err := tx.Plan(name)
		if err != nil && !errs.Is(err, errs.NotFound) {
			return err
		}
		out = &Plan{Name: name, Description: in.Description, Priority: in.Priority, Limits: in.Limits, CreatedAt: now, UpdatedAt: now}
		action := "plan.create"
		if before != nil {
			out.CreatedAt, action = before.CreatedAt, "plan.update"
		}
		if err := tx.PutPlan(out); err != nil {
			return err
		}
		if before == nil {
			return s.audit(tx, p, "", action, "plan", name, nil, out)
		}
		return s.audit(tx, p, "", action, "plan", name, before, out)
	})
	return out, err
}

// DeletePlan deletes a plan no scope uses.
func (s *Service) DeletePlan(ctx context.Context, name string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	if !p.IsPlatformAdmin() {
		return errs.E(errs.Forbidden, "only a platform admin may change plans")
	}
	return s.update(ctx, func(tx Tx) error {
		before, err := tx.Plan(name)
		if err != nil {
			return err
		}
		if n, err := tx.PlanUsers(name); err != nil {
			return err
		} else if n > 0 {
			return errs.Field(errs.Conflict, "scopes", "plan %s is used by %d scopes; move them to another plan first", name, n)
		}
		if err := tx.DeletePlan(name); err != nil {
			return err
		}
		return s.audit(tx, p, "", "plan.delete", "plan", name, before, nil)
	})
}

// ---- scope limits ----

// LimitsInput sets a scope's plan, explicit limits and guarantee.
type LimitsInput struct {
	Plan   string `json:"plan"`
	Limits Spec   `json:"limits"`
	// Guaranteed reserves a share of the parent's limits for the scope
	// (departments and projects; see pool.go). Plans carry none: a
	// guarantee is a share of one particular parent.
	Guaranteed *Spec `json:"guaranteed,omitempty"`
}

// UnmarshalJSON decodes the input so that an error in the guarantee names
// its field as guaranteed.X, not limits.X.
func (in *LimitsInput) UnmarshalJSON(b []byte) error {
	var raw struct {
		Plan       string          `json:"plan"`
		Limits     Spec            `json:"limits"`
		Guaranteed json.RawMessage `json:"guaranteed"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return err
	}
	out := LimitsInput{Plan: raw.Plan, Limits: raw.Limits}
	if len(raw.Guaranteed) > 0 && string(raw.Guaranteed) != "null" {
		var g Spec
		if err := json.Unmarshal(raw.Guaranteed, &g); err != nil {
			var e *errs.Error
			if errors.As(err, &e) && strings.HasPrefix(e.Field, "limits") {
				return errs.Field(e.Code, "guaranteed"+strings.TrimPrefix(e.Field, "limits"), "%s",
					strings.ReplaceAll(e.Message, "limits", "guaranteed"))
			}
			return errs.Field(errs.Invalid, "guaranteed", "guaranteed: %v", err)
		}
		out.Guaranteed = &g
	}
	*in = out
	return nil
}

// scopeRef is what the rules need to know of a scope's object.
type scopeRef struct {
	tenant string
	// keyUser and keyRevoked describe a key scope's key.
	keyUser    string
	keyRevoked bool
}

// resolveScope finds the tenant a scope belongs to (and a key scope's
// owner), checking the scope's object exists.
func resolveScope(tx Tx, kind, id string) (scopeRef, error) {
	if kind != KindKey {
		t, err := scopeTenant(tx, kind, id)
		return scopeRef{tenant: t}, err
	}
	k, err := tx.Key(id)
	if errs.Is(err, errs.NotFound) {
		return scopeRef{}, errs.Field(errs.NotFound, "scope", "key %s not found", id)
	}
	if err != nil {
		return scopeRef{}, err
	}
	return scopeRef{tenant: k.TenantID, keyUser: k.UserID, keyRevoked: k.RevokedAt != nil}, nil
}

// scopeTenant finds the tenant a scope belongs to, checking the scope's
// object exists.
func scopeTenant(tx Tx, kind, id string) (string, error) {
	missing := func(what string) error { return errs.Field(errs.NotFound, "scope", "%s %s not found", what, id) }
	switch kind {
	case KindGlobal:
		return "", nil
	case KindTenant:
		if _, err := tx.Tenant(id); errs.Is(err, errs.NotFound) {
			return "", missing("tenant")
		} else if err != nil {
			return "", err
		}
		return id, nil
	case KindDepartment:
		d, err := tx.Department(id)
		if errs.Is(err, errs.NotFound) {
			return "", missing("department")
		}
		if err != nil {
			return "", err
		}
		return d.TenantID, nil
	case KindProject:
		pr, err := tx.Project(id)
		if errs.Is(err, errs.NotFound) {
			return "", missing("project")
		}
		if err != nil {
			return "", err
		}
		return pr.TenantID, nil
	case KindUser:
		u, err := tx.User(id)
		if errs.Is(err, errs.NotFound) {
			return "", missing("user")
		}
		if err != nil {
			return "", err
		}
		return u.TenantID, nil
	case KindMembership:
		uid, pid, _ := cutAt(id)
		m, err := tx.Membership(uid, pid)
		if errs.Is(err, errs.NotFound) {
			return "", missing("membership")
		}
		if err != nil {
			return "", err
		}
		return m.TenantID, nil
	case KindKey:
		ref, err := resolveScope(tx, kind, id)
		return ref.tenant, err
	}
	return "", errs.Field(errs.Invalid, "scope", "unknown scope kind %q", kind)
}

// mayChange decides whether p may change a scope's limits. Tenant admins
// manage the scopes inside their tenant, but not the tenant's own limits
// (that is what its plan sells) nor the global ones. A key's limits are
// set by admins too, not by the key's owner: a member could not raise
// anything with them (their user scope still applies), but a plan on the
// key would lift their priority.
func mayChange(p tenancy.Principal, kind, tenantID string) error {
	if p.IsPlatformAdmin() {
		return nil
	}
	if kind == KindGlobal || tenantID != p.TenantID {
		if kind != KindGlobal && tenantID != p.TenantID {
			return errs.Field(errs.NotFound, "scope", "scope not found")
		}
		return errs.E(errs.Forbidden, "only a platform admin may change global limits")
	}
	if p.Role != tenancy.RoleTenantAdmin {
		if kind == KindKey {
			return errs.E(errs.Forbidden, "only an admin of this tenant may set a key's limits")
		}
		return errs.E(errs.Forbidden, "only an admin of this tenant may change limits")
	}
	if kind == KindTenant {
		return errs.E(errs.Forbidden, "a tenant's own limits are set by a platform admin")
	}
	return nil
}

// mayRead decides whether p may see a scope's limits: admins of its
// tenant, and members for their own user, membership and key scopes and
// the scopes above them (which their usage page shows).
func mayRead(p tenancy.Principal, kind, id string, ref scopeRef) error {
	tenantID := ref.tenant
	if p.AdminOf(tenantID) || kind == KindGlobal {
		return nil
	}
	if tenantID != p.TenantID {
		return errs.Field(errs.NotFound, "scope", "scope not found")
	}
	switch kind {
	case KindKey:
		if ref.keyUser == p.UserID {
			return nil
		}
		// Another user's key is not even there, as another's ticket.
		return errs.Field(errs.NotFound, "scope", "scope not found")
	case KindUser:
		if id == p.UserID {
			return nil
		}
	case KindMembership:
		if u, _, _ := cutAt(id); u == p.UserID {
			return nil
		}
	case KindTenant, KindDepartment, KindProject:
		return nil // members see their tree's limits on their usage page
	}
	return errs.E(errs.Forbidden, "members may read only their own limits")
}

// checkWithinParents verifies that scope's effective limits, if sl were its
// settings, stay within every ancestor's, and that no scope below it with
// settings of its own would then exceed it.
func (s *Service) checkWithinParents(snap *Snapshot, kind, id string, ref scopeRef, scope string, sl *ScopeLimits) error {
	tenantID := ref.tenant
	if sl.Plan != "" {
		if _, ok := snap.Plan(sl.Plan); !ok {
			return errs.Field(errs.Invalid, "plan", "plan %q does not exist", sl.Plan)
		}
	}
	child := snap.resolve(scope, sl)
	ancestors := snap.Ancestors(kind, id, tenantID)
	if kind == KindKey {
		// The snapshot knows only keys that already have settings.
		user := ScopeName(KindUser, ref.keyUser)
		ancestors = append([]string{user}, snap.Ancestors(KindUser, ref.keyUser, tenantID)...)
	}
	for _, anc := range ancestors {
		pr := snap.Effective(anc)
		if f := exceeds(&child.Spec, &pr.Spec); f != "" {
			return errs.Field(errs.Invalid, "limits."+f, "%s of %s would exceed that of %s (%s); a child's cap may not exceed its parent's",
				f, scope, anc, describeField(&pr.Spec, f))
		}
	}
	for _, other := range snap.Scopes() {
		if other.Scope == scope {
			continue
		}
		k, oid, err := ParseScope("scope", other.Scope)
		if err != nil || k == KindGlobal {
			continue
		}
		if !slices.Contains(snap.Ancestors(k, oid, other.TenantID), scope) {
			continue
		}
		below := snap.Effective(other.Scope)
		if f := exceeds(&below.Spec, &child.Spec); f != "" {
			return errs.Field(errs.Invalid, "limits."+f, "%s of %s would fall below that of %s below it (%s); lower the child first",
				f, scope, other.Scope, describeField(&below.Spec, f))
		}
	}
	return checkGuarantees(snap, kind, id, tenantID, scope, sl, child)
}

// checkGuarantees verifies a scope's guarantee, if sl were its settings:
// only departments and projects hold one; their parent (the pool) limits
// every dimension it reserves; it stays within the scope's own limit; the
// guarantees of the parent's children add up to no more than its limit.
// And, the scope being a pool, that its limits still hold its children's
// guarantees.
func checkGuarantees(snap *Snapshot, kind, id, tenantID, scope string, sl *ScopeLimits, child *Resolved) error {
	if hasGuarantee(sl) {
		parent := snap.guaranteeParent(kind, id, tenantID)
		if parent == "" {
			return errs.Field(errs.Invalid, "guaranteed",
				"only departments and projects hold guarantees (a share of their parent department's or tenant's limits), not %s", scope)
		}
		pl := snap.Effective(parent).Spec
		for _, d := range guaranteeDims {
			g, ok := d.get(sl.Guaranteed)
			if !ok {
				continue
			}
			f := "guaranteed." + d.name
			l, ok := d.get(&pl)
			if !ok {
				return errs.Field(errs.Invalid, f, "%s cannot be guaranteed to %s: its parent %s does not limit it", d.label, scope, parent)
			}
			if own, ok := d.get(&child.Spec); ok && g > own {
				return errs.Field(errs.Invalid, f, "the guarantee of %s in %s (%d) exceeds its own limit (%d)", scope, d.label, g, own)
			}
			sum := g
			for _, sib := range snap.pools[parent] {
				if v, ok := d.get(sib.Guaranteed); ok && sib.Scope != scope {
					sum += v
				}
			}
			if sum > l {
				return errs.Field(errs.Invalid, f, "the guarantees in %s of the children of %s would add up to %d, above its limit of %d",
					d.label, parent, sum, l)
			}
		}
	}
	for _, d := range guaranteeDims {
		var sum int64
		any := false
		for _, k := range snap.pools[scope] {
			if v, ok := d.get(k.Guaranteed); ok {
				sum, any = sum+v, true
			}
		}
		if !any {
			continue
		}
		if l, ok := d.get(&child.Spec); !ok || l < sum {
			return errs.Field(errs.Invalid, "limits."+d.name, "%s of %s must hold the guarantees of its children (%d in all); lower those first",
				d.label, scope, sum)
		}
	}
	return nil
}

func describeField(s *Spec, f string) string {
	b, _ := json.Marshal(s)
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	return fmt.Sprintf("%s: %s", f, m[f])
}

// Limits returns a scope's settings and effective limits.
func (s *Service) Limits(ctx context.Context, scope string) (*ScopeView, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	kind, oid, err := ParseScope("scope", scope)
	if err != nil {
		return nil, err
	}
	var sl *ScopeLimits
	var tenantID string
	err = s.store.ViewPolicy(ctx, func(tx Tx) error {
		ref, err := resolveScope(tx, kind, oid)
		if err != nil {
			return err
		}
		tenantID = ref.tenant
		if err := mayRead(p, kind, oid, ref); err != nil {
			return err
		}
		sl, err = tx.ScopeLimits(scope)
		if errs.Is(err, errs.NotFound) {
			err = nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.view(scope, tenantID, sl), nil
}

// ScopeView is a scope's settings and what they resolve to.
type ScopeView struct {
	Scope     string `json:"scope"`
	TenantID  string `json:"tenant_id,omitempty"`
	Plan      string `json:"plan,omitempty"`
	Limits    Spec   `json:"limits"`
	Effective Spec   `json:"effective"`
	// Guaranteed is the scope's share of its parent; Shared, for a pool,
	// what its children may borrow (its limits less their guarantees).
	Guaranteed *Spec      `json:"guaranteed,omitempty"`
	Shared     *Spec      `json:"shared,omitempty"`
	Priority   Priority   `json:"priority,omitempty"`
	Grants     []*Grant   `json:"grants,omitempty"`
	UpdatedAt  *time.Time `json:"updated_at,omitempty"`
}

func (s *Service) view(scope, tenantID string, sl *ScopeLimits) *ScopeView {
	snap := s.mgr.Current()
	r := snap.Effective(scope)
	v := &ScopeView{Scope: scope, TenantID: tenantID, Effective: r.Spec, Priority: r.Priority, Grants: r.Grants}
	if snap.IsPool(scope) {
		v.Shared = &snap.Effective(BorrowScope(scope)).Spec
	}
	if sl != nil {
		v.Plan, v.Limits, v.Guaranteed = sl.Plan, sl.Limits, sl.Guaranteed
		t := sl.UpdatedAt
		v.UpdatedAt = &t
	}
	return v
}

// ListLimits lists the scopes with settings that p may see.
func (s *Service) ListLimits(ctx context.Context, tenantID string) ([]*ScopeLimits, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() {
		if tenantID != "" && tenantID != p.TenantID {
			return nil, errs.E(errs.NotFound, "tenant not found")
		}
		if p.Role != tenancy.RoleTenantAdmin {
			return nil, errs.E(errs.Forbidden, "only admins list limits")
		}
		tenantID = p.TenantID
	}
	var out []*ScopeLimits
	err = s.store.ViewPolicy(ctx, func(tx Tx) (err error) {
		out, err = tx.ListScopeLimits(tenantID)
		return err
	})
	return out, err
}

// SetLimits sets a scope's plan and explicit limits, replacing what was
// there. The new effective limits must stay within every parent's.
func (s *Service) SetLimits(ctx context.Context, scope string, in LimitsInput) (*ScopeView, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	kind, oid, err := ParseScope("scope", scope)
	if err != nil {
		return nil, err
	}
	if err := in.Limits.Validate("limits."); err != nil {
		return nil, err
	}
	if in.Guaranteed != nil {
		if err := ValidateGuarantee("guaranteed", in.Guaranteed); err != nil {
			return nil, err
		}
	}
	var after *ScopeLimits
	err = s.update(ctx, func(tx Tx) error {
		after, err = s.setLimits(tx, p, kind, oid, scope, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.view(scope, after.TenantID, after), nil
}

// setLimits is SetLimits inside tx, for in already validated.
func (s *Service) setLimits(tx Tx, p tenancy.Principal, kind, oid, scope string, in LimitsInput) (*ScopeLimits, error) {
	ref, err := resolveScope(tx, kind, oid)
	if err != nil {
		return nil, err
	}
	if err := mayChange(p, kind, ref.tenant); err != nil {
		return nil, err
	}
	if ref.keyRevoked {
		return nil, errs.Field(errs.Conflict, "scope", "key %s is revoked", oid)
	}
	before, err := tx.ScopeLimits(scope)
	if err != nil && !errs.Is(err, errs.NotFound) {
		return nil, err
	}
	if in.Plan != "" {
		if _, err := tx.Plan(in.Plan); errs.Is(err, errs.NotFound) {
			return nil, errs.Field(errs.Invalid, "plan", "plan %q does not exist", in.Plan)
		} else if err != nil {
			return nil, err
		}
	}
	after := &ScopeLimits{Scope: scope, TenantID: ref.tenant, Plan: in.Plan, Limits: in.Limits, Guaranteed: in.Guaranteed,
		UpdatedAt: s.now().UTC().Truncate(time.Microsecond)}
	if err := s.checkWithinParents(s.mgr.Current(), kind, oid, ref, scope, after); err != nil {
		return nil, err
	}
	if err := tx.PutScopeLimits(after); err != nil {
		return nil, err
	}
	if before == nil {
		return after, s.audit(tx, p, ref.tenant, "limits.set", "scope", scope, nil, after)
	}
	return after, s.audit(tx, p, ref.tenant, "limits.set", "scope", scope, before, after)
}

// ClearLimits removes a scope's settings (it then limits nothing, or, for
// the global scope, falls back to the safe default).
func (s *Service) ClearLimits(ctx context.Context, scope string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	kind, oid, err := ParseScope("scope", scope)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx Tx) error {
		tenantID, err := scopeTenant(tx, kind, oid)
		if err != nil {
			return err
		}
		if err := mayChange(p, kind, tenantID); err != nil {
			return err
		}
		before, err := tx.ScopeLimits(scope)
		if err != nil {
			return err
		}
		if s.mgr.Current().IsPool(scope) {
			return errs.Field(errs.Conflict, "scope", "children of %s hold guarantees of its limits; remove those first", scope)
		}
		if err := tx.DeleteScopeLimits(scope); err != nil {
			return err
		}
		return s.audit(tx, p, tenantID, "limits.clear", "scope", scope, before, nil)
	})
}

// ---- keys ----

// KeyInput creates an API key with limits of its own: the scope key/ID
// gets Plan and Limits in the same transaction as the key, so the key
// never works without them.
type KeyInput struct {
	tenancy.KeyInput
	Plan   string `json:"plan"`
	Limits *Spec  `json:"limits"`
}

// CreateKey creates a key and sets its scope's limits in one commit, and
// returns the key, its secret (shown this once) and its scope's view.
// Setting a key's limits is an admin's (see mayChange): a member may
// create keys for themselves, but not limited ones.
func (s *Service) CreateKey(ctx context.Context, in KeyInput) (*tenancy.Key, string, *ScopeView, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, "", nil, err
	}
	lim := LimitsInput{Plan: in.Plan}
	if in.Limits != nil {
		lim.Limits = *in.Limits
		if err := lim.Limits.Validate("limits."); err != nil {
			return nil, "", nil, err
		}
	}
	var k *tenancy.Key
	var secret string
	var sl *ScopeLimits
	err = s.update(ctx, func(tx Tx) error {
		if k, secret, err = tenancy.InsertNewKey(tx, p, in.KeyInput, s.now().UTC().Truncate(time.Microsecond)); err != nil {
			return err
		}
		if err := s.audit(tx, p, k.TenantID, "key.create", "key", k.ID, nil, k); err != nil {
			return err
		}
		sl, err = s.setLimits(tx, p, KindKey, k.ID, ScopeName(KindKey, k.ID), lim)
		if errs.Is(err, errs.Forbidden) {
			return errs.Field(errs.Forbidden, "limits", "only an admin of this tenant may set a key's limits; create the key without them")
		}
		return err
	})
	if err != nil {
		return nil, "", nil, err
	}
	return k, secret, s.view(sl.Scope, sl.TenantID, sl), nil
}

// ---- grants ----

// GrantInput raises a scope's limits by the given amounts until ExpiresAt.
type GrantInput struct {
	Scope     string    `json:"scope"`
	Limits    Spec      `json:"limits"`
	ExpiresAt time.Time `json:"expires_at"`
	Reason    string    `json:"reason"`
}

// MaxGrantLife bounds how long a temporary grant may last.
const MaxGrantLife = 366 * 24 * time.Hour

// CreateGrant records a temporary raise. Grants are not checked against
// parents: raising a group inside an empty class pool still waits on the
// pool.
func (s *Service) CreateGrant(ctx context.Context, in GrantInput) (*Grant, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	kind, oid, err := ParseScope("scope", in.Scope)
	if err != nil {
		return nil, err
	}
	if err := in.Limits.Validate("limits."); err != nil {
		return nil, err
	}
	if in.Limits.IsZero() {
		return nil, errs.Field(errs.Invalid, "limits", "a grant must raise at least one limit")
	}
	if l := in.Limits; l.MemoryPerRun != nil || l.RunTimeout != nil || l.MaxSteps != nil || l.MaxTokensPerCall != nil || l.Models != nil || l.OnOutage != "" {
		return nil, errs.Field(errs.Invalid, "limits", "a grant raises amounts (requests, tokens_rate, tokens, gpu_seconds, cost, concurrency); change per-run caps and models with the scope's limits")
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	if !in.ExpiresAt.After(now) || in.ExpiresAt.Sub(now) > MaxGrantLife {
		return nil, errs.Field(errs.Invalid, "expires_at", "expires_at must be in the future and within a year")
	}
	if len(in.Reason) > 500 {
		return nil, errs.Field(errs.Invalid, "reason", "reason is longer than 500 characters")
	}
	var g *Grant
	err = s.update(ctx, func(tx Tx) error {
		tenantID, err := scopeTenant(tx, kind, oid)
		if err != nil {
			return err
		}
		if err := mayChange(p, kind, tenantID); err != nil {
			return err
		}
		g = &Grant{ID: id.NewAt("grt", now), Scope: in.Scope, TenantID: tenantID, Limits: in.Limits, Reason: in.Reason,
			CreatedBy: p.UserID, CreatedAt: now, ExpiresAt: in.ExpiresAt.UTC().Truncate(time.Microsecond)}
		if err := tx.InsertGrant(g); err != nil {
			return err
		}
		return s.audit(tx, p, tenantID, "grant.create", "grant", g.ID, nil, g)
	})
	return g, err
}

// Grants lists grants a caller may see; active only when activeOnly.
func (s *Service) Grants(ctx context.Context, tenantID, scope string, activeOnly bool) ([]*Grant, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() {
		if tenantID != "" && tenantID != p.TenantID {
			return nil, errs.E(errs.NotFound, "tenant not found")
		}
		if p.Role != tenancy.RoleTenantAdmin {
			return nil, errs.E(errs.Forbidden, "only admins list grants")
		}
		tenantID = p.TenantID
	}
	var at time.Time
	if activeOnly {
		at = s.now()
	}
	var out []*Grant
	err = s.store.ViewPolicy(ctx, func(tx Tx) (err error) {
		out, err = tx.Grants(tenantID, scope, at)
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// RevokeGrant ends a grant now.
func (s *Service) RevokeGrant(ctx context.Context, grantID string) (*Grant, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var g *Grant
	err = s.update(ctx, func(tx Tx) error {
		before, err := tx.Grant(grantID)
		if err != nil {
			return err
		}
		kind, _, _ := ParseScope("scope", before.Scope)
		if err := mayChange(p, kind, before.TenantID); err != nil {
			return errs.E(errs.NotFound, "grant not found")
		}
		if before.RevokedAt != nil {
			g = before
			return nil
		}
		after := *before
		now := s.now().UTC().Truncate(time.Microsecond)
		after.RevokedAt = &now
		if err := tx.UpdateGrant(&after); err != nil {
			return err
		}
		g = &after
		return s.audit(tx, p, after.TenantID, "grant.revoke", "grant", g.ID, before, g)
	})
	return g, err
}

// ---- platform ----

// Platform returns the platform switches.
func (s *Service) Platform(ctx context.Context) (Platform, error) {
	if _, err := principal(ctx); err != nil {
		return Platform{}, err
	}
	return s.mgr.Current().Platform(), nil
}

// SetPlatform changes the platform switches. Platform admins only.
func (s *Service) SetPlatform(ctx context.Context, in Platform) (Platform, error) {
	p, err := principal(ctx)
	if err != nil {
		return Platform{}, err
	}
	if !p.IsPlatformAdmin() {
		return Platform{}, errs.E(errs.Forbidden, "only a platform admin may change platform settings")
	}
	if len(in.Message) > 500 {
		return Platform{}, errs.Field(errs.Invalid, "message", "message is longer than 500 characters")
	}
	if in.ReservedShare < 0 || in.ReservedShare > 0.9 || math.IsNaN(in.ReservedShare) {
		return Platform{}, errs.Field(errs.Invalid, "reserved_share", "reserved_share is a share of the global concurrency limit between 0 and 0.9, e.g. 0.2")
	}
	err = s.update(ctx, func(tx Tx) error {
		raw, err := tx.Setting(platformSetting)
		if err != nil {
			return err
		}
		var before Platform
		if raw != "" {
			_ = json.Unmarshal([]byte(raw), &before)
		}
		b, _ := json.Marshal(in)
		if err := tx.PutSetting(platformSetting, string(b)); err != nil {
			return err
		}
		return s.audit(tx, p, "", "platform.update", "platform", "platform", before, in)
	})
	return in, err
}
