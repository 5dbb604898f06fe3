package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// newLease builds the lease engine (quota_engine: lease) on client and
// sets e's epochs and rebuild path for it; newEngine wraps the engine in
// quota.Failover as it does redisquota's backend.
//
// Each tenant's scopes live on the tenant's hash tag, {prefix:t:<id>}, and
// the global scope (and platform admins' user scopes) on {prefix:g}, so a
// Redis Cluster spreads tenants over its primaries and the global tag
// carries only the global scope's leases. A chain names its scopes'
// tenant (quota.Scope.Tenant, set by the policy snapshot); a key met
// alone (Use, the rebuild's Restore) is resolved by scopeTenant. A key
// never changes tag: ids are never reused, and a user or project never
// changes tenant.
//
// Every tag holds a copy of the epoch (tagEpochs), since a script sees one
// tag: a Cluster primary that comes back empty loses its tags' copies, and
// the instances' next calls there fail as after any loss.
//
// observe feeds the store's calls to the Redis call histogram, as the
// script engine's.
func (e *engine) newLease(client redis.UniversalClient, prefix string, timeout time.Duration, count func() int, observe func(op, outcome string, d time.Duration),
	tenantOf func(key string) (string, error), tenants func() []string) (quota.SharedBackend, error) {
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
	eng, err := leasequota.NewEngine(st, leasequota.EngineOptions{Instance: e.id, Instances: count, ChainTenants: true, Tenant: tenantOf})
	if err != nil {
		return nil, err
	}
	e.epochs = leaseEpochs{c: client, st: st, timeout: timeout, tenants: tenants}
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

// leaseEpochs is the epoch of the lease store and its rebuild lock. The
// epoch of record is the global tag's, <g>:epoch; <g>:tags lists the
// tenants whose tags hold a copy of it, <t>:epoch, each set when the
// tenant first appears (initTags) and at every rebuild. The lock is
// <g>:rebuild.
type leaseEpochs struct {
	c       redis.UniversalClient
	st      *leasequota.Store
	timeout time.Duration
	tenants func() []string // every tenant the policy knows
}

var _ epochStore = leaseEpochs{}

func (l leaseEpochs) key(name string) string { return l.st.Tag("") + ":" + name }

func (l leaseEpochs) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, l.timeout)
}

// Epoch returns the epoch, "" when it is missing from the global tag or
// from the tag of a tenant listed as holding it: the counters are lost,
// wholly or in part, and must be rebuilt. Tenants not listed yet get
// their copy. A deadline in ctx (the probe's) bounds it; without one,
// redis_timeout does.
func (l leaseEpochs) Epoch(ctx context.Context) (string, error) {
	ctx, cancel := l.bound(ctx)
	defer cancel()
	v, err := l.c.Get(ctx, l.key("epoch")).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("epoch: %w: %w", leasequota.ErrUnavailable, err)
	}
	listed, err := l.c.SMembers(ctx, l.key("tags")).Result()
	if err != nil {
		return "", fmt.Errorf("epoch: %w: %w", leasequota.ErrUnavailable, err)
	}
	copies, err := l.copies(ctx, listed)
	if err != nil {
		return "", err
	}
	for i := range listed {
		if copies[i] != v {
			return "", nil // that tag lost its state (or a rebuild is under way)
		}
	}
	if err := l.initTags(ctx, v, listed); err != nil {
		return "", err
	}
	return v, nil
}

// copies reads the epoch copies of tenants' tags ("" for a missing one).
func (l leaseEpochs) copies(ctx context.Context, tenants []string) ([]string, error) {
	if len(tenants) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.StringCmd, len(tenants))
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range tenants {
			cmds[i] = p.Get(ctx, l.st.Tag(t)+":epoch")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("epoch copies: %w: %w", leasequota.ErrUnavailable, err)
	}
	out := make([]string, len(tenants))
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out, nil
}

