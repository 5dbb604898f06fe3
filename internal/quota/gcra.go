package quota

import (
	"math"
	"math/bits"
)

// maxSpan caps every duration the rate arithmetic produces (about 73 years),
// so that a sum of two spans, or a span added to a Unix time, cannot
// overflow int64.
const maxSpan = 1 << 61

// rate is a validated Rate in the unsigned form the arithmetic needs.
type rate struct {
	lim, per, burst uint64 // all > 0
}

// rateOf converts r. ok is false when r limits nothing; deny is true when r is
// invalid or has Limit 0, so it must refuse every non-zero ask.
func rateOf(r Rate) (rt rate, ok, deny bool) {
	if r.IsZero() {
		return rate{}, false, false
	}
	if r.Limit <= 0 || r.Period <= 0 || r.Burst < 0 {
		return rate{}, true, true
	}
	b := r.Burst
	if b == 0 {
		b = r.Limit
	}
	return rate{lim: uint64(r.Limit), per: uint64(r.Period), burst: uint64(b)}, true, false
}

// gcra is the state of one GCRA limiter (a leaky bucket measured in time).
//
// The theoretical arrival time TAT is kept exactly as tat + frac/lim ns: the
// cost of n units is n·per/lim ns, computed with a 128-bit product and
// division, and its remainder is carried in frac rather than rounded. So a
// limit of 1e12 tokens a minute (0.06 ns a token) is enforced exactly, one
// token at a time or a billion at once. The bucket's level is max(TAT-now, 0)
// and an ask of n is admitted when level + cost(n) <= burst·per/lim, which
// bounds what is admitted in any span t to burst + lim·t/per.
type gcra struct {
	tat  int64  // integer part of TAT, Unix ns
	frac uint64 // fractional part of TAT in 1/lim ns; < lim
	rate        // parameters last used
	cq   int64  // capacity burst·per/lim: integer ns
	cr   uint64 // and remainder in 1/lim ns
}

// use adopts the rate's parameters. When the limit or period changes, the
// units in the bucket (rounded up) carry over: raising a limit from 1 to 100
// a minute right after one request leaves 99 admissible now, rather than a
// bucket that is still full because its level is kept in time.
func (g *gcra) use(r rate, now int64) {
	if g.rate == r {
		return
	}
	if g.lim != 0 && (g.lim != r.lim || g.per != r.per) {
		u := g.used(now)
		g.rate = r
		q, rem := mulDiv(uint64(u), r.per, r.lim)
		g.set(now, q, rem)
	}
	g.rate = r
	g.cq, g.cr = mulDiv(r.burst, r.per, r.lim)
}

// mulDiv returns a·b/c as an integer part, saturated at maxSpan, and the
// remainder.
func mulDiv(a, b, c uint64) (int64, uint64) {
	hi, lo := bits.Mul64(a, b)
	if hi >= c {
		return maxSpan, 0
	}
	q, r := bits.Div64(hi, lo, c)
	if q > maxSpan {
		return maxSpan, 0
	}
	return int64(q), r
}

// level returns max(TAT-now, 0) as integer ns and remainder.
func (g *gcra) level(now int64) (int64, uint64) {
	if g.tat < now || g.lim == 0 {
		return 0, 0
	}
	return min(g.tat-now, maxSpan), g.frac
}

// add returns (aq,ar)+(bq,br) with remainders in 1/lim ns.
func (g *gcra) add(aq int64, ar uint64, bq int64, br uint64) (int64, uint64) {
	// aq, bq <= maxSpan and ar, br < lim < 2^63, so neither sum overflows.
	q, r := aq+bq, ar+br
	if r >= g.lim {
		r -= g.lim
		q++
	}
	return min(q, maxSpan), r
}

// check returns the bucket level after admitting n units and whether that
// fits. If not, wait is the exact time until it would, or -1 when it never
// would (n exceeds the burst).
func (g *gcra) check(now int64, n uint64) (q int64, r uint64, wait int64, ok bool) {
	if n > g.burst {
		return 0, 0, -1, false
	}
	iq, ir := mulDiv(n, g.per, g.lim)
	lq, lr := g.level(now)
	q, r = g.add(lq, lr, iq, ir)
	if q < g.cq || q == g.cq && r <= g.cr {
		return q, r, 0, true
	}
	wait = q - g.cq
	if r > g.cr {
		wait++
	}
	return q, r, wait, false
}

// set makes the bucket level (q, r) as of now.
func (g *gcra) set(now int64, q int64, r uint64) {
	g.tat, g.frac = now+q, r
}

// adjust changes the level by delta units without any check: positive
// charges use beyond a reservation, negative refunds (never below empty).
func (g *gcra) adjust(now int64, delta int64) {
	if g.lim == 0 || delta == 0 {
		return
	}
	lq, lr := g.level(now)
	if delta > 0 {
		iq, ir := mulDiv(uint64(delta), g.per, g.lim)
		q, r := g.add(lq, lr, iq, ir)
		g.set(now, q, r)
		return
	}
	if lq == 0 && lr == 0 {
		return
	}
	iq, ir := mulDiv(uint64(-delta), g.per, g.lim)
	if iq > lq || iq == lq && ir >= lr {
		g.set(now, 0, 0)
		return
	}
	q, r := lq-iq, lr-ir
	if lr < ir {
		q--
		r = lr + g.lim - ir
	}
	g.set(now, q, r)
}

// avail returns how many units would be admitted now.
func (g *gcra) avail(now int64) int64 {
	lq, lr := g.level(now)
	if lq > g.cq || lq == g.cq && lr >= g.cr {
		return 0
	}
	aq, ar := g.cq-lq, g.cr-lr
	if g.cr < lr {
		aq--
		ar = g.cr + g.lim - lr
	}
	return min(g.units(uint64(aq), ar, false), int64(g.burst))
}

// used returns the bucket level in units, rounded up.
func (g *gcra) used(now int64) int64 {
	lq, lr := g.level(now)
	return g.units(uint64(lq), lr, true)
}

// units converts q + r/lim ns to units: (q·lim + r)/per.
func (g *gcra) units(q uint64, r uint64, roundUp bool) int64 {
	hi, lo := bits.Mul64(q, g.lim)
	var c uint64
	lo, c = bits.Add64(lo, r, 0)
	hi += c
	if hi >= g.per {
		return math.MaxInt64
	}
	u, rem := bits.Div64(hi, lo, g.per)
	if roundUp && rem != 0 {
		u++
	}
	if u > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(u)
}

// emptyAt returns when the bucket has drained (now if it is empty).
func (g *gcra) emptyAt(now int64) int64 {
	lq, lr := g.level(now)
	if lr != 0 {
		lq++
	}
	return now + lq
}

// nextAt returns when one more unit would be admitted.
func (g *gcra) nextAt(now int64) int64 {
	if g.lim == 0 {
		return now
	}
	_, _, wait, ok := g.check(now, 1)
	if ok || wait < 0 {
		return now
	}
	return now + wait
}
