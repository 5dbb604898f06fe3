package main

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/config"
)

// newRedisClient builds the client of redis_url: one node, or with
// redis_cluster a Redis Cluster client seeded from the URL. Each call's
// context bounds it (redis_timeout for the scripts, the probe's own for
// PING): the client's own timeouts, which would cut the probe short, are
// only the outer bound.
func newRedisClient(cfg config.Config, probeTimeout time.Duration) (redis.UniversalClient, error) {
	if cfg.RedisCluster {
		opts, err := redis.ParseClusterURL(cfg.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("redis_url: %w", err)
		}
		opts.ContextTimeoutEnabled = true
		opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = probeTimeout, probeTimeout, probeTimeout
		opts.MaxRetries = -1
		// The cluster client resends a call whose connection failed within
		// its redirect budget, whether or not Redis ran it: no budget, so
		// a decision is never resent blindly. A MOVED reply then fails the
		// call, as Redis being away does, and reloads the slot map for the
		// next.
		opts.MaxRedirects = -1
		opts.PoolSize = 64 // per node
		return redis.NewClusterClient(opts), nil
	}
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("redis_url: %w", err)
	}
	opts.ContextTimeoutEnabled = true
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = probeTimeout, probeTimeout, probeTimeout
	opts.MaxRetries = -1 // a decision is never retried blindly: redisquota resends only what is idempotent
	opts.PoolSize = 64
	return redis.NewClient(opts), nil
}
