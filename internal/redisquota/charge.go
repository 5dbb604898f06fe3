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
	if err := ctx.Err(); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("charge: empty id: %w", quota.ErrInvalid)
	}
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return fmt.Errorf("charge %s: negative usage: %w", id, quota.ErrInvalid)
	}
	if u.InputTokens > maxExact || u.OutputTokens > maxExact || u.GPUMillis > maxExact || u.CostMicros > maxExact {
		return fmt.Errorf("charge %s: usage above 2^52: %w", id, quota.ErrInvalid)
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
		args := make(scriptArgs, 0, 12+9*len(entries)+2*len(chain))
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
