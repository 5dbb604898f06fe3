package sqlstore

import (
	"context"
	"database/sql"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

var _ policy.RequestStore = (*Store)(nil)

// UpdateRequests runs fn in a read-write transaction that bumps the change
// counter (an approval inserts a grant, which every instance must load).
func (s *Store) UpdateRequests(ctx context.Context, fn func(policy.RequestTx) error) error {
	return s.change(ctx, func(c *conn) error { return fn(c) })
}

// ViewRequests runs fn in a read-only transaction.
func (s *Store) ViewRequests(ctx context.Context, fn func(policy.RequestTx) error) error {
	return s.tx(ctx, s.r, func(tx *sql.Tx) error { return fn(&conn{ctx: ctx, tx: tx, d: s.d}) })
}

const requestCols = `id, tenant_id, scope, dimension, amount, limits_json, duration_ns, reason, requested_by, status,
	created_at, decided_by, decided_at, note, granted_amount, grant_id, expires_at`

func scanRequest(r scanner) (*policy.QuotaRequest, error) {
	var q policy.QuotaRequest
	var limits string
	var dur, created int64
	var decided, expires sql.NullInt64
	if err := r.Scan(&q.ID, &q.TenantID, &q.Scope, &q.Dimension, &q.Amount, &limits, &dur, &q.Reason, &q.RequestedBy, &q.Status,
		&created, &q.DecidedBy, &decided, &q.Note, &q.GrantedAmount, &q.GrantID, &expires); err != nil {
		return nil, err
	}
	sp, err := parseSpec(limits)
	if err != nil {
		return nil, err
	}
	q.Limits, q.Duration, q.CreatedAt = sp, policy.Duration(time.Duration(dur)), fromMicros(created)
	q.DecidedAt, q.ExpiresAt = fromNullMicros(decided), fromNullMicros(expires)
	return &q, nil
}

func (c *conn) InsertQuotaRequest(q *policy.QuotaRequest) error {
	limits, err := specJSON(q.Limits)
	if err != nil {
		return err
	}
	_, err = c.exec(`INSERT INTO quota_requests (`+requestCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		q.ID, q.TenantID, q.Scope, q.Dimension, q.Amount, limits, int64(q.Duration), q.Reason, q.RequestedBy, q.Status,
		micros(q.CreatedAt), q.DecidedBy, nullMicros(q.DecidedAt), q.Note, q.GrantedAmount, q.GrantID, nullMicros(q.ExpiresAt))
	return err
}

func (c *conn) QuotaRequest(id string) (*policy.QuotaRequest, error) {
	return one(c.queryRow(`SELECT `+requestCols+` FROM quota_requests WHERE id = ?`, id), scanRequest, "quota request")
}

func (c *conn) QuotaRequests(f policy.RequestFilter) ([]*policy.QuotaRequest, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("requested_by", f.RequestedBy)
	w.eq("status", f.Status)
	w.eq("scope", f.Scope)
	q, args := w.sql(tenancy.Filter{Page: f.Page}, "id")
	rows, err := c.query(`SELECT `+requestCols+` FROM quota_requests`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.QuotaRequest, error) { return scanRequest(r) })
}

// requestLockKey namespaces the advisory locks PendingQuotaRequests takes
// on PostgreSQL: "qreq" in ASCII.
const requestLockKey = 0x71726571

func (c *conn) PendingQuotaRequests(userID string) (int, error) {
	// SQLite write transactions already run one at a time (BEGIN
	// IMMEDIATE). On PostgreSQL two could both count n-1 and both insert:
	// a lock per user, held to the end of the transaction, orders them.
	if c.d.dollar {
		if _, err := c.exec(`SELECT pg_advisory_xact_lock(?, hashtext(?))`, requestLockKey, userID); err != nil {
			return 0, err
		}
	}
	var n int
	err := c.queryRow(`SELECT COUNT(*) FROM quota_requests WHERE requested_by = ? AND status = ?`, userID, policy.RequestPending).Scan(&n)
	if err != nil {
		return 0, c.wrap(err)
	}
	return n, nil
}

func (c *conn) DecideQuotaRequest(q *policy.QuotaRequest) error {
	res, err := c.exec(`UPDATE quota_requests SET status = ?, decided_by = ?, decided_at = ?, note = ?, granted_amount = ?,
		grant_id = ?, expires_at = ? WHERE id = ? AND status = ?`,
		q.Status, q.DecidedBy, nullMicros(q.DecidedAt), q.Note, q.GrantedAmount, q.GrantID, nullMicros(q.ExpiresAt),
		q.ID, policy.RequestPending)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return errs.Wrap(err, "rows affected")
	}
	if n == 0 {
		// Decided meanwhile by someone else (or gone): the first decision
		// stands.
		return errs.E(errs.Conflict, "quota request %s is no longer pending", q.ID)
	}
	return nil
}
