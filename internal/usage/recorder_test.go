package usage_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/usage"
)

// fakeStore is a usage.Store in memory. RecordUsageFn, when set, runs at
// the start of every RecordUsage call with the call's number (from 1); if
// it returns an error the call fails and writes nothing.
type fakeStore struct {
	RecordUsageFn func(call int, events []usage.Event) error
	// QuarantineFn, when set, runs at the start of every QuarantineUsage
	// call; if it returns an error nothing is quarantined.
	QuarantineFn func(call int, q []usage.Quarantined) error

	mu          sync.Mutex
	calls       int
	batches     [][]usage.Event // what was written, batch by batch
	qcalls      int
	quarantined []usage.Quarantined
}

var (
	_ usage.Store           = (*fakeStore)(nil)
	_ usage.QuarantineStore = (*fakeStore)(nil)
)

func (f *fakeStore) QuarantineUsage(ctx context.Context, q []usage.Quarantined) error {
	f.mu.Lock()
	f.qcalls++
	n, fn := f.qcalls, f.QuarantineFn
	f.mu.Unlock()
	if fn != nil {
		if err := fn(n, q); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.quarantined = append(f.quarantined, q...)
	return nil
}

// quarantinedIDs returns the event ids quarantined, in order.
func (f *fakeStore) quarantinedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, q := range f.quarantined {
		ids = append(ids, q.EventID)
	}
	return ids
}

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

func (f *fakeStore) RollupsRead(ctx context.Context, periods []string) ([]usage.Rollup, time.Time, error) {
	return nil, time.Time{}, errors.New("fakeStore keeps no roll-ups")
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

// ---- Commit: group commit, the bound, quarantine ----

// commit runs r.Commit(ctx, e) in a goroutine; the channel receives its
// result.
func commit(ctx context.Context, r *usage.Recorder, e usage.Event) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- r.Commit(ctx, e) }()
	return ch
}

func result(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(hangLimit):
		t.Fatalf("%s did not return within %v", what, hangLimit)
		return nil
	}
}

func notYet(t *testing.T, what string, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned (%v) before its transaction committed", what, err)
	default:
	}
}

// waitPending waits until the recorder holds n events.
func waitPending(t *testing.T, r *usage.Recorder, n int) {
	t.Helper()
	deadline := time.Now().Add(hangLimit)
	for r.Pending() != n {
		if time.Now().After(deadline) {
			t.Fatalf("Pending: got %d, want %d within %v", r.Pending(), n, hangLimit)
		}
		time.Sleep(time.Millisecond)
	}
}

// countObserver counts what a recorder reports.
type countObserver struct {
	mu                            sync.Mutex
	quarantined, refused, dropped int
}

func (o *countObserver) UsageQuarantined(n int) { o.mu.Lock(); o.quarantined += n; o.mu.Unlock() }
func (o *countObserver) UsageRefused(n int, dropped bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if dropped {
		o.dropped += n
	} else {
		o.refused += n
	}
}

func (o *countObserver) counts() (quarantined, refused, dropped int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.quarantined, o.refused, o.dropped
}

func TestCommitReturnsOnlyOnceItsTransactionCommits(t *testing.T) {
	t.Parallel()
	entered := []chan struct{}{make(chan struct{}), make(chan struct{})}
	release := []chan struct{}{make(chan struct{}), make(chan struct{})}
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call <= 2 {
			close(entered[call-1])
			<-release[call-1]
		}
		return nil
	}}
	r := newRecorder(t, store)
	ctx := context.Background()
	first := commit(ctx, r, event(0))
	waitFor(t, "the first transaction", entered[0])
	// Ten more arrive while the first transaction is open: they make the
	// next transaction, together.
	var rest []<-chan error
	for i := 1; i <= 10; i++ {
		rest = append(rest, commit(ctx, r, event(i)))
	}
	waitPending(t, r, 11)
	notYet(t, "Commit of event 0", first)
	close(release[0])
	if err := result(t, "Commit of event 0", first); err != nil {
		t.Fatalf("Commit of event 0 = %v, want nil", err)
	}
	waitFor(t, "the second transaction", entered[1])
	for i, ch := range rest {
		notYet(t, fmt.Sprintf("Commit of event %d", i+1), ch)
	}
	close(release[1])
	for i, ch := range rest {
		if err := result(t, "Commit", ch); err != nil {
			t.Fatalf("Commit of event %d = %v, want nil", i+1, err)
		}
	}
	ids, sizes := store.written()
	slices.Sort(ids) // committers queue in any order
	sameIDs(t, ids, eventIDs(0, 11))
	if !reflect.DeepEqual(sizes, []int{1, 10}) {
		t.Fatalf("transactions: got sizes %v, want [1 10]", sizes)
	}
}

