package usage_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/usage"
)

func openStore(t *testing.T) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatalf("OpenSQLite = %v, want nil", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close = %v, want nil", err)
		}
	})
	return s
}

func loadLocation(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("LoadLocation(%s) = %v", name, err)
	}
	return loc
}

// rollups reads the roll-ups of periods, sorted by scope and period.
func rollups(t *testing.T, s usage.Store, periods ...string) []usage.Rollup {
	t.Helper()
	rs, err := s.Rollups(context.Background(), periods)
	if err != nil {
		t.Fatalf("Rollups(%v) = %v, want nil", periods, err)
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Scope != rs[j].Scope {
			return rs[i].Scope < rs[j].Scope
		}
		return rs[i].Period < rs[j].Period
	})
	return rs
}

func sameRollups(t *testing.T, got, want []usage.Rollup) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("roll-ups:\ngot  %+v\nwant %+v", got, want)
	}
}

func record(t *testing.T, s usage.Store, events []usage.Event, wantNew int) {
	t.Helper()
	n, err := s.RecordUsage(context.Background(), events)
	if err != nil {
		t.Fatalf("RecordUsage = %v, want nil", err)
	}
	if n != wantNew {
		t.Fatalf("RecordUsage: got %d new events, want %d", n, wantNew)
	}
}

func TestRecordUsageIsIdempotent(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	at := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	ev := func(id string, tokens int64) usage.Event {
		return usage.Event{ID: id, At: at, TenantID: "ten_a", UserID: "usr_u", Kind: "model_call", Requests: 1,
			InputTokens: tokens, OutputTokens: 1, GPUMillis: 10, CostMicros: 100, Scopes: []string{"global", "tenant/ten_a"}}
	}
	batch := []usage.Event{ev("tkt_1", 99), ev("tkt_2", 199)}
	record(t, s, batch, 2)
	want := []usage.Rollup{
		{Scope: "global", Period: "2026-03", TenantID: "ten_a", Requests: 2, Tokens: 300, GPUMillis: 20, CostMicros: 200},
		{Scope: "global", Period: "2026-03-10", TenantID: "ten_a", Requests: 2, Tokens: 300, GPUMillis: 20, CostMicros: 200},
		{Scope: "tenant/ten_a", Period: "2026-03", TenantID: "ten_a", Requests: 2, Tokens: 300, GPUMillis: 20, CostMicros: 200},
		{Scope: "tenant/ten_a", Period: "2026-03-10", TenantID: "ten_a", Requests: 2, Tokens: 300, GPUMillis: 20, CostMicros: 200},
	}
	sameRollups(t, rollups(t, s, "2026-03", "2026-03-10"), want)

	// The same batch again, as a retry after a lost reply would send it.
	record(t, s, batch, 0)
	sameRollups(t, rollups(t, s, "2026-03", "2026-03-10"), want)

	// A batch mixing a known event and a new one counts only the new one,
	// even when the known one comes back with other amounts.
	changed := ev("tkt_2", 5000)
	record(t, s, []usage.Event{changed, ev("tkt_3", 9)}, 1)
	for i := range want {
		want[i].Requests, want[i].Tokens, want[i].GPUMillis, want[i].CostMicros = 3, 310, 30, 300
	}
	sameRollups(t, rollups(t, s, "2026-03", "2026-03-10"), want)

	// An empty batch writes nothing.
	record(t, s, nil, 0)
}

