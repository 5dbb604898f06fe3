package redisquota_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// newBackend returns a backend on c with a fresh prefix, and that prefix.
func newBackend(t testing.TB, c redis.Scripter, o redisquota.Options) (*redisquota.Backend, string) {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = "t" + strconv.FormatInt(prefixSeq.Add(1), 10)
	}
	b, err := redisquota.New(c, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b, o.Prefix
}

// workload exercises every script: admissions with every dimension,
// denials, settles (one across a window), replays, heartbeats, expiry,
// restores, charges and uses, on chains in two time zones.
func workload(t *testing.T, b *redisquota.Backend, clk *fakeClock) {
	t.Helper()
	ctx := context.Background()
	shanghai, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	lim := &quota.Limits{
		Requests: quota.Rate{Limit: 100, Period: time.Minute}, TokensRate: quota.Rate{Limit: 100_000, Period: time.Minute},
		TokensDay: quota.AtMost(50_000), TokensMonth: quota.AtMost(1_000_000), GPUMillisMonth: quota.AtMost(100_000),
		CostMicrosMonth: quota.AtMost(100_000), Concurrency: quota.AtMost(5),
	}
	var ids []string
	for i := range 40 {
		chain := []quota.Scope{
			{Key: "global", Limits: lim},
			{Key: "t/" + strconv.Itoa(i%3), Limits: lim, Loc: shanghai},
			{Key: "u/" + strconv.Itoa(i%7), Limits: lim, Loc: shanghai},
		}
		r := quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1, Tokens: 500, GPUMillis: 10, CostMicros: 5, Concurrency: i%2 == 0}, TTL: time.Minute}
		tk, err := b.Acquire(ctx, r)
		var d *quota.Denial
		switch {
		case errors.As(err, &d):
			continue
		case err != nil:
			t.Fatalf("Acquire: %v", err)
		}
		ids = append(ids, tk.ID)
		clk.advance(time.Second)
	}
	if err := b.Restore(ctx, "t/restored", quota.DimTokens, quota.WindowDay, clk.Now().Truncate(time.Hour), 10); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	charged := []quota.Scope{{Key: "global"}, {Key: "t/0", Loc: shanghai}, {Key: "t/charged", Loc: shanghai}}
	for range 2 {
		if err := b.Charge(ctx, "local:1", charged, quota.Usage{InputTokens: 10, GPUMillis: 1}, clk.Now()); err != nil {
			t.Fatalf("Charge: %v", err)
		}
	}
	for i, id := range ids {
		switch i % 4 {
		case 0, 1:
			if _, err := b.Settle(ctx, id, quota.Usage{InputTokens: 100}); err != nil {
				t.Fatalf("Settle: %v", err)
			}
			if _, err := b.Settle(ctx, id, quota.Usage{}); err != nil {
				t.Fatalf("Settle replay: %v", err)
			}
		case 2:
			if _, err := b.Heartbeat(ctx, id, 10*time.Minute); err != nil {
				t.Fatalf("Heartbeat: %v", err)
			}
		}
	}
	clk.advance(3 * time.Minute) // the rest expire; the heartbeated live on
	for _, k := range []string{"global", "t/0", "u/0", "t/restored", "t/charged", "never"} {
		if _, err := b.Use(ctx, k); err != nil {
			t.Fatalf("Use: %v", err)
		}
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 3, 31, 15, 0, 0, 0, time.UTC)} }

// keysOf returns every key under prefix.
func keysOf(t *testing.T, c redis.UniversalClient, prefix string) []string {
	t.Helper()
	var keys []string
	iter := c.Scan(context.Background(), 0, "{"+prefix+"}:*", 1000).Iterator()
	for iter.Next(context.Background()) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN: %v", err)
	}
	return keys
}

