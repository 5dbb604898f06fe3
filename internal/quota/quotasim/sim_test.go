package quotasim_test

import (
	"flag"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotasim"
)

// seed replays a run: go test -run TestFailoverFaulty -quotasim.seed=N.
var seed = flag.Uint64("quotasim.seed", 1, "seed of the simulated runs")

// direct is every instance calling the shared store itself: one
// quota.Memory shared by N instances, exact by construction.
func direct(n quotasim.Node) quota.Backend { return n.Shared }

// failover is today's engine: quota.Failover over the shared store.
func failover(n quotasim.Node) quota.Backend {
	return quota.NewFailover(n.Shared, quota.FailoverOptions{
		Instances:     func() int { return n.Instances },
		Probe:         n.Probe,
		Rebuild:       n.Rebuild,
		ProbeInterval: quotasim.ProbeInterval,
		OnMode:        n.OnMode,
		Local:         quota.Options{Now: n.Now},
	})
}

func shorter(scs []quotasim.Scenario, d time.Duration) []quotasim.Scenario {
	for i := range scs {
		scs[i].Duration = d
	}
	return scs
}

var invariants = []string{quotasim.InvRequests, quotasim.InvTokensRate, quotasim.InvTokensDay, quotasim.InvTokensMonth,
	quotasim.InvGPU, quotasim.InvCost, quotasim.InvConcurrency}

// TestControlCaught: engines that admit on leases never charged to the
// store up front over-admit every kind of limit, and the oracle says so.
func TestControlCaught(t *testing.T) {
	sc := quotasim.FaultFree(*seed)[0]
	sc.Duration = 5 * time.Minute
	r := quotasim.Run(t, quotasim.Uncharged(), sc)
	for _, inv := range []string{quotasim.InvRequests, quotasim.InvTokensRate, quotasim.InvTokensDay, quotasim.InvConcurrency} {
		if r.Count(inv) == 0 {
			t.Errorf("%s violations of the uncharged control: got 0, want some\n%s", inv, r)
		}
	}
	if excess, v := r.Worst(quotasim.InvRequests); excess < 50 {
		t.Errorf("worst requests excess of the control: got %.1f (%s), want ≥ 50", excess, v)
	}
}

// TestMemoryShared: N instances on one quota.Memory never over-admit, with
// the store calm, slow, timing out with unknown outcomes, or away (each
// call then simply fails). The oracle's sanity check: no false alarms.
func TestMemoryShared(t *testing.T) {
	scs := quotasim.FaultFree(*seed)[:1]
	scs[0].Duration = 25 * time.Minute // long: two day windows and a month's
	scs = append(scs, shorter(quotasim.Faulty(*seed)[:2], 5*time.Minute)...)
	quotasim.Check(t, direct, scs...)
}

// TestFailoverFaultFree: quota.Failover instances never over-admit while
// the store answers within the timeout.
func TestFailoverFaultFree(t *testing.T) {
	quotasim.Check(t, failover, shorter(quotasim.FaultFree(*seed), 10*time.Minute)...)
}

// TestFailoverFaulty measures the Failover through timeouts, outages and
// an empty restart (figures in the package comment) and asserts what
// holds: budgets are kept everywhere; timeouts and outages (the store
// refusing or hanging, counters kept) break no invariant at all, since a
// degraded instance starts from full local rate buckets and holds its
// shared tickets' slots against its concurrency share; after an empty
// restart, which loses the store's live slots and rate buckets, the
// excess stays within the bounds below (a user's requests by a few
// units, a tenant's tokens_rate by well under one burst, concurrency by
// the slots the restart dropped).
func TestFailoverFaulty(t *testing.T) {
	// Worst excess allowed per invariant after an empty restart.
	restart := map[string]float64{quotasim.InvRequests: 5, quotasim.InvTokensRate: 1000, quotasim.InvConcurrency: 5}
	for _, sc := range shorter(quotasim.Faulty(*seed), 10*time.Minute) {
		r := quotasim.Run(t, failover, sc)
		t.Logf("%s", r)
		for _, inv := range invariants {
			n := r.Count(inv)
			if n == 0 {
				continue
			}
			excess, v := r.Worst(inv)
			t.Logf("  %s: %d violations, worst excess %.1f: %s", inv, n, excess, v)
			if allowed, ok := restart[inv]; ok && sc.Name == "empty-restart" {
				if excess > allowed {
					t.Errorf("%s: %s worst excess %.1f (%s): got more than %.0f", sc.Name, inv, excess, v, allowed)
				}
				continue
			}
			t.Errorf("%s: %s over-admitted %d times, worst %s (excess %.1f): got a violation, want none", sc.Name, inv, n, v, excess)
		}
	}
}

// TestDeterministic: a seed replays its run exactly, faults, outage and
// probes included.
func TestDeterministic(t *testing.T) {
	sc := quotasim.Faulty(*seed)[1]
	sc.Duration = 5 * time.Minute
	sc.Faults.Outages = []quotasim.Outage{{At: time.Minute, For: 5 * time.Second}, {At: 3 * time.Minute, For: 10 * time.Second, Hang: true}}
	a := quotasim.Run(t, failover, sc)
	b := quotasim.Run(t, failover, sc)
	if a.Digest != b.Digest || a.String() != b.String() {
		t.Errorf("replay of seed %d: got\n%s\nwant\n%s", sc.Seed, b, a)
	}
	sc.Seed++
	if c := quotasim.Run(t, failover, sc); c.Digest == a.Digest {
		t.Errorf("seeds %d and %d: got equal digests %x, want different runs", sc.Seed-1, sc.Seed, a.Digest)
	}
}
