package quotatest

import (
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// BenchChains builds 100,000 users' chains: global → 20 tenants → 200
// departments → 2,000 projects, each user a member of one project, so
// every chain is global, tenant, department, project, user, membership.
// Every scope limits every dimension, generously enough that nothing is
// denied: the benchmarks measure the admitted path.
func BenchChains(users int) [][]quota.Scope {
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