// TestNoScriptFallback: with the script cache flushed before every call,
// EVALSHA fails with NOSCRIPT and EVAL runs the script; decisions stay
// right.
func TestNoScriptFallback(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	h := &cmdNames{}
	c.AddHook(h)
	// EVAL compiles the script: on a loaded machine that can take longer
	// than the default timeout, and this test is about semantics.
	b, _ := newBackend(t, c, redisquota.Options{Timeout: 10 * time.Second})
	ctx := context.Background()
	scriptFlush := func() {
		t.Helper()
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
	}
	chain := []quota.Scope{{Key: "t/a", Limits: &quota.Limits{Concurrency: quota.AtMost(2), TokensDay: quota.AtMost(10_000)}}}
	r := quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 400, Concurrency: true}}
	var tickets []quota.Ticket
	for range 2 {
		scriptFlush()
		tk, err := b.Acquire(ctx, r)
		if err != nil {
			t.Fatalf("Acquire after SCRIPT FLUSH: got %v, want admission", err)
		}
		tickets = append(tickets, tk)
	}
	scriptFlush()
	if _, err := b.Acquire(ctx, r); !errors.Is(err, quota.ErrRateLimited) {
		t.Fatalf("third Acquire: got %v, want a concurrency denial", err)
	}
	scriptFlush()
	if _, err := b.Settle(ctx, tickets[0].ID, quota.Usage{InputTokens: 100}); err != nil {
		t.Fatalf("Settle after SCRIPT FLUSH: %v", err)
	}
	scriptFlush()
	if _, err := b.Heartbeat(ctx, tickets[1].ID, time.Minute); err != nil {
		t.Fatalf("Heartbeat after SCRIPT FLUSH: %v", err)
	}
	scriptFlush()
	u, err := b.Use(ctx, "t/a")
	if err != nil {
		t.Fatalf("Use after SCRIPT FLUSH: %v", err)
	}
	if u.TokensDay.Used != 500 || u.Concurrency != 1 {
		t.Errorf("Use: got tokens %d concurrency %d, want 500 1", u.TokensDay.Used, u.Concurrency)
	}
	scriptFlush()
	if err := b.Restore(ctx, "t/a", quota.DimTokens, quota.WindowDay, u.TokensDay.Start, 900); err != nil {
		t.Fatalf("Restore after SCRIPT FLUSH: %v", err)
	}
	if err := b.Restore(ctx, "t/a", quota.DimTokens, quota.WindowDay, u.TokensDay.Start, 9900); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 101}}); !errors.Is(err, quota.ErrQuotaExceeded) {
		t.Fatalf("Acquire over the restored budget: got %v, want quota_exceeded", err)
	}
	// Every call found its script flushed (EVALSHA, NOSCRIPT, EVAL) but
	// the second Restore, which ran right after the first.
	if got := h.count("evalsha"); got != 9 {
		t.Errorf("EVALSHA calls: got %d, want 9", got)
	}
	if got := h.count("eval"); got != 8 {
		t.Errorf("EVAL calls: got %d, want 8", got)
	}
	// With the scripts cached again, one EVALSHA per call and no EVAL.
	if _, err := b.Use(ctx, "t/a"); err != nil {
		t.Fatal(err)
	}
	h.reset()
	for range 3 {
		if _, err := b.Use(ctx, "t/a"); err != nil {
			t.Fatal(err)
		}
	}
	if h.count("evalsha") != 3 || h.count("eval") != 0 {
		t.Errorf("cached: got %d EVALSHA %d EVAL, want 3 0", h.count("evalsha"), h.count("eval"))
	}
}

// cmdNames counts commands by name.
type cmdNames struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *cmdNames) count(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[name]
}

func (h *cmdNames) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n = nil
}

