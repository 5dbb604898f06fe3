package id_test

import (
	"slices"
	"strings"
	"sync"
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
	if got, want := len(s), len(prefix)+1+26; got != want {
		t.Fatalf("len(%q) = %d, want %d", s, got, want)
	}
	for i, c := range body {
		if !strings.ContainsRune(alphabet, c) {
			t.Fatalf("id %q: character %d is %q, want one of %q", s, i, c, alphabet)
		}
	}
	// 26 digits hold 130 bits; an id has 128, so the first digit is 0..7.
	if body[0] > '7' {
		t.Fatalf("id %q: first digit %q, want 0..7", s, body[0])
	}
}

// millis decodes the timestamp in an id's first 10 digits (3 + 9*5 = 48 bits).
func millis(t *testing.T, s string) int64 {
	t.Helper()
	body := s[strings.LastIndexByte(s, '_')+1:]
	var v int64
	for _, c := range body[:10] {
		v = v<<5 | int64(strings.IndexRune(alphabet, c))
	}
	return v
}

// fresh returns a time later than any id made so far in this process. Ids
// keep a process-wide order (an id made at a time not after the previous
// one's takes the previous timestamp), so tests that check timestamps start
// here, whatever order the tests run in.
func fresh(t *testing.T) time.Time {
	t.Helper()
	return time.UnixMilli(millis(t, id.New("probe"))).Add(time.Hour)
}

func TestShape(t *testing.T) {
	tests := []struct {
		name, prefix string
		at           time.Time
	}{
		{"now", "ten", time.Now()},
		{"past", "dep", time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)},
		{"epoch", "key", time.Unix(0, 0)},
		{"empty prefix", "", time.Now()},
		{"prefix with underscores", "a_long_prefix", time.Now()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkShape(t, id.NewAt(tt.prefix, tt.at), tt.prefix)
		})
	}
	checkShape(t, id.New("usr"), "usr")
}

func TestTimestamp(t *testing.T) {
	at := fresh(t)
	for _, step := range []time.Duration{0, time.Millisecond, time.Second, time.Hour, 24 * time.Hour, 365 * 24 * time.Hour} {
		at = at.Add(step + time.Millisecond)
		s := id.NewAt("ten", at)
		if got, want := millis(t, s), at.UnixMilli(); got != want {
			t.Errorf("timestamp in %q = %d, want %d", s, got, want)
		}
	}
}

func TestUnique(t *testing.T) {
	const n = 100_000
	seen := make(map[string]struct{}, n)
	at := time.Now() // one instant for all: uniqueness cannot rest on the clock
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

func TestUniqueConcurrent(t *testing.T) {
	const workers, each = 8, 2_000
	out := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				out[w] = append(out[w], id.New("key"))
			}
		})
	}
	wg.Wait()
	seen := make(map[string]struct{}, workers*each)
	for w, ids := range out {
		if !slices.IsSorted(ids) {
			t.Errorf("worker %d: ids not increasing, want each goroutine's ids in order", w)
		}
		for _, s := range ids {
			if _, dup := seen[s]; dup {
				t.Fatalf("got duplicate %q across goroutines, want unique ids", s)
			}
			seen[s] = struct{}{}
		}
	}
}

// requireIncreasing fails at the first id not greater than the one before.
func requireIncreasing(t *testing.T, ids []string) {
	t.Helper()
	for i := 1; i < len(ids); i++ {
		if ids[i-1] >= ids[i] {
			t.Fatalf("ids[%d] = %q >= ids[%d] = %q, want strictly increasing", i-1, ids[i-1], i, ids[i])
		}
	}
}

func TestSortsByCreationTime(t *testing.T) {
	start := fresh(t)
	steps := []time.Duration{time.Millisecond, time.Second, time.Hour, 24 * time.Hour, 30 * 24 * time.Hour}
	var ids []string
	at := start
	for i := range 200 {
		at = at.Add(steps[i%len(steps)])
		s := id.NewAt("aud", at)
		if got, want := millis(t, s), at.UnixMilli(); got != want {
			t.Fatalf("id %d: timestamp in %q = %d, want %d", i, s, got, want)
		}
		ids = append(ids, s)
	}
	requireIncreasing(t, ids)

	// Sorting a shuffled copy restores creation order.
	shuffled := slices.Clone(ids)
	for i := range shuffled {
		j := (i * 7919) % len(shuffled)
		shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
	}
	slices.Sort(shuffled)
	if !slices.Equal(shuffled, ids) {
		t.Errorf("sorted ids differ from creation order, want the same order")
	}
}

func TestSameMillisecondKeepsOrder(t *testing.T) {
	at := fresh(t)
	var ids []string
	for range 1000 {
		ids = append(ids, id.NewAt("ten", at))
	}
	requireIncreasing(t, ids)
	for _, s := range ids {
		if got, want := millis(t, s), at.UnixMilli(); got != want {
			t.Fatalf("timestamp in %q = %d, want %d", s, got, want)
		}
	}
}

func TestEarlierTimeKeepsOrder(t *testing.T) {
	// A clock that steps back must not make an id sort before an older one.
	later := fresh(t)
	a := id.NewAt("ten", later)
	b := id.NewAt("ten", later.Add(-time.Minute))
	if a >= b {
		t.Errorf("id made after %q with an earlier clock = %q, want it to sort after", a, b)
	}
	if got, want := millis(t, b), later.UnixMilli(); got != want {
		t.Errorf("timestamp in %q = %d, want the previous id's %d", b, got, want)
	}
}
