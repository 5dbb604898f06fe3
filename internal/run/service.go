package run

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// DefaultRunTimeout bounds a run whose scopes set no run_timeout.
const DefaultRunTimeout = gate.DefaultRunTimeout

// gate admits runs: the executor's gate, or one over its meter.
func (s *Service) gate() *gate.Gate {
	if s.Exec.Gate != nil {
		return s.Exec.Gate
	}
	return &gate.Gate{Meter: s.Exec.Meter}
}

// Service stores flows and runs them for callers.
type Service struct {
	Store   Store
	Tenancy *tenancy.Service
	Exec    *Executor
	Log     *slog.Logger
	// OnRunEnd, when set, is told each run's final status (metrics).
	OnRunEnd func(Status)
	// Sandbox, when set, executes the runs whose caps include
	// memory_per_run, in worker processes held to that cap. Without one,
	// such runs execute in this process and are recorded memory_enforced
	// false.
	Sandbox Sandbox
	// InProcess, when set, bounds the memory of the runs this process
	// executes itself (see MemoryCeiling); nil admits them all.
	InProcess *MemoryCeiling

	mu     sync.Mutex
	parsed map[string]parsedFlow // by flow id, for the version stored

	// running holds the cancel of each run this instance executes, by
	// run id (Cancel, WatchCancels).
	running sync.Map
}

// cancelled is the cause of a run cancelled through Cancel.
type cancelled struct{ by string }

func (c cancelled) Error() string { return "the run was cancelled by " + c.by }

// Cancel stops a running run: the caller's own, or any of a tenant for its
// admins. A run executing on this instance stops at once; one on another
// instance is marked, and its instance stops it at its next check
// (WatchCancels). Either way it ends as cancelled, releasing what it holds
// and recording what it used. A run that has ended is answered as it is
// (409).
func (s *Service) Cancel(ctx context.Context, runID string) (*Record, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.RunRecord(ctx, runID)
	if err != nil {
		return nil, err
	}
	if r.Status != StatusRunning && r.Status != StatusCancelling {
		return r, errs.E(errs.Conflict, "run %s has ended (%s): nothing to cancel", runID, r.Status)
	}
	who := "user " + p.UserID
	if p.UserID == "" {
		who = "key " + p.KeyID
	}
	if c, ok := s.running.Load(runID); ok {
		c.(context.CancelCauseFunc)(cancelled{by: who})
	} else if err := s.Store.RequestCancel(ctx, runID); err != nil {
		return nil, err
	}
	r.Status = StatusCancelling
	return r, nil
}

// WatchCancels stops, every interval until ctx ends, the runs of this
// instance that a Cancel on another instance marked.
func (s *Service) WatchCancels(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var ids []string
		s.running.Range(func(k, _ any) bool {
			ids = append(ids, k.(string))
			return len(ids) < 1000
		})
		if len(ids) == 0 {
			continue
		}
		marked, err := s.Store.CancelRequested(ctx, ids)
		if err != nil {
			if ctx.Err() == nil {
				s.Log.Warn("checking for cancelled runs failed", slog.String("error", err.Error()))
			}
			continue
		}
		for _, id := range marked {
			if c, ok := s.running.Load(id); ok {
				c.(context.CancelCauseFunc)(cancelled{by: "a request on another instance"})
			}
		}
	}
}

