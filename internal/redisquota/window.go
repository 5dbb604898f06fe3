package redisquota

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Lua has no time zone database, so the Go side computes each zone's day
// and month windows and passes them to the scripts: for each, the bounds of
// the window holding the instance's now and of its two neighbours, so that
// the script finds the window holding Redis's now even if the two clocks
// disagree by up to a whole window. Bounds are whole Unix seconds.

// zoneWindows are one zone's day and month bounds: previous start, start,
// end, next end; args are the name and bounds as script arguments, boxed
// once.
type zoneWindows struct {
	name       string
	day, month [4]int64
	args       [9]any
}

// zones caches windows per zone name and remembers the Location of every
// name seen in a chain, since Settle, Use and Restore know only the name.
type zones struct {
	m sync.Map // name → *zoneEntry
}

type zoneEntry struct {
	loc *time.Location
	win atomic.Pointer[zoneWindows]
}

// entry returns the cache entry for loc, creating it.
func (z *zones) entry(loc *time.Location) *zoneEntry {
	name := loc.String()
	if e, ok := z.m.Load(name); ok {
		return e.(*zoneEntry)
	}
	e, _ := z.m.LoadOrStore(name, &zoneEntry{loc: loc})
	return e.(*zoneEntry)
}

// byName returns the entry for a zone name stored in Redis, loading the
// Location if no chain on this instance has named it yet.
func (z *zones) byName(name string) (*zoneEntry, bool) {
	if e, ok := z.m.Load(name); ok {
		return e.(*zoneEntry), true
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, false
	}
	return z.entry(loc), true
}

// windows returns the zone's windows around now (Unix ns).
func (e *zoneEntry) windows(now int64) *zoneWindows {
	sec := floorDiv(now, int64(time.Second))
	if w := e.win.Load(); w != nil && w.day[1] <= sec && sec < w.day[2] && w.month[1] <= sec && sec < w.month[2] {
		return w
	}
	w := &zoneWindows{name: e.loc.String()}
	ds, de := dayBounds(now, e.loc)
	ps, _ := dayBounds(ds-1, e.loc)
	_, ne := dayBounds(de, e.loc)
	w.day = [4]int64{ps / 1e9, ds / 1e9, de / 1e9, ne / 1e9}
	ms, me := monthBounds(now, e.loc)
	pms, _ := monthBounds(ms-1, e.loc)
	_, nme := monthBounds(me, e.loc)
	w.month = [4]int64{pms / 1e9, ms / 1e9, me / 1e9, nme / 1e9}
	w.args[0] = w.name
	for i := range 4 {
		w.args[1+i], w.args[5+i] = w.day[i], w.month[i]
	}
	e.win.Store(w)
	return w
}

// day returns the day window [start, end) holding now (Unix ns).
func (e *zoneEntry) day(now int64) (int64, int64) { return dayBounds(now, e.loc) }

// month returns the month window [start, end) holding now (Unix ns).
func (e *zoneEntry) month(now int64) (int64, int64) { return monthBounds(now, e.loc) }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// dayBounds and monthBounds are quota's calendar windows, so both backends
// agree to the nanosecond on when a day or month starts.
var (
	dayBounds   = quota.DayBounds
	monthBounds = quota.MonthBounds
)
