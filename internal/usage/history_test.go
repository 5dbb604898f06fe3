package usage

import (
	"math"
	"reflect"
	"testing"
)

func TestDecimal(t *testing.T) {
	for _, c := range []struct {
		v      int64
		places int
		want   string
	}{
		{0, 3, "0"}, {1500, 3, "1.5"}, {1, 6, "0.000001"}, {1_012_366, 6, "1.012366"}, {42_000_000, 6, "42"},
		{-1500, 3, "-1.5"}, {999, 0, "999"}, {math.MaxInt64, 6, "9223372036854.775807"}, {math.MinInt64, 6, "-9223372036854.775808"},
	} {
		if got := Decimal(c.v, c.places); got != c.want {
			t.Errorf("Decimal(%d, %d): got %q, want %q", c.v, c.places, got, c.want)
		}
	}
}

func TestByMonthAndTotal(t *testing.T) {
	days := []HistoryRow{
		{Period: "2026-10-31", Model: "a", Requests: 1, InputTokens: 2},
		{Period: "2026-11-01", Model: "a", Requests: 3, OutputTokens: 4},
		{Period: "2026-11-01", Model: "b", GPUMillis: 5},
		{Period: "2026-11-30", Model: "a", CostMicros: 6},
	}
	want := []HistoryRow{
		{Period: "2026-10", Model: "a", Requests: 1, InputTokens: 2},
		{Period: "2026-11", Model: "a", Requests: 3, OutputTokens: 4, CostMicros: 6},
		{Period: "2026-11", Model: "b", GPUMillis: 5},
	}
	if got := ByMonth(days); !reflect.DeepEqual(got, want) {
		t.Fatalf("ByMonth: got %+v, want %+v", got, want)
	}
	if got := Total(days); got != (HistoryRow{Requests: 4, InputTokens: 2, OutputTokens: 4, GPUMillis: 5, CostMicros: 6}) {
		t.Fatalf("Total: got %+v", got)
	}
	if got := DayOfUnixDay(20_395); got != "2025-11-03" {
		t.Fatalf("DayOfUnixDay(20395): got %s", got)
	}
}