func (h *cmdNames) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *cmdNames) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		if h.n == nil {
			h.n = make(map[string]int)
		}
		h.n[cmd.Name()]++
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (h *cmdNames) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestKeysHaveTTLs: after a workload that uses every script, every key
// the backend wrote expires.
func TestKeysHaveTTLs(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	clk := newClock()
	b, prefix := newBackend(t, c, redisquota.Options{Clock: clk.Now})
	workload(t, b, clk)
	keys := keysOf(t, c, prefix)
	if len(keys) < 20 {
		t.Fatalf("keys after the workload: got %d, want at least 20", len(keys))
	}
	kinds := map[string]int{}
	for _, k := range keys {
		ttl, err := c.PTTL(context.Background(), k).Result()
		if err != nil {
			t.Fatalf("PTTL %s: %v", k, err)
		}
		if ttl <= 0 {
			t.Errorf("key %s: got TTL %v, want > 0", k, ttl)
		}
		kinds[strings.SplitN(k, ":", 3)[1]]++
	}
	for _, kind := range []string{"s", "l", "r", "t", "c"} {
		if kinds[kind] == 0 {
			t.Errorf("no %s: keys after the workload (%v): the test no longer covers them", kind, kinds)
		}
	}
}

// keySlot is Redis Cluster's HASH_SLOT: CRC16 (XMODEM) of the hash tag, or
// of the key if it has none, mod 16384.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

func TestKeySlot(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	for _, tt := range []struct {
		key  string
		want int
	}{{"foo", 12182}, {"somekey", 11058}, {"{user1000}.following", keySlot("user1000")}, {"foo{}{bar}", keySlot("foo{}{bar}")}} {
		if got := keySlot(tt.key); got != tt.want {
			t.Errorf("keySlot(%q): got %d, want %d", tt.key, got, tt.want)
		}
	}
}

// TestOneSlot: every key of a deployment, so every key of any request and
// of the tickets it releases, is in the slot of {prefix}.
func TestOneSlot(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	clk := newClock()
	b, prefix := newBackend(t, c, redisquota.Options{Clock: clk.Now})
	workload(t, b, clk)
	want := keySlot(prefix)
	for _, k := range keysOf(t, c, prefix) {
		if got := keySlot(k); got != want {
			t.Errorf("key %s: got slot %d, want %d", k, got, want)
		}
	}
}

