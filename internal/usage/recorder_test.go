package usage_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/usage"
)

// fakeStore is a usage.Store in memory. RecordUsageFn, when set, runs at
// the start of every RecordUsage call with the call's number (from 1); if
// it returns an error the call fails and writes nothing.
type fakeStore struct {
	RecordUsageFn func(call int, events []usage.Event) error

	mu      sync.Mutex
	calls   int
	batches [][]usage.Event // what was written, batch by batch
}

var _ usage.Store = (*fakeStore)(nil)

func (f *fakeStore) RecordUsage(ctx context.Context, events []usage.Event) (int, error) {
	f.mu.Lock()
	f.calls++
	n, fn := f.calls, f.RecordUsageFn
	f.mu.Unlock()
	if fn != nil {
		if err := fn(n, events); err != nil {
			return 0, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, append([]usage.Event(nil), events...))
	return len(events), nil
}

func (f *fakeStore) Rollups(ctx context.Context, periods []string) ([]usage.Rollup, error) {
	return nil, errors.New("fakeStore keeps no roll-ups")
}

// written returns the ids written, in order, and the size of each batch.
func (f *fakeStore) written() (ids []string, sizes []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.batches {
		sizes = append(sizes, len(b))
		for _, e := range b {
			ids = append(ids, e.ID)
		}
	}
	return ids, sizes
}

func (f *fakeStore) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

var errDown = errors.New("database is down")

func event(i int) usage.Event {
	return usage.Event{ID: fmt.Sprintf("tkt_%05d", i), Kind: "model_call", Requests: 1, InputTokens: int64(i)}
}

func eventIDs(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, event(i).ID)
	}
	return out
}

// newRecorder starts a recorder whose timer never fires during a test, so
// only batch size, Flush and Close make it write; it is closed at cleanup.
func newRecorder(t *testing.T, store usage.Store) *usage.Recorder {
	t.Helper()
	r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Hour)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// hangLimit bounds waits for things that must happen, so that a hang fails
// the test instead of stalling the run; it is not a performance bound.
const hangLimit = 20 * time.Second

func waitFor(t *testing.T, what string, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(hangLimit):
		t.Fatalf("%s did not happen within %v", what, hangLimit)
	}
}

// run runs fn in a goroutine and returns a channel closed when it returns.
func run(fn func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	return done
}

func flush(t *testing.T, r *usage.Recorder) {
	t.Helper()
	var err error
	waitFor(t, "Flush", run(func() { err = r.Flush(context.Background()) }))
	if err != nil {
		t.Fatalf("Flush = %v, want nil", err)
	}
}

func sameIDs(t *testing.T, got, want []string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("written ids: got %d %v, want %d %v", len(got), got, len(want), want)
	}
}

func TestRecorderFlushWritesQueuedEventsInOneBatch(t *testing.T) {
	t.Parallel()
	store := &fakeStore{}
	r := newRecorder(t, store)
	for i := 0; i < 5; i++ {
		r.Record(event(i))
	}
	if got := r.Pending(); got != 5 {
		t.Fatalf("Pending before Flush: got %d, want 5", got)
	}
	if got := store.callCount(); got != 0 {
		t.Fatalf("store calls before Flush: got %d, want 0", got)
	}
	flush(t, r)
	ids, sizes := store.written()
	sameIDs(t, ids, eventIDs(0, 5))
	if !reflect.DeepEqual(sizes, []int{5}) {
		t.Fatalf("batches: got %v, want [5]", sizes)
	}
	if got := r.Pending(); got != 0 {
		t.Fatalf("Pending after Flush: got %d, want 0", got)
	}
	// More events, written after the first ones. (Batch sizes are not
	// checked here: a wake-up left over from the first Flush may write
	// some of them before the second.)
	for i := 5; i < 8; i++ {
		r.Record(event(i))
	}
	flush(t, r)
	ids, _ = store.written()
	sameIDs(t, ids, eventIDs(0, 8))
	flush(t, r) // nothing queued
	if got := r.Pending(); got != 0 {
		t.Fatalf("Pending after Flush: got %d, want 0", got)
	}
}

