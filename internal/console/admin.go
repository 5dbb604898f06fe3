package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// The admin pages. Every read and change goes through the services with
// the admin's principal: a tenant admin reaching another tenant's object
// gets the services' "not found", shown as a 404 page.
func (c *Console) adminRoutes() {
	c.mux.HandleFunc("GET /console/admin/{$}", adminOnly(c, c.treePage))
	c.mux.HandleFunc("GET /console/admin/scope", adminOnly(c, c.scopePage))
	c.mux.HandleFunc("POST /console/admin/limits", adminOnly(c, c.setLimits))
	c.mux.HandleFunc("POST /console/admin/limits/clear", adminOnly(c, c.clearLimits))
	c.mux.HandleFunc("POST /console/admin/grants", adminOnly(c, c.createGrant))
	c.mux.HandleFunc("POST /console/admin/grants/{id}/revoke", adminOnly(c, c.revokeGrant))
	c.mux.HandleFunc("GET /console/admin/plans", adminOnly(c, c.plansPage))
	c.mux.HandleFunc("POST /console/admin/plans/{name}", adminOnly(c, c.putPlan))
	c.mux.HandleFunc("GET /console/admin/requests", adminOnly(c, c.pendingPage))
	c.mux.HandleFunc("GET /console/admin/requests/{id}", adminOnly(c, c.requestPage))
	c.mux.HandleFunc("POST /console/admin/requests/{id}/approve", adminOnly(c, c.approve))
	c.mux.HandleFunc("POST /console/admin/requests/{id}/deny", adminOnly(c, c.deny))
	c.mux.HandleFunc("GET /console/admin/audit", adminOnly(c, c.auditPage))
	c.mux.HandleFunc("GET /console/admin/charts", adminOnly(c, c.chartsPage))
}

// ---- the tree ----

type treeNode struct {
	View     scopeView
	Children []*treeNode
}

type treeData struct {
	Tenants  []option // platform admins pick one
	TenantID string
	Root     *treeNode
}

