package console

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// maxUploadBytes bounds an upload's multipart body: the largest flow the
// API accepts (flow.MaxBytes) and room for the form's other fields.
const maxUploadBytes = flow.MaxBytes + maxFormBytes

// The flow pages' notices (the list in console.go is the rest's; these are
// kept here so that the two change apart).
func init() {
	notices["uploaded"] = "The flow was uploaded and checked: it can run."
	notices["cancelling"] = "The run is being cancelled: it stops at its next step and keeps what it used."
}

// flowRoutes serves the flow pages: the caller's flows and an upload form,
// one flow with its graph and a run form, the caller's runs, and one run's
// page with its graph and per-node figures (flows_run.go runs them).
func (c *Console) flowRoutes() {
	c.live = newLiveRuns()
	c.mux.HandleFunc("GET /console/flows", c.signedIn(c.flowsPage))
	c.mux.HandleFunc("POST /console/flows", c.largeForm(maxUploadBytes, c.signedIn(c.uploadFlow), func(tooLarge bool) error {
		if tooLarge {
			return errs.Field(errs.TooLarge, "flow", "the upload is larger than %s bytes; a flow may be at most %s bytes", groupDigits(maxUploadBytes), groupDigits(flow.MaxBytes))
		}
		return errs.E(errs.Invalid, "the upload could not be read as a form")
	}))
	c.mux.HandleFunc("GET /console/flows/{id}", c.signedIn(c.flowPage))
	c.mux.HandleFunc("POST /console/flows/{id}/run", c.signedIn(c.runFlow))
	c.mux.HandleFunc("POST /console/flows/{id}/stream", c.signedIn(c.streamFlow))
	c.mux.HandleFunc("GET /console/runs", c.signedIn(c.runsPage))
	c.mux.HandleFunc("GET /console/runs/{id}", c.signedIn(c.runPage))
	c.mux.HandleFunc("POST /console/runs/{id}/cancel", c.signedIn(c.cancelRun))
}

// flowsEnabled answers 404 when the server runs no flows (the console is
// mounted without a runs service).
func (c *Console) flowsEnabled(w http.ResponseWriter, r *req) bool {
	if c.Runs == nil {
		c.fail(w, r.Request, r, errs.E(errs.NotFound, "this server does not run flows"))
		return false
	}
	return true
}

// flowRow is a flow as listed.
type flowRow struct {
	ID, Name, Endpoint, Project, Owner, Description, Summary string
	Updated                                                  time.Time
}

// problemRow is one thing wrong with an uploaded flow, as the API's
// problems list says it.
type problemRow struct {
	NodeID, Field, Message string
}

type flowsData struct {
	Enabled   bool
	Flows     []flowRow
	Projects  []option
	Form      map[string]string
	Errors    fieldErrors
	FormError string
	Problems  []problemRow
	MaxBytes  string
}

func (c *Console) flowRow(r *req, f *run.Flow) flowRow {
	row := flowRow{ID: f.ID, Name: f.Name, Endpoint: f.EndpointName, Description: f.Description, Summary: clipRunes(f.Description, 120), Updated: f.UpdatedAt,
		Project: c.scopeName(r.ctx(), f.TenantID, policy.KindProject+"/"+f.ProjectID)}
	if f.CreatedBy != "" {
		row.Owner = c.scopeName(r.ctx(), f.TenantID, policy.KindUser+"/"+f.CreatedBy)
	}
	return row
}

func (c *Console) flowsPage(w http.ResponseWriter, r *req) {
	c.showFlows(w, r, http.StatusOK, map[string]string{"project_id": r.p.ProjectID}, nil, "", nil)
}

