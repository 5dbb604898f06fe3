package console

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"

	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

func (c *Console) memberRoutes() {
	c.mux.HandleFunc("GET /console/requests", c.signedIn(c.requestsPage))
	c.mux.HandleFunc("POST /console/requests", c.signedIn(c.askForMore))
	c.mux.HandleFunc("POST /console/requests/{id}/cancel", c.signedIn(c.cancelRequest))
	c.mux.HandleFunc("GET /console/keys", c.signedIn(c.keysPage))
	c.mux.HandleFunc("POST /console/keys", c.signedIn(c.createKey))
	c.mux.HandleFunc("POST /console/keys/{id}/expiry", c.signedIn(c.keyExpiry))
	c.mux.HandleFunc("POST /console/keys/{id}/revoke", c.signedIn(c.revokeKey))
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

// ---- quota requests ----

// requestDimensions are what a member may ask more of, in the words shown.
var requestDimensions = []struct{ Value, Label string }{
	{"tokens_day", "tokens per day"}, {"tokens_month", "tokens per month"}, {"requests", "requests per minute"},
	{"tokens_rate", "tokens per minute"}, {"gpu_seconds", "GPU seconds per month"}, {"cost", "spend per month (USD)"},
	{"concurrency", "concurrent runs"},
}

type option struct{ Value, Label string }

// requestRow is a quota request as listed.
type requestRow struct {
	ID, Scope, ScopeName, Dimension, Amount, Granted, Duration, Reason, Status, Note string
	By                                                                               string
	CreatedAt                                                                        time.Time
	ExpiresAt                                                                        *time.Time
	Pending, GrantEnded                                                              bool
}

type requestsData struct {
	Scopes     []option
	Dimensions []struct{ Value, Label string }
	Form       map[string]string
	Errors     fieldErrors
	FormError  string
	Requests   []requestRow
	Enabled    bool
}

// shownAmount writes a request's amount in its dimension's unit.
func shownAmount(dim string, units int64) string {
	if dim == "cost" {
		return fmt.Sprintf("$%.2f", float64(units)/1e6)
	}
	return groupDigits(units)
}

func (c *Console) requestRows(r *req, list []*policy.QuotaRequest) []requestRow {
	out := make([]requestRow, 0, len(list))
	for _, q := range list {
		row := requestRow{ID: q.ID, Scope: q.Scope, ScopeName: c.scopeName(r.ctx(), q.TenantID, q.Scope), Dimension: q.Dimension,
			Amount: shownAmount(q.Dimension, q.Amount), Duration: time.Duration(q.Duration).String(), Reason: q.Reason,
			Status: q.Status, Note: q.Note, CreatedAt: q.CreatedAt, ExpiresAt: q.ExpiresAt, Pending: q.Status == policy.RequestPending,
			GrantEnded: q.GrantEnded(), By: c.scopeName(r.ctx(), q.TenantID, policy.KindUser+"/"+q.RequestedBy)}
		if q.GrantedAmount != 0 {
			row.Granted = shownAmount(q.Dimension, q.GrantedAmount)
		}
		out = append(out, row)
	}
	return out
}

// chainOptions lists the scopes of the caller's chain a member may ask
// for, innermost first, by name.
func (c *Console) chainOptions(r *req) []option {
	chain, err := c.Meter.Policy().Current().ChainFor(r.p.TenantID, r.p.UserID, r.p.ProjectID, r.p.KeyID)
	if err != nil {
		return nil
	}
	var out []option
	for i := len(chain.Keys) - 1; i >= 0; i-- {
		sc := chain.Keys[i]
		if sc == policy.GlobalScope {
			continue
		}
		kind, _, _ := strings.Cut(sc, "/")
		out = append(out, option{Value: sc, Label: kindLabels[kind] + ": " + c.scopeName(r.ctx(), r.p.TenantID, sc)})
	}
	return out
}

func (c *Console) requestsPage(w http.ResponseWriter, r *req) {
	c.showRequests(w, r, http.StatusOK, map[string]string{"duration": "7d"}, nil, "")
}

func (c *Console) showRequests(w http.ResponseWriter, r *req, status int, form map[string]string, fe fieldErrors, formErr string) {
	d := requestsData{Scopes: c.chainOptions(r), Dimensions: requestDimensions, Form: form, Errors: fe, FormError: formErr, Enabled: c.Requests != nil}
	if c.Requests != nil {
		list, err := c.Requests.List(r.ctx(), policy.RequestFilter{RequestedBy: r.p.UserID, Page: tenancy.Page{Limit: 100}})
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		// Newest first: ids grow with time.
		for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
			list[i], list[j] = list[j], list[i]
		}
		d.Requests = c.requestRows(r, list)
	}
	c.render(w, r, status, "requests", "Ask for more", "requests", d)
}

func (c *Console) askForMore(w http.ResponseWriter, r *req) {
	if c.Requests == nil {
		c.fail(w, r.Request, r, errs.E(errs.NotFound, "quota requests are not served here"))
		return
	}
	f := r.PostForm
	form := map[string]string{"scope": f.Get("scope"), "dimension": f.Get("dimension"), "amount": f.Get("amount"),
		"duration": f.Get("duration"), "reason": f.Get("reason")}
	amount, err := strconv.ParseFloat(strings.TrimSpace(form["amount"]), 64)
	if err != nil {
		c.showRequests(w, r, http.StatusBadRequest, form, fieldErrors{"amount": "amount must be a number, such as 50000"}, "")
		return
	}
	_, err = c.Requests.Create(r.ctx(), policy.RequestInput{Scope: form["scope"], Dimension: form["dimension"], Amount: amount,
		Duration: form["duration"], Reason: form["reason"]})
	if err != nil {
		fe, msg, ok := formError(err)
		if !ok {
			c.fail(w, r.Request, r, err)
			return
		}
		c.showRequests(w, r, http.StatusBadRequest, form, fe, msg)
		return
	}
	redirect(w, r, "/console/requests", "request")
}