// TestCluster runs the workload through a ClusterClient against a
// cluster-mode redis-server that serves every slot: Redis refuses a
// script's access to a key outside its declared keys' slot, and CLUSTER
// KEYSLOT confirms the slot of every key.
func TestCluster(t *testing.T) {
	srv := dedicatedServer(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	ctx := context.Background()
	node := newClient(t, srv.addr)
	if err := node.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatalf("CLUSTER ADDSLOTSRANGE: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := node.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster did not reach state ok: %v %s", err, info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.addr}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	clk := newClock()
	b, prefix := newBackend(t, c, redisquota.Options{Clock: clk.Now, Timeout: 5 * time.Second})
	workload(t, b, clk)
	want, err := node.ClusterKeySlot(ctx, "{"+prefix+"}").Result()
	if err != nil {
		t.Fatalf("CLUSTER KEYSLOT: %v", err)
	}
	if want != int64(keySlot(prefix)) {
		t.Errorf("CLUSTER KEYSLOT {%s}: got %d, computed %d", prefix, want, keySlot(prefix))
	}
	keys := keysOf(t, c, prefix)
	if len(keys) == 0 {
		t.Fatal("no keys after the workload")
	}
	for _, k := range keys {
		if got, err := node.ClusterKeySlot(ctx, k).Result(); err != nil || got != want {
			t.Errorf("CLUSTER KEYSLOT %s: got %d, %v, want %d", k, got, err, want)
		}
	}
}

// TestTwoInstances: two backends on two clients (two Sluice instances) on
// one Redis share every limit exactly.
func TestTwoInstances(t *testing.T) {
	srv := sharedServer(t)
	c1, c2 := newClient(t, srv.addr), newClient(t, srv.addr)
	b1, prefix := newBackend(t, c1, redisquota.Options{Timeout: 10 * time.Second})
	b2, _ := newBackend(t, c2, redisquota.Options{Prefix: prefix, Timeout: 10 * time.Second})
	backends := []*redisquota.Backend{b1, b2}
	ctx := context.Background()

	t.Run("concurrency", func(t *testing.T) {
		const n, k = 200, 17
		chain := []quota.Scope{{Key: "global"}, {Key: "t/conc", Limits: &quota.Limits{Concurrency: quota.AtMost(k)}}}
		var (
			wg       sync.WaitGroup
			admitted atomic.Int64
			mu       sync.Mutex
			tickets  []string
		)
		for i := range n {
			wg.Go(func() {
				tk, err := backends[i%2].Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Concurrency: true}})
				switch {
				case err == nil:
					admitted.Add(1)
					mu.Lock()
					tickets = append(tickets, tk.ID)
					mu.Unlock()
				case errors.Is(err, quota.ErrRateLimited):
				default:
					t.Errorf("Acquire: got %v, want admission or concurrency denial", err)
				}
			})
		}
		wg.Wait()
		if got := admitted.Load(); got != k {
			t.Fatalf("admitted: got %d, want %d", got, k)
		}
		// Either instance settles the other's tickets.
		for i, id := range tickets {
			if _, err := backends[(i+1)%2].Settle(ctx, id, quota.Usage{}); err != nil {
				t.Errorf("Settle(%s) on the other instance: %v", id, err)
			}
		}
		if u, err := b1.Use(ctx, "t/conc"); err != nil || u.Concurrency != 0 {
			t.Errorf("Use after settling: got %d, %v, want 0", u.Concurrency, err)
		}
	})

	t.Run("token budget", func(t *testing.T) {
		const budget = 100_000
		chain := []quota.Scope{{Key: "global"}, {Key: "t/tok", Limits: &quota.Limits{TokensDay: quota.AtMost(budget)}}}
		var (
			wg      sync.WaitGroup
			granted atomic.Int64
			charged atomic.Int64
		)
		for g := range 200 {
			wg.Go(func() {
				rnd := rand.New(rand.NewPCG(uint64(g), 9))
				b := backends[g%2]
				for {
					ask := quota.Ask{Tokens: 1 + rnd.Int64N(2000)}
					if rnd.IntN(2) == 0 {
						ask.MinTokens = 1 + rnd.Int64N(ask.Tokens)
					}
					tk, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: ask})
					if errors.Is(err, quota.ErrQuotaExceeded) {
						if ask.MinTokens > 0 && ask.MinTokens <= 1 {
							return
						}
						if ask.Tokens <= 1 {
							return
						}
						continue
					}
					if err != nil {
						t.Errorf("Acquire: %v", err)
						return
					}
					granted.Add(tk.Tokens)
					// Settle on the other instance, sometimes using less.
					use := tk.Tokens - rnd.Int64N(tk.Tokens/4+1)
					if _, err := backends[(g+1)%2].Settle(ctx, tk.ID, quota.Usage{OutputTokens: use}); err != nil {
						t.Errorf("Settle: %v", err)
						return
					}
					charged.Add(use)
				}
			})
		}
		wg.Wait()
		u, err := b2.Use(ctx, "t/tok")
		if err != nil {
			t.Fatal(err)
		}
		if u.TokensDay.Used != charged.Load() {
			t.Errorf("tokens used: got %d, want the %d settled", u.TokensDay.Used, charged.Load())
		}
		if u.TokensDay.Used > budget || u.TokensDay.Used < budget-2000 {
			t.Errorf("tokens used: got %d, want at most the budget %d and within an ask of it", u.TokensDay.Used, budget)
		}
		t.Logf("granted %d, charged %d of %d", granted.Load(), charged.Load(), budget)
	})
}

