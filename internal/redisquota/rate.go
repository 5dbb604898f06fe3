package redisquota

import (
	"math/bits"
	"strconv"
	"sync"

	"github.com/sluicehq/sluice/internal/quota"
)

// maxExact bounds what the scripts handle exactly with doubles: limits,
// periods (after dividing by their gcd), bursts, bucket capacities in ns,
// asks and usage. Counters saturate at 2^53.
const (
	maxExact = 1 << 52
	satCount = 1 << 53
)

// Rate modes, as the scripts read them.
const (
	rateNone   = "0" // limits nothing
	rateValid  = "1"
	rateRefuse = "2" // invalid, Limit 0, or beyond maxExact: refuses every ask
)

// Rate modes boxed once, as script arguments.
var modeArgs = map[string]any{rateNone: rateNone, rateValid: rateValid, rateRefuse: rateRefuse}

// rateCache holds encoded rates by value: policies reuse a few rates, so
// most calls find theirs here. It stops growing at rateCacheMax entries.
var rateCache struct {
	sync.Map
	n    sync.Mutex
	size int
}

const rateCacheMax = 4096

// encodedRate is a rate's script arguments: mode, K, A, boxed.
type encodedRate struct {
	mode string
	args [3]any
}

var noRate = &encodedRate{mode: rateNone, args: [3]any{rateNone, "", ""}}

// rateArgsOf returns r's script arguments.
func rateArgsOf(r quota.Rate) *encodedRate {
	if r.IsZero() {
		return noRate
	}
	if v, ok := rateCache.Load(r); ok {
		return v.(*encodedRate)
	}
	a := encodeRate(r)
	e := &encodedRate{mode: a.mode, args: [3]any{modeArgs[a.mode], a.K, a.A}}
	rateCache.n.Lock()
	if rateCache.size < rateCacheMax {
		rateCache.size++
		rateCache.Store(r, e)
	}
	rateCache.n.Unlock()
	return e
}

// rateArgs is a Rate in the form the scripts take: K identifies the raw
// limit and period (a change carries the bucket's units over), and A is
// "b l p cq cr": the burst, the limit and period divided by their gcd
// (which keeps the arithmetic small for round rates), and the capacity
// b·p/l ns as an integer and a remainder in 1/l ns.
type rateArgs struct {
	mode string
	K, A string
}

func encodeRate(r quota.Rate) rateArgs {
	if r.IsZero() {
		return rateArgs{mode: rateNone}
	}
	if r.Limit <= 0 || r.Period <= 0 || r.Burst < 0 {
		return rateArgs{mode: rateRefuse}
	}
	b := uint64(r.Burst)
	if b == 0 {
		b = uint64(r.Limit)
	}
	lim, per := uint64(r.Limit), uint64(r.Period)
	g := gcd(lim, per)
	l, p := lim/g, per/g
	if l > maxExact || p > maxExact || b > maxExact {
		return rateArgs{mode: rateRefuse}
	}
	hi, lo := bits.Mul64(b, p)
	if hi >= l {
		return rateArgs{mode: rateRefuse}
	}
	cq, cr := bits.Div64(hi, lo, l)
	if cq > maxExact {
		return rateArgs{mode: rateRefuse}
	}
	buf := make([]byte, 0, 100)
	for i, v := range [...]uint64{b, l, p, cq, cr} {
		if i > 0 {
			buf = append(buf, ' ')
		}
		buf = strconv.AppendUint(buf, v, 10)
	}
	return rateArgs{mode: rateValid, K: strconv.FormatUint(lim, 10) + ":" + strconv.FormatUint(per, 10), A: string(buf)}
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
