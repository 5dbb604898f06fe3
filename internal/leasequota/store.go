package leasequota

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
)

// The scripts, each the prelude and a body. Run sends EVALSHA and falls back
// to EVAL on NOSCRIPT.
var (
	//go:embed lua/prelude.lua
	prelude string
	//go:embed lua/grant_call.lua
	grantFunc string
	//go:embed lua/grant.lua
	grantBody string
	//go:embed lua/return.lua
	returnBody string
	//go:embed lua/renew.lua
	renewBody string
	//go:embed lua/reclaim.lua
	reclaimBody string
	//go:embed lua/read.lua
	readBody string
	//go:embed lua/rates.lua
	ratesBody string
	//go:embed lua/adjust.lua
	adjustBody string
	//go:embed lua/restore.lua
	restoreBody string

	grantScript   = redis.NewScript(prelude + ticketPrelude + grantFunc + grantBody)
	returnScript  = redis.NewScript(prelude + returnBody)
	renewScript   = redis.NewScript(prelude + renewBody)
	reclaimScript = redis.NewScript(prelude + reclaimBody)
	readScript    = redis.NewScript(prelude + readBody)
	ratesScript   = redis.NewScript(prelude + ratesBody)
	adjustScript  = redis.NewScript(prelude + adjustBody)
	restoreScript = redis.NewScript(prelude + restoreBody)
	epochScript   = redis.NewScript(`return redis.call('SET', KEYS[1], ARGV[1])`)
)

// ErrUnavailable is wrapped by every error that means Redis did not decide.
// It matches quota.ErrUnavailable.
var ErrUnavailable = fmt.Errorf("redis %w", quota.ErrUnavailable)

// ErrEpochLost is returned, changing nothing, by the mutating calls of a
// Store with Options.RequireEpoch while the tag's epoch key is missing.
var ErrEpochLost = fmt.Errorf("%w: epoch missing, counters lost: %w", ErrUnavailable, quota.ErrStateLost)

// Meter is one counted meter of a scope, in quota.Ticket.Remaining's order.
type Meter uint8

// The meters.
const (
	MeterRequests Meter = iota
	MeterTokensRate
	MeterTokensDay
	MeterTokensMonth
	MeterGPU
	MeterCost
	MeterConcurrency
	NumMeters = int(quota.NumMeters)
)

func (m Meter) isRate() bool   { return m <= MeterTokensRate }
func (m Meter) isBudget() bool { return m >= MeterTokensDay && m <= MeterCost }

// Defaults for Options.
const (
	DefaultPrefix    = "sluice"
	DefaultTimeout   = 100 * time.Millisecond
	DefaultValidity  = 250 * time.Millisecond
	DefaultReplayTTL = 10 * time.Minute
	DefaultKeyTTL    = 33 * 24 * time.Hour
	DefaultRetries   = 2
)

// Options configure a Store. Zero fields take the defaults.
type Options struct {
	// Prefix starts every hash tag: {prefix:g} and {prefix:t:<tenant>}.
	Prefix string
	// Timeout bounds each call. The client needs ContextTimeoutEnabled.
	Timeout time.Duration
	// Retries is how many times a call whose reply was lost is sent again
	// with the same request id (default 2; negative for none).
	Retries int
	// Validity is how long a rate lease's units may be spent after the
	// grant was sent, and so how far ahead of now its slots start.
	Validity time.Duration
	// ReplayTTL is how long a request id's first reply is kept.
	ReplayTTL time.Duration
	// KeyTTL is the life of a scope's keys after their last write; it must
	// outlive the longest budget window (a month) and the longest lease.
	KeyTTL time.Duration
	// MaxTTL is the longest a ticket lives (quota.Options.MaxTTL): the
	// pinned concurrency of a dead instance is freed that long after its
	// lease expired.
	MaxTTL time.Duration
	// Clock, when set, is the time the scripts use instead of Redis's TIME
	// (tests). Key expiry still runs on Redis's clock.
	Clock func() time.Time
	// RequireEpoch makes Grant, Return and Renew refuse with ErrEpochLost
	// while the tag's epoch key is missing, or once ExpectEpoch was told
	// one, while it holds another value.
	RequireEpoch bool
	// Observe, when set, is told every script call's operation ("grant",
	// "return", "renew", "rates", "record", "settle", …), its outcome
	// ("ok", "timeout", "canceled", "error") and how long it took: the
	// caller's latency histogram. It must be fast and safe for concurrent
	// use.
	Observe func(op, outcome string, d time.Duration)
}

