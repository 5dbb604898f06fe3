package run

import (
	"fmt"
	"time"
	// Time zones by name must resolve on hosts without a zoneinfo
	// database (minimal containers), as Python's zoneinfo resolves them
	// from the tzdata package.
	_ "time/tzdata"

	"github.com/sluicehq/sluice/internal/flow"
)

// currentDate is LangFlow's CurrentDate (CurrentDateComponent in older
// exports): its "current_date" Message says the executor's time in the
// node's timezone (an IANA name, default UTC), as "Current date and time in
// Europe/Paris: 2025-03-01 14:05:09 CET". A name that is no time zone gives,
// as in LangFlow, a Message that starts with "Error:" rather than a failed
// node.
func (s *state) currentDate(n *flow.Node) error {
	s.setOut(n.ID, "current_date", value{text: currentDateText(s.e.now(), s.text(n, "timezone"))})
	return nil
}

func currentDateText(now time.Time, zone string) string {
	if zone == "" {
		zone = "UTC"
	}
	loc, err := time.LoadLocation(zone)
	if err != nil || zone == "Local" { // Go's "Local" is the host's zone; Python's zoneinfo has no such key
		return fmt.Sprintf("Error: 'No time zone found with key %s'", zone)
	}
	return fmt.Sprintf("Current date and time in %s: %s", zone, now.In(loc).Format("2006-01-02 15:04:05 MST"))
}
