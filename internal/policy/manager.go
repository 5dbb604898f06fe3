package policy

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Manager holds the current snapshot and rebuilds it when policy or the
// tree changes, or when a grant expires. Readers never block: they get the
// snapshot of the moment.
type Manager struct {
	store         Store
	defaultGlobal Spec
	log           *slog.Logger
	now           func() time.Time

	snap    atomic.Pointer[Snapshot]
	mu      sync.Mutex // serialises reloads
	version atomic.Int64
}

// NewManager returns a manager; call Reload before Current.
func NewManager(store Store, defaultGlobal Spec, log *slog.Logger) *Manager {
	return &Manager{store: store, defaultGlobal: defaultGlobal, log: log, now: time.Now}
}

// SetClock replaces the manager's clock (tests).
func (m *Manager) SetClock(now func() time.Time) { m.now = now }

// Reload rebuilds the snapshot from the store.
func (m *Manager) Reload(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := &Data{}
	err := m.store.ViewPolicy(ctx, func(tx Tx) error {
		tree, err := tx.Tree()
		if err != nil {
			return err
		}
		d.Tree = *tree
		if d.Plans, err = tx.Plans(); err != nil {
			return err
		}
		if d.Scopes, err = tx.ListScopeLimits(""); err != nil {
			return err
		}
		d.Grants, err = tx.Grants("", "", m.now())
		return err
	})
	if err != nil {
		return err
	}
	m.snap.Store(NewSnapshot(d, m.defaultGlobal, m.version.Add(1), m.now()))
	return nil
}

// Current returns the snapshot in force. When a grant in it has expired,
// it first rebuilds the snapshot from the same data without that grant (no
// store access needed), so an expired grant never raises a limit.
func (m *Manager) Current() *Snapshot {
	s := m.snap.Load()
	if s == nil {
		return NewSnapshot(&Data{}, m.defaultGlobal, 0, m.now())
	}
	now := m.now()
	if s.ValidUntil.IsZero() || now.Before(s.ValidUntil) {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur := m.snap.Load(); cur != s {
		return cur // another caller rebuilt it
	}
	next := NewSnapshot(s.data, m.defaultGlobal, m.version.Add(1), now)
	m.snap.Store(next)
	return next
}

// DefaultGlobal returns the global limits used when no admin set any.
func (m *Manager) DefaultGlobal() Spec { return m.defaultGlobal }
