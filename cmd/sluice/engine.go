package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// engine is the quota backend the app runs on, and what it needs to report
// and stop it.
type engine struct {
	quota.Backend
	shared    bool                  // counters live in Redis (not rebuilt from the store)
	degraded  atomic.Bool           // set while the shared backend is unreachable
	redis     redis.UniversalClient // nil in process
	instances *redisquota.Instances
	stop      context.CancelFunc
	wg        sync.WaitGroup // the heartbeat loop

	// epochs is the shared engine's epoch and rebuild lock, and lost the
	// error it reports a missing epoch with.
	epochs epochStore
	lost   error
	// rebuildVia, when set, is what the rebuild restores the counters
	// through instead of the engine (the lease engine's own store refuses
	// to write until the epoch is set).
	rebuildVia quota.Backend
	id         string                 // this instance, the rebuild lock's owner
	epoch      atomic.Pointer[string] // the epoch this instance last saw
	// expect, when set, is told every epoch this instance adopts: the
	// lease store then refuses calls made under another one (see
	// leasequota.Store.ExpectEpoch).
	expect func(v string)
	log    *slog.Logger
	// restore flushes this instance's usage events and restores every
	// budget counter of the current windows from the ledger, returning
	// when it read the ledger. startQuota sets it, before the engine
	// serves.
	restore func(ctx context.Context) (readAt time.Time, n int, err error)
}

// epochStore is what the probe and the rebuild need of the shared engine:
// its epoch (the value that vouches for its counters, "" when missing)
// and the lock one rebuilder holds.
type epochStore interface {
	Epoch(ctx context.Context) (string, error)
	SetEpoch(ctx context.Context, v string) error
	LockRebuild(ctx context.Context, owner string, ttl time.Duration) (bool, error)
	UnlockRebuild(ctx context.Context, owner string) error
}

// rebuildLock is how long the rebuild lock is held at most: a rebuilder
// that dies leaves it to another instance after this.
const rebuildLock = time.Minute

// newEngine builds the in-process engine, or with redis_url the Redis
// backend behind a failover to local shares.
func (a *App) newEngine(ctx context.Context, onMode func(string)) (*engine, error) {
	if a.cfg.RedisURL == "" {
		return &engine{Backend: quota.NewMemory(quota.Options{})}, nil
	}
	timeout := time.Duration(a.cfg.RedisTimeout)
	probeTimeout := max(time.Duration(a.cfg.RedisProbeTimeout), timeout)
	client, err := newRedisClient(a.cfg, probeTimeout)
	if err != nil {
		return nil, err
	}
	prefix := a.cfg.RedisPrefix
	if prefix == "" {
		prefix = redisquota.DefaultPrefix
	}
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := host + "-" + hex.EncodeToString(b[:])
	e := &engine{shared: true, redis: client, id: id, log: a.log,
		instances: redisquota.NewInstances(client, prefix, id, redisquota.DefaultInstanceTTL)}
	count := func() int {
		// A configured count wins; the registry's count (kept while Redis is
		// down) is the floor otherwise.
		return max(a.cfg.Instances, e.instances.Last())
	}
	var shared quota.SharedBackend
	observe := func(op, outcome string, d time.Duration) {
		if a.metrics != nil {
			a.metrics.ObserveRedisCall(op, outcome, d)
		}
	}
	if a.cfg.QuotaEngine == config.QuotaEngineLease {
		if shared, err = e.newLease(client, prefix, timeout, count, observe, a.scopeTenant, func() []string {
			return a.policy.Manager().Current().TenantIDs()
		}); err != nil {
			client.Close()
			return nil, fmt.Errorf("lease quota engine: %w", err)
		}
	} else {
		backend, err := redisquota.New(client, redisquota.Options{Prefix: prefix, Timeout: timeout, RequireEpoch: true, Observe: observe})
		if err != nil {
			client.Close()
			return nil, fmt.Errorf("redis quota backend: %w", err)
		}
		shared, e.epochs, e.lost = backend, backend, redisquota.ErrEpochLost
	}
	e.Backend = quota.NewFailover(shared, quota.FailoverOptions{
		Instances: count,
		Probe:     e.probe,
		Rebuild:   e.rebuild,
		// A ticket settled anywhere has its event in the ledger: after a
		// rebuild it is not readmitted (this instance's queued events
		// first, so its own settles count).
		Settled: func(ctx context.Context, ids []string) (map[string]bool, error) {
			if a.recorder != nil {
				if err := a.recorder.Flush(ctx); err != nil {
					return nil, err
				}
			}
			return a.store.EventsExist(ctx, ids)
		},
		// The lock's life: a rebuild that takes longer lets another start.
		RebuildTimeout: rebuildLock,
		ProbeTimeout:   probeTimeout,
		TripAfter:      a.cfg.RedisTripAfter,
		OnMode: func(mode string) {
			e.degraded.Store(mode == "degraded")
			onMode(mode)
		},
		Log: a.log,
	})
	rctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.instances.Run(rctx, 5*time.Second)
	}()
	if err := client.Ping(ctx).Err(); err != nil {
		a.log.Error("redis unreachable at start: deciding on local shares until it answers", slog.String("error", err.Error()))
	} else if v, err := e.epochs.Epoch(ctx); err == nil && v != "" {
		// The counters this instance starts on: a rebuild after a loss
		// it did not see then makes its calls fail, and it readmits.
		e.adopt(v)
	}
	return e, nil
}

