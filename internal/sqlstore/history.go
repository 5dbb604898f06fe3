package sqlstore

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"
)

// dayMicros is one day in the events' time unit.
const dayMicros = int64(24 * time.Hour / time.Microsecond)

// historyMargin widens the read of events by their time on each side of
// the days asked for: an event's local day is within UTC-12 … UTC+14 of
// its UTC time, and two days also cover a tenant whose zone changed.
const historyMargin = 2 * dayMicros

// UsageHistory sums the events of q.Scope per day (and model) from the
// ledger itself, in SQL, sorted by day then model.
//
// Only the events hold what a history shows: the roll-ups have no model
// and no split of input and output tokens. Summing the events also makes
// every row, and so every total, equal to the ledger by construction.
//
// An event counts when its chain holds the scope (its scopes column,
// space-separated, is searched with the scope between spaces: no LIKE, so
// the '_' of ids is no wildcard). Its day is its local_day (the tenant's
// zone when it was recorded: the day its roll-ups and quota windows got),
// or, for events stored before local_day was and for q.UTC, its day in UTC.
// The read is narrowed by tenant and time (the (tenant_id, at) index) to
// the days asked for plus historyMargin either side, then by day exactly.
func (s *Store) UsageHistory(ctx context.Context, q usage.HistoryQuery) ([]usage.HistoryRow, error) {
	from, err := time.Parse("2006-01-02", q.From)
	if err != nil {
		return nil, errs.Field(errs.Invalid, "from", "from %q is not a day such as 2026-11-01", q.From)
	}
	to, err := time.Parse("2006-01-02", q.To)
	if err != nil {
		return nil, errs.Field(errs.Invalid, "to", "to %q is not a day such as 2026-11-30", q.To)
	}
	if q.Scope == "" || strings.ContainsAny(q.Scope, " \t\r\n") {
		return nil, errs.Field(errs.Invalid, "scope", "scope %q is not a scope", q.Scope)
	}
	start, end := micros(from), micros(to)+dayMicros
	var w where
	w.eq("tenant_id", q.TenantID)
	// The day of an event: its local day, or its UTC day number (an
	// integer division both engines do alike) when it has none.
	dayCols := `CASE WHEN local_day = '' THEN '' ELSE local_day END, CASE WHEN local_day = '' THEN at / ? ELSE -1 END`
	dayArgs := []any{dayMicros}
	if q.UTC {
		w.add("at >= ?", start)
		w.add("at < ?", end)
		dayCols = `'', at / ?`
	} else {
		w.add("at >= ?", start-historyMargin)
		w.add("at < ?", end+historyMargin)
		w.add("(local_day = '' OR (local_day >= ? AND local_day <= ?))", q.From, q.To)
	}
	if s.d.dollar {
		w.add("strpos(' ' || scopes || ' ', ?) > 0", " "+q.Scope+" ")
	} else {
		w.add("instr(' ' || scopes || ' ', ?) > 0", " "+q.Scope+" ")
	}
	model := `''`
	if q.ByModel {
		model = "model"
	}
	stmt := `SELECT ` + dayCols + `, ` + model + `, CAST(SUM(requests) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT),
		CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(gpu_ms) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT)
		FROM usage_events WHERE ` + strings.Join(w.conds, " AND ") + ` GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`
	args := append(dayArgs, w.args...)
	if q.Limit > 0 {
		stmt += " LIMIT ?"
		args = append(args, q.Limit)
	}
	rows, err := s.r.QueryContext(ctx, s.d.rebind(stmt), args...)
	if err != nil {
		return nil, errs.Wrap(err, "read usage history")
	}
	defer rows.Close()
	// Rows of events without a local day join those of the same UTC day.
	merged := map[[2]string]int{}
	var out []usage.HistoryRow
	for rows.Next() {
		var r usage.HistoryRow
		var utcDay int64
		if err := rows.Scan(&r.Period, &utcDay, &r.Model, &r.Requests, &r.InputTokens, &r.OutputTokens, &r.GPUMillis, &r.CostMicros); err != nil {
			return nil, errs.Wrap(err, "scan usage history")
		}
		if r.Period == "" {
			r.Period = usage.DayOfUnixDay(utcDay)
		}
		if r.Period < q.From || r.Period > q.To {
			continue
		}
		k := [2]string{r.Period, r.Model}
		if i, ok := merged[k]; ok {
			out[i].Add(&r)
			continue
		}
		merged[k] = len(out)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(err, "read usage history")
	}
	slices.SortFunc(out, func(a, b usage.HistoryRow) int {
		if c := strings.Compare(a.Period, b.Period); c != 0 {
			return c
		}
		return strings.Compare(a.Model, b.Model)
	})
	return out, nil
}
