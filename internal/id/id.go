// Package id makes Sluice's object identifiers: a short kind prefix and 26
// characters of Crockford base32 holding a millisecond timestamp and 80
// random bits, so ids sort by creation time and never collide in practice.
package id

import (
	"crypto/rand"
	"encoding/binary"
	"time"
)

const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// New returns a new id such as "ten_01jd3…". prefix names the kind of object.
func New(prefix string) string {
	return NewAt(prefix, time.Now())
}

// NewAt is New with an explicit creation time.
func NewAt(prefix string, t time.Time) string {
	var raw [16]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(t.UnixMilli())<<16)
	// Bytes 0..5 hold the 48-bit timestamp; the rest are random.
	if _, err := rand.Read(raw[6:]); err != nil {
		panic("id: crypto/rand failed: " + err.Error()) // the OS is broken; nothing sane remains
	}
	out := make([]byte, 0, len(prefix)+1+26)
	out = append(out, prefix...)
	out = append(out, '_')
	// 128 bits as 26 base32 digits (the first digit carries 3 bits).
	hi := binary.BigEndian.Uint64(raw[:8])
	lo := binary.BigEndian.Uint64(raw[8:])
	var digits [26]byte
	for i := 25; i >= 0; i-- {
		digits[i] = alphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(append(out, digits[:]...))
}
