package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

var _ run.Store = (*Store)(nil)

// one-statement helpers outside an explicit transaction

func (s *Store) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	res, err := s.w.ExecContext(ctx, s.d.rebind(q), args...)
	if err != nil {
		c := &conn{d: s.d}
		return nil, c.wrap(err)
	}
	return res, nil
}

// ---- flows ----

const flowCols = "id, tenant_id, project_id, name, endpoint_name, description, format, data, created_by, created_at, updated_at"

func scanFlow(r scanner) (*run.Flow, error) {
	var f run.Flow
	var data string
	var c, u int64
	if err := r.Scan(&f.ID, &f.TenantID, &f.ProjectID, &f.Name, &f.EndpointName, &f.Description, &f.Format, &data, &f.CreatedBy, &c, &u); err != nil {
		return nil, err
	}
	f.Data = json.RawMessage(data)
	f.CreatedAt, f.UpdatedAt = fromMicros(c), fromMicros(u)
	return &f, nil
}

// InsertFlow stores a new flow.
func (s *Store) InsertFlow(ctx context.Context, f *run.Flow) error {
	_, err := s.exec(ctx, `INSERT INTO flows (`+flowCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		f.ID, f.TenantID, f.ProjectID, f.Name, f.EndpointName, f.Description, f.Format, string(f.Data), f.CreatedBy,
		micros(f.CreatedAt), micros(f.UpdatedAt))
	if errs.Is(err, errs.Conflict) {
		return errs.Field(errs.Conflict, "endpoint_name", "a flow with endpoint name %q already exists in this tenant", f.EndpointName)
	}
	return err
}

// Flow returns a flow by id.
func (s *Store) Flow(ctx context.Context, id string) (*run.Flow, error) {
	return one(s.r.QueryRowContext(ctx, s.d.rebind(`SELECT `+flowCols+` FROM flows WHERE id = ?`), id), scanFlow, "flow")
}

// FlowByEndpoint returns a tenant's flow by endpoint name.
func (s *Store) FlowByEndpoint(ctx context.Context, tenantID, endpoint string) (*run.Flow, error) {
	return one(s.r.QueryRowContext(ctx, s.d.rebind(`SELECT `+flowCols+` FROM flows WHERE tenant_id = ? AND endpoint_name = ?`), tenantID, endpoint),
		scanFlow, "flow")
}

// Flows lists flows (without their data).
func (s *Store) Flows(ctx context.Context, f tenancy.Filter) ([]*run.Flow, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("project_id", f.ProjectID)
	q, args := w.sql(f, "id")
	rows, err := s.r.QueryContext(ctx, s.d.rebind(`SELECT `+strings.Replace(flowCols, "data", "''", 1)+` FROM flows`+q), args...)
	if err != nil {
		return nil, dbError(err, "list flows")
	}
	out, err := collect(rows, func(r *sql.Rows) (*run.Flow, error) { return scanFlow(r) })
	for _, fl := range out {
		fl.Data = nil
	}
	return out, err
}

// UpdateFlow replaces a flow's name, description and data.
func (s *Store) UpdateFlow(ctx context.Context, f *run.Flow) error {
	res, err := s.exec(ctx, `UPDATE flows SET name = ?, endpoint_name = ?, description = ?, format = ?, data = ?, updated_at = ? WHERE id = ?`,
		f.Name, f.EndpointName, f.Description, f.Format, string(f.Data), micros(f.UpdatedAt), f.ID)
	if errs.Is(err, errs.Conflict) {
		return errs.Field(errs.Conflict, "endpoint_name", "a flow with endpoint name %q already exists in this tenant", f.EndpointName)
	}
	if err != nil {
		return err
	}
	return affected(res, "flow")
}

// DeleteFlow deletes a flow; its runs stay for the record.
func (s *Store) DeleteFlow(ctx context.Context, id string) error {
	res, err := s.exec(ctx, `DELETE FROM flows WHERE id = ?`, id)
	if err != nil {
		return err
	}
	return affected(res, "flow")
}

