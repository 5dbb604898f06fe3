package policy

import (
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/quota"
)

// Pools with guarantees (issue 13). A department or project may hold a
// guaranteed share of its parent's limit (a tenant or department: the
// pool), in the spirit of Kueue's nominal quota: its own limits stay its
// total cap (guarantee plus what it may borrow). The engines know nothing
// of it: the chain of a request through a pool gets synthetic scopes that
// every engine enforces atomically as it does any scope:
//
//   - P~borrow, the pool's shared part: per guaranteed dimension the pool's
//     limit less the sum of its children's guarantees;
//   - C~guaranteed, child C's guarantee, in the chains through C.
//
// A chain through C takes the path C, C~guaranteed first and, when that
// refuses, P, P~borrow instead; a chain through a child without a
// guarantee always takes P~borrow. Since every use of P passes through
// exactly one of them, no child can take another's guarantee.

// Suffixes of the synthetic scopes.
const (
	BorrowSuffix     = "~borrow"
	GuaranteedSuffix = "~guaranteed"
)

// BorrowScope names the shared part of pool scope p.
func BorrowScope(p string) string { return p + BorrowSuffix }

// GuaranteedScope names the guaranteed share of scope c.
func GuaranteedScope(c string) string { return c + GuaranteedSuffix }

// SplitSynthetic returns the real scope of a synthetic one and its suffix
// (BorrowSuffix or GuaranteedSuffix); ok is false for a real scope.
func SplitSynthetic(scope string) (real, suffix string, ok bool) {
	i := strings.LastIndexByte(scope, '~')
	if i < 0 {
		return scope, "", false
	}
	switch scope[i:] {
	case BorrowSuffix, GuaranteedSuffix:
		return scope[:i], scope[i:], true
	}
	return scope, "", false
}

// guaranteeDim is one dimension a guarantee may reserve.
type guaranteeDim struct {
	name  string // the field
	label string // for people: "tokens per day"
	get   func(*Spec) (int64, bool)
	set   func(*Spec, int64)
}

var guaranteeDims = []guaranteeDim{
	{"concurrency", "concurrency",
		func(s *Spec) (int64, bool) {
			if s.Concurrency == nil {
				return 0, false
			}
			return *s.Concurrency, true
		},
		func(s *Spec, v int64) { s.Concurrency = ptr(v) }},
	tokensDim(quota.WindowDay),
	tokensDim(quota.WindowMonth),
	{"gpu_seconds", "gpu_seconds",
		func(s *Spec) (int64, bool) {
			if s.GPUSeconds == nil {
				return 0, false
			}
			return s.GPUSeconds.Amount, true
		},
		func(s *Spec, v int64) { s.GPUSeconds = &Budget{Amount: v, Window: quota.WindowMonth} }},
	{"cost", "cost",
		func(s *Spec) (int64, bool) {
			if s.Cost == nil {
				return 0, false
			}
			return s.Cost.Amount, true
		},
		func(s *Spec, v int64) { s.Cost = &Budget{Amount: v, Window: quota.WindowMonth, Money: true} }},
}

func tokensDim(w quota.Window) guaranteeDim {
	return guaranteeDim{"tokens", "tokens per " + w.String(),
		func(s *Spec) (int64, bool) {
			if b := s.Tokens.get(w); b != nil {
				return b.Amount, true
			}
			return 0, false
		},
		func(s *Spec, v int64) { s.Tokens = append(s.Tokens, Budget{Amount: v, Window: w}) }}
}

// ValidateGuarantee checks a guarantee's form: only budgets and
// concurrency can be reserved (a rate or a per-run cap cannot be shared
// out), with the spec's own rules. Errors name field+".X".
func ValidateGuarantee(field string, g *Spec) error {
	if err := g.Validate(field + "."); err != nil {
		return err
	}
	bad := ""
	switch {
	case g.Requests != nil:
		bad = "requests"
	case g.TokensRate != nil:
		bad = "tokens_rate"
	case g.MemoryPerRun != nil:
		bad = "memory_per_run"
	case g.RunTimeout != nil:
		bad = "run_timeout"
	case g.MaxSteps != nil:
		bad = "max_steps"
	case g.MaxTokensPerCall != nil:
		bad = "max_tokens_per_call"
	case g.Models != nil:
		bad = "models"
	case g.OnOutage != "":
		bad = "on_outage"
	}
	if bad != "" {
		return errs.Field(errs.Invalid, field+"."+bad,
			"a guarantee reserves concurrency, tokens (per day or month), gpu_seconds or cost, not %s", bad)
	}
	if g.IsZero() {
		return errs.Field(errs.Invalid, field, "a guarantee must reserve at least one of concurrency, tokens, gpu_seconds, cost; omit it for none")
	}
	return nil
}

