package tenancy

import "context"

// Store persists the tenancy tree. Each call of Update runs fn in one
// read-write transaction: fn's writes all land, or none do.
type Store interface {
	Update(ctx context.Context, fn func(Tx) error) error
	View(ctx context.Context, fn func(Tx) error) error
}

// Tx is one transaction. Getters return an errs.NotFound error for a missing
// object; inserts and updates return errs.Conflict (field "name") when a name
// is already taken in its parent.
type Tx interface {
	InsertTenant(t *Tenant) error
	Tenant(id string) (*Tenant, error)
	TenantByName(name string) (*Tenant, error)
	Tenants(f Filter) ([]*Tenant, error)
	UpdateTenant(t *Tenant) error
	DeleteTenant(id string) error

	InsertDepartment(d *Department) error
	Department(id string) (*Department, error)
	Departments(f Filter) ([]*Department, error)
	UpdateDepartment(d *Department) error
	DeleteDepartment(id string) error

	InsertProject(p *Project) error
	Project(id string) (*Project, error)
	Projects(f Filter) ([]*Project, error)
	UpdateProject(p *Project) error
	DeleteProject(id string) error

	InsertUser(u *User) error
	User(id string) (*User, error)
	Users(f Filter) ([]*User, error)
	UpdateUser(u *User) error
	DeleteUser(id string) error

	InsertMembership(m *Membership) error
	Membership(userID, projectID string) (*Membership, error)
	Memberships(f Filter) ([]*Membership, error)
	DeleteMembership(userID, projectID string) error
	DeleteMemberships(f Filter) error

	InsertKey(k *Key) error
	Key(id string) (*Key, error)
	KeyByHash(hash []byte) (*Key, error)
	Keys(f Filter) ([]*Key, error)
	UpdateKey(k *Key) error
	DeleteRevokedKeys(userID string) error
	// CountActiveKeys counts unrevoked, unexpired keys of a user or project.
	CountActiveKeys(f Filter) (int, error)

	InsertAudit(e *AuditEntry) error
	Audit(f Filter) ([]*AuditEntry, error)

	// PutUpstreamKey inserts or replaces the key of its (tenant, service,
	// scope).
	PutUpstreamKey(k *UpstreamKey) error
	UpstreamKey(tenantID, service, scope string) (*UpstreamKey, error)
	UpstreamKeys(tenantID, service string) ([]*UpstreamKey, error) // tenantID "": every tenant's
	DeleteUpstreamKey(tenantID, service, scope string) error
}