// ---- runs ----

const runCols = `id, flow_id, tenant_id, project_id, user_id, session_id, status, error_code, error_message, started_at, ended_at,
	input_tokens, output_tokens, gpu_ms, cost_micros, steps, memory_enforced, peak_memory, cpu_ms, output_preview, trace_json, deadline_at`

func scanRun(r scanner) (*run.Record, error) {
	var x run.Record
	var started int64
	var ended, deadline sql.NullInt64
	var enforced int64
	var trace string
	if err := r.Scan(&x.ID, &x.FlowID, &x.TenantID, &x.ProjectID, &x.UserID, &x.SessionID, &x.Status, &x.ErrorCode, &x.ErrorMessage,
		&started, &ended, &x.Usage.InputTokens, &x.Usage.OutputTokens, &x.Usage.GPUMillis, &x.Usage.CostMicros, &x.Steps,
		&enforced, &x.PeakMemory, &x.CPUMillis, &x.OutputPreview, &trace, &deadline); err != nil {
		return nil, err
	}
	x.StartedAt, x.EndedAt, x.MemoryEnforced = fromMicros(started), fromNullMicros(ended), enforced != 0
	x.DeadlineAt = fromNullMicros(deadline)
	if err := json.Unmarshal([]byte(trace), &x.Trace); err != nil {
		return nil, err
	}
	return &x, nil
}

func runArgs(x *run.Record) ([]any, error) {
	trace, err := json.Marshal(x.Trace)
	if err != nil {
		return nil, errs.Wrap(err, "encode trace")
	}
	if x.Trace == nil {
		trace = []byte("[]")
	}
	enforced := 0
	if x.MemoryEnforced {
		enforced = 1
	}
	return []any{x.ID, x.FlowID, x.TenantID, x.ProjectID, x.UserID, x.SessionID, string(x.Status), x.ErrorCode, x.ErrorMessage,
		micros(x.StartedAt), nullMicros(x.EndedAt), x.Usage.InputTokens, x.Usage.OutputTokens, x.Usage.GPUMillis, x.Usage.CostMicros,
		x.Steps, enforced, x.PeakMemory, x.CPUMillis, x.OutputPreview, string(trace), nullMicros(x.DeadlineAt)}, nil
}

