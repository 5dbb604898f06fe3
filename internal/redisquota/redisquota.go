// Package redisquota is the shared quota.Backend: it keeps every counter,
// bucket, lease and ticket in Redis, so that many Sluice instances enforce
// one set of limits exactly. Each Acquire, Settle and Charge (and
// ChargeRates, which quota.Failover uses to hand back the rate units it
// admitted locally during an outage) is one Lua script, one round trip,
// atomic over the whole chain; the checks and their
// order, the denials, clamping, GCRA arithmetic, calendar windows, expiry
// refunds and the idempotency of settlements and charges are
// quota.Memory's, and the package passes quotatest.Run unchanged.
//
// Time is Redis's: the scripts call TIME, which Redis 5 and later allow in a
// script that writes because they replicate a script's effects, not the
// script. So instances' clocks do not matter. Options.Clock replaces TIME
// with a time passed in each call, for tests that control time. Lua has no
// time zone database: the Go side computes each zone's day and month
// windows (and their neighbours, so clock differences up to a window do not
// matter) and passes them in.
//
// Keys. Every key starts with the hash tag {prefix} (Options.Prefix,
// "sluice" by default), so all of a deployment's keys are in one Redis
// Cluster slot:
//
//	{sluice}:s:<scope>   string, msgpack: zone, windows, budget counters, two GCRA buckets
//	{sluice}:l:<scope>   sorted set: live tickets holding a concurrency slot (leases), by expiry µs
//	{sluice}:r:<scope>   sorted set: other live tickets that reserved something, by expiry µs
//	{sluice}:t:<ticket>  string, msgpack: expiry, reservations, scopes and windows charged,
//	                     the caller's meta; once settled, the settlement and meta, and
//	                     once expired unsettled, what a late settle needs, each kept
//	                     for SettledRetention
//	{sluice}:c:<charge>  string: when a Charge with this id was counted, kept for ChargeRetention
//	{sluice}:instances   sorted set: Sluice instances by last heartbeat (Instances)
//	{sluice}:epoch       string: set once the counters hold the ledger (NewEpoch), no TTL
//	{sluice}:rebuild     string: the instance rebuilding the counters (LockRebuild)
//
// Every key but the epoch has a TTL: a scope's state lives until its month window ends,
// its buckets drain and any ticket that charged it expires, plus an hour; a
// ticket until it expires or, while it holds a reservation, its month
// window ends, plus an hour or SettledRetention if longer; a settlement or
// an expired ticket for SettledRetention; a charge
// id for ChargeRetention; the instance registry for its TTL.
//
// One slot for all keys is a deliberate choice. The global scope is in
// every chain, and an expired ticket's refund touches every scope of its
// chain, so tagging keys per tenant would put global in another slot than
// the rest of every request, and a script cannot span slots. Keeping global
// exact across tenant slots would take a second round trip per decision
// (no longer atomic) or splitting global limits into per-tenant shares (an
// approximation that refuses what the global limit allows). One slot is
// exact and simple; its cost is that one Redis primary carries all of a
// deployment's decisions (docs/performance.md says how many). Deployments
// that outgrow it run several prefixes, e.g. one per region.
//
// Expiry is exact and lazy: a script releases the expired tickets of every
// scope it reads before reading it (a scope's state keeps a lower bound of
// its tickets' expiries, so usually there is nothing to look at), and
// Settle, Heartbeat and Use check a ticket's own expiry to the nanosecond.
// Settle is one round trip except when a scope the ticket charged has not
// been seen since its day or month ended (its first settles after
// midnight): it then takes a second, with that scope's zone's windows.
//
// Precision. Lua numbers are doubles. The scripts keep times relative to now
// in integer ns (exact within ±2^53 ns, about 104 days), store them as Unix
// seconds and ns or as decimal strings of ns, and multiply-divide through exact 24-bit-limb arithmetic.
// Exact within these bounds: asks, usage and limits up to 2^52 (4.5·10^15;
// larger asks and usage are ErrInvalid); budget counters up to 2^53, where
// they saturate; rates whose limit and period in ns, each divided by their
// gcd, are at most 2^52 and whose bucket capacity burst·period/limit is at
// most 2^52 ns (52 days). Other rates refuse every ask, as an invalid rate
// does. A bucket's level, which only a huge overrun can push that far, is
// capped at 2^52 ns (quota.Memory caps it at 2^61).
//
// Differences from quota.Memory, none of which quotatest can see: a denial
// writes nothing, where Memory keeps a changed rate's parameters or a
// changed time zone it adopted while checking (the next admission adopts
// them instead); settlements are kept for SettledRetention with no count
// bound (Memory's MaxSettled); a Restore whose window start is not a whole
// second is ignored (no window starts there); the bounds above; and
// Redis's clock is trusted to move forward (Memory never lets its now go
// back).
//
// Operation. Redis must not evict these keys: run it with maxmemory-policy
// noeviction (every key has a TTL, so volatile-* policies would pick them).
// A failover to a replica can lose the last writes acknowledged by the
// primary (replication is asynchronous); the loss is of recent admissions
// and settlements, never a fake admission.
//
// A Redis that lost everything (restarted without persistence, a fresh
// replica, FLUSHALL) would hand every scope a fresh budget. With
// Options.RequireEpoch, Acquire, Settle, Heartbeat and Charge pass the
// epoch key last in KEYS (one slot, so Cluster routing holds) and their
// script checks it exists (one EXISTS) before anything else: without it
// they change nothing and return ErrEpochLost, an outage to
// quota.Failover. Restore, Use and Lookup do not check it, so that the
// counters can be rebuilt from the ledger before the epoch is set again;
// the rebuild itself (lock, restore, SetEpoch) is the caller's, which
// owns the ledger. The ledger holds no live ticket: after the rebuild each
// instance's quota.Failover readmits the tickets it issued that still run
// (Readmit: acquire.lua taking the ticket id, slot and reservations back,
// checking nothing), so concurrency limits hold across the loss.
//
// Outages. AcquireBudgets, what quota.Failover calls, also returns every
// scope's budget counters (the script reads them anyway), from which it
// shares what is left of each scope's budgets among the instances during
// an outage; ChargeRates hands the shared rate buckets, after it, what was
// admitted locally meanwhile (see quota.Failover).
//
// Unknown outcomes. Every script call that changes Redis carries an id:
// the ticket's for Acquire (a fresh random one), Settle and Heartbeat, the
// charge's for Charge. When a call's reply is lost (Options.Timeout passes,
// the connection breaks, the caller stops waiting), Redis may or may not
// have carried it out. Settle, Charge and Heartbeat are idempotent by
// their id and are sent again, up to Options.Retries times. A lost
// Acquire's ticket id goes to the voider (void.go), a goroutine the
// Backend owns and Close stops: it runs void.lua, with retries, until
// Redis answers; the script releases the ticket if it was granted (as a
// zero-use settle that records nothing) or else writes a tombstone that
// acquire.lua refuses (every acquire checks its ticket key does not
// exist), so a lost acquire holds no slot and no reservation once Redis
// answers again. The Acquire itself is tried again with a fresh id, after
// one void of the lost id where Redis answers it (so the retry does not
// meet the lost acquire's own slot).
//
// When Redis cannot be reached or does not answer within Options.Timeout
// (after the retries), a call returns an error wrapping ErrUnavailable;
// the caller (quota.Failover) decides whether that is an outage.
// Options.Observe sees every call's latency and outcome.
//
// {sluice}:t:<ticket> also holds "V " for ten minutes once voided.
package redisquota

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
)