// TestRedisDown: with Redis gone every call fails fast with ErrUnavailable
// (never an admission), and works again once Redis is back.
func TestRedisDown(t *testing.T) {
	srv := dedicatedServer(t)
	c := newClient(t, srv.addr)
	b, _ := newBackend(t, c, redisquota.Options{Timeout: loadedTimeout}) // Redis gone refuses at once: no timeout is waited for
	ctx := context.Background()
	chain := []quota.Scope{{Key: "t/a", Limits: &quota.Limits{Concurrency: quota.AtMost(1)}}}
	r := quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1, Concurrency: true}}
	tk, err := b.Acquire(ctx, r)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}

	srv.kill()
	calls := []struct {
		name string
		fn   func() error
	}{
		{"Acquire", func() error { _, err := b.Acquire(ctx, r); return err }},
		{"Settle", func() error { _, err := b.Settle(ctx, tk.ID, quota.Usage{}); return err }},
		{"Heartbeat", func() error { _, err := b.Heartbeat(ctx, tk.ID, 0); return err }},
		{"Use", func() error { _, err := b.Use(ctx, "t/a"); return err }},
		{"Restore", func() error {
			return b.Restore(ctx, "t/a", quota.DimTokens, quota.WindowDay, time.Now().Truncate(24*time.Hour), 1)
		}},
		{"Charge", func() error { return b.Charge(ctx, "c", chain, quota.Usage{InputTokens: 1}, time.Now()) }},
	}
	var slowest time.Duration
	for round := range 3 {
		for _, call := range calls {
			start := time.Now()
			err := call.fn()
			took := time.Since(start)
			slowest = max(slowest, took)
			if !errors.Is(err, redisquota.ErrUnavailable) || !errors.Is(err, quota.ErrUnavailable) {
				t.Fatalf("round %d %s with Redis down: got %v, want ErrUnavailable (both packages')", round, call.name, err)
			}
			// Each call takes about the 100 ms timeout (the slowest is
			// logged); the bound only catches a hang, with room for a
			// loaded machine under -race.
			if took > 10*time.Second {
				t.Errorf("round %d %s with Redis down: took %v, want a failure at about the 100 ms timeout, not a hang", round, call.name, took)
			}
		}
	}
	t.Logf("slowest failing call with Redis down: %v", slowest)

	if err := srv.restart(); err != nil {
		t.Fatalf("restart redis-server: %v", err)
	}
	// The pool redials in the background about once a second.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.Acquire(ctx, r)
		if err == nil {
			break
		}
		if !errors.Is(err, redisquota.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Acquire after restart: got %v, want admission", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The restarted Redis is empty (no persistence): one slot was taken.
	if _, err := b.Acquire(ctx, r); !errors.Is(err, quota.ErrRateLimited) {
		t.Errorf("second Acquire after restart: got %v, want a concurrency denial", err)
	}
}

// TestHangingRedis: a Redis that accepts connections but never answers
// (SIGSTOP) is a timeout, not a hang.
func TestHangingRedis(t *testing.T) {
	srv := dedicatedServer(t)
	c := newClient(t, srv.addr)
	b, _ := newBackend(t, c, redisquota.Options{})
	ctx := context.Background()
	if _, err := b.Use(ctx, "x"); err != nil {
		t.Fatalf("Use: %v", err)
	}
	srv.stop()
	defer srv.cont()
	start := time.Now()
	_, err := b.Acquire(ctx, quota.Request{Chain: []quota.Scope{{Key: "x"}}, Ask: quota.Ask{Requests: 1}})
	if !errors.Is(err, redisquota.ErrUnavailable) {
		t.Fatalf("Acquire against a stopped Redis: got %v, want ErrUnavailable", err)
	}
	// About the 100 ms timeout; the bound only catches a hang.
	took := time.Since(start)
	if took > 10*time.Second {
		t.Errorf("Acquire against a stopped Redis: took %v, want a failure at about the 100 ms timeout, not a hang", took)
	}
	t.Logf("Acquire against a stopped Redis failed after %v", took)
}