// adminTenant is the tenant an admin page is about: a tenant admin's own;
// for a platform admin ?tenant= or the first tenant.
func (c *Console) adminTenant(r *req) (string, []option, error) {
	if !r.p.IsPlatformAdmin() {
		return r.p.TenantID, nil, nil
	}
	ts, err := c.Tenancy.Tenants(r.ctx(), tenancy.Filter{Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
	if err != nil {
		return "", nil, err
	}
	var opts []option
	for _, t := range ts {
		opts = append(opts, option{Value: t.ID, Label: t.Name})
	}
	want := r.URL.Query().Get("tenant")
	if want != "" {
		for _, o := range opts {
			if o.Value == want {
				return want, opts, nil
			}
		}
		return "", nil, errs.Field(errs.NotFound, "tenant", "tenant %s not found", want)
	}
	if len(opts) == 0 {
		return "", nil, nil
	}
	return opts[0].Value, opts, nil
}

func (c *Console) treePage(w http.ResponseWriter, r *req) {
	tenantID, tenants, err := c.adminTenant(r)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	d := treeData{Tenants: tenants, TenantID: tenantID}
	if tenantID == "" {
		c.render(w, r, http.StatusOK, "tree", "Admin", "admin", d)
		return
	}
	page := tenancy.Filter{TenantID: tenantID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}}
	depts, err := c.Tenancy.Departments(r.ctx(), page)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	projects, err := c.Tenancy.Projects(r.ctx(), page)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	scopes := []string{policy.ScopeName(policy.KindTenant, tenantID)}
	for _, dp := range depts {
		scopes = append(scopes, policy.ScopeName(policy.KindDepartment, dp.ID))
	}
	for _, p := range projects {
		scopes = append(scopes, policy.ScopeName(policy.KindProject, p.ID))
	}
	views, err := c.scopeViews(r.ctx(), tenantID, scopes)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	nodes := map[string]*treeNode{}
	for i := range views {
		nodes[views[i].Scope] = &treeNode{View: views[i]}
	}
	root := nodes[scopes[0]]
	parentOf := func(deptID string) *treeNode {
		if n := nodes[policy.ScopeName(policy.KindDepartment, deptID)]; deptID != "" && n != nil {
			return n
		}
		return root
	}
	for _, dp := range depts {
		n := nodes[policy.ScopeName(policy.KindDepartment, dp.ID)]
		parentOf(dp.ParentID).Children = append(parentOf(dp.ParentID).Children, n)
	}
	for _, p := range projects {
		n := nodes[policy.ScopeName(policy.KindProject, p.ID)]
		parentOf(p.DepartmentID).Children = append(parentOf(p.DepartmentID).Children, n)
	}
	d.Root = root
	c.render(w, r, http.StatusOK, "tree", "Admin", "admin", d)
}

// ---- a scope: limits and grants ----

// specFields are the limits the form edits, in order, with a hint.
var specFields = []struct{ Name, Label, Hint string }{
	{"requests", "Requests", "a rate such as 60/min"},
	{"tokens_rate", "Tokens per minute", "a rate such as 100000/min"},
	{"tokens", "Token budgets", "1000000/day, 20000000/month"},
	{"gpu_seconds", "GPU seconds", "7200/month"},
	{"cost", "Spend", "$50/month"},
	{"concurrency", "Concurrent runs", "5"},
	{"memory_per_run", "Memory per run", "2GiB"},
	{"run_timeout", "Run timeout", "10m"},
	{"max_steps", "Steps per run", "100"},
	{"max_tokens_per_call", "Tokens per model call", "4096"},
	{"models", "Models allowed", "gpt-4o-mini, llama3"},
	{"on_outage", "When Redis is down", "local or deny"},
}

// specForm writes a spec as the form's text fields.
func specForm(s policy.Spec) map[string]string {
	out := map[string]string{}
	b, _ := json.Marshal(s)
	var raw map[string]any
	_ = json.Unmarshal(b, &raw)
	for k, v := range raw {
		switch x := v.(type) {
		case []any:
			var parts []string
			for _, e := range x {
				parts = append(parts, fmt.Sprint(e))
			}
			out[k] = strings.Join(parts, ", ")
		case float64:
			out[k] = strconv.FormatFloat(x, 'f', -1, 64)
		default:
			out[k] = fmt.Sprint(x)
		}
	}
	return out
}

// parseSpec reads the form's limit fields into a spec, through the
// policy's own JSON decoding, so an error names the limit
// (limits.requests) as the API's does.
func parseSpec(form url.Values) (policy.Spec, map[string]string, error) {
	raw := map[string]any{}
	text := map[string]string{}
	for _, f := range specFields {
		v := strings.TrimSpace(form.Get(f.Name))
		text[f.Name] = v
		if v == "" {
			continue
		}
		switch f.Name {
		case "concurrency", "max_steps", "max_tokens_per_call":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return policy.Spec{}, text, errs.Field(errs.Invalid, "limits."+f.Name, "%s must be a whole number such as %s", f.Label, f.Hint)
			}
			raw[f.Name] = n
		case "tokens", "models":
			var list []string
			for _, part := range strings.Split(v, ",") {
				if part = strings.TrimSpace(part); part != "" {
					list = append(list, part)
				}
			}
			raw[f.Name] = list
		default:
			raw[f.Name] = v
		}
	}
	b, _ := json.Marshal(raw)
	var s policy.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return s, text, err
	}
	return s, text, nil
}

// limitErrors places an error from the policy next to its field: its
// Field ("limits.tokens") less the prefix, or the form's top.
func limitErrors(err error) (fieldErrors, string, bool) {
	fe, msg, ok := formError(err)
	if !ok {
		return nil, "", false
	}
	out := fieldErrors{}
	for k, v := range fe {
		k = strings.TrimPrefix(k, "limits.")
		if i := strings.IndexAny(k, ".["); i > 0 {
			k = k[:i]
		}
		out[k] = v
	}
	return out, msg, true
}

type grantRow struct {
	*policy.Grant
	Raises string
	Active bool
}

type scopeData struct {
	Scope     string
	Name      string
	KindLabel string
	TenantID  string
	View      *policy.ScopeView
	Meters    []scopeView
	Plans     []string
	Fields    []struct{ Name, Label, Hint string }
	Form      map[string]string
	Plan      string
	Errors    fieldErrors
	FormError string
	Grants    []grantRow
	Grant     map[string]string
	GrantErrs fieldErrors
	GrantErr  string
	Effective string
}

func (c *Console) scopePage(w http.ResponseWriter, r *req) {
	c.showScope(w, r, http.StatusOK, r.URL.Query().Get("scope"), nil)
}