// Store is the Redis lease store: the shared counters of every scope and
// the leases instances hold on them. It is safe for concurrent use and
// holds no state of its own.
type Store struct {
	c         redis.Scripter
	prefix    string
	timeout   time.Duration
	retries   int
	validity  int64 // µs
	replayMS  int64
	keyMS     int64
	maxTTL    int64 // µs
	clock     func() time.Time
	requireEp bool
	expected  atomic.Pointer[string] // the epoch value the scripts insist on (ExpectEpoch)
	observe   func(op, outcome string, d time.Duration)
}

// NewStore returns a store on the Redis behind c (a *redis.Client, a
// *redis.ClusterClient, …), which the caller owns.
func NewStore(c redis.Scripter, o Options) (*Store, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("leasequota: prefix %q contains a brace: %w", o.Prefix, quota.ErrInvalid)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	switch {
	case o.Retries == 0:
		o.Retries = DefaultRetries
	case o.Retries < 0:
		o.Retries = 0
	}
	if o.Validity <= 0 {
		o.Validity = DefaultValidity
	}
	if o.ReplayTTL <= 0 {
		o.ReplayTTL = DefaultReplayTTL
	}
	if o.KeyTTL <= 0 {
		o.KeyTTL = DefaultKeyTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = quota.DefaultMaxTTL
	}
	if cl, ok := c.(*redis.Client); ok && !cl.Options().ContextTimeoutEnabled {
		return nil, fmt.Errorf("leasequota: client without ContextTimeoutEnabled: %w", quota.ErrInvalid)
	}
	s := &Store{
		c:        c,
		prefix:   o.Prefix,
		timeout:  o.Timeout,
		retries:  o.Retries,
		validity: o.Validity.Microseconds(),
		replayMS: max(o.ReplayTTL.Milliseconds(), 1),
		keyMS:    max(o.KeyTTL.Milliseconds(), 1),
		maxTTL:   o.MaxTTL.Microseconds(),
		clock:    o.Clock,
		observe:  o.Observe,
	}
	s.requireEp = o.RequireEpoch
	return s, nil
}

// ExpectEpoch makes a store with Options.RequireEpoch refuse with
// ErrEpochLost, from now on, while the epoch key holds anything but v: an
// instance that has not seen the state rebuilt since it took its leases
// (Redis restarted empty and another instance rebuilt it while this one
// made no call) finds out at its next call, instead of deciding on leases
// and tickets the store no longer has. "" goes back to insisting only
// that the key exists.
func (s *Store) ExpectEpoch(v string) {
	if v == "" {
		s.expected.Store(nil)
		return
	}
	s.expected.Store(&v)
}

// epochArg is the scripts' ARGV[2]: "" for no epoch check, "1" for the
// key's existence, "=" and a value for that value.
func (s *Store) epochArg() string {
	if !s.requireEp {
		return ""
	}
	if v := s.expected.Load(); v != nil {
		return "=" + *v
	}
	return "1"
}

// Scope names a scope's counters: Key is the scope key ("tenant/ten_a",
// "project/prj_p", …) and Tenant the tenant whose subtree holds it, "" for
// the global scope and scopes outside every tenant. Tenant picks the hash
// tag, so every scope of one tenant's subtree shares a Cluster slot.
type Scope struct {
	Tenant string
	Key    string
}