// ReconcileLost ends, until ctx ends, the runs that the instance
// executing them never finished — it was killed or crashed — as
// interrupted, once their deadline is grace past (the instance ends a run
// at its deadline and records it a moment later, unless it died). It
// looks every grace/2 (at least a second, at most a minute). Their slots went back
// with their tickets' expiry, and the model calls they made were recorded
// one by one; only the run's own record was left running. Every instance
// may run it: the update is conditional.
func (s *Service) ReconcileLost(ctx context.Context, grace time.Duration, now func() time.Time) {
	t := time.NewTicker(min(max(grace/2, time.Second), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.Store.InterruptRuns(ctx, now().Add(-grace), 24*time.Hour,
			"the instance executing the run stopped before the run ended; what its model calls used is recorded")
		switch {
		case err != nil && ctx.Err() == nil:
			s.Log.Warn("reconciling runs left running failed", slog.String("error", err.Error()))
		case n > 0:
			s.Log.Warn("runs left running by a stopped instance ended as interrupted", slog.Int("runs", n))
			if s.OnRunEnd != nil {
				for range n {
					s.OnRunEnd(StatusInterrupted)
				}
			}
		}
	}
}

// Sandbox executes runs outside the server process.
type Sandbox interface {
	// Check says why a run with these caps cannot be given to Execute (the
	// host cannot enforce the memory cap and the operator chose to refuse
	// such runs), or nil. A refused run is not recorded.
	Check(caps quota.Caps) error
	// Execute runs the job to its end, as Executor.Execute does, and
	// always returns a Result (with Resources set once a worker ran).
	Execute(ctx context.Context, job *Job) (*Result, error)
}

type parsedFlow struct {
	updated time.Time
	f       *flow.Flow
}

func principal(ctx context.Context) (tenancy.Principal, error) {
	p, ok := tenancy.PrincipalFrom(ctx)
	if !ok {
		return p, errs.E(errs.Unauthorized, "an API key is required")
	}
	return p, nil
}

// FlowInput uploads a flow.
type FlowInput struct {
	ProjectID    string
	Name         string
	EndpointName string
	Data         []byte
}

// slug makes an endpoint name from a flow name.
func slug(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		if unicode.IsLetter(r) && r < 128 || unicode.IsDigit(r) {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.Trim(b.String(), "-")
	if len(out) > tenancy.MaxNameLen {
		out = strings.Trim(out[:tenancy.MaxNameLen], "-")
	}
	return out
}

// CreateFlow validates and stores a flow in a project the caller works in.
func (s *Service) CreateFlow(ctx context.Context, in FlowInput) (*Flow, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if in.ProjectID == "" {
		in.ProjectID = p.ProjectID
	}
	if in.ProjectID == "" {
		return nil, errs.Field(errs.Invalid, "project_id", "project_id is required (the key has no default project)")
	}
	pr, err := s.Tenancy.Project(ctx, in.ProjectID)
	if err != nil {
		return nil, errs.Field(errs.NotFound, "project_id", "project %s not found", in.ProjectID)
	}
	if err := s.Tenancy.CanWorkIn(ctx, p.UserID, pr.ID); err != nil && !p.AdminOf(pr.TenantID) {
		return nil, err
	}
	f, err := flow.Parse(in.Data)
	if err != nil {
		return nil, err
	}
	if in.Data, err = scrubSecrets(in.Data); err != nil {
		return nil, err
	}
	name := in.Name
	if name == "" {
		name = f.Name
	}
	if name == "" {
		name = "flow"
	}
	if len(name) > 200 {
		return nil, errs.Field(errs.Invalid, "name", "name is longer than 200 characters")
	}
	endpoint := in.EndpointName
	if endpoint == "" {
		endpoint = f.EndpointName
	}
	if endpoint == "" {
		endpoint = slug(name)
	}
	if err := tenancy.ValidName("endpoint_name", endpoint); err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	fl := &Flow{ID: id.NewAt("flw", now), TenantID: pr.TenantID, ProjectID: pr.ID, Name: name, EndpointName: endpoint,
		Description: f.Description, Format: string(f.Format), Data: json.RawMessage(in.Data), CreatedBy: p.UserID, CreatedAt: now, UpdatedAt: now}
	if err := s.Store.InsertFlow(ctx, fl); err != nil {
		return nil, err
	}
	return fl, nil
}

// Flow returns a flow by id or endpoint name, if the caller may use it.
func (s *Service) Flow(ctx context.Context, idOrName string) (*Flow, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	f, err := s.Store.Flow(ctx, idOrName)
	if errs.Is(err, errs.NotFound) && p.TenantID != "" {
		f, err = s.Store.FlowByEndpoint(ctx, p.TenantID, idOrName)
	}
	if err != nil {
		return nil, err
	}
	if !p.AdminOf(f.TenantID) {
		if f.TenantID != p.TenantID {
			return nil, errs.E(errs.NotFound, "flow not found")
		}
		if err := s.Tenancy.CanWorkIn(ctx, p.UserID, f.ProjectID); err != nil {
			return nil, errs.E(errs.NotFound, "flow not found")
		}
	}
	return f, nil
}

// Flows lists flows the caller may see.
func (s *Service) Flows(ctx context.Context, f tenancy.Filter) ([]*Flow, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() {
		if f.TenantID != "" && f.TenantID != p.TenantID {
			return nil, errs.E(errs.NotFound, "tenant not found")
		}
		f.TenantID = p.TenantID
	}
	all, err := s.Store.Flows(ctx, f)
	if err != nil || p.AdminOf(p.TenantID) {
		return all, err
	}
	var out []*Flow
	for _, fl := range all {
		if s.Tenancy.CanWorkIn(ctx, p.UserID, fl.ProjectID) == nil {
			out = append(out, fl)
		}
	}
	return out, nil
}

// UpdateFlow replaces a flow's graph (and optionally its name).
func (s *Service) UpdateFlow(ctx context.Context, idOrName string, in FlowInput) (*Flow, error) {
	fl, err := s.Flow(ctx, idOrName)
	if err != nil {
		return nil, err
	}
	f, err := flow.Parse(in.Data)
	if err != nil {
		return nil, err
	}
	if in.Data, err = scrubSecrets(in.Data); err != nil {
		return nil, err
	}
	if in.Name != "" {
		fl.Name = in.Name
	}
	if in.EndpointName != "" {
		if err := tenancy.ValidName("endpoint_name", in.EndpointName); err != nil {
			return nil, err
		}
		fl.EndpointName = in.EndpointName
	}
	fl.Data, fl.Format, fl.Description = json.RawMessage(in.Data), string(f.Format), f.Description
	fl.UpdatedAt = time.Now().UTC().Truncate(time.Microsecond)
	if err := s.Store.UpdateFlow(ctx, fl); err != nil {
		return nil, err
	}
	return fl, nil
}

// DeleteFlow deletes a flow (its runs stay).
func (s *Service) DeleteFlow(ctx context.Context, idOrName string) error {
	fl, err := s.Flow(ctx, idOrName)
	if err != nil {
		return err
	}
	return s.Store.DeleteFlow(ctx, fl.ID)
}

// graph returns the parsed graph of a stored flow, cached per version.
func (s *Service) graph(fl *Flow) (*flow.Flow, error) {
	s.mu.Lock()
	if s.parsed == nil {
		s.parsed = map[string]parsedFlow{}
	}
	if p, ok := s.parsed[fl.ID]; ok && p.updated.Equal(fl.UpdatedAt) {
		s.mu.Unlock()
		return p.f, nil
	}
	s.mu.Unlock()
	f, err := flow.Parse(fl.Data)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if len(s.parsed) > 1000 {
		clear(s.parsed)
	}
	s.parsed[fl.ID] = parsedFlow{updated: fl.UpdatedAt, f: f}
	s.mu.Unlock()
	return f, nil
}

// RunRequest is LangFlow's run request.
type RunRequest struct {
	InputValue      string                    `json:"input_value"`
	InputType       string                    `json:"input_type"`
	OutputType      string                    `json:"output_type"`
	OutputComponent string                    `json:"output_component"`
	Tweaks          map[string]map[string]any `json:"tweaks"`
	SessionID       string                    `json:"session_id"`
}

// Validate checks the request's enums.
func (r *RunRequest) Validate() error {
	switch r.InputType {
	case "", "chat", "text", "any":
	default:
		return errs.Field(errs.Invalid, "input_type", "input_type %q is not chat, text or any", r.InputType)
	}
	switch r.OutputType {
	case "", "chat", "text", "any", "debug":
	default:
		return errs.Field(errs.Invalid, "output_type", "output_type %q is not chat, text, any or debug", r.OutputType)
	}
	if len(r.SessionID) > 200 {
		return errs.Field(errs.Invalid, "session_id", "session_id is longer than 200 characters")
	}
	return nil
}

// Outcome is a finished (or refused) run.
type Outcome struct {
	Record *Record
	Result *Result
	Err    error // why the run did not succeed; nil on success
	// Ticket is the run's admission, with what remained after it (for the
	// RateLimit headers of the response).
	Ticket *quota.Ticket
	// Waited says whether and how long the run waited for a slot.
	Waited admission.Waited
}

// Run admits and executes a run of a stored flow, records it, and returns
// its outcome. A denial at admission returns an error and records nothing
// (nothing ran); anything after admission is recorded.
func (s *Service) Run(ctx context.Context, idOrName string, req RunRequest, onEvent func(string, any)) (*Outcome, error) {
	return s.RunWatched(ctx, idOrName, req, Watch{OnEvent: onEvent})
}

// Watch follows a run as it goes (the web console's live run page).
type Watch struct {
	// OnEvent receives the stream's events (add_message, token), as Run's
	// onEvent does.
	OnEvent func(event string, data any)
	// Started is told the run's record once the run is admitted and
	// recorded, before its first node: from then on the run can be read
	// and cancelled by its id. A run refused at admission never starts.
	Started func(*Record)
	// Progress is told when a node starts and ends.
	Progress func(Progress)
}

// RunWatched is Run, telling w how the run goes.
func (s *Service) RunWatched(ctx context.Context, idOrName string, req RunRequest, w Watch) (*Outcome, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	fl, err := s.Flow(ctx, idOrName)
	if err != nil {
		return nil, err
	}
	g, err := s.graph(fl)
	if err != nil {
		return nil, err
	}
	who := metering.Who{TenantID: fl.TenantID, UserID: p.UserID, ProjectID: fl.ProjectID, KeyID: p.KeyID}
	return s.execute(ctx, who, fl.ID, g, req, w)
}

// RunGraph runs a graph that is not stored (the CLI's local runs).
func (s *Service) RunGraph(ctx context.Context, who metering.Who, g *flow.Flow, req RunRequest, onEvent func(string, any)) (*Outcome, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return s.execute(ctx, who, "", g, req, Watch{OnEvent: onEvent})
}

func (s *Service) execute(ctx context.Context, who metering.Who, flowID string, g *flow.Flow, req RunRequest, w Watch) (*Outcome, error) {
	// A tweak naming no node is the caller's mistake: refused before it
	// costs a request or a slot.
	if err := CheckTweaks(g, req.Tweaks); err != nil {
		return nil, err
	}
	// So is an MCP server the operator did not declare.
	if err := s.Exec.CheckMCP(g, req.Tweaks); err != nil {
		return nil, err
	}
	runID := id.New("run")
	slot, err := s.gate().Admit(ctx, who, "run")
	if err != nil {
		return nil, err
	}
	adm, caps, timeout := slot.Admission, slot.Caps, slot.Timeout
	if req.SessionID == "" {
		// As LangFlow: the flow's id, so a chat flow remembers across
		// calls (history is kept per user, so it stays private); a flow
		// that is not stored gets the run's.
		req.SessionID = flowID
		if flowID == "" {
			req.SessionID = runID
		}
	}
	rec := &Record{ID: runID, FlowID: flowID, TenantID: who.TenantID, ProjectID: who.ProjectID, UserID: who.UserID,
		SessionID: req.SessionID, Status: StatusRunning, StartedAt: time.Now().UTC().Truncate(time.Microsecond), Trace: []NodeTrace{}}
	deadline := rec.StartedAt.Add(timeout)
	rec.DeadlineAt = &deadline
	// Every exit path below releases the run's slot and records the run.
	// The normal path releases it before the run shows as ended, so that
	// whoever sees the run finished also finds its slot free.
	releaseSlot := func() {
		resources := func(ev *usage.Event) { ev.PeakMemory, ev.CPUMillis = rec.PeakMemory, rec.CPUMillis }
		if err := slot.Release(ctx, resources); err != nil {
			s.Log.Error("releasing a run's slot failed", slog.String("run_id", runID), slog.String("error", err.Error()))
		}
	}
	defer releaseSlot()
	execute := s.Exec.Execute
	if caps.MemoryPerRun > 0 && s.Sandbox != nil {
		if err := s.Sandbox.Check(caps); err != nil {
			return nil, err
		}
		execute = s.Sandbox.Execute
	} else {
		release, err := s.admitInProcess(runID, g, caps)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	if err := s.Store.InsertRun(context.WithoutCancel(ctx), rec); err != nil {
		return nil, err
	}
	cctx, cancelRun := context.WithCancelCause(ctx)
	defer cancelRun(nil)
	s.running.Store(runID, cancelRun)
	defer s.running.Delete(runID)
	rctx, cancel := context.WithTimeout(cctx, timeout)
	defer cancel()
	if w.Started != nil {
		started := *rec
		w.Started(&started)
	}
	job := &Job{RunID: runID, FlowID: flowID, Flow: g, Who: who, InputValue: req.InputValue, InputType: req.InputType,
		OutputType: req.OutputType, OutputComponent: req.OutputComponent, Tweaks: req.Tweaks, SessionID: req.SessionID,
		Caps: caps, OnEvent: w.OnEvent, Progress: w.Progress, DefaultModel: defaultModel(adm.Chain),
		Allowed: func(model string) bool { return gate.Allows(adm.Chain, model) }}
	job.Route.Tenant, job.Route.Plan = gate.Route(who.TenantID, adm.Chain)
	res, runErr := execute(rctx, job)
	var byCancel cancelled
	switch {
	case runErr != nil && errors.As(context.Cause(cctx), &byCancel):
		runErr = &RunError{Status: StatusCancelled, Err: errs.E(errs.Conflict, "%s", byCancel.Error())}
	case runErr != nil && rctx.Err() != nil && ctx.Err() == nil:
		runErr = ctxError(rctx.Err()) // the run's own deadline, not the caller's
	}
	end := time.Now().UTC().Truncate(time.Microsecond)
	rec.EndedAt, rec.Usage, rec.Steps, rec.Trace = &end, res.Usage, res.Steps, res.Trace
	if r := res.Resources; r != nil {
		rec.MemoryEnforced, rec.PeakMemory, rec.CPUMillis = r.MemoryEnforced, r.PeakMemory, r.CPUMillis
	}
	rec.Status = StatusSucceeded
	if runErr != nil {
		rec.Status = StatusFailed
		var re *RunError
		if errors.As(runErr, &re) {
			rec.Status = re.Status
		}
		var e *errs.Error
		if errors.As(runErr, &e) {
			rec.ErrorCode = string(e.Code)
			rec.ErrorMessage = runErr.Error()
		} else {
			rec.ErrorCode, rec.ErrorMessage = string(errs.Internal), runErr.Error()
			var d *quota.Denial
			if errors.As(runErr, &d) {
				rec.ErrorCode, rec.ErrorMessage = d.Code, runErr.Error()
			}
		}
	} else if len(res.Outputs) > 0 {
		rec.OutputPreview = preview(res.Outputs[0].Text)
	}
	releaseSlot()
	if err := s.Store.FinishRun(context.WithoutCancel(ctx), rec); err != nil {
		s.Log.Error("recording a run failed", slog.String("run_id", runID), slog.String("error", err.Error()))
	}
	if s.OnRunEnd != nil {
		s.OnRunEnd(rec.Status)
	}
	return &Outcome{Record: rec, Result: res, Err: runErr, Ticket: &adm.Ticket, Waited: adm.Waited}, nil
}

// admitInProcess reserves a run's share of the in-process memory ceiling,
// for a run that executes in this process, where no kernel limit holds it.
func (s *Service) admitInProcess(runID string, g *flow.Flow, caps quota.Caps) (release func(), err error) {
	if caps.MemoryPerRun > 0 {
		s.Log.Warn("run executes in the server process without a sandbox: its memory_per_run is NOT enforced",
			slog.String("run_id", runID), slog.Int64("memory_per_run", caps.MemoryPerRun))
	}
	if s.InProcess == nil {
		return func() {}, nil
	}
	need := s.InProcess.Estimate(g)
	release, err = s.InProcess.Reserve(need)
	if err != nil {
		used, runs := s.InProcess.InUse()
		s.Log.Warn("in-process run refused: the in-process run memory ceiling is reached",
			slog.String("run_id", runID), slog.Int64("needed", need), slog.Int64("reserved", used),
			slog.Int("runs", runs), slog.Int64("inprocess_run_memory", s.InProcess.Total))
		return nil, err
	}
	return release, nil
}

// RunRecord returns a run, if the caller may see it.
func (s *Service) RunRecord(ctx context.Context, runID string) (*Record, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.Store.Run(ctx, runID)
	if err != nil {
		return nil, err
	}
	if r.UserID != p.UserID && !p.AdminOf(r.TenantID) {
		return nil, errs.E(errs.NotFound, "run not found")
	}
	return r, nil
}

// Runs lists runs: a member's own, all of a tenant for its admins.
func (s *Service) Runs(ctx context.Context, f tenancy.Filter) ([]*Record, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() {
		if f.TenantID != "" && f.TenantID != p.TenantID {
			return nil, errs.E(errs.NotFound, "tenant not found")
		}
		f.TenantID = p.TenantID
		if !p.AdminOf(p.TenantID) {
			f.UserID = p.UserID
		}
	}
	return s.Store.Runs(ctx, f)
}

// ---- LangFlow's response shape ----

// messageJSON renders a message as LangFlow does.
func messageJSON(m *Message) map[string]any {
	return map[string]any{
		"id": m.ID, "text": m.Text, "sender": m.Sender, "sender_name": m.SenderName, "session_id": m.SessionID,
		"timestamp": m.CreatedAt.Format("2006-01-02 15:04:05 MST"), "flow_id": m.FlowID, "files": []any{},
		"error": false, "edit": false, "category": "message", "content_blocks": []any{},
		"properties": map[string]any{"source": map[string]any{}, "state": "complete"},
	}
}

// elapsed formats a duration as LangFlow's format_elapsed_time does:
// "12 ms", "1.5 seconds", "2 minutes, 3.1 seconds".
func elapsed(d time.Duration) string {
	unit := func(v float64, one, many string) string {
		if v == 1 {
			return one
		}
		return many
	}
	switch {
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Round(time.Millisecond).Milliseconds())
	case d < time.Minute:
		v := math.Round(d.Seconds()*10) / 10
		return strconv.FormatFloat(v, 'f', -1, 64) + " " + unit(v, "second", "seconds")
	}
	m := math.Floor(d.Minutes())
	sec := math.Round((d.Seconds()-m*60)*10) / 10
	return fmt.Sprintf("%d %s, %s %s", int64(m), unit(m, "minute", "minutes"), strconv.FormatFloat(sec, 'f', -1, 64), unit(sec, "second", "seconds"))
}

// Response renders an outcome as LangFlow's run response.
func (o *Outcome) Response(req RunRequest) map[string]any {
	var outs []any
	for _, c := range o.Result.Outputs {
		m := c.Message
		if m == nil {
			m = &Message{Text: c.Text, Sender: "Machine", SenderName: "AI", SessionID: o.Record.SessionID, CreatedAt: time.Now().UTC()}
		}
		mj := messageJSON(m)
		props := mj["properties"].(map[string]any)
		if c.Source.ID != "" {
			props["source"] = c.Source
		}
		props["usage"] = map[string]any{"input_tokens": o.Record.Usage.InputTokens, "output_tokens": o.Record.Usage.OutputTokens,
			"total_tokens": o.Record.Usage.InputTokens + o.Record.Usage.OutputTokens}
		if o.Result.Simulated {
			props["simulated"] = true // the text came from Sluice's simulated model, not a real one
		}
		outs = append(outs, map[string]any{
			"results":   map[string]any{"message": mj},
			"artifacts": map[string]any{"message": c.Text, "sender": m.Sender, "sender_name": m.SenderName, "type": "object"},
			"outputs":   map[string]any{"message": map[string]any{"message": c.Text, "type": "text"}},
			"logs":      map[string]any{"message": []any{}},
			"messages": []any{map[string]any{"message": c.Text, "sender": m.Sender, "sender_name": m.SenderName,
				"session_id": m.SessionID, "component_id": c.NodeID, "type": "message"}},
			"component_display_name": c.DisplayName, "component_id": c.NodeID, "used_frozen_result": false,
			"timedelta": c.Duration.Seconds(), "duration": elapsed(c.Duration),
		})
	}
	if outs == nil {
		outs = []any{}
	}
	return map[string]any{
		"session_id": o.Record.SessionID,
		"run_id":     o.Record.ID,
		"outputs":    []any{map[string]any{"inputs": map[string]any{"input_value": req.InputValue}, "outputs": outs}},
		"usage": map[string]any{"input_tokens": o.Record.Usage.InputTokens, "output_tokens": o.Record.Usage.OutputTokens,
			"gpu_seconds": float64(o.Record.Usage.GPUMillis) / 1000, "cost_usd": float64(o.Record.Usage.CostMicros) / 1e6, "steps": o.Record.Steps},
	}
}

// scrubSecrets blanks secrets written inline in a LangFlow export (password
// fields whose value is not a reference to a stored variable), so that no
// provider key is stored with the flow or shown when it is read back.
// Sluice takes provider keys from its model table only.
func scrubSecrets(data []byte) ([]byte, error) {
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return data, nil // the parser already accepted it; nothing to scrub
	}
	changed := false
	var walk func(v any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			if tpl, ok := t["template"].(map[string]any); ok {
				for _, field := range tpl {
					f, ok := field.(map[string]any)
					if !ok {
						continue
					}
					if pw, _ := f["password"].(bool); !pw {
						continue
					}
					if ref, _ := f["load_from_db"].(bool); ref {
						continue
					}
					if val, ok := f["value"].(string); ok && val != "" {
						f["value"] = ""
						changed = true
					}
				}
			}
			for _, c := range t {
				walk(c)
			}
		case []any:
			for _, c := range t {
				walk(c)
			}
		}
	}
	walk(doc)
	if !changed {
		return data, nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, errs.Wrap(err, "re-encode flow")
	}
	return out, nil
}

// defaultModel is the first model allowed by the innermost scope of the
// chain that lists models: a tenant (or user) with its own models gets them
// for nodes that select none.
func defaultModel(c *policy.Chain) string {
	if c == nil {
		return ""
	}
	for i := len(c.Scopes) - 1; i >= 0; i-- {
		if l := c.Scopes[i].Limits; l != nil && len(l.Models) > 0 {
			return l.Models[0]
		}
	}
	return ""
}
