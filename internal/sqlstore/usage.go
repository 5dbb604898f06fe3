package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"
)

var (
	_ usage.Store           = (*Store)(nil)
	_ usage.QuarantineStore = (*Store)(nil)
)

// The longest texts an event may carry. Ids, tenants and users are indexed,
// and PostgreSQL refuses an index entry over about 2.7 KB with an error no
// retry mends: the store refuses longer values itself, as malformed, on
// both engines alike.
const (
	maxEventText   = 1024 // id, tenant, user, project, kind, model
	maxEventScopes = 8192 // the scopes, joined
)

// RecordUsage inserts the events whose ids are new and adds those to their
// scopes' roll-ups, and returns how many were new. An id already stored (or
// repeated in events) is skipped, so a replayed batch changes nothing.
//
// On PostgreSQL one transaction holds both: a multi-row insert of the
// events over arrays (unnest), which reports the ids that were new, and a
// multi-row upsert of the roll-ups, the new events' use summed in memory
// per scope and period first; their text is fixed and prepared once.
// Several instances write at once there, so no order of the events'
// sequence tells which are committed, and roll-ups cannot trail them.
//
// On SQLite the transaction holds only the events; see rollupLog for how
// their roll-ups follow.
//
// An error the data causes (a value the store cannot hold) is errs.Invalid,
// an outage anything else: the recorder isolates and quarantines the
// events of the first and retries the second.
func (s *Store) RecordUsage(ctx context.Context, events []usage.Event) (int, error) {
	for i := range events {
		if err := checkEvent(&events[i]); err != nil {
			return 0, err
		}
	}
	events = firstOfEachID(events)
	if len(events) == 0 {
		return 0, nil
	}
	if s.roll != nil {
		return s.sqliteRecordUsage(ctx, events)
	}
	inserted := 0
	err := s.tx(ctx, s.w, func(tx *sql.Tx) error {
		fresh, err := pgInsertEvents(ctx, tx, events)
		if err != nil {
			return err
		}
		inserted = len(fresh)
		if inserted == 0 {
			return nil
		}
		keys, deltas, err := rollupDeltas(events, localDays(events), fresh)
		if err != nil {
			return err
		}
		// Concurrent writers lock rows in one order: no deadlock.
		sortKeys(keys)
		return pgUpsertRollups(ctx, tx, keys, deltas)
	})
	if err != nil {
		return 0, err
	}
	return inserted, nil
}

// rollupLog is, on SQLite, the use of committed events that usage_rollups
// does not hold yet, and what keeps the two consistent across a crash.
//
// SQLite has one writing connection, so an event's rowid order is its
// commit order. A write commits only its events (about half the rows per
// event that rolling up in the same transaction costs: an event touches
// ~6 scopes × day and month) and, once committed, adds their use to
// pending. pending goes into usage_rollups in a transaction that also moves
// usage_rollup_mark to the highest rowid folded: inside a write's own
// transaction once pending is older than foldEvery or wider than
// foldMaxKeys, on its own after foldIdle without writes, before Rollups
// reads, and at Close. Opening the store folds the events above the mark:
// those whose use a crash took with pending. So usage_rollups plus pending
// is always the sum of the committed events, and after a crash usage_rollups
// alone is once the store is open again.
//
// mu is held across a write's transaction and its update of pending, so
// that pending and upTo move in commit order.
type rollupLog struct {
	mu      sync.Mutex
	pending map[rollupKey]*rollupDelta
	upTo    int64     // the highest rowid whose use is in usage_rollups or pending
	since   time.Time // when pending got its oldest use
	idle    *time.Timer
	closed  bool
	// stmts are the multi-row statements of usage writes, prepared on the
	// writing connection at open rather than in each transaction.
	stmts map[string]*sql.Stmt
	undo  []rollupUndo // what the write under way added to pending

	every   time.Duration
	maxKeys int
}

const (
	foldEvery   = 500 * time.Millisecond
	foldIdle    = time.Second
	foldMaxKeys = 16_384 // ~2 MB of pending; a fold of that many rows takes tens of milliseconds
	foldTimeout = 30 * time.Second
)

