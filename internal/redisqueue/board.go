// Package redisqueue keeps the admission queue's order in Redis, so that
// the instances behind a load balancer serve the waiters of a scope as one
// fair queue (admission.Board). Each scope's waiters, wherever they wait,
// are one sorted set ordered by class, then by a round tag (start-time fair
// queuing with unit weights: a user's next waiter starts one round after its
// previous one, a user that was idle starts at the round being served),
// then by arrival. A waiter that leaves unserved moves its user's later
// waiters one round earlier, so a wait that ended costs its user nothing.
// Each instance serves its waiters only when Redis names them the head.
//
// Keys, all of one scope in one hash slot ({prefix:q:SCOPE}):
//
//	…:z  sorted set: waiter id → class·1e12 + round·1e6 + arrival
//	…:e  sorted set: waiter id → expiry (unix ms); an instance renews its
//	     waiters' entries, and the entries of one that died expire
//	…:r  hash: v<class> the round being served, f<class>:<user> the
//	     user's next round, n<class>:<user> its waiters, m:<id> a waiter
//	     ("class|user|round|arrival"), seq the arrival counter
//
// and {prefix:q}:active, the set of scopes with waiters (a hint for
// arrivals, refreshed by every instance's loop).
package redisqueue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/admission"
)

// Board is admission.Board over Redis.
type Board struct {
	c      redis.UniversalClient
	prefix string
	// TTL is how long a waiter's entry lives without a Touch.
	TTL time.Duration
	Now func() time.Time
}

var _ admission.Board = (*Board)(nil)

// New returns a board on c under prefix (e.g. "sluice").
func New(c redis.UniversalClient, prefix string) *Board {
	return &Board{c: c, prefix: prefix, TTL: 5 * time.Second, Now: time.Now}
}

func (b *Board) keys(scope string) []string {
	tag := "{" + b.prefix + ":q:" + scope + "}"
	return []string{tag + ":z", tag + ":e", tag + ":r"}
}

func (b *Board) active() string { return "{" + b.prefix + ":q}:active" }

func (b *Board) expiry() int64 { return b.Now().Add(b.TTL).UnixMilli() }

// prelude holds the functions the scripts share: parsing a waiter and
// taking one out (served or not).
const prelude = `
local Z, E, R = KEYS[1], KEYS[2], KEYS[3]
local function parse(m)
  local c, u, s, q = string.match(m, '^(%d+)|(.*)|(%-?%d+)|(%d+)$')
  return tonumber(c), u, tonumber(s), tonumber(q)
end
local function score(c, s, q) return string.format('%.0f', c * 1e12 + s * 1e6 + (q % 1000000)) end
local function out(id, served)
  local m = redis.call('HGET', R, 'm:' .. id)
  if not m then return end
  local c, u, s, q = parse(m)
  redis.call('ZREM', Z, id)
  redis.call('ZREM', E, id)
  redis.call('HDEL', R, 'm:' .. id)
  if served then
    local v = tonumber(redis.call('HGET', R, 'v' .. c) or '0')
    if s > v then redis.call('HSET', R, 'v' .. c, s) end
  else
    -- No debt: the user's later waiters move one round earlier.
    local ids = redis.call('ZRANGE', Z, 0, -1)
    for _, other in ipairs(ids) do
      local m2 = redis.call('HGET', R, 'm:' .. other)
      if m2 then
        local c2, u2, s2, q2 = parse(m2)
        if c2 == c and u2 == u and s2 > s then
          redis.call('HSET', R, 'm:' .. other, c2 .. '|' .. u2 .. '|' .. (s2 - 1) .. '|' .. q2)
          redis.call('ZADD', Z, score(c2, s2 - 1, q2), other)
        end
      end
    end
    redis.call('HINCRBY', R, 'f' .. c .. ':' .. u, -1)
  end
  if redis.call('HINCRBY', R, 'n' .. c .. ':' .. u, -1) <= 0 then
    redis.call('HDEL', R, 'n' .. c .. ':' .. u, 'f' .. c .. ':' .. u)
  end
end
local function emptied()
  if redis.call('ZCARD', Z) == 0 then
    redis.call('DEL', Z, E, R)
    return true
  end
  return false
end
`

