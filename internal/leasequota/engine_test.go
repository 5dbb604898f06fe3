package leasequota_test

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
)

// newEngine returns an engine on a fresh prefix of the shared
// redis-server, reading clk (the scripts too), closed when the test ends.
func newEngine(t *testing.T, clk *quotatest.Clock) *leasequota.Engine {
	t.Helper()
	st := newStore(t, newClient(t), nil, leasequota.Options{Clock: clk.Now})
	e, err := leasequota.NewEngine(st, leasequota.EngineOptions{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// TestSuiteAll runs quotatest.Run, unchanged, on one Engine: every
// figure quota.Memory gives, the engine gives (near a limit, rates are
// decided in the store directly; far from one, from leases).
func TestSuiteAll(t *testing.T) {
	quotatest.Run(t, func(t *testing.T) (quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Time{})
		return newEngine(t, clk), clk
	})
}
