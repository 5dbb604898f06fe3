// Package quotasim owns the deterministic simulation of a multi-instance
// deployment of a quota engine, the proof harness of issue 10: N instances
// (engines built by a Factory) over one shared store, a quota.Memory
// behind a fault injector (latency, spikes, timeouts whose effect lands
// before the caller gives up, after it, or never; outages that refuse or
// hang; a restart that loses every counter and ticket until a node's
// Rebuild restores the budgets from the ledger), clients that acquire,
// settle (under, at and over their reservations, on any instance),
// heartbeat and abandon tickets over a global → tenant → project → user
// chain, and an oracle that checks every admission: for each scope's rate,
// units admitted in every window [t_i, t_j] between admissions ≤ burst +
// limit·(t_j−t_i)/period (net of tokens_rate refunds, overruns allowed);
// for each budget, settled use plus live reservations in the current
// calendar window ≤ limit + the overruns the Backend contract charges
// anyway (use above a reservation, late settles); for concurrency, tickets
// holding a slot ≤ limit. Uncharged is the control: leases never charged
// up front, which the oracle must catch.
//
// Determinism: Run executes in a testing/synctest bubble, so time.Now,
// timers and tickers (the engine's included) read a fake clock that moves
// only when every goroutine is blocked, and goroutines woken at different
// instants run one at a time. Clients act on whole microseconds congruent
// to their index, late-applied calls half a microsecond off that grid,
// and ProbeInterval is a nanosecond off 250 ms, so no two goroutines wake
// at one instant (for outages under about two minutes); the injector draws
// from the calling client's seeded generator. A seed replays its run (the
// Report's Digest), and a failing Report names its seed. An engine must
// not hold a mutex across a call to the store (the bubble would deadlock)
// and must take its clock from Node.Now or time.Now.
//
// The oracle is lenient where the truth is uncertain, so that a correct
// engine is never blamed for latency: a ticket holds from its admission's
// reply, is released when its first settle attempt starts (the work is
// over, whatever the engine answered), and a rate charge counts when the
// store issued the ticket (exact), else at the reply.
//
// Today's quota.Failover, measured by TestFailoverFaulty (3 instances, 24
// clients, 10 simulated minutes, DefaultTree), never breaks a budget, and
// never over-admits while the store answers within the timeout, but:
//   - outages (5 s refused at 3 min, 20 s hanging at 14 min): every
//     instance gets a fresh local burst entering degraded mode, and the
//     shared buckets never saw the local admissions, so another on the way
//     back: global requests (600/min, burst 50) +70.9 over the bound
//     (seed 1; +66.0 seed 2, +63.9 seed 3), tenant tokens_rate (20,000/min,
//     burst 4,000) +1,273 (seeds 1–3: 1,273, 1,966, 3,039); tenant
//     concurrency 7–8 of 5: the local share (5/3 → 1 each) ignores the
//     slots already held in the store;
//   - empty restart (5 s at 3 min): the same rates (+70.9, +3,344 tokens
//     seed 1; +66.0/+3,507 seed 2; +63.9/+5,226 seed 3) and concurrency
//     10–11 of 5: the restart drops live slots, and Rebuild restores only
//     budgets from the ledger;
//   - timeouts (2% of calls spike to 75–300 ms against a 100 ms timeout):
//     the Failover committed at e084ba4 switches mode on any failed call
//     and flaps (~2,450 mode changes in 10 min): global requests +2,195
//     (8,244 admitted against a bound of 6,049, seed 1; +2,293 seed 2,
//     +2,260 seed 3), tenant tokens_rate +78,506 (177,687 against 99,181),
//     concurrency 8 of 5. The Failover with TripAfter and a health probe
//     on failure (uncommitted when this was measured) does not flap here
//     and has no violation.
package quotasim
