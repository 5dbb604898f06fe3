package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
)

// Recorder writes events to the store through one writer goroutine.
//
// Commit is group commit: the caller's event joins the queue and Commit
// returns once the transaction holding it has committed, together with the
// other events of that transaction, so an acknowledged event survives a
// crash of the process. Record queues without waiting, for callers that
// need no acknowledgement. The queue is bounded: when it is full, Commit
// answers unavailable at once (with a Retry-After) rather than letting
// memory grow while the store is behind.
//
// The writer takes at most a chunk of events per transaction. A store
// outage (connection refused, timeout, …) leaves the events queued and is
// retried with backoff. An event the store refuses as malformed (an
// errs.Invalid error) is found by bisecting its chunk, set aside in the
// store's quarantine, and its waiter told; the other events are written.
type Recorder struct {
	store    Store
	log      *slog.Logger
	interval time.Duration
	max      int
	chunk    int
	obs      Observer

	mu       sync.Mutex
	queue    []*pending
	inflight int        // events taken by the writer and not yet resolved
	released int        // waiters the last chunk released (for gather)
	flushed  *sync.Cond // broadcast after each write attempt
	backoff  time.Duration
	closed   bool
	doneFlag bool // the writer has ended (guarded by mu)

	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	// Owned by the writer goroutine.
	batch  []*pending
	events []Event
}

// pending is a queued event and, for Commit, where its outcome goes.
type pending struct {
	ev   Event
	done chan error // nil for Record; buffered, receives the outcome once
	err  error      // the outcome, set by the writer before done
	at   time.Time  // when its transaction's commit returned, set before done
}

// Observer learns what happens to events that are not simply written;
// *metrics.Metrics implements it.
type Observer interface {
	// UsageQuarantined reports n events refused by the store as malformed
	// and set aside.
	UsageQuarantined(n int)
	// UsageRefused reports n events turned away because the queue was
	// full: refused to Commit's caller, or dropped (and logged) by Record.
	UsageRefused(n int, dropped bool)
}

const (
	// DefaultQueueMax is the queue bound when none is configured: about
	// 30 MB of events, several seconds of the store's write rate.
	DefaultQueueMax = 100_000
	// DefaultChunk is the most events written in one transaction. Larger
	// chunks gain little (the per-transaction cost is shared out well
	// before 1,000) and keep a transaction, and a bisection, short.
	DefaultChunk = 1000
	// batchSize is how many events queued by Record make the writer write
	// before its interval ends.
	batchSize = 512
	// writeTimeout bounds one transaction.
	writeTimeout = 30 * time.Second
)

// Option configures a Recorder.
type Option func(*Recorder)

// WithQueueMax bounds the events queued and being written; n <= 0 means
// DefaultQueueMax.
func WithQueueMax(n int) Option {
	return func(r *Recorder) {
		if n > 0 {
			r.max = n
		}
	}
}

// WithChunk sets the most events written in one transaction; n <= 0 means
// DefaultChunk.
func WithChunk(n int) Option {
	return func(r *Recorder) {
		if n > 0 {
			r.chunk = n
		}
	}
}

// WithObserver reports quarantined and refused events to o.
func WithObserver(o Observer) Option { return func(r *Recorder) { r.obs = o } }