// Tag returns the scope's hash tag, braces included.
func (s *Store) Tag(tenant string) string {
	if tenant == "" {
		return "{" + s.prefix + ":g}"
	}
	return "{" + s.prefix + ":t:" + tenant + "}"
}

// grantKeys returns the grant script's keys for scope sc and a request.
func (s *Store) grantKeys(sc Scope, requestID string) []string {
	t := s.Tag(sc.Tenant)
	return append(s.keys(sc), t+":q:"+requestID, t+":kx", t+":epoch")
}

// keys returns the scope's state, leases, expiries and stranded keys.
func (s *Store) keys(sc Scope) []string {
	t := s.Tag(sc.Tenant)
	return []string{t + ":s:" + sc.Key, t + ":l:" + sc.Key, t + ":x:" + sc.Key, t + ":z:" + sc.Key}
}

func (s *Store) now() string {
	if s.clock == nil {
		return ""
	}
	return strconv.FormatInt(s.clock().UnixMicro(), 10)
}

// Want asks for a lease on one meter.
type Want struct {
	Meter Meter
	// Amount is what is wanted; Min the least worth taking (0 takes any
	// amount that fits, down to 1). Less than Min grants nothing.
	Amount, Min int64
	// Pin is how much of the instance's lease on a budget or concurrency
	// meter it may have spent before Redis learns of it (see doc.go and
	// type Pin); a reclaim keeps the pin or what the lease holds,
	// whichever is less. PinSeq orders the pins of one (scope, meter):
	// see type Pin.
	Pin    int64
	PinSeq uint64
	// Limit bounds a budget or concurrency meter.
	Limit int64
	// Window is the start of a budget's current window.
	Window time.Time
	// Rate is a rate meter's limit.
	Rate quota.Rate
	// Direct asks a rate for units spent at once (a decision made in the
	// store, as quota.Memory would make it: slots from now, Min ≤ units ≤
	// Amount or none) rather than a lease (slots from now+Validity, units
	// to spend before Grant.Deadline).
	Direct bool
}

// maxConflicts bounds how often a call that decides rates reads the
// buckets again because another instance changed one in between.
const maxConflicts = 64

// Grant is what one Want got.
type Grant struct {
	Meter Meter
	// Granted is the amount taken from the shared state for this lease.
	Granted int64
	// Remaining is what is left for everyone after the grant: limit − used
	// for budgets and concurrency, the units that would still fit now for
	// rates.
	Remaining int64
	// Held is the instance's lease on the meter after the grant (for
	// rates, the units of this grant).
	Held int64
	// Deadline is when a rate lease's units lapse, in the store's time.
	Deadline time.Time
	// Used is a budget's or concurrency's counter after the grant (settled
	// use, leases, reservations and stranded amounts; it may exceed the
	// limit after a limit was lowered or an overrun).
	Used int64
	// Before and After are a rate's bucket as the grant read it and as it
	// left it (quota.Bucket strings): Before gives a refused ask its exact
	// denial, and Give.After/Before put a grant's units back.
	Before, After string
}

// GrantResult is a Grant call's reply.
type GrantResult struct {
	Now       time.Time // the store's time of the grant
	ExpiresAt time.Time // the lease's expiry unless renewed
	Grants    []Grant
	// Replay is true when the request id had been seen: this is the first
	// call's reply, and nothing was granted again.
	Replay bool
}

// checkRate validates a rate want's limit.
func checkRate(r quota.Rate) error {
	if err := r.Validate(); err != nil || r.IsZero() {
		return fmt.Errorf("rate %+v: %w", r, quota.ErrInvalid)
	}
	return nil
}

// readRates returns the store's time and the scope's two rate buckets.
func (s *Store) readRates(ctx context.Context, sc Scope) (time.Time, [2]string, error) {
	now, b, err := s.readRatesOf(ctx, s.keys(sc)[:1])
	if err != nil {
		return time.Time{}, [2]string{}, fmt.Errorf("read rates %s: %w", sc.Key, err)
	}
	return now, b[0], nil
}

