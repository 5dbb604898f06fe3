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
