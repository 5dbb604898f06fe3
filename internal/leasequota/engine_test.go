package leasequota_test

import (
	"os"
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

// TestSuiteAll runs quotatest.Run on one Engine. Most cases fail today
// (doc.go, Status), so it runs only with SLUICE_LEASE_SUITE=1.
func TestSuiteAll(t *testing.T) {
	if os.Getenv("SLUICE_LEASE_SUITE") == "" {
		t.Skip("set SLUICE_LEASE_SUITE=1: the lease engine does not pass the suite yet (doc.go, Status)")
	}
	quotatest.Run(t, func(t *testing.T) (quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Time{})
		return newEngine(t, clk), clk
	})
}
