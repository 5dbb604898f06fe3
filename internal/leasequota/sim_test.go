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

// TestSimFaulty: lease engines on several instances never over-admit
// while the store is slow, times out with unknown outcomes (calls carried
// out whose replies were lost or came late) or is away for a while: every
// admitted unit was charged in the store first, whatever its reply did.
// (The store stand-in has no epoch: an empty restart is proved on real
// processes, cmd/sluice's TestLeaseEngineRedisComesBackEmpty.)
func TestSimFaulty(t *testing.T) {
	for _, sc := range quotasim.Faulty(1) {
		if sc.Name == "empty-restart" {
			continue
		}
		sc.Duration = 3 * time.Minute
		r := quotasim.Run(t, simEngine, sc)
		t.Logf("%s", r)
		if r.Violations > 0 {
			excess, v := r.Worst("")
			t.Errorf("%s: %d over-admissions, worst %s (excess %.1f); want none", sc.Name, r.Violations, v, excess)
		}
		if r.Admitted == 0 || r.Store.Timeouts+r.Store.Down == 0 {
			t.Errorf("%s: %d admitted, %d timeouts, %d calls while down: the run proves nothing", sc.Name, r.Admitted, r.Store.Timeouts, r.Store.Down)
		}
	}
}