// showFlows lists the flows the caller may use in their tenant, newest
// change first, with the upload form (and what was wrong with the last
// upload, in place).
func (c *Console) showFlows(w http.ResponseWriter, r *req, status int, form map[string]string, fe fieldErrors, formErr string, problems []problemRow) {
	d := flowsData{Enabled: c.Runs != nil, Form: form, Errors: fe, FormError: formErr, Problems: problems, MaxBytes: groupDigits(flow.MaxBytes)}
	if c.Runs != nil {
		// A member's tenant only, as the API lists them (a platform admin
		// belongs to none and sees every tenant's).
		list, err := c.Runs.Flows(r.ctx(), tenancy.Filter{TenantID: r.p.TenantID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		sort.SliceStable(list, func(i, j int) bool { return list[i].UpdatedAt.After(list[j].UpdatedAt) })
		for _, f := range list {
			d.Flows = append(d.Flows, c.flowRow(r, f))
		}
		d.Projects = c.projectOptions(r)
	}
	c.render(w, r, status, "flows", "Flows", "flows", d)
}

// projectOptions lists the projects the caller works in, by name.
func (c *Console) projectOptions(r *req) []option {
	if r.p.TenantID == "" {
		return nil
	}
	ms, err := c.Tenancy.Memberships(r.ctx(), tenancy.Filter{UserID: r.p.UserID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
	if err != nil {
		return nil
	}
	var out []option
	for _, m := range ms {
		out = append(out, option{Value: m.ProjectID, Label: c.scopeName(r.ctx(), m.TenantID, policy.KindProject+"/"+m.ProjectID)})
	}
	return out
}

// largeForm reads a form of up to limit bytes (multipart or not, all in
// memory: no temporary files) before next runs, where signedIn's own
// parse keeps a small form's bound, so that signedIn finds the form's CSRF
// token in PostForm as for every other form. The body is read only for a
// live session posting from this site; anything else goes on unread to
// next, whose signedIn refuses it. signedIn then checks everything again,
// the token included. A body past limit, or malformed, is answered with
// bad's error (tooLarge says which).
func (c *Console) largeForm(limit int64, next http.HandlerFunc, bad func(tooLarge bool) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ck, err := r.Cookie(CookieName)
		if err != nil || sameOrigin(r) != "" {
			next(w, r)
			return
		}
		s, p, err := c.Sessions.Resolve(r.Context(), ck.Value)
		if err != nil {
			next(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
			err = r.ParseMultipartForm(limit)
			if r.MultipartForm != nil {
				defer r.MultipartForm.RemoveAll()
			}
		} else {
			err = r.ParseForm()
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			rq := &req{Request: r.WithContext(tenancy.WithPrincipal(r.Context(), p)), s: s, p: p}
			c.fail(w, r, rq, bad(errors.As(err, &tooBig)))
			return
		}
		next(w, r)
	}
}

// uploadFlow stores an uploaded LangFlow export, checked as POST
// /api/v1/flows checks it (the same service call); what is wrong is shown
// beside the form, each problem naming its node.
func (c *Console) uploadFlow(w http.ResponseWriter, r *req) {
	if !c.flowsEnabled(w, r) {
		return
	}
	form := map[string]string{"name": strings.TrimSpace(r.PostForm.Get("name")), "project_id": r.PostForm.Get("project_id")}
	var data []byte
	if r.MultipartForm != nil {
		if fhs := r.MultipartForm.File["flow"]; len(fhs) > 0 {
			f, err := fhs[0].Open()
			if err != nil {
				c.fail(w, r.Request, r, errs.Wrap(err, "open the uploaded flow"))
				return
			}
			data, err = io.ReadAll(io.LimitReader(f, flow.MaxBytes+1))
			f.Close()
			if err != nil {
				c.fail(w, r.Request, r, errs.Wrap(err, "read the uploaded flow"))
				return
			}
		}
	}
	if len(data) == 0 {
		c.showFlows(w, r, http.StatusBadRequest, form, fieldErrors{"flow": "choose a flow file: a LangFlow export (.json)"}, "", nil)
		return
	}
	if len(data) > flow.MaxBytes {
		c.showFlows(w, r, http.StatusRequestEntityTooLarge, form, fieldErrors{"flow": "the file is larger than " + groupDigits(flow.MaxBytes) + " bytes"}, "", nil)
		return
	}
	f, err := c.Runs.CreateFlow(r.ctx(), run.FlowInput{ProjectID: form["project_id"], Name: form["name"], Data: data})
	if err != nil {
		var ve *flow.ValidationError
		if errors.As(err, &ve) {
			var problems []problemRow
			for _, p := range ve.Problems {
				problems = append(problems, problemRow{NodeID: p.NodeID, Field: p.Field, Message: p.Message})
			}
			e := ve.ErrsError()
			msg := "The flow was not stored: it has " + plural(len(problems), "problem", "problems") + "."
			c.showFlows(w, r, httpapi.Status(e.Code), form, fieldErrors{"flow": msg}, "", problems)
			return
		}
		fe, msg, ok := formError(err)
		if !ok {
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.Unprocessable && e.Code != errs.TooLarge {
				c.fail(w, r.Request, r, err)
				return
			}
			fe = fieldErrors{"flow": e.Message}
		}
		if msg != "" {
			fe = fieldErrors{"flow": msg}
		}
		if _, known := map[string]bool{"flow": true, "name": true, "project_id": true}[firstKey(fe)]; !known {
			// A field of the flow file (endpoint_name from the export):
			// shown beside the file.
			fe = fieldErrors{"flow": firstKey(fe) + ": " + fe[firstKey(fe)]}
		}
		c.showFlows(w, r, http.StatusBadRequest, form, fe, "", nil)
		return
	}
	redirect(w, r, "/console/flows/"+f.ID, "uploaded")
}

func firstKey(m fieldErrors) string {
	for k := range m {
		return k
	}
	return ""
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return groupDigits(int64(n)) + " " + many
}

// ---- one flow ----

type flowData struct {
	Flow     flowRow
	Format   string
	Nodes    int
	Graph    *graphView
	Input    string
	RunError string
	Runs     []runRow
}

// flowPage shows a flow: who owns it, its graph, a form to run it, and the
// caller's recent runs of it. Another tenant's flow, or one of a project
// the caller does not work in, is not found (the service's own check).
func (c *Console) flowPage(w http.ResponseWriter, r *req) {
	if !c.flowsEnabled(w, r) {
		return
	}
	c.showFlow(w, r, http.StatusOK, r.PathValue("id"), "", "")
}

func (c *Console) showFlow(w http.ResponseWriter, r *req, status int, idOrName, input, runErr string) {
	f, err := c.Runs.Flow(r.ctx(), idOrName)
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	d := flowData{Flow: c.flowRow(r, f), Format: f.Format, Input: input, RunError: runErr}
	if g, err := flow.Parse(f.Data); err == nil {
		d.Nodes = len(g.Nodes)
		d.Graph = layoutGraph(g, f.Data, nil, "")
	}
	runs, err := c.Runs.Runs(r.ctx(), tenancy.Filter{UserID: r.p.UserID, ParentID: f.ID, Page: tenancy.Page{Limit: 10}})
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	d.Runs = c.runRows(r, runs)
	c.render(w, r, status, "flow", f.Name, "flows", d)
}

// ---- runs ----

// runRow is a run as listed.
type runRow struct {
	ID, FlowID, FlowName, Status, Code, Tokens, Cost, Took string
	Started                                                time.Time
	Live                                                   bool
}

func (c *Console) runRows(r *req, list []*run.Record) []runRow {
	names := map[string]string{}
	out := make([]runRow, 0, len(list))
	for _, rec := range list {
		name, ok := names[rec.FlowID]
		if !ok && rec.FlowID != "" {
			name = rec.FlowID
			if f, err := c.Runs.Flow(r.ctx(), rec.FlowID); err == nil {
				name = f.Name
			}
			names[rec.FlowID] = name
		}
		row := runRow{ID: rec.ID, FlowID: rec.FlowID, FlowName: name, Status: statusWords[rec.Status], Code: string(rec.Status), Started: rec.StartedAt,
			Tokens: groupDigits(rec.Usage.InputTokens + rec.Usage.OutputTokens), Cost: costWords(rec.Usage.CostMicros),
			Live: rec.Status == run.StatusRunning || rec.Status == run.StatusCancelling}
		if row.Status == "" {
			row.Status = string(rec.Status)
		}
		if rec.EndedAt != nil {
			row.Took = durationWords(float64(rec.EndedAt.Sub(rec.StartedAt).Microseconds()) / 1000)
		}
		out = append(out, row)
	}
	return out
}

type runsData struct {
	Enabled bool
	Runs    []runRow
}

// runsPage lists the caller's own recent runs, newest first (an admin's
// too: the tenant's are the API's and the admin pages' business).
func (c *Console) runsPage(w http.ResponseWriter, r *req) {
	if !c.flowsEnabled(w, r) {
		return
	}
	list, err := c.Runs.Runs(r.ctx(), tenancy.Filter{UserID: r.p.UserID, Page: tenancy.Page{Limit: 50}})
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "runs", "Your runs", "flows", runsData{Enabled: true, Runs: c.runRows(r, list)})
}

// statusWords are the run statuses as people read them.
var statusWords = map[run.Status]string{
	run.StatusRunning: "running", run.StatusSucceeded: "succeeded", run.StatusFailed: "failed",
	run.StatusQuotaExceeded: "stopped: quota used up", run.StatusRateLimited: "stopped: rate limit",
	run.StatusTimeout: "stopped: time limit", run.StatusStepLimitExceeded: "stopped: step limit",
	run.StatusMemoryLimitExceeded: "stopped: memory limit", run.StatusCancelled: "cancelled", run.StatusCancelling: "cancelling",
	run.StatusInterrupted: "interrupted: its server stopped",
}
