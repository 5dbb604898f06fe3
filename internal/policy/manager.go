package policy

import (
	"context"
	"encoding/json"
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

	snap     atomic.Pointer[Snapshot]
	mu       sync.Mutex // serialises reloads
	reloadMu sync.Mutex // collapses reloads on a miss
	version  atomic.Int64

	// OnReload, when set, is told each new snapshot (metrics, logs).
	OnReload func(*Snapshot)
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
	var d *Data
	err := m.store.ViewPolicy(ctx, func(tx Tx) (err error) {
		d, err = LoadData(tx, m.now())
		return err
	})
	if err != nil {
		return err
	}
	m.snap.Store(NewSnapshot(d, m.defaultGlobal, m.version.Add(1), m.now()))
	if m.OnReload != nil {
		m.OnReload(m.snap.Load())
	}
	return nil
}

// ReloadIfOlder reloads unless someone already replaced snapshot s since
// the caller got it, so a burst of misses costs one reload.
func (m *Manager) ReloadIfOlder(ctx context.Context, s *Snapshot) error {
	if m.snap.Load() != s {
		return nil
	}
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	if m.snap.Load() != s {
		return nil
	}
	return m.Reload(ctx)
}

// platformSetting is the settings row holding Platform as JSON.
const platformSetting = "platform"

// Watch reloads the snapshot whenever version (the store's change counter)
// moves, checking every interval, until ctx ends. This is how a change made
// on one instance reaches every other within a second. A failing check is
// logged once per outage; the last snapshot stays in force.
func (m *Manager) Watch(ctx context.Context, interval time.Duration, version func(context.Context) (int64, error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var seen int64 = -1
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v, err := version(ctx)
		if err != nil {
			if !failing && ctx.Err() == nil {
				m.log.Error("policy watch: cannot read the change counter; keeping the policy in force", slog.String("error", err.Error()))
			}
			failing = true
			continue
		}
		if failing {
			m.log.Info("policy watch: store reachable again")
			failing = false
		}
		if v == seen {
			continue
		}
		// The first reading reloads too: a change may have landed between
		// the start-up load and now.
		if err := m.Reload(ctx); err != nil {
			if ctx.Err() == nil {
				m.log.Error("policy watch: reload failed; keeping the policy in force", slog.String("error", err.Error()))
			}
			continue
		}
		seen = v
	}
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

// LoadData reads what a snapshot is made of in tx: the tree, the plans,
// the scopes' limits, the grants active at now and the platform settings.
func LoadData(tx Tx, now time.Time) (*Data, error) {
	d := &Data{}
	tree, err := tx.Tree()
	if err != nil {
		return nil, err
	}
	d.Tree = *tree
	if d.Plans, err = tx.Plans(); err != nil {
		return nil, err
	}
	if d.Scopes, err = tx.ListScopeLimits(""); err != nil {
		return nil, err
	}
	if d.Grants, err = tx.Grants("", "", now); err != nil {
		return nil, err
	}
	raw, err := tx.Setting(platformSetting)
	if err != nil || raw == "" {
		return d, err
	}
	return d, json.Unmarshal([]byte(raw), &d.Platform)
}
