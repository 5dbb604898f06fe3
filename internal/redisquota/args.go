package redisquota

import (
	"hash/maphash"
	"sync/atomic"
)

// Per-call allocations on the Go side are mostly boxing script arguments
// and building key strings. Two small lock-free caches take the common
// cases: a scope's three key strings and its boxed key, and boxed integer
// arguments (limits, asks, usage, TTLs), which repeat from call to call.
// Both are direct-mapped: a slot holds the last value that hashed to it,
// so they are bounded and need no eviction.

// scopeKeys are a scope's keys under a prefix and the scope key as a
// script argument.
type scopeKeys struct {
	key     string
	s, l, r string
	arg     any
}

const scopeKeySlots = 4096 // a power of two

type keyCache struct {
	seed  maphash.Seed
	slots [scopeKeySlots]atomic.Pointer[scopeKeys]
}

// scope returns the keys of scope k under prefix.
func (c *keyCache) scope(prefix, k string) *scopeKeys {
	slot := &c.slots[maphash.String(c.seed, k)&(scopeKeySlots-1)]
	if e := slot.Load(); e != nil && e.key == k {
		return e
	}
	// One allocation for the three keys.
	all := prefix + "s:" + k + prefix + "l:" + k + prefix + "r:" + k
	n := len(prefix) + 2 + len(k)
	e := &scopeKeys{key: k, s: all[:n], l: all[n : 2*n], r: all[2*n:], arg: k}
	slot.Store(e)
	return e
}

// boxedInt is an integer argument boxed once.
type boxedInt struct {
	n   int64
	box any
}

const intSlots = 1024 // a power of two

var intCache [intSlots]atomic.Pointer[boxedInt]

// intArg returns n boxed as a script argument, from the cache when it
// holds it. Boxing values below 256 never allocates.
func intArg(n int64) any {
	if n >= 0 && n < 256 {
		return n
	}
	u := uint64(n)
	h := (u ^ u>>29) * 0x9E3779B97F4A7C15 >> 54 // 10 bits
	slot := &intCache[h&(intSlots-1)]
	if e := slot.Load(); e != nil && e.n == n {
		return e.box
	}
	e := &boxedInt{n: n, box: n}
	slot.Store(e)
	return e.box
}

// emptyArg is "" boxed once: the now arguments when Redis's clock is used.
var emptyArg any = ""
