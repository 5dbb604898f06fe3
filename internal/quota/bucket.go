package quota

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Bucket is one rate limit's GCRA state in a form a shared engine can keep
// outside the process (leasequota stores it as a string in Redis and
// changes it by compare-and-set), so that every engine decides rates with
// the same exact arithmetic as Memory. The zero Bucket is empty.
type Bucket struct {
	g gcra
}

// ParseBucket decodes what Bucket.String wrote; "" is the empty bucket.
func ParseBucket(s string) (Bucket, error) {
	var b Bucket
	if s == "" {
		return b, nil
	}
	f := strings.Split(s, ":")
	if len(f) != 5 {
		return b, fmt.Errorf("bucket %q: want 5 fields: %w", s, ErrInvalid)
	}
	var v [5]int64
	for i, x := range f {
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil || n < 0 && i > 0 {
			return b, fmt.Errorf("bucket %q: field %d: %w", s, i, ErrInvalid)
		}
		v[i] = n
	}
	b.g.tat, b.g.frac = v[0], uint64(v[1])
	if v[2] > 0 && v[3] > 0 && v[4] > 0 {
		b.g.use(rate{lim: uint64(v[2]), per: uint64(v[3]), burst: uint64(v[4])}, v[0])
		b.g.tat, b.g.frac = v[0], uint64(v[1])
	}
	return b, nil
}

// String encodes the bucket: TAT ns, its fraction, and the rate it was last
// used with (limit, period ns, burst).
func (b Bucket) String() string {
	return strconv.FormatInt(b.g.tat, 10) + ":" + strconv.FormatUint(b.g.frac, 10) + ":" +
		strconv.FormatUint(b.g.lim, 10) + ":" + strconv.FormatUint(b.g.per, 10) + ":" + strconv.FormatUint(b.g.burst, 10)
}

// Check checks an ask of n units at now against r exactly as Memory does,
// adopting r first (a changed limit carries the bucket's units over). It
// returns nil when n fits or r limits nothing, else the denial for scope
// key and dimension dim. Nothing is charged.
func (b *Bucket) Check(r Rate, now time.Time, n int64, key string, dim Dimension) *Denial {
	return checkRate(&b.g, r, now.UnixNano(), n, key, dim)
}

// Charge admits n units at now; the caller checked that they fit.
func (b *Bucket) Charge(now time.Time, n int64) { b.g.charge(now.UnixNano(), n) }

// Avail returns how many units of r would be admitted now (0 when r
// refuses everything).
func (b *Bucket) Avail(r Rate, now time.Time) int64 {
	rt, ok, deny := rateOf(r)
	if !ok || deny {
		return 0
	}
	b.g.use(rt, now.UnixNano())
	return b.g.avail(now.UnixNano())
}

// Lease takes up to n units of r (at least min, else none) whose slots
// start no earlier than from (>= now): units spent at any time before from
// then still sit in slots after their spending time, so a bucket shared by
// leases and direct admissions never admits more than burst + limit·t/period
// in any span t. It returns the units taken.
func (b *Bucket) Lease(r Rate, now, from time.Time, n, min int64) int64 {
	rt, ok, deny := rateOf(r)
	if !ok || deny || n <= 0 {
		return 0
	}
	t, f := now.UnixNano(), from.UnixNano()
	b.g.use(rt, t)
	g := b.g
	if g.tat < f {
		g.tat, g.frac = f, 0
	}
	got := min64(n, g.avail(t))
	if got < max(min, 1) {
		return 0
	}
	g.charge(t, got)
	b.g = g
	return got
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

// Adjust changes the level by delta units at now without a check: positive
// charges use beyond what was admitted, negative refunds (never below
// empty), as Memory does when a ticket settles.
func (b *Bucket) Adjust(r Rate, now time.Time, delta int64) {
	rt, ok, deny := rateOf(r)
	if !ok || deny {
		return
	}
	b.g.use(rt, now.UnixNano())
	b.g.adjust(now.UnixNano(), delta)
}

// Use returns the bucket's level at now (zero for a bucket never used).
func (b *Bucket) Use(now time.Time) RateUse { return rateUse(&b.g, now.UnixNano()) }

// EmptyAt returns when the bucket has drained.
func (b *Bucket) EmptyAt(now time.Time) time.Time {
	return time.Unix(0, b.g.emptyAt(now.UnixNano())).UTC()
}