func (s *Store) sqliteRecordUsage(ctx context.Context, events []usage.Event) (int, error) {
	l := s.roll
	l.mu.Lock()
	defer l.mu.Unlock()
	var fresh map[string]bool
	var last int64
	days := localDays(events)
	wasEmpty := len(l.pending) == 0
	l.undo = l.undo[:0]
	folded := false
	err := s.tx(ctx, s.w, func(tx *sql.Tx) error {
		// A multi-row statement journals the pages it changes, so that
		// it can be undone alone; in memory that costs no file writes.
		// Best effort: the setting only saves time.
		_, _ = tx.ExecContext(ctx, "PRAGMA temp_store = MEMORY")
		var err error
		if fresh, last, err = sqliteInsertEvents(ctx, tx, l.stmts, events, days); err != nil || len(fresh) == 0 {
			return err
		}
		// Add the new events' use to pending now, so that a sum pending
		// cannot hold refuses them: once committed, their use must fit.
		// It is taken back if the transaction fails.
		for i := range events {
			if e := &events[i]; fresh[e.ID] {
				if err := addRollups(l.pending, nil, &l.undo, e, days[i]); err != nil {
					return err
				}
			}
		}
		if wasEmpty || (time.Since(l.since) < l.every && len(l.pending) <= l.maxKeys) {
			return nil
		}
		if err := sqliteUpsertRollups(ctx, tx, l.stmts, sortedKeys(l.pending), l.pending); err != nil {
			return err
		}
		folded = true
		return setRollupMark(ctx, tx, last)
	})
	if err != nil {
		takeBack(l.pending, l.undo)
		clear(l.undo)
		return 0, err
	}
	clear(l.undo) // let the events go
	if len(fresh) == 0 {
		return 0, nil
	}
	l.upTo = max(l.upTo, last)
	switch {
	case folded:
		l.emptied()
	case wasEmpty:
		s.began()
	}
	return len(fresh), nil
}

// began notes when pending got its first use (l.mu held), and makes sure
// pending is folded if no write comes to do it.
func (s *Store) began() {
	l := s.roll
	l.since = time.Now()
	if l.idle == nil {
		l.idle = time.AfterFunc(foldIdle, s.foldIdle)
	} else {
		l.idle.Reset(foldIdle)
	}
}

// emptied starts pending afresh after a fold (l.mu held).
func (l *rollupLog) emptied() {
	l.pending = make(map[rollupKey]*rollupDelta, len(l.pending))
}

// foldIdle folds pending when writes stopped before they folded it, so that
// usage_rollups does not trail for long behind a quiet store.
func (s *Store) foldIdle() {
	l := s.roll
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), foldTimeout)
	defer cancel()
	if err := s.foldPending(ctx); err != nil {
		// The store is in trouble; the next write, read or this timer
		// folds it. Nothing is lost meanwhile: the events are committed.
		l.idle.Reset(foldIdle)
	}
}

// foldPending writes pending into usage_rollups and moves the mark to
// upTo, in one transaction (l.mu held).
func (s *Store) foldPending(ctx context.Context) error {
	l := s.roll
	if len(l.pending) == 0 {
		return nil
	}
	err := s.tx(ctx, s.w, func(tx *sql.Tx) error {
		if err := sqliteUpsertRollups(ctx, tx, l.stmts, sortedKeys(l.pending), l.pending); err != nil {
			return err
		}
		return setRollupMark(ctx, tx, l.upTo)
	})
	if err != nil {
		return err
	}
	l.emptied()
	return nil
}

func setRollupMark(ctx context.Context, tx *sql.Tx, rowid int64) error {
	if _, err := tx.ExecContext(ctx, `UPDATE usage_rollup_mark SET last_rowid = ? WHERE id = 1`, rowid); err != nil {
		return dbError(err, "move the usage roll-up mark")
	}
	return nil
}

