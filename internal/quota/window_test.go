package quota

import (
	"testing"
	"time"
	_ "time/tzdata"
)

// TestWindowsTile walks a few years hour by hour through zones with odd
// calendars and checks that days and months contain now, start at local
// midnight where it exists, and tile time without gaps or overlaps.
func TestWindowsTile(t *testing.T) {
	zones := []string{
		"UTC", "Asia/Shanghai", "America/New_York", "Europe/London",
		"America/Havana",      // DST starts at midnight: some midnights do not exist
		"America/Santiago",    // DST changes at 24:00
		"Australia/Lord_Howe", // 30-minute DST
		"Pacific/Apia",        // skipped 2011-12-30 entirely
		"Asia/Kolkata",        // +05:30
	}
	from := time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)
	to := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	if testing.Short() {
		from = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	for _, name := range zones {
		loc, err := time.LoadLocation(name)
		if err != nil {
			t.Fatalf("LoadLocation(%q): %v", name, err)
		}
		c := newCalendar(loc)
		var prevDay, prevMonth [2]int64
		for now := from.UnixNano(); now < to.UnixNano(); now += int64(time.Hour) {
			ds, de := c.day(now)
			ms, me := c.month(now)
			if !(ds <= now && now < de) || !(ms <= now && now < me) {
				t.Fatalf("%s at %v: day [%v, %v) month [%v, %v) do not hold now", name, time.Unix(0, now).In(loc),
					time.Unix(0, ds).In(loc), time.Unix(0, de).In(loc), time.Unix(0, ms).In(loc), time.Unix(0, me).In(loc))
			}
			if prevDay[1] != 0 && ds != prevDay[0] && ds != prevDay[1] {
				t.Fatalf("%s: day starting %v does not follow the one ending %v", name, time.Unix(0, ds).In(loc), time.Unix(0, prevDay[1]).In(loc))
			}
			if prevMonth[1] != 0 && ms != prevMonth[0] && ms != prevMonth[1] {
				t.Fatalf("%s: month starting %v does not follow the one ending %v", name, time.Unix(0, ms).In(loc), time.Unix(0, prevMonth[1]).In(loc))
			}
			if l := time.Duration(de - ds); name != "Pacific/Apia" && (l < 23*time.Hour || l > 25*time.Hour) {
				t.Fatalf("%s: day from %v lasts %v", name, time.Unix(0, ds).In(loc), l)
			}
			if !dateChangesAt(ds, loc) || !dateChangesAt(ms, loc) {
				t.Fatalf("%s: day from %v or month from %v does not start where the local date changes", name,
					time.Unix(0, ds).In(loc), time.Unix(0, ms).In(loc))
			}
			prevDay, prevMonth = [2]int64{ds, de}, [2]int64{ms, me}
		}
	}
}

func TestDSTDayLengths(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		at   time.Time
		want time.Duration
	}{
		{time.Date(2026, 3, 8, 12, 0, 0, 0, ny), 23 * time.Hour},
		{time.Date(2026, 11, 1, 12, 0, 0, 0, ny), 25 * time.Hour},
		{time.Date(2026, 7, 1, 12, 0, 0, 0, ny), 24 * time.Hour},
	}
	for _, tt := range tests {
		s, e := dayBounds(tt.at.UnixNano(), ny)
		if got := time.Duration(e - s); got != tt.want {
			t.Errorf("day of %v: got %v, want %v", tt.at, got, tt.want)
		}
	}
}

// dateChangesAt reports whether the local date at ns differs from the one a
// nanosecond earlier.
func dateChangesAt(ns int64, loc *time.Location) bool {
	y1, m1, d1 := time.Unix(0, ns-1).In(loc).Date()
	y2, m2, d2 := time.Unix(0, ns).In(loc).Date()
	return y1 != y2 || m1 != m2 || d1 != d2
}