// initTags gives the tags of the tenants not in listed a copy of epoch v:
// listed first (a crash between the two then looks like a lost tag, and
// rebuilds: the safe side), then copied.
func (l leaseEpochs) initTags(ctx context.Context, v string, listed []string) error {
	if l.tenants == nil {
		return nil
	}
	have := make(map[string]bool, len(listed))
	for _, t := range listed {
		have[t] = true
	}
	var todo []string
	for _, t := range l.tenants() {
		if !have[t] {
			todo = append(todo, t)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	members := make([]any, len(todo))
	for i, t := range todo {
		members[i] = t
	}
	if err := l.c.SAdd(ctx, l.key("tags"), members...).Err(); err != nil {
		return fmt.Errorf("list tenant tags: %w: %w", leasequota.ErrUnavailable, err)
	}
	return l.setCopies(ctx, todo, v)
}

// setCopies sets epoch v on the tags of tenants, in one pipeline (a
// round trip per primary, not per tenant).
func (l leaseEpochs) setCopies(ctx context.Context, tenants []string, v string) error {
	if len(tenants) == 0 {
		return nil
	}
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, t := range tenants {
			p.Set(ctx, l.st.Tag(t)+":epoch", v, 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set epoch copies: %w: %w", leasequota.ErrUnavailable, err)
	}
	return nil
}

// InitTags gives the tags of tenants new since the last call a copy of
// the epoch v this instance knows, if the global tag still holds it.
func (l leaseEpochs) InitTags(ctx context.Context, v string) error {
	ctx, cancel := l.bound(ctx)
	defer cancel()
	cur, err := l.c.Get(ctx, l.key("epoch")).Result()
	if err != nil || cur != v {
		return nil // lost or rebuilt meanwhile: the probe sees to it
	}
	listed, err := l.c.SMembers(ctx, l.key("tags")).Result()
	if err != nil {
		return fmt.Errorf("list tenant tags: %w: %w", leasequota.ErrUnavailable, err)
	}
	return l.initTags(ctx, v, listed)
}

// SetEpoch sets epoch v on every tenant's tag, lists them, and sets it on
// the global tag last: the counters, rebuilt, hold the ledger.
func (l leaseEpochs) SetEpoch(ctx context.Context, v string) error {
	if v == "" {
		return fmt.Errorf("set epoch: empty value: %w", quota.ErrInvalid)
	}
	var all []string
	if l.tenants != nil {
		all = l.tenants()
	}
	if err := l.setCopies(ctx, all, v); err != nil {
		return err
	}
	if err := l.c.Del(ctx, l.key("tags")).Err(); err != nil {
		return fmt.Errorf("set epoch: %w: %w", leasequota.ErrUnavailable, err)
	}
	if len(all) > 0 {
		members := make([]any, len(all))
		for i, t := range all {
			members[i] = t
		}
		if err := l.c.SAdd(ctx, l.key("tags"), members...).Err(); err != nil {
			return fmt.Errorf("set epoch: %w: %w", leasequota.ErrUnavailable, err)
		}
	}
	return l.st.SetEpoch(ctx, "", v)
}

// Wipe deletes every key of the lease store but the rebuild lock, on every
// primary: a rebuild after a partial loss (one tag's copy gone) starts
// from nothing everywhere, as after an empty restart, since the counters
// of the tags that kept their state hold leases and tickets the rebuilt
// ones no longer know. The epochs go first: every call fails from then on.
func (l leaseEpochs) Wipe(ctx context.Context) error {
	lock := l.key("rebuild")
	prefix := strings.TrimSuffix(l.st.Tag(""), ":g}") // "{<prefix>"
	wipe := func(ctx context.Context, c redis.Cmdable) error {
		for _, pattern := range []string{prefix + ":g}*", prefix + ":t:*"} {
			it := c.Scan(ctx, 0, pattern, 500).Iterator()
			for it.Next(ctx) {
				if k := it.Val(); k != lock {
					if err := c.Unlink(ctx, k).Err(); err != nil {
						return err
					}
				}
			}
			if err := it.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if err := l.c.Del(ctx, l.key("epoch")).Err(); err != nil {
		return fmt.Errorf("wipe: %w: %w", leasequota.ErrUnavailable, err)
	}
	var err error
	if cc, ok := l.c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return wipe(ctx, c) })
	} else {
		err = wipe(ctx, l.c)
	}
	if err != nil {
		return fmt.Errorf("wipe: %w: %w", leasequota.ErrUnavailable, err)
	}
	return nil
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

// scopeTenant is the tenant whose tag holds the scope key, for the keys
// the lease engine meets outside a chain: the policy snapshot knows
// tenants, departments, projects, memberships and the API keys whose
// scopes have settings, the database users and every other API key (its
// user's tenant, as the chains of its requests say). A key nobody knows
// (its owner deleted) is on the global tag: nothing admits on it any more.
// A database error fails the call.
func (a *App) scopeTenant(key string) (string, error) {
	kind, id, err := policy.ParseScope("scope", key)
	if err != nil || kind == policy.KindGlobal {
		return "", err
	}
	if kind != policy.KindUser {
		t, ok := a.policy.Manager().Current().ScopeTenant(kind, id)
		if ok || kind != policy.KindKey {
			return t, nil
		}
	}
	var tenant string
	err = a.store.View(context.Background(), func(tx tenancy.Tx) error {
		if kind == policy.KindKey {
			k, err := tx.Key(id)
			if err != nil {
				return err
			}
			tenant = k.TenantID
			return nil
		}
		u, err := tx.User(id)
		if err != nil {
			return err
		}
		tenant = u.TenantID
		return nil
	})
	if errs.Is(err, errs.NotFound) {
		return "", nil
	}
	return tenant, err
}

// tenantsChanged gives the tags of tenants new to the policy a copy of the
// epoch this instance knows, before their first decision needs it (else
// that decision fails as after a loss, and the probe does it).
func (e *engine) tenantsChanged() {
	le, ok := e.epochs.(leaseEpochs)
	v := e.epoch.Load()
	if !ok || v == nil {
		return
	}
	if err := le.InitTags(context.Background(), *v); err != nil {
		e.log.Warn("giving new tenants' tags the epoch failed; their first decision will", slog.String("error", err.Error()))
	}
}
