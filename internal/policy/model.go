package policy

import (
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/quota"
)

// Priority is a plan's scheduling class.
type Priority string

// The priorities, lowest first.
const (
	PriorityLow    Priority = "low"
	PriorityNormal Priority = "normal"
	PriorityHigh   Priority = "high"
)

func (p Priority) valid() bool { return p == PriorityLow || p == PriorityNormal || p == PriorityHigh }

// Plan is a named limit template (a tier), e.g. free, pro, enterprise.
type Plan struct {
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Priority    Priority  `json:"priority"`
	Limits      Spec      `json:"limits"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// ScopeLimits is what an admin set on one scope: a plan and/or explicit
// overrides of the plan's limits.
type ScopeLimits struct {
	Scope    string `json:"scope"`
	TenantID string `json:"tenant_id,omitempty"`
	Plan     string `json:"plan,omitempty"`
	Limits   Spec   `json:"limits"`
	// Guaranteed is the share of its parent's limits reserved for the
	// scope (departments and projects only; see pool.go); nil for none.
	Guaranteed *Spec     `json:"guaranteed,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Grant temporarily raises a scope's limits by the amounts in Limits (an
// approved request for more quota), until ExpiresAt.
type Grant struct {
	ID        string     `json:"id"`
	Scope     string     `json:"scope"`
	TenantID  string     `json:"tenant_id,omitempty"`
	Limits    Spec       `json:"limits"`
	Reason    string     `json:"reason,omitempty"`
	CreatedBy string     `json:"created_by,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// Active reports whether g raises limits at now.
func (g *Grant) Active(now time.Time) bool { return g.RevokedAt == nil && now.Before(g.ExpiresAt) }

// DefaultPlans are the plans a fresh install ships with; admins edit them.
func DefaultPlans() []*Plan {
	i := func(v int64) *int64 { return &v }
	r := func(limit int64, per time.Duration) *RateSpec { return &RateSpec{Limit: limit, Period: per} }
	b := func(n int64, w quota.Window) *Budget { return &Budget{Amount: n, Window: w} }
	gib := Bytes(1 << 30)
	return []*Plan{
		{Name: "free", Priority: PriorityLow, Description: "10 requests/min, 100k tokens/day, one run at a time, no GPU",
			Limits: Spec{Requests: r(10, time.Minute), Tokens: Budgets{{Amount: 100_000, Window: quota.WindowDay}},
				Concurrency: i(1), GPUSeconds: b(0, quota.WindowMonth), MaxTokensPerCall: i(4096)}},
		{Name: "pro", Priority: PriorityNormal, Description: "60 requests/min, 1M tokens/day, 5 concurrent runs, 2 GPU hours/month",
			Limits: Spec{Requests: r(60, time.Minute), Tokens: Budgets{{Amount: 1_000_000, Window: quota.WindowDay}},
				Concurrency: i(5), GPUSeconds: b(7200, quota.WindowMonth), MemoryPerRun: ptr(2 * gib)}},
		{Name: "enterprise", Priority: PriorityHigh, Description: "600 requests/min, 20M tokens/day, 50 concurrent runs, priority scheduling",
			Limits: Spec{Requests: r(600, time.Minute), Tokens: Budgets{{Amount: 20_000_000, Window: quota.WindowDay}},
				Concurrency: i(50), GPUSeconds: b(360_000, quota.WindowMonth), MemoryPerRun: ptr(16 * gib)}},
	}
}

func ptr[T any](v T) *T { return &v }

// ---- scopes ----

// Scope kinds, as written in scope names ("tenant/ten_…").
const (
	KindGlobal     = "global"
	KindTenant     = "tenant"
	KindDepartment = "department"
	KindProject    = "project"
	KindUser       = "user"
	KindMembership = "membership"
	// KindKey is an API key's own scope, the innermost of the chain of
	// every request made with the key.
	KindKey = "key"
)

// GlobalScope is the scope every request is charged to.
const GlobalScope = "global"

// ScopeName builds a scope name. For memberships id is "usr_…@prj_…".
func ScopeName(kind, id string) string {
	if kind == KindGlobal {
		return GlobalScope
	}
	return kind + "/" + id
}

// MembershipScope names the scope of user u in project p.
func MembershipScope(userID, projectID string) string {
	return KindMembership + "/" + userID + "@" + projectID
}

// ParseScope splits a scope name into its kind and id, checking the form.
func ParseScope(field, s string) (kind, id string, err error) {
	if s == GlobalScope {
		return KindGlobal, "", nil
	}
	kind, id, ok := strings.Cut(s, "/")
	bad := !ok || id == "" || strings.ContainsAny(id, "/ ")
	switch kind {
	case KindTenant, KindDepartment, KindProject, KindUser, KindKey:
	case KindMembership:
		u, p, ok := strings.Cut(id, "@")
		bad = bad || !ok || u == "" || p == ""
	default:
		bad = true
	}
	if bad {
		return "", "", errs.Field(errs.Invalid, field,
			"scope %q is not global, tenant/ID, department/ID, project/ID, user/ID, membership/USER_ID@PROJECT_ID or key/ID", s)
	}
	return kind, id, nil
}

// ---- resolution ----

// overlay returns base with every field that over sets replaced.
func overlay(base, over Spec) Spec {
	out := base
	if over.Requests != nil {
		out.Requests = over.Requests
	}
	if over.TokensRate != nil {
		out.TokensRate = over.TokensRate
	}
	if len(over.Tokens) > 0 {
		merged := Budgets{}
		for _, w := range []quota.Window{quota.WindowDay, quota.WindowMonth} {
			if b := over.Tokens.get(w); b != nil {
				merged = append(merged, *b)
			} else if b := base.Tokens.get(w); b != nil {
				merged = append(merged, *b)
			}
		}
		out.Tokens = merged
	}
	if over.GPUSeconds != nil {
		out.GPUSeconds = over.GPUSeconds
	}
	if over.Cost != nil {
		out.Cost = over.Cost
	}
	if over.Concurrency != nil {
		out.Concurrency = over.Concurrency
	}
	if over.MemoryPerRun != nil {
		out.MemoryPerRun = over.MemoryPerRun
	}
	if over.RunTimeout != nil {
		out.RunTimeout = over.RunTimeout
	}
	if over.MaxSteps != nil {
		out.MaxSteps = over.MaxSteps
	}
	if over.MaxTokensPerCall != nil {
		out.MaxTokensPerCall = over.MaxTokensPerCall
	}
	if over.Models != nil {
		out.Models = over.Models
	}
	if over.OnOutage != "" {
		out.OnOutage = over.OnOutage
	}
	return out
}

// raise adds a grant's amounts to the limits s already has. A grant raises
// limits; it never creates one where there was none (none is unlimited).
func raise(s Spec, g Spec) Spec {
	out := s
	if s.Requests != nil && g.Requests != nil {
		v := *s.Requests
		v.Limit += int64(float64(g.Requests.Limit) * float64(v.Period) / float64(g.Requests.Period))
		out.Requests = &v
	}
	if s.TokensRate != nil && g.TokensRate != nil {
		v := *s.TokensRate
		v.Limit += int64(float64(g.TokensRate.Limit) * float64(v.Period) / float64(g.TokensRate.Period))
		out.TokensRate = &v
	}
	if len(s.Tokens) > 0 && len(g.Tokens) > 0 {
		out.Tokens = append(Budgets(nil), s.Tokens...)
		for i := range out.Tokens {
			if add := g.Tokens.get(out.Tokens[i].Window); add != nil {
				out.Tokens[i].Amount += add.Amount
			}
		}
	}
	if s.GPUSeconds != nil && g.GPUSeconds != nil {
		out.GPUSeconds = &Budget{Amount: s.GPUSeconds.Amount + g.GPUSeconds.Amount, Window: s.GPUSeconds.Window}
	}
	if s.Cost != nil && g.Cost != nil {
		out.Cost = &Budget{Amount: s.Cost.Amount + g.Cost.Amount, Window: s.Cost.Window, Money: true}
	}
	if s.Concurrency != nil && g.Concurrency != nil {
		out.Concurrency = ptr(*s.Concurrency + *g.Concurrency)
	}
	return out
}

// Limits converts a spec into the engine's limits.
func (s *Spec) Limits() *quota.Limits {
	l := &quota.Limits{Requests: s.Requests.quota(), TokensRate: s.TokensRate.quota(), Models: s.Models, OnOutage: s.OnOutage}
	if b := s.Tokens.get(quota.WindowDay); b != nil {
		l.TokensDay = quota.AtMost(b.Amount)
	}
	if b := s.Tokens.get(quota.WindowMonth); b != nil {
		l.TokensMonth = quota.AtMost(b.Amount)
	}
	if s.GPUSeconds != nil {
		l.GPUMillisMonth = quota.AtMost(min(s.GPUSeconds.Amount, maxGPUSeconds) * 1000)
	}
	if s.Cost != nil {
		l.CostMicrosMonth = quota.AtMost(s.Cost.Amount)
	}
	if s.Concurrency != nil {
		l.Concurrency = quota.AtMost(*s.Concurrency)
	}
	if s.MemoryPerRun != nil {
		l.MemoryPerRun = int64(*s.MemoryPerRun)
	}
	if s.RunTimeout != nil {
		l.RunTimeout = time.Duration(*s.RunTimeout)
	}
	if s.MaxSteps != nil {
		l.MaxSteps = *s.MaxSteps
	}
	if s.MaxTokensPerCall != nil {
		l.MaxTokensPerCall = *s.MaxTokensPerCall
	}
	return l
}

// exceeds names the first limit of child that is above the same limit of
// parent ("" when none is). Limits only one of them sets are not compared:
// a parent without a limit caps nothing, and a child without one is capped
// by its parent at run time.
func exceeds(child, parent *Spec) string {
	if c, p := child.Requests, parent.Requests; c != nil && p != nil && (c.perSecond() > p.perSecond()+1e-9) {
		return "requests"
	}
	if c, p := child.TokensRate, parent.TokensRate; c != nil && p != nil && c.perSecond() > p.perSecond()+1e-9 {
		return "tokens_rate"
	}
	for _, w := range []quota.Window{quota.WindowDay, quota.WindowMonth} {
		if c, p := child.Tokens.get(w), parent.Tokens.get(w); c != nil && p != nil && c.Amount > p.Amount {
			return "tokens"
		}
	}
	if c, p := child.GPUSeconds, parent.GPUSeconds; c != nil && p != nil && c.Amount > p.Amount {
		return "gpu_seconds"
	}
	if c, p := child.Cost, parent.Cost; c != nil && p != nil && c.Amount > p.Amount {
		return "cost"
	}
	if c, p := child.Concurrency, parent.Concurrency; c != nil && p != nil && *c > *p {
		return "concurrency"
	}
	if c, p := child.MemoryPerRun, parent.MemoryPerRun; c != nil && p != nil && *c > *p {
		return "memory_per_run"
	}
	if c, p := child.RunTimeout, parent.RunTimeout; c != nil && p != nil && *c > *p {
		return "run_timeout"
	}
	if c, p := child.MaxSteps, parent.MaxSteps; c != nil && p != nil && *c > *p {
		return "max_steps"
	}
	if c, p := child.MaxTokensPerCall, parent.MaxTokensPerCall; c != nil && p != nil && *c > *p {
		return "max_tokens_per_call"
	}
	return ""
}
