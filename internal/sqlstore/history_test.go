package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"
)

// historyTenant is a tenant of the history tests, with the chains its
// events are charged to.
type historyTenant struct {
	id     string
	loc    *time.Location
	chains [][]string
}

func historyTenants(t *testing.T) []historyTenant {
	t.Helper()
	zone := func(name string) *time.Location {
		loc, err := time.LoadLocation(name)
		if err != nil {
			t.Fatal(err)
		}
		return loc
	}
	return []historyTenant{
		{"ten_a", zone("Asia/Shanghai"), [][]string{
			{"global", "tenant/ten_a", "department/dep_a", "project/prj_a1", "user/usr_a1", "membership/usr_a1@prj_a1", "key/key_a1"},
			{"global", "tenant/ten_a", "department/dep_a", "project/prj_a1", "user/usr_a", "membership/usr_a@prj_a1"},
			{"global", "tenant/ten_a", "project/prjXa1", "user/usr_a1", "membership/usr_a1@prjXa1"},
		}},
		{"ten_b", zone("America/Los_Angeles"), [][]string{
			{"global", "tenant/ten_b", "project/prj_b", "user/usr_b", "key/key_b"},
			// A scope id of tenant a in tenant b's events never happens;
			// the tenant filter must still keep them apart if it did.
			{"global", "tenant/ten_b", "project/prj_b", "user/usr_a1"},
		}},
	}
}

// historyEvents are n events spread over 2026-10-25 … 2026-12-05 (UTC),
// of both tenants, three models, with fixed edge cases first: two models on
// two days, and events whose local day is not their UTC day.
func historyEvents(tenants []historyTenant, n int) []usage.Event {
	rng := rand.New(rand.NewPCG(14, 2026))
	models := []string{"gpt-4o", "llama-70b", ""}
	ev := func(i int, ten historyTenant, chain []string, at time.Time, model string) usage.Event {
		return usage.Event{ID: fmt.Sprintf("tkt_%04d", i), At: at, TenantID: ten.id, Kind: "model_call", Model: model, Scopes: chain,
			Requests: 1 + rng.Int64N(3), InputTokens: rng.Int64N(5000), OutputTokens: rng.Int64N(2000), GPUMillis: rng.Int64N(90_000),
			CostMicros: rng.Int64N(3_000_000), Loc: ten.loc}
	}
	a, b := tenants[0], tenants[1]
	events := []usage.Event{
		ev(0, a, a.chains[0], time.Date(2026, 11, 3, 9, 0, 0, 0, time.UTC), "gpt-4o"),
		ev(1, a, a.chains[0], time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC), "llama-70b"),
		ev(2, a, a.chains[0], time.Date(2026, 11, 4, 1, 0, 0, 0, time.UTC), "gpt-4o"),
		// 2 November in UTC, 3 November in Shanghai.
		ev(3, a, a.chains[0], time.Date(2026, 11, 2, 17, 30, 0, 0, time.UTC), "llama-70b"),
		// October in UTC, November in Shanghai.
		ev(4, a, a.chains[0], time.Date(2026, 10, 31, 20, 0, 0, 0, time.UTC), "gpt-4o"),
		// December in UTC, November in Los Angeles.
		ev(5, b, b.chains[0], time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC), "gpt-4o"),
	}
	start := time.Date(2026, 10, 25, 0, 0, 0, 0, time.UTC)
	for i := len(events); i < n; i++ {
		ten := tenants[rng.IntN(len(tenants))]
		at := start.Add(time.Duration(rng.Int64N(int64(41 * 24 * time.Hour))))
		events = append(events, ev(i, ten, ten.chains[rng.IntN(len(ten.chains))], at, models[rng.IntN(len(models))]))
	}
	return events
}

// wantHistory sums events as UsageHistory must: those whose chain holds
// the scope, by their day (in their tenant's zone, UTC when utc) within
// [from, to], by model when byModel.
func wantHistory(events []usage.Event, q usage.HistoryQuery) []usage.HistoryRow {
	sums := map[[2]string]*usage.HistoryRow{}
	for i := range events {
		e := &events[i]
		if !slices.Contains(e.Scopes, q.Scope) || (q.TenantID != "" && e.TenantID != q.TenantID) {
			continue
		}
		loc := e.Loc
		if q.UTC {
			loc = time.UTC
		}
		day := usage.DayPeriod(e.At, loc)
		if day < q.From || day > q.To {
			continue
		}
		model := ""
		if q.ByModel {
			model = e.Model
		}
		k := [2]string{day, model}
		if sums[k] == nil {
			sums[k] = &usage.HistoryRow{Period: day, Model: model}
		}
		sums[k].Add(&usage.HistoryRow{Requests: e.Requests, InputTokens: e.InputTokens, OutputTokens: e.OutputTokens,
			GPUMillis: e.GPUMillis, CostMicros: e.CostMicros})
	}
	out := []usage.HistoryRow{}
	for _, r := range sums {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b usage.HistoryRow) int {
		return strings.Compare(a.Period+"\x00"+a.Model, b.Period+"\x00"+b.Model)
	})
	return out
}