// NewRecorder starts a recorder. Events queued by Record are written at
// least every interval (default 100ms); committed events at once.
func NewRecorder(store Store, log *slog.Logger, interval time.Duration, opts ...Option) *Recorder {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	r := &Recorder{store: store, log: log, interval: interval, max: DefaultQueueMax, chunk: DefaultChunk,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	for _, o := range opts {
		o(r)
	}
	r.flushed = sync.NewCond(&r.mu)
	go r.loop()
	return r
}

// ErrBehind is wrapped by Commit's error when the queue is at its bound:
// the store is not keeping up, and the caller should slow down and retry.
var ErrBehind = errors.New("usage store behind")

// Commit queues e and waits until it is committed in the store. It returns
// nil once e is durable (or was already stored: ids are idempotent);
// errs.Unavailable with a RetryAfter, at once, when the queue is full or
// the recorder is closed; errs.Invalid when the store refused e as
// malformed and quarantined it; and ctx's error if ctx ends first, in
// which case e stays queued and is still written.
func (r *Recorder) Commit(ctx context.Context, e Event) error {
	_, err := r.CommitAt(ctx, e)
	return err
}

// CommitAt is Commit that also returns when the event's transaction
// committed (as the writer saw its commit return, before it told anyone):
// a rebuild of the quota counters that read the ledger after that moment
// holds the event.
func (r *Recorder) CommitAt(ctx context.Context, e Event) (time.Time, error) {
	p := &pending{ev: e, done: make(chan error, 1)}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return time.Time{}, &errs.Error{Code: errs.Unavailable, Message: "usage recorder is shut down"}
	}
	if n := len(r.queue) + r.inflight; n >= r.max {
		retry := max(r.backoff, time.Second)
		r.mu.Unlock()
		if r.obs != nil {
			r.obs.UsageRefused(1, false)
		}
		return time.Time{}, &errs.Error{Code: errs.Unavailable, RetryAfter: retry, Err: ErrBehind,
			Message: fmt.Sprintf("usage store behind: %d events are waiting to be written", n)}
	}
	r.queue = append(r.queue, p)
	r.mu.Unlock()
	r.wake()
	select {
	case err := <-p.done:
		return p.at, err
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// Record queues an event without waiting for it to be written. It never
// blocks on the store. When the queue is full the event is dropped: logged
// in full at error level and reported to the observer.
func (r *Recorder) Record(e Event) {
	r.mu.Lock()
	if len(r.queue)+r.inflight >= r.max {
		r.mu.Unlock()
		r.log.Error("usage queue full: event dropped", slog.String("tenant", e.TenantID),
			slog.String("event_id", e.ID), slog.String("event", EventJSON(e)))
		if r.obs != nil {
			r.obs.UsageRefused(1, true)
		}
		return
	}
	r.queue = append(r.queue, &pending{ev: e})
	n := len(r.queue)
	r.mu.Unlock()
	if n >= batchSize {
		r.wake()
	}
}

// TryRecord queues e without waiting for it to be written, as Record
// does, but only while the queue is less than half full; it returns false
// (queuing nothing) otherwise, and the caller then waits with Commit, so
// that a store falling behind slows callers down instead of dropping
// events.
func (r *Recorder) TryRecord(e Event) bool {
	r.mu.Lock()
	if r.closed || len(r.queue)+r.inflight >= r.max/2 {
		r.mu.Unlock()
		return false
	}
	r.queue = append(r.queue, &pending{ev: e})
	n := len(r.queue)
	r.mu.Unlock()
	if n >= batchSize {
		r.wake()
	}
	return true
}

func (r *Recorder) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Flush writes everything queued and waits until nothing is pending (or
// ctx ends). Events queued meanwhile are waited for too.
func (r *Recorder) Flush(ctx context.Context) error {
	r.wake()
	// Wake the wait below when ctx ends, so a hung store cannot hold the
	// caller past its deadline.
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.flushed.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.queue)+r.inflight > 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.closed && r.doneFlag {
			return fmt.Errorf("recorder closed with %d events unwritten", len(r.queue)+r.inflight)
		}
		r.wake()
		r.flushed.Wait()
	}
	return nil
}

// Pending returns how many events are not yet written.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue) + r.inflight
}

// Close writes out what is queued and stops the recorder. Against a store
// that stays down it gives up after a few attempts: the events left are
// logged as lost and their waiters told.
func (r *Recorder) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	close(r.stop)
	<-r.done
	if n := r.Pending(); n > 0 {
		r.log.Error("usage events could not be written before shutdown", slog.Int("events", n))
	}
	return nil
}

func (r *Recorder) loop() {
	defer func() {
		r.mu.Lock()
		r.doneFlag = true
		left := r.queue
		r.flushed.Broadcast()
		r.mu.Unlock()
		for _, p := range left {
			r.resolve(p, &errs.Error{Code: errs.Unavailable, Message: "usage recorder shut down before the event was written"})
		}
		close(r.done)
	}()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			r.drain()
			return
		case <-t.C:
		case <-r.kick:
		}
		// Write until the queue is empty; retry an outage with backoff,
		// the events staying queued and their waiters waiting.
		backoff := time.Duration(0)
		for {
			start := time.Now()
			more, err := r.writeChunk()
			if err == nil {
				backoff = 0
				r.setBackoff(0)
				r.gather(time.Since(start))
				if !more && r.Pending() == 0 {
					break
				}
				continue
			}
			backoff = min(max(2*backoff, 50*time.Millisecond), 5*time.Second)
			r.setBackoff(backoff)
			select {
			case <-r.stop:
				r.drain()
				return
			case <-time.After(backoff):
			}
		}
	}
}

// gather waits briefly, after a chunk whose committers were released, for
// them to queue their next events, so that transactions stay full instead
// of alternating between the few events queued the moment one commits and
// the many that come just after. It waits at most half the last write's
// time (and 2ms): a committer that does not come back costs the others
// little, and a lone committer waits for nobody.
func (r *Recorder) gather(took time.Duration) {
	r.mu.Lock()
	want := min(r.released, r.chunk)
	r.released = 0
	r.mu.Unlock()
	if want <= 1 {
		return
	}
	deadline := time.NewTimer(min(took/2, 2*time.Millisecond))
	defer deadline.Stop()
	for {
		r.mu.Lock()
		n := len(r.queue)
		r.mu.Unlock()
		if n >= want {
			return
		}
		select {
		case <-r.kick:
		case <-deadline.C:
			return
		case <-r.stop:
			return
		}
	}
}