// openRollups starts the SQLite roll-up log: it sets the mark at the first
// open after migration 0008, then folds the events above it, which a crash
// left out of usage_rollups.
func (s *Store) openRollups(ctx context.Context) error {
	l := &rollupLog{every: foldEvery, maxKeys: foldMaxKeys, stmts: map[string]*sql.Stmt{}}
	l.emptied()
	for _, size := range valuesSizes {
		for _, q := range [...]string{valuesSQL(insertEventsHead, eventCols, size, insertEventsTail), valuesSQL(upsertRollupHead, 7, size, rollupUpdate)} {
			st, err := s.w.PrepareContext(ctx, q)
			if err != nil {
				l.closeStmts()
				return fmt.Errorf("prepare usage writes: %w", err)
			}
			l.stmts[q] = st
		}
	}
	err := s.tx(ctx, s.w, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO usage_rollup_mark (id, last_rowid)
			SELECT 1, COALESCE(MAX(rowid), 0) FROM usage_events`); err != nil {
			return fmt.Errorf("set the usage roll-up mark: %w", err)
		}
		var mark int64
		if err := tx.QueryRowContext(ctx, `SELECT last_rowid FROM usage_rollup_mark WHERE id = 1`).Scan(&mark); err != nil {
			return fmt.Errorf("read the usage roll-up mark: %w", err)
		}
		l.upTo = mark
		deltas, last, err := unfoldedDeltas(ctx, tx, mark)
		if err != nil || last == mark {
			return err
		}
		if err := sqliteUpsertRollups(ctx, tx, l.stmts, sortedKeys(deltas), deltas); err != nil {
			return err
		}
		l.upTo = last
		return setRollupMark(ctx, tx, last)
	})
	if err != nil {
		l.closeStmts()
		return fmt.Errorf("fold usage events into roll-ups: %w", err)
	}
	s.roll = l
	return nil
}

func (l *rollupLog) closeStmts() {
	for _, st := range l.stmts {
		st.Close()
	}
}

// unfoldedDeltas sums the use of the events above rowid mark per scope and
// period, and returns the highest rowid read.
func unfoldedDeltas(ctx context.Context, tx *sql.Tx, mark int64) (map[rollupKey]*rollupDelta, int64, error) {
	rows, err := tx.QueryContext(ctx, `SELECT rowid, id, at, tenant_id, requests, input_tokens, output_tokens, gpu_ms, cost_micros,
		scopes, local_day FROM usage_events WHERE rowid > ? ORDER BY rowid`, mark)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	deltas := map[rollupKey]*rollupDelta{}
	last := mark
	for rows.Next() {
		var e usage.Event
		var at int64
		var scopes, day string
		if err := rows.Scan(&last, &e.ID, &at, &e.TenantID, &e.Requests, &e.InputTokens, &e.OutputTokens, &e.GPUMillis,
			&e.CostMicros, &scopes, &day); err != nil {
			return nil, 0, err
		}
		e.At = fromMicros(at)
		if scopes != "" {
			e.Scopes = strings.Split(scopes, " ")
		}
		if day == "" { // stored before local_day was: its zone is lost
			day = usage.DayPeriod(e.At, time.UTC)
		}
		if err := addRollups(deltas, nil, nil, &e, day); err != nil {
			return nil, 0, err
		}
	}
	return deltas, last, rows.Err()
}

// checkEvent refuses, as malformed, an event with a text longer than the
// store holds.
func checkEvent(e *usage.Event) error {
	for _, f := range [...]struct{ name, v string }{{"id", e.ID}, {"tenant_id", e.TenantID}, {"user_id", e.UserID},
		{"project_id", e.ProjectID}, {"kind", e.Kind}, {"model", e.Model}} {
		if len(f.v) > maxEventText {
			return errs.Field(errs.Invalid, f.name, "usage event %.64q: %s is %d bytes long; the store holds at most %d",
				e.ID, f.name, len(f.v), maxEventText)
		}
	}
	n := 0
	for _, sc := range e.Scopes {
		n += len(sc) + 1
	}
	if n > maxEventScopes {
		return errs.Field(errs.Invalid, "scopes", "usage event %.64q: its scopes are %d bytes long; the store holds at most %d",
			e.ID, n, maxEventScopes)
	}
	return nil
}

// firstOfEachID returns events without the later events of a repeated id
// (usually events itself): one statement must not insert an id twice.
func firstOfEachID(events []usage.Event) []usage.Event {
	seen := make(map[string]struct{}, len(events))
	for i := range events {
		if _, dup := seen[events[i].ID]; dup {
			out := slices.Clone(events[:i])
			for j := i + 1; j < len(events); j++ {
				if _, dup := seen[events[j].ID]; !dup {
					seen[events[j].ID] = struct{}{}
					out = append(out, events[j])
				}
			}
			return out
		}
		seen[events[i].ID] = struct{}{}
	}
	return events
}

// usageError classifies an error writing usage. PostgreSQL SQLSTATE
// classes 22 (data exception: a NUL byte, invalid UTF-8, a number out of
// range) and 23 (integrity constraint), and SQLite's constraint, too-big
// and type-mismatch errors, are caused by the values written: errs.Invalid.
// Anything else is the store's trouble (dbError: unavailable or internal).
func usageError(err error, what string) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23")) {
		return &errs.Error{Code: errs.Invalid, Message: fmt.Sprintf("%s: the store refused a value (SQLSTATE %s)", what, pe.Code), Err: err}
	}
	var se interface{ Code() int }
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case 18, 19, 20: // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH
			return &errs.Error{Code: errs.Invalid, Message: fmt.Sprintf("%s: the store refused a value (SQLite code %d)", what, se.Code()), Err: err}
		}
	}
	return dbError(err, what)
}

// eventColumns are the columns an insert writes: the read ones and the
// event's local day.
const eventColumns = readColumns + `, local_day`

// eventCols counts eventColumns: the arguments of one event's row.
const eventCols = 17

const (
	insertEventsHead = `INSERT INTO usage_events (` + eventColumns + `) VALUES `
	insertEventsTail = ` ON CONFLICT (id) DO NOTHING RETURNING id, rowid`
	upsertRollupHead = `INSERT INTO usage_rollups (scope, period, tenant_id, requests, tokens, gpu_ms, cost_micros) VALUES `
)

// sqliteInsertEvents inserts events and returns the ids that were new and
// the highest rowid they got.
func sqliteInsertEvents(ctx context.Context, tx *sql.Tx, prepared map[string]*sql.Stmt, events []usage.Event,
	days []string) (map[string]bool, int64, error) {
	fresh := make(map[string]bool, len(events))
	var last int64
	args := make([]any, 0, eventCols*len(events))
	for i := range events {
		e := &events[i]
		args = append(args, e.ID, micros(e.At), e.TenantID, e.UserID, e.ProjectID, e.Kind, e.Model,
			e.Requests, e.InputTokens, e.OutputTokens, e.GPUMillis, e.CostMicros, strings.Join(e.Scopes, " "), e.PeakMemory, e.CPUMillis,
			e.Deployment, days[i])
	}
	err := sqliteRows(ctx, tx, prepared, insertEventsHead, insertEventsTail, eventCols, args, func(rows *sql.Rows) error {
		for rows.Next() {
			var id string
			var rowid int64
			if err := rows.Scan(&id, &rowid); err != nil {
				return err
			}
			fresh[id] = true
			last = max(last, rowid)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, usageError(err, "insert usage events")
	}
	return fresh, last, nil
}

// valuesSizes are the rows of the multi-row statements, largest first.
var valuesSizes = [...]int{32, 8, 1}

// sqliteRows runs head, a VALUES list of rows of cols arguments each, tail
// over args, in statements of a few fixed sizes (valuesSizes), each taken
// from prepared, or else prepared once in the transaction: parsing a
// statement as long as the whole list would cost SQLite more than running
// it. each, when set, reads the rows a statement returns.
func sqliteRows(ctx context.Context, tx *sql.Tx, prepared map[string]*sql.Stmt, head, tail string, cols int, args []any,
	each func(*sql.Rows) error) error {
	stmts := map[int]*sql.Stmt{}
	defer func() {
		for _, st := range stmts {
			st.Close()
		}
	}()
	for len(args) > 0 {
		n := len(args) / cols
		size := 1
		for _, sz := range valuesSizes {
			if n >= sz {
				size = sz
				break
			}
		}
		st := stmts[size]
		if st == nil {
			q := valuesSQL(head, cols, size, tail)
			if p := prepared[q]; p != nil {
				st = tx.StmtContext(ctx, p)
			} else {
				var err error
				if st, err = tx.PrepareContext(ctx, q); err != nil {
					return err
				}
			}
			stmts[size] = st
		}
		part := args[:size*cols]
		args = args[size*cols:]
		if each == nil {
			if _, err := st.ExecContext(ctx, part...); err != nil {
				return err
			}
			continue
		}
		rows, err := st.QueryContext(ctx, part...)
		if err != nil {
			return err
		}
		err = each(rows)
		rows.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

const pgInsertEventsSQL = `INSERT INTO usage_events (` + eventColumns + `)
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
		$8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::text[], $14::bigint[], $15::bigint[], $16::text[], $17::text[])
	ON CONFLICT (id) DO NOTHING RETURNING id`

// pgInsertEvents inserts events in one statement over arrays: one round
// trip whatever their number.
func pgInsertEvents(ctx context.Context, tx *sql.Tx, events []usage.Event) (map[string]bool, error) {
	n := len(events)
	ids, tenants, users, projects, kinds, models, scopes, deps, days := make([]string, n), make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	at, requests, in, out, gpu, cost, mem, cpu := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n),
		make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i := range events {
		e := &events[i]
		ids[i], tenants[i], users[i], projects[i], kinds[i], models[i], scopes[i] = e.ID, e.TenantID, e.UserID, e.ProjectID,
			e.Kind, e.Model, strings.Join(e.Scopes, " ")
		deps[i], days[i] = e.Deployment, localDay(e)
		at[i], requests[i], in[i], out[i], gpu[i], cost[i], mem[i], cpu[i] = micros(e.At), e.Requests, e.InputTokens,
			e.OutputTokens, e.GPUMillis, e.CostMicros, e.PeakMemory, e.CPUMillis
	}
	fresh := make(map[string]bool, n)
	err := collectIDs(ctx, tx, fresh, pgInsertEventsSQL, ids, at, tenants, users, projects, kinds, models,
		requests, in, out, gpu, cost, scopes, mem, cpu, deps, days)
	return fresh, err
}

// collectIDs runs an insert that returns the ids it inserted and adds them
// to fresh.
func collectIDs(ctx context.Context, tx *sql.Tx, fresh map[string]bool, q string, args ...any) error {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return usageError(err, "insert usage events")
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return usageError(err, "insert usage events")
		}
		fresh[id] = true
	}
	if err := rows.Err(); err != nil {
		return usageError(err, "insert usage events")
	}
	return nil
}

// rollupKey is a roll-up's primary key.
type rollupKey struct{ scope, period string }

// rollupDelta is what a transaction adds to one roll-up.
type rollupDelta struct {
	tenant                            string // of the first event: kept only by a new row
	requests, tokens, gpuMS, costMicr int64
}

// rollupDeltas sums the use of the fresh events per scope and period, in
// the scope's time zone (UTC for global), and returns the keys in the order
// first met. A sum that overflows is a data error.
func rollupDeltas(events []usage.Event, days []string, fresh map[string]bool) ([]rollupKey, map[rollupKey]*rollupDelta, error) {
	deltas := make(map[rollupKey]*rollupDelta, 4*len(fresh))
	var keys []rollupKey
	for i := range events {
		e := &events[i]
		if !fresh[e.ID] {
			continue
		}
		if err := addRollups(deltas, &keys, nil, e, days[i]); err != nil {
			return nil, nil, err
		}
	}
	return keys, deltas, nil
}

// localDay is the day period of e in its tenant's time zone.
func localDay(e *usage.Event) string {
	loc := e.Loc
	if loc == nil {
		loc = time.UTC
	}
	return usage.DayPeriod(e.At, loc)
}

// localDays are the local days of events, by index.
func localDays(events []usage.Event) []string {
	days := make([]string, len(events))
	for i := range events {
		days[i] = localDay(&events[i])
	}
	return days
}

// addRollups adds e's use to deltas, in the day and month of day (its day
// in its tenant's zone) for its scopes but global, which count in UTC, and
// appends the new keys to keys when set.
//
// undo, when set, gets what each row was given, so that a failed write can
// take it back (even a sum that overflowed: the arithmetic wraps).
func addRollups(deltas map[rollupKey]*rollupDelta, keys *[]rollupKey, undo *[]rollupUndo, e *usage.Event, day string) error {
	tokens, ok := addInt64(e.InputTokens, e.OutputTokens)
	if !ok {
		return errs.E(errs.Invalid, "usage event %.64q: its tokens overflow", e.ID)
	}
	local := [2]string{day, day[:min(len(day), len("2006-01"))]}
	var utc [2]string
	for _, scope := range e.Scopes {
		periods := &local
		if scope == "global" {
			if utc[0] == "" {
				utc[0] = usage.DayPeriod(e.At, time.UTC)
				utc[1] = utc[0][:len("2006-01")]
			}
			periods = &utc
		}
		for _, period := range periods {
			k := rollupKey{scope, period}
			r := deltas[k]
			created := r == nil
			if created {
				r = &rollupDelta{tenant: e.TenantID}
				deltas[k] = r
				if keys != nil {
					*keys = append(*keys, k)
				}
			}
			var ok [4]bool
			r.requests, ok[0] = addInt64(r.requests, e.Requests)
			r.tokens, ok[1] = addInt64(r.tokens, tokens)
			r.gpuMS, ok[2] = addInt64(r.gpuMS, e.GPUMillis)
			r.costMicr, ok[3] = addInt64(r.costMicr, e.CostMicros)
			if undo != nil {
				*undo = append(*undo, rollupUndo{key: k, row: r, created: created, e: e, tokens: tokens})
			}
			if ok != [4]bool{true, true, true, true} {
				return errs.E(errs.Invalid, "usage event %.64q: its use overflows the roll-up of %s %s", e.ID, scope, period)
			}
		}
	}
	return nil
}

// rollupUndo is what addRollups gave one row for one event.
type rollupUndo struct {
	key     rollupKey
	row     *rollupDelta
	created bool
	e       *usage.Event
	tokens  int64
}

// takeBack undoes the additions of undo, last first, in deltas.
func takeBack(deltas map[rollupKey]*rollupDelta, undo []rollupUndo) {
	for i := len(undo) - 1; i >= 0; i-- {
		u := &undo[i]
		u.row.requests -= u.e.Requests
		u.row.tokens -= u.tokens
		u.row.gpuMS -= u.e.GPUMillis
		u.row.costMicr -= u.e.CostMicros
		if u.created {
			delete(deltas, u.key)
		}
	}
}

// sortedKeys returns the keys of deltas in order.
func sortedKeys(deltas map[rollupKey]*rollupDelta) []rollupKey {
	keys := make([]rollupKey, 0, len(deltas))
	for k := range deltas {
		keys = append(keys, k)
	}
	sortKeys(keys)
	return keys
}

func sortKeys(keys []rollupKey) {
	slices.SortFunc(keys, func(a, b rollupKey) int {
		if c := strings.Compare(a.scope, b.scope); c != 0 {
			return c
		}
		return strings.Compare(a.period, b.period)
	})
}

// addInt64 adds, reporting false on overflow.
func addInt64(a, b int64) (int64, bool) {
	c := a + b
	return c, (b >= 0) == (c >= a)
}

const rollupUpdate = ` ON CONFLICT (scope, period) DO UPDATE SET requests = usage_rollups.requests + excluded.requests,
	tokens = usage_rollups.tokens + excluded.tokens, gpu_ms = usage_rollups.gpu_ms + excluded.gpu_ms,
	cost_micros = usage_rollups.cost_micros + excluded.cost_micros`

func sqliteUpsertRollups(ctx context.Context, tx *sql.Tx, prepared map[string]*sql.Stmt, keys []rollupKey,
	deltas map[rollupKey]*rollupDelta) error {
	args := make([]any, 0, 7*len(keys))
	for _, k := range keys {
		d := deltas[k]
		args = append(args, k.scope, k.period, d.tenant, d.requests, d.tokens, d.gpuMS, d.costMicr)
	}
	err := sqliteRows(ctx, tx, prepared, upsertRollupHead, rollupUpdate, 7, args, nil)
	if err != nil {
		return usageError(err, "add to usage roll-ups")
	}
	return nil
}

const pgUpsertRollupsSQL = `INSERT INTO usage_rollups (scope, period, tenant_id, requests, tokens, gpu_ms, cost_micros)
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])` + rollupUpdate

func pgUpsertRollups(ctx context.Context, tx *sql.Tx, keys []rollupKey, deltas map[rollupKey]*rollupDelta) error {
	n := len(keys)
	scopes, periods, tenants := make([]string, n), make([]string, n), make([]string, n)
	requests, tokens, gpu, cost := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i, k := range keys {
		d := deltas[k]
		scopes[i], periods[i], tenants[i] = k.scope, k.period, d.tenant
		requests[i], tokens[i], gpu[i], cost[i] = d.requests, d.tokens, d.gpuMS, d.costMicr
	}
	if _, err := tx.ExecContext(ctx, pgUpsertRollupsSQL, scopes, periods, tenants, requests, tokens, gpu, cost); err != nil {
		return usageError(err, "add to usage roll-ups")
	}
	return nil
}

// valuesSQL returns head, then rows tuples of cols placeholders, then tail.
// The texts are kept: the recorder's chunks repeat a few sizes.
func valuesSQL(head string, cols, rows int, tail string) string {
	k := valuesKey{head, cols, rows}
	if q, ok := valuesCache.Load(k); ok {
		return q.(string)
	}
	var b strings.Builder
	b.WriteString(head)
	tuple := "(?" + strings.Repeat(", ?", cols-1) + ")"
	for i := 0; i < rows; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(tuple)
	}
	b.WriteString(tail)
	q := b.String()
	valuesCache.Store(k, q)
	return q
}

type valuesKey struct {
	head       string
	cols, rows int
}

var valuesCache sync.Map // valuesKey → string

// QuarantineUsage stores events the store refused, once per event id.
// Every text is made storable again here, so that this write cannot fail
// on the bytes that made the event's own write fail.
func (s *Store) QuarantineUsage(ctx context.Context, qs []usage.Quarantined) error {
	return s.tx(ctx, s.w, func(tx *sql.Tx) error {
		for _, q := range qs {
			const big = 1 << 20
			if _, err := tx.ExecContext(ctx, s.d.rebind(`INSERT INTO usage_quarantine (id, event_key, event_id, tenant_id, event, error, at)
				VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_key) DO NOTHING`),
				q.ID, q.EventKey, usage.Storable(q.EventID, big), usage.Storable(q.TenantID, big), usage.Storable(q.Event, big),
				usage.Storable(q.Error, big), micros(q.At)); err != nil {
				return dbError(err, "quarantine usage event")
			}
		}
		return nil
	})
}

// UsageQuarantine lists quarantined events, oldest first, after the id
// after ("" from the start), at most limit.
func (s *Store) UsageQuarantine(ctx context.Context, after string, limit int) ([]usage.Quarantined, error) {
	rows, err := s.r.QueryContext(ctx, s.d.rebind(`SELECT id, event_key, event_id, tenant_id, event, error, at
		FROM usage_quarantine WHERE id > ? ORDER BY id LIMIT ?`), after, limit)
	if err != nil {
		return nil, errs.Wrap(err, "read usage quarantine")
	}
	defer rows.Close()
	out := []usage.Quarantined{}
	for rows.Next() {
		var q usage.Quarantined
		var at int64
		if err := rows.Scan(&q.ID, &q.EventKey, &q.EventID, &q.TenantID, &q.Event, &q.Error, &at); err != nil {
			return nil, errs.Wrap(err, "scan quarantined usage event")
		}
		q.At = fromMicros(at)
		out = append(out, q)
	}
	return out, rows.Err()
}

// Rollups returns the roll-ups of the given periods, with the use of every
// event committed before the call (RollupsRead also says when it read).
func (s *Store) Rollups(ctx context.Context, periods []string) ([]usage.Rollup, error) {
	return s.rollups(ctx, periods, nil)
}

// WindowUse is one scope's use in one period from the roll-ups: tokens,
// or for "cost" micro-USD (policy.WindowUse: credit draws are settled on
// it).
func (s *Store) WindowUse(ctx context.Context, scope, dimension, period string) (int64, error) {
	var w where
	w.eq("scope", scope)
	rs, err := s.rollups(ctx, []string{period}, &w)
	if err != nil || len(rs) == 0 {
		return 0, err
	}
	if dimension == "cost" {
		return rs[0].CostMicros, nil
	}
	return rs[0].Tokens, nil
}

// KindRollups returns the roll-ups of the scopes of one kind (policy.KindKey:
// the spend of every API key) in the given periods, of one tenant when
// tenantID is set, by scope, with the use of every event committed before
// the call. The scope range is read through the primary key.
func (s *Store) KindRollups(ctx context.Context, kind, tenantID string, periods []string) ([]usage.Rollup, error) {
	var w where
	w.add("scope >= ?", kind+"/")
	w.add("scope < ?", kind+"0") // '0' follows '/'
	w.eq("tenant_id", tenantID)
	return s.rollups(ctx, periods, &w)
}

// RollupsRead is Rollups with the moment of the read: every event whose
// commit returned before it is in the roll-ups read (on SQLite no event
// commits between the read and it; on PostgreSQL it is taken just before
// a repeatable-read snapshot is, in which the roll-ups are then read). A
// rebuild of the quota counters from the roll-ups drops the spooled use
// whose event was committed before it (quota.Failover.Committed), and
// delivers the rest.
func (s *Store) RollupsRead(ctx context.Context, periods []string) ([]usage.Rollup, time.Time, error) {
	if l := s.roll; l != nil {
		// Writes commit under l.mu: holding it across the fold, the read
		// and the stamp, the read holds exactly what was committed.
		l.mu.Lock()
		defer l.mu.Unlock()
		if err := s.foldPending(ctx); err != nil {
			return nil, time.Time{}, usageError(err, "fold usage into roll-ups")
		}
		out, err := s.queryRollups(ctx, s.r, periods, nil)
		return out, time.Now(), err
	}
	var out []usage.Rollup
	var readAt time.Time
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		// A repeatable-read transaction's snapshot is taken at its first
		// statement: every commit that returned before readAt is in it.
		readAt = time.Now()
		if _, err := tx.ExecContext(ctx, "SELECT 1"); err != nil {
			return dbError(err, "take a snapshot")
		}
		var err error
		out, err = s.queryRollups(ctx, tx, periods, nil)
		return err
	})
	return out, readAt, err
}

// readTx runs fn in a read-only repeatable-read transaction on the read
// pool.
func (s *Store) readTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return dbError(err, "begin transaction")
	}
	defer func() { _ = tx.Rollback() }()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *Store) rollups(ctx context.Context, periods []string, also *where) ([]usage.Rollup, error) {
	if l := s.roll; l != nil {
		l.mu.Lock()
		err := s.foldPending(ctx)
		l.mu.Unlock()
		if err != nil {
			return nil, usageError(err, "fold usage into roll-ups")
		}
	}
	return s.queryRollups(ctx, s.r, periods, also)
}

func (s *Store) queryRollups(ctx context.Context, q querier, periods []string, also *where) ([]usage.Rollup, error) {
	if len(periods) == 0 {
		return nil, nil
	}
	stmt := `SELECT scope, period, tenant_id, requests, tokens, gpu_ms, cost_micros FROM usage_rollups WHERE period IN (?` +
		strings.Repeat(", ?", len(periods)-1) + `)`
	args := make([]any, len(periods))
	for i, p := range periods {
		args[i] = p
	}
	if also != nil {
		stmt += " AND " + strings.Join(also.conds, " AND ") + " ORDER BY scope, period"
		args = append(args, also.args...)
	}
	rows, err := q.QueryContext(ctx, s.d.rebind(stmt), args...)
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
	q := `SELECT ` + readColumns + ` FROM usage_events WHERE ` + strings.Join(w.conds, " AND ") + ` ORDER BY at, id LIMIT ?`
	rows, err := s.r.QueryContext(ctx, s.d.rebind(q), append(w.args, limit)...)
	if err != nil {
		return nil, errs.Wrap(err, "read usage events")
	}
	defer rows.Close()
	var out []usage.Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// readColumns are the columns scanEvent reads, in its order.
const readColumns = `id, at, tenant_id, user_id, project_id, kind, model, requests, input_tokens, output_tokens, gpu_ms, cost_micros, scopes,
		peak_memory, cpu_ms, deployment`

// scanEvent reads one usage event of readColumns.
func scanEvent(r interface{ Scan(...any) error }) (usage.Event, error) {
	var e usage.Event
	var at int64
	var scopes string
	if err := r.Scan(&e.ID, &at, &e.TenantID, &e.UserID, &e.ProjectID, &e.Kind, &e.Model, &e.Requests,
		&e.InputTokens, &e.OutputTokens, &e.GPUMillis, &e.CostMicros, &scopes, &e.PeakMemory, &e.CPUMillis, &e.Deployment); err != nil {
		return e, errs.Wrap(err, "scan usage event")
	}
	e.At = fromMicros(at)
	if scopes != "" {
		e.Scopes = strings.Split(scopes, " ")
	}
	return e, nil
}

// UsageEvent returns the usage event recorded under id (a settled
// ticket's id), false when there is none.
func (s *Store) UsageEvent(ctx context.Context, id string) (usage.Event, bool, error) {
	row := s.r.QueryRowContext(ctx, s.d.rebind(`SELECT `+readColumns+` FROM usage_events WHERE id = ?`), id)
	e, err := scanEvent(row)
	if errors.Is(err, sql.ErrNoRows) {
		return usage.Event{}, false, nil
	}
	if err != nil {
		return usage.Event{}, false, err
	}
	return e, true, nil
}

// EventsExist reports which of ids have a usage event: a ticket whose
// settle was acknowledged has one under its id (the settle answers only
// once its event is committed). At most 1,000 ids a query.
func (s *Store) EventsExist(ctx context.Context, ids []string) (map[string]bool, error) {
	out := make(map[string]bool)
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		q := `SELECT id FROM usage_events WHERE id IN (?` + strings.Repeat(",?", n-1) + `)`
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		rows, err := s.r.QueryContext(ctx, s.d.rebind(q), args...)
		if err != nil {
			return nil, errs.Wrap(err, "read usage event ids")
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, errs.Wrap(err, "scan usage event id")
			}
			out[id] = true
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, errs.Wrap(err, "read usage event ids")
		}
		ids = ids[n:]
	}
	return out, nil
}