func TestRecorderWritesAFullBatchWithoutFlush(t *testing.T) {
	t.Parallel()
	const full = 512 // the recorder's batch size
	wrote := make(chan struct{})
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call == 1 {
			defer close(wrote)
		}
		return nil
	}}
	r := newRecorder(t, store)
	for i := 0; i < full-1; i++ {
		r.Record(event(i))
	}
	if got := store.callCount(); got != 0 {
		t.Fatalf("store calls below a full batch: got %d, want 0", got)
	}
	r.Record(event(full - 1))
	waitFor(t, "a write of the full batch", wrote)
	flush(t, r) // the batch may still be between the store and the bookkeeping
	ids, sizes := store.written()
	sameIDs(t, ids, eventIDs(0, full))
	if !reflect.DeepEqual(sizes, []int{full}) {
		t.Fatalf("batches: got %v, want [%d]", sizes, full)
	}
}

func TestRecorderFlushWaitsForTheWrite(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}), make(chan struct{})
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call == 1 {
			close(entered)
			<-release
		}
		return nil
	}}
	r := newRecorder(t, store)
	r.Record(event(0))
	var err error
	flushed := run(func() { err = r.Flush(context.Background()) })
	waitFor(t, "the store write", entered)
	select {
	case <-flushed:
		t.Fatalf("Flush returned (%v) while the store was still writing", err)
	default:
	}
	if got := r.Pending(); got != 1 {
		t.Fatalf("Pending during the write: got %d, want 1", got)
	}
	close(release)
	waitFor(t, "Flush", flushed)
	if err != nil {
		t.Fatalf("Flush = %v, want nil", err)
	}
	ids, _ := store.written()
	sameIDs(t, ids, eventIDs(0, 1))
	if got := r.Pending(); got != 0 {
		t.Fatalf("Pending after Flush: got %d, want 0", got)
	}
}

func TestRecorderRetriesUntilWritten(t *testing.T) {
	t.Parallel()
	const failures = 3
	firstCall, moreRecorded := make(chan struct{}), make(chan struct{})
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call == 1 {
			close(firstCall)
			<-moreRecorded
		}
		if call <= failures {
			return errDown
		}
		return nil
	}}
	r := newRecorder(t, store)
	for i := 0; i < 10; i++ {
		r.Record(event(i))
	}
	var err error
	flushed := run(func() { err = r.Flush(context.Background()) })
	// Events recorded while the store is failing join the queue behind
	// the failed batch.
	waitFor(t, "the first write", firstCall)
	for i := 10; i < 15; i++ {
		r.Record(event(i))
	}
	close(moreRecorded)
	waitFor(t, "Flush", flushed)
	if err != nil {
		t.Fatalf("Flush = %v, want nil", err)
	}
	ids, _ := store.written()
	sameIDs(t, ids, eventIDs(0, 15)) // each once, in order
	if got := store.callCount(); got < failures+1 {
		t.Fatalf("store calls: got %d, want at least %d", got, failures+1)
	}
	if got := r.Pending(); got != 0 {
		t.Fatalf("Pending: got %d, want 0", got)
	}
}

func TestRecordNeverBlocks(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}), make(chan struct{})
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call == 1 {
			close(entered)
			<-release // a store that hangs, then fails
			return errDown
		}
		return nil
	}}
	r := newRecorder(t, store)
	const n = 20_000
	r.Record(event(0))
	go func() { _ = r.Flush(context.Background()) }()
	waitFor(t, "the store write", entered)
	// The store is stuck; recording goes on.
	waitFor(t, "recording while the store hangs", run(func() {
		for i := 1; i < n; i++ {
			r.Record(event(i))
		}
	}))
	if got := r.Pending(); got != n {
		t.Fatalf("Pending while the store hangs: got %d, want %d", got, n)
	}
	close(release)
	flush(t, r)
	ids, _ := store.written()
	sameIDs(t, ids, eventIDs(0, n))
}

