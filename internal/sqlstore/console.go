package sqlstore

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"time"

	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/errs"
)

// ---- web console sessions ----

var _ session.Store = (*Store)(nil)

// InsertConsoleSession implements session.Store.
func (s *Store) InsertConsoleSession(ctx context.Context, se *session.Session) error {
	_, err := s.w.ExecContext(ctx, s.d.rebind(`INSERT INTO console_sessions
		(id, token_hash, user_id, tenant_id, key_id, csrf, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		se.ID, hex.EncodeToString(se.TokenHash), se.UserID, se.TenantID, se.KeyID, se.CSRF,
		micros(se.CreatedAt), micros(se.ExpiresAt), nullMicros(se.RevokedAt))
	if err != nil {
		return dbError(err, "insert console session")
	}
	return nil
}

// ConsoleSession implements session.Store.
func (s *Store) ConsoleSession(ctx context.Context, tokenHash []byte) (*session.Session, error) {
	var se session.Session
	var hash string
	var created, expires int64
	var revoked sql.NullInt64
	err := s.r.QueryRowContext(ctx, s.d.rebind(`SELECT id, token_hash, user_id, tenant_id, key_id, csrf, created_at, expires_at, revoked_at
		FROM console_sessions WHERE token_hash = ?`), hex.EncodeToString(tokenHash)).
		Scan(&se.ID, &hash, &se.UserID, &se.TenantID, &se.KeyID, &se.CSRF, &created, &expires, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errs.E(errs.NotFound, "session not found")
	} else if err != nil {
		return nil, dbError(err, "read console session")
	}
	if se.TokenHash, err = hex.DecodeString(hash); err != nil {
		return nil, errs.Wrap(err, "console session %s: token hash", se.ID)
	}
	se.CreatedAt, se.ExpiresAt, se.RevokedAt = fromMicros(created), fromMicros(expires), fromNullMicros(revoked)
	return &se, nil
}

// RevokeConsoleSession implements session.Store. A session ended already
// keeps its first end.
func (s *Store) RevokeConsoleSession(ctx context.Context, id string, at time.Time) error {
	_, err := s.w.ExecContext(ctx, s.d.rebind(`UPDATE console_sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`), micros(at), id)
	if err != nil {
		return dbError(err, "revoke console session")
	}
	return nil
}

// DeleteConsoleSessions implements session.Store.
func (s *Store) DeleteConsoleSessions(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.w.ExecContext(ctx, s.d.rebind(`DELETE FROM console_sessions WHERE expires_at < ? OR revoked_at < ?`), micros(before), micros(before))
	if err != nil {
		return 0, dbError(err, "delete console sessions")
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, errs.Wrap(err, "rows affected")
	}
	return n, nil
}
