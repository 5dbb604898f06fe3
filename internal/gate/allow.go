package gate

import "github.com/sluicehq/sluice/internal/policy"

// Allows reports whether chain lets its caller use model: every scope with
// a model list must name it. The engine checks the model a call asks for;
// this serves the models a call may fall back to, and listings.
func Allows(chain *policy.Chain, model string) bool {
	if chain == nil {
		return true
	}
	for _, sc := range chain.Scopes {
		if sc.Limits == nil || len(sc.Limits.Models) == 0 {
			continue
		}
		ok := false
		for _, m := range sc.Limits.Models {
			ok = ok || m == model
		}
		if !ok {
			return false
		}
	}
	return true
}

// Route is the routing a chain's calls get: its tenant and plan, for
// deployments dedicated to them.
func Route(tenantID string, chain *policy.Chain) (tenant, plan string) {
	if chain != nil {
		plan = chain.Plan
	}
	return tenantID, plan
}
