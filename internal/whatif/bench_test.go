package whatif_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/whatif"
)

// BenchmarkReplay replays a day of 100,000 model calls by 200 users in 10
// projects of one tenant (and 2,000 runs) against a draft with a rate,
// budgets and a concurrency limit that deny part of them, reading from an
// in-memory ledger: the engine's and the replay's cost, not the store's.
func BenchmarkReplay(b *testing.B) {
	const events, runs, users, projects = 100_000, 2_000, 200, 10
	d := &policy.Data{Tree: policy.Tree{Tenants: []policy.TreeTenant{{ID: tenant, Name: "acme", Timezone: "Europe/Berlin"}}}}
	for p := range projects {
		id := fmt.Sprintf("prj_%d", p)
		d.Projects = append(d.Projects, policy.TreeProject{ID: id, TenantID: tenant, Name: id})
		d.Scopes = append(d.Scopes, &policy.ScopeLimits{Scope: "project/" + id, TenantID: tenant,
			Limits: specB(b, `{"tokens":"1000000/day","requests":"600/min","concurrency":3}`)})
	}
	d.Scopes = append(d.Scopes, &policy.ScopeLimits{Scope: "tenant/" + tenant, TenantID: tenant, Limits: specB(b, `{"tokens":"8000000/day"}`)})
	draft := &whatif.Draft{Snapshot: policy.NewSnapshot(d, policy.Spec{}, 1, day)}
	l := &ledger{}
	step := 24 * time.Hour / events
	for i := range events {
		u, p := fmt.Sprintf("usr_%d", i%users), fmt.Sprintf("prj_%d", i%projects)
		l.events = append(l.events, usage.Event{ID: fmt.Sprint(i), At: day.Add(time.Duration(i) * step), TenantID: tenant, UserID: u,
			ProjectID: p, Kind: "model_call", Model: "m", Requests: int64(i % 2), InputTokens: 600, OutputTokens: 400})
	}
	rstep := 24 * time.Hour / runs
	for i := range runs {
		start := day.Add(time.Duration(i) * rstep)
		l.runs = append(l.runs, whatif.Run{ID: fmt.Sprint(i), TenantID: tenant, UserID: fmt.Sprintf("usr_%d", i%users),
			ProjectID: fmt.Sprintf("prj_%d", i%projects), Start: start, End: start.Add(5 * time.Minute)})
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	var rep *whatif.Report
	for b.Loop() {
		var err error
		rep, err = whatif.Replay(ctx, l, draft, tenant, 24*time.Hour, day.Add(24*time.Hour), whatif.Options{})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(events+runs)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if rep.Replayed.Denied == 0 || rep.Replayed.Admitted == 0 {
		b.Fatalf("the draft should deny part of the ledger: %+v", rep.Replayed)
	}
}

func specB(b *testing.B, s string) policy.Spec {
	var out policy.Spec
	if err := out.UnmarshalJSON([]byte(s)); err != nil {
		b.Fatal(err)
	}
	return out
}