// InsertRun records a run as it starts.
func (s *Store) InsertRun(ctx context.Context, x *run.Record) error {
	args, err := runArgs(x)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO runs (`+runCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...)
	return err
}

// FinishRun writes a run's outcome.
func (s *Store) FinishRun(ctx context.Context, x *run.Record) error {
	args, err := runArgs(x)
	if err != nil {
		return err
	}
	res, err := s.exec(ctx, `UPDATE runs SET status = ?, error_code = ?, error_message = ?, ended_at = ?, input_tokens = ?, output_tokens = ?,
		gpu_ms = ?, cost_micros = ?, steps = ?, memory_enforced = ?, peak_memory = ?, cpu_ms = ?, output_preview = ?, trace_json = ?
		WHERE id = ?`, slices.Concat(args[6:9], args[10:21], []any{x.ID})...)
	if err != nil {
		return err
	}
	return affected(res, "run")
}

// InterruptRuns ends as interrupted the runs still open whose deadline
// passed before t (without one, started before t less legacyLife). The
// update is conditional: instances running it at once end each run once,
// and a run its instance finishes after all keeps what it recorded.
func (s *Store) InterruptRuns(ctx context.Context, t time.Time, legacyLife time.Duration, message string) (int, error) {
	// Written so that runs_open (deadline_at, open runs only) serves both
	// branches: the sweep runs every minute on every instance, and must
	// not scan the whole runs table.
	res, err := s.exec(ctx, `UPDATE runs SET status = ?, error_code = ?, error_message = ?, ended_at = COALESCE(deadline_at, started_at + ?)
		WHERE ended_at IS NULL AND status IN (?, ?) AND (deadline_at < ? OR deadline_at IS NULL AND started_at < ?)`,
		string(run.StatusInterrupted), string(errs.Unavailable), message, legacyLife.Microseconds(),
		string(run.StatusRunning), string(run.StatusCancelling), micros(t), micros(t.Add(-legacyLife)))
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// RequestCancel marks a running run as cancelling.
func (s *Store) RequestCancel(ctx context.Context, id string) error {
	_, err := s.exec(ctx, `UPDATE runs SET status = ? WHERE id = ? AND status = ?`, string(run.StatusCancelling), id, string(run.StatusRunning))
	return err
}

// CancelRequested returns which of ids are marked cancelling.
func (s *Store) CancelRequested(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, 0, len(ids)+1)
	args = append(args, string(run.StatusCancelling))
	for _, id := range ids {
		args = append(args, id)
	}
	rows, err := s.r.QueryContext(ctx, s.d.rebind(`SELECT id FROM runs WHERE status = ? AND id IN (?`+strings.Repeat(", ?", len(ids)-1)+`)`), args...)
	if err != nil {
		return nil, errs.Wrap(err, "read cancelled runs")
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, errs.Wrap(err, "scan run id")
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// Run returns a run by id.
func (s *Store) Run(ctx context.Context, id string) (*run.Record, error) {
	return one(s.r.QueryRowContext(ctx, s.d.rebind(`SELECT `+runCols+` FROM runs WHERE id = ?`), id), scanRun, "run")
}

// Runs lists runs, newest first.
func (s *Store) Runs(ctx context.Context, f tenancy.Filter) ([]*run.Record, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("project_id", f.ProjectID)
	w.eq("user_id", f.UserID)
	w.eq("flow_id", f.ParentID)
	if f.After != "" {
		w.add("id < ?", f.After)
	}
	q := ""
	if len(w.conds) > 0 {
		q = " WHERE " + strings.Join(w.conds, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = tenancy.DefaultPageSize
	}
	rows, err := s.r.QueryContext(ctx, s.d.rebind(`SELECT `+runCols+` FROM runs`+q+` ORDER BY id DESC LIMIT ?`), append(w.args, limit)...)
	if err != nil {
		return nil, dbError(err, "list runs")
	}
	return collect(rows, func(r *sql.Rows) (*run.Record, error) { return scanRun(r) })
}

// ---- messages ----

// AppendMessage stores a chat message.
func (s *Store) AppendMessage(ctx context.Context, m *run.Message) error {
	_, err := s.exec(ctx, `INSERT INTO messages (id, tenant_id, user_id, flow_id, session_id, sender, sender_name, text, run_id, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, m.ID, m.TenantID, m.UserID, m.FlowID, m.SessionID, m.Sender, m.SenderName, m.Text, m.RunID, micros(m.CreatedAt))
	return err
}

// Messages returns the last n messages of a user's session, oldest first.
func (s *Store) Messages(ctx context.Context, tenantID, userID, sessionID string, n int) ([]*run.Message, error) {
	rows, err := s.r.QueryContext(ctx, s.d.rebind(`SELECT id, tenant_id, user_id, flow_id, session_id, sender, sender_name, text, run_id, created_at
		FROM messages WHERE tenant_id = ? AND user_id = ? AND session_id = ? ORDER BY id DESC LIMIT ?`), tenantID, userID, sessionID, n)
	if err != nil {
		return nil, dbError(err, "read messages")
	}
	out, err := collect(rows, func(r *sql.Rows) (*run.Message, error) {
		var m run.Message
		var c int64
		if err := r.Scan(&m.ID, &m.TenantID, &m.UserID, &m.FlowID, &m.SessionID, &m.Sender, &m.SenderName, &m.Text, &m.RunID, &c); err != nil {
			return nil, err
		}
		m.CreatedAt = fromMicros(c)
		return &m, nil
	})
	if err != nil {
		return nil, err
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}
