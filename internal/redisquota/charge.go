package redisquota

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Charge implements quota.Charger, with quota.Memory's rules: u is added to
// the budgets of every scope of chain for the day and month windows that
// hold at, when those windows are the scopes' current ones (use in a
// window that has ended limits nothing). A scope never seen gets its state,
// with the windows of its zone. Charging an id again within
// Options.ChargeRetention changes nothing. It is one round trip (two when
// this instance's clock is a window off Redis's), atomic over the chain.
func (b *Backend) Charge(ctx context.Context, id string, chain []quota.Scope, u quota.Usage, at time.Time) error {
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return fmt.Errorf("charge %s: negative usage: %w", id, quota.ErrInvalid)
	}
	if u.InputTokens > maxExact || u.OutputTokens > maxExact || u.GPUMillis > maxExact || u.CostMicros > maxExact {
		return fmt.Errorf("charge %s: usage above 2^52: %w", id, quota.ErrInvalid)
	}
	return b.charge(ctx, id, chain, u, at, nil)
}

var _ quota.RateCharger = (*Backend)(nil)

// ChargeRates implements quota.RateCharger: each charge's units are added
// to its scope's requests and tokens_rate buckets in Redis as of Redis's
// now, as an acquire past the limit would charge them (never refused; a
// drained bucket fills from empty), with the rates of the scope's Limits.
// A scope without that rate, or units of 0, leaves the bucket alone.
// quota.Failover charges so what it admitted locally during an outage, so
// that the shared buckets do not come back full. Like Charge it is once
// per id (Options.ChargeRetention), one round trip, atomic over charges.
func (b *Backend) ChargeRates(ctx context.Context, id string, charges []quota.RateCharge) error {
	chain := make([]quota.Scope, len(charges))
	rates := make([]scopeRates, len(charges))
	for i := range charges {
		c := &charges[i]
		if c.Requests < 0 || c.Tokens < 0 {
			return fmt.Errorf("charge rates %s: negative units: %w", id, quota.ErrInvalid)
		}
		if c.Requests > maxExact || c.Tokens > maxExact {
			return fmt.Errorf("charge rates %s: units above 2^52: %w", id, quota.ErrInvalid)
		}
		chain[i] = c.Scope
		rates[i] = scopeRates{req: noRate, tok: noRate}
		if l := c.Scope.Limits; l != nil {
			if c.Requests > 0 {
				rates[i].req, rates[i].reqN = rateArgsOf(l.Requests), c.Requests
			}
			if c.Tokens > 0 {
				rates[i].tok, rates[i].tokN = rateArgsOf(l.TokensRate), c.Tokens
			}
		}
	}
	at := b.wall()
	if b.clock != nil {
		at = b.clock()
	}
	return b.charge(ctx, id, chain, quota.Usage{}, at, rates)
}

// scopeRates are the rate units a charge adds to one scope's buckets.
type scopeRates struct {
	req, tok   *encodedRate
	reqN, tokN int64
}

// args appends the script arguments of r: units, K and A per bucket; a
// rate that is not valid (none, or one that refuses everything) takes no
// units.
func (r scopeRates) args(a scriptArgs) scriptArgs {
	for _, x := range [2]struct {
		e *encodedRate
		n int64
	}{{r.req, r.reqN}, {r.tok, r.tokN}} {
		if x.e.mode != rateValid || x.n <= 0 {
			a = append(a, 0, "", "")
			continue
		}
		a = append(a, intArg(x.n), x.e.args[1], x.e.args[2])
	}
	return a
}

// charge runs charge.lua: u to the budgets of every scope of chain for the
// windows holding at and, when rates is not nil, rates[i] to the buckets
// of chain[i].
func (b *Backend) charge(ctx context.Context, id string, chain []quota.Scope, u quota.Usage, at time.Time, rates []scopeRates) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("charge: empty id: %w", quota.ErrInvalid)
	}
	for i := range chain {
		k := chain[i].Key
		if k == "" {
			return fmt.Errorf("charge %s: empty scope key: %w", id, quota.ErrInvalid)
		}
		for j := range i {
			if chain[j].Key == k {
				return fmt.Errorf("charge %s: scope %s twice in chain: %w", id, k, quota.ErrInvalid)
			}
		}
	}
	if b.closed.Load() {
		return quota.ErrClosed
	}

	wall, nowS, nowN := b.now()
	var entries []*zoneEntry
	zoneIdx := make([]int, len(chain))
	for i := range chain {
		loc := chain[i].Loc
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
	keys := make([]string, 0, 2+3*len(chain))
	keys = append(keys, b.key("c:", id))
	for i := range chain {
		k := chain[i].Key
		keys = append(keys, b.key("s:", k), b.key("l:", k), b.key("r:", k))
	}
	keys = b.withEpoch(keys)
	// Both at most 2^52, so the sum is exact; the script saturates it.
	tokens := u.InputTokens + u.OutputTokens
	// Unix seconds, floored: window bounds are whole seconds.
	atSec := strconv.FormatInt(at.Unix(), 10)
	o := op{"charge", id}
	for try := 0; ; try++ {
		args := make(scriptArgs, 0, 12+9*len(entries)+8*len(chain))
		args = append(args, nowS, nowN, b.prefixArg, b.baseArg, b.marginArg, b.chargeMS,
			tokens, u.GPUMillis, u.CostMicros, atSec, len(chain))
		ws := make([]*zoneWindows, len(entries))
		for i, e := range entries {
			ws[i] = e.windows(wall)
		}
		args.zones(ws)
		for i := range chain {
			args = append(args, chain[i].Key, zoneIdx[i])
		}
		if rates != nil {
			for _, r := range rates {
				args = r.args(args)
			}
		}
		res, _, err := b.runIdem(ctx, o, chargeScript, keys, args)
		if err != nil {
			return err
		}
		rep := reply(res)
		if n := rep.int(0); n == 1 || n == 2 {
			return nil
		}
		// The windows do not hold Redis's now: the clocks disagree by
		// more than a day. Try once more around Redis's now.
		if try == 1 {
			return fmt.Errorf("%s: %w: clock skew between Redis and this instance", o, ErrUnavailable)
		}
		wall = rep.now()
	}
}
