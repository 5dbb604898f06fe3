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
// clients, 10 simulated minutes, DefaultTree, seeds 1–3), never breaks a
// budget, and never over-admits while the store answers within the
// timeout. Before and after the outage fixes (a degraded instance fills its
// local rate buckets when a spell begins, so it admits at most its share of
// a rate from the first moment; its local concurrency share is net of the
// slots its live shared tickets hold):
//   - outages (5 s refused at 3 min, 20 s hanging at 14 min): were global
//     requests (600/min, burst 50) +70.9/+66.0/+63.9 over the bound, tenant
//     tokens_rate (20,000/min, burst 4,000) +1,273/+1,966/+3,039,
//     tenant concurrency 7–8 of 5; now no violation on any seed;
//   - empty restart (5 s at 3 min): were requests +70.9/+66.0/+63.9,
//     tokens_rate +3,344/+3,507/+5,226, concurrency 10–11 of 5; now a
//     user's requests +0.7/+1.5/+1.9, tenant tokens_rate +480/+252/+599,
//     concurrency 9/8/9 of 5: the restart empties the store's rate buckets
//     and drops the live slots (Rebuild restores only budgets), so the
//     instances' tickets from before it run beside new admissions;
//   - timeouts (2% of calls spike to 75–300 ms against a 100 ms timeout):
//     the Failover committed at e084ba4 switched mode on any failed call
//     and flapped (~2,450 mode changes in 10 min, global requests +2,195);
//     with TripAfter and a health probe on failure it does not flap and
//     has no violation.
package quotasim
