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

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// engine is the quota backend the app runs on, and what it needs to report
// and stop it.
type engine struct {
	quota.Backend
	shared    bool          // counters live in Redis (not rebuilt from the store)
	degraded  atomic.Bool   // set while the shared backend is unreachable
	redis     *redis.Client // nil in process
	instances *redisquota.Instances
	stop      context.CancelFunc
	wg        sync.WaitGroup // the heartbeat loop
}

// newEngine builds the in-process engine, or with redis_url the Redis
// backend behind a failover to local shares.
func (a *App) newEngine(ctx context.Context, onMode func(string)) (*engine, error) {
	if a.cfg.RedisURL == "" {
		return &engine{Backend: quota.NewMemory(quota.Options{})}, nil
	}
	opts, err := redis.ParseURL(a.cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("redis_url: %w", err)
	}
	timeout := time.Duration(a.cfg.RedisTimeout)
	opts.ContextTimeoutEnabled = true
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = timeout, timeout, timeout
	opts.MaxRetries = -1 // a decision is never retried blindly: the failover decides
	opts.PoolSize = 64
	client := redis.NewClient(opts)
	prefix := a.cfg.RedisPrefix
	if prefix == "" {
		prefix = redisquota.DefaultPrefix
	}
	backend, err := redisquota.New(client, redisquota.Options{Prefix: prefix, Timeout: timeout})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("redis quota backend: %w", err)
	}
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	e := &engine{shared: true, redis: client,
		instances: redisquota.NewInstances(client, prefix, host+"-"+hex.EncodeToString(b[:]), redisquota.DefaultInstanceTTL)}
	count := func() int {
		// A configured count wins; the registry's count (kept while Redis is
		// down) is the floor otherwise.
		return max(a.cfg.Instances, e.instances.Last())
	}
	e.Backend = quota.NewFailover(backend, quota.FailoverOptions{
		Instances: count,
		Probe:     func(ctx context.Context) error { return client.Ping(ctx).Err() },
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
	}
	return e, nil
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
