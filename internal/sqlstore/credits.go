package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

var (
	_ policy.CreditStore     = (*Store)(nil)
	_ policy.CreditDrawStore = (*Store)(nil)
)

// UpdateCredits runs fn in a read-write transaction. Credit is not part
// of the policy snapshot, so the change counter stays.
func (s *Store) UpdateCredits(ctx context.Context, fn func(policy.CreditTx) error) error {
	return s.tx(ctx, s.w, func(tx *sql.Tx) error { return fn(&conn{ctx: ctx, tx: tx, d: s.d}) })
}

// ViewCredits runs fn in a read-only transaction.
func (s *Store) ViewCredits(ctx context.Context, fn func(policy.CreditTx) error) error {
	return s.tx(ctx, s.r, func(tx *sql.Tx) error { return fn(&conn{ctx: ctx, tx: tx, d: s.d}) })
}

// AddCredit adds to the balance in one statement, so concurrent changes of
// one balance never lose each other's (the row lock orders them on
// PostgreSQL; SQLite has one writer).
func (c *conn) AddCredit(e *policy.CreditEntry) error {
	err := c.queryRow(`INSERT INTO credit_balances (scope, tenant_id, tokens, cost_micros, updated_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (scope) DO UPDATE SET tokens = credit_balances.tokens + excluded.tokens,
		cost_micros = credit_balances.cost_micros + excluded.cost_micros, updated_at = excluded.updated_at
		RETURNING tokens, cost_micros`,
		e.Scope, e.TenantID, e.Tokens, e.CostMicros, micros(e.At)).Scan(&e.BalanceTokens, &e.BalanceCostMicros)
	if err != nil {
		return c.wrap(err)
	}
	_, err = c.exec(`INSERT INTO credit_entries (id, scope, tenant_id, kind, tokens, cost_micros, balance_tokens, balance_cost_micros,
		note, actor, code_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, e.Scope, e.TenantID, e.Kind, e.Tokens, e.CostMicros, e.BalanceTokens, e.BalanceCostMicros, e.Note, e.Actor, e.CodeID, micros(e.At))
	return err
}

func (c *conn) CreditBalance(scope string) (*policy.CreditBalance, error) {
	b := &policy.CreditBalance{Scope: scope}
	var at int64
	err := c.queryRow(`SELECT tenant_id, tokens, cost_micros, updated_at FROM credit_balances WHERE scope = ?`, scope).
		Scan(&b.TenantID, &b.Tokens, &b.CostMicros, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return b, nil
	}
	if err != nil {
		return nil, c.wrap(err)
	}
	t := fromMicros(at)
	b.UpdatedAt = &t
	return b, nil
}

func (c *conn) CreditBalancesOf(scopes []string) ([]*policy.CreditBalance, error) {
	if len(scopes) == 0 {
		return nil, nil
	}
	args := make([]any, len(scopes))
	for i, s := range scopes {
		args[i] = s
	}
	rows, err := c.query(`SELECT scope, tenant_id, tokens, cost_micros, updated_at FROM credit_balances WHERE scope IN (?`+
		strings.Repeat(", ?", len(scopes)-1)+`) ORDER BY scope`, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.CreditBalance, error) {
		b := &policy.CreditBalance{}
		var at int64
		err := r.Scan(&b.Scope, &b.TenantID, &b.Tokens, &b.CostMicros, &at)
		t := fromMicros(at)
		b.UpdatedAt, b.CostUSD = &t, float64(b.CostMicros)/1e6
		return b, err
	})
}

func (c *conn) CreditEntries(scope string, page tenancy.Page) ([]*policy.CreditEntry, error) {
	var w where
	w.eq("scope", scope)
	q, args := w.sql(tenancy.Filter{Page: page}, "id")
	rows, err := c.query(`SELECT id, scope, tenant_id, kind, tokens, cost_micros, balance_tokens, balance_cost_micros, note, actor,
		code_id, at FROM credit_entries`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.CreditEntry, error) {
		var e policy.CreditEntry
		var at int64
		err := r.Scan(&e.ID, &e.Scope, &e.TenantID, &e.Kind, &e.Tokens, &e.CostMicros, &e.BalanceTokens, &e.BalanceCostMicros,
			&e.Note, &e.Actor, &e.CodeID, &at)
		e.At = fromMicros(at)
		return &e, err
	})
}

const codeCols = `id, tenant_id, scope, prefix, hash, tokens, cost_micros, note, created_by, created_at, expires_at,
	redeemed_by, redeemed_scope, redeemed_at`

func scanCode(r scanner) (*policy.CreditCode, error) {
	var cc policy.CreditCode
	var created int64
	var expires, redeemed sql.NullInt64
	if err := r.Scan(&cc.ID, &cc.TenantID, &cc.Scope, &cc.Prefix, &cc.Hash, &cc.Tokens, &cc.CostMicros, &cc.Note, &cc.CreatedBy,
		&created, &expires, &cc.RedeemedBy, &cc.RedeemedScope, &redeemed); err != nil {
		return nil, err
	}
	cc.CreatedAt, cc.ExpiresAt, cc.RedeemedAt = fromMicros(created), fromNullMicros(expires), fromNullMicros(redeemed)
	return &cc, nil
}

func (c *conn) InsertCreditCode(cc *policy.CreditCode) error {
	_, err := c.exec(`INSERT INTO credit_codes (`+codeCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		cc.ID, cc.TenantID, cc.Scope, cc.Prefix, cc.Hash, cc.Tokens, cc.CostMicros, cc.Note, cc.CreatedBy, micros(cc.CreatedAt),
		nullMicros(cc.ExpiresAt), cc.RedeemedBy, cc.RedeemedScope, nullMicros(cc.RedeemedAt))
	return err
}

func (c *conn) CreditCodeByHash(hash string) (*policy.CreditCode, error) {
	return one(c.queryRow(`SELECT `+codeCols+` FROM credit_codes WHERE hash = ?`, hash), scanCode, "redeem code")
}

func (c *conn) CreditCodes(tenantID string, page tenancy.Page) ([]*policy.CreditCode, error) {
	var w where
	w.eq("tenant_id", tenantID)
	q, args := w.sql(tenancy.Filter{Page: page}, "id")
	rows, err := c.query(`SELECT `+codeCols+` FROM credit_codes`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.CreditCode, error) { return scanCode(r) })
}

func (c *conn) RedeemCreditCode(cc *policy.CreditCode) error {
	res, err := c.exec(`UPDATE credit_codes SET redeemed_by = ?, redeemed_scope = ?, redeemed_at = ? WHERE id = ? AND redeemed_at IS NULL`,
		cc.RedeemedBy, cc.RedeemedScope, nullMicros(cc.RedeemedAt), cc.ID)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return errs.Wrap(err, "rows affected")
	}
	if n == 0 {
		return errs.Field(errs.Conflict, "code", "this code was already redeemed")
	}
	return nil
}

// ChangeCredits runs fn in a write transaction that counts as a policy
// change: a credit draw inserts a grant, which every instance must load.
func (s *Store) ChangeCredits(ctx context.Context, fn func(policy.CreditDrawTx) error) error {
	return s.change(ctx, func(c *conn) error { return fn(c) })
}

// UpdateCreditDraws runs fn in a write transaction.
func (s *Store) UpdateCreditDraws(ctx context.Context, fn func(policy.CreditDrawTx) error) error {
	return s.tx(ctx, s.w, func(tx *sql.Tx) error { return fn(&conn{ctx: ctx, tx: tx, d: s.d}) })
}

func (c *conn) InsertCreditDraw(d *policy.CreditDrawRecord) error {
	_, err := c.exec(`INSERT INTO credit_draws (id, scope, tenant_id, dimension, period, amount, base_limit, grant_id, window_end, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		d.ID, d.Scope, d.TenantID, d.Dimension, d.Period, d.Amount, d.BaseLimit, d.GrantID, micros(d.End), micros(d.CreatedAt))
	return err
}

func (c *conn) CreditDrawsDue(t time.Time, limit int) ([]*policy.CreditDrawRecord, error) {
	rows, err := c.query(`SELECT id, scope, tenant_id, dimension, period, amount, base_limit, grant_id, window_end, created_at
		FROM credit_draws WHERE settled_at IS NULL AND window_end < ? ORDER BY window_end, id LIMIT ?`, micros(t), limit)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.CreditDrawRecord, error) {
		var d policy.CreditDrawRecord
		var end, at int64
		err := r.Scan(&d.ID, &d.Scope, &d.TenantID, &d.Dimension, &d.Period, &d.Amount, &d.BaseLimit, &d.GrantID, &end, &at)
		d.End, d.CreatedAt = fromMicros(end), fromMicros(at)
		return &d, err
	})
}

func (c *conn) SettleCreditDraws(scope, dimension, period string, at time.Time) (n int, total, base int64, err error) {
	rows, err := c.query(`UPDATE credit_draws SET settled_at = ? WHERE scope = ? AND dimension = ? AND period = ? AND settled_at IS NULL
		RETURNING amount, base_limit`, micros(at), scope, dimension, period)
	if err != nil {
		return 0, 0, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var amount, b int64
		if err := rows.Scan(&amount, &b); err != nil {
			return 0, 0, 0, c.wrap(err)
		}
		if n == 0 || b < base {
			base = b
		}
		n++
		total += amount
	}
	if err := rows.Err(); err != nil {
		return 0, 0, 0, c.wrap(err)
	}
	return n, total, base, nil
}
