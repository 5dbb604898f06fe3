package redisquota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
)

// ErrEpochLost is returned, changing nothing, by Acquire, Settle,
// Heartbeat and Charge of a backend with Options.RequireEpoch while
// {prefix}:epoch is missing: Redis answers but has lost its state. It
// wraps ErrUnavailable (so quota.Failover treats it as an outage) and
// quota.ErrStateLost (so it rebuilds before it trusts Redis again).
var ErrEpochLost = fmt.Errorf("%w: epoch missing, counters lost: %w", ErrUnavailable, quota.ErrStateLost)

// The epoch's and the rebuild lock's scripts: Backend holds a
// redis.Scripter, which runs scripts only.
var (
	getScript    = redis.NewScript(`return redis.call('GET', KEYS[1])`)
	setScript    = redis.NewScript(`return redis.call('SET', KEYS[1], ARGV[1])`)
	lockScript   = redis.NewScript(`return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])`)
	unlockScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
)

// NewEpoch returns a fresh epoch value that records readAt, the moment the
// rebuild read the ledger, so that every instance can tell which of its
// spooled settlements the rebuilt counters already hold.
func NewEpoch(readAt time.Time) string {
	var r [8]byte
	rand.Read(r[:])
	return strconv.FormatInt(readAt.UnixNano(), 10) + "-" + hex.EncodeToString(r[:])
}

// EpochReadAt returns the ledger read time recorded in an epoch value made
// by NewEpoch, false for any other value.
func EpochReadAt(v string) (time.Time, bool) {
	ns, _, ok := strings.Cut(v, "-")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, n).UTC(), true
}

// Epoch returns the value of {prefix}:epoch, "" when it is missing. It is
// part of a health probe, so a deadline in ctx (the probe's, longer than
// a call's) bounds it; without one, Options.Timeout does.
func (b *Backend) Epoch(ctx context.Context) (string, error) {
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		cctx, cancel = context.WithTimeout(ctx, b.timeout)
	}
	defer cancel()
	var start time.Time
	if b.observe != nil {
		start = time.Now()
	}
	v, err := getScript.Run(cctx, b.c, []string{b.epochKey}).Text()
	if b.observe != nil {
		e := err
		if errors.Is(e, redis.Nil) {
			e = nil
		}
		b.observe("epoch", outcome(ctx, cctx, e), time.Since(start))
	}
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("epoch: %w: %w", ErrUnavailable, err)
	}
	return v, nil
}

// SetEpoch sets {prefix}:epoch to v. It has no TTL, unlike every other key:
// it must live exactly as long as the state it vouches for. Set it only
// once the counters hold the ledger (or, in tests, on an empty Redis).
func (b *Backend) SetEpoch(ctx context.Context, v string) error {
	if v == "" {
		return fmt.Errorf("set epoch: empty value: %w", quota.ErrInvalid)
	}
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if err := setScript.Run(cctx, b.c, []string{b.epochKey}, v).Err(); err != nil {
		return fmt.Errorf("set epoch: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// LockRebuild takes {prefix}:rebuild for owner for ttl (SET NX PX), so that
// one instance rebuilds the counters at a time. It reports false when
// another owner holds it.
func (b *Backend) LockRebuild(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	err := lockScript.Run(cctx, b.c, []string{b.prefix + "rebuild"}, owner, max(ttl.Milliseconds(), 1)).Err()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("lock rebuild: %w: %w", ErrUnavailable, err)
	}
	return true, nil
}

// UnlockRebuild releases {prefix}:rebuild if owner still holds it.
func (b *Backend) UnlockRebuild(ctx context.Context, owner string) error {
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if err := unlockScript.Run(cctx, b.c, []string{b.prefix + "rebuild"}, owner).Err(); err != nil {
		return fmt.Errorf("unlock rebuild: %w: %w", ErrUnavailable, err)
	}
	return nil
}