func TestRollupsUseTheEventsTimeZone(t *testing.T) {
	t.Parallel()
	shanghai := loadLocation(t, "Asia/Shanghai")
	honolulu := loadLocation(t, "Pacific/Honolulu") // UTC-10
	for _, c := range []struct {
		name    string
		at      time.Time
		loc     *time.Location
		periods []string
		want    map[string][]string // scope → periods it has a roll-up in
	}{
		{"evening UTC is the next day in Shanghai", time.Date(2026, 3, 1, 17, 0, 0, 0, time.UTC), shanghai,
			[]string{"2026-03-01", "2026-03-02", "2026-03", "2026-02-28"},
			map[string][]string{"global": {"2026-03", "2026-03-01"}, "tenant/ten_a": {"2026-03", "2026-03-02"}, "user/usr_u": {"2026-03", "2026-03-02"}}},
		{"the last evening of a month is the next month in Shanghai", time.Date(2026, 3, 31, 20, 0, 0, 0, time.UTC), shanghai,
			[]string{"2026-03-31", "2026-04-01", "2026-03", "2026-04"},
			map[string][]string{"global": {"2026-03", "2026-03-31"}, "tenant/ten_a": {"2026-04", "2026-04-01"}, "user/usr_u": {"2026-04", "2026-04-01"}}},
		{"early UTC is the previous month west of UTC", time.Date(2026, 4, 1, 3, 0, 0, 0, time.UTC), honolulu,
			[]string{"2026-03-31", "2026-04-01", "2026-03", "2026-04"},
			map[string][]string{"global": {"2026-04", "2026-04-01"}, "tenant/ten_a": {"2026-03", "2026-03-31"}, "user/usr_u": {"2026-03", "2026-03-31"}}},
		{"no location is UTC", time.Date(2026, 3, 1, 17, 0, 0, 0, time.UTC), nil,
			[]string{"2026-03-01", "2026-03-02", "2026-03"},
			map[string][]string{"global": {"2026-03", "2026-03-01"}, "tenant/ten_a": {"2026-03", "2026-03-01"}, "user/usr_u": {"2026-03", "2026-03-01"}}},
		{"the time's own zone does not matter", time.Date(2026, 3, 2, 1, 0, 0, 0, shanghai), time.UTC,
			[]string{"2026-03-01", "2026-03-02", "2026-03"},
			map[string][]string{"global": {"2026-03", "2026-03-01"}, "tenant/ten_a": {"2026-03", "2026-03-01"}, "user/usr_u": {"2026-03", "2026-03-01"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t)
			e := usage.Event{ID: "tkt_1", At: c.at, Loc: c.loc, TenantID: "ten_a", UserID: "usr_u", Requests: 1,
				InputTokens: 100, OutputTokens: 50, GPUMillis: 7, CostMicros: 9, Scopes: []string{"global", "tenant/ten_a", "user/usr_u"}}
			record(t, s, []usage.Event{e}, 1)
			var want []usage.Rollup
			for _, scope := range []string{"global", "tenant/ten_a", "user/usr_u"} {
				for _, p := range c.want[scope] {
					want = append(want, usage.Rollup{Scope: scope, Period: p, TenantID: "ten_a", Requests: 1, Tokens: 150, GPUMillis: 7, CostMicros: 9})
				}
			}
			sameRollups(t, rollups(t, s, c.periods...), want)
			// Each scope lands in exactly one day and one month.
			if got := len(rollups(t, s, usage.CurrentPeriods(c.at)...)); got > 6 {
				t.Fatalf("roll-ups in the current periods: got %d, want at most 6", got)
			}
		})
	}
}

