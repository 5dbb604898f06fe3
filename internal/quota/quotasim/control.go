package quotasim

import (
	"context"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Uncharged returns the control: engines that decide on local counters as
// if each held a lease on every scope's whole limit, a lease never charged
// to the shared store up front, and that charge the store only when a
// ticket settles. Any of them alone is exact; N of them admit up to N times
// every limit, and a harness that does not catch them proves nothing.
// Tickets are settled wherever they were issued (the factory's instances
// share a registry), so that the control fails by over-admitting only.
func Uncharged() Factory {
	reg := &registry{issued: map[string]uncharged{}}
	return func(n Node) quota.Backend {
		return &unchargedEngine{n: n, local: quota.NewMemory(quota.Options{Now: n.Now}), reg: reg}
	}
}

type registry struct {
	mu     sync.Mutex
	issued map[string]uncharged
}

type uncharged struct {
	local *quota.Memory
	chain []quota.Scope
}

func (r *registry) get(id string) (uncharged, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.issued[id]
	return u, ok
}

type unchargedEngine struct {
	n     Node
	local *quota.Memory
	reg   *registry
}

func (e *unchargedEngine) Acquire(ctx context.Context, r quota.Request) (quota.Ticket, error) {
	t, err := e.local.Acquire(ctx, r)
	if err == nil {
		e.reg.mu.Lock()
		e.reg.issued[t.ID] = uncharged{e.local, r.Chain}
		e.reg.mu.Unlock()
	}
	return t, err
}

func (e *unchargedEngine) Settle(ctx context.Context, id string, u quota.Usage) (quota.Settlement, error) {
	is, ok := e.reg.get(id)
	if !ok {
		return quota.Settlement{}, quota.ErrUnknownTicket
	}
	s, err := is.local.Settle(ctx, id, u)
	if err == nil && !s.Replay {
		e.n.Shared.Charge(ctx, "settle:"+id, is.chain, u, s.SettledAt)
	}
	return s, err
}

func (e *unchargedEngine) Heartbeat(ctx context.Context, id string, ttl time.Duration) (time.Time, error) {
	is, ok := e.reg.get(id)
	if !ok {
		return time.Time{}, quota.ErrUnknownTicket
	}
	return is.local.Heartbeat(ctx, id, ttl)
}

func (e *unchargedEngine) Lookup(ctx context.Context, id string) (quota.TicketInfo, error) {
	is, ok := e.reg.get(id)
	if !ok {
		return quota.TicketInfo{}, quota.ErrUnknownTicket
	}
	return is.local.Lookup(ctx, id)
}

func (e *unchargedEngine) Use(ctx context.Context, key string) (quota.ScopeUse, error) {
	return e.local.Use(ctx, key)
}

func (e *unchargedEngine) Restore(ctx context.Context, key string, d quota.Dimension, w quota.Window, start time.Time, used int64) error {
	return e.n.Shared.Restore(ctx, key, d, w, start, used)
}

func (e *unchargedEngine) Close() error { return e.local.Close() }
