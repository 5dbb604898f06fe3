package console

import (
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/policydoc"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/whatif"
)

// The policy what-if page: an admin edits a draft policy (prefilled with
// the policy in force, as `sluice export` writes it) and replays the
// ledger of a past window against it, as POST
// /api/v1/admin/policy/what-if does, with the same rules of who may
// replay what (whatif.TenantFor). Nothing is applied.
func (c *Console) whatIfRoutes() {
	c.mux.HandleFunc("GET /console/admin/what-if", adminOnly(c, c.whatIfPage))
	c.mux.HandleFunc("POST /console/admin/what-if", c.largeForm(maxDraftForm, adminOnly(c, c.runWhatIf), func(bool) error {
		return errs.E(errs.TooLarge, "the form is malformed or its draft is larger than %d bytes", policydoc.MaxSize)
	}))
}

// whatIfLedger is what a replay reads: the ledger and the live policy
// (sqlstore.Store, which is also the console's Ledger).
type whatIfLedger interface {
	whatif.Ledger
	policy.Store
}

// whatIfWindows are the windows the form offers.
var whatIfWindows = []option{{Value: "24h", Label: "the last 24 hours"}, {Value: "7d", Label: "the last 7 days"},
	{Value: "30d", Label: "the last 30 days"}, {Value: "90d", Label: "the last 90 days"}}

// maxDraftForm bounds the what-if form's body: a draft as large as apply
// takes, sent as multipart/form-data (which does not inflate it as
// URL-encoding would), and the form's other fields.
const maxDraftForm = policydoc.MaxSize + maxFormBytes

// whatIfData is the page's.
type whatIfData struct {
	Draft    string
	Window   string
	Windows  []option
	Tenants  []option // platform admins: every tenant ("") or one
	TenantID string
	Error    *whatIfError
	Report   *whatIfReport
	NoLedger bool
}

// whatIfError is a refused replay: the field of the form or the draft at
// fault ("window", "tenants[0].limits.tokns") and what is wrong.
type whatIfError struct {
	Field   string
	Message string
}

// whatIfReport is a replay's report as the page shows it.
type whatIfReport struct {
	*whatif.Report
	// TimeZone is the zone of From and To: the tenant's, UTC for a
	// replay of every tenant.
	TimeZone string
	// Over is the window in words: "the last 7 days".
	Over     string
	FromText string
	ToText   string
	Scopes   []wallScope
}

// wallScope is the walls of one scope, in order of their first hit.
type wallScope struct {
	Scope string
	Name  string
	Walls []wallRow
}

type wallRow struct {
	whatif.Wall
	Limit       string
	Queued      string
	FirstWall   string // in the scope's tenant's zone
	Timeline    template.HTML
	FirstWallAt string // RFC 3339, for machines
}

func (c *Console) whatIfPage(w http.ResponseWriter, r *req) {
	d, err := c.whatIfForm(r)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	d.Window = "7d"
	d.TenantID = r.URL.Query().Get("tenant_id")
	doc, err := (&policydoc.Applier{Tenancy: c.Tenancy, Policy: c.Policy}).Export(r.ctx())
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	y, err := doc.YAML()
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	d.Draft = string(y)
	c.render(w, r, http.StatusOK, "whatif", "Policy what-if", "admin", d)
}

