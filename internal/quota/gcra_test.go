package quota

import (
	"math"
	"testing"
	"time"
)

func newGCRA(t *testing.T, r Rate) *gcra {
	t.Helper()
	rt, ok, deny := rateOf(r)
	if !ok || deny {
		t.Fatalf("rateOf(%+v): got ok %v deny %v, want a valid rate", r, ok, deny)
	}
	g := &gcra{}
	g.use(rt, 0)
	return g
}

// admit checks and charges n at now, reporting whether it fitted and the wait.
func (g *gcra) admit(now int64, n uint64) (bool, int64) {
	q, r, wait, ok := g.check(now, n)
	if ok {
		g.set(now, q, r)
	}
	return ok, wait
}

func TestGCRAExactForHugeLimits(t *testing.T) {
	// 1e12 tokens a minute is 0.06 ns a token: rounding each token up to
	// a nanosecond would admit 60 of a burst of 1000.
	g := newGCRA(t, Rate{Limit: 1e12, Period: time.Minute, Burst: 1000})
	for i := range 1000 {
		if ok, _ := g.admit(0, 1); !ok {
			t.Fatalf("token %d of the burst: got denied, want admitted", i+1)
		}
	}
	ok, wait := g.admit(0, 1)
	if ok || wait != 1 {
		t.Fatalf("token 1001: got ok %v wait %d ns, want denied with wait 1 ns", ok, wait)
	}
	// 1 ns later, 1/0.06 = 16.67 tokens have drained: 16 fit, not 17.
	if got := g.avail(1); got != 16 {
		t.Errorf("avail after 1ns: got %d, want 16", got)
	}
	// A whole minute's worth in one ask fits once the bucket can hold it.
	g = newGCRA(t, Rate{Limit: 1e12, Period: time.Minute})
	if ok, _ := g.admit(0, 1e12); !ok {
		t.Fatalf("a full burst of 1e12: got denied, want admitted")
	}
	if ok, wait := g.admit(0, 1); ok || wait != 1 {
		t.Fatalf("after a full burst: got ok %v wait %d, want denied wait 1", ok, wait)
	}
	if ok, _ := g.admit(int64(time.Minute), 1e12); !ok {
		t.Fatalf("a full burst a minute later: got denied, want admitted")
	}
}

func TestGCRAFractions(t *testing.T) {
	// 7 per 10 ns, burst 3: a unit costs 10/7 ns, capacity is 30/7 ns
	// (4 ns + 2/7).
	g := newGCRA(t, Rate{Limit: 7, Period: 10, Burst: 3})
	if ok, _ := g.admit(0, 3); !ok {
		t.Fatalf("burst: got denied, want admitted")
	}
	// At 1 ns the level is 23/7 ns; one more would make it 33/7 > 30/7 by
	// 3/7 ns, so the exact wait rounds up to 1 ns.
	ok, wait := g.admit(1, 1)
	if ok || wait != 1 {
		t.Fatalf("at 1ns: got ok %v wait %d, want denied wait 1", ok, wait)
	}
	if ok, _ := g.admit(2, 1); !ok {
		t.Fatalf("at 2ns: got denied, want admitted")
	}
	if got, want := g.used(2), int64(3); got != want { // level 30/7 ns = 3 units
		t.Errorf("used: got %d, want %d", got, want)
	}
}

func TestGCRASaturates(t *testing.T) {
	g := newGCRA(t, Rate{Limit: 1, Period: math.MaxInt64, Burst: math.MaxInt64})
	if g.cq != maxSpan {
		t.Fatalf("capacity: got %d, want saturated %d", g.cq, int64(maxSpan))
	}
	if ok, _ := g.admit(0, math.MaxInt64); !ok {
		t.Fatalf("huge ask within a saturated capacity: got denied, want admitted")
	}
	g.adjust(0, math.MaxInt64)
	if lq, _ := g.level(0); lq != maxSpan {
		t.Fatalf("level after huge overrun: got %d, want %d", lq, int64(maxSpan))
	}
	if got := g.used(0); got <= 0 {
		t.Errorf("used: got %d, want positive", got)
	}
}

func TestGCRALimitChangeKeepsUnits(t *testing.T) {
	g := newGCRA(t, Rate{Limit: 10, Period: time.Minute})
	g.admit(0, 4)
	rt, _, _ := rateOf(Rate{Limit: 100, Period: time.Minute})
	g.use(rt, 0)
	if got := g.used(0); got != 4 {
		t.Errorf("units after raising the limit: got %d, want 4", got)
	}
	if got := g.avail(0); got != 96 {
		t.Errorf("avail after raising the limit: got %d, want 96", got)
	}
	// A burst-only change keeps the level in time, which is the same thing.
	rt, _, _ = rateOf(Rate{Limit: 100, Period: time.Minute, Burst: 5})
	g.use(rt, 0)
	if got := g.avail(0); got != 1 {
		t.Errorf("avail after lowering the burst: got %d, want 1", got)
	}
}

func TestGCRAAdjust(t *testing.T) {
	g := newGCRA(t, Rate{Limit: 60, Period: time.Minute})
	g.admit(0, 30)
	g.adjust(0, -10)
	if got := g.used(0); got != 20 {
		t.Errorf("after refund: got %d, want 20", got)
	}
	g.adjust(0, -100)
	if got := g.used(0); got != 0 {
		t.Errorf("refund below empty: got %d, want 0", got)
	}
	g.adjust(0, 100)
	if got := g.used(0); got != 100 {
		t.Errorf("overrun: got %d, want 100", got)
	}
	if got := g.emptyAt(0); got != int64(100*time.Second) {
		t.Errorf("emptyAt: got %d, want %d", got, int64(100*time.Second))
	}
}

func TestRateOf(t *testing.T) {
	tests := []struct {
		r                 Rate
		ok, deny, invalid bool
	}{
		{Rate{}, false, false, false},
		{Rate{Limit: 1, Period: time.Second}, true, false, false},
		{Rate{Limit: 0, Period: time.Second}, true, true, false},
		{Rate{Limit: 5}, true, true, true},
		{Rate{Limit: -1, Period: time.Second}, true, true, true},
		{Rate{Limit: 1, Period: time.Second, Burst: -1}, true, true, true},
	}
	for _, tt := range tests {
		_, ok, deny := rateOf(tt.r)
		if ok != tt.ok || deny != tt.deny {
			t.Errorf("rateOf(%+v): got ok %v deny %v, want %v %v", tt.r, ok, deny, tt.ok, tt.deny)
		}
		if err := tt.r.Validate(); (err != nil) != tt.invalid {
			t.Errorf("%+v.Validate(): got %v, want error %v", tt.r, err, tt.invalid)
		}
	}
}
