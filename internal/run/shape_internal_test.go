package run

import (
	"testing"
	"time"
)

// TestElapsed: durations read as LangFlow's format_elapsed_time writes them.
func TestElapsed(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0 ms"},
		{1499 * time.Microsecond, "1 ms"},
		{999 * time.Millisecond, "999 ms"},
		{time.Second, "1 second"},
		{1540 * time.Millisecond, "1.5 seconds"},
		{59 * time.Second, "59 seconds"},
		{61 * time.Second, "1 minute, 1 second"},
		{2*time.Minute + 3120*time.Millisecond, "2 minutes, 3.1 seconds"},
	} {
		if got := elapsed(c.d); got != c.want {
			t.Errorf("elapsed(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}