func (c *Console) cancelRequest(w http.ResponseWriter, r *req) {
	if c.Requests == nil {
		c.fail(w, r.Request, r, errs.E(errs.NotFound, "quota requests are not served here"))
		return
	}
	if _, err := c.Requests.Cancel(r.ctx(), r.PathValue("id")); err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	redirect(w, r, "/console/requests", "cancel")
}

// ---- keys ----

type keyRow struct {
	*tenancy.Key
	ProjectName string
	Active      bool
	Requests    int64
	Tokens      int64
	Cost        string
}

type keysData struct {
	Keys     []keyRow
	Period   string
	Projects []option
	Form     map[string]string
	Errors   fieldErrors
	// Created is a key just made, with its secret: shown this once.
	Created      *tenancy.Key
	Secret       string
	ExpiryErrors map[string]string // key id → error
}

func (c *Console) keysPage(w http.ResponseWriter, r *req) {
	c.showKeys(w, r, http.StatusOK, keysData{Form: map[string]string{"project_id": r.p.ProjectID}})
}

func (c *Console) showKeys(w http.ResponseWriter, r *req, status int, d keysData) {
	keys, err := c.Tenancy.Keys(r.ctx(), tenancy.Filter{UserID: r.p.UserID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	snap := c.Meter.Policy().Current()
	d.Period = usage.MonthPeriod(c.Now(), snap.Location(r.p.TenantID))
	spend := map[string]usage.Rollup{}
	if c.Ledger != nil && r.p.TenantID != "" {
		rows, err := c.Ledger.KindRollups(r.ctx(), policy.KindKey, r.p.TenantID, []string{d.Period})
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		for _, ru := range rows {
			spend[strings.TrimPrefix(ru.Scope, policy.KindKey+"/")] = ru
		}
	}
	now := c.Now()
	for _, k := range keys {
		if k.UserID != r.p.UserID {
			continue // an admin's list holds the tenant's keys: here, only one's own
		}
		row := keyRow{Key: k, Active: k.Active(now)}
		if k.ProjectID != "" {
			row.ProjectName = c.scopeName(r.ctx(), k.TenantID, policy.KindProject+"/"+k.ProjectID)
		}
		ru := spend[k.ID]
		row.Requests, row.Tokens, row.Cost = ru.Requests, ru.Tokens, fmt.Sprintf("$%.2f", float64(ru.CostMicros)/1e6)
		d.Keys = append(d.Keys, row)
	}
	if r.p.TenantID != "" {
		ms, err := c.Tenancy.Memberships(r.ctx(), tenancy.Filter{UserID: r.p.UserID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		for _, m := range ms {
			d.Projects = append(d.Projects, option{Value: m.ProjectID, Label: c.scopeName(r.ctx(), m.TenantID, policy.KindProject+"/"+m.ProjectID)})
		}
	}
	if d.Form == nil {
		d.Form = map[string]string{}
	}
	c.render(w, r, status, "keys", "Your keys", "keys", d)
}

func (c *Console) createKey(w http.ResponseWriter, r *req) {
	f := r.PostForm
	form := map[string]string{"name": strings.TrimSpace(f.Get("name")), "project_id": f.Get("project_id"), "expires_in": strings.TrimSpace(f.Get("expires_in"))}
	k, secret, err := c.Tenancy.CreateKey(r.ctx(), tenancy.KeyInput{UserID: r.p.UserID, Name: form["name"], ProjectID: form["project_id"], ExpiresIn: form["expires_in"]})
	if err != nil {
		fe, msg, ok := formError(err)
		if !ok {
			c.fail(w, r.Request, r, err)
			return
		}
		if msg != "" {
			fe = fieldErrors{"name": msg}
		}
		c.showKeys(w, r, http.StatusBadRequest, keysData{Form: form, Errors: fe})
		return
	}
	// The secret is in this answer only: not a redirect, and the page is
	// not cached (Cache-Control: no-store).
	c.showKeys(w, r, http.StatusCreated, keysData{Form: map[string]string{"project_id": r.p.ProjectID}, Created: k, Secret: secret})
}

func (c *Console) keyExpiry(w http.ResponseWriter, r *req) {
	in := strings.TrimSpace(r.PostForm.Get("expires_in"))
	if _, err := c.Tenancy.UpdateKey(r.ctx(), r.PathValue("id"), tenancy.KeyPatch{ExpiresIn: &in}); err != nil {
		fe, msg, ok := formError(err)
		if !ok {
			c.fail(w, r.Request, r, err)
			return
		}
		if msg == "" {
			for _, m := range fe {
				msg = m
			}
		}
		c.showKeys(w, r, http.StatusBadRequest, keysData{ExpiryErrors: map[string]string{r.PathValue("id"): msg}})
		return
	}
	redirect(w, r, "/console/keys", "expiry")
}

func (c *Console) revokeKey(w http.ResponseWriter, r *req) {
	if _, err := c.Tenancy.RevokeKey(r.ctx(), r.PathValue("id")); err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	if r.PathValue("id") == r.p.KeyID {
		// The key this session was made with: the session ends with it.
		c.clearCookie(w, r.Request)
		http.Redirect(w, r.Request, "/console/signin", http.StatusSeeOther)
		return
	}
	redirect(w, r, "/console/keys", "revoke")
}
