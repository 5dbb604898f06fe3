package leasequota_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
)

// TestChainTenants: with ChainTenants a chain scope's state lands on the
// tag of its quota.Scope.Tenant, the global scope's on the global tag; a
// key met outside a chain is resolved by Tenant, whose error fails the
// call rather than guess a tag (a second tag would be a second counter).
func TestChainTenants(t *testing.T) {
	ctx := t.Context()
	st := newStore(t, newClient(t), nil, leasequota.Options{})
	resolverErr := errors.New("database away")
	asked := map[string]int{}
	e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Instance: "i1", ChainTenants: true,
		Tenant: func(key string) (string, error) {
			asked[key]++
			if key == "user/usr_broken" {
				return "", resolverErr
			}
			return "acme", nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	l := &quota.Limits{TokensDay: quota.AtMost(1000)}
	chain := []quota.Scope{{Key: "global", Limits: l}, {Key: "tenant/acme", Limits: l, Tenant: "acme"}, {Key: "user/usr_a", Limits: l, Tenant: "acme"}}
	tk, err := e.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Settle(ctx, tk.ID, quota.Usage{InputTokens: 60}); err != nil {
		t.Fatal(err)
	}
	for _, sc := range []leasequota.Scope{{Key: "global"}, {Tenant: "acme", Key: "tenant/acme"}, {Tenant: "acme", Key: "user/usr_a"}} {
		s := mustRead(t, st, sc)
		if s.Meters[leasequota.MeterTokensDay].Used < 60 {
			t.Errorf("%s on tag %q: %d tokens used, want at least the 60 settled", sc.Key, sc.Tenant, s.Meters[leasequota.MeterTokensDay].Used)
		}
		other := sc
		other.Tenant = map[string]string{"": "acme", "acme": ""}[sc.Tenant]
		if s := mustRead(t, st, other); s.Meters[leasequota.MeterTokensDay].Used != 0 {
			t.Errorf("%s also counted on tag %q", sc.Key, other.Tenant)
		}
	}
	if len(asked) != 0 {
		t.Errorf("the resolver was asked %v for chain scopes, want nothing", asked)
	}
	// A key this engine holds: its tag, no question. One it does not: asked.
	if u, err := e.Use(ctx, "user/usr_a"); err != nil || u.TokensDay.Used != 60 {
		t.Errorf("Use(user/usr_a) = %+v, %v; want 60 used", u.TokensDay, err)
	}
	if _, err := e.Use(ctx, "user/usr_b"); err != nil || asked["user/usr_b"] != 1 {
		t.Errorf("Use(user/usr_b): %v, resolver asked %d times; want it asked once", err, asked["user/usr_b"])
	}
	if _, err := e.Use(ctx, "user/usr_broken"); !errors.Is(err, resolverErr) || !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("Use with the resolver failing: %v, want its error, as unavailable", err)
	}
	if err := e.Restore(context.Background(), "user/usr_broken", quota.DimTokens, quota.WindowDay, tk.ExpiresAt, 5); !errors.Is(err, resolverErr) {
		t.Errorf("Restore with the resolver failing: %v, want its error", err)
	}
}