// whatIfForm is the page's data without a draft: the windows, and the
// tenants a platform admin may pick.
func (c *Console) whatIfForm(r *req) (*whatIfData, error) {
	d := &whatIfData{Windows: whatIfWindows}
	if _, ok := c.Ledger.(whatIfLedger); !ok {
		d.NoLedger = true
	}
	if r.p.IsPlatformAdmin() {
		ts, err := c.Tenancy.Tenants(r.ctx(), tenancy.Filter{Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
		if err != nil {
			return nil, err
		}
		d.Tenants = []option{{Value: "", Label: "every tenant"}}
		for _, t := range ts {
			d.Tenants = append(d.Tenants, option{Value: t.ID, Label: t.Name})
		}
	}
	return d, nil
}

// runWhatIf replays the posted draft and shows the report, or what is
// wrong with the form, above it. It changes nothing.
func (c *Console) runWhatIf(w http.ResponseWriter, r *req) {
	d, err := c.whatIfForm(r)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	d.Draft, d.Window, d.TenantID = r.PostForm.Get("draft"), r.PostForm.Get("window"), r.PostForm.Get("tenant_id")
	rep, loc, err := c.whatIf(r, d)
	if err != nil {
		var e *errs.Error
		if !errors.As(err, &e) || (e.Code != errs.Invalid && e.Code != errs.Forbidden && e.Code != errs.NotFound &&
			e.Code != errs.TooLarge && e.Code != errs.Conflict) {
			c.fail(w, r.Request, r, err)
			return
		}
		d.Error = &whatIfError{Field: e.Field, Message: withoutField(e.Message, e.Field)}
		c.render(w, r, httpapi.Status(e.Code), "whatif", "Policy what-if", "admin", d)
		return
	}
	d.Report = showReport(rep, loc)
	d.Report.Over = "the last " + rep.Window
	for _, o := range whatIfWindows {
		if o.Value == d.Window {
			d.Report.Over = o.Label
		}
	}
	c.render(w, r, http.StatusOK, "whatif", "Policy what-if", "admin", d)
}

// withoutField drops the field (or the end of its path) that starts a
// message ("limits.tokens: …" of tenants[0].limits.tokens): the page shows
// the field apart.
func withoutField(msg, field string) string {
	if before, after, ok := strings.Cut(msg, ": "); ok && field != "" && strings.HasSuffix(field, before) {
		return after
	}
	return msg
}

// whatIf is the API's replay (internal/httpapi's whatIf) on the form's
// fields: the window, the draft, and for a platform admin the tenant. It
// returns the report and a function giving the zone of a wall's scope.
func (c *Console) whatIf(r *req, d *whatIfData) (*whatif.Report, func(scope string) *time.Location, error) {
	store, ok := c.Ledger.(whatIfLedger)
	if !ok {
		return nil, nil, errs.E(errs.Unavailable, "this server keeps no usage ledger to replay")
	}
	if d.Window == "" {
		d.Window = "7d"
	}
	window, err := whatif.ParseWindow("window", d.Window)
	if err != nil {
		return nil, nil, err
	}
	if strings.TrimSpace(d.Draft) == "" {
		return nil, nil, errs.Field(errs.Invalid, "draft", "the draft is empty: write the policy to try (YAML or JSON, as sluice apply takes)")
	}
	doc, err := policydoc.Parse([]byte(d.Draft))
	if err != nil {
		return nil, nil, err
	}
	mgr := c.Policy.Manager()
	live := mgr.Current()
	tenantID, err := whatif.TenantFor(r.p, d.TenantID, doc, live)
	if err != nil {
		return nil, nil, err
	}
	now := c.Now()
	draft, err := whatif.NewDraft(r.ctx(), store, doc, mgr.DefaultGlobal(), live.Platform(), now)
	if err != nil {
		return nil, nil, err
	}
	rep, err := whatif.Replay(r.ctx(), store, draft, tenantID, window, now, c.WhatIf)
	if err != nil {
		return nil, nil, err
	}
	if err := rep.Label(r.ctx(), store, draft.Snapshot); err != nil {
		return nil, nil, err
	}
	// Times read in the zone the replay's day and month windows used: the
	// tenant's, as the draft has it.
	snap := draft.Snapshot
	loc := func(scope string) *time.Location {
		if tenantID != "" {
			return snap.Location(tenantID)
		}
		kind, id, err := policy.ParseScope("scope", scope)
		if err != nil {
			return time.UTC
		}
		if t, ok := snap.ScopeTenant(kind, id); ok {
			return snap.Location(t)
		}
		return time.UTC
	}
	return rep, loc, nil
}

// showReport groups the walls by scope, in order of each scope's first
// wall, and writes their numbers for people.
func showReport(rep *whatif.Report, loc func(scope string) *time.Location) *whatIfReport {
	zone := time.UTC
	if rep.TenantID != "" {
		zone = loc(policy.ScopeName(policy.KindTenant, rep.TenantID))
	}
	out := &whatIfReport{Report: rep, TimeZone: zone.String(), FromText: whenIn(rep.From, zone), ToText: whenIn(rep.To, zone)}
	at := map[string]int{}
	for _, wl := range rep.Walls {
		i, ok := at[wl.Scope]
		if !ok {
			i = len(out.Scopes)
			at[wl.Scope] = i
			out.Scopes = append(out.Scopes, wallScope{Scope: wl.Scope, Name: wl.Name})
		}
		z := loc(wl.Scope)
		first := whenIn(wl.FirstWallAt, z) + " " + z.String()
		row := wallRow{Wall: wl, Limit: limitText(wl), Queued: fmt.Sprint(wl.Queued.Asks), FirstWall: first,
			FirstWallAt: wl.FirstWallAt.UTC().Format(time.RFC3339), Timeline: timeline(rep.From, rep.To, wl.FirstWallAt, whenIn(rep.From, z), first)}
		if wl.Queued.TimedOut > 0 {
			row.Queued += fmt.Sprintf(" (%d timed out)", wl.Queued.TimedOut)
		}
		if wl.Queued.Full > 0 {
			row.Queued += fmt.Sprintf(" (%d found the queue full)", wl.Queued.Full)
		}
		out.Scopes[i].Walls = append(out.Scopes[i].Walls, row)
	}
	return out
}

func whenIn(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("Mon 2 Jan 2006 15:04")
}

// limitText writes a wall's limit in its dimension's unit: "250 tokens a
// day", "60 requests a minute", "$50.00 a month".
func limitText(wl whatif.Wall) string {
	per := ""
	switch {
	case wl.Window != "":
		per = " a " + wl.Window
	case wl.Period != "":
		per = " per " + wl.Period
		if d, err := time.ParseDuration(wl.Period); err == nil {
			per = " per " + periodText(d)
		}
	}
	n := groupDigits(wl.Limit)
	switch wl.Dimension {
	case "tokens", "tokens_rate":
		return n + " tokens" + per
	case "requests":
		return n + " requests" + per
	case "concurrency":
		return n + " at once"
	case "gpu_seconds":
		return groupDigits(wl.Limit/1000) + " GPU seconds" + per
	case "cost":
		return fmt.Sprintf("$%d.%02d", wl.Limit/1_000_000, wl.Limit%1_000_000/10_000) + per
	case "model":
		return "the models allowed"
	}
	return n + per
}

// timeline draws the window as a bar from its start to its end with the
// part before the first wall filled and a mark at the wall: an inline SVG
// (no script, no style attribute: the CSP allows neither inline) with its
// reading in a <title> and an aria-label.
func timeline(from, to, wall time.Time, fromText, wallText string) template.HTML {
	const w, h = 200, 16
	f := 0.0
	if span := to.Sub(from); span > 0 {
		f = float64(wall.Sub(from)) / float64(span)
	}
	f = min(max(f, 0), 1)
	x := min(max(f*w, 1), w-1) // the mark stays whole at either end
	label := fmt.Sprintf("window start %s, first wall %s, %.0f %% into the window", fromText, wallText, f*100)
	return template.HTML(fmt.Sprintf(`<svg class="timeline" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s" data-fraction="%.4f" xmlns="http://www.w3.org/2000/svg">`+
		`<title>%s</title><rect x="0" y="5" width="%d" height="6" rx="3" fill="#d6dbe1"></rect>`+
		`<rect class="before" x="0" y="5" width="%.1f" height="6" rx="3" fill="#1f5fbf"></rect>`+
		`<line class="wall" x1="%.1f" y1="1" x2="%.1f" y2="15" stroke="#b3261e" stroke-width="2"></line></svg>`,
		w, h, w, h, template.HTMLEscapeString(label), f, template.HTMLEscapeString(label), w, x, x, x))
}
