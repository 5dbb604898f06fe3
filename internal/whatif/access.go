package whatif

import (
	"fmt"
	"slices"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/policydoc"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// TenantFor checks who may replay what and returns the tenant whose
// ledger is replayed ("" every tenant's). Platform admins replay any draft
// over every tenant's ledger, or tenantID's. A tenant admin replays only
// their tenant's ledger, with a draft that names only their tenant (plans
// and the global scope are platform admins'); another tenant's id is 404,
// as everywhere. Members may not replay. live is the policy in force.
//
// The API and the console both ask it, so that who may replay is decided
// in one place.
func TenantFor(p tenancy.Principal, tenantID string, doc *policydoc.Document, live *policy.Snapshot) (string, error) {
	if p.IsPlatformAdmin() {
		if tenantID != "" && !slices.Contains(live.TenantIDs(), tenantID) {
			return "", errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID)
		}
		return tenantID, nil
	}
	if p.Role != tenancy.RoleTenantAdmin {
		return "", errs.E(errs.Forbidden, "a policy what-if is for admins")
	}
	if tenantID != "" && tenantID != p.TenantID {
		return "", errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID)
	}
	if len(doc.Plans) > 0 {
		return "", errs.Field(errs.Forbidden, "plans", "plans are the platform's: a tenant admin's draft may not change them")
	}
	if doc.Global != nil {
		return "", errs.Field(errs.Forbidden, "global", "the global scope is the platform's: a tenant admin's draft may not change it")
	}
	own := live.TenantName(p.TenantID)
	for i, t := range doc.Tenants {
		if t.Name != own {
			field := fmt.Sprintf("tenants[%d].name", i)
			return "", errs.Field(errs.Forbidden, field, "%s: a tenant admin's draft may name only their own tenant, %s", field, own)
		}
	}
	return p.TenantID, nil
}