func TestRecorderConcurrentRecordAndFlush(t *testing.T) {
	t.Parallel()
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call%3 == 0 {
			return errDown // every third write fails and is retried
		}
		return nil
	}}
	r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Millisecond)
	t.Cleanup(func() { _ = r.Close() })
	const writers, each = 8, 300
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				r.Record(event(w*each + i))
				if i%100 == 99 {
					if err := r.Flush(context.Background()); err != nil {
						t.Errorf("Flush = %v", err)
					}
				}
			}
		}()
	}
	waitFor(t, "the writers", run(wg.Wait))
	flush(t, r)
	ids, sizes := store.written()
	if len(ids) != writers*each {
		t.Fatalf("written: got %d events, want %d", len(ids), writers*each)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("event %s written twice", id)
		}
		seen[id] = true
	}
	if len(sizes) >= writers*each {
		t.Fatalf("batches: got %d for %d events, want fewer batches than events", len(sizes), len(ids))
	}
}

func TestRecorderCloseFlushes(t *testing.T) {
	t.Parallel()
	store := &fakeStore{}
	r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Hour)
	for i := 0; i < 5; i++ {
		r.Record(event(i))
	}
	var err error
	waitFor(t, "Close", run(func() { err = r.Close() }))
	if err != nil {
		t.Fatalf("Close = %v, want nil", err)
	}
	ids, _ := store.written()
	sameIDs(t, ids, eventIDs(0, 5))
	if got := r.Pending(); got != 0 {
		t.Fatalf("Pending after Close: got %d, want 0", got)
	}
	waitFor(t, "a second Close", run(func() { err = r.Close() }))
	if err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
}

func TestRecorderCloseGivesUpOnADeadStore(t *testing.T) {
	t.Parallel()
	store := &fakeStore{RecordUsageFn: func(int, []usage.Event) error { return errDown }}
	r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Hour)
	for i := 0; i < 3; i++ {
		r.Record(event(i))
	}
	var err error
	waitFor(t, "Close", run(func() { err = r.Close() }))
	if err != nil {
		t.Fatalf("Close = %v, want nil", err)
	}
	if got := r.Pending(); got != 3 {
		t.Fatalf("Pending after giving up: got %d, want 3", got)
	}
	if got := store.callCount(); got < 2 {
		t.Fatalf("store calls at Close: got %d, want retries", got)
	}
	if ids, _ := store.written(); len(ids) != 0 {
		t.Fatalf("written: got %v, want nothing", ids)
	}
}

func TestRecorderFlushGivesUpWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	store := &fakeStore{RecordUsageFn: func(int, []usage.Event) error { return errDown }}
	r := newRecorder(t, store)
	r.Record(event(0))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var err error
	waitFor(t, "Flush", run(func() { err = r.Flush(ctx) }))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush against a failing store: got %v, want context.DeadlineExceeded", err)
	}
	if got := r.Pending(); got != 1 {
		t.Fatalf("Pending: got %d, want 1 (kept for the next attempt)", got)
	}
}

func TestRecorderFlushHonoursContextWhileBlocked(t *testing.T) {
	t.Run("hung store", func(t *testing.T) {
		entered, release := make(chan struct{}), make(chan struct{})
		store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
			if call == 1 {
				close(entered)
				<-release
			}
			return nil
		}}
		r := newRecorder(t, store)
		t.Cleanup(func() { close(release) }) // runs before the recorder's Close
		r.Record(event(0))
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		go func() { _ = r.Flush(context.Background()) }()
		waitFor(t, "the store write", entered)
		var err error
		done := run(func() { err = r.Flush(ctx) })
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatalf("Flush with a 50ms context still blocked after 2s while the store hangs")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Flush: got %v, want context.DeadlineExceeded", err)
		}
	})
	t.Run("after close", func(t *testing.T) {
		store := &fakeStore{RecordUsageFn: func(int, []usage.Event) error { return errDown }}
		r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Hour)
		r.Record(event(0))
		_ = r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		var err error
		done := run(func() { err = r.Flush(ctx) })
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatalf("Flush after Close with events pending still blocked after 2s")
		}
		if err == nil {
			t.Fatalf("Flush after Close with events pending: got nil, want an error")
		}
	})
}
