package quota_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

func TestMemory(t *testing.T) {
	quotatest.Run(t, func(t *testing.T) (quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		return quota.NewMemory(quota.Options{Now: clk.Now}), clk
	})
}

// TestMemoryShared: one Memory is its own store, so both values of the
// pair are the same engine.
func TestMemoryShared(t *testing.T) {
	quotatest.RunShared(t, func(t *testing.T) (quota.Backend, quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		m := quota.NewMemory(quota.Options{Now: clk.Now})
		return m, m, clk
	})
}
