// Package session owns the web console's sign-in sessions: a session is
// made by signing in with an API key, is known to the browser only by a
// random token (the store keeps its SHA-256), carries a per-session CSRF
// secret, expires after a fixed time, and ends when its owner signs out or
// when the API key it was made with is revoked or expires.
package session

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Session is one signed-in browser. The token that names it is never
// stored: TokenHash is its SHA-256.
type Session struct {
	ID        string
	TokenHash []byte
	UserID    string
	TenantID  string // empty for a platform admin
	KeyID     string // the API key signed in with
	// CSRF is the secret every form of the session carries and every
	// change is checked against.
	CSRF      string
	CreatedAt time.Time
	ExpiresAt time.Time
	RevokedAt *time.Time
}

// Store persists sessions (sqlstore.Store).
type Store interface {
	InsertConsoleSession(ctx context.Context, s *Session) error
	// ConsoleSession finds a session by its token's hash; errs.NotFound
	// when there is none.
	ConsoleSession(ctx context.Context, tokenHash []byte) (*Session, error)
	// RevokeConsoleSession marks a session ended at at (once).
	RevokeConsoleSession(ctx context.Context, id string, at time.Time) error
	// DeleteConsoleSessions removes the sessions that expired or were
	// revoked before before, and says how many.
	DeleteConsoleSessions(ctx context.Context, before time.Time) (int64, error)
}

// Keys resolves the key a session was made with (tenancy.Service).
type Keys interface {
	Authenticate(ctx context.Context, secret string) (tenancy.Principal, error)
	KeyPrincipal(ctx context.Context, keyID string) (tenancy.Principal, error)
}

// DefaultTTL is how long a session lasts when the configuration says
// nothing.
const DefaultTTL = 12 * time.Hour

// keep is how long ended sessions stay in the store before a sign-in
// sweeps them: long enough to tell "ended" from "never existed" in a log.
const keep = 24 * time.Hour

// Manager makes, resolves and ends sessions.
type Manager struct {
	store Store
	keys  Keys
	ttl   time.Duration
	now   func() time.Time
}

// NewManager returns a manager over store; ttl 0 is DefaultTTL, now nil is
// time.Now.
func NewManager(store Store, keys Keys, ttl time.Duration, now func() time.Time) *Manager {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Manager{store: store, keys: keys, ttl: ttl, now: now}
}

// TTL is how long a new session lasts.
func (m *Manager) TTL() time.Duration { return m.ttl }

// random returns n random bytes, base64url.
func random(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("session: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Hash is the stored form of a session token.
func Hash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// SignIn resolves secret as the API resolves a key and starts a session
// for its principal; it returns the session with the token the browser
// keeps (shown this once, never stored).
func (m *Manager) SignIn(ctx context.Context, secret string) (*Session, string, tenancy.Principal, error) {
	p, err := m.keys.Authenticate(ctx, secret)
	if err != nil {
		return nil, "", p, err
	}
	now := m.now().UTC().Truncate(time.Microsecond)
	// Ended sessions go now and then; a sign-in is the natural moment.
	if _, err := m.store.DeleteConsoleSessions(ctx, now.Add(-keep)); err != nil {
		return nil, "", p, err
	}
	token := random(32)
	s := &Session{ID: id.NewAt("ses", now), TokenHash: Hash(token), UserID: p.UserID, TenantID: p.TenantID, KeyID: p.KeyID,
		CSRF: random(32), CreatedAt: now, ExpiresAt: now.Add(m.ttl)}
	if err := m.store.InsertConsoleSession(ctx, s); err != nil {
		return nil, "", p, err
	}
	return s, token, p, nil
}

// ErrEnded is the answer for a token that names no live session.
var ErrEnded = errs.E(errs.Unauthorized, "your console session has ended; sign in again")

// Resolve returns the live session a token names and the principal it
// acts as, read afresh: a revoked or expired key, or a user whose role
// changed, shows at once. A session whose key no longer authenticates is
// ended here.
func (m *Manager) Resolve(ctx context.Context, token string) (*Session, tenancy.Principal, error) {
	if token == "" || len(token) > 128 {
		return nil, tenancy.Principal{}, ErrEnded
	}
	s, err := m.store.ConsoleSession(ctx, Hash(token))
	if errs.Is(err, errs.NotFound) {
		return nil, tenancy.Principal{}, ErrEnded
	} else if err != nil {
		return nil, tenancy.Principal{}, err
	}
	now := m.now()
	if s.RevokedAt != nil || !now.Before(s.ExpiresAt) {
		return nil, tenancy.Principal{}, ErrEnded
	}
	p, err := m.keys.KeyPrincipal(ctx, s.KeyID)
	if errs.Is(err, errs.Unauthorized) || (err == nil && p.UserID != s.UserID) {
		if rerr := m.store.RevokeConsoleSession(ctx, s.ID, now.UTC()); rerr != nil {
			return nil, tenancy.Principal{}, rerr
		}
		return nil, tenancy.Principal{}, ErrEnded
	} else if err != nil {
		return nil, tenancy.Principal{}, err
	}
	return s, p, nil
}

// SignOut ends the session.
func (m *Manager) SignOut(ctx context.Context, s *Session) error {
	return m.store.RevokeConsoleSession(ctx, s.ID, m.now().UTC())
}

// CheckCSRF reports whether token is the session's CSRF secret, in
// constant time.
func (s *Session) CheckCSRF(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.CSRF)) == 1
}

// NewToken returns a fresh random token (the sign-in form's CSRF token,
// before any session exists).
func NewToken() string { return random(32) }
