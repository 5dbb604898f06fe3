package id_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/id"
)

const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// checkShape fails unless s is prefix, "_" and 26 Crockford base32 digits.
func checkShape(t *testing.T, s, prefix string) {
	t.Helper()
	body, ok := strings.CutPrefix(s, prefix+"_")
	if !ok {
		t.Fatalf("id %q: got no %q prefix, want one", s, prefix+"_")
	}
	if len(body) != 26 {
		t.Fatalf("id %q: got %d characters after the prefix, want 26", s, len(body))
	}
	for i, c := range body {
		if !strings.ContainsRune(alphabet, c) {
			t.Fatalf("id %q: character %d is %q, want one of %q", s, i, c, alphabet)
		}
	}
	// 26 digits hold 130 bits; the id has 128, so the first digit is 0..7.
	if body[0] > '7' {
		t.Fatalf("id %q: first digit %q, want 0..7", s, body[0])
	}
}

// millis decodes the timestamp held in an id's first 10 digits (3 + 9*5 = 48 bits).
func millis(t *testing.T, s string) int64 {
	t.Helper()
	body := s[strings.IndexByte(s, '_')+1:]
	var v int64
	for _, c := range body[:10] {
		v = v<<5 | int64(strings.IndexRune(alphabet, c))
	}
	return v
}

func TestShape(t *testing.T) {
	tests := []struct {
		prefix string
		at     time.Time
	}{
		{"ten", time.Now()},
		{"dep", time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)},
		{"key", time.Unix(0, 0)},
		{"aud", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)},
		{"", time.Now()},
		{"a_long_prefix", time.Now()},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			s := id.NewAt(tt.prefix, tt.at)
			checkShape(t, s, tt.prefix)
			if got, want := len(s), len(tt.prefix)+1+26; got != want {
				t.Errorf("len(%q) = %d, want %d", s, got, want)
			}
			if got, want := millis(t, s), tt.at.UnixMilli(); got != want {
				t.Errorf("timestamp in %q = %d, want %d", s, got, want)
			}
		})
	}
	checkShape(t, id.New("usr"), "usr")
}

func TestUnique(t *testing.T) {
	const n = 100_000
	seen := make(map[string]struct{}, n)
	at := time.Now() // one millisecond for all: uniqueness rests on the random bits
	for i := range n {
		s := id.NewAt("ten", at)
		if _, dup := seen[s]; dup {
			t.Fatalf("id %d: got duplicate %q, want unique ids", i, s)
		}
		seen[s] = struct{}{}
	}
	if len(seen) != n {
		t.Errorf("got %d distinct ids, want %d", len(seen), n)
	}
}

func TestSortsByCreationTime(t *testing.T) {
	start := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	steps := []time.Duration{time.Millisecond, time.Second, time.Hour, 24 * time.Hour, 365 * 24 * time.Hour}
	var ids []string
	at := start
	for i := range 200 {
		at = at.Add(steps[i%len(steps)])
		ids = append(ids, id.NewAt("aud", at))
	}
	if !slices.IsSorted(ids) {
		for i := 1; i < len(ids); i++ {
			if ids[i-1] >= ids[i] {
				t.Fatalf("ids[%d] = %q >= ids[%d] = %q, want strictly increasing", i-1, ids[i-1], i, ids[i])
			}
		}
	}
	// New uses the wall clock: ids made a millisecond apart sort in order.
	a := id.New("ten")
	time.Sleep(2 * time.Millisecond)
	b := id.New("ten")
	if a >= b {
		t.Errorf("got %q >= %q for a later id, want earlier < later", a, b)
	}
}
