package leasequota_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
)

// downLeases is a lease store that can be switched off: every call fails
// as a Redis that does not answer.
type downLeases struct {
	*leasequota.Store
	down atomic.Bool
}

func (d *downLeases) err(op string) error {
	if d.down.Load() {
		return fmt.Errorf("%s: %w", op, leasequota.ErrUnavailable)
	}
	return nil
}

func (d *downLeases) Grant(ctx context.Context, id, inst string, sc leasequota.Scope, ttl time.Duration, wants []leasequota.Want) (leasequota.GrantResult, error) {
	if err := d.err("grant"); err != nil {
		return leasequota.GrantResult{}, err
	}
	return d.Store.Grant(ctx, id, inst, sc, ttl, wants)
}

func (d *downLeases) Return(ctx context.Context, id, inst string, sc leasequota.Scope, gives []leasequota.Give) (leasequota.ReturnResult, error) {
	if err := d.err("return"); err != nil {
		return leasequota.ReturnResult{}, err
	}
	return d.Store.Return(ctx, id, inst, sc, gives)
}

func (d *downLeases) Renew(ctx context.Context, inst, tenant string, ttl time.Duration, rs []leasequota.Renewal) (leasequota.RenewResult, error) {
	if err := d.err("renew"); err != nil {
		return leasequota.RenewResult{}, err
	}
	return d.Store.Renew(ctx, inst, tenant, ttl, rs)
}

// noHeld hides the engine's AcquireHeld: the control, a shared backend
// whose leases a failover cannot decide on.
type noHeld struct{ quota.SharedBackend }

// TestOutageSpendsHeldLeases: a scope with on_outage: deny, whose lease
// the engine holds when the store goes away. Degraded, the failover still
// admits on what the lease holds (counted in the store already), and
// denies once it is spent; what it admitted is at most what the lease
// held. The control, a failover that cannot see the leases, denies at
// once.
func TestOutageSpendsHeldLeases(t *testing.T) {
	for _, held := range []bool{true, false} {
		name := "held"
		if !held {
			name = "control"
		}
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			st := &downLeases{Store: newStore(t, newClient(t), nil, leasequota.Options{})}
			e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Instance: "i1"})
			if err != nil {
				t.Fatal(err)
			}
			var shared quota.SharedBackend = e
			if !held {
				shared = noHeld{e}
			}
			f := quota.NewFailover(shared, quota.FailoverOptions{
				ProbeInterval: time.Hour, // stays degraded
				Probe:         func(context.Context) error { return st.err("probe") },
				TripAfter:     1,
			})
			t.Cleanup(func() { f.Close(); st.down.Store(false); e.Close() })
			strict := &quota.Limits{TokensDay: quota.AtMost(100000), OnOutage: quota.OutageDeny}
			chain := []quota.Scope{{Key: "tenant/ten_held", Limits: strict}}
			ask := quota.Ask{Tokens: 10}
			// Demand: the engine leases ahead of it.
			for range 2000 {
				tk, err := f.Acquire(ctx, quota.Request{Chain: chain, Ask: ask})
				if err != nil {
					t.Fatalf("Acquire before the outage: %v", err)
				}
				if _, err := f.Settle(ctx, tk.ID, quota.Usage{InputTokens: 10}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(50 * time.Millisecond) // a refresh round or so: demand decays
			s := mustRead(t, st.Store, leasequota.Scope{Key: "tenant/ten_held"})
			lease := s.Meters[leasequota.MeterTokensDay].Used - 20000
			if lease < 10 {
				t.Fatalf("the engine holds %d tokens of lease before the outage, want some", lease)
			}

			st.down.Store(true)
			other := []quota.Scope{{Key: "tenant/ten_other", Limits: &quota.Limits{TokensDay: quota.AtMost(100)}}}
			// A call the store must answer: the failover trips (and admits
			// it on a local share).
			f.Acquire(ctx, quota.Request{Chain: other, Ask: ask})
			if !f.Degraded() {
				t.Fatal("not degraded after a failed call with TripAfter 1")
			}
			admitted := int64(0)
			for {
				tk, err := f.Acquire(ctx, quota.Request{Chain: chain, Ask: ask})
				if errors.Is(err, quota.ErrUnavailable) {
					break
				}
				if err != nil {
					t.Fatalf("Acquire degraded: %v", err)
				}
				admitted += tk.Tokens
				if admitted > lease {
					t.Fatalf("admitted %d tokens degraded, more than the lease of %d", admitted, lease)
				}
			}
			t.Logf("lease of %d tokens held; %d admitted on it while the store was away", lease, admitted)
			switch {
			case held && admitted == 0:
				t.Fatalf("nothing admitted on a lease of %d tokens while degraded", lease)
			case !held && admitted != 0:
				t.Fatalf("control: %d admitted under on_outage: deny without the leases", admitted)
			}
		})
	}
}
