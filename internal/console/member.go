package console

import (
	"net/http"

	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

func (c *Console) memberRoutes() {
}

// homeData is the member view: the caller's chain with its meters, and
// their runs in flight.
type homeData struct {
	TenantName string
	TimeZone   string
	Scopes     []scopeView
	NoChain    string // why there are no meters
	Running    []*run.Record
}

// home shows the signed-in user's quota: each scope of the chain their key
// works in (GET /api/v1/usage's chain), with its meters.
func (c *Console) home(w http.ResponseWriter, r *req) {
	d := homeData{}
	snap := c.Meter.Policy().Current()
	d.TimeZone = snap.Location(r.p.TenantID).String()
	if r.p.TenantID != "" {
		if t, err := c.Tenancy.Tenant(r.ctx(), r.p.TenantID); err == nil {
			d.TenantName = t.Name
			if t.DisplayName != "" {
				d.TenantName = t.DisplayName
			}
		}
	}
	chain, err := snap.ChainFor(r.p.TenantID, r.p.UserID, r.p.ProjectID, r.p.KeyID)
	if err != nil {
		d.NoChain = "No meters: " + err.Error()
		if r.p.IsPlatformAdmin() {
			d.NoChain = "A platform admin belongs to no tenant, so has no quota of their own: see Admin for every tenant's usage."
		}
	} else {
		var scopes []string
		for _, sc := range chain.AllKeys() {
			if sc == policy.GlobalScope && !r.p.IsPlatformAdmin() {
				continue // the platform-wide pool is the operator's business
			}
			scopes = append(scopes, sc)
		}
		if d.Scopes, err = c.scopeViews(r.ctx(), r.p.TenantID, scopes); err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
	}
	if c.Runs != nil {
		runs, err := c.Runs.Runs(r.ctx(), tenancy.Filter{UserID: r.p.UserID, Page: tenancy.Page{Limit: 50}})
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		for _, rr := range runs {
			if rr.Status == run.StatusRunning || rr.Status == run.StatusCancelling {
				d.Running = append(d.Running, rr)
			}
		}
	}
	c.render(w, r, http.StatusOK, "home", "Usage", "usage", d)
}
