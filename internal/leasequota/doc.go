// Package leasequota owns the budget-lease engine of issue 10 — decide
// locally, settle globally: Store, the Redis lease store (grant, return,
// renew, reclaim, read, restore, rate adjustments), and Engine, a
// quota.Backend deciding in process against leases taken from it. The app
// runs it with quota_engine: lease (cmd/sluice/lease.go), behind
// quota.Failover; redisquota stays the default (Status).
//
// # Leases, per kind of limit
//
// A lease is a slice of one scope's shared state that Redis has already
// charged to one instance, so everyone else sees it as used:
//
//   - Budgets (tokens/day, tokens/month, gpu, cost): an amount g added to
//     the scope's counter u<k> for window w<k> when granted, clamped to
//     limit − used (Want.Min: grant nothing below it). The counter is
//     settled use + live leases + reservations of recorded tickets +
//     stranded amounts, so Σ over instances ≤ limit by construction. A
//     lease is valid only in its window: at a window's start the first
//     grant resets the counter, older leases are void (their returns
//     return 0), and a grant for an ended window gets 0.
//   - Rates (GCRA): a scope's bucket is a quota.Bucket string (quota.Memory's
//     exact arithmetic: TAT in ns and a fraction in 1/limit ns) that
//     Store.Grant reads, decides on in Go, and writes back by compare-and-
//     set in the grant script (a conflict re-reads; the script checks every
//     bucket of the call before changing anything). A lease at store time s
//     places its slots from A = max(TAT, s+δ) (quota.Bucket.Lease), taking
//     what fits with the bucket's level measured from A;
//     the units must be spent before s+δ (Grant.Deadline; the instance
//     counts δ from when it sent the grant, on its monotonic clock), δ =
//     Options.Validity (250 ms). Why δ: units admitted in [t1,t2] come from
//     grants in [t1−δ,t2], whose slots all lie in [t1, t2+τ]; slots are
//     disjoint, so admissions ≤ B + L·(t2−t1)/P exactly, and a direct
//     one-decision-per-script admission (slots from max(TAT,now), as
//     today) mixes in without breaking it. Unused units lapse at the
//     deadline (they are bucket time: stranded ≤ n units for ≤ τ); the
//     latest grant's units can be returned while its slots are still the
//     bucket's last (TAT == the lease's end): TAT goes back to
//     A + ⌈(n−r)·P/L⌉. An idle bucket's first lease gets B − δ·L/P units at
//     most; the direct path still gets the full burst.
//   - Concurrency: slots g added to u6; an instance admits a ticket with a
//     slot from its lease and puts the slot back in its lease on settle.
//
// Redis keeps one lease record per (scope, instance): expiry e, and per
// meter held g, pinned p, window w; for rates the latest grant's
// A, n, TAT end and deadline.
//
// # Deciding
//
// The engine keeps, per scope, a local lease per meter. A decision checks
// and charges every scope of its chain in process, all-or-nothing under
// one mutex, exactly as quota.Memory: first every check (the chain's
// leases cover the ask, rate units before their deadline), then every
// charge. If any lease is short, the decision does not wait for a refill
// while the refill could make it pass: it goes to the direct path, one
// Redis script per tag touched (the near-limit regime, as redisquota
// today, covered by quotatest.Run on the same engine). Chains span two
// tags (global + tenant), so a direct decision is a grant of exactly the
// ask with Min = ask on the global tag, then on the tenant tag; if the
// second refuses, the first is returned (same request id scheme), so an
// admission never stands on half a chain.
//
// Refill ahead of need, in the background: per (scope, meter), demand d
// is an EWMA of what the instance charged per second; the target is
// d·H (H = 2 refresh intervals, 1 s) and the grant is
// min(target − held, f·remaining) with f = 1/(2·live instances, at least
// 1/8), so near a limit leases shrink to 1 unit and then to nothing, and
// decisions fall back to the direct path. Grants for the scopes of one
// tag go in one Store.GrantBatch (up to 64 scopes: one rates read, one
// script); Remaining in the reply feeds f. Return: budgets held above
// target for an idle interval (3 refreshes), all of an idle budget whose
// limit is near and all idle slots (one slot kept idle per instance made
// the store count it as used: a small department was refused at "4 of 4"
// with 3 running), what the refills of a refused acquire leased,
// everything on shutdown (Close), and on a policy change of the scope (the limit the
// lease was sized against is gone; rates and slots re-granted against
// the new limits, never over them since the new grant clamps to
// new limit − used).
//
// # Settles and tickets
//
// A settle on the owner adjusts leases locally: reserved − actual back to
// the local lease, an overrun taken from it or, beyond it, sent as a
// charge delta (actual use is charged even past a limit). Deltas and
// ticket records go to Redis through one background pipeline per tag,
// flushed every 10 ms or 512 entries, each with a request id:
//
//   - record(ticket): SET {tag}:k:<ticket> (owner instance, chain, per
//     scope and meter the reservation and its window, expiry, meta) and
//     move the reservation from the owner's lease record to the ticket
//     (g −= r), in one script per tag.
//   - settle(ticket, usage): marks the record settled (idempotent) and
//     applies u += actual − reserved on its scopes; on the owner it is
//     queued, off the decision's path.
//
// A settle or heartbeat on another instance reads the record (one GET on
// the ticket's tag; the ticket id names its tenant) and runs the settle
// script on each tag (two round trips for a tenant chain, plus a wait of
// at most one flush interval, retried once, if the record is not there
// yet). The owner learns of it when its own queued settle or the ticket's
// expiry finds the record settled, and drops the reservation locally. A
// recorded ticket outlives its owner: its reservation is refunded at its
// expiry by the reclaim of its scopes (ticket records on a sorted set by
// expiry, like redisquota's).
//
// # Pins, crashes and what can be stranded
//
// The instance may commit from a lease only what it has pinned. Its
// committed amount is what it spent or reserved that the store cannot tell
// apart from the unspent rest: reservations of tickets not yet recorded
// and the use settled on them (a record moves a reservation out of the
// lease; use stays counted in u either way). Every Grant and Renew carries
// per (scope, meter) a pin p = committed + extra + margin, margin = a
// quarter horizon of demand (at least 1), and a sequence number: the
// store takes a pin only if its number is above the last it applied (so
// a renewal overtaken by a later grant changes nothing), and the engine
// lowers its own bound before sending a lower pin and raises it only when
// its latest pin is acknowledged. A decision the pin stops while the lease
// holds enough raises the pin with one grant of nothing; the background
// loop renews when the room is under half the margin. When a lease
// expires (not renewed for its TTL, 10 s; renewed every 2.5 s or sooner;
// the instance stops spending at send time + TTL − a fifth of its last
// acknowledged renew), reclaim frees g − min(p, g) at once. A budget
// keeps min(p, g) counted (s<k>, stranded) for the rest of its window —
// it may have been spent — and concurrency keeps it until the time the
// last renewal gave (Pin.Until: its unrecorded tickets' expiry, the lease
// TTL plus the longest TTL it issued on the scope), at most e + MaxTTL. Rates lapse by themselves. So a
// crash strands, per (scope, meter), what the instance had committed
// (real use and the reservations of tickets younger than RecordAfter) and
// a margin of a quarter second of its demand, for the window (budgets)
// or MaxTTL (slots); the rest of its leases returns within one TTL
// (TestCrashStrandsOnlyWhatWasPinned: a lease of 1,000 tokens with 100
// settled strands 350 and returns 650). Recorded tickets of the dead
// instance stay settleable elsewhere and are refunded at their expiry.
// The ledger reconciliation may release stranded budget the ledger shows
// unspent (later).
//
// # Outages and unknown outcomes
//
// Redis down: the engine decides on the leases it holds until they run
// out, expire (TTL since the last acknowledged renew) or their rate
// deadline passes; then per on_outage: deny, or local, a share computed
// at the last successful sync from what *remained* on every scope of the
// chain (Remaining of each meter of each scope, divided by live
// instances, reduced by what this instance's leases already held), taken
// once per outage and never topped up by a mode change. Leaving degraded
// mode reports the local share's use as charge deltas (idempotent by
// request id) before new grants; rates get no fresh bucket: TAT was
// advanced by grants only. Mode changes follow quota.Failover (TripAfter
// consecutive failures or a failed probe in, a successful probe out).
//
// Every mutating script carries a request id and stores its reply at
// {tag}:q:<id> for Options.ReplayTTL: Store retries a lost reply with the
// same id (Options.Retries) and a later call with that id returns the
// first reply (GrantResult.Replay) — a grant Redis carried out is never
// applied twice nor leaked: the engine either learns it or, after the
// retries, keeps the id and returns the amount with Return(id) when Redis
// answers. Renew sets absolute values and needs no id.
//
// # Keys (Redis Cluster)
//
// Hash tag {prefix:t:<tenant>} for every scope of a tenant's subtree
// (tenant, departments, projects, users, memberships), {prefix:g} for the
// global scope and scopes outside tenants:
//
//	<tag>:s:<scope>  hash: u<k> used, w<k> window (budgets), t<k> TAT µs
//	                 (rates), s<k> stranded
//	<tag>:l:<scope>  hash: instance → lease record (msgpack)
//	<tag>:x:<scope>  sorted set: instance by lease expiry µs
//	<tag>:z:<scope>  sorted set: stranded slots, "instance|expiry|count" by release µs
//	<tag>:q:<id>     string: a request id's first reply (msgpack)
//	<tag>:epoch      string: set once the tag's counters hold the ledger
//
// The engine takes a chain scope's tag from quota.Scope.Tenant
// (EngineOptions.ChainTenants) and asks EngineOptions.Tenant only for a
// key met alone (Use, Restore). The app keeps the epoch of record on the
// global tag and a copy on every tenant's tag, listed in <g>:tags
// (cmd/sluice/lease.go): a tag whose copy is gone makes the whole state
// be wiped and rebuilt.
//
// A script touches one tag. Global traffic is one small grant per
// instance per refresh, not per decision. Rolling upgrade from
// redisquota's {sluice} layout is not supported: switch with an empty
// prefix and a rebuild from the ledger.
//
// # Never over-admit
//
// Every admitted unit was charged in Redis before it was spent: budgets
// and slots leave the counter when granted; rate units occupy slots after
// their spending time. An instance crash leaves its leases charged until
// reclaim, which frees only unpinned amounts; a Redis timeout is resolved
// by request id; an outage spends only what was charged, then a share of
// what remained. An empty Redis has no epoch on the tag (RequireEpoch),
// and once an instance has adopted an epoch its calls name it
// (Store.ExpectEpoch), so a call made under an older one fails too: the
// engine drops its leases at the first such call (they are not in the
// rebuilt counters), and the failover rebuilds the counters from the
// ledger, readmits the live tickets (Readmit: their slots and
// reservations charged again, past the limit), has the store hold the
// slots of the local tickets still running (HoldSlots), waits out the
// resynchronisation hold (quota.FailoverOptions.ReadmitHold: no instance
// decides on the rebuilt counters while another may still admit on its
// local share or not have readmitted) and gives back every lease taken
// meanwhile (Recovered) before it decides on the engine again. A policy
// change clamps new grants to the new limit, while old leases (charged
// under the old one) are returned; a lowered limit is thus exceeded by
// at most the leases outstanding at the change, exactly as a ticket
// admitted before it.
//
// # From Doorman
//
// Taken: leases with an expiry and a refresh interval, clients that
// refresh ahead of need and keep deciding on what they hold when the
// server is gone, a capacity algorithm sizing each lease from the
// client's wants (here recent demand, proportional-share capped by a
// fraction of what remains), a safe capacity for outages (here computed
// from what remained, per scope). Changed: Doorman leases rates (a qps
// share); budgets here are cumulative amounts charged on grant, and rates
// are GCRA bucket slots with a spend deadline, so the shared bound is
// exact rather than converging after a refresh; no master and no learning
// mode — Redis holds the truth atomically and a crashed instance's grant
// survives in Redis; leases are per scope of a chain and an admission
// charges all of them at once; pins make crash reclaim safe for amounts
// that may have been spent.
//
// # Status
//
// Engine decides in process on per-scope leases of every budget and slot
// meter (counted even where unlimited) and on rate lots leased by the
// background loop. A decision whose lease is short goes to the store,
// scope by scope in chain order, in quota.Memory's check order: budgets
// and slots as a lease of the shortfall (plus recent demand while the
// limit is far), rates as a direct decision whose refusal carries the
// bucket it was refused on, so the denial is quota.Memory's to the
// nanosecond; a refusal gives back the rate units the same acquire took
// at earlier scopes (while no decision has followed them) and the budget
// and slot leases its refills added (as far as they are unspent). A model
// refused at scope j is reported unless a scope before it refuses the ask
// (checked, charging nothing). A scope's grants and returns are
// serialised (a channel lock, so the synctest simulation can advance its
// clock) and Use reads under it. A lease whose record may have expired by
// the engine's clock is renewed before it is spent; the store's reclaim
// leaves the calling instance's own lease alone. Settle refunds
// tokens_rate as quota.Memory does (into the lots it came from, or by
// AdjustRate for direct units); Restore sets a counter to the ledger's
// use plus what other instances' leases hold plus this instance's unspent
// lease.
//
// A return to the store sets its amount aside (ret) rather than taking it
// out of the lease at once: while the call is out, the lease still counts
// it and the store does too, so a ticket's Remaining (lease + what the
// store said remains, signed: a counter past its limit after an overrun
// takes from it) is exact at every instant — the last flake of the suite.
//
// Proved: quotasim.Check strict on FaultFree seeds 1–3, 3 instances
// (sim_test.go). quotatest.Run, unchanged, on one engine over the real
// store (TestSuiteAll, by default; 90–100 s on this machine because near a
// limit every rate decision is two store calls): passed 7 runs of 7.
// TestCompareEngines (SLUICE_COMPARE=1) asserts no user is admitted beyond
// its rate or budget, in both regimes.
//
// Tickets are settleable anywhere (engine_tickets.go): a ticket still
// live RecordAfter (50 ms, monotonic clock) after it was issued is
// recorded by a background recorder, one RecordTickets script per tag for
// up to 256 tickets, which moves its reservations out of the lease; a
// ticket settled before then costs the store nothing. The id names the
// ticket's tags (tkt_<random>.g.t<tenant>), so another instance settles,
// heartbeats or looks it up with one script per tag (two for a tenant
// chain), waiting up to three times RecordAfter + 2·RecordEvery for the
// issuer's recorder when the record is not there yet. A recorded ticket
// is settled through the store on its issuer too (one script per tag).
// Expired records are refunded by every grant script on their tag (and
// RecordTickets, and a periodic sweep): a decision short of budget finds
// them back. Close records every live ticket before returning its
// leases, so the tickets of a stopped instance still settle elsewhere.
// The issuer records a ticket on each of its tags in a separate call, so
// a settle elsewhere can find the record on one tag and not yet on the
// other: it used to settle the tags that knew the ticket and answer, and
// the late record then kept its reservations (a slot, and the ask's
// tokens, use uncharged) counted on a live record until its expiry —
// under load, cmd/sluice's TestLeaseEngineLimitsHold ended with a slot
// still counted on the global or the tenant's scopes about one run in
// six. Now the settle leaves a settled record with no reservation on each
// tag that does not know the ticket (Store.SettleTicketAhead, for
// ReplayTTL), and the issuer's record, when it lands on it, moves the
// reservations out of the lease and settles them at once (freed, use
// charged; TestSettleElsewhereBeforeEveryTagIsRecorded). A record that
// never lands (the issuer died in between) leaves them in its lease
// record, reclaimed as for any unrecorded ticket. The same test's 6 to 10
// runs held at once under load were not the engine's: an instance decided
// acquires on a policy snapshot that did not have the user's limits yet
// (the key is authenticated from the store, the snapshot trails it by up
// to the watch interval), so its user lease was granted as unlimited;
// the cluster now waits for every instance to hold the user's limits.
// An acquire keeps the chain it started with for as long as it waits on
// the store (seconds under load).
// Left: a settle elsewhere does not refund tokens_rate (the bucket keeps
// the reservation: under-admission of at most the difference for one
// period); a replayed settle of a ticket settled on its issuer before it
// was recorded is unknown on other instances (the app's ledger has it).
// Proved by quotatest.RunShared on two engines (TestSuiteShared),
// TestTicketsOutliveTheirIssuer, TestRecordedTicketExpires, and
// cmd/sluice's TestLeaseEngineLimitsHold, whose settles go to random
// instances.
//
// Outages and unknown outcomes, as built: the app wraps the engine in
// quota.Failover (Charge, ChargeRates, AcquireBudgets: failover.go,
// engine_budgets.go), which switches to local shares computed from what
// remained on every scope when calls fail. Degraded, it decides first
// on what the leases hold (AcquireHeld, quota.HeldDecider: no store call;
// up to each lease's pin, the part a crash of this instance could not
// free twice, and within its validity), and only when they do not cover
// an ask per on_outage. A grant or return whose call failed is kept and
// sent again with its request id until the store answers (unsent,
// resendUnknown). A state loss (ErrEpochLost) drops every lease at the
// first call that sees it; after the rebuild the failover calls Rebuilt
// (each scope returns what its new record holds, then forgets it) and
// Readmit for each live ticket (engine_loss.go). Proved on real
// processes by cmd/sluice's TestLeaseEngineRedisKilled (AOF),
// TestLeaseEngineRedisComesBackEmpty and TestLeaseEngineInstanceKilled.
//
// Not yet:
//   - Three instances sharing scopes: scopes an instance sees only a few
//     times a second (pairs spread round-robin over instances and users)
//     get no use from rate lots, which are spendable for Validity (250
//     ms), so their decisions take the direct path: a read and a
//     compare-and-set per scope with a limited rate. Refill now sends a
//     chain's short scopes to the store at once (the first refusal in
//     chain order answers; rate units later scopes took are given back),
//     which took TestCompareEngines' 3-instance case from 398 / 750 to
//     22,874 / 11,702 pairs/s (2 / 16 goroutines; one run): faster
//     decisions raise per-scope demand until lots pay. The background
//     refill now costs one read and one compare-and-set script per tag
//     (and 64 scopes) rather than per scope; a decision's direct path is
//     still per scope. Left: lots that live longer where the bucket's
//     burst window allows.
//
// Store fix found by the engine: prelude.lua's s() printed −0 as "-0",
// which HINCRBY refuses, so reclaiming a fully pinned lease failed.
//
// # Performance
//
// BenchmarkGrantReturn (a 3-meter grant and a 2-meter return: one refill
// cycle, which serves many decisions) on this 2-core machine with
// redis-server 7.0 on loopback: 321 µs a cycle sequential, 360 µs with 8
// goroutines (Redis and the client share the cores), about 3,100 cycles/s.
//
// BenchmarkEngineAcquireSettle (one engine, quotatest.BenchChains(64),
// limits far away, timed after a second of warm-up; 2026-12-03, the
// machine shared with other builds): 3.9 KB and 7–8 allocations a pair
// (was 8.9 KB and 10–11: the reservation slice grew once per decision);
// in runs that stayed on leases (under 0.045 store calls a pair) 63,000 /
// 58,000 pairs/s at -cpu 1 / 2 against 43,000 / 46,000 before, but a
// majority of the runs of either version fell to 0.05–2.8 store calls and
// 900–41,000 pairs/s. Below the 100,000. Where the time goes
// (-cpu 1): decide 42 % (36 reservations of 88 bytes are now most
// of what it allocates), the collector 16 % (it marks, among the rest,
// up to 65,536 settled tickets kept for replays), Settle 13 %, and the
// background refill 16 %: about 150 grants a round, each two round
// trips (the rate buckets are read, then the script runs), so a round
// takes 47–67 ms of the 100 ms refresh while rate lots overlap by 25 ms
// (Validity less 10 %, less two refreshes). A lot that lapses before its
// successor lands sends the scope's decisions to the store (refillScope
// and AdjustRate, 11 %), which slows the next round: past a point most
// decisions do.
//
// The refill now sends one GrantBatch per tag and up to 64 scopes
// (grantRound: the batch's rate buckets read in one script, every call
// in one script, a conflicting call read and sent again alone; each call
// keeps its request id and its replay). Same benchmark, 2026-12-03, 6
// alternating runs each, medians: 65,818 / 67,100 pairs/s at -cpu 1 / 2
// before and 0.032 store calls a pair; 83,640 / 91,318 after and 0.0023
// (a batch counted as one call), 111,346 at best; no run of either fell
// off the leases this time. A batch's script took 14 ms at the median
// under that load, for a round of three side by side (47–67 ms before).
// Still needed for the floor at -cpu 1: a decision short of rate units on
// a busy scope far from its limit leasing rather than deciding directly
// (a denied decision must then give the lease back: the suite's "denial
// changed scope" property fails otherwise); a smaller reservation; less
// for the collector to mark.
package leasequota