// ErrUnavailable is wrapped by every error that means Redis did not decide:
// unreachable, too slow, or answering with an error. It matches
// quota.ErrUnavailable with errors.Is, so callers that know only package
// quota (quota.Failover) see an outage.
var ErrUnavailable = fmt.Errorf("redis %w", quota.ErrUnavailable)

// Defaults for Options.
const (
	DefaultPrefix          = "sluice"
	DefaultTimeout         = 100 * time.Millisecond
	DefaultChargeRetention = 48 * time.Hour
	DefaultRetries         = 2
)

// keyMargin is how long a key outlives the last moment it can matter, for
// Redis's expiry clock and the scripts' now to disagree a little.
const keyMargin = time.Hour

// Options configure a Backend. Zero fields take the defaults.
type Options struct {
	// Prefix is the hash tag of every key: all keys live in the Redis
	// Cluster slot of {Prefix}. It must not contain '{' or '}'.
	Prefix string
	// Timeout bounds each call (default 100 ms), including the wait for
	// a pooled connection: size the client's PoolSize for the calls in
	// flight. The client must be built with ContextTimeoutEnabled for the
	// timeout to bound reads and writes as well as dials.
	Timeout time.Duration
	// DefaultTTL, MaxTTL and SettledRetention are as in quota.Options.
	// MaxTTL is at most 30 days.
	DefaultTTL       time.Duration
	MaxTTL           time.Duration
	SettledRetention time.Duration
	// ChargeRetention is how long Charge remembers a charge id (default
	// 48 h): a charge replayed later is counted again, so it must outlast
	// the longest outage whose use is reconciled.
	ChargeRetention time.Duration
	// Clock, when set, is the time the scripts use instead of Redis's
	// TIME, passed with each call. It is for tests, which control time
	// (quotatest.Clock.Now); production leaves it nil. Key expiry still
	// runs on Redis's clock.
	Clock func() time.Time
	// RequireEpoch makes Acquire, Settle, Heartbeat and Charge refuse
	// with ErrEpochLost, changing nothing, while {Prefix}:epoch does not
	// exist: a Redis that lost its state must not hand out fresh budgets.
	// Production sets it and rebuilds the counters (see the package
	// comment); tests that drive a bare Redis leave it off.
	RequireEpoch bool
	// Retries is how many times a call whose reply was lost (a timeout,
	// a broken connection) is sent again before its error is returned
	// (default 2; negative for none). Settle, Charge and Heartbeat resend
	// the same call: they are idempotent by their id. Acquire tries again
	// with a fresh ticket id, after voiding the lost one (or, when Redis
	// does not answer, handing it to the voider: see the package comment).
	Retries int
	// Observe, when set, is told every script call's operation
	// ("acquire", "settle", "void", …), its outcome ("ok", "timeout",
	// "canceled", "error") and how long it took: the caller's latency
	// histogram. It must be fast and safe for concurrent use.
	Observe func(op, outcome string, d time.Duration)
}

// Backend is a quota.Backend on Redis. It is safe for concurrent use, and
// holds no counters itself: any number of Backends on one Redis (and one
// Prefix) share limits exactly.
type Backend struct {
	c          redis.Scripter
	prefix     string // "{prefix}:"
	timeout    time.Duration
	defaultTTL int64
	maxTTL     int64
	baseMS     int64 // key life covering the longest ticket, ms
	marginMS   int64
	retention  int64 // ms
	chargeMS   int64 // charge ids' retention, ms
	prefixArg  any   // prefix, baseMS and marginMS as script arguments
	baseArg    any
	marginArg  any
	clock      func() time.Time
	wall       func() time.Time // the instance's clock, for windows; tests skew it
	zones      zones
	keys       keyCache
	retArg     any // retention as a script argument
	epochKey   string
	requireEp  bool
	retries    int
	observe    func(op, outcome string, d time.Duration)
	voids      voider
	closed     atomic.Bool
}

var _ quota.SharedBackend = (*Backend)(nil)

