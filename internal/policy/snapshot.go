package policy

import (
	"math"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/quota"
)

// Tree is the part of the tenancy tree that scope chains need.
type Tree struct {
	Tenants     []TreeTenant
	Departments []TreeDepartment
	Projects    []TreeProject
	// Keys are the API keys whose scopes have settings: the rule that a
	// child's cap stays within its parent's needs their owners. A chain
	// needs no key here: its caller names the key it authenticated with.
	Keys []TreeKey
}

// TreeTenant is a tenant as chains see it.
type TreeTenant struct{ ID, Name, Timezone string }

// TreeDepartment is a department as chains see it.
type TreeDepartment struct{ ID, TenantID, ParentID, Name string }

// TreeProject is a project as chains see it.
type TreeProject struct{ ID, TenantID, DepartmentID, Name string }

// TreeKey is an API key as the policy sees it: whose it is. TenantID is
// empty for a platform admin's key.
type TreeKey struct{ ID, UserID, TenantID string }

// Data is everything a snapshot is built from.
type Data struct {
	Tree
	Plans    []*Plan
	Scopes   []*ScopeLimits
	Grants   []*Grant // active ones
	Platform Platform
}

// Platform holds platform-wide switches.
type Platform struct {
	// ReadOnly stops new runs and admissions (503 with Message); reads,
	// settlements of work in flight and administration continue.
	ReadOnly bool   `json:"read_only"`
	Message  string `json:"message,omitempty"`
	// ReservedShare is the share of the global concurrency limit kept for
	// the high class (enterprise plans): work of the other classes may
	// hold at most the rest, so under overload a high-priority run still
	// finds a slot. 0 keeps none; at most 0.9.
	ReservedShare float64 `json:"reserved_share,omitempty"`
}

// Resolved is a scope's effective policy.
type Resolved struct {
	Spec     Spec
	Limits   *quota.Limits // nil when the scope limits nothing
	Plan     string
	Priority Priority // "" when no plan is set on the scope
	Grants   []*Grant
}

// Snapshot is an immutable view of the whole policy at one moment, with
// the effective limits of each scope and the chain of each user@project
// computed once and cached.
type Snapshot struct {
	Version    int64
	BuiltAt    time.Time
	ValidUntil time.Time // the first grant expiry; zero when none

	data          *Data
	defaultGlobal Spec
	plans         map[string]*Plan
	scopes        map[string]*ScopeLimits
	grants        map[string][]*Grant
	tenants       map[string]*tenantNode
	depts         map[string]TreeDepartment
	projects      map[string]*projectNode
	keys          map[string]TreeKey
	pools         map[string][]*ScopeLimits // pool → its children with guarantees

	mu        sync.RWMutex
	effective map[string]*Resolved
	chains    map[chainKey]*Chain

	reservedOnce sync.Once
	reserved     *quota.Limits // the global limits the lower classes see
}

type tenantNode struct {
	TreeTenant
	loc *time.Location
}

type projectNode struct {
	TreeProject
	path []string // scope names from global down to the project
}

type chainKey struct{ tenant, user, project, key string }

// Chain is a request's scopes, outermost first, with their limits.
type Chain struct {
	// Scopes are what the engine checks and charges. An API key's scope
	// is here only when it limits something: a scope costs the engine
	// about a third of a decision whether it limits anything or not.
	Scopes []quota.Scope
	// Keys name every real scope of the chain, the key's included.
	Keys []string
	// PathKeys are Keys with the synthetic scopes of Scopes' path through
	// the chain's pools (see Path), for usage events: spend per key is
	// summed from them. They are Keys when the chain has no pools.
	PathKeys []string
	// Pools are the pools with guarantees the chain passes through,
	// outermost first (see Path); Scopes take every guarantee the chain
	// has.
	Pools []ChainPool
	base  []quota.Scope // Scopes without synthetic scopes
	// Priority and Plan are those of the innermost scope with a plan.
	Priority Priority
	Plan     string
}