func TestUsageHistory(t *testing.T) {
	for _, eng := range usageEngines {
		t.Run(eng.name, func(t *testing.T) {
			t.Parallel()
			testUsageHistory(t, eng.open(t))
		})
	}
}

func testUsageHistory(t *testing.T, s *Store) {
	ctx := context.Background()
	tenants := historyTenants(t)
	events := historyEvents(tenants, 400)
	if _, err := s.RecordUsage(ctx, events); err != nil {
		t.Fatalf("RecordUsage = %v", err)
	}
	history := func(q usage.HistoryQuery) []usage.HistoryRow {
		t.Helper()
		got, err := s.UsageHistory(ctx, q)
		if err != nil {
			t.Fatalf("UsageHistory(%+v) = %v", q, err)
		}
		if got == nil {
			got = []usage.HistoryRow{}
		}
		return got
	}

	t.Run("equals the ledger", func(t *testing.T) {
		scopes := []struct{ scope, tenant string }{
			{"tenant/ten_a", "ten_a"}, {"department/dep_a", "ten_a"}, {"project/prj_a1", "ten_a"}, {"project/prjXa1", "ten_a"},
			{"user/usr_a1", "ten_a"}, {"user/usr_a", "ten_a"}, {"membership/usr_a1@prj_a1", "ten_a"}, {"key/key_a1", "ten_a"},
			{"tenant/ten_b", "ten_b"}, {"user/usr_a1", "ten_b"}, {"key/key_b", "ten_b"}, {"project/prj_a1", "ten_b"},
			{"user/usr_a1", ""}, {"tenant/ten_a", "ten_b"},
		}
		ranges := [][2]string{{"2026-11-01", "2026-11-30"}, {"2026-11-03", "2026-11-03"}, {"2026-10-01", "2026-12-31"}, {"2027-01-01", "2027-01-31"}}
		for _, sc := range scopes {
			for _, r := range ranges {
				for _, byModel := range []bool{false, true} {
					q := usage.HistoryQuery{Scope: sc.scope, TenantID: sc.tenant, From: r[0], To: r[1], ByModel: byModel}
					if got, want := history(q), wantHistory(events, q); !reflect.DeepEqual(got, want) {
						t.Fatalf("UsageHistory(%+v):\n got %+v\nwant %+v", q, got, want)
					}
				}
			}
		}
		q := usage.HistoryQuery{Scope: "global", From: "2026-10-01", To: "2026-12-31", UTC: true, ByModel: true}
		if got, want := history(q), wantHistory(events, q); !reflect.DeepEqual(got, want) {
			t.Fatalf("UsageHistory(global):\n got %+v\nwant %+v", got, want)
		}
	})

	t.Run("the fixed cases", func(t *testing.T) {
		got := history(usage.HistoryQuery{Scope: "key/key_a1", TenantID: "ten_a", From: "2026-11-03", To: "2026-11-03", ByModel: true})
		// Events 0 and 1 are of two models; event 3 is of 2 November in UTC
		// but 3 November in Shanghai.
		e := events
		want := []usage.HistoryRow{
			{Period: "2026-11-03", Model: "gpt-4o", Requests: e[0].Requests, InputTokens: e[0].InputTokens, OutputTokens: e[0].OutputTokens,
				GPUMillis: e[0].GPUMillis, CostMicros: e[0].CostMicros},
			{Period: "2026-11-03", Model: "llama-70b", Requests: e[1].Requests + e[3].Requests, InputTokens: e[1].InputTokens + e[3].InputTokens,
				OutputTokens: e[1].OutputTokens + e[3].OutputTokens, GPUMillis: e[1].GPUMillis + e[3].GPUMillis, CostMicros: e[1].CostMicros + e[3].CostMicros},
		}
		// Only events 0–4 carry key/key_a1 unless the random ones drew
		// its chain too: compare with those added.
		rest := wantHistory(events[6:], usage.HistoryQuery{Scope: "key/key_a1", From: "2026-11-03", To: "2026-11-03", ByModel: true})
		for _, r := range rest {
			found := false
			for i := range want {
				if want[i].Model == r.Model {
					want[i].Add(&r)
					found = true
				}
			}
			if !found {
				want = append(want, r)
			}
		}
		slices.SortFunc(want, func(a, b usage.HistoryRow) int { return strings.Compare(a.Model, b.Model) })
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("key/key_a1 on 2026-11-03 by model:\n got %+v\nwant %+v", got, want)
		}
	})

	t.Run("days equal the roll-ups", func(t *testing.T) {
		for _, scope := range []string{"tenant/ten_a", "project/prj_a1", "user/usr_a1", "tenant/ten_b", "global"} {
			q := usage.HistoryQuery{Scope: scope, From: "2026-10-20", To: "2026-12-10", UTC: scope == "global"}
			days := history(q)
			if len(days) < 10 {
				t.Fatalf("%s: %d days of use, want the test's events over more days", scope, len(days))
			}
			periods := []string{}
			for _, d := range days {
				periods = append(periods, d.Period)
			}
			for _, m := range usage.ByMonth(days) {
				periods = append(periods, m.Period)
				days = append(days, m)
			}
			rs, err := s.Rollups(ctx, periods)
			if err != nil {
				t.Fatal(err)
			}
			byPeriod := map[string]usage.Rollup{}
			for _, r := range rs {
				if r.Scope == scope {
					byPeriod[r.Period] = r
				}
			}
			if len(byPeriod) != len(days) {
				t.Fatalf("%s: %d roll-ups, want one per period of the history (%d)", scope, len(byPeriod), len(days))
			}
			for _, d := range days {
				r := byPeriod[d.Period]
				if r.Requests != d.Requests || r.Tokens != d.Tokens() || r.GPUMillis != d.GPUMillis || r.CostMicros != d.CostMicros {
					t.Fatalf("%s %s: history %+v, roll-up %+v", scope, d.Period, d, r)
				}
			}
		}
	})

	t.Run("events without a local day count in UTC", func(t *testing.T) {
		tokyo, err := time.LoadLocation("Asia/Tokyo")
		if err != nil {
			t.Fatal(err)
		}
		chain := []string{"global", "tenant/ten_old", "user/usr_old"}
		old := []usage.Event{
			// 2026-11-10 in UTC, 2026-11-11 in Tokyo; stored as before
			// local_day was kept.
			{ID: "tkt_old1", At: time.Date(2026, 11, 10, 20, 0, 0, 0, time.UTC), TenantID: "ten_old", Model: "m", Requests: 1,
				InputTokens: 7, OutputTokens: 3, GPUMillis: 1500, CostMicros: 11, Scopes: chain, Loc: tokyo},
			// 2026-11-10 both ways.
			{ID: "tkt_old2", At: time.Date(2026, 11, 10, 2, 0, 0, 0, time.UTC), TenantID: "ten_old", Model: "m", Requests: 2,
				InputTokens: 100, OutputTokens: 50, GPUMillis: 250, CostMicros: 1000, Scopes: chain, Loc: tokyo},
		}
		if _, err := s.RecordUsage(ctx, old); err != nil {
			t.Fatal(err)
		}
		if _, err := s.w.ExecContext(ctx, s.d.rebind(`UPDATE usage_events SET local_day = '' WHERE id = ?`), "tkt_old1"); err != nil {
			t.Fatal(err)
		}
		got := history(usage.HistoryQuery{Scope: "user/usr_old", TenantID: "ten_old", From: "2026-11-01", To: "2026-11-30", ByModel: true})
		want := []usage.HistoryRow{{Period: "2026-11-10", Model: "m", Requests: 3, InputTokens: 107, OutputTokens: 53, GPUMillis: 1750, CostMicros: 1011}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
		if got := history(usage.HistoryQuery{Scope: "user/usr_old", TenantID: "ten_old", From: "2026-11-11", To: "2026-11-11"}); len(got) != 0 {
			t.Fatalf("2026-11-11: got %+v, want nothing (the event without a local day is of 2026-11-10 in UTC)", got)
		}
	})

	t.Run("bounded and checked", func(t *testing.T) {
		q := usage.HistoryQuery{Scope: "tenant/ten_a", TenantID: "ten_a", From: "2026-10-01", To: "2026-12-31", ByModel: true}
		all := history(q)
		q.Limit = 3
		if got := history(q); len(all) <= 3 || !reflect.DeepEqual(got, all[:3]) {
			t.Fatalf("limit 3: got %+v, want the first 3 of %d", got, len(all))
		}
		for _, c := range []struct {
			q     usage.HistoryQuery
			field string
		}{
			{usage.HistoryQuery{Scope: "tenant/ten_a", From: "2026-11", To: "2026-11-30"}, "from"},
			{usage.HistoryQuery{Scope: "tenant/ten_a", From: "2026-11-01", To: "tomorrow"}, "to"},
			{usage.HistoryQuery{Scope: "tenant/ten_a global", From: "2026-11-01", To: "2026-11-30"}, "scope"},
			{usage.HistoryQuery{From: "2026-11-01", To: "2026-11-30"}, "scope"},
		} {
			_, err := s.UsageHistory(ctx, c.q)
			var e *errs.Error
			if !errs.Is(err, errs.Invalid) || !errors.As(err, &e) || e.Field != c.field {
				t.Fatalf("UsageHistory(%+v) = %v, want invalid naming %s", c.q, err, c.field)
			}
		}
	})
}