// TestRedisClock: without Options.Clock the scripts use Redis's TIME.
func TestRedisClock(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	b, _ := newBackend(t, c, redisquota.Options{})
	ctx := context.Background()
	local, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	chain := []quota.Scope{{Key: "t/a", Loc: local, Limits: &quota.Limits{TokensDay: quota.AtMost(100), Requests: quota.Rate{Limit: 1, Period: time.Hour}}}}
	before := time.Now()
	tk, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1, Tokens: 60}, TTL: time.Minute})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	after := time.Now()
	if tk.ExpiresAt.Before(before.Add(time.Minute-time.Second)) || tk.ExpiresAt.After(after.Add(time.Minute+time.Second)) {
		t.Errorf("ExpiresAt: got %v, want a minute after %v", tk.ExpiresAt, before)
	}
	d, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Requests: 1}})
	var den *quota.Denial
	if !errors.As(err, &den) || den.Dimension != quota.DimRequests || den.RetryAfter <= 59*time.Minute {
		t.Fatalf("second request: got %v %v, want a requests denial with about an hour to wait", d, err)
	}
	u, err := b.Use(ctx, "t/a")
	if err != nil {
		t.Fatal(err)
	}
	y, m, dd := time.Now().In(local).Date()
	if want := time.Date(y, m, dd, 0, 0, 0, 0, local); !u.TokensDay.Start.Equal(want) && !u.TokensDay.Start.Equal(want.AddDate(0, 0, -1)) {
		t.Errorf("day window start: got %v, want %v", u.TokensDay.Start, want)
	}
	if u.TokensDay.Used != 60 || u.Requests.Level != 1 {
		t.Errorf("Use: got tokens %d requests %d, want 60 1", u.TokensDay.Used, u.Requests.Level)
	}
}

// TestPrecisionBounds: rates and amounts beyond what the scripts handle
// exactly fail closed, and a rate with an odd period is exact.
func TestPrecisionBounds(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	clk := newClock()
	b, _ := newBackend(t, c, redisquota.Options{Clock: clk.Now})
	ctx := context.Background()

	// 1 per 60 days: the period is beyond 2^52 ns, so the rate refuses.
	slow := quota.Rate{Limit: 1, Period: 60 * 24 * time.Hour}
	_, err := b.Acquire(ctx, quota.Request{Chain: []quota.Scope{{Key: "a", Limits: &quota.Limits{Requests: slow}}}, Ask: quota.Ask{Requests: 1}})
	var d *quota.Denial
	if !errors.As(err, &d) || d.Dimension != quota.DimRequests || d.Limit != 1 || d.Period != slow.Period || d.RetryAfter != 0 {
		t.Errorf("rate beyond 2^52 ns: got %v, want a requests denial that waiting cannot help", err)
	}
	if _, err := b.Acquire(ctx, quota.Request{Chain: []quota.Scope{{Key: "a"}}, Ask: quota.Ask{Tokens: 1 << 53}}); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("ask of 2^53 tokens: got %v, want ErrInvalid", err)
	}

	// 1,234,567 tokens per 7 s + 3 ns: coprime, so every charge carries a
	// remainder; a drained bucket admits the burst exactly once more.
	odd := &quota.Limits{TokensRate: quota.Rate{Limit: 1_234_567, Period: 7*time.Second + 3}}
	chain := []quota.Scope{{Key: "odd", Limits: odd}}
	for range 7 {
		if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 176_366}}); err != nil {
			t.Fatalf("Acquire: %v", err)
		}
	}
	// 7 × 176,366 = 1,234,562: 5 tokens left.
	_, err = b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 6}})
	if !errors.As(err, &d) || d.Used != 1_234_562 {
		t.Fatalf("6 more tokens: got %v, want a denial at 1,234,562 used", err)
	}
	// The bucket is one token over: (7e9+3)/1,234,567 ns = 5,670.004 ns,
	// rounded up to whole ns.
	if d.RetryAfter != 5671 {
		t.Fatalf("RetryAfter: got %v, want 5.671µs", d.RetryAfter)
	}
	clk.advance(d.RetryAfter - 1)
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 6}}); !errors.Is(err, quota.ErrRateLimited) {
		t.Fatalf("1 ns before RetryAfter: got %v, want a denial", err)
	}
	clk.advance(1)
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 6}}); err != nil {
		t.Fatalf("at RetryAfter: got %v, want admission", err)
	}
}