// readRatesOf returns the store's time and the two rate buckets of each
// scope state key of one tag, in one script.
func (s *Store) readRatesOf(ctx context.Context, states []string) (time.Time, [][2]string, error) {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := time.Now()
	raw, err := ratesScript.Run(cctx, s.c, states, s.now()).Slice()
	s.observed("rates", ctx, cctx, err, start)
	if err != nil || len(raw) != 1+2*len(states) {
		return time.Time{}, nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	now := time.UnixMicro(raw[0].(int64))
	if s.clock != nil {
		now = s.clock() // exact to the nanosecond, as the engine's own clock
	}
	b := make([][2]string, len(states))
	for i := range b {
		b[i][0], _ = raw[1+2*i].(string)
		b[i][1], _ = raw[2+2*i].(string)
	}
	return now, b, nil
}

// Grant takes leases on several meters of one scope atomically, under
// instance, for ttl. A retried call with the same requestID returns the
// first call's reply and grants nothing more.
func (s *Store) Grant(ctx context.Context, requestID, instance string, sc Scope, ttl time.Duration, wants []Want) (GrantResult, error) {
	op := "grant " + requestID
	if requestID == "" || instance == "" || len(wants) == 0 || ttl <= 0 {
		return GrantResult{}, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	rates, err := checkWants(wants)
	if err != nil {
		return GrantResult{}, fmt.Errorf("%s: %w", op, err)
	}
	r, err := s.grant(ctx, op, instance, sc.Tenant, ttl, []grantReq{{op: op, id: requestID, key: sc.Key, wants: wants, rates: rates}})
	if err != nil {
		return GrantResult{}, err
	}
	return r[0], nil
}

// checkWants validates a grant's wants and reports whether it decides a
// rate.
func checkWants(wants []Want) (rates bool, err error) {
	for _, w := range wants {
		// An Amount of 0 only reads (Remaining, Used, Before); a lease
		// (not Direct) of rate units must ask for some.
		if w.Amount < 0 || w.Min < 0 || int(w.Meter) >= NumMeters || w.Amount == 0 && w.Meter.isRate() && !w.Direct {
			return false, fmt.Errorf("want %+v: %w", w, quota.ErrInvalid)
		}
		if w.Meter.isRate() {
			if err := checkRate(w.Rate); err != nil {
				return false, err
			}
			rates = true
		}
	}
	return rates, nil
}

// grantArgs appends the grant script's 8 values per want to args. Rates
// are decided here, with quota.Memory's arithmetic, on the buckets as read
// at rnow (successive wants of one meter see each other's units); the
// script writes the result only if no one changed the bucket meanwhile.
func (s *Store) grantArgs(args []any, wants []Want, rnow time.Time, buckets [2]string) ([]any, error) {
	validity := time.Duration(s.validity) * time.Microsecond
	after := buckets
	for _, w := range wants {
		if !w.Meter.isRate() {
			var x int64
			if w.Meter.isBudget() {
				x = w.Window.Unix()
			}
			args = append(args, int(w.Meter), w.Amount, w.Min, max(w.Pin, 0), max(w.Limit, 0), x, w.PinSeq, 0)
			continue
		}
		before := after[w.Meter]
		b, err := quota.ParseBucket(before)
		if err != nil {
			return nil, err
		}
		var got, dl int64
		switch {
		case !w.Direct:
			if got = b.Lease(w.Rate, rnow, rnow.Add(validity), w.Amount, w.Min); got > 0 {
				dl = rnow.Add(validity).UnixMicro()
			}
		case w.Min > 0 && w.Min < w.Amount:
			if k := min(w.Amount, b.Avail(w.Rate, rnow)); k >= w.Min {
				b.Charge(rnow, k)
				got = k
			}
		case w.Amount > 0 && b.Check(w.Rate, rnow, w.Amount, "", 0) == nil:
			b.Charge(rnow, w.Amount)
			got = w.Amount
		}
		if got > 0 {
			after[w.Meter] = b.String()
		}
		args = append(args, int(w.Meter), got, b.Avail(w.Rate, rnow), dl, 0, 0, before, after[w.Meter])
	}
	return args, nil
}

// grantResult reads one call's reply v, whose wants were sent as wargs
// (grantArgs's values) and, with rates, decided at rnow.
func grantResult(v []int64, wants []Want, wargs []any, rates bool, rnow time.Time) (GrantResult, error) {
	if len(v) != 3+4*len(wants) {
		return GrantResult{}, fmt.Errorf("reply of %d values: %w", len(v), ErrUnavailable)
	}
	r := GrantResult{Replay: v[0] == 1, Now: time.UnixMicro(v[1]), ExpiresAt: time.UnixMicro(v[2]), Grants: make([]Grant, len(wants))}
	if rates {
		r.Now = rnow // the time the rates were decided at
	}
	for i, w := range wants {
		g := Grant{Meter: w.Meter, Granted: v[3+4*i], Remaining: v[4+4*i], Held: v[5+4*i]}
		if !w.Meter.isRate() {
			g.Used = v[6+4*i]
		} else if d := v[6+4*i]; d > 0 {
			g.Deadline = time.UnixMicro(d)
		}
		if w.Meter.isRate() {
			// A replayed reply's buckets are not known: only its
			// figures are.
			g.Before, g.After = wargs[8*i+6].(string), wargs[8*i+7].(string)
			if g.Granted == 0 {
				g.After = g.Before // not applied (decided, or refused by another want)
			}
			if r.Replay {
				g.Before, g.After = "", ""
			}
		}
		r.Grants[i] = g
	}
	return r, nil
}

// Give returns part of a lease.
type Give struct {
	Meter  Meter
	Amount int64
	// Window is the budget's window the amount was granted in: amounts of
	// an ended window are not returned (the counter restarted without them).
	Window time.Time
	// After and Before are a rate grant's Grant.After and Grant.Before:
	// the units go back (the bucket becomes Before) only while the bucket
	// is still After.
	After, Before string
}

// ReturnResult is a Return call's reply.
type ReturnResult struct {
	Now      time.Time
	Returned []int64 // per Give, what went back to the shared state
	Held     []int64 // per Give, the lease after the return
	Replay   bool
}

// Return gives unused lease amounts back to the scope's shared state,
// idempotent by requestID. A lease already reclaimed returns nothing; a
// rate's units go back only from the instance's latest grant while no
// grant has followed it (see doc.go).
func (s *Store) Return(ctx context.Context, requestID, instance string, sc Scope, gives []Give) (ReturnResult, error) {
	op := "return " + requestID
	if requestID == "" || instance == "" || len(gives) == 0 {
		return ReturnResult{}, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	args := make([]any, 0, 6+5*len(gives))
	args = append(args, s.now(), s.epochArg(), instance, s.replayMS, s.maxTTL, len(gives))
	for _, g := range gives {
		if g.Amount <= 0 || int(g.Meter) >= NumMeters || g.Meter.isRate() && g.After == "" {
			return ReturnResult{}, fmt.Errorf("%s: give %+v: %w", op, g, quota.ErrInvalid)
		}
		var x int64
		if g.Meter.isBudget() {
			x = g.Window.Unix()
		}
		args = append(args, int(g.Meter), g.Amount, x, g.After, g.Before)
	}
	keys := append(s.keys(sc), s.Tag(sc.Tenant)+":q:"+requestID, s.Tag(sc.Tenant)+":epoch")
	v, err := s.run(ctx, op, returnScript, keys, args)
	if err != nil {
		return ReturnResult{}, err
	}
	if len(v) == 1 {
		return ReturnResult{}, fmt.Errorf("%s: %w", op, ErrEpochLost)
	}
	if len(v) != 2+2*len(gives) {
		return ReturnResult{}, fmt.Errorf("%s: reply of %d values: %w", op, len(v), ErrUnavailable)
	}
	r := ReturnResult{Replay: v[0] == 1, Now: time.UnixMicro(v[1]), Returned: make([]int64, len(gives)), Held: make([]int64, len(gives))}
	for i := range gives {
		r.Returned[i], r.Held[i] = v[2+2*i], v[3+2*i]
	}
	return r, nil
}

// Pin is how much of a budget or concurrency lease the instance may have
// spent without Redis knowing which part: what a reclaim keeps counted
// (min(pin, held)); returns and ticket records leave it. A pin with a
// sequence number (Seq > 0, counted by the instance per scope and meter)
// replaces the lease's only if its Seq is above the last applied, so that
// a call overtaken by a later one never changes it: the instance lowers
// its own bound before sending a lower pin and raises it only when the
// latest pin it sent is acknowledged. A pin without one only raises the
// lease's.
type Pin struct {
	Meter  Meter
	Amount int64
	Seq    uint64
	// Until, for concurrency, is when every ticket holding a pinned slot
	// will have expired: a reclaim releases the pinned slots then rather
	// than at the lease's expiry plus the longest ticket TTL. Zero keeps
	// the lease's.
	Until time.Time
	// Window is a budget's window the pin is for: a lease record of
	// another window keeps its pin.
	Window time.Time
}

// Renewal names one scope whose lease a Renew extends, with new pins.
type Renewal struct {
	Key  string
	Pins []Pin
}

// RenewResult is a Renew call's reply.
type RenewResult struct {
	Now       time.Time
	ExpiresAt time.Time
	// Lost lists the scopes whose lease was already reclaimed: the
	// instance must drop them and grant afresh.
	Lost []string
}

// Renew extends the instance's leases on scopes of one tenant's tag (""
// for the global tag) to now+ttl and sets their pins (type Pin): the
// heartbeat. It is idempotent (an absolute expiry, pins ordered by their
// sequence numbers), so it carries no request id.
func (s *Store) Renew(ctx context.Context, instance, tenant string, ttl time.Duration, scopes []Renewal) (RenewResult, error) {
	op := "renew " + instance
	if instance == "" || len(scopes) == 0 || ttl <= 0 {
		return RenewResult{}, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	keys := make([]string, 0, 4*len(scopes)+1)
	args := []any{s.now(), s.epochArg(), instance, ttl.Microseconds(), s.maxTTL}
	for _, r := range scopes {
		keys = append(keys, s.keys(Scope{Tenant: tenant, Key: r.Key})...)
		args = append(args, len(r.Pins))
		for _, p := range r.Pins {
			var w int64
			if p.Meter.isBudget() {
				w = p.Window.Unix()
			}
			var until int64
			if !p.Until.IsZero() {
				until = p.Until.UnixMicro()
			}
			args = append(args, int(p.Meter), max(p.Amount, 0), w, p.Seq, until)
		}
	}
	keys = append(keys, s.Tag(tenant)+":epoch")
	v, err := s.run(ctx, op, renewScript, keys, args)
	if err != nil {
		return RenewResult{}, err
	}
	if len(v) == 1 {
		return RenewResult{}, fmt.Errorf("%s: %w", op, ErrEpochLost)
	}
	if len(v) != 3+len(scopes) {
		return RenewResult{}, fmt.Errorf("%s: reply of %d values: %w", op, len(v), ErrUnavailable)
	}
	r := RenewResult{Now: time.UnixMicro(v[1]), ExpiresAt: time.UnixMicro(v[2])}
	for i, sc := range scopes {
		if v[3+i] == 0 {
			r.Lost = append(r.Lost, sc.Key)
		}
	}
	return r, nil
}

// Reclaim frees what the scope's expired leases held, per doc.go, and
// reports how many leases it reclaimed (at most 64 a call). Grant, Return
// and Renew reclaim too, so only a sweeper of idle scopes needs it.
func (s *Store) Reclaim(ctx context.Context, sc Scope) (int, error) {
	v, err := s.run(ctx, "reclaim "+sc.Key, reclaimScript, s.keys(sc), []any{s.now(), "", s.maxTTL})
	if err != nil {
		return 0, err
	}
	return int(v[0]), nil
}

// SetEpoch sets the tag's epoch key (no TTL), once the tag's counters hold
// the ledger.
func (s *Store) SetEpoch(ctx context.Context, tenant, value string) error {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := epochScript.Run(cctx, s.c, []string{s.Tag(tenant) + ":epoch"}, value).Err(); err != nil {
		return fmt.Errorf("set epoch: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// MeterState is a meter's shared state.
type MeterState struct {
	// Used is what budgets and concurrency have given out: settled use and
	// live leases, reservations and stranded amounts.
	Used int64
	// Stranded is the part of Used pinned by reclaimed leases of dead
	// instances.
	Stranded int64
	Window   time.Time    // budgets: the window Used counts
	Bucket   quota.Bucket // rates
}

// LeaseMeter is what one lease holds on one meter.
type LeaseMeter struct {
	Held, Pinned int64
	Window       time.Time // budgets
	Deadline     time.Time // rates: when the latest grant's units lapse
}

// Lease is one instance's lease on a scope.
type Lease struct {
	Instance  string
	ExpiresAt time.Time
	Meters    [NumMeters]LeaseMeter
}

// State is a scope's shared state and leases.
type State struct {
	Now    time.Time
	Meters [NumMeters]MeterState
	Leases []Lease
}

// Read returns the scope's shared state and leases, changing nothing.
func (s *Store) Read(ctx context.Context, sc Scope) (State, error) {
	op := "read " + sc.Key
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	raw, err := readScript.Run(cctx, s.c, s.keys(sc)[:2], s.now()).Slice()
	if err != nil {
		return State{}, fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
	var st State
	st.Now = time.UnixMicro(raw[0].(int64))
	h, _ := raw[1].([]any)
	for i := 0; i+1 < len(h); i += 2 {
		f, _ := h[i].(string)
		v := fmt.Sprint(h[i+1])
		n, _ := strconv.ParseInt(v, 10, 64)
		if len(f) < 2 {
			continue
		}
		k, err := strconv.Atoi(f[1:])
		if err != nil || k >= NumMeters {
			continue
		}
		m := &st.Meters[k]
		switch f[0] {
		case 'u':
			m.Used = n
		case 's':
			m.Stranded = n
		case 'w':
			m.Window = time.Unix(n, 0)
		case 't':
			b, err := quota.ParseBucket(v)
			if err != nil {
				return State{}, fmt.Errorf("%s: %w", op, err)
			}
			m.Bucket = b
		}
	}
	for _, e := range raw[2:] {
		l, _ := e.([]any)
		if len(l) != 3 {
			continue
		}
		ls := Lease{Instance: fmt.Sprint(l[0]), ExpiresAt: time.UnixMicro(l[1].(int64))}
		ms, _ := l[2].([]any)
		for i := 0; i+4 < len(ms); i += 5 {
			k := ms[i].(int64)
			lm := LeaseMeter{Held: ms[i+1].(int64), Pinned: ms[i+2].(int64)}
			if w := ms[i+3].(int64); w != 0 {
				lm.Window = time.Unix(w, 0)
			}
			if d := ms[i+4].(int64); d != 0 {
				lm.Deadline = time.UnixMicro(d)
			}
			ls.Meters[k] = lm
		}
		st.Leases = append(st.Leases, ls)
	}
	return st, nil
}

// AdjustRate changes a rate bucket of sc by delta units at the store's
// time, without a check: positive charges use beyond what was admitted,
// negative refunds (never below empty), as quota.Memory does when a ticket
// settles. It is not idempotent: a caller that does not learn the outcome
// (ErrUnavailable) does not know whether it happened.
func (s *Store) AdjustRate(ctx context.Context, sc Scope, m Meter, r quota.Rate, delta int64) (string, error) {
	op := "adjust " + sc.Key
	if !m.isRate() {
		return "", fmt.Errorf("%s: meter %d is not a rate: %w", op, m, quota.ErrInvalid)
	}
	if err := checkRate(r); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	keys := []string{s.keys(sc)[0], s.Tag(sc.Tenant) + ":epoch"}
	for attempt := 0; attempt < maxConflicts; attempt++ {
		now, buckets, err := s.readRates(ctx, sc)
		if err != nil {
			return "", fmt.Errorf("%s: %w", op, err)
		}
		b, err := quota.ParseBucket(buckets[m])
		if err != nil {
			return "", fmt.Errorf("%s: %w", op, err)
		}
		b.Adjust(r, now, delta)
		after := b.String()
		v, err := s.run(ctx, op, adjustScript, keys, []any{s.now(), s.epochArg(), s.keyMS, int(m), buckets[m], after})
		if err != nil {
			return "", err
		}
		switch v[0] {
		case 0:
			return after, nil
		case -1:
			return "", fmt.Errorf("%s: %w", op, ErrEpochLost)
		}
	}
	return "", fmt.Errorf("%s: bucket changed under %d reads: %w", op, maxConflicts, ErrUnavailable)
}

// Restore sets budget meter m of sc for the window starting at window to
// used (the ledger's settled use) plus what other instances' live leases
// and stranded amounts of that window hold, plus mine: what instance's own
// lease holds unspent (its reservations of live tickets are not in the
// ledger, and go as quota.Memory's do). A window older than the scope's
// current one is ignored. It returns the counter after.
func (s *Store) Restore(ctx context.Context, instance string, sc Scope, m Meter, window time.Time, used, mine int64) (int64, error) {
	op := "restore " + sc.Key
	if !m.isBudget() || used < 0 || instance == "" {
		return 0, fmt.Errorf("%s: meter %d, use %d: %w", op, m, used, quota.ErrInvalid)
	}
	k := s.keys(sc)
	v, err := s.run(ctx, op, restoreScript, []string{k[0], k[1], s.Tag(sc.Tenant) + ":epoch"},
		[]any{s.now(), s.epochArg(), s.keyMS, int(m), window.Unix(), used, instance, max(mine, 0)})
	if err != nil {
		return 0, err
	}
	if len(v) != 2 {
		return 0, fmt.Errorf("%s: %w", op, ErrEpochLost)
	}
	return v[1], nil
}

// run runs a mutating script, sending it again with the same arguments
// (and so the same request id) when its reply was lost.
// observed tells Options.Observe of a call: op's first word, its outcome
// and its time since start.
func (s *Store) observed(op string, ctx, cctx context.Context, err error, start time.Time) {
	if s.observe == nil {
		return
	}
	name, _, _ := strings.Cut(op, " ")
	outcome := "error"
	switch {
	case err == nil:
		outcome = "ok"
	case ctx.Err() != nil:
		outcome = "canceled"
	case cctx.Err() != nil:
		outcome = "timeout"
	}
	s.observe(name, outcome, time.Since(start))
}

func (s *Store) run(ctx context.Context, op string, sc *redis.Script, keys []string, args []any) ([]int64, error) {
	var err error
	for try := 0; try <= s.retries; try++ {
		var v []int64
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		start := time.Now()
		v, err = sc.Run(cctx, s.c, keys, args...).Int64Slice()
		s.observed(op, ctx, cctx, err, start)
		cancel()
		if err == nil {
			return v, nil
		}
		var rerr redis.Error
		if errors.As(err, &rerr) || ctx.Err() != nil {
			break // Redis refused the script, or the caller gave up
		}
	}
	return nil, fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}
