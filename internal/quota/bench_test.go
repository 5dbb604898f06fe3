package quota_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// benchChains builds 100,000 users' chains: global → 20 tenants → 200
// departments → 2,000 projects, each user a member of one project, so
// every chain is global, tenant, department, project, user, membership.
// Every scope limits every dimension, generously enough that nothing is
// denied: the benchmark measures the admitted path.
func benchChains(users int) [][]quota.Scope {
	lim := func(scale int64) *quota.Limits {
		return &quota.Limits{
			Requests:        quota.Rate{Limit: 1_000_000 * scale, Period: time.Second},
			TokensRate:      quota.Rate{Limit: 1_000_000_000 * scale, Period: time.Minute},
			TokensDay:       quota.AtMost(1 << 50),
			TokensMonth:     quota.AtMost(1 << 52),
			GPUMillisMonth:  quota.AtMost(1 << 50),
			CostMicrosMonth: quota.AtMost(1 << 50),
			Concurrency:     quota.AtMost(1 << 30),
			Models:          []string{"gpt-4o-mini", "llama3"},
			Caps:            quota.Caps{MemoryPerRun: 1 << 30, RunTimeout: time.Minute, MaxSteps: 100, MaxTokensPerCall: 8192},
		}
	}
	global, tenant, dept, project, user := lim(1000), lim(100), lim(10), lim(5), lim(1)
	shanghai, _ := time.LoadLocation("Asia/Shanghai")
	chains := make([][]quota.Scope, users)
	for u := range chains {
		p := u % 2000
		d := p % 200
		t := d % 20
		loc := time.UTC
		if t%2 == 1 {
			loc = shanghai
		}
		chains[u] = []quota.Scope{
			{Key: "global", Limits: global},
			{Key: fmt.Sprintf("t/ten_%d", t), Limits: tenant, Loc: loc},
			{Key: fmt.Sprintf("d/dep_%d", d), Limits: dept, Loc: loc},
			{Key: fmt.Sprintf("p/prj_%d", p), Limits: project, Loc: loc},
			{Key: fmt.Sprintf("u/usr_%d", u), Limits: user, Loc: loc},
			{Key: fmt.Sprintf("m/usr_%d@prj_%d", u, p), Limits: user, Loc: loc},
		}
	}
	return chains
}

// BenchmarkAcquireSettle measures one admission and its settlement on
// 6-scope chains of 100,000 users picked at random, with every dimension
// limited, on the real clock.
func BenchmarkAcquireSettle(b *testing.B) {
	const users = 100_000
	chains := benchChains(users)
	e := quota.NewMemory(quota.Options{})
	defer e.Close()
	ctx := context.Background()
	ask := quota.Ask{Requests: 1, Tokens: 1200, MinTokens: 100, GPUMillis: 250, CostMicros: 900, Concurrency: true, Model: "llama3"}
	use := quota.Usage{InputTokens: 400, OutputTokens: 300, GPUMillis: 180, CostMicros: 610}
	// Warm up: every scope state exists, as in a running service.
	for _, c := range chains {
		tk, err := e.Acquire(ctx, quota.Request{Chain: c, Ask: ask})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, use); err != nil {
			b.Fatal(err)
		}
	}
	x := uint64(88172645463325252)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		x ^= x << 13 // xorshift: a cheap random user
		x ^= x >> 7
		x ^= x << 17
		r := quota.Request{Chain: chains[x%users], Ask: ask}
		tk, err := e.Acquire(ctx, r)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Settle(ctx, tk.ID, use); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}