// probe checks that Redis answers and holds the epoch this instance last
// saw: a missing or different epoch means the counters were lost (and
// perhaps rebuilt by another instance), which the failover answers with
// rebuild.
func (e *engine) probe(ctx context.Context) error {
	if err := e.redis.Ping(ctx).Err(); err != nil {
		return err
	}
	v, err := e.epochs.Epoch(ctx)
	if err != nil {
		return err
	}
	if known := e.epoch.Load(); v == "" || known == nil || *known != v {
		return fmt.Errorf("probe: %w", e.lost)
	}
	return nil
}

// rebuild makes sure Redis holds an epoch, and so counters that include
// the ledger: when the epoch is missing, the instance that takes the
// rebuild lock flushes its usage events, restores every budget counter of
// the current windows from the ledger and sets a new epoch; the others get
// ErrEpochLost until it has. It returns when the epoch's ledger was read.
// A brand-new deployment starts the same way, from an empty ledger.
func (e *engine) rebuild(ctx context.Context) (time.Time, error) {
	v, err := e.epochs.Epoch(ctx)
	if err != nil {
		return time.Time{}, err
	}
	if v == "" {
		if v, err = e.rebuildLocked(ctx); err != nil {
			return time.Time{}, err
		}
	}
	e.adopt(v)
	readAt, ok := redisquota.EpochReadAt(v)
	if !ok {
		// Set by hand: nothing to tell which spooled use it holds, so
		// keep all of it (over-counting is the safe side).
		readAt = time.Time{}
	}
	return readAt, nil
}

// adopt makes v the epoch this instance knows.
func (e *engine) adopt(v string) {
	e.epoch.Store(&v)
	if e.expect != nil {
		e.expect(v)
	}
}

// rebuildLocked rebuilds the counters under the rebuild lock and returns
// the new epoch.
func (e *engine) rebuildLocked(ctx context.Context) (string, error) {
	ok, err := e.epochs.LockRebuild(ctx, e.id, rebuildLock)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("another instance is rebuilding the counters: %w", e.lost)
	}
	defer func() {
		if err := e.epochs.UnlockRebuild(context.WithoutCancel(ctx), e.id); err != nil {
			e.log.Warn("releasing the rebuild lock failed; it expires by itself", slog.String("error", err.Error()))
		}
	}()
	// Another instance may have finished between the two reads.
	if v, err := e.epochs.Epoch(ctx); err != nil || v != "" {
		return v, err
	}
	e.log.Warn("redis holds no quota epoch (new, restarted empty or flushed, or a tenant's tag lost it): rebuilding the counters from the ledger")
	if w, ok := e.epochs.(interface{ Wipe(context.Context) error }); ok {
		if err := w.Wipe(ctx); err != nil {
			return "", err
		}
	}
	readAt, n, err := e.restore(ctx)
	if err != nil {
		return "", fmt.Errorf("rebuild counters: %w", err)
	}
	v := redisquota.NewEpoch(readAt)
	if err := e.epochs.SetEpoch(ctx, v); err != nil {
		return "", err
	}
	e.log.Info("quota counters rebuilt from the ledger", slog.Int("restored_rollups", n), slog.Time("ledger_read_at", readAt))
	return v, nil
}

// Close stops the engine and its client.
func (e *engine) Close() error {
	if e.stop != nil {
		e.stop()
		e.wg.Wait()
	}
	err := e.Backend.Close()
	if e.redis != nil {
		e.redis.Close()
	}
	return err
}