// showScope draws a scope's page; d carries a form sent back with its
// errors (nil: the stored settings).
func (c *Console) showScope(w http.ResponseWriter, r *req, status int, scope string, d *scopeData) {
	v, err := c.Policy.Limits(r.ctx(), scope) // authorises: another tenant's scope is not found
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	if d == nil {
		d = &scopeData{Form: specForm(v.Limits), Plan: v.Plan, Grant: map[string]string{"duration": "7d"}}
	}
	d.Scope, d.TenantID, d.View, d.Fields = scope, v.TenantID, v, specFields
	kind, _, _ := strings.Cut(scope, "/")
	d.KindLabel, d.Name = kindLabels[kind], c.scopeName(r.ctx(), v.TenantID, scope)
	if kind == policy.KindUser {
		d.KindLabel = "User"
	}
	eff, _ := json.Marshal(v.Effective)
	d.Effective = string(eff)
	if d.Meters, err = c.scopeViews(r.ctx(), v.TenantID, []string{scope}); err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	plans, err := c.Policy.Plans(r.ctx())
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	for _, p := range plans {
		d.Plans = append(d.Plans, p.Name)
	}
	grants, err := c.Policy.Grants(r.ctx(), v.TenantID, scope, false)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	now := c.Now()
	for _, g := range grants {
		raises, _ := json.Marshal(g.Limits)
		d.Grants = append(d.Grants, grantRow{Grant: g, Raises: string(raises), Active: g.Active(now)})
	}
	c.render(w, r, status, "scope", d.Name, "admin", d)
}

func scopeURL(scope string) string {
	return "/console/admin/scope?scope=" + url.QueryEscape(scope)
}

func (c *Console) setLimits(w http.ResponseWriter, r *req) {
	scope := r.PostForm.Get("scope")
	spec, text, err := parseSpec(r.PostForm)
	in := policy.LimitsInput{Plan: strings.TrimSpace(r.PostForm.Get("plan")), Limits: spec}
	if err == nil {
		// Keep the guarantee the form does not edit.
		if v, verr := c.Policy.Limits(r.ctx(), scope); verr == nil {
			in.Guaranteed = v.Guaranteed
		}
		_, err = c.Policy.SetLimits(r.ctx(), scope, in)
	}
	if err != nil {
		fe, msg, ok := limitErrors(err)
		if !ok {
			c.fail(w, r.Request, r, err)
			return
		}
		c.showScope(w, r, http.StatusBadRequest, scope, &scopeData{Form: text, Plan: in.Plan, Errors: fe, FormError: msg,
			Grant: map[string]string{"duration": "7d"}})
		return
	}
	redirect(w, r, scopeURL(scope), "limits")
}

func (c *Console) clearLimits(w http.ResponseWriter, r *req) {
	scope := r.PostForm.Get("scope")
	if err := c.Policy.ClearLimits(r.ctx(), scope); err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	redirect(w, r, scopeURL(scope), "cleared")
}

func (c *Console) createGrant(w http.ResponseWriter, r *req) {
	scope := r.PostForm.Get("scope")
	grant := map[string]string{"raise": r.PostForm.Get("raise"), "amount": r.PostForm.Get("amount"),
		"duration": r.PostForm.Get("duration"), "reason": r.PostForm.Get("reason")}
	fail := func(fe fieldErrors, msg string) {
		c.showScope(w, r, http.StatusBadRequest, scope, &scopeData{Grant: grant, GrantErrs: fe, GrantErr: msg, Form: map[string]string{}})
	}
	life, err := parseLife(grant["duration"])
	if err != nil {
		fail(fieldErrors{"duration": err.Error()}, "")
		return
	}
	field := grant["raise"]
	known := false
	for _, f := range specFields {
		known = known || f.Name == field
	}
	if !known {
		fail(fieldErrors{"raise": "pick the limit to raise"}, "")
		return
	}
	spec, _, err := parseSpec(url.Values{field: {grant["amount"]}})
	if err == nil {
		_, err = c.Policy.CreateGrant(r.ctx(), policy.GrantInput{Scope: scope, Limits: spec, ExpiresAt: c.Now().Add(life), Reason: grant["reason"]})
	}
	if err != nil {
		fe, msg, ok := limitErrors(err)
		if !ok {
			c.fail(w, r.Request, r, err)
			return
		}
		if _, on := fe[field]; on {
			fe = fieldErrors{"amount": fe[field]}
		}
		fail(fe, msg)
		return
	}
	redirect(w, r, scopeURL(scope), "grant")
}

// parseLife reads "7d" or "72h".
func parseLife(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n > 0 && n <= 366 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > policy.MaxGrantLife {
		return 0, fmt.Errorf("how long must be a duration such as 7d or 72h, at most 366d")
	}
	return d, nil
}

func (c *Console) revokeGrant(w http.ResponseWriter, r *req) {
	g, err := c.Policy.RevokeGrant(r.ctx(), r.PathValue("id"))
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	redirect(w, r, scopeURL(g.Scope), "ungrant")
}

