package policy

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/internal/tenancy"
)

// Store persists policy. Its transactions also see the tenancy tree, so a
// limit and the scope it applies to are checked in one transaction.
type Store interface {
	UpdatePolicy(ctx context.Context, fn func(Tx) error) error
	ViewPolicy(ctx context.Context, fn func(Tx) error) error
}

// Tx is one policy transaction.
type Tx interface {
	tenancy.Tx

	Plans() ([]*Plan, error)
	Plan(name string) (*Plan, error)
	PutPlan(p *Plan) error
	DeletePlan(name string) error
	// PlanUsers counts the scopes whose settings name the plan.
	PlanUsers(name string) (int, error)

	ScopeLimits(scope string) (*ScopeLimits, error)
	// ListScopeLimits lists settings, of one tenant when tenantID is set.
	ListScopeLimits(tenantID string) ([]*ScopeLimits, error)
	PutScopeLimits(sl *ScopeLimits) error
	DeleteScopeLimits(scope string) error

	InsertGrant(g *Grant) error
	Grant(id string) (*Grant, error)
	// Grants lists grants of a tenant and/or scope; activeAt non-zero keeps
	// only those active then.
	Grants(tenantID, scope string, activeAt time.Time) ([]*Grant, error)
	UpdateGrant(g *Grant) error

	Tree() (*Tree, error)

	// Setting returns a platform setting ("" when unset).
	Setting(name string) (string, error)
	PutSetting(name, value string) error
}
