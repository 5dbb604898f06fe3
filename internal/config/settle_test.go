package config_test

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

// TestSettleBoundsParse: a file that names one settle amount keeps the
// defaults of the others, 0 is a real bound, and the sanity bound may not
// be below the overrun.
func TestSettleBoundsParse(t *testing.T) {
	c := config.Default()
	if err := c.Parse(strings.NewReader("settle_overrun:\n  tokens: 0\n")); err != nil {
		t.Fatal(err)
	}
	got, want := c.SettleOverrun.Units(), (config.SettleUnits{Tokens: 0, GPUMillis: 60_000, CostMicros: 1_000_000})
	if got != want {
		t.Fatalf("settle_overrun after naming tokens only: got %+v, want %+v", got, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	c = config.Default()
	if err := c.Parse(strings.NewReader("settle_sanity:\n  gpu_seconds: 1\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "settle_sanity") {
		t.Fatalf("sanity below overrun: got %v, want an error naming settle_sanity", err)
	}
}
