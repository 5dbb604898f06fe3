package metering_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
)

// The header names the budget most used after the admission, in percent
// with one decimal, and is absent when no budget limits the chain.
func TestQuotaUsedHeader(t *testing.T) {
	now := time.Date(2026, 5, 14, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name, tenant, user string
		ask                quota.Ask
		want               string
	}{
		{"day tightest", `{"tokens":["1000/day","100000/month"]}`, `{}`, quota.Ask{Tokens: 850}, "tokens/day=85.0"},
		{"month tightest", `{"tokens":["1000/day","900/month"]}`, `{}`, quota.Ask{Tokens: 300}, "tokens/month=33.3"},
		{"cost", `{"tokens":"1000000/month","cost":"$10/month"}`, `{}`, quota.Ask{Tokens: 10, CostMicros: 5_000_000}, "cost/month=50.0"},
		{"inner scope", `{"tokens":"1000000/day"}`, `{"gpu_seconds":"100/month"}`, quota.Ask{GPUMillis: 12_340}, "gpu_seconds/month=12.3"},
		{"no budget", `{"requests":"10/min"}`, `{}`, quota.Ask{Requests: 1}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var ts, us policy.Spec
			if err := json.Unmarshal([]byte(c.tenant), &ts); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(c.user), &us); err != nil {
				t.Fatal(err)
			}
			snap := policy.NewSnapshot(&policy.Data{
				Tree: policy.Tree{Tenants: []policy.TreeTenant{{ID: "ten_1", Name: "t", Timezone: "UTC"}}},
				Scopes: []*policy.ScopeLimits{{Scope: "tenant/ten_1", TenantID: "ten_1", Limits: ts},
					{Scope: "user/usr_1", TenantID: "ten_1", Limits: us}},
			}, policy.Spec{}, 1, now)
			chain, err := snap.ChainFor("ten_1", "usr_1", "", "")
			if err != nil {
				t.Fatal(err)
			}
			eng := quota.NewMemory(quota.Options{Now: func() time.Time { return now }})
			defer eng.Close()
			tk, err := eng.Acquire(context.Background(), quota.Request{Chain: chain.Scopes, Ask: c.ask})
			if err != nil {
				t.Fatal(err)
			}
			if got := metering.QuotaUsed(&tk); got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
			if n := testing.AllocsPerRun(100, func() { metering.QuotaUsed(&tk) }); n > 1 {
				t.Errorf("allocations: %v, want at most 1 (the string)", n)
			}
		})
	}
}
