package leasequota

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
)

// The scripts, each the prelude and a body. Run sends EVALSHA and falls back
// to EVAL on NOSCRIPT.
var (
	//go:embed lua/prelude.lua
	prelude string
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

	grantScript   = redis.NewScript(prelude + grantBody)
	returnScript  = redis.NewScript(prelude + returnBody)
	renewScript   = redis.NewScript(prelude + renewBody)
	reclaimScript = redis.NewScript(prelude + reclaimBody)
	readScript    = redis.NewScript(prelude + readBody)
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
	// while the tag's epoch key is missing.
	RequireEpoch bool
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
	requireEp string
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
	}
	if o.RequireEpoch {
		s.requireEp = "1"
	}
	return s, nil
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
	// meter it may spend before Redis learns of it (see doc.go); it is
	// clamped to what the lease holds.
	Pin int64
	// Limit bounds a budget or concurrency meter.
	Limit int64
	// Window is the start of a budget's current window.
	Window time.Time
	// Rate is a rate meter's limit. Its Period must be whole microseconds.
	Rate quota.Rate
}

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

// rateArgs returns a rate's period in µs and its burst, or an error.
func rateArgs(r quota.Rate) (per, burst int64, err error) {
	if err := r.Validate(); err != nil || r.IsZero() || r.Limit == 0 {
		return 0, 0, fmt.Errorf("rate %+v: %w", r, quota.ErrInvalid)
	}
	if r.Period%time.Microsecond != 0 {
		return 0, 0, fmt.Errorf("rate period %s not whole microseconds: %w", r.Period, quota.ErrInvalid)
	}
	per, burst = r.Period.Microseconds(), r.Burst
	if burst == 0 {
		burst = r.Limit
	}
	if hi := float64(burst) * float64(per); hi >= 1<<53 || float64(burst)*float64(r.Limit) >= 1<<53 {
		return 0, 0, fmt.Errorf("rate %+v too large for exact arithmetic: %w", r, quota.ErrInvalid)
	}
	return per, burst, nil
}

// Grant takes leases on several meters of one scope atomically, under
// instance, for ttl. A retried call with the same requestID returns the
// first call's reply and grants nothing more.
func (s *Store) Grant(ctx context.Context, requestID, instance string, sc Scope, ttl time.Duration, wants []Want) (GrantResult, error) {
	op := "grant " + requestID
	if requestID == "" || instance == "" || len(wants) == 0 || ttl <= 0 {
		return GrantResult{}, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	args := make([]any, 0, 9+8*len(wants))
	args = append(args, s.now(), s.requireEp, instance, ttl.Microseconds(), s.validity, s.replayMS, s.keyMS, s.maxTTL, len(wants))
	for _, w := range wants {
		if w.Amount <= 0 || w.Min < 0 || int(w.Meter) >= NumMeters {
			return GrantResult{}, fmt.Errorf("%s: want %+v: %w", op, w, quota.ErrInvalid)
		}
		var lim, x, burst int64
		if w.Meter.isRate() {
			per, b, err := rateArgs(w.Rate)
			if err != nil {
				return GrantResult{}, fmt.Errorf("%s: %w", op, err)
			}
			lim, x, burst = w.Rate.Limit, per, b
		} else {
			lim = max(w.Limit, 0)
			if w.Meter.isBudget() {
				x = w.Window.Unix()
			}
		}
		args = append(args, int(w.Meter), w.Amount, w.Min, max(w.Pin, 0), lim, x, burst, 0)
	}
	keys := append(s.keys(sc), s.Tag(sc.Tenant)+":q:"+requestID, s.Tag(sc.Tenant)+":epoch")
	v, err := s.run(ctx, op, grantScript, keys, args)
	if err != nil {
		return GrantResult{}, err
	}
	if len(v) == 1 {
		return GrantResult{}, fmt.Errorf("%s: %w", op, ErrEpochLost)
	}
	if len(v) != 3+4*len(wants) {
		return GrantResult{}, fmt.Errorf("%s: reply of %d values: %w", op, len(v), ErrUnavailable)
	}
	r := GrantResult{Replay: v[0] == 1, Now: time.UnixMicro(v[1]), ExpiresAt: time.UnixMicro(v[2]), Grants: make([]Grant, len(wants))}
	for i, w := range wants {
		g := Grant{Meter: w.Meter, Granted: v[3+4*i], Remaining: v[4+4*i], Held: v[5+4*i]}
		if d := v[6+4*i]; d > 0 {
			g.Deadline = time.UnixMicro(d)
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
	// Rate is the rate meter's limit, as granted.
	Rate quota.Rate
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
	args = append(args, s.now(), s.requireEp, instance, s.replayMS, s.maxTTL, len(gives))
	for _, g := range gives {
		if g.Amount <= 0 || int(g.Meter) >= NumMeters {
			return ReturnResult{}, fmt.Errorf("%s: give %+v: %w", op, g, quota.ErrInvalid)
		}
		var x, lim int64
		switch {
		case g.Meter.isRate():
			per, _, err := rateArgs(g.Rate)
			if err != nil {
				return ReturnResult{}, fmt.Errorf("%s: %w", op, err)
			}
			x, lim = per, g.Rate.Limit
		case g.Meter.isBudget():
			x = g.Window.Unix()
		}
		args = append(args, int(g.Meter), g.Amount, x, lim, 0)
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

// Pin sets how much of a budget or concurrency lease the instance may
// spend before Redis learns of it.
type Pin struct {
	Meter  Meter
	Amount int64
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
// for the global tag) to now+ttl and sets their pins: the heartbeat. It
// is idempotent (it sets absolute values), so it carries no request id.
func (s *Store) Renew(ctx context.Context, instance, tenant string, ttl time.Duration, scopes []Renewal) (RenewResult, error) {
	op := "renew " + instance
	if instance == "" || len(scopes) == 0 || ttl <= 0 {
		return RenewResult{}, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	keys := make([]string, 0, 4*len(scopes)+1)
	args := []any{s.now(), s.requireEp, instance, ttl.Microseconds(), s.maxTTL}
	for _, r := range scopes {
		keys = append(keys, s.keys(Scope{Tenant: tenant, Key: r.Key})...)
		args = append(args, len(r.Pins))
		for _, p := range r.Pins {
			args = append(args, int(p.Meter), max(p.Amount, 0))
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
	Window   time.Time // budgets: the window Used counts
	TAT      time.Time // rates: the bucket's theoretical arrival time
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
		n, _ := strconv.ParseInt(fmt.Sprint(h[i+1]), 10, 64)
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
			m.TAT = time.UnixMicro(n)
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

// run runs a mutating script, sending it again with the same arguments
// (and so the same request id) when its reply was lost.
func (s *Store) run(ctx context.Context, op string, sc *redis.Script, keys []string, args []any) ([]int64, error) {
	var err error
	for try := 0; try <= s.retries; try++ {
		var v []int64
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		v, err = sc.Run(cctx, s.c, keys, args...).Int64Slice()
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
