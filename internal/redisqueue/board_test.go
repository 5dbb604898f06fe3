package redisqueue_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/redisqueue"
)

// startRedis starts a redis-server (from PATH) on a free loopback port,
// without persistence, for the test's life.
func startRedis(t *testing.T) *redis.Client {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server (apt-get install redis-server): %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port)})
	t.Cleanup(func() { c.Close() })
	for end := time.Now().Add(10 * time.Second); c.Ping(context.Background()).Err() != nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("redis-server did not answer")
		}
	}
	return c
}

// The board's order: classes first, then one round per user, arrival
// within a round; a waiter that leaves unserved costs its user nothing;
// an instance that stops renewing its waiters loses them.
func TestBoardOrder(t *testing.T) {
	ctx := context.Background()
	c := startRedis(t)
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	b := redisqueue.New(c, "test")
	b.Now = func() time.Time { return now }
	join := func(id, user string, cl admission.Class) {
		t.Helper()
		if err := b.Join(ctx, "tenant/t", id, user, cl); err != nil {
			t.Fatal(err)
		}
	}
	heads := func(n int) []string {
		t.Helper()
		h, err := b.Heads(ctx, "tenant/t", n)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	// Heavy queues five, light one, then a high-class waiter arrives last.
	for i := range 5 {
		join(fmt.Sprintf("a:h%d", i), "heavy", admission.ClassNormal)
	}
	join("b:l0", "light", admission.ClassNormal)
	join("c:e0", "ent", admission.ClassHigh)
	if got, want := fmt.Sprint(heads(4)), "[c:e0 a:h0 b:l0 a:h1]"; got != want {
		t.Fatalf("order %s, want %s", got, want)
	}
	act, err := b.Active(ctx)
	if err != nil || !act["tenant/t"] {
		t.Fatalf("active %v %v, want tenant/t", act, err)
	}
	// Served in that order; heavy's h1 gives up: its h2 moves up a round.
	for _, id := range []string{"c:e0", "a:h0", "b:l0"} {
		if err := b.Leave(ctx, "tenant/t", id, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Leave(ctx, "tenant/t", "a:h1", false); err != nil {
		t.Fatal(err)
	}
	// A user idle until now starts at the round being served; heavy's h2
	// is in the next round (it would be a round later had h1's wait
	// ended in debt).
	join("b:x0", "other", admission.ClassNormal)
	join("b:x1", "other", admission.ClassNormal)
	if got, want := fmt.Sprint(heads(4)), "[b:x0 a:h2 b:x1 a:h3]"; got != want {
		t.Errorf("after a wait that ended: %s, want %s (no debt for the user whose wait ended)", got, want)
	}
	// Instance a stops renewing: its waiters expire; b's renewed ones stay.
	now = now.Add(3 * time.Second)
	if err := b.Touch(ctx, "tenant/t", []string{"b:x0", "b:x1"}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(3 * time.Second)
	if got, want := fmt.Sprint(heads(5)), "[b:x0 b:x1]"; got != want {
		t.Errorf("after a's entries expired: %s, want %s", got, want)
	}
	for _, id := range []string{"b:x0", "b:x1"} {
		if err := b.Leave(ctx, "tenant/t", id, true); err != nil {
			t.Fatal(err)
		}
	}
	if act, _ := b.Active(ctx); act["tenant/t"] {
		t.Error("an empty queue is still marked active")
	}
	if n, _ := c.Exists(ctx, "{test:q:tenant/t}:z", "{test:q:tenant/t}:e", "{test:q:tenant/t}:r").Result(); n != 0 {
		t.Errorf("an empty queue left %d keys", n)
	}
}

// sharedSlots is one concurrency limit that three instances decide on, as
// the shared engine is.
type sharedSlots struct {
	mu    sync.Mutex
	held  int
	limit int
}

func (s *sharedSlots) try() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held >= s.limit {
		return "tenant/t", errFull
	}
	s.held++
	return "", nil
}

func (s *sharedSlots) release() {
	s.mu.Lock()
	s.held--
	s.mu.Unlock()
}

var errFull = fmt.Errorf("concurrency full")

// Three instances, one slot. A heavy user keeps four requests waiting on
// instance B at all times, each holding the slot a few milliseconds; a
// light user's one request waits on instance A. With the board, A's
// waiter is served within a round or two of B's; without it (each
// instance ordering its own, the control), B's releases hand the slot to
// B's waiters and A's only chance is its poll, so B's user gets many
// turns before A's (or A's wait ends).
func TestOneFairQueueAcrossInstances(t *testing.T) {
	c := startRedis(t)
	for _, withBoard := range []bool{true, false} {
		t.Run(fmt.Sprintf("board=%v", withBoard), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			slots := &sharedSlots{limit: 1}
			var qs []*admission.Queue
			for i := range 3 {
				o := admission.Options{MaxWait: 5 * time.Second, Poll: 20 * time.Millisecond, MaxQueue: 100, MaxPerFlow: 10,
					Instance: fmt.Sprintf("i%d", i)}
				if withBoard {
					o.Board = redisqueue.New(c, "fair"+strconv.FormatBool(withBoard))
				}
				q := admission.New(o)
				go q.Run(ctx)
				qs = append(qs, q)
			}
			a, b := qs[0], qs[1]
			scopes := []string{"global", "tenant/t"}
			var heavyServed atomic.Int64
			var wg sync.WaitGroup
			stop := make(chan struct{})
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						_, err := b.Do(ctx, admission.Arrival{Scopes: scopes, Flow: "heavy"}, slots.try)
						if err != nil {
							continue
						}
						heavyServed.Add(1)
						time.Sleep(3 * time.Millisecond)
						slots.release()
						b.Released(scopes)
					}
				}()
			}
			for heavyServed.Load() < 20 { // the heavy user's stream is going
				time.Sleep(time.Millisecond)
			}
			before := heavyServed.Load()
			_, err := a.Do(ctx, admission.Arrival{Scopes: scopes, Flow: "light"}, slots.try)
			ahead := heavyServed.Load() - before
			if err == nil {
				slots.release()
				a.Released(scopes)
			}
			close(stop)
			cancel()
			wg.Wait()
			t.Logf("the light user's request on A: %v after %d of the heavy user's on B", err, ahead)
			if withBoard {
				if err != nil || ahead > 6 {
					t.Errorf("with the board the light user waited behind %d of the heavy user's requests (%v), want at most 6", ahead, err)
				}
			} else if err == nil && ahead <= 6 {
				t.Errorf("control: without the board the light user got in after only %d of the heavy user's: the test cannot tell the board from none", ahead)
			}
		})
	}
}