// joinScript: ARGV id, class, user, expiry.
var joinScript = redis.NewScript(prelude + `
local id, c, u = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if redis.call('HEXISTS', R, 'm:' .. id) == 1 then return 0 end
local v = tonumber(redis.call('HGET', R, 'v' .. c) or '0')
local f = tonumber(redis.call('HGET', R, 'f' .. c .. ':' .. u) or '0')
local s = math.max(v, f)
redis.call('HSET', R, 'f' .. c .. ':' .. u, s + 1)
redis.call('HINCRBY', R, 'n' .. c .. ':' .. u, 1)
local q = redis.call('HINCRBY', R, 'seq', 1)
redis.call('HSET', R, 'm:' .. id, c .. '|' .. u .. '|' .. s .. '|' .. q)
redis.call('ZADD', Z, score(c, s, q), id)
redis.call('ZADD', E, ARGV[4], id)
return 1
`)

// leaveScript: ARGV id, served ("1" or "0"). Returns 1 when the scope has
// no waiter left.
var leaveScript = redis.NewScript(prelude + `
out(ARGV[1], ARGV[2] == '1')
if emptied() then return 1 end
return 0
`)

// headsScript: ARGV now (unix ms), n. Takes out the waiters whose entries
// expired, then returns the first n ids (an empty list: nobody waits).
var headsScript = redis.NewScript(prelude + `
local dead = redis.call('ZRANGEBYSCORE', E, '-inf', ARGV[1])
for _, id in ipairs(dead) do out(id, false) end
if emptied() then return {} end
return redis.call('ZRANGE', Z, 0, tonumber(ARGV[2]) - 1)
`)

// Join enters waiter id of user in class c on scope's queue.
func (b *Board) Join(ctx context.Context, scope, id, user string, c admission.Class) error {
	if err := joinScript.Run(ctx, b.c, b.keys(scope), id, int(c), user, b.expiry()).Err(); err != nil {
		return fmt.Errorf("join the queue of %s: %w", scope, err)
	}
	if err := b.c.SAdd(ctx, b.active(), scope).Err(); err != nil {
		return fmt.Errorf("mark the queue of %s active: %w", scope, err)
	}
	return nil
}

// Leave takes waiter id out of scope's queue: served (admitted), or gone
// unserved (cancelled, timed out, refused for another reason).
func (b *Board) Leave(ctx context.Context, scope, id string, served bool) error {
	s := "0"
	if served {
		s = "1"
	}
	empty, err := leaveScript.Run(ctx, b.c, b.keys(scope), id, s).Int()
	if err != nil {
		return fmt.Errorf("leave the queue of %s: %w", scope, err)
	}
	if empty == 1 {
		return b.c.SRem(ctx, b.active(), scope).Err()
	}
	return nil
}

// Heads returns the first n waiters of scope's queue, in order, after
// taking out those whose entries expired.
func (b *Board) Heads(ctx context.Context, scope string, n int) ([]string, error) {
	ids, err := headsScript.Run(ctx, b.c, b.keys(scope), b.Now().UnixMilli(), n).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("read the queue of %s: %w", scope, err)
	}
	if len(ids) == 0 {
		if err := b.c.SRem(ctx, b.active(), scope).Err(); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// Touch renews the entries of this instance's waiters on scope.
func (b *Board) Touch(ctx context.Context, scope string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	exp := float64(b.expiry())
	zs := make([]redis.Z, len(ids))
	for i, id := range ids {
		zs[i] = redis.Z{Score: exp, Member: id}
	}
	return b.c.ZAddXX(ctx, b.keys(scope)[1], zs...).Err()
}

// Active returns the scopes that have waiters on some instance.
func (b *Board) Active(ctx context.Context) (map[string]bool, error) {
	ss, err := b.c.SMembers(ctx, b.active()).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(ss))
	for _, s := range ss {
		out[s] = true
	}
	return out, nil
}

// Position is a waiter's place in scope's queue (0: the head), or -1.
func (b *Board) Position(ctx context.Context, scope, id string) (int, error) {
	r, err := b.c.ZRank(ctx, b.keys(scope)[0], id).Result()
	if err == redis.Nil {
		return -1, nil
	}
	return int(r), err
}

// String describes the board (logs).
func (b *Board) String() string { return "redis queue board " + strconv.Quote(b.prefix) }