// NewSnapshot builds a snapshot of d at now. defaultGlobal applies to the
// global scope unless an admin set limits on it.
func NewSnapshot(d *Data, defaultGlobal Spec, version int64, now time.Time) *Snapshot {
	s := &Snapshot{
		Version: version, BuiltAt: now, data: d, defaultGlobal: defaultGlobal,
		plans: map[string]*Plan{}, scopes: map[string]*ScopeLimits{}, grants: map[string][]*Grant{},
		tenants: map[string]*tenantNode{}, depts: map[string]TreeDepartment{}, projects: map[string]*projectNode{},
		keys:      map[string]TreeKey{},
		effective: map[string]*Resolved{}, chains: map[chainKey]*Chain{},
	}
	for _, p := range d.Plans {
		s.plans[p.Name] = p
	}
	for _, sl := range d.Scopes {
		s.scopes[sl.Scope] = sl
	}
	for _, g := range d.Grants {
		if !g.Active(now) {
			continue
		}
		s.grants[g.Scope] = append(s.grants[g.Scope], g)
		if s.ValidUntil.IsZero() || g.ExpiresAt.Before(s.ValidUntil) {
			s.ValidUntil = g.ExpiresAt
		}
	}
	for _, t := range d.Tenants {
		loc, err := time.LoadLocation(t.Timezone)
		if err != nil {
			loc = time.UTC
		}
		s.tenants[t.ID] = &tenantNode{TreeTenant: t, loc: loc}
	}
	for _, dp := range d.Departments {
		s.depts[dp.ID] = dp
	}
	for _, p := range d.Projects {
		s.projects[p.ID] = &projectNode{TreeProject: p, path: s.pathOf(p)}
	}
	for _, k := range d.Keys {
		s.keys[k.ID] = k
	}
	s.indexGuarantees()
	return s
}

// pathOf lists the scopes above and including project p, outermost first.
func (s *Snapshot) pathOf(p TreeProject) []string {
	var depts []string
	for cur, n := p.DepartmentID, 0; cur != "" && n < 64; n++ {
		d, ok := s.depts[cur]
		if !ok {
			break
		}
		depts = append(depts, ScopeName(KindDepartment, d.ID))
		cur = d.ParentID
	}
	path := []string{GlobalScope, ScopeName(KindTenant, p.TenantID)}
	for i := len(depts) - 1; i >= 0; i-- {
		path = append(path, depts[i])
	}
	return append(path, ScopeName(KindProject, p.ID))
}

// Platform returns the platform switches in force.
func (s *Snapshot) Platform() Platform { return s.data.Platform }

// Plan returns a plan by name.
func (s *Snapshot) Plan(name string) (*Plan, bool) {
	p, ok := s.plans[name]
	return p, ok
}

// Effective returns a scope's effective policy: its plan, overlaid with its
// explicit limits, raised by its active grants. A synthetic scope of a
// pool (P~borrow, C~guaranteed) resolves to the limits the engine gets
// for it.
func (s *Snapshot) Effective(scope string) *Resolved {
	s.mu.RLock()
	r, ok := s.effective[scope]
	s.mu.RUnlock()
	if ok {
		return r
	}
	if real, suffix, ok := SplitSynthetic(scope); ok {
		r = s.resolveSynthetic(real, suffix)
	} else {
		r = s.resolve(scope, s.scopes[scope])
	}
	s.mu.Lock()
	s.effective[scope] = r
	s.mu.Unlock()
	return r
}

// resolve computes a scope's effective policy as if sl were its settings.
func (s *Snapshot) resolve(scope string, sl *ScopeLimits) *Resolved {
	r := &Resolved{}
	switch {
	case sl != nil:
		if p, ok := s.plans[sl.Plan]; ok {
			r.Spec, r.Plan, r.Priority = p.Limits, p.Name, p.Priority
		}
		r.Spec = overlay(r.Spec, sl.Limits)
	case scope == GlobalScope:
		r.Spec = s.defaultGlobal
	}
	for _, g := range s.grants[scope] {
		r.Spec = raise(r.Spec, g.Limits)
		r.Grants = append(r.Grants, g)
	}
	if !r.Spec.IsZero() {
		r.Limits = r.Spec.Limits()
	}
	return r
}