func TestRollupsAccumulateAndSelectPeriods(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	shanghai := loadLocation(t, "Asia/Shanghai")
	day1 := time.Date(2026, 3, 1, 2, 0, 0, 0, time.UTC)  // 10:00 in Shanghai
	day2 := time.Date(2026, 3, 1, 18, 0, 0, 0, time.UTC) // 02:00 on the 2nd in Shanghai
	scopes := []string{"tenant/ten_a", "user/usr_u"}
	record(t, s, []usage.Event{
		{ID: "a", At: day1, Loc: shanghai, TenantID: "ten_a", InputTokens: 10, Scopes: scopes},
		{ID: "b", At: day1.Add(time.Hour), Loc: shanghai, TenantID: "ten_a", InputTokens: 20, Scopes: scopes[:1]},
	}, 2)
	record(t, s, []usage.Event{{ID: "c", At: day2, Loc: shanghai, TenantID: "ten_a", OutputTokens: 5, Scopes: scopes}}, 1)
	sameRollups(t, rollups(t, s, "2026-03-01"), []usage.Rollup{
		{Scope: "tenant/ten_a", Period: "2026-03-01", TenantID: "ten_a", Tokens: 30},
		{Scope: "user/usr_u", Period: "2026-03-01", TenantID: "ten_a", Tokens: 10},
	})
	sameRollups(t, rollups(t, s, "2026-03-02", "2026-03"), []usage.Rollup{
		{Scope: "tenant/ten_a", Period: "2026-03", TenantID: "ten_a", Tokens: 35},
		{Scope: "tenant/ten_a", Period: "2026-03-02", TenantID: "ten_a", Tokens: 5},
		{Scope: "user/usr_u", Period: "2026-03", TenantID: "ten_a", Tokens: 15},
		{Scope: "user/usr_u", Period: "2026-03-02", TenantID: "ten_a", Tokens: 5},
	})
	sameRollups(t, rollups(t, s, "2026-04"), nil)
	if rs, err := s.Rollups(context.Background(), nil); err != nil || len(rs) != 0 {
		t.Fatalf("Rollups(no periods) = %v, %v, want none", rs, err)
	}
}

// TestRecorderOverSQLite settles the same ticket twice through a recorder,
// as a retried settlement would: it is counted once.
func TestRecorderOverSQLite(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	r := usage.NewRecorder(s, slog.New(slog.DiscardHandler), time.Hour)
	t.Cleanup(func() { _ = r.Close() })
	at := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	e := usage.Event{ID: "tkt_1", At: at, TenantID: "ten_a", InputTokens: 40, OutputTokens: 2, Scopes: []string{"global"}}
	r.Record(e)
	r.Record(e) // in the same batch
	flush(t, r)
	r.Record(e) // in a later batch
	flush(t, r)
	sameRollups(t, rollups(t, s, "2026-03-10"), []usage.Rollup{{Scope: "global", Period: "2026-03-10", TenantID: "ten_a", Tokens: 42}})
}

func TestDayAndMonthPeriod(t *testing.T) {
	t.Parallel()
	shanghai := loadLocation(t, "Asia/Shanghai")
	at := time.Date(2026, 12, 31, 16, 30, 0, 0, time.UTC)
	for _, c := range []struct {
		loc        *time.Location
		day, month string
	}{
		{time.UTC, "2026-12-31", "2026-12"},
		{shanghai, "2027-01-01", "2027-01"},
		{time.FixedZone("UTC-12", -12*3600), "2026-12-31", "2026-12"},
	} {
		if got := usage.DayPeriod(at, c.loc); got != c.day {
			t.Errorf("DayPeriod(%v, %s): got %s, want %s", at, c.loc, got, c.day)
		}
		if got := usage.MonthPeriod(at, c.loc); got != c.month {
			t.Errorf("MonthPeriod(%v, %s): got %s, want %s", at, c.loc, got, c.month)
		}
	}
}