// hasGuarantee reports whether sl reserves a share of its parent.
func hasGuarantee(sl *ScopeLimits) bool {
	return sl != nil && sl.Guaranteed != nil && !sl.Guaranteed.IsZero()
}

// guaranteeParent is the pool a scope's guarantee is a share of: its
// direct parent, for the kinds that may hold one ("" for the others).
func (s *Snapshot) guaranteeParent(kind, id, tenantID string) string {
	if kind != KindDepartment && kind != KindProject {
		return ""
	}
	if ps := s.Parents(kind, id, tenantID); len(ps) == 1 {
		return ps[0]
	}
	return ""
}

// indexGuarantees records, per pool, the children with guarantees.
func (s *Snapshot) indexGuarantees() {
	s.pools = map[string][]*ScopeLimits{}
	for _, sl := range s.data.Scopes {
		if !hasGuarantee(sl) {
			continue
		}
		kind, id, err := ParseScope("scope", sl.Scope)
		if err != nil {
			continue
		}
		if p := s.guaranteeParent(kind, id, sl.TenantID); p != "" {
			s.pools[p] = append(s.pools[p], sl)
		}
	}
}

// IsPool reports whether scope has children with guarantees.
func (s *Snapshot) IsPool(scope string) bool { return len(s.pools[scope]) > 0 }

// borrowSpec is the shared part of pool p: per dimension any child
// guarantees, p's limit less the sum of the guarantees (never below 0: a
// grant that expired may leave a pool over-committed until an admin
// lowers a guarantee).
func (s *Snapshot) borrowSpec(p string) Spec {
	limit := s.Effective(p).Spec
	var out Spec
	for _, d := range guaranteeDims {
		var sum int64
		any := false
		for _, c := range s.pools[p] {
			if v, ok := d.get(c.Guaranteed); ok {
				sum, any = sum+v, true
			}
		}
		if !any {
			continue
		}
		l, ok := d.get(&limit)
		if !ok {
			continue // the pool no longer limits it: nothing to share out
		}
		d.set(&out, max(l-sum, 0))
	}
	return out
}

// resolveSynthetic is Effective for a synthetic scope.
func (s *Snapshot) resolveSynthetic(real, suffix string) *Resolved {
	r := &Resolved{}
	switch suffix {
	case BorrowSuffix:
		r.Spec = s.borrowSpec(real)
	case GuaranteedSuffix:
		if sl := s.scopes[real]; hasGuarantee(sl) {
			r.Spec = *sl.Guaranteed
		}
	}
	if !r.Spec.IsZero() {
		r.Limits = r.Spec.Limits()
	}
	return r
}

// ScopeLabel names a scope for people: "department research", "project
// web", "tenant acme"; the scope itself when the snapshot has no name.
func (s *Snapshot) ScopeLabel(scope string) string {
	kind, id, err := ParseScope("scope", scope)
	if err != nil {
		return scope
	}
	switch kind {
	case KindTenant:
		if t, ok := s.tenants[id]; ok {
			return "tenant " + t.Name
		}
	case KindDepartment:
		if d, ok := s.depts[id]; ok {
			return "department " + d.Name
		}
	case KindProject:
		if p, ok := s.projects[id]; ok {
			return "project " + p.Name
		}
	}
	return scope
}

// TenantName returns a tenant's name, or its id when unknown.
func (s *Snapshot) TenantName(id string) string {
	if t, ok := s.tenants[id]; ok {
		return t.Name
	}
	return id
}

// ChainPool is a pool with guarantees that a chain passes through.
type ChainPool struct {
	// Scope is the pool; Borrow its shared part.
	Scope  string
	Borrow quota.Scope
	// Child is the chain's scope below the pool when it has a guarantee,
	// and Guaranteed that guarantee's synthetic scope; nil when the chain
	// can only borrow.
	Child      string
	Guaranteed *quota.Scope
}

