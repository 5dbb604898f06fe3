package sqlstore

import (
	"context"
	"database/sql"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"
)

var _ usage.Store = (*Store)(nil)

// RecordUsage inserts new events and adds them to their scopes' roll-ups in
// one transaction. An event whose id is already stored is skipped, so a
// replayed batch changes nothing.
func (s *Store) RecordUsage(ctx context.Context, events []usage.Event) (int, error) {
	inserted := 0
	err := s.tx(ctx, s.w, func(tx *sql.Tx) error {
		c := &conn{ctx: ctx, tx: tx, d: s.d}
		for i := range events {
			e := &events[i]
			res, err := c.exec(`INSERT INTO usage_events (id, at, tenant_id, user_id, project_id, kind, model,
				requests, input_tokens, output_tokens, gpu_ms, cost_micros, scopes, peak_memory, cpu_ms)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
				e.ID, micros(e.At), e.TenantID, e.UserID, e.ProjectID, e.Kind, e.Model,
				e.Requests, e.InputTokens, e.OutputTokens, e.GPUMillis, e.CostMicros, strings.Join(e.Scopes, " "), e.PeakMemory, e.CPUMillis)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				continue // already recorded
			}
			inserted++
			loc := e.Loc
			if loc == nil {
				loc = time.UTC
			}
			for _, scope := range e.Scopes {
				l := loc
				if scope == "global" {
					l = time.UTC
				}
				for _, period := range []string{usage.DayPeriod(e.At, l), usage.MonthPeriod(e.At, l)} {
					if _, err := c.exec(`INSERT INTO usage_rollups (scope, period, tenant_id, requests, tokens, gpu_ms, cost_micros)
						VALUES (?, ?, ?, ?, ?, ?, ?)
						ON CONFLICT (scope, period) DO UPDATE SET requests = usage_rollups.requests + excluded.requests,
						tokens = usage_rollups.tokens + excluded.tokens, gpu_ms = usage_rollups.gpu_ms + excluded.gpu_ms,
						cost_micros = usage_rollups.cost_micros + excluded.cost_micros`,
						scope, period, e.TenantID, e.Requests, e.Tokens(), e.GPUMillis, e.CostMicros); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return inserted, nil
}

// Rollups returns the roll-ups of the given periods.
func (s *Store) Rollups(ctx context.Context, periods []string) ([]usage.Rollup, error) {
	if len(periods) == 0 {
		return nil, nil
	}
	q := `SELECT scope, period, tenant_id, requests, tokens, gpu_ms, cost_micros FROM usage_rollups WHERE period IN (?` +
		strings.Repeat(", ?", len(periods)-1) + `)`
	args := make([]any, len(periods))
	for i, p := range periods {
		args[i] = p
	}
	rows, err := s.r.QueryContext(ctx, s.d.rebind(q), args...)
	if err != nil {
		return nil, errs.Wrap(err, "read roll-ups")
	}
	defer rows.Close()
	var out []usage.Rollup
	for rows.Next() {
		var r usage.Rollup
		if err := rows.Scan(&r.Scope, &r.Period, &r.TenantID, &r.Requests, &r.Tokens, &r.GPUMillis, &r.CostMicros); err != nil {
			return nil, errs.Wrap(err, "scan roll-up")
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// UsageEvents returns events of a tenant ("" for all) in [from, to), oldest
// first, at most limit.
func (s *Store) UsageEvents(ctx context.Context, tenantID string, from, to time.Time, limit int) ([]usage.Event, error) {
	var w where
	w.eq("tenant_id", tenantID)
	w.add("at >= ?", micros(from))
	w.add("at < ?", micros(to))
	q := `SELECT id, at, tenant_id, user_id, project_id, kind, model, requests, input_tokens, output_tokens, gpu_ms, cost_micros, scopes,
		peak_memory, cpu_ms FROM usage_events WHERE ` + strings.Join(w.conds, " AND ") + ` ORDER BY at, id LIMIT ?`
	rows, err := s.r.QueryContext(ctx, s.d.rebind(q), append(w.args, limit)...)
	if err != nil {
		return nil, errs.Wrap(err, "read usage events")
	}
	defer rows.Close()
	var out []usage.Event
	for rows.Next() {
		var e usage.Event
		var at int64
		var scopes string
		if err := rows.Scan(&e.ID, &at, &e.TenantID, &e.UserID, &e.ProjectID, &e.Kind, &e.Model, &e.Requests,
			&e.InputTokens, &e.OutputTokens, &e.GPUMillis, &e.CostMicros, &scopes, &e.PeakMemory, &e.CPUMillis); err != nil {
			return nil, errs.Wrap(err, "scan usage event")
		}
		e.At = fromMicros(at)
		if scopes != "" {
			e.Scopes = strings.Split(scopes, " ")
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