// ---- plans ----

type planRow struct {
	Name, Description string
	Priority          policy.Priority
	Form              map[string]string
	Errors            fieldErrors
	FormError         string
}

type plansData struct {
	Plans    []planRow
	Editable bool
	Fields   []struct{ Name, Label, Hint string }
}

func (c *Console) plansPage(w http.ResponseWriter, r *req) {
	c.showPlans(w, r, http.StatusOK, nil)
}

func (c *Console) showPlans(w http.ResponseWriter, r *req, status int, sent *planRow) {
	plans, err := c.Policy.Plans(r.ctx())
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	d := plansData{Editable: r.p.IsPlatformAdmin(), Fields: specFields}
	for _, p := range plans {
		row := planRow{Name: p.Name, Description: p.Description, Priority: p.Priority, Form: specForm(p.Limits)}
		if sent != nil && sent.Name == p.Name {
			row = *sent
		}
		d.Plans = append(d.Plans, row)
	}
	c.render(w, r, status, "plans", "Plans", "admin", d)
}

func (c *Console) putPlan(w http.ResponseWriter, r *req) {
	name := r.PathValue("name")
	spec, text, err := parseSpec(r.PostForm)
	in := policy.PlanInput{Description: strings.TrimSpace(r.PostForm.Get("description")), Priority: policy.Priority(r.PostForm.Get("priority")), Limits: spec}
	if err == nil {
		_, err = c.Policy.PutPlan(r.ctx(), name, in)
	}
	if err != nil {
		fe, msg, ok := limitErrors(err)
		if !ok {
			c.fail(w, r.Request, r, err)
			return
		}
		c.showPlans(w, r, http.StatusBadRequest, &planRow{Name: name, Description: in.Description, Priority: in.Priority, Form: text, Errors: fe, FormError: msg})
		return
	}
	redirect(w, r, "/console/admin/plans", "plan")
}

// ---- quota requests ----

type pendingData struct {
	Requests []requestRow
	One      bool
	Errors   map[string]fieldErrors // request id → its form's errors
	Enabled  bool
}

func (c *Console) pendingPage(w http.ResponseWriter, r *req) {
	c.showPending(w, r, http.StatusOK, nil)
}

func (c *Console) showPending(w http.ResponseWriter, r *req, status int, errors map[string]fieldErrors) {
	d := pendingData{Errors: errors, Enabled: c.Requests != nil}
	if c.Requests != nil {
		list, err := c.Requests.List(r.ctx(), policy.RequestFilter{Status: policy.RequestPending, Page: tenancy.Page{Limit: 200}})
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		d.Requests = c.requestRows(r, list)
	}
	c.render(w, r, status, "pending", "Quota requests", "admin", d)
}

// requestPage shows one request to an admin who may decide it; any other
// gets the service's "not found".
func (c *Console) requestPage(w http.ResponseWriter, r *req) {
	if c.Requests == nil {
		c.fail(w, r.Request, r, errs.E(errs.NotFound, "quota requests are not served here"))
		return
	}
	q, err := c.Requests.Get(r.ctx(), r.PathValue("id"))
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	if q.TenantID != r.p.TenantID && !r.p.IsPlatformAdmin() {
		c.fail(w, r.Request, r, errs.E(errs.NotFound, "quota request %s not found", r.PathValue("id")))
		return
	}
	c.render(w, r, http.StatusOK, "pending", "Quota request", "admin", pendingData{Requests: c.requestRows(r, []*policy.QuotaRequest{q}), One: true, Enabled: true})
}

func (c *Console) approve(w http.ResponseWriter, r *req) {
	if c.Requests == nil {
		c.fail(w, r.Request, r, errs.E(errs.NotFound, "quota requests are not served here"))
		return
	}
	id := r.PathValue("id")
	in := policy.ApproveInput{Duration: strings.TrimSpace(r.PostForm.Get("duration")), Note: r.PostForm.Get("note")}
	if a := strings.TrimSpace(r.PostForm.Get("amount")); a != "" {
		v, err := strconv.ParseFloat(a, 64)
		if err != nil {
			c.showPending(w, r, http.StatusBadRequest, map[string]fieldErrors{id: {"amount": "amount must be a number, or empty for the amount asked"}})
			return
		}
		in.Amount = v
	}
	if _, err := c.Requests.Approve(r.ctx(), id, in); err != nil {
		fe, msg, ok := formError(err)
		if !ok || (fe == nil && errs.Is(err, errs.NotFound)) {
			c.fail(w, r.Request, r, err)
			return
		}
		if msg != "" {
			fe = fieldErrors{"note": msg}
		}
		c.showPending(w, r, http.StatusBadRequest, map[string]fieldErrors{id: fe})
		return
	}
	redirect(w, r, "/console/admin/requests", "approved")
}