// Path is one way through a chain's pools: the engine's scopes and the
// scope keys for usage events, real and synthetic. A pool's shared part
// comes right before the pool: the engine reports the first scope that
// refuses, and when the pool is full on a path that borrows, its shared
// part is (the guarantees below it being full too), which is the refusal
// that tells the caller why. A guarantee comes right after its scope: a
// child at its own cap is refused there, and borrowing would not help.
// The key's scope stays last (metering reads the key from it).
type Path struct {
	Scopes []quota.Scope
	Keys   []string
}

// Path returns the chain's path that borrows at the pools whose bit is
// set in borrow (bit i for Pools[i]) and uses the guarantee at the
// others (a pool whose chain has no guarantee always borrows). Path(0)
// is the chain's Scopes and PathKeys.
func (c *Chain) Path(borrow uint64) Path {
	if len(c.Pools) == 0 {
		return Path{Scopes: c.base, Keys: c.Keys}
	}
	out := Path{Scopes: make([]quota.Scope, 0, len(c.base)+len(c.Pools)), Keys: make([]string, 0, len(c.Keys)+len(c.Pools))}
	for i, k := range c.Keys {
		for j := range c.Pools {
			if p := &c.Pools[j]; p.Scope == k && (p.Guaranteed == nil || borrow&(1<<uint(j)) != 0) {
				out.Scopes = append(out.Scopes, p.Borrow)
				out.Keys = append(out.Keys, p.Borrow.Key)
			}
		}
		if i < len(c.base) {
			out.Scopes = append(out.Scopes, c.base[i])
		}
		out.Keys = append(out.Keys, k)
		for j := range c.Pools {
			if p := &c.Pools[j]; p.Guaranteed != nil && p.Child == k && borrow&(1<<uint(j)) == 0 {
				out.Scopes = append(out.Scopes, *p.Guaranteed)
				out.Keys = append(out.Keys, p.Guaranteed.Key)
			}
		}
	}
	return out
}

// AllKeys are Keys with every synthetic scope of the chain's pools, on
// either path, in Path's order (usage pages show them).
func (c *Chain) AllKeys() []string {
	if len(c.Pools) == 0 {
		return c.Keys
	}
	out := make([]string, 0, len(c.Keys)+2*len(c.Pools))
	for _, k := range c.Keys {
		for j := range c.Pools {
			if c.Pools[j].Scope == k {
				out = append(out, c.Pools[j].Borrow.Key)
			}
		}
		out = append(out, k)
		for j := range c.Pools {
			p := &c.Pools[j]
			if p.Guaranteed != nil && p.Child == k {
				out = append(out, p.Guaranteed.Key)
			}
		}
	}
	return out
}

// BorrowAfter returns the index of the pool whose shared part a request
// refused at scope on a path that used its guarantee should try instead,
// or -1: a refusal at the guarantee (it is used up), or at the pool itself
// (it is full; on the path that borrows, its shared part, which comes
// first, will then say so).
func (c *Chain) BorrowAfter(scope string) int {
	for j := range c.Pools {
		if g := c.Pools[j].Guaranteed; g != nil && (g.Key == scope || c.Pools[j].Scope == scope) {
			return j
		}
	}
	return -1
}

// addPools finds the chain's pools with guarantees and sets its first
// path (every guarantee it has) as its Scopes.
func (s *Snapshot) addPools(c *Chain, tenantID string) {
	c.base, c.PathKeys = c.Scopes, c.Keys
	if len(s.pools) == 0 {
		return
	}
	loc := s.Location(tenantID)
	for i := 0; i+1 < len(c.Keys) && len(c.Pools) < 64; i++ {
		p := c.Keys[i]
		if !s.IsPool(p) {
			continue
		}
		pool := ChainPool{Scope: p, Borrow: quota.Scope{Key: BorrowScope(p), Limits: s.Effective(BorrowScope(p)).Limits, Loc: loc, Tenant: tenantID}}
		next := c.Keys[i+1]
		for _, sl := range s.pools[p] {
			if sl.Scope == next {
				g := quota.Scope{Key: GuaranteedScope(next), Limits: s.Effective(GuaranteedScope(next)).Limits, Loc: loc, Tenant: tenantID}
				pool.Child, pool.Guaranteed = next, &g
			}
		}
		c.Pools = append(c.Pools, pool)
	}
	if len(c.Pools) > 0 {
		first := c.Path(0)
		c.Scopes, c.PathKeys = first.Scopes, first.Keys
	}
}