// drain is the last write at Close: everything queued, retrying a dead
// store a few times before giving up loudly.
func (r *Recorder) drain() {
	failures := 0
	for failures < 5 {
		more, err := r.writeChunk()
		if err != nil {
			failures++
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if !more {
			return
		}
	}
}

func (r *Recorder) setBackoff(d time.Duration) {
	r.mu.Lock()
	r.backoff = d
	r.mu.Unlock()
}

// writeChunk writes the oldest chunk of the queue. It reports whether
// events remain queued, and the store's error when it is down (the chunk's
// unresolved events then go back to the front of the queue).
func (r *Recorder) writeChunk() (more bool, err error) {
	r.mu.Lock()
	n := min(len(r.queue), r.chunk)
	if n == 0 {
		r.flushed.Broadcast()
		r.mu.Unlock()
		return false, nil
	}
	r.batch = append(r.batch[:0], r.queue[:n]...)
	clear(r.queue[:n])
	r.queue = r.queue[n:]
	if len(r.queue) == 0 {
		r.queue = nil // let the array go rather than creep along it
	}
	r.inflight = n
	r.mu.Unlock()

	r.events = r.events[:0]
	for _, p := range r.batch {
		r.events = append(r.events, p.ev)
	}
	resolved, err := r.write(r.batch, r.events)
	committed := time.Now()
	for _, p := range r.batch[:resolved] {
		p.at = committed
	}
	if err != nil {
		r.log.Error("writing usage events failed; will retry", slog.Int("events", n-resolved), slog.String("error", err.Error()))
	}

	r.mu.Lock()
	r.inflight = 0
	if rest := r.batch[resolved:]; len(rest) > 0 {
		r.queue = append(append(make([]*pending, 0, len(rest)+len(r.queue)), rest...), r.queue...)
	}
	more = len(r.queue) > 0
	r.released = 0
	for _, p := range r.batch[:resolved] {
		if p.done != nil {
			r.released++
		}
	}
	r.flushed.Broadcast()
	r.mu.Unlock()
	for _, p := range r.batch[:resolved] {
		r.resolve(p, p.err)
	}
	clear(r.batch)
	clear(r.events)
	return more, err
}

func (r *Recorder) resolve(p *pending, err error) {
	if p.done != nil {
		p.done <- err
	}
}

// write writes events (the events of batch) and returns how many of them,
// from the start, are resolved: written, or refused and quarantined. A
// data error splits the events in halves, each written on its own, down
// to the single events at fault. Any other error stops the write and is
// returned.
func (r *Recorder) write(batch []*pending, events []Event) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	_, err := r.store.RecordUsage(ctx, events)
	cancel()
	switch {
	case err == nil:
		return len(batch), nil
	case !errs.Is(err, errs.Invalid):
		return 0, err
	case len(batch) == 1:
		if err := r.quarantine(batch[0], err); err != nil {
			return 0, err
		}
		return 1, nil
	}
	mid := len(batch) / 2
	n, err := r.write(batch[:mid], events[:mid])
	if err != nil {
		return n, err
	}
	m, err := r.write(batch[mid:], events[mid:])
	return mid + m, err
}

// quarantine sets p's event aside after the store refused it with refusal.
func (r *Recorder) quarantine(p *pending, refusal error) error {
	e := &p.ev
	at := time.Now()
	q := Quarantined{ID: id.NewAt("uq", at), EventKey: EventKey(e.ID), EventID: Storable(e.ID, maxQuarantineText),
		TenantID: Storable(e.TenantID, maxQuarantineText), Event: EventJSON(*e),
		Error: Storable(refusal.Error(), 4*maxQuarantineText), At: at}
	qs, ok := r.store.(QuarantineStore)
	if ok {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		err := qs.QuarantineUsage(ctx, []Quarantined{q})
		cancel()
		if err != nil {
			return fmt.Errorf("quarantine usage event: %w", err)
		}
	}
	r.log.Error("usage event refused by the store and quarantined", slog.String("tenant", q.TenantID),
		slog.String("event_id", q.EventID), slog.String("quarantine_id", q.ID), slog.Bool("stored", ok),
		slog.String("event", q.Event), slog.String("error", q.Error))
	if r.obs != nil {
		r.obs.UsageQuarantined(1)
	}
	p.err = &errs.Error{Code: errs.Invalid, Err: refusal,
		Message: fmt.Sprintf("the usage store refused the event as malformed; it is quarantined as %s", q.ID)}
	return nil
}