// Location returns the time zone of a tenant's windows (UTC if unknown).
func (s *Snapshot) Location(tenantID string) *time.Location {
	if t, ok := s.tenants[tenantID]; ok {
		return t.loc
	}
	return time.UTC
}

// Chain returns the scopes a request by user in project (both of tenant)
// is charged to: global, tenant, departments, project, user, user@project.
// projectID may be empty (no project: global, tenant, user); tenantID is
// empty for platform admins (global, user). It is ChainFor without a key.
func (s *Snapshot) Chain(tenantID, userID, projectID string) (*Chain, error) {
	return s.ChainFor(tenantID, userID, projectID, "")
}

// ChainFor is Chain for a request made with API key keyID (of userID; ""
// for none), whose scope key/keyID comes last, innermost: global, tenant,
// departments, project, user, user@project, key.
func (s *Snapshot) ChainFor(tenantID, userID, projectID, keyID string) (*Chain, error) {
	k := chainKey{tenantID, userID, projectID, keyID}
	s.mu.RLock()
	c, ok := s.chains[k]
	s.mu.RUnlock()
	if ok {
		return c, nil
	}
	var names []string
	switch {
	case projectID != "":
		p, ok := s.projects[projectID]
		if !ok || p.TenantID != tenantID {
			return nil, errs.Field(errs.NotFound, "project_id", "project %s not found", projectID)
		}
		names = append(append(names, p.path...), ScopeName(KindUser, userID), MembershipScope(userID, projectID))
	case tenantID != "":
		if _, ok := s.tenants[tenantID]; !ok {
			return nil, errs.E(errs.NotFound, "tenant %s not found", tenantID)
		}
		names = []string{GlobalScope, ScopeName(KindTenant, tenantID), ScopeName(KindUser, userID)}
	default:
		names = []string{GlobalScope, ScopeName(KindUser, userID)}
	}
	if keyID != "" {
		names = append(names, ScopeName(KindKey, keyID))
	}
	loc := s.Location(tenantID)
	c = &Chain{Scopes: make([]quota.Scope, 0, len(names)), Keys: names, Priority: PriorityNormal}
	for i, n := range names {
		r := s.Effective(n)
		if r.Priority != "" {
			c.Priority, c.Plan = r.Priority, r.Plan // the innermost plan decides
		}
		if keyID != "" && i == len(names)-1 && r.Limits == nil {
			break // the key limits nothing: the engine need not count it
		}
		sc := quota.Scope{Key: n, Limits: r.Limits, Loc: loc, Tenant: tenantID}
		if n == GlobalScope {
			sc.Loc, sc.Tenant = time.UTC, ""
		}
		c.Scopes = append(c.Scopes, sc)
	}
	if c.Priority != PriorityHigh && c.Scopes[0].Key == GlobalScope {
		if l := s.reservedGlobal(); l != nil {
			c.Scopes[0].Limits = l
		}
	}
	s.addPools(c, tenantID)
	s.mu.Lock()
	s.chains[k] = c
	s.mu.Unlock()
	return c, nil
}

// Parents returns the scopes directly above scope, those whose limits cap
// it: a department's parent department or tenant, a project's department
// or tenant, a user's tenant, a membership's user and project.
func (s *Snapshot) Parents(kind, id, tenantID string) []string {
	switch kind {
	case KindTenant:
		return []string{GlobalScope}
	case KindDepartment:
		if d, ok := s.depts[id]; ok && d.ParentID != "" {
			return []string{ScopeName(KindDepartment, d.ParentID)}
		}
		return []string{ScopeName(KindTenant, tenantID)}
	case KindProject:
		if p, ok := s.projects[id]; ok && p.DepartmentID != "" {
			return []string{ScopeName(KindDepartment, p.DepartmentID)}
		}
		return []string{ScopeName(KindTenant, tenantID)}
	case KindUser:
		if tenantID == "" {
			return []string{GlobalScope}
		}
		return []string{ScopeName(KindTenant, tenantID)}
	case KindMembership:
		u, p, _ := cutAt(id)
		return []string{ScopeName(KindUser, u), ScopeName(KindProject, p)}
	case KindKey:
		// A key may work in any of its user's projects: its user is its
		// one parent in every chain.
		if k, ok := s.keys[id]; ok {
			return []string{ScopeName(KindUser, k.UserID)}
		}
	}
	return nil
}