// New returns a backend on the Redis behind c: a *redis.Client, a
// *redis.ClusterClient or anything else that runs scripts. The caller owns
// c and closes it after the backend. For *redis.Client, *redis.ClusterClient
// and *redis.Ring, New requires ContextTimeoutEnabled, without which a
// Redis that accepts connections but does not answer would hold calls for
// the client's read timeout instead of Options.Timeout.
func New(c redis.Scripter, o Options) (*Backend, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("redisquota: prefix %q contains a brace: %w", o.Prefix, quota.ErrInvalid)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = quota.DefaultTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = quota.DefaultMaxTTL
	}
	if o.MaxTTL > 30*24*time.Hour {
		return nil, fmt.Errorf("redisquota: max ttl %s above 30 days: %w", o.MaxTTL, quota.ErrInvalid)
	}
	o.DefaultTTL = min(o.DefaultTTL, o.MaxTTL)
	if o.SettledRetention <= 0 {
		o.SettledRetention = quota.DefaultSettledRetention
	}
	if o.ChargeRetention <= 0 {
		o.ChargeRetention = DefaultChargeRetention
	}
	switch {
	case o.Retries == 0:
		o.Retries = DefaultRetries
	case o.Retries < 0:
		o.Retries = 0
	}
	var timeouts bool
	switch c := c.(type) {
	case *redis.Client:
		timeouts = c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		timeouts = c.Options().ContextTimeoutEnabled
	case *redis.Ring:
		timeouts = c.Options().ContextTimeoutEnabled
	default:
		timeouts = true
	}
	if !timeouts {
		return nil, fmt.Errorf("redisquota: client without ContextTimeoutEnabled: %w", quota.ErrInvalid)
	}
	b := &Backend{
		c:          c,
		prefix:     "{" + o.Prefix + "}:",
		timeout:    o.Timeout,
		defaultTTL: int64(o.DefaultTTL),
		maxTTL:     int64(o.MaxTTL),
		baseMS:     (o.MaxTTL + keyMargin).Milliseconds(),
		marginMS:   keyMargin.Milliseconds(),
		retention:  o.SettledRetention.Milliseconds(),
		chargeMS:   max(o.ChargeRetention.Milliseconds(), 1),
		clock:      o.Clock,
		wall:       time.Now,
		epochKey:   "{" + o.Prefix + "}:epoch",
		requireEp:  o.RequireEpoch,
		retries:    o.Retries,
		observe:    o.Observe,
	}
	b.keys.seed = maphash.MakeSeed()
	b.prefixArg, b.baseArg, b.marginArg, b.retArg = b.prefix, b.baseMS, b.marginMS, b.retention
	return b, nil
}

// Close makes later calls return quota.ErrClosed and stops the voider
// after one last attempt at what it holds (bounded: it stops at the first
// failure). It does not close the client, which the caller owns and
// closes after. The state in Redis stays: it is shared.
func (b *Backend) Close() error {
	b.closed.Store(true)
	b.stopVoider()
	return nil
}

func (b *Backend) ttl(d time.Duration) int64 {
	if d <= 0 {
		return b.defaultTTL
	}
	return min(int64(d), b.maxTTL)
}

// now returns the instance's now for computing windows, and the now the
// scripts are to use ("" for Redis's TIME) as script arguments.
func (b *Backend) now() (int64, any, any) {
	if b.clock == nil {
		return b.wall().UnixNano(), emptyArg, emptyArg
	}
	t := b.clock()
	return t.UnixNano(), strconv.FormatInt(t.Unix(), 10), strconv.Itoa(t.Nanosecond())
}

// op names a call in errors, e.g. "settle 1a2b-3c"; it is formatted only
// when there is an error.
type op struct{ verb, subject string }

func (o op) String() string {
	if o.subject == "" {
		return o.verb
	}
	return o.verb + " " + o.subject
}

// run runs a script with the backend's timeout and returns its reply.
func (b *Backend) run(ctx context.Context, o op, s *redis.Script, keys []string, args []any) ([]any, error) {
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var start time.Time
	if b.observe != nil {
		start = time.Now()
	}
	v, err := s.Run(cctx, b.c, keys, args...).Result()
	if b.observe != nil {
		b.observe(o.verb, outcome(ctx, cctx, err), time.Since(start))
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", o, ctx.Err())
		}
		return nil, fmt.Errorf("%s: %w: %w", o, ErrUnavailable, err)
	}
	out, ok := v.([]any)
	if !ok || len(out) < 3 {
		return nil, fmt.Errorf("%s: %w: unexpected reply %v", o, ErrUnavailable, v)
	}
	if n, _ := out[0].(int64); n == epochLostReply {
		return nil, fmt.Errorf("%s: %w", o, ErrEpochLost)
	}
	return out, nil
}

// epochLostReply is the scripts' reply code for a missing epoch.
const epochLostReply = -9

// outcome names how a call ended, for Options.Observe.
func outcome(ctx, cctx context.Context, err error) string {
	switch {
	case err == nil:
		return "ok"
	case ctx.Err() != nil:
		return "canceled"
	case cctx.Err() != nil:
		return "timeout"
	}
	return "error"
}

// lost reports whether err may hide an effect Redis applied: the call was
// sent and no reply came back in time (or the caller stopped waiting), as
// opposed to a reply that says the script changed nothing.
func lost(err error) bool {
	return err != nil && !errors.Is(err, ErrEpochLost) && !errors.Is(err, quota.ErrClosed)
}

// runIdem runs a script whose effect is idempotent by the id in its keys
// (a settle, a charge, a heartbeat): a reply that was lost is asked for
// again with the same call, up to Options.Retries times, so that one slow
// moment is neither an outage nor an effect left unknown. It reports
// whether it sent the call more than once.
func (b *Backend) runIdem(ctx context.Context, o op, s *redis.Script, keys []string, args []any) ([]any, bool, error) {
	for attempt := 0; ; attempt++ {
		res, err := b.run(ctx, o, s, keys, args)
		if err == nil || attempt >= b.retries || !lost(err) || ctx.Err() != nil || b.closed.Load() {
			return res, attempt > 0, err
		}
	}
}

// withEpoch appends the epoch key to a deciding script's keys when the
// backend requires it; the script checks it last.
func (b *Backend) withEpoch(keys []string) []string {
	if b.requireEp {
		keys = append(keys, b.epochKey)
	}
	return keys
}

