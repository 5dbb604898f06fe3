package quota_test

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// TestFailoverShared: two Failovers on one shared backend (two instances)
// settle each other's tickets.
func TestFailoverShared(t *testing.T) {
	quotatest.RunShared(t, func(t *testing.T) (quota.Backend, quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC))
		shared := &flaky{Memory: quota.NewMemory(quota.Options{Now: clk.Now})}
		newInstance := func() *quota.Failover {
			return quota.NewFailover(shared, quota.FailoverOptions{Probe: func(context.Context) error { return shared.err() },
				Local: quota.Options{Now: clk.Now}})
		}
		return newInstance(), newInstance(), clk
	})
}
