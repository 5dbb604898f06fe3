package run

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
)

// The expected texts are Python's datetime.now(ZoneInfo(zone)).strftime
// ("%Y-%m-%d %H:%M:%S %Z") at the same instant, as LangFlow writes them.
func TestCurrentDateText(t *testing.T) {
	winter := time.Date(2025, 3, 1, 13, 5, 9, 0, time.UTC)
	summer := time.Date(2025, 7, 1, 13, 5, 9, 0, time.UTC)
	tests := []struct {
		now  time.Time
		zone string
		want string
	}{
		{winter, "", "Current date and time in UTC: 2025-03-01 13:05:09 UTC"},
		{winter, "UTC", "Current date and time in UTC: 2025-03-01 13:05:09 UTC"},
		{winter, "Europe/Paris", "Current date and time in Europe/Paris: 2025-03-01 14:05:09 CET"},
		{winter, "America/New_York", "Current date and time in America/New_York: 2025-03-01 08:05:09 EST"},
		{summer, "America/New_York", "Current date and time in America/New_York: 2025-07-01 09:05:09 EDT"},
		{winter, "Asia/Kolkata", "Current date and time in Asia/Kolkata: 2025-03-01 18:35:09 IST"},
		{winter, "Etc/GMT+5", "Current date and time in Etc/GMT+5: 2025-03-01 08:05:09 -05"},
		{winter, "Mars/Base", "Error: 'No time zone found with key Mars/Base'"},
		{winter, "Local", "Error: 'No time zone found with key Local'"},
		{winter, "../../etc/passwd", "Error: 'No time zone found with key ../../etc/passwd'"},
	}
	for _, tt := range tests {
		if got := currentDateText(tt.now, tt.zone); got != tt.want {
			t.Errorf("currentDateText(%s, %q): got %q, want %q", tt.now.Format(time.RFC3339), tt.zone, got, tt.want)
		}
	}
}

// TestCurrentDateAsTool: in an Agent's tools CurrentDate is LangFlow's
// get_current_date, taking the zone the model asks for, else the node's.
func TestCurrentDateAsTool(t *testing.T) {
	at := time.Date(2025, 3, 1, 13, 5, 9, 0, time.UTC)
	s := &state{e: &Executor{Now: func() time.Time { return at }}, job: &Job{}, outputs: map[string]map[string]value{}, inputs: map[string]map[string][]value{}}
	n := &flow.Node{ID: "date", Type: "CurrentDate", Params: map[string]flow.Param{"timezone": {Value: "Asia/Kolkata"}}}
	tl := s.toolFor(n)
	if tl.def.Name != "get_current_date" || !strings.Contains(string(tl.def.Parameters), "timezone") {
		t.Fatalf("tool %s %s, want get_current_date taking a timezone", tl.def.Name, tl.def.Parameters)
	}
	for args, want := range map[string]string{
		"":             "Current date and time in Asia/Kolkata: 2025-03-01 18:35:09 IST",
		"Europe/Paris": "Current date and time in Europe/Paris: 2025-03-01 14:05:09 CET",
	} {
		got, err := tl.run(context.Background(), map[string]any{"timezone": args})
		if err != nil || got != want {
			t.Errorf("get_current_date(%q) = %q, %v; want %q", args, got, err, want)
		}
	}
}