// Ancestors returns every scope above a scope (parents, their parents, up
// to global), nearest first, without repeats.
func (s *Snapshot) Ancestors(kind, id, tenantID string) []string {
	var out []string
	seen := map[string]bool{}
	queue := s.Parents(kind, id, tenantID)
	for len(queue) > 0 && len(out) < 64 {
		sc := queue[0]
		queue = queue[1:]
		if seen[sc] {
			continue
		}
		seen[sc] = true
		out = append(out, sc)
		k, oid, err := ParseScope("scope", sc)
		if err != nil || k == KindGlobal {
			continue
		}
		queue = append(queue, s.Parents(k, oid, s.tenantOf(k, oid, tenantID))...)
	}
	return out
}

// TenantIDs returns the id of every tenant.
func (s *Snapshot) TenantIDs() []string {
	out := make([]string, 0, len(s.tenants))
	for id := range s.tenants {
		out = append(out, id)
	}
	return out
}

// ScopeTenant returns the tenant of a tenant, department, project,
// membership or key scope as far as the snapshot knows (a membership's is
// its project's, a key's its user's), and false for any other kind or an
// id it does not know. A user's tenant is not in the snapshot, nor a key's
// whose scope has no settings.
func (s *Snapshot) ScopeTenant(kind, id string) (string, bool) {
	switch kind {
	case KindTenant:
		_, ok := s.tenants[id]
		return id, ok
	case KindDepartment:
		d, ok := s.depts[id]
		return d.TenantID, ok
	case KindProject:
		p, ok := s.projects[id]
		if !ok {
			return "", false
		}
		return p.TenantID, true
	case KindMembership:
		_, pid, _ := cutAt(id)
		return s.ScopeTenant(KindProject, pid)
	case KindKey:
		k, ok := s.keys[id]
		return k.TenantID, ok
	}
	return "", false
}

// tenantOf returns the tenant of a scope as far as the snapshot knows.
func (s *Snapshot) tenantOf(kind, id, fallback string) string {
	switch kind {
	case KindTenant:
		return id
	case KindDepartment:
		if d, ok := s.depts[id]; ok {
			return d.TenantID
		}
	case KindProject:
		if p, ok := s.projects[id]; ok {
			return p.TenantID
		}
	case KindKey:
		if k, ok := s.keys[id]; ok {
			return k.TenantID
		}
	}
	return fallback
}

func cutAt(id string) (string, string, bool) {
	for i := 0; i < len(id); i++ {
		if id[i] == '@' {
			return id[:i], id[i+1:], true
		}
	}
	return id, "", false
}

// Scopes returns every scope with explicit settings.
func (s *Snapshot) Scopes() []*ScopeLimits {
	out := make([]*ScopeLimits, 0, len(s.scopes))
	for _, sl := range s.scopes {
		out = append(out, sl)
	}
	return out
}

// Plans returns every plan.
func (s *Snapshot) Plans() []*Plan {
	out := make([]*Plan, 0, len(s.plans))
	for _, p := range s.plans {
		out = append(out, p)
	}
	return out
}

// reservedGlobal returns the global scope's limits as the classes below
// high see them when a share of the global concurrency is reserved (the
// limit less the share, rounded so that at least one slot is reserved),
// or nil when nothing is reserved.
func (s *Snapshot) reservedGlobal() *quota.Limits {
	s.reservedOnce.Do(func() {
		share := s.data.Platform.ReservedShare
		if share <= 0 {
			return
		}
		g := s.Effective(GlobalScope).Limits
		if g == nil {
			return
		}
		n, ok := g.Concurrency.Max()
		if !ok || n == 0 {
			return
		}
		keep := int64(math.Ceil(float64(n) * min(share, 0.9)))
		l := *g
		l.Concurrency = quota.AtMost(n - keep)
		s.reserved = &l
	})
	return s.reserved
}