func TestCurrentPeriods(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		now  time.Time
		want []string
	}{
		// -12h is still the 28th of February; +14h is the same day as UTC.
		{time.Date(2026, 3, 1, 5, 0, 0, 0, time.UTC), []string{"2026-02-28", "2026-02", "2026-03-01", "2026-03"}},
		// Three days at once: the 1st west of UTC, the 2nd at UTC, the 3rd east.
		{time.Date(2026, 3, 2, 11, 0, 0, 0, time.UTC), []string{"2026-03-01", "2026-03", "2026-03-02", "2026-03-03"}},
		// A year boundary.
		{time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC), []string{"2026-12-31", "2026-12", "2027-01-01", "2027-01"}},
		// The zone of now does not matter.
		{time.Date(2026, 3, 2, 19, 0, 0, 0, time.FixedZone("+08", 8*3600)), []string{"2026-03-01", "2026-03", "2026-03-02", "2026-03-03"}},
	} {
		if got := usage.CurrentPeriods(c.now); !reflect.DeepEqual(got, c.want) {
			t.Errorf("CurrentPeriods(%v): got %v, want %v", c.now, got, c.want)
		}
	}

	// Every zone from UTC-12 to UTC+14, at every quarter hour of a few
	// awkward days, finds its day and month among the current periods.
	zones := []*time.Location{loadLocation(t, "Etc/GMT+12"), loadLocation(t, "Pacific/Kiritimati"), loadLocation(t, "Pacific/Chatham"),
		loadLocation(t, "Asia/Kathmandu"), loadLocation(t, "America/St_Johns")}
	for off := -12 * 60; off <= 14*60; off += 15 {
		zones = append(zones, time.FixedZone("", off*60))
	}
	for _, start := range []time.Time{
		time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC),
		time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC),
	} {
		for now := start; now.Before(start.Add(48 * time.Hour)); now = now.Add(15 * time.Minute) {
			periods := usage.CurrentPeriods(now)
			if len(periods) > 5 {
				t.Fatalf("CurrentPeriods(%v): got %d periods %v, want at most 3 days and 2 months", now, len(periods), periods)
			}
			for _, loc := range zones {
				for _, p := range []string{usage.DayPeriod(now, loc), usage.MonthPeriod(now, loc)} {
					if !slices.Contains(periods, p) {
						t.Fatalf("CurrentPeriods(%v) = %v lacks %s, current in %v", now, periods, p, loc)
					}
				}
			}
		}
	}
}

func TestPeriodStart(t *testing.T) {
	t.Parallel()
	shanghai := loadLocation(t, "Asia/Shanghai")
	berlin := loadLocation(t, "Europe/Berlin")
	for _, c := range []struct {
		period string
		loc    *time.Location
		want   time.Time
		isDay  bool
	}{
		{"2026-03", shanghai, time.Date(2026, 3, 1, 0, 0, 0, 0, shanghai), false},
		{"2026-03-02", shanghai, time.Date(2026, 3, 2, 0, 0, 0, 0, shanghai), true},
		{"2026-03-02", time.UTC, time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), true},
		{"2026-03-29", berlin, time.Date(2026, 3, 29, 0, 0, 0, 0, berlin), true}, // the day clocks go forward
		{"2027-01", time.UTC, time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), false},
	} {
		got, isDay, err := usage.PeriodStart(c.period, c.loc)
		if err != nil || !got.Equal(c.want) || isDay != c.isDay {
			t.Errorf("PeriodStart(%s, %s) = %v, %v, %v, want %v, %v, nil", c.period, c.loc, got, isDay, err, c.want, c.isDay)
			continue
		}
		if got.Location() != c.loc {
			t.Errorf("PeriodStart(%s, %s): got location %v, want %v", c.period, c.loc, got.Location(), c.loc)
		}
		// A period's start is in the period.
		name := usage.MonthPeriod(got, c.loc)
		if isDay {
			name = usage.DayPeriod(got, c.loc)
		}
		if name != c.period {
			t.Errorf("period of PeriodStart(%s): got %s, want %s", c.period, name, c.period)
		}
	}
	for _, bad := range []string{"", "2026", "2026-3", "2026-13", "2026-03-32", "2026-3-2", "26-03-02", "2026/03/02", "2026-03-02T00:00"} {
		if got, _, err := usage.PeriodStart(bad, time.UTC); err == nil {
			t.Errorf("PeriodStart(%q) = %v, nil, want an error", bad, got)
		}
	}
}

func TestEventTokens(t *testing.T) {
	t.Parallel()
	e := usage.Event{InputTokens: 120, OutputTokens: 30}
	if got := e.Tokens(); got != 150 {
		t.Fatalf("Tokens: got %d, want 150", got)
	}
}
