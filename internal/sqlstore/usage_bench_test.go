package sqlstore

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	crand "crypto/rand"

	"github.com/sluicehq/sluice/internal/usage"
)

// usageEngines are the stores the usage tests and benchmarks run on, opened
// for a test or a benchmark.
var usageEngines = []struct {
	name string
	open func(tb testing.TB) *Store
}{
	{"sqlite", openSQLiteTB},
	{"postgres", openPostgresTB},
}

func openSQLiteTB(tb testing.TB) *Store {
	tb.Helper()
	s, err := OpenSQLite(context.Background(), filepath.Join(tb.TempDir(), "s.db"))
	if err != nil {
		tb.Fatalf("OpenSQLite = %v, want nil", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// openPostgresTB opens a migrated store in a database of its own, dropped
// at cleanup.
func openPostgresTB(tb testing.TB) *Store {
	tb.Helper()
	server := os.Getenv("SLUICE_TEST_POSTGRES_URL")
	if server == "" {
		tb.Fatal("SLUICE_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts a throwaway PostgreSQL server and sets it")
	}
	admin, err := sql.Open("pgx", server)
	if err != nil {
		tb.Fatalf("open %s: %v", Redact(server), err)
	}
	defer admin.Close()
	var b [8]byte
	_, _ = crand.Read(b[:])
	name := "sluice_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		tb.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	tb.Cleanup(func() {
		admin, err := sql.Open("pgx", server)
		if err != nil {
			tb.Errorf("open %s: %v", Redact(server), err)
			return
		}
		defer admin.Close()
		if _, err := admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			tb.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	u, err := url.Parse(server)
	if err != nil {
		tb.Fatalf("SLUICE_TEST_POSTGRES_URL: %v", err)
	}
	u.Path = "/" + name
	s, err := OpenPostgres(context.Background(), u.String())
	if err != nil {
		tb.Fatalf("OpenPostgres = %v, want nil", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// shanghai is a zone east of UTC, so that day roll-ups differ from UTC's.
var shanghai = func() *time.Location {
	loc, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		panic(err)
	}
	return loc
}()

// realEvent is shaped like a settle's event: a few tenants (half in
// Asia/Shanghai), 1,000 users in 100 projects, the six-scope chain global,
// tenant, department, project, user, membership.
func realEvent(id string, n int, at time.Time) usage.Event {
	u := n % 1000
	p := u % 100
	d := p % 20
	t := d % 4
	loc := time.UTC
	if t%2 == 1 {
		loc = shanghai
	}
	return usage.Event{
		ID: id, At: at, TenantID: fmt.Sprintf("ten_%d", t), UserID: fmt.Sprintf("usr_%d", u), ProjectID: fmt.Sprintf("prj_%d", p),
		Kind: "metering", Model: "gpt-4o-mini", Requests: 1, InputTokens: int64(100 + n%900), OutputTokens: int64(20 + n%300),
		GPUMillis: int64(n % 50), CostMicros: int64(300 + n%1000),
		Scopes: []string{"global", fmt.Sprintf("t/ten_%d", t), fmt.Sprintf("d/dep_%d", d), fmt.Sprintf("p/prj_%d", p),
			fmt.Sprintf("u/usr_%d", u), fmt.Sprintf("m/usr_%d@prj_%d", u, p)},
		Loc: loc,
	}
}

// BenchmarkDurableCommit measures acknowledged-durable usage writes: 64
// goroutines each call Recorder.Commit in a loop, as 64 clients settling
// would, and every Commit returns only once its event is committed. It
// reports commits per second and the mean and 99th-percentile latency of
// one Commit.
func BenchmarkDurableCommit(b *testing.B) {
	for _, e := range usageEngines {
		b.Run(e.name, func(b *testing.B) {
			s := &countingStore{Store: e.open(b)}
			rec := usage.NewRecorder(s, slog.New(slog.DiscardHandler), time.Hour)
			b.Cleanup(func() { _ = rec.Close() })
			const clients = 64
			b.SetParallelism(max(1, clients/runtimeProcs()))
			var next atomic.Int64
			var mu sync.Mutex
			var lat []time.Duration
			at := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					n := int(next.Add(1))
					ev := realEvent(fmt.Sprintf("tkt_%d_%d", n, rand.Int64()), n, at)
					start := time.Now()
					if err := rec.Commit(context.Background(), ev); err != nil {
						b.Errorf("Commit = %v", err)
						return
					}
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
			if n := s.calls.Load(); n > 0 {
				b.ReportMetric(float64(s.events.Load())/float64(n), "events/tx")
			}
			if len(lat) > 0 {
				slices.Sort(lat)
				var sum time.Duration
				for _, d := range lat {
					sum += d
				}
				b.ReportMetric(float64(sum.Microseconds())/float64(len(lat)), "µs-mean")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "µs-p99")
			}
		})
	}
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

// countingStore counts the transactions of a store and their events.
type countingStore struct {
	*Store
	calls, events atomic.Int64
}

func (c *countingStore) RecordUsage(ctx context.Context, events []usage.Event) (int, error) {
	c.calls.Add(1)
	c.events.Add(int64(len(events)))
	return c.Store.RecordUsage(ctx, events)
}

// BenchmarkRecordUsage measures one transaction of 64 events, the chunk a
// recorder with 64 committers writes: the store's share of a commit.
func BenchmarkRecordUsage(b *testing.B) {
	for _, e := range usageEngines {
		b.Run(e.name, func(b *testing.B) {
			s := e.open(b)
			ctx := context.Background()
			at := time.Now()
			events := make([]usage.Event, 64)
			n := 0
			for b.Loop() {
				for i := range events {
					n++
					events[i] = realEvent(fmt.Sprintf("tkt_%d", n), n, at)
				}
				if _, err := s.RecordUsage(ctx, events); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
