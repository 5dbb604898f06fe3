package quota

import "time"

// calendar caches the current day and month of one time zone as Unix ns, so
// that deciding whether a budget's window is still current is two integer
// comparisons; time.In and time.Date run only when a window ends.
type calendar struct {
	loc                  *time.Location
	dayStart, dayEnd     int64
	monthStart, monthEnd int64
}

func newCalendar(loc *time.Location) *calendar {
	// Empty windows: the first lookup computes real ones.
	return &calendar{loc: loc, dayStart: 1, monthStart: 1}
}

// day returns the local day [start, end) holding now.
func (c *calendar) day(now int64) (int64, int64) {
	if now < c.dayStart || now >= c.dayEnd {
		c.dayStart, c.dayEnd = dayBounds(now, c.loc)
	}
	return c.dayStart, c.dayEnd
}

// month returns the local month [start, end) holding now.
func (c *calendar) month(now int64) (int64, int64) {
	if now < c.monthStart || now >= c.monthEnd {
		c.monthStart, c.monthEnd = monthBounds(now, c.loc)
	}
	return c.monthStart, c.monthEnd
}

// dayBounds returns the local day holding now: from the first instant of its
// local date to the first instant of the next. Across a DST change a day
// lasts 23 or 25 hours. Should the zone database put now outside the day of
// its own date, the neighbouring day is taken, so that start <= now < end
// holds and consecutive days still tile time.
func dayBounds(now int64, loc *time.Location) (int64, int64) {
	y, m, d := time.Unix(0, now).In(loc).Date()
	start, end := dateStart(y, m, d, loc), dateStart(y, m, d+1, loc)
	switch {
	case now < start:
		start, end = dateStart(y, m, d-1, loc), start
	case now >= end:
		start, end = end, dateStart(y, m, d+2, loc)
	}
	return start, end
}

// DayBounds returns, in Unix ns, the calendar day of loc holding now: the
// windows every backend uses for daily budgets (DST-safe; see dayBounds).
func DayBounds(now int64, loc *time.Location) (int64, int64) { return dayBounds(now, loc) }

// MonthBounds returns, in Unix ns, the calendar month of loc holding now.
func MonthBounds(now int64, loc *time.Location) (int64, int64) { return monthBounds(now, loc) }

// monthBounds returns the local month holding now: from the first instant of
// its 1st to the first instant of the next month's 1st.
func monthBounds(now int64, loc *time.Location) (int64, int64) {
	y, m, _ := time.Unix(0, now).In(loc).Date()
	start, end := dateStart(y, m, 1, loc), dateStart(y, m+1, 1, loc)
	switch {
	case now < start:
		start, end = dateStart(y, m-1, 1, loc), start
	case now >= end:
		start, end = end, dateStart(y, m+2, 1, loc)
	}
	return start, end
}

// dateStart returns the first instant whose local date is y-m-d or later.
// That is local midnight, except where a DST change skips midnight (America/
// Havana, formerly Pacific/Apia): time.Date then may pick an instant on the
// day before, and the day really starts at the transition, found here by
// bisection on whole seconds. This runs only when a window ends.
func dateStart(y int, m time.Month, d int, loc *time.Location) int64 {
	t := time.Date(y, m, d, 0, 0, 0, 0, loc)
	want := time.Date(y, m, d, 0, 0, 0, 0, time.UTC) // normalised date
	if !dateBefore(t.In(loc), want) {
		return t.UnixNano()
	}
	lo, hi := t.Unix(), t.Unix()+48*3600
	for lo < hi {
		mid := lo + (hi-lo)/2
		if dateBefore(time.Unix(mid, 0).In(loc), want) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo * int64(time.Second)
}

// dateBefore reports whether t's local date is before the date of want, a
// UTC midnight.
func dateBefore(t, want time.Time) bool {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Before(want)
}
