package admission

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var errFull = errors.New("concurrency full")

// slots is a concurrency limit, as the quota engine keeps one.
type slots struct {
	mu         sync.Mutex
	held, peak int
	limit      int
	tries      atomic.Int64
}

func (s *slots) try(scope string) Try {
	return func() (string, error) {
		s.tries.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.held >= s.limit {
			return scope, errFull
		}
		s.held++
		s.peak = max(s.peak, s.held)
		return "", nil
	}
}

func (s *slots) release() {
	s.mu.Lock()
	s.held--
	s.mu.Unlock()
}

// eventually waits (real time, generous) for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// 48 callers share 3 slots through the queue: everyone is admitted in
// the end, the limit is never exceeded, and nobody is left queued.
func TestQueueManyCallersFewSlots(t *testing.T) {
	q := New(Options{MaxQueue: 100, MaxPerFlow: 100, MaxWait: time.Minute, Poll: 5 * time.Millisecond})
	s := &slots{limit: 3}
	var wg sync.WaitGroup
	var admitted, queued atomic.Int64
	for i := range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := Arrival{Scopes: []string{"global", "t/x"}, Flow: string(rune('a' + i%6)), Class: ClassNormal}
			wd, err := q.Do(context.Background(), a, s.try("t/x"))
			if err != nil {
				t.Errorf("Do = %v, want admitted", err)
				return
			}
			admitted.Add(1)
			if wd.Queued {
				queued.Add(1)
			}
			time.Sleep(time.Millisecond)
			s.release()
			q.Released(a.Scopes)
		}()
	}
	wg.Wait()
	if admitted.Load() != 48 {
		t.Errorf("%d of 48 admitted", admitted.Load())
	}
	if s.peak > 3 {
		t.Errorf("%d slots held at once, the limit is 3", s.peak)
	}
	if n := q.Len(); n != 0 {
		t.Errorf("%d still queued after everyone finished", n)
	}
	if queued.Load() == 0 {
		t.Errorf("nobody queued: the test did not contend")
	}
	t.Logf("48 admitted, %d after queueing, %d tries", queued.Load(), s.tries.Load())
}

// A cancelled caller leaves the queue at once.
func TestQueueCancelLeavesAtOnce(t *testing.T) {
	q := New(Options{MaxWait: time.Hour, Poll: time.Hour})
	s := &slots{limit: 0}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := q.Do(ctx, Arrival{Scopes: []string{"p/x"}, Flow: "u"}, s.try("p/x"))
		done <- err
	}()
	eventually(t, "the caller queued", func() bool { return q.Len() == 1 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Do = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled caller was still waiting")
	}
	if n := q.Len(); n != 0 {
		t.Errorf("%d queued after the only caller left", n)
	}
}

// fakeClock drives the queue's timers by hand.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Timer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.timers = append(c.timers, fakeTimer{c.now.Add(d), ch})
	return ch, func() bool { return true }
}

func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.c <- c.now
			continue
		}
		kept = append(kept, t)
	}
	c.timers = kept
}

// A wait ends at MaxWait with the engine's refusal, marked as a timeout;
// in between the head tries again every Poll (slots freed on another
// instance are seen that way).
func TestQueueTimeout(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	q := New(Options{MaxWait: 2 * time.Second, Poll: 500 * time.Millisecond, Now: clk.Now, Timer: clk.Timer})
	s := &slots{limit: 0}
	done := make(chan error, 1)
	var wd Waited
	go func() {
		var err error
		wd, err = q.Do(context.Background(), Arrival{Scopes: []string{"p/x"}, Flow: "u"}, s.try("p/x"))
		done <- err
	}()
	for i := 0; ; i++ {
		select {
		case err := <-done:
			var qe *Error
			if !errors.As(err, &qe) || !errors.Is(err, ErrTimeout) || !errors.Is(err, errFull) {
				t.Fatalf("Do = %v, want a timeout wrapping the refusal", err)
			}
			if wd.Wait != 2*time.Second || !wd.Queued {
				t.Errorf("waited %s (queued %v), want 2s", wd.Wait, wd.Queued)
			}
			// One try on arrival, one at each poll up to the deadline
			// (0.5, 1, 1.5 and 2 s).
			if got := s.tries.Load(); got != 5 {
				t.Errorf("%d tries, want 5", got)
			}
			if q.Len() != 0 {
				t.Errorf("%d still queued", q.Len())
			}
			return
		default:
		}
		if i > 100 {
			t.Fatal("no timeout after 50 s of fake time")
		}
		eventually(t, "a timer set", func() bool { return clk.pending() > 0 || len(done) > 0 })
		clk.Advance(500 * time.Millisecond)
	}
}

