package leasequota_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotasim"
)

// simEngine builds the lease engine of one simulated instance over the
// simulation's shared store (see simLeases).
func simEngine(n quotasim.Node) quota.Backend {
	e, err := leasequota.NewEngine(newSimLeases(n.Shared, leasequota.DefaultValidity), leasequota.EngineOptions{
		Instance:  "n" + strconv.Itoa(n.ID),
		Now:       n.Now,
		Instances: func() int { return n.Instances },
		Validity:  leasequota.DefaultValidity,
	})
	if err != nil {
		panic(err) // options are fixed: a bug in this file
	}
	return e
}

// TestSimFaultFree: lease engines on several instances never over-admit
// any budget, rate or concurrency limit while the store answers.
func TestSimFaultFree(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		scs := quotasim.FaultFree(seed)
		for i := range scs {
			scs[i].Duration = 2 * time.Minute
			scs[i].Start = time.Date(2000, 1, 31, 23, 59, 0, 0, time.UTC) // day and month roll over
		}
		quotasim.Check(t, simEngine, scs...)
	}
}
