// Package tenancy owns Sluice's tree of who is who: tenants, departments
// (nestable), projects, users, project memberships and API keys, the roles
// that decide who may see and change them, and the audit trail of every
// change. It knows nothing of HTTP or SQL: a Store adapter persists it.
package tenancy

import (
	"context"
	"encoding/json"
	"time"
)

// Role is what a user may do.
type Role string

// The roles. A platform admin belongs to no tenant and may do anything; a
// tenant admin administers one tenant; a member sees only themselves.
const (
	RolePlatformAdmin Role = "platform_admin"
	RoleTenantAdmin   Role = "tenant_admin"
	RoleMember        Role = "member"
)

func (r Role) valid() bool {
	return r == RolePlatformAdmin || r == RoleTenantAdmin || r == RoleMember
}

// Tenant is a customer or organisation: the root of its own subtree. Its time
// zone decides where its daily and monthly quota windows start.
type Tenant struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	DisplayName string    `json:"display_name,omitempty"`
	Timezone    string    `json:"timezone"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Department groups projects (and other departments) inside a tenant.
// ParentID is empty for a department directly under its tenant.
type Department struct {
	ID          string    `json:"id"`
	TenantID    string    `json:"tenant_id"`
	ParentID    string    `json:"parent_id,omitempty"`
	Name        string    `json:"name"`
	DisplayName string    `json:"display_name,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Project is where work runs. DepartmentID is empty for a project directly
// under its tenant.
type Project struct {
	ID           string    `json:"id"`
	TenantID     string    `json:"tenant_id"`
	DepartmentID string    `json:"department_id,omitempty"`
	Name         string    `json:"name"`
	DisplayName  string    `json:"display_name,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// User is a person or service account. TenantID is empty only for platform
// admins.
type User struct {
	ID          string    `json:"id"`
	TenantID    string    `json:"tenant_id,omitempty"`
	Name        string    `json:"name"`
	DisplayName string    `json:"display_name,omitempty"`
	Email       string    `json:"email,omitempty"`
	Role        Role      `json:"role"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Membership lets a user work in a project.
type Membership struct {
	UserID    string    `json:"user_id"`
	ProjectID string    `json:"project_id"`
	TenantID  string    `json:"tenant_id"`
	CreatedAt time.Time `json:"created_at"`
}

// Key is an API key. The secret itself is never stored: only its SHA-256
// hash and a short visible prefix.
type Key struct {
	ID        string     `json:"id"`
	Prefix    string     `json:"prefix"`
	Name      string     `json:"name,omitempty"`
	UserID    string     `json:"user_id"`
	TenantID  string     `json:"tenant_id,omitempty"`
	ProjectID string     `json:"project_id,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Hash      []byte     `json:"-"`
}

// Active reports whether k may authenticate at now.
func (k *Key) Active(now time.Time) bool {
	if k.RevokedAt != nil {
		return false
	}
	return k.ExpiresAt == nil || now.Before(*k.ExpiresAt)
}

// AuditEntry records one change: who made it, when, and the object before
// and after (JSON; nil when it did not exist).
type AuditEntry struct {
	ID         string          `json:"id"`
	At         time.Time       `json:"at"`
	ActorUser  string          `json:"actor_user_id,omitempty"`
	ActorKey   string          `json:"actor_key_id,omitempty"`
	TenantID   string          `json:"tenant_id,omitempty"`
	Action     string          `json:"action"`
	ObjectKind string          `json:"object_kind"`
	ObjectID   string          `json:"object_id"`
	Before     json.RawMessage `json:"before,omitempty"`
	After      json.RawMessage `json:"after,omitempty"`
}

// Principal is who is calling: resolved from an API key.
type Principal struct {
	KeyID string `json:"key_id"`
	// KeyPrefix is the key's visible prefix (never the secret), for logs.
	KeyPrefix string `json:"key_prefix,omitempty"`
	UserID    string `json:"user_id"`
	UserName  string `json:"user_name"`
	TenantID  string `json:"tenant_id,omitempty"`
	ProjectID string `json:"project_id,omitempty"`
	Role      Role   `json:"role"`
}

// IsPlatformAdmin reports whether p may do anything.
func (p Principal) IsPlatformAdmin() bool { return p.Role == RolePlatformAdmin }

// AdminOf reports whether p administers tenantID.
func (p Principal) AdminOf(tenantID string) bool {
	return p.Role == RolePlatformAdmin || (p.Role == RoleTenantAdmin && p.TenantID == tenantID)
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal in ctx, if any.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// Page bounds a list. After is the last id of the previous page.
type Page struct {
	Limit int
	After string
}

// Filter narrows a list. Empty fields do not filter; Root asks for objects
// directly under their tenant (no parent department).
type Filter struct {
	TenantID     string
	ParentID     string
	DepartmentID string
	ProjectID    string
	UserID       string
	Root         bool
	// Audit narrows audit log listings (Service.Audit) only.
	Audit AuditFilter
	Page
}

// AuditFilter selects audit entries: by the acting user or key (Actor,
// either id), the action (exact, or a prefix when it ends in "." or
// "*": "credit." or "grant.*"), the object, and a time range [Since,
// Until). Zero fields select everything.
type AuditFilter struct {
	Actor      string
	Action     string
	ObjectKind string
	ObjectID   string
	Since      time.Time
	Until      time.Time
}