// A full queue refuses at once, with the engine's refusal; the per-flow
// bound refuses a flow while another may still queue.
func TestQueueFull(t *testing.T) {
	q := New(Options{MaxQueue: 2, MaxPerFlow: 1, MaxWait: time.Hour, Poll: time.Hour})
	s := &slots{limit: 0}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _, _ = q.Do(ctx, Arrival{Scopes: []string{"p/x"}, Flow: "heavy"}, s.try("p/x")) }()
	eventually(t, "the first caller queued", func() bool { return q.Len() == 1 })
	_, err := q.Do(ctx, Arrival{Scopes: []string{"p/x"}, Flow: "heavy"}, s.try("p/x"))
	if !errors.Is(err, ErrQueueFull) || !errors.Is(err, errFull) {
		t.Fatalf("a second waiter of one flow: Do = %v, want ErrQueueFull wrapping the refusal", err)
	}
	go func() { _, _ = q.Do(ctx, Arrival{Scopes: []string{"p/x"}, Flow: "light"}, s.try("p/x")) }()
	eventually(t, "another flow queued", func() bool { return q.Len() == 2 })
	_, err = q.Do(ctx, Arrival{Scopes: []string{"p/x"}, Flow: "third"}, s.try("p/x"))
	if !errors.Is(err, ErrQueueFull) {
		t.Fatalf("a third waiter with MaxQueue 2: Do = %v, want ErrQueueFull", err)
	}
}

// A new arrival waits behind the waiters of its chain without taking a
// slot first; the slot freed goes to the waiter that was there first.
func TestQueueNoOvertaking(t *testing.T) {
	q := New(Options{MaxWait: time.Hour, Poll: time.Hour})
	s := &slots{limit: 1}
	if _, err := q.Do(context.Background(), Arrival{Scopes: []string{"t/x"}, Flow: "a"}, s.try("t/x")); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 2)
	go func() {
		if _, err := q.Do(context.Background(), Arrival{Scopes: []string{"t/x"}, Flow: "first"}, s.try("t/x")); err == nil {
			order <- "first"
		}
	}()
	eventually(t, "first queued", func() bool { return q.Len() == 1 })
	tries := s.tries.Load()
	go func() {
		if _, err := q.Do(context.Background(), Arrival{Scopes: []string{"t/x", "u/y"}, Flow: "second"}, s.try("t/x")); err == nil {
			order <- "second"
		}
	}()
	eventually(t, "second queued", func() bool { return q.Len() == 2 })
	if s.tries.Load() != tries {
		t.Errorf("the second arrival tried the engine while another waited on its chain")
	}
	s.release()
	q.Released([]string{"t/x"})
	if got := <-order; got != "first" {
		t.Errorf("%s was admitted first, want the waiter that came first", got)
	}
	s.release()
	q.Released([]string{"t/x"})
	if got := <-order; got != "second" {
		t.Errorf("got %s, want second", got)
	}
}

// A turn granted to a waiter that is leaving passes to the next.
func TestQueueUnusedTurnPassesOn(t *testing.T) {
	q := New(Options{})
	a, _, err := q.enter("s", Arrival{Flow: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := q.enter("s", Arrival{Flow: "b"})
	if err != nil {
		t.Fatal(err)
	}
	q.Released([]string{"s"})
	q.leave("s", a) // cancelled with the turn in hand
	select {
	case <-b.turn:
	default:
		t.Fatal("the turn a did not use was not passed to b")
	}
	q.leave("s", b)
	if q.Len() != 0 {
		t.Errorf("%d queued", q.Len())
	}
}

// States tells an asker where each of its own waiters stands: served in
// turns, flow by flow, so bob's one request behind alice's three is
// second, and alice's later ones come after it.
func TestStatesPlaceTheAskersWaiters(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	q := New(Options{MaxQueue: 100, MaxPerFlow: 100, MaxWait: time.Hour, Poll: time.Hour, Now: clk.Now, Timer: clk.Timer})
	s := &slots{limit: 0}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	join := func(flow string, n int) {
		for range n {
			want := q.Len() + 1 // before the waiter starts: it may queue at once
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = q.Do(ctx, Arrival{Scopes: []string{"t/x"}, Flow: flow, Class: ClassNormal}, s.try("t/x"))
			}()
			eventually(t, "the waiter queues", func() bool { return q.Len() == want })
		}
	}
	join("alice", 3)
	join("bob", 1)
	st := q.States([]string{"t/x", "t/other"}, "bob")
	if len(st) != 1 || st[0].Waiting != 4 || len(st[0].Mine) != 1 || st[0].Mine[0] != 1 {
		t.Fatalf("bob's view: %+v, want t/x with 4 waiting and his one 1 ahead", st)
	}
	if st := q.States([]string{"t/x"}, "alice"); len(st[0].Mine) != 3 || st[0].Mine[0] != 0 || st[0].Mine[1] != 2 || st[0].Mine[2] != 3 {
		t.Errorf("alice's view: %+v, want her waiters 0, 2 and 3 ahead", st[0].Mine)
	}
	if st := q.States([]string{"t/x"}, ""); st[0].Mine != nil {
		t.Errorf("nobody's view has places %v", st[0].Mine)
	}
	cancel()
	wg.Wait()
}
