package sqlstore

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/errs"
)

// TestConsoleSessions runs the console session queries on both engines.
func TestConsoleSessions(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func(*testing.T) *Store) {
		testConsoleSessions(t, open(t))
	})
}

func testConsoleSessions(t *testing.T, s *Store) {
	ctx := context.Background()
	at := time.Date(2026, 11, 20, 3, 0, 0, 123000, time.UTC)
	a := &session.Session{ID: "ses_a", TokenHash: session.Hash("token-a"), UserID: "usr_1", TenantID: "ten_1", KeyID: "key_1",
		CSRF: "csrf-a", CreatedAt: at, ExpiresAt: at.Add(12 * time.Hour)}
	b := &session.Session{ID: "ses_b", TokenHash: session.Hash("token-b"), UserID: "usr_2", KeyID: "key_2",
		CSRF: "csrf-b", CreatedAt: at, ExpiresAt: at.Add(time.Hour)}
	for _, se := range []*session.Session{a, b} {
		if err := s.InsertConsoleSession(ctx, se); err != nil {
			t.Fatalf("InsertConsoleSession = %v, want nil", err)
		}
	}
	got, err := s.ConsoleSession(ctx, session.Hash("token-a"))
	if err != nil {
		t.Fatalf("ConsoleSession = %v, want nil", err)
	}
	same(t, got, a)
	if _, err := s.ConsoleSession(ctx, session.Hash("token-c")); !errs.Is(err, errs.NotFound) {
		t.Fatalf("ConsoleSession(unknown) = %v, want not found", err)
	}
	if err := s.RevokeConsoleSession(ctx, a.ID, at.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeConsoleSession(ctx, a.ID, at.Add(time.Hour)); err != nil { // keeps the first end
		t.Fatal(err)
	}
	got, _ = s.ConsoleSession(ctx, session.Hash("token-a"))
	if got.RevokedAt == nil || !got.RevokedAt.Equal(at.Add(time.Minute)) {
		t.Fatalf("revoked at %v, want %v", got.RevokedAt, at.Add(time.Minute))
	}
	// b expired at +1h, a was revoked at +1m: a sweep at +30m takes a only.
	n, err := s.DeleteConsoleSessions(ctx, at.Add(30*time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("DeleteConsoleSessions(+30m) = %d, %v, want 1", n, err)
	}
	if _, err := s.ConsoleSession(ctx, session.Hash("token-b")); err != nil {
		t.Fatalf("b after the sweep: %v, want it kept", err)
	}
	if n, err := s.DeleteConsoleSessions(ctx, at.Add(2*time.Hour)); err != nil || n != 1 {
		t.Fatalf("DeleteConsoleSessions(+2h) = %d, %v, want 1", n, err)
	}
}