// reply reads a script's reply.
type reply []any

func (r reply) int(i int) int64 {
	if i < len(r) {
		switch v := r[i].(type) {
		case int64:
			return v
		case string:
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func (r reply) str(i int) string {
	if i < len(r) {
		switch v := r[i].(type) {
		case string:
			return v
		case int64:
			return strconv.FormatInt(v, 10)
		}
	}
	return ""
}

// now returns the script's now (Unix ns), from elements 1 and 2.
func (r reply) now() int64 { return r.int(1)*int64(time.Second) + r.int(2) }

func unixTime(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// scriptArgs builds a script's arguments.
type scriptArgs []any

// zones appends the windows of ws: count, then name and 8 bounds each.
func (a *scriptArgs) zones(ws []*zoneWindows) {
	*a = append(*a, len(ws))
	for _, w := range ws {
		*a = append(*a, w.args[:]...)
	}
}

// Constant script arguments, boxed once.
var (
	boolArg                                       = map[bool]any{false: "0", true: "1"}
	flagNoLimits, flagLimits, flagRefuseModel any = "0", "1", "2"
)

func (b *Backend) key(kind, id string) string { return b.prefix + kind + id }

// Check kinds in an acquire denial, in check order.
const (
	checkModel = iota + 1
	checkRequests
	checkTokensRate
	checkTokensDay
	checkTokensMonth
	checkGPU
	checkCost
	checkConcurrency
)

// concurrencyHint is a concurrency denial's RetryAfter, as quota.Memory's.
const concurrencyHint = time.Second

// Acquire implements quota.Backend.
func (b *Backend) Acquire(ctx context.Context, r quota.Request) (quota.Ticket, error) {
	t, _, err := b.acquire(ctx, r, nil)
	return t, err
}

var _ quota.BudgetReporter = (*Backend)(nil)

// AcquireBudgets implements quota.BudgetReporter: Acquire, and on admission
// the budget counters of every scope of the chain as it left them (the
// script reads them anyway), so that quota.Failover knows what is left of
// each scope's budgets should Redis become unreachable.
func (b *Backend) AcquireBudgets(ctx context.Context, r quota.Request) (quota.Ticket, []quota.ScopeBudgets, error) {
	t, rep, err := b.acquire(ctx, r, nil)
	if err != nil {
		return t, nil, err
	}
	out := make([]quota.ScopeBudgets, len(r.Chain))
	for i := range r.Chain {
		o := 25 + 6*i
		dE, mE := unixTime(rep.int(o+4)*int64(time.Second)), unixTime(rep.int(o+5)*int64(time.Second))
		out[i] = quota.ScopeBudgets{Key: r.Chain[i].Key,
			TokensDay:   quota.WindowUse{End: dE, Used: rep.int(o)},
			TokensMonth: quota.WindowUse{End: mE, Used: rep.int(o + 1)},
			GPUMillis:   quota.WindowUse{End: mE, Used: rep.int(o + 2)},
			CostMicros:  quota.WindowUse{End: mE, Used: rep.int(o + 3)}}
	}
	return t, out, nil
}

var _ quota.Readmitter = (*Backend)(nil)

// Readmit implements quota.Readmitter: it takes back a live ticket that
// Redis lost (restarted empty, then rebuilt from the ledger, which holds no
// live ticket), with its id: its concurrency slot and its reservations of
// tokens, GPU time and cost are charged to the current windows of every
// scope of r.Chain, checking nothing and charging no rate, and the ticket
// expires at expires. Settle, Heartbeat and Lookup then find it as if
// Redis had never lost it. A ticket key that exists (the ticket is
// readmitted already, or was settled or voided since) makes it change
// nothing, so it is idempotent; a lost reply is sent again.
func (b *Backend) Readmit(ctx context.Context, id string, r quota.Request, expires time.Time) error {
	if id == "" {
		return fmt.Errorf("readmit: empty ticket id: %w", quota.ErrInvalid)
	}
	now := b.wall()
	if b.clock != nil {
		now = b.clock()
	}
	ttl := expires.Sub(now)
	if ttl <= 0 {
		return nil // expired: Redis would have released it by now
	}
	r.Ask.Requests, r.Ask.MinTokens, r.Ask.Model = 0, 0, ""
	_, _, err := b.acquire(ctx, r, &readmission{id: id, ttl: min(int64(ttl), b.maxTTL)})
	if errors.Is(err, errTicketExists) {
		return nil
	}
	return err
}

var _ quota.SlotHolder = (*Backend)(nil)

// HoldSlots implements quota.SlotHolder: a fresh ticket readmitted (see
// Readmit) with a concurrency slot and nothing else.
func (b *Backend) HoldSlots(ctx context.Context, chain []quota.Scope, expires time.Time) (string, error) {
	id := newID()
	if err := b.Readmit(ctx, id, quota.Request{Chain: chain, Ask: quota.Ask{Concurrency: true}}, expires); err != nil {
		return "", err
	}
	return id, nil
}

// readmission is a live ticket taken back by Readmit: its id and life.
type readmission struct {
	id  string
	ttl int64
}

// errTicketExists is a readmission's answer when the ticket key exists.
var errTicketExists = errors.New("ticket exists")

// readmitExistsReply is acquire.lua's reply to a readmission whose
// ticket key exists.
const readmitExistsReply = 3

// acquire is Acquire, also returning the script's reply on admission; with
// re, it is a readmission (see Readmit).
func (b *Backend) acquire(ctx context.Context, r quota.Request, re *readmission) (quota.Ticket, reply, error) {
	if err := ctx.Err(); err != nil {
		return quota.Ticket{}, nil, err
	}
	a := &r.Ask
	if a.Requests < 0 || a.Tokens < 0 || a.MinTokens < 0 || a.GPUMillis < 0 || a.CostMicros < 0 {
		return quota.Ticket{}, nil, fmt.Errorf("acquire: negative ask: %w", quota.ErrInvalid)
	}
	if a.Requests > maxExact || a.Tokens > maxExact || a.GPUMillis > maxExact || a.CostMicros > maxExact {
		return quota.Ticket{}, nil, fmt.Errorf("acquire: ask above 2^52: %w", quota.ErrInvalid)
	}
	if len(r.Chain) == 0 {
		return quota.Ticket{}, nil, fmt.Errorf("acquire: empty chain: %w", quota.ErrInvalid)
	}
	if len(r.Meta) > quota.MaxMetaBytes {
		return quota.Ticket{}, nil, fmt.Errorf("acquire: meta of %d bytes above %d: %w", len(r.Meta), quota.MaxMetaBytes, quota.ErrInvalid)
	}
	for i := range r.Chain {
		k := r.Chain[i].Key
		if k == "" {
			return quota.Ticket{}, nil, fmt.Errorf("acquire: empty scope key: %w", quota.ErrInvalid)
		}
		for j := range i {
			if r.Chain[j].Key == k {
				return quota.Ticket{}, nil, fmt.Errorf("acquire: scope %s twice in chain: %w", k, quota.ErrInvalid)
			}
		}
	}
	if b.closed.Load() {
		return quota.Ticket{}, nil, quota.ErrClosed
	}
	ttl := b.ttl(r.TTL)
	id := newID()
	if re != nil {
		ttl, id = re.ttl, re.id
	}
	minTokens := min(a.MinTokens, maxExact)

	wall, nowS, nowN := b.now()
	// The chain's zones, each once.
	var zoneBuf [4]*zoneEntry
	entries := zoneBuf[:0]
	zoneIdx := make([]int, len(r.Chain))
	for i := range r.Chain {
		loc := r.Chain[i].Loc
		if loc == nil {
			loc = time.UTC
		}
		e := b.zones.entry(loc)
		j := slices.Index(entries, e)
		if j < 0 {
			j = len(entries)
			entries = append(entries, e)
		}
		zoneIdx[i] = j + 1
	}
	rates := make([][2]*encodedRate, len(r.Chain))
	for i := range r.Chain {
		rates[i] = [2]*encodedRate{noRate, noRate}
		if l := r.Chain[i].Limits; l != nil {
			rates[i] = [2]*encodedRate{rateArgsOf(l.Requests), rateArgsOf(l.TokensRate)}
		}
	}

	var skBuf [8]*scopeKeys
	sks := skBuf[:0]
	keys := make([]string, 0, 2+3*len(r.Chain))
	keys = append(keys, b.key("t:", id))
	for i := range r.Chain {
		sk := b.keys.scope(b.prefix, r.Chain[i].Key)
		sks = append(sks, sk)
		keys = append(keys, sk.s, sk.l, sk.r)
	}
	keys = b.withEpoch(keys)
	ttlArg, idArg := intArg(ttl), any(id)
	retries := 0
	for try := 0; ; try++ {
		var wsBuf [4]*zoneWindows
		ws := wsBuf[:0]
		for _, e := range entries {
			ws = append(ws, e.windows(wall))
		}
		args := make(scriptArgs, 0, 17+9*len(ws)+14*len(r.Chain))
		args = append(args, nowS, nowN, b.prefixArg, idArg, ttlArg, b.baseArg, b.marginArg,
			intArg(a.Requests), intArg(a.Tokens), intArg(minTokens), intArg(a.GPUMillis), intArg(a.CostMicros),
			boolArg[a.Concurrency], len(r.Chain))
		args.zones(ws)
		for i := range r.Chain {
			sc := &r.Chain[i]
			l := sc.Limits
			flags := flagNoLimits
			switch {
			case l == nil:
			case a.Model != "" && len(l.Models) > 0 && !slices.Contains(l.Models, a.Model):
				flags = flagRefuseModel
			default:
				flags = flagLimits
			}
			args = append(args, sks[i].arg, zoneIdx[i], flags)
			args = append(args, rates[i][0].args[:]...)
			args = append(args, rates[i][1].args[:]...)
			for _, bd := range limitBounds(l) {
				args = append(args, intArg(bd))
			}
		}
		args = append(args, r.Meta, b.retArg)
		if re != nil {
			args = append(args, "1")
		}
		res, err := b.run(ctx, op{verb: "acquire"}, acquireScript, keys, args)
		if lost(err) && re != nil {
			// Idempotent by the ticket key: send it again.
			if retries < b.retries && ctx.Err() == nil && !b.closed.Load() {
				retries++
				try--
				continue
			}
		} else if lost(err) {
			// Redis may have granted it: a void releases the ticket, or
			// bars it should it arrive late. Nobody else knows its id.
			// Before trying again, void it now if Redis answers (else the
			// voider will): a retry that met the lost acquire's own slot
			// would be refused at a concurrency limit of one.
			again := retries < b.retries && ctx.Err() == nil && !b.closed.Load()
			if !again || b.void(ctx, id) != nil {
				b.voidLater(id, ttl)
			}
			if again {
				retries++
				try--
				id = newID()
				keys[0], idArg = b.key("t:", id), id
				continue
			}
		}
		if err != nil {
			return quota.Ticket{}, nil, err
		}
		rep := reply(res)
		switch rep.int(0) {
		case 1:
			return b.ticket(r, rep, id, ttl), rep, nil
		case 0:
			return quota.Ticket{}, nil, denial(r, rates, rep)
		case idTakenReply:
			return quota.Ticket{}, nil, fmt.Errorf("acquire: %w: ticket id %s already used", ErrUnavailable, id)
		case readmitExistsReply:
			return quota.Ticket{}, nil, errTicketExists
		}
		// The windows do not hold Redis's now: the clocks disagree by
		// more than a day. Try once more around Redis's now.
		if try == 1 {
			return quota.Ticket{}, nil, fmt.Errorf("acquire: %w: clock skew between Redis and this instance", ErrUnavailable)
		}
		wall = rep.now()
	}
}

// limitBounds returns a scope's budget and concurrency limits in script
// form: -1 for none, at most 2^53.
func limitBounds(l *quota.Limits) [5]int64 {
	if l == nil {
		return [5]int64{-1, -1, -1, -1, -1}
	}
	var out [5]int64
	for i, bd := range [...]quota.Bound{l.TokensDay, l.TokensMonth, l.GPUMillisMonth, l.CostMicrosMonth, l.Concurrency} {
		n, ok := bd.Max()
		switch {
		case !ok:
			out[i] = -1
		default:
			out[i] = min(n, satCount)
		}
	}
	return out
}

// ticket builds an admission's ticket from the script's reply.
func (b *Backend) ticket(r quota.Request, rep reply, id string, ttl int64) quota.Ticket {
	now := rep.now()
	grant := rep.int(3)
	t := quota.Ticket{ID: id, Tokens: grant, Clamped: grant < r.Ask.Tokens, ExpiresAt: unixTime(now + ttl)}
	for i := range r.Chain {
		if l := r.Chain[i].Limits; l != nil {
			tighten(&t.Caps, &l.Caps)
		}
	}
	for m := range quota.NumMeters {
		rm := &t.Remaining[m]
		rm.Dimension, rm.Window = meters[m].d, meters[m].w
		idx := rep.int(4 + 3*m)
		if idx <= 0 || int(idx) > len(r.Chain) {
			continue
		}
		sc := &r.Chain[idx-1]
		rm.Scope = sc.Key
		rm.Remaining = rep.int(5 + 3*m)
		l := sc.Limits
		switch m {
		case 0:
			rm.Limit, rm.Period = l.Requests.Limit, l.Requests.Period
		case 1:
			rm.Limit, rm.Period = l.TokensRate.Limit, l.TokensRate.Period
		case 2:
			rm.Limit, _ = l.TokensDay.Max()
		case 3:
			rm.Limit, _ = l.TokensMonth.Max()
		case 4:
			rm.Limit, _ = l.GPUMillisMonth.Max()
		case 5:
			rm.Limit, _ = l.CostMicrosMonth.Max()
		case 6:
			rm.Limit, _ = l.Concurrency.Max()
		}
		if m != 6 {
			rm.ResetAt = unixTime(now + rep.int(6+3*m))
		}
	}
	return t
}

var meters = [quota.NumMeters]struct {
	d quota.Dimension
	w quota.Window
}{
	{quota.DimRequests, quota.WindowNone},
	{quota.DimTokensRate, quota.WindowNone},
	{quota.DimTokens, quota.WindowDay},
	{quota.DimTokens, quota.WindowMonth},
	{quota.DimGPUSeconds, quota.WindowMonth},
	{quota.DimCost, quota.WindowMonth},
	{quota.DimConcurrency, quota.WindowNone},
}

// denial builds the *quota.Denial from the script's reply.
func denial(r quota.Request, rates [][2]*encodedRate, rep reply) error {
	now := rep.now()
	i := int(rep.int(3)) - 1
	if i < 0 || i >= len(r.Chain) {
		return fmt.Errorf("acquire: %w: denial names scope %d of %d", ErrUnavailable, i+1, len(r.Chain))
	}
	sc := &r.Chain[i]
	l := sc.Limits
	d := &quota.Denial{Scope: sc.Key, Used: rep.int(5), Requested: rep.int(6)}
	reset, wait := rep.int(7), rep.int(8)
	budget := func(dim quota.Dimension, w quota.Window, bd quota.Bound) {
		d.Code, d.Dimension, d.Window = quota.CodeQuotaExceeded, dim, w
		d.Limit, _ = bd.Max()
		d.ResetAt = unixTime(now + reset)
		d.RetryAfter = time.Duration(wait)
	}
	rate := func(dim quota.Dimension, rt quota.Rate, ra *encodedRate) {
		d.Code, d.Dimension, d.Period = quota.CodeRateLimited, dim, rt.Period
		if ra.mode == rateRefuse {
			d.Limit = max(rt.Limit, 0)
			return
		}
		d.Limit = rt.Limit
		d.ResetAt = unixTime(now + reset)
		d.RetryAfter = time.Duration(wait)
	}
	switch rep.int(4) {
	case checkModel:
		return &quota.Denial{Code: quota.CodeModelNotAllowed, Scope: sc.Key, Dimension: quota.DimModel, Model: r.Ask.Model}
	case checkRequests:
		rate(quota.DimRequests, l.Requests, rates[i][0])
	case checkTokensRate:
		rate(quota.DimTokensRate, l.TokensRate, rates[i][1])
	case checkTokensDay:
		budget(quota.DimTokens, quota.WindowDay, l.TokensDay)
	case checkTokensMonth:
		budget(quota.DimTokens, quota.WindowMonth, l.TokensMonth)
	case checkGPU:
		budget(quota.DimGPUSeconds, quota.WindowMonth, l.GPUMillisMonth)
	case checkCost:
		budget(quota.DimCost, quota.WindowMonth, l.CostMicrosMonth)
	case checkConcurrency:
		d.Code, d.Dimension = quota.CodeRateLimited, quota.DimConcurrency
		d.Limit, _ = l.Concurrency.Max()
		if d.Limit > 0 {
			d.RetryAfter = concurrencyHint
			d.ResetAt = unixTime(now).Add(concurrencyHint)
		}
	default:
		return fmt.Errorf("acquire: %w: unknown check %d", ErrUnavailable, rep.int(4))
	}
	return d
}

// tighten lowers each cap of c to the non-zero cap of o when that is tighter.
func tighten(c, o *quota.Caps) {
	c.MemoryPerRun = minCap(c.MemoryPerRun, o.MemoryPerRun)
	c.RunTimeout = time.Duration(minCap(int64(c.RunTimeout), int64(o.RunTimeout)))
	c.MaxSteps = minCap(c.MaxSteps, o.MaxSteps)
	c.MaxTokensPerCall = minCap(c.MaxTokensPerCall, o.MaxTokensPerCall)
}

func minCap(a, b int64) int64 {
	if b > 0 && (a == 0 || b < a) {
		return b
	}
	return a
}

// Settle implements quota.Backend. It is one round trip, except when a
// scope the ticket charged has not been seen since its day or month ended
// (the first settles after midnight): the script then asks for the
// current windows of that scope's zone and runs again.
func (b *Backend) Settle(ctx context.Context, id string, u quota.Usage) (quota.Settlement, error) {
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return quota.Settlement{}, fmt.Errorf("settle %s: negative usage: %w", id, quota.ErrInvalid)
	}
	if u.InputTokens > maxExact || u.OutputTokens > maxExact || u.GPUMillis > maxExact || u.CostMicros > maxExact {
		return quota.Settlement{}, fmt.Errorf("settle %s: usage above 2^52: %w", id, quota.ErrInvalid)
	}
	if b.closed.Load() {
		return quota.Settlement{}, quota.ErrClosed
	}
	keys := b.withEpoch([]string{b.key("t:", id)})
	_, nowS, nowN := b.now()
	var ws []*zoneWindows
	o := op{"settle", id}
	for try := 0; ; try++ {
		args := make(scriptArgs, 0, 12+9*len(ws))
		args = append(args, nowS, nowN, b.prefixArg, intArg(u.InputTokens), intArg(u.OutputTokens),
			intArg(u.GPUMillis), intArg(u.CostMicros), intArg(b.retention), b.baseArg, b.marginArg)
		args.zones(ws)
		res, resent, err := b.runIdem(ctx, o, settleScript, keys, args)
		if err != nil {
			return quota.Settlement{}, err
		}
		rep := reply(res)
		switch rep.int(0) {
		case 1, 2:
			s, err := parseSettlement(id, rep.str(3))
			if err != nil {
				return quota.Settlement{}, fmt.Errorf("%s: %w: %w", o, ErrUnavailable, err)
			}
			// Settled before, found by a resend: most likely by the
			// attempt whose reply was lost, so this caller's own settle.
			s.Replay = rep.int(0) == 2 && !resent
			return s, nil
		case 0:
			return quota.Settlement{}, fmt.Errorf("%s: %w", o, quota.ErrUnknownTicket)
		}
		if try == 2 {
			return quota.Settlement{}, fmt.Errorf("%s: %w: zone windows not found", o, ErrUnavailable)
		}
		if ws, err = b.windowsFor(rep, ws); err != nil {
			return quota.Settlement{}, fmt.Errorf("%s: %w", o, err)
		}
	}
}

// windowsFor returns the windows the script asked for in a {-1, nowS,
// nowN, zone...} reply, as of its now, along with those it already had.
func (b *Backend) windowsFor(rep reply, had []*zoneWindows) ([]*zoneWindows, error) {
	now := rep.now()
	names := make([]string, 0, len(had)+len(rep)-3)
	for _, w := range had {
		names = append(names, w.name)
	}
	for i := 3; i < len(rep); i++ {
		if n := rep.str(i); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	out := make([]*zoneWindows, 0, len(names))
	for _, n := range names {
		e, ok := b.zones.byName(n)
		if !ok {
			return nil, fmt.Errorf("time zone %q of a stored scope is unknown here: %w", n, quota.ErrInvalid)
		}
		out = append(out, e.windows(now))
	}
	return out, nil
}

// parseSettlement decodes "in out gpu cost rtok rgpu rcost overrun at
// late", a newline and the meta. Settlements stored before tickets carried
// meta have neither late nor meta.
func parseSettlement(id, s string) (quota.Settlement, error) {
	s, meta, _ := strings.Cut(s, "\n")
	f := strings.Fields(s)
	if len(f) != 9 && len(f) != 10 {
		return quota.Settlement{}, fmt.Errorf("bad settlement %q", s)
	}
	var n [10]int64
	for i, v := range f {
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return quota.Settlement{}, fmt.Errorf("bad settlement %q", s)
		}
		n[i] = x
	}
	return quota.Settlement{
		TicketID:           id,
		Usage:              quota.Usage{InputTokens: n[0], OutputTokens: n[1], GPUMillis: n[2], CostMicros: n[3]},
		ReservedTokens:     n[4],
		ReservedGPUMillis:  n[5],
		ReservedCostMicros: n[6],
		Overrun:            n[7] != 0,
		SettledAt:          unixTime(n[8]),
		Late:               n[9] != 0,
		Meta:               meta,
	}, nil
}

// Lookup implements quota.Backend.
func (b *Backend) Lookup(ctx context.Context, id string) (quota.TicketInfo, error) {
	if b.closed.Load() {
		return quota.TicketInfo{}, quota.ErrClosed
	}
	_, nowS, nowN := b.now()
	o := op{"lookup", id}
	res, err := b.run(ctx, o, lookupScript, []string{b.key("t:", id)}, scriptArgs{nowS, nowN, b.prefixArg})
	if err != nil {
		return quota.TicketInfo{}, err
	}
	rep := reply(res)
	switch k := rep.int(0); k {
	case 1, 3:
		return quota.TicketInfo{ID: id, Meta: rep.str(7), ExpiresAt: unixTime(rep.int(3)),
			Tokens: rep.int(4), GPUMillis: rep.int(5), CostMicros: rep.int(6), Expired: k == 3}, nil
	case 2:
		s, err := parseSettlement(id, rep.str(3))
		if err != nil {
			return quota.TicketInfo{}, fmt.Errorf("%s: %w: %w", o, ErrUnavailable, err)
		}
		return quota.TicketInfo{ID: id, Meta: s.Meta, Tokens: s.ReservedTokens, GPUMillis: s.ReservedGPUMillis,
			CostMicros: s.ReservedCostMicros, Settled: true}, nil
	}
	return quota.TicketInfo{}, fmt.Errorf("%s: %w", o, quota.ErrUnknownTicket)
}

// idAlphabet is internal/id's: Crockford's base32, lower case.
const idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// newID returns "tkt_" and 128 bits from crypto/rand in base32: a ticket
// ID nobody can guess, so knowing one ticket tells nothing of another.
func newID() string {
	var r [16]byte
	rand.Read(r[:]) // never fails (Go 1.24+)
	var out [4 + 26]byte
	copy(out[:], "tkt_")
	var acc uint32
	bits, j := 0, 4
	for _, c := range r {
		acc = acc<<8 | uint32(c)
		bits += 8
		for bits >= 5 {
			bits -= 5
			out[j] = idAlphabet[acc>>bits&31]
			j++
		}
	}
	out[j] = idAlphabet[acc<<(5-bits)&31] // the last 3 bits
	return string(out[:])
}

// Heartbeat implements quota.Backend.
func (b *Backend) Heartbeat(ctx context.Context, id string, ttl time.Duration) (time.Time, error) {
	if b.closed.Load() {
		return time.Time{}, quota.ErrClosed
	}
	d := b.ttl(ttl)
	_, nowS, nowN := b.now()
	args := scriptArgs{nowS, nowN, b.prefix, d, b.baseMS, b.marginMS}
	o := op{"heartbeat", id}
	res, _, err := b.runIdem(ctx, o, heartbeatScript, b.withEpoch([]string{b.key("t:", id)}), args)
	if err != nil {
		return time.Time{}, err
	}
	rep := reply(res)
	if rep.int(0) != 1 {
		return time.Time{}, fmt.Errorf("%s: %w", o, quota.ErrUnknownTicket)
	}
	return unixTime(rep.now() + d), nil
}

// Use implements quota.Backend. A scope's windows roll lazily: when the
// stored one has ended, its use is zero and the current window is computed
// here from the scope's time zone.
func (b *Backend) Use(ctx context.Context, key string) (quota.ScopeUse, error) {
	if b.closed.Load() {
		return quota.ScopeUse{}, quota.ErrClosed
	}
	_, nowS, nowN := b.now()
	args := scriptArgs{nowS, nowN, b.prefix, key, b.baseMS, b.marginMS}
	res, err := b.run(ctx, op{"use", key}, useScript, []string{b.key("s:", key)}, args)
	if err != nil {
		return quota.ScopeUse{}, err
	}
	rep := reply(res)
	now := rep.now()
	u := quota.ScopeUse{Key: key, Concurrency: rep.int(12)}
	sec := func(i int) int64 {
		if rep.str(i) == "" {
			return 0
		}
		return rep.int(i) * int64(time.Second)
	}
	dS, dE, mS, mE := sec(4), sec(5), sec(6), sec(7)
	td, tm, g, c := rep.int(8), rep.int(9), rep.int(10), rep.int(11)
	if z := rep.str(3); z != "" {
		e, ok := b.zones.byName(z)
		if now >= dE {
			td, dS, dE = 0, 0, 0
			if ok {
				dS, dE = e.day(now)
			}
		}
		if now >= mE {
			tm, g, c, mS, mE = 0, 0, 0, 0, 0
			if ok {
				mS, mE = e.month(now)
			}
		}
	} else {
		dE, mE = 0, 0 // zone unknown: restored, never seen in a chain
	}
	day := quota.WindowUse{Start: timeOrZero(dS), End: timeOrZero(dE), Used: td}
	month := quota.WindowUse{Start: timeOrZero(mS), End: timeOrZero(mE)}
	u.TokensDay, u.TokensMonth, u.GPUMillis, u.CostMicros = day, month, month, month
	u.TokensMonth.Used, u.GPUMillis.Used, u.CostMicros.Used = tm, g, c
	for i, ru := range []*quota.RateUse{&u.Requests, &u.TokensRate} {
		o := 13 + 4*i
		if rep.int(o) == 1 {
			*ru = quota.RateUse{Level: rep.int(o + 1), NextAt: unixTime(now + rep.int(o+2)), EmptyAt: unixTime(now + rep.int(o+3))}
		}
	}
	return u, nil
}

func timeOrZero(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return unixTime(ns)
}

// Restore implements quota.Backend, with quota.Memory's rules. A window
// start that is not a whole second is never a window's start, so it is
// ignored.
func (b *Backend) Restore(ctx context.Context, key string, d quota.Dimension, w quota.Window, windowStart time.Time, used int64) error {
	var field string
	switch {
	case key == "":
		return fmt.Errorf("restore: empty scope key: %w", quota.ErrInvalid)
	case used < 0:
		return fmt.Errorf("restore %s: negative use: %w", key, quota.ErrInvalid)
	case d == quota.DimTokens && w == quota.WindowDay:
		field = "td"
	case d == quota.DimTokens && w == quota.WindowMonth:
		field = "tm"
	case d == quota.DimGPUSeconds && w == quota.WindowMonth:
		field = "g"
	case d == quota.DimCost && w == quota.WindowMonth:
		field = "c"
	default:
		return fmt.Errorf("restore %s: %s/%s is not a budget: %w", key, d, w, quota.ErrInvalid)
	}
	if b.closed.Load() {
		return quota.ErrClosed
	}
	if windowStart.Nanosecond() != 0 {
		return nil
	}
	win := "d"
	if w == quota.WindowMonth {
		win = "m"
	}
	_, nowS, nowN := b.now()
	var ws []*zoneWindows
	o := op{"restore", key}
	for try := 0; ; try++ {
		args := scriptArgs{nowS, nowN, b.prefix, field, win, windowStart.Unix(), min(used, satCount), b.baseMS, b.marginMS}
		args.zones(ws)
		res, err := b.run(ctx, o, restoreScript, []string{b.key("s:", key)}, args)
		if err != nil {
			return err
		}
		rep := reply(res)
		if rep.int(0) == 1 {
			return nil
		}
		if try == 2 {
			return fmt.Errorf("%s: %w: zone windows not found", o, ErrUnavailable)
		}
		if ws, err = b.windowsFor(rep, ws); err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
	}
}
