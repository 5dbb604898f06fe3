// Package id makes Sluice's object identifiers: a short kind prefix and 26
// characters of Crockford base32 holding a millisecond timestamp and 80
// random bits (a ULID), so ids sort by creation time and never collide in
// practice. Within one process ids are strictly increasing, even when many
// are made in the same millisecond.
package id

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"

var (
	mu     sync.Mutex
	lastMS uint64
	lastHi uint16 // random bits 64..79
	lastLo uint64 // random bits 0..63
)

// New returns a new id such as "ten_01jd3…". prefix names the kind of object.
func New(prefix string) string {
	return NewAt(prefix, time.Now())
}

// NewAt is New with an explicit creation time. An id made at a time not
// after the previous one's takes the previous timestamp and its random part
// plus one, so order is kept.
func NewAt(prefix string, t time.Time) string {
	ms := uint64(t.UnixMilli()) & (1<<48 - 1)
	mu.Lock()
	var hi uint16
	var lo uint64
	if ms <= lastMS {
		ms = lastMS
		hi, lo = lastHi, lastLo+1
		if lo == 0 {
			hi++
		}
	} else {
		var r [10]byte
		if _, err := rand.Read(r[:]); err != nil {
			mu.Unlock()
			panic("id: crypto/rand failed: " + err.Error()) // the OS is broken; nothing sane remains
		}
		hi = binary.BigEndian.Uint16(r[:2]) & 0x7fff // leave room to count up
		lo = binary.BigEndian.Uint64(r[2:])
	}
	lastMS, lastHi, lastLo = ms, hi, lo
	mu.Unlock()

	// 128 bits: 48 of time, 80 random, as 26 base32 digits.
	top := ms<<16 | uint64(hi)
	bottom := lo
	var digits [26]byte
	for i := 25; i >= 0; i-- {
		digits[i] = alphabet[bottom&31]
		bottom = bottom>>5 | top<<59
		top >>= 5
	}
	out := make([]byte, 0, len(prefix)+1+26)
	out = append(out, prefix...)
	out = append(out, '_')
	return string(append(out, digits[:]...))
}
