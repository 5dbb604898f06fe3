package redisquota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultInstanceTTL is how long an instance counts after its last beat
// when NewInstances is given no TTL.
const DefaultInstanceTTL = 15 * time.Second

// Instances is a registry of the Sluice instances sharing a Redis: each
// beats into a sorted set, {prefix}:instances, and counts the members that
// beat within the TTL. quota.Failover divides every limit by that count
// while Redis is down, so the count it needs is the last one known before
// the outage: Last returns it.
//
// Beats are timed by Redis's clock (TIME in a script), so instances'
// clocks do not matter.
type Instances struct {
	c       redis.UniversalClient
	key     string
	id      string
	ttl     time.Duration
	ttlMS   string
	timeout time.Duration
	last    atomic.Int64
}

// NewInstances returns the registry under prefix (Options.Prefix of the
// backends, so the registry shares their Redis Cluster slot; "" is
// DefaultPrefix) for the instance id ("" picks a random one). An instance
// counts for ttl after its last beat (0 or less is DefaultInstanceTTL);
// beat well within it. Each call to Redis is bounded by half the TTL, at
// most a second. The caller owns c; as for New, build it with
// ContextTimeoutEnabled.
func NewInstances(c redis.UniversalClient, prefix, id string, ttl time.Duration) *Instances {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if id == "" {
		var p [8]byte
		rand.Read(p[:])
		id = hex.EncodeToString(p[:])
	}
	if ttl <= 0 {
		ttl = DefaultInstanceTTL
	}
	ttl = max(ttl, time.Millisecond)
	return &Instances{
		c: c, key: "{" + prefix + "}:instances", id: id, ttl: ttl,
		ttlMS:   strconv.FormatInt(ttl.Milliseconds(), 10),
		timeout: min(ttl/2, time.Second),
	}
}

// ID returns the instance's id in the registry.
func (r *Instances) ID() string { return r.id }

// Beat records that this instance is alive, forgets instances silent for
// longer than the TTL, and updates Last.
func (r *Instances) Beat(ctx context.Context) error {
	_, err := r.run(ctx, "beat", r.id)
	return err
}

// Count returns how many instances beat within the TTL, this one included
// if it did, and updates Last.
func (r *Instances) Count(ctx context.Context) (int, error) {
	return r.run(ctx, "count", "")
}

func (r *Instances) run(ctx context.Context, verb, id string) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	n, err := instancesScript.Run(cctx, r.c, []string{r.key}, id, r.ttlMS).Int64()
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("instances %s: %w", verb, ctx.Err())
		}
		return 0, fmt.Errorf("instances %s: %w: %w", verb, ErrUnavailable, err)
	}
	r.last.Store(n)
	return int(n), nil
}

// Leave removes this instance from the registry at once, so that the
// others count one fewer without waiting for the TTL.
func (r *Instances) Leave(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.c.ZRem(cctx, r.key, r.id).Err(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("instances leave: %w", ctx.Err())
		}
		return fmt.Errorf("instances leave: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// Last returns the count of the last Beat or Count that reached Redis, and
// keeps returning it while Redis cannot be reached (which is when
// quota.Failover needs it); at least 1. Before any has reached Redis it is
// 1: callers that know a configured count should take the larger.
func (r *Instances) Last() int {
	return int(max(r.last.Load(), 1))
}

// Run beats now and every interval (0 or less picks a third of the TTL)
// until ctx is done; then it leaves the registry, best effort. A failed
// beat leaves Last as it was; the next one tries again. After Redis lost
// its data (a restart without persistence), the count is low until every
// instance has beaten again, within one interval.
func (r *Instances) Run(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = r.ttl / 3
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		r.Beat(ctx)
		select {
		case <-ctx.Done():
			r.Leave(context.WithoutCancel(ctx))
			return
		case <-t.C:
		}
	}
}
