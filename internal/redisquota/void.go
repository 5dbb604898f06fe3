package redisquota

import (
	"context"
	"sync"
	"time"
)

// An acquire whose reply is lost (a timeout, a broken connection, a caller
// that stopped waiting) may or may not have been carried out by Redis, and
// only this instance knows its ticket id. Left alone, a granted one would
// hold its slot and reservations until its TTL ran out, long after every
// settle the caller could make had answered. So the id goes to the voider:
// a goroutine owned by the Backend that runs void.lua for it, with retries,
// until Redis answers. The script releases the ticket if it was granted
// (as a settle with zero use would, recording nothing) and otherwise
// leaves a tombstone that acquire.lua refuses, for an acquire still queued
// somewhere on its way to Redis.

// idTakenReply is acquire.lua's reply when its ticket key exists: the
// acquire reached Redis after it was voided.
const idTakenReply = -8

// voidRetention is how long a voided ticket's tombstone stays: far longer
// than an acquire can wait in a socket buffer or Redis's queue.
const voidRetention = 10 * time.Minute

// maxPendingVoids bounds the voider's memory in a long outage. A lost
// acquire it drops still releases its slot when its ticket expires.
const maxPendingVoids = 100_000

// voidBackoff bounds the wait between passes while Redis does not answer.
const (
	voidBackoffMin = 20 * time.Millisecond
	voidBackoffMax = 2 * time.Second
)

// voider holds the lost acquires' ticket ids, with the moment each ticket
// would have expired anyway (voiding it after that changes nothing a
// sweep does not), and the goroutine that voids them, started on first use.
type voider struct {
	mu      sync.Mutex
	pending map[string]time.Time
	wake    chan struct{}
	ctx     context.Context // the voider's own lifetime, canceled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closed  bool
}

// voidLater hands the ticket id of an acquire whose reply was lost to the
// voider; ttl is the ticket's (ns).
func (b *Backend) voidLater(id string, ttl int64) {
	v := &b.voids
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed || len(v.pending) >= maxPendingVoids {
		return
	}
	if v.pending == nil {
		v.pending = map[string]time.Time{}
		v.wake = make(chan struct{}, 1)
		v.ctx, v.cancel = context.WithCancel(context.Background())
		v.wg.Add(1)
		go b.voidLoop(v.ctx, v.wake)
	}
	v.pending[id] = time.Now().Add(time.Duration(ttl))
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

// PendingVoids returns how many lost acquires wait to be voided.
func (b *Backend) PendingVoids() int {
	v := &b.voids
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.pending)
}

// stopVoider stops the voider's goroutine and waits for it; it makes one
// last, bounded pass first.
func (b *Backend) stopVoider() {
	v := &b.voids
	v.mu.Lock()
	v.closed = true
	cancel := v.cancel
	v.mu.Unlock()
	if cancel != nil {
		cancel()
		v.wg.Wait()
	}
}

func (b *Backend) voidLoop(ctx context.Context, wake <-chan struct{}) {
	defer b.voids.wg.Done()
	var backoff time.Duration
	for {
		left, err := b.voidPass(ctx)
		if ctx.Err() != nil {
			break
		}
		var retry <-chan time.Time
		switch {
		case err != nil:
			backoff = min(max(2*backoff, voidBackoffMin), voidBackoffMax)
			retry = time.After(backoff)
		case left > 0:
			backoff = 0
			continue
		default:
			backoff = 0
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-retry:
		}
		if ctx.Err() != nil {
			break
		}
	}
	// Closing: one last pass, which stops at the first failure.
	final, cancel := context.WithTimeout(context.Background(), max(2*b.timeout, time.Second))
	defer cancel()
	b.voidPass(final)
}

// voidPass voids up to a batch of the pending ids, stopping at the first
// failure, and returns how many are left.
func (b *Backend) voidPass(ctx context.Context) (int, error) {
	const batch = 256
	v := &b.voids
	now := time.Now()
	ids := make([]string, 0, batch)
	v.mu.Lock()
	for id, until := range v.pending {
		if now.After(until) {
			delete(v.pending, id) // expired: a sweep releases it
			continue
		}
		if len(ids) < batch {
			ids = append(ids, id)
		}
	}
	v.mu.Unlock()
	for _, id := range ids {
		if err := b.void(ctx, id); err != nil {
			return b.PendingVoids(), err
		}
		v.mu.Lock()
		delete(v.pending, id)
		v.mu.Unlock()
	}
	return b.PendingVoids(), nil
}

// void runs void.lua for one ticket id.
func (b *Backend) void(ctx context.Context, id string) error {
	_, nowS, nowN := b.now()
	args := scriptArgs{nowS, nowN, b.prefixArg, b.baseArg, b.marginArg, voidRetention.Milliseconds()}
	_, err := b.run(ctx, op{"void", id}, voidScript, []string{b.key("t:", id)}, args)
	return err
}
