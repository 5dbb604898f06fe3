package redisquota_test

import (
	"context"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// countHook counts the commands a client sends: each is one round trip.
type countHook struct{ n atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

var (
	benchAsk = quota.Ask{Requests: 1, Tokens: 1200, MinTokens: 100, GPUMillis: 250, CostMicros: 900, Concurrency: true, Model: "llama3"}
	benchUse = quota.Usage{InputTokens: 400, OutputTokens: 300, GPUMillis: 180, CostMicros: 610}
)

var benchEnv struct {
	once   sync.Once
	chains [][]quota.Scope
	be     *redisquota.Backend
	hook   *countHook
	err    error
}

// benchBackend returns a backend on a redis-server of its own with every
// user's state in place, as in a running service, and the client's command
// counter. The server and its state are made once per process (warming
// 100,000 users takes a while) and stopped by TestMain.
func benchBackend(b *testing.B) ([][]quota.Scope, *redisquota.Backend, *countHook) {
	b.Helper()
	e := &benchEnv
	e.once.Do(func() {
		dir, err := os.MkdirTemp("", "redisquota-bench-")
		if err != nil {
			e.err = err
			return
		}
		srv, err := startServer(dir)
		if err != nil {
			e.err = err
			return
		}
		extraServers = append(extraServers, srv, &server{dir: dir})
		c := redis.NewClient(&redis.Options{Addr: srv.addr, ContextTimeoutEnabled: true, PoolSize: 64})
		e.hook = &countHook{}
		c.AddHook(e.hook)
		e.be, e.err = redisquota.New(c, redisquota.Options{Timeout: time.Second})
		if e.err != nil {
			return
		}
		e.chains = quotatest.BenchChains(benchUsers)
		ctx := context.Background()
		var wg sync.WaitGroup
		var next atomic.Int64
		var mu sync.Mutex
		for range 32 {
			wg.Go(func() {
				for {
					i := next.Add(1) - 1
					if i >= int64(len(e.chains)) {
						return
					}
					tk, err := e.be.Acquire(ctx, quota.Request{Chain: e.chains[i], Ask: benchAsk})
					if err == nil {
						_, err = e.be.Settle(ctx, tk.ID, benchUse)
					}
					if err != nil {
						mu.Lock()
						e.err = err
						mu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
	})
	if e.err != nil {
		b.Fatalf("bench backend: %v", e.err)
	}
	e.hook.n.Store(0)
	return e.chains, e.be, e.hook
}

const benchUsers = 100_000

// BenchmarkAcquireSettle measures one admission and its settlement against
// a local redis-server, one at a time (one connection in use): 6-scope
// chains of 100,000 users picked at random, every dimension limited, Redis's
// clock. rt/decision counts the commands sent per Acquire or Settle.
func BenchmarkAcquireSettle(b *testing.B) {
	chains, be, h := benchBackend(b)
	ctx := context.Background()
	x := uint64(88172645463325252)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		tk, err := be.Acquire(ctx, quota.Request{Chain: chains[x%benchUsers], Ask: benchAsk})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := be.Settle(ctx, tk.ID, benchUse); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
	b.ReportMetric(float64(h.n.Load())/float64(2*b.N), "rt/decision")
}

// BenchmarkAcquireSettleParallel is the same with 32 goroutines (as many
// requests in flight as one busy instance has): Redis runs one script at a
// time, so this is the shared backend's throughput.
func BenchmarkAcquireSettleParallel(b *testing.B) {
	chains, be, h := benchBackend(b)
	ctx := context.Background()
	var seed atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(16) // × GOMAXPROCS (2) = 32 goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		x := 88172645463325252 + seed.Add(1)*0x9E3779B97F4A7C15
		for pb.Next() {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			tk, err := be.Acquire(ctx, quota.Request{Chain: chains[x%benchUsers], Ask: benchAsk})
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := be.Settle(ctx, tk.ID, benchUse); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
	b.ReportMetric(float64(h.n.Load())/float64(2*b.N), "rt/decision")
}

// BenchmarkCharge measures charges one at a time, as quota.Failover
// delivers its spool after an outage: its rate is how fast a Failover
// catches up with use counted locally.
func BenchmarkCharge(b *testing.B) {
	chains, be, h := benchBackend(b)
	ctx := context.Background()
	x := uint64(88172645463325252)
	prefix := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" // fresh ids on every run
	var n int
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		n++
		if err := be.Charge(ctx, prefix+strconv.Itoa(n), chains[x%benchUsers], benchUse, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "charges/s")
	b.ReportMetric(float64(h.n.Load())/float64(b.N), "rt/charge")
}