// TestWindowEndedUnseen: Settle and Restore on a scope whose day ended
// while no chain named it need that zone's current windows: one more round
// trip, and the right result.
func TestWindowEndedUnseen(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	h := &cmdNames{} // EVALSHA: one per script run
	c.AddHook(h)
	shanghai, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{now: time.Date(2026, 1, 15, 23, 59, 0, 0, shanghai)}
	b, _ := newBackend(t, c, redisquota.Options{Clock: clk.Now})
	ctx := context.Background()
	chain := []quota.Scope{{Key: "t/sh", Loc: shanghai, Limits: &quota.Limits{TokensDay: quota.AtMost(5000)}}}
	tk, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Minute) // 00:01 on the 16th in Shanghai
	h.reset()
	if _, err := b.Settle(ctx, tk.ID, quota.Usage{InputTokens: 300}); err != nil {
		t.Fatalf("Settle: %v", err)
	}
	if got := h.count("evalsha"); got != 2 {
		t.Errorf("Settle round trips: got %d, want 2", got)
	}
	u, err := b.Use(ctx, "t/sh")
	if err != nil {
		t.Fatal(err)
	}
	today := time.Date(2026, 1, 16, 0, 0, 0, 0, shanghai)
	if u.TokensDay.Used != 300 || !u.TokensDay.Start.Equal(today) || u.TokensMonth.Used != 300 {
		t.Errorf("Use after Settle: got day %d from %v, month %d, want 300 from %v, 300", u.TokensDay.Used, u.TokensDay.Start, u.TokensMonth.Used, today)
	}

	// A day later, still unseen: Restore rolls the scope first.
	clk.advance(24 * time.Hour)
	h.reset()
	if err := b.Restore(ctx, "t/sh", quota.DimTokens, quota.WindowDay, today.AddDate(0, 0, 1), 4000); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := h.count("evalsha"); got != 2 {
		t.Errorf("Restore round trips: got %d, want 2", got)
	}
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1001}}); !errors.Is(err, quota.ErrQuotaExceeded) {
		t.Errorf("Acquire over the restored day: got %v, want quota_exceeded", err)
	}
	if _, err := b.Acquire(ctx, quota.Request{Chain: chain, Ask: quota.Ask{Tokens: 1000}}); err != nil {
		t.Errorf("Acquire within the restored day: got %v, want admission", err)
	}
}

func TestNewAndClose(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	noTimeouts := redis.NewClient(&redis.Options{Addr: srv.addr})
	t.Cleanup(func() { noTimeouts.Close() })
	for _, tt := range []struct {
		name string
		c    redis.Scripter
		o    redisquota.Options
	}{
		{"brace in prefix", c, redisquota.Options{Prefix: "a{b"}},
		{"max ttl", c, redisquota.Options{MaxTTL: 31 * 24 * time.Hour}},
		{"client without context timeouts", noTimeouts, redisquota.Options{}},
	} {
		if _, err := redisquota.New(tt.c, tt.o); !errors.Is(err, quota.ErrInvalid) {
			t.Errorf("New with %s: got %v, want ErrInvalid", tt.name, err)
		}
	}
	b, _ := newBackend(t, c, redisquota.Options{})
	ctx := context.Background()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if _, err := b.Acquire(ctx, quota.Request{Chain: []quota.Scope{{Key: "a"}}, Ask: quota.Ask{Requests: 1}}); !errors.Is(err, quota.ErrClosed) {
		t.Errorf("Acquire after Close: got %v, want ErrClosed", err)
	}
	if _, err := b.Use(ctx, "a"); !errors.Is(err, quota.ErrClosed) {
		t.Errorf("Use after Close: got %v, want ErrClosed", err)
	}
}

// loadedTimeout is the Redis timeout of tests that do not test timeouts:
// the default 100 ms is a production figure, which a race-detector build
// on a saturated 2-core machine overran (an acquire that timed out after
// Redis applied it, then retried, met its own slot).
const loadedTimeout = 2 * time.Second
