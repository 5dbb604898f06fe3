package usage

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Recorder writes events to the store in batches, off the request path. A
// crash loses at most the events of one flush interval; Close flushes what
// is queued.
type Recorder struct {
	store    Store
	log      *slog.Logger
	interval time.Duration

	mu      sync.Mutex
	queue   []Event
	flushed *sync.Cond // broadcast after each flush attempt
	pending int        // events queued or being written

	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	closed   bool
	doneFlag bool // the loop has ended (guarded by mu)
}

// batchSize is how many queued events trigger an early flush.
const batchSize = 512

// NewRecorder starts a recorder that flushes every interval.
func NewRecorder(store Store, log *slog.Logger, interval time.Duration) *Recorder {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	r := &Recorder{store: store, log: log, interval: interval,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	r.flushed = sync.NewCond(&r.mu)
	go r.loop()
	return r
}

// Record queues an event. It never blocks on the store.
func (r *Recorder) Record(e Event) {
	r.mu.Lock()
	r.queue = append(r.queue, e)
	r.pending++
	n := len(r.queue)
	r.mu.Unlock()
	if n >= batchSize {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Flush writes everything queued so far and waits until it is written (or
// the recorder gives up on this attempt and will retry).
func (r *Recorder) Flush(ctx context.Context) error {
	select {
	case r.kick <- struct{}{}:
	default:
	}
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
	for r.pending > 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.closed && r.doneFlag {
			return fmt.Errorf("recorder closed with %d events unwritten", r.pending)
		}
		select {
		case r.kick <- struct{}{}:
		default:
		}
		r.flushed.Wait()
	}
	return nil
}

func (r *Recorder) loop() {
	defer func() {
		r.mu.Lock()
		r.doneFlag = true
		r.flushed.Broadcast()
		r.mu.Unlock()
		close(r.done)
	}()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-r.stop:
			// Last flush: retry a few times before giving up loudly.
			for i := 0; i < 5 && r.flush() != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
			return
		case <-t.C:
		case <-r.kick:
		}
		if backoff > 0 {
			time.Sleep(backoff)
		}
		if err := r.flush(); err != nil {
			backoff = min(max(2*backoff, 50*time.Millisecond), 5*time.Second)
			continue
		}
		backoff = 0
	}
}

// flush writes the queue. On failure the events go back to the front of
// the queue for the next attempt: usage is never dropped while the process
// lives.
func (r *Recorder) flush() error {
	r.mu.Lock()
	batch := r.queue
	r.queue = nil
	r.mu.Unlock()
	if len(batch) == 0 {
		r.mu.Lock()
		r.flushed.Broadcast()
		r.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err := r.store.RecordUsage(ctx, batch)
	cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.queue = append(batch, r.queue...)
		r.log.Error("writing usage events failed; will retry", slog.Int("events", len(batch)), slog.String("error", err.Error()))
		r.flushed.Broadcast()
		return err
	}
	r.pending -= len(batch)
	r.flushed.Broadcast()
	return nil
}

// Pending returns how many events are not yet written.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending
}

// Close flushes and stops the recorder.
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
