package redisquota_test

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
	"github.com/sluicehq/sluice/internal/redisquota"
)

var prefixSeq atomic.Int64

// TestSuite runs the backend-independent suite against Redis, each backend
// on a fresh key prefix (a namespace of its own) with the suite's clock.
func TestSuite(t *testing.T) {
	if testing.Short() {
		t.Log("short mode: quotatest's property test runs 600 steps per seed; REDISQUOTA_FULL=1 runs 3,000")
	}
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	flush(t, c)
	quotatest.Run(t, func(t *testing.T) (quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		b, err := redisquota.New(c, redisquota.Options{
			Prefix: "suite" + strconv.FormatInt(prefixSeq.Add(1), 10),
			Clock:  clk.Now,
			// The suite tests semantics, not latency: 1000 goroutines
			// at once queue for the pool longer than 100 ms.
			Timeout: 10 * time.Second,
		})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return b, clk
	})
}

// TestSuiteShared runs the shared-store suite on two backends (two
// instances) on one Redis and one prefix.
func TestSuiteShared(t *testing.T) {
	srv := sharedServer(t)
	c := newClient(t, srv.addr)
	quotatest.RunShared(t, func(t *testing.T) (quota.Backend, quota.Backend, *quotatest.Clock) {
		clk := quotatest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		prefix := "shared" + strconv.FormatInt(prefixSeq.Add(1), 10)
		var bs [2]quota.Backend
		for i := range bs {
			b, err := redisquota.New(c, redisquota.Options{Prefix: prefix, Clock: clk.Now, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			bs[i] = b
		}
		return bs[0], bs[1], clk
	})
}