func (c *Console) deny(w http.ResponseWriter, r *req) {
	if c.Requests == nil {
		c.fail(w, r.Request, r, errs.E(errs.NotFound, "quota requests are not served here"))
		return
	}
	id := r.PathValue("id")
	if _, err := c.Requests.Deny(r.ctx(), id, policy.DenyInput{Reason: r.PostForm.Get("reason")}); err != nil {
		fe, msg, ok := formError(err)
		if !ok || (fe == nil && errs.Is(err, errs.NotFound)) {
			c.fail(w, r.Request, r, err)
			return
		}
		if msg != "" {
			fe = fieldErrors{"reason": msg}
		}
		c.showPending(w, r, http.StatusBadRequest, map[string]fieldErrors{id: fe})
		return
	}
	redirect(w, r, "/console/admin/requests", "denied")
}

// ---- audit log ----

// auditScan bounds how many entries one audit page reads to filter: the
// store filters by tenant only, the rest is filtered here.
const auditScan = 5000

type auditRow struct {
	*tenancy.AuditEntry
	Actor string
}

type auditData struct {
	Filter  map[string]string
	Entries []auditRow
	Errors  fieldErrors
	Capped  bool
}

func (c *Console) auditPage(w http.ResponseWriter, r *req) {
	q := r.URL.Query()
	f := map[string]string{"actor": q.Get("actor"), "action": q.Get("action"), "scope": q.Get("scope"), "from": q.Get("from"), "to": q.Get("to")}
	d := auditData{Filter: f, Errors: fieldErrors{}}
	var from, to time.Time
	var err error
	if f["from"] != "" {
		if from, err = time.Parse("2006-01-02", f["from"]); err != nil {
			d.Errors["from"] = "from must be a day such as 2026-11-01"
		}
	}
	if f["to"] != "" {
		if to, err = time.Parse("2006-01-02", f["to"]); err != nil {
			d.Errors["to"] = "to must be a day such as 2026-11-30"
		}
		to = to.Add(24 * time.Hour)
	}
	if len(d.Errors) > 0 {
		c.render(w, r, http.StatusBadRequest, "audit", "Audit log", "admin", d)
		return
	}
	tenantID := ""
	if !r.p.IsPlatformAdmin() {
		tenantID = r.p.TenantID
	}
	names := map[string]string{}
	actor := func(id string) string {
		if n, ok := names[id]; ok {
			return n
		}
		n := id
		if id == tenancy.SystemPrincipal.UserID {
			n = "system"
		} else if u, err := c.Tenancy.User(r.ctx(), id); err == nil {
			n = u.Name
		}
		names[id] = n
		return n
	}
	// The time range is the store's to apply (the scan starts at its
	// newest entry); the words are matched here, as parts of names.
	page := tenancy.Filter{TenantID: tenantID, Audit: tenancy.AuditFilter{Since: from, Until: to}, Page: tenancy.Page{Limit: tenancy.MaxPageSize}}
	if strings.HasPrefix(f["actor"], "usr_") || strings.HasPrefix(f["actor"], "key_") {
		page.Audit.Actor = f["actor"]
	}
	scanned := 0
scan:
	for scanned < auditScan {
		entries, err := c.Tenancy.Audit(r.ctx(), page)
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		for _, e := range entries {
			scanned++
			if !to.IsZero() && !e.At.Before(to) {
				continue
			}
			if !from.IsZero() && e.At.Before(from) {
				break scan // newest first: the rest is older
			}
			if f["action"] != "" && !strings.Contains(e.Action, f["action"]) {
				continue
			}
			if f["scope"] != "" && !strings.Contains(e.ObjectKind+"/"+e.ObjectID, f["scope"]) {
				continue
			}
			row := auditRow{AuditEntry: e, Actor: actor(e.ActorUser)}
			if f["actor"] != "" && !strings.Contains(row.Actor, f["actor"]) && e.ActorUser != f["actor"] {
				continue
			}
			d.Entries = append(d.Entries, row)
			if len(d.Entries) == 200 {
				break scan
			}
		}
		if len(entries) < page.Limit {
			break
		}
		page.After = entries[len(entries)-1].ID
	}
	d.Capped = scanned >= auditScan
	c.render(w, r, http.StatusOK, "audit", "Audit log", "admin", d)
}

// sortedKeys returns m's keys in order (templates and charts).
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
