package sqlstore

import (
	"context"
	"database/sql"
	"iter"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/whatif"
)

// The reads of a policy what-if replay (package whatif). Each streams one
// query's rows: a replay holds one event and one run at a time, however
// long its window.

var _ whatif.Ledger = (*Store)(nil)

// WhatIfCount counts the usage events and runs of a tenant ("" every
// tenant) in [from, to), counting each table at most to limit+1.
func (s *Store) WhatIfCount(ctx context.Context, tenantID string, from, to time.Time, limit int) (int, error) {
	total := 0
	for _, q := range []struct{ table, at string }{{"usage_events", "at"}, {"runs", "started_at"}} {
		var w where
		w.eq("tenant_id", tenantID)
		w.add(q.at+" >= ?", micros(from))
		w.add(q.at+" < ?", micros(to))
		stmt := `SELECT COUNT(*) FROM (SELECT 1 FROM ` + q.table + ` WHERE ` + strings.Join(w.conds, " AND ") + ` LIMIT ?) AS n`
		var n int
		if err := s.r.QueryRowContext(ctx, s.d.rebind(stmt), append(w.args, limit+1)...).Scan(&n); err != nil {
			return 0, errs.Wrap(err, "count %s for a what-if", q.table)
		}
		total += n
	}
	return total, nil
}

// WhatIfEvents yields a tenant's usage events ("" every tenant's) in
// [from, to), by time then id.
func (s *Store) WhatIfEvents(ctx context.Context, tenantID string, from, to time.Time) iter.Seq2[usage.Event, error] {
	var w where
	w.eq("tenant_id", tenantID)
	w.add("at >= ?", micros(from))
	w.add("at < ?", micros(to))
	q := `SELECT ` + readColumns + ` FROM usage_events WHERE ` + strings.Join(w.conds, " AND ") + ` ORDER BY at, id`
	return stream(ctx, s, q, w.args, "usage events", func(r *sql.Rows) (usage.Event, error) { return scanEvent(r) })
}

// WhatIfRuns yields the runs of a tenant ("" every tenant's) that started
// in [from, to), by start then id.
func (s *Store) WhatIfRuns(ctx context.Context, tenantID string, from, to time.Time) iter.Seq2[whatif.Run, error] {
	var w where
	w.eq("tenant_id", tenantID)
	w.add("started_at >= ?", micros(from))
	w.add("started_at < ?", micros(to))
	q := `SELECT id, tenant_id, user_id, project_id, started_at, ended_at FROM runs WHERE ` + strings.Join(w.conds, " AND ") +
		` ORDER BY started_at, id`
	return stream(ctx, s, q, w.args, "runs", func(r *sql.Rows) (whatif.Run, error) {
		var x whatif.Run
		var start int64
		var end sql.NullInt64
		if err := r.Scan(&x.ID, &x.TenantID, &x.UserID, &x.ProjectID, &start, &end); err != nil {
			return x, errs.Wrap(err, "scan run")
		}
		x.Start = fromMicros(start)
		if end.Valid {
			x.End = fromMicros(end.Int64)
		}
		return x, nil
	})
}

// stream yields the rows of one query, closing them when the caller
// stops early.
func stream[T any](ctx context.Context, s *Store, q string, args []any, what string, scan func(*sql.Rows) (T, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		var zero T
		rows, err := s.r.QueryContext(ctx, s.d.rebind(q), args...)
		if err != nil {
			yield(zero, errs.Wrap(err, "read %s", what))
			return
		}
		defer rows.Close()
		for rows.Next() {
			v, err := scan(rows)
			if !yield(v, err) || err != nil {
				return
			}
		}
		if err := rows.Err(); err != nil {
			yield(zero, errs.Wrap(err, "read %s", what))
		}
	}
}
