package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
)

// newLease builds the lease engine (quota_engine: lease) on client and
// sets e's epochs and rebuild path for it; newEngine wraps the engine in
// quota.Failover as it does redisquota's backend.
//
// Every scope is on the global hash tag (EngineOptions.Tenant is nil): a
// scope key alone does not name its tenant (user/usr_… does not), the tag
// must never change for a key (counters on two tags would each admit up
// to the limit), and the app speaks to one Redis node, where a tag per
// tenant buys nothing. So the epoch and the rebuild lock are the global
// tag's too.
//
// observe feeds the store's calls to the Redis call histogram, as the
// script engine's.
func (e *engine) newLease(client redis.UniversalClient, prefix string, timeout time.Duration, count func() int, observe func(op, outcome string, d time.Duration)) (quota.SharedBackend, error) {
	st, err := leasequota.NewStore(client, leasequota.Options{Prefix: prefix, Timeout: timeout, RequireEpoch: true, Observe: observe})
	if err != nil {
		return nil, err
	}
	// The rebuild writes the counters before the epoch exists, which the
	// engine's own store refuses.
	raw, err := leasequota.NewStore(client, leasequota.Options{Prefix: prefix, Timeout: timeout})
	if err != nil {
		return nil, err
	}
	eng, err := leasequota.NewEngine(st, leasequota.EngineOptions{Instance: e.id, Instances: count})
	if err != nil {
		return nil, err
	}
	e.epochs = leaseEpochs{c: client, st: st, timeout: timeout}
	e.expect = st.ExpectEpoch
	e.lost = leasequota.ErrEpochLost
	e.rebuildVia = leaseRebuild{Engine: eng, raw: raw}
	return eng, nil
}

// leaseRebuild is the lease engine as the rebuild sees it: its Restore
// writes through a store without RequireEpoch.
type leaseRebuild struct {
	*leasequota.Engine
	raw *leasequota.Store
}

func (r leaseRebuild) Restore(ctx context.Context, key string, d quota.Dimension, w quota.Window, start time.Time, used int64) error {
	return r.RebuildRestore(ctx, r.raw, key, d, w, start, used)
}

// leaseEpochs is the epoch and the rebuild lock of the lease store's
// global tag: <tag>:epoch, which the store checks, and <tag>:rebuild.
type leaseEpochs struct {
	c       redis.UniversalClient
	st      *leasequota.Store
	timeout time.Duration
}

var _ epochStore = leaseEpochs{}

func (l leaseEpochs) key(name string) string { return l.st.Tag("") + ":" + name }

// Epoch returns the global tag's epoch, "" when it is missing. A deadline
// in ctx (the probe's) bounds it; without one, redis_timeout does.
func (l leaseEpochs) Epoch(ctx context.Context) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.timeout)
		defer cancel()
	}
	v, err := l.c.Get(ctx, l.key("epoch")).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("epoch: %w: %w", leasequota.ErrUnavailable, err)
	}
	return v, nil
}

// SetEpoch sets the global tag's epoch: the tag's counters hold the ledger.
func (l leaseEpochs) SetEpoch(ctx context.Context, v string) error {
	if v == "" {
		return fmt.Errorf("set epoch: empty value: %w", quota.ErrInvalid)
	}
	return l.st.SetEpoch(ctx, "", v)
}

// LockRebuild takes the rebuild lock for owner for ttl (SET NX PX),
// reporting false when another owner holds it.
func (l leaseEpochs) LockRebuild(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	ok, err := l.c.SetNX(cctx, l.key("rebuild"), owner, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("lock rebuild: %w: %w", leasequota.ErrUnavailable, err)
	}
	return ok, nil
}

var unlockScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)

// UnlockRebuild releases the rebuild lock if owner still holds it.
func (l leaseEpochs) UnlockRebuild(ctx context.Context, owner string) error {
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	if err := unlockScript.Run(cctx, l.c, []string{l.key("rebuild")}, owner).Err(); err != nil {
		return fmt.Errorf("unlock rebuild: %w: %w", leasequota.ErrUnavailable, err)
	}
	return nil
}