func TestCommitKeepsTheEventWhenItsContextEnds(t *testing.T) {
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
	ctx, cancel := context.WithCancel(context.Background())
	ch := commit(ctx, r, event(0))
	waitFor(t, "the transaction", entered)
	cancel()
	if err := result(t, "Commit", ch); !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit after its context ended: got %v, want context.Canceled", err)
	}
	close(release)
	flush(t, r)
	ids, _ := store.written()
	sameIDs(t, ids, eventIDs(0, 1))
}

func TestCommitRefusesAtOnceWhenTheQueueIsFull(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}), make(chan struct{})
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call == 1 {
			close(entered)
			<-release
		}
		return nil
	}}
	obs := &countObserver{}
	r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Hour, usage.WithQueueMax(3), usage.WithObserver(obs))
	t.Cleanup(func() { _ = r.Close() })
	ctx := context.Background()
	var admitted []<-chan error
	admitted = append(admitted, commit(ctx, r, event(0)))
	waitFor(t, "the first transaction", entered)
	admitted = append(admitted, commit(ctx, r, event(1)), commit(ctx, r, event(2)))
	waitPending(t, r, 3)

	err := r.Commit(ctx, event(3)) // returns at once: no goroutine needed
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.Unavailable || e.RetryAfter <= 0 || !errors.Is(err, usage.ErrBehind) {
		t.Fatalf("Commit into a full queue: got %#v, want errs.Unavailable wrapping ErrBehind with a RetryAfter", err)
	}
	r.Record(event(4)) // dropped, loudly
	if got := r.Pending(); got != 3 {
		t.Fatalf("Pending at the bound: got %d, want 3", got)
	}
	if _, refused, dropped := obs.counts(); refused != 1 || dropped != 1 {
		t.Fatalf("observer: got %d refused and %d dropped, want 1 and 1", refused, dropped)
	}

	close(release)
	for i, ch := range admitted {
		if err := result(t, "Commit", ch); err != nil {
			t.Fatalf("Commit of event %d = %v, want nil", i, err)
		}
	}
	ids, _ := store.written()
	slices.Sort(ids)
	sameIDs(t, ids, eventIDs(0, 3))
	// Room again.
	if err := r.Commit(ctx, event(5)); err != nil {
		t.Fatalf("Commit once the queue drained = %v, want nil", err)
	}
}

// refuseModel makes a store refuse, as malformed, every batch holding an
// event of model "poison", as a database refuses a whole transaction.
func refuseModel(call int, events []usage.Event) error {
	for _, e := range events {
		if e.Model == "poison" {
			return errs.E(errs.Invalid, "the store refused a value")
		}
	}
	return nil
}

func TestCommitQuarantinesAPoisonEventAndWritesTheRest(t *testing.T) {
	t.Parallel()
	store := &fakeStore{RecordUsageFn: refuseModel}
	obs := &countObserver{}
	r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Hour, usage.WithChunk(8), usage.WithObserver(obs))
	t.Cleanup(func() { _ = r.Close() })
	const n = 40
	poison := map[int]bool{5: true, 6: true, 17: true, 39: true}
	// Queue everything before the first write, so chunks hold poison and
	// good events together.
	for i := 0; i < n; i++ {
		e := event(i)
		if poison[i] {
			e.Model = "poison"
		}
		r.Record(e)
	}
	flush(t, r)
	ids, _ := store.written()
	var want []string
	for i := 0; i < n; i++ {
		if !poison[i] {
			want = append(want, event(i).ID)
		}
	}
	sameIDs(t, ids, want)
	sameIDs(t, store.quarantinedIDs(), []string{event(5).ID, event(6).ID, event(17).ID, event(39).ID})
	if q, _, _ := obs.counts(); q != 4 {
		t.Fatalf("observer: got %d quarantined, want 4", q)
	}

	// A committer of a poison event is told; one of a good event is not.
	bad := event(100)
	bad.Model = "poison"
	badDone, goodDone := commit(context.Background(), r, bad), commit(context.Background(), r, event(101))
	if err := result(t, "Commit of a poison event", badDone); !errs.Is(err, errs.Invalid) {
		t.Fatalf("Commit of a poison event: got %v, want errs.Invalid", err)
	}
	if err := result(t, "Commit of a good event", goodDone); err != nil {
		t.Fatalf("Commit of a good event = %v, want nil", err)
	}
}

func TestCommitRetriesAnOutageWithoutQuarantine(t *testing.T) {
	t.Parallel()
	store := &fakeStore{RecordUsageFn: func(call int, events []usage.Event) error {
		if call <= 3 {
			return &errs.Error{Code: errs.Unavailable, Message: "connection refused"}
		}
		return nil
	}}
	r := newRecorder(t, store)
	if err := result(t, "Commit", commit(context.Background(), r, event(0))); err != nil {
		t.Fatalf("Commit through an outage = %v, want nil", err)
	}
	if q := store.quarantinedIDs(); len(q) != 0 {
		t.Fatalf("quarantined during an outage: %v, want nothing", q)
	}
	if got := store.callCount(); got != 4 {
		t.Fatalf("store calls: got %d, want 4", got)
	}
}

func TestQuarantineRetriedWhenTheStoreIsDown(t *testing.T) {
	t.Parallel()
	store := &fakeStore{RecordUsageFn: refuseModel, QuarantineFn: func(call int, q []usage.Quarantined) error {
		if call == 1 {
			return errDown
		}
		return nil
	}}
	r := newRecorder(t, store)
	bad := event(0)
	bad.Model = "poison"
	if err := result(t, "Commit", commit(context.Background(), r, bad)); !errs.Is(err, errs.Invalid) {
		t.Fatalf("Commit of a poison event: got %v, want errs.Invalid", err)
	}
	sameIDs(t, store.quarantinedIDs(), eventIDs(0, 1))
}

func TestCloseTellsWaitersOfADeadStore(t *testing.T) {
	t.Parallel()
	store := &fakeStore{RecordUsageFn: func(int, []usage.Event) error { return errDown }}
	r := usage.NewRecorder(store, slog.New(slog.DiscardHandler), time.Hour)
	ch := commit(context.Background(), r, event(0))
	waitPending(t, r, 1)
	waitFor(t, "Close", run(func() { _ = r.Close() }))
	if err := result(t, "Commit", ch); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("Commit when Close gave up: got %v, want errs.Unavailable", err)
	}
	if err := r.Commit(context.Background(), event(1)); !errs.Is(err, errs.Unavailable) {
		t.Fatalf("Commit after Close: got %v, want errs.Unavailable", err)
	}
}

func TestStorable(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"gpt-4o", 16, "gpt-4o"},
		{"中文模型", 16, "中文模型"},
		{"a\x00b", 16, `"a\x00b"`},
		{"a\xffb", 16, `"a\xffb"`},
		{"abcdefghij", 4, "abcd…(10 bytes)"},
	} {
		got := usage.Storable(c.in, c.max)
		if got != c.want {
			t.Errorf("Storable(%q, %d): got %q, want %q", c.in, c.max, got, c.want)
		}
		if !utf8.ValidString(got) || strings.ContainsRune(got, 0) {
			t.Errorf("Storable(%q, %d) = %q holds what a store cannot", c.in, c.max, got)
		}
	}
	e := usage.EventJSON(usage.Event{ID: "tkt_\x00", Model: "m\xff", Scopes: []string{"global"}})
	if !utf8.ValidString(e) || strings.ContainsRune(e, 0) || !strings.Contains(e, `\\x00`) {
		t.Errorf("EventJSON = %s, want NUL and invalid bytes escaped", e)
	}
}

// TestTryRecordHalfBound: TryRecord queues only while the queue is less
// than half full, so a caller that does not wait still slows down (falls
// back to Commit) before anything would be dropped.
func TestTryRecordHalfBound(t *testing.T) {
	// An hour's flush interval and fewer events than a batch: nothing is
	// written while the test queues, so the queue only grows.
	r := usage.NewRecorder(&fakeStore{}, slog.New(slog.DiscardHandler), time.Hour, usage.WithQueueMax(8))
	defer r.Close()
	queued := 0
	for i := 0; i < 8; i++ {
		if r.TryRecord(usage.Event{ID: fmt.Sprintf("e%d", i), TenantID: "t", Kind: "x", At: time.Now()}) {
			queued++
		}
	}
	if queued != 4 {
		t.Errorf("TryRecord queued %d of 8 with a bound of 8, want 4 (half)", queued)
	}
}
