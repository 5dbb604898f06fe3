// Package admission owns the wait of governed work that cannot start only
// because a concurrency limit is full. Instead of refusing at once, such
// work joins the queue of the scope whose limit is full and waits, bounded
// (a maximum queue per scope and per flow, a maximum wait), for a slot.
// Queues serve plan classes strictly (high before normal before low: an
// arrival overtakes waiters of worse classes, never its own) and,
// within a class, flows fairly by round-robin: a user with 100
// queued runs gets one turn per round, like a user with one, so nobody is
// starved by a busier neighbour. A cancelled caller leaves at once.
//
// A turn is permission to try the admission again, not a slot: the quota
// engine stays the only judge of limits, so a turn that finds the limit
// still full (a slot taken by another instance) goes back to its place.
// Turns come from releases this instance sees (Released) and, for slots
// freed elsewhere (another instance, an expired lease), from the queue's
// head trying again every Poll.
//
// The queue is per instance: behind a load balancer each instance orders
// its own waiters, and a request arriving on an instance with no waiters
// for the scope tries the engine at once (docs/quota.md says what that
// means for fairness across instances).
package admission

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Options configure a Queue. Zero values pick the defaults.
type Options struct {
	// MaxQueue bounds the waiters of one scope, all classes (default 100);
	// negative disables queuing (every full limit refuses at once).
	MaxQueue int
	// MaxPerFlow bounds one flow's waiters in one scope (default 10), so
	// one user cannot fill a queue others need.
	MaxPerFlow int
	// MaxWait bounds a wait (default 30 s): then the refusal is returned.
	MaxWait time.Duration
	// Poll is how often the head of a queue tries again without a
	// release seen here (default 250 ms).
	Poll time.Duration
	// Now and Timer are the clock (tests pass a fake). Timer returns a
	// channel that fires after d and a stop function.
	Now   func() time.Time
	Timer func(d time.Duration) (<-chan time.Time, func() bool)
	// OnDone, when set, hears how each wait ended: "admitted", "refused"
	// (the engine said no for another reason), "timeout", "full",
	// "cancelled".
	OnDone func(class Class, waited time.Duration, outcome string)

	// Board, when set, is the queue order shared with the other
	// instances (Redis): a scope's waiters on every instance are served
	// as one fair queue, in the board's order, and an arrival waits
	// behind waiters of any instance. Run must be running.
	Board Board
	// Instance names this instance in the board's waiter ids.
	Instance string
	// OnBoardError, when set, hears a failed board call (the queue then
	// orders this instance's waiters alone until the board answers).
	OnBoardError func(error)

	fifo bool // tests: no fairness, the control
}

// Board is a queue order shared by instances. Waiter ids are unique
// across instances.
type Board interface {
	// Join enters a waiter of user in class c on scope's queue.
	Join(ctx context.Context, scope, id, user string, c Class) error
	// Leave takes a waiter out: served (admitted) or gone unserved.
	Leave(ctx context.Context, scope, id string, served bool) error
	// Heads returns the first n waiters of scope's queue, in order.
	Heads(ctx context.Context, scope string, n int) ([]string, error)
	// Touch renews this instance's waiters, whose entries otherwise
	// expire (an instance that died leaves no waiter behind for long).
	Touch(ctx context.Context, scope string, ids []string) error
	// Active returns the scopes with waiters on some instance.
	Active(ctx context.Context) (map[string]bool, error)
}

// Queue holds the waiting requests of every scope. Safe for concurrent use.
type Queue struct {
	o      Options
	mu     sync.Mutex
	scopes map[string]*scopeQueue
	seq    uint64
	// With a board: the scopes with waiters on other instances (as the
	// loop last read them), and the loop's wake-up.
	remote map[string]bool
	wake   chan struct{}
}

type scopeQueue struct {
	fq    fairQueue
	turns int                // turns granted and not yet resolved
	ids   map[string]*waiter // with a board: this instance's waiters by id
}

// New returns a queue.
func New(o Options) *Queue {
	if o.MaxQueue == 0 {
		o.MaxQueue = 100
	}
	if o.MaxPerFlow <= 0 {
		o.MaxPerFlow = 10
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 30 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timer == nil {
		o.Timer = func(d time.Duration) (<-chan time.Time, func() bool) {
			t := time.NewTimer(d)
			return t.C, t.Stop
		}
	}
	return &Queue{o: o, scopes: map[string]*scopeQueue{}, wake: make(chan struct{}, 1)}
}

// Arrival is a request that may have to wait.
type Arrival struct {
	// Scopes are the keys of the request's chain: it waits behind the
	// waiters of any of them.
	Scopes []string
	// Flow is whom fairness counts by (the user).
	Flow  string
	Class Class
}

// Waited says how a request waited.
type Waited struct {
	Queued bool
	Scope  string        // the scope it waited on (the last, if several)
	Wait   time.Duration // how long it waited
	Ahead  int           // waiters ahead of it when it entered
}

// SetHeaders says on an admitted response how long it waited for a
// concurrency slot and how many were ahead of it when it joined
// (nothing when it did not wait).
func (wd Waited) SetHeaders(h http.Header) {
	if !wd.Queued {
		return
	}
	h.Set("X-Sluice-Queue-Wait-Ms", strconv.FormatInt(wd.Wait.Milliseconds(), 10))
	h.Set("X-Sluice-Queue-Ahead", strconv.Itoa(wd.Ahead))
}

// Note says, for a refusal's message, how the request fared in the queue
// ("" when err is no queue refusal).
func Note(err error) string {
	var qe *Error
	switch {
	case !errors.As(err, &qe):
		return ""
	case qe.Reason == ErrQueueFull:
		return "the queue for a slot there is full"
	}
	return "waited " + quota.FormatWait(qe.Waited.Wait) + " in the queue for a slot"
}

// Outcomes of a wait that ended without admission.
var (
	ErrQueueFull = errors.New("admission queue full")
	ErrTimeout   = errors.New("waited the longest allowed for a slot")
)

// Error is a refusal after (or instead of) a wait: Err is the engine's
// refusal (a *quota.Denial), Reason ErrQueueFull or ErrTimeout.
type Error struct {
	Err    error
	Reason error
	Waited Waited
}

func (e *Error) Error() string {
	if e.Reason == ErrQueueFull {
		return fmt.Sprintf("%v (the queue for %s is full)", e.Err, e.Waited.Scope)
	}
	return fmt.Sprintf("%v (waited %s for a slot)", e.Err, quota.FormatWait(e.Waited.Wait))
}

// Unwrap returns both the refusal and the reason.
func (e *Error) Unwrap() []error { return []error{e.Err, e.Reason} }

// Try is one attempt to admit. full names the scope whose concurrency
// limit refused it ("" when it was admitted or refused for anything else,
// then err is the outcome).
type Try func() (full string, err error)

// Do admits a request through try, waiting while it is refused only for a
// full concurrency limit. A request arriving while others wait on a scope
// of its chain waits behind them without trying first. It returns try's
// last outcome: nil when admitted, the refusal otherwise (an *Error when
// the queue was full or the wait ran out), or the context's error.
func (q *Queue) Do(ctx context.Context, a Arrival, try Try) (Waited, error) {
	var wd Waited
	scope := q.waitingAt(a.Scopes, a.Class)
	var last error
	if scope == "" || q.o.MaxQueue < 0 {
		full, err := try()
		if full == "" || q.o.MaxQueue < 0 {
			return wd, err
		}
		scope, last = full, err
	}
	start := q.o.Now()
	deadline := start.Add(q.o.MaxWait)
	var w *waiter
	for {
		if w == nil {
			var ahead int
			var err error
			if w, ahead, err = q.enter(scope, a); err != nil {
				wd.Scope = scope
				if last == nil {
					// Queued behind others without a refusal of its own:
					// try once rather than refuse on a guess.
					full, terr := try()
					if full == "" {
						return wd, terr
					}
					last = terr
				}
				q.report(a.Class, 0, "full")
				return wd, &Error{Err: last, Reason: ErrQueueFull, Waited: wd}
			}
			if q.o.Board != nil {
				q.join(scope, w, a)
			}
			if !wd.Queued {
				wd.Ahead = ahead
			}
			wd.Queued, wd.Scope = true, scope
		}
		err := q.await(ctx, scope, w, deadline)
		wd.Wait = q.o.Now().Sub(start)
		if err != nil {
			q.leave(scope, w)
			if errors.Is(err, ErrTimeout) {
				q.report(a.Class, wd.Wait, "timeout")
				if last == nil {
					last = err
				}
				return wd, &Error{Err: last, Reason: ErrTimeout, Waited: wd}
			}
			q.report(a.Class, wd.Wait, "cancelled")
			return wd, err
		}
		full, err := try()
		switch {
		case full == "":
			q.leaveServed(scope, w, err == nil)
			outcome := "admitted"
			if err != nil {
				outcome = "refused"
			}
			q.report(a.Class, wd.Wait, outcome)
			return wd, err
		case full == scope:
			q.back(scope, w) // still full: its place again
		default:
			q.leave(scope, w) // full elsewhere in the chain: wait there
			w, scope = nil, full
		}
		last = err
	}
}

func (q *Queue) report(c Class, d time.Duration, outcome string) {
	if q.o.OnDone != nil {
		q.o.OnDone(c, d, outcome)
	}
}

// waitingAt returns the first scope of scopes where waiters of class c or
// a better one wait, or "": an arrival overtakes only worse classes.
func (q *Queue) waitingAt(scopes []string, c Class) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.scopes) == 0 && len(q.remote) == 0 {
		return ""
	}
	for _, s := range scopes {
		if q.remote[s] {
			return s // waiters elsewhere: behind them
		}
		sq := q.scopes[s]
		if sq == nil {
			continue
		}
		for k := range sq.fq.classes[:c+1] {
			if len(sq.fq.classes[k].ring) > 0 {
				return s
			}
		}
	}
	return ""
}

// enter queues a waiter on scope, or reports ErrQueueFull.
func (q *Queue) enter(scope string, a Arrival) (*waiter, int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	sq := q.scopes[scope]
	if sq == nil {
		sq = &scopeQueue{ids: map[string]*waiter{}}
		sq.fq.fifo = q.o.fifo
		q.scopes[scope] = sq
	}
	if sq.fq.n+sq.turns >= q.o.MaxQueue || sq.fq.flowQueued(a.Class, a.Flow) >= q.o.MaxPerFlow {
		q.dropIfIdle(scope, sq)
		return nil, 0, ErrQueueFull
	}
	q.seq++
	w := &waiter{flow: a.Flow, class: a.Class, at: q.o.Now(), turn: make(chan struct{}, 1)}
	sq.fq.push(w, q.seq)
	ahead := sq.fq.position(w) + sq.turns
	if q.o.Board != nil {
		w.id = q.o.Instance + ":" + strconv.FormatUint(q.seq, 10)
		sq.ids[w.id] = w
	}
	return w, ahead, nil
}

// join enters w on the board (outside the lock); the loop serves it once
// the board names it the head.
func (q *Queue) join(scope string, w *waiter, a Arrival) {
	ctx, cancel := context.WithTimeout(context.Background(), boardTimeout)
	defer cancel()
	if err := q.o.Board.Join(ctx, scope, w.id, a.Flow, a.Class); err != nil {
		q.boardError(err)
	}
	q.poke()
}

// boardTimeout bounds one board call.
const boardTimeout = 2 * time.Second

func (q *Queue) boardError(err error) {
	if q.o.OnBoardError != nil {
		q.o.OnBoardError(err)
	}
}

// poke wakes the loop.
func (q *Queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// await blocks until w holds a turn, the deadline passes (ErrTimeout) or
// ctx ends.
func (q *Queue) await(ctx context.Context, scope string, w *waiter, deadline time.Time) error {
	for {
		left := deadline.Sub(q.o.Now())
		if left <= 0 {
			return ErrTimeout
		}
		c, stop := q.o.Timer(min(left, q.o.Poll))
		select {
		case <-w.turn:
			stop()
			return nil
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-c:
		}
		// No release seen here for a while: the head tries again, in case
		// a slot was freed where this instance cannot see it. With a
		// board the loop does that, in the board's order.
		q.mu.Lock()
		sq := q.scopes[scope]
		if q.o.Board == nil && !w.granted && sq.turns == 0 && sq.fq.peek() == w {
			sq.fq.take()
			w.granted = true
			sq.turns++
			q.mu.Unlock()
			return nil
		}
		q.mu.Unlock()
	}
}

// Released tells the queue that slots were freed on the scopes of a
// settled ticket: each scope's next waiter gets a turn.
func (q *Queue) Released(scopes []string) {
	if q.o.Board != nil {
		q.poke() // the board says whose turn it is
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.scopes) == 0 {
		return
	}
	for _, s := range scopes {
		if sq := q.scopes[s]; sq != nil {
			q.grant(sq)
		}
	}
}

// grant gives the next waiter of sq a turn (q.mu held).
func (q *Queue) grant(sq *scopeQueue) {
	w := sq.fq.take()
	if w == nil {
		return
	}
	w.granted = true
	sq.turns++
	w.turn <- struct{}{} // buffered: a waiter holds at most one turn
}

// back puts w, refused again, back at its place.
func (q *Queue) back(scope string, w *waiter) {
	q.mu.Lock()
	defer q.mu.Unlock()
	sq := q.scopes[scope]
	if w.granted {
		w.granted = false
		sq.turns--
	}
	select {
	case <-w.turn:
	default:
	}
	sq.fq.back(w)
}

// leave takes w out of scope's queue for good. A turn it held and did not
// use (it was cancelled or timed out holding it) passes to the next.
func (q *Queue) leave(scope string, w *waiter) { q.leaveServed(scope, w, false) }

// leaveServed is leave, telling the board whether w was served.
func (q *Queue) leaveServed(scope string, w *waiter, served bool) {
	if q.o.Board != nil && w.id != "" {
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), boardTimeout)
			defer cancel()
			if err := q.o.Board.Leave(ctx, scope, w.id, served); err != nil {
				q.boardError(err)
			}
			q.poke()
		}()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	sq := q.scopes[scope]
	delete(sq.ids, w.id)
	unused := false
	select {
	case <-w.turn:
		unused = true // granted as it gave up
	default:
	}
	if w.granted {
		w.granted = false
		sq.turns--
	} else {
		sq.fq.remove(w)
	}
	sq.fq.done(w)
	if unused && q.o.Board == nil {
		q.grant(sq)
	}
	q.dropIfIdle(scope, sq)
}

// dropIfIdle forgets a scope with nobody waiting (q.mu held).
func (q *Queue) dropIfIdle(scope string, sq *scopeQueue) {
	if sq.fq.n == 0 && sq.turns == 0 {
		delete(q.scopes, scope)
	}
}

// State is a scope's queue as a caller sees it.
type State struct {
	Scope   string        `json:"scope"`
	Waiting int           `json:"waiting"`
	Oldest  time.Duration `json:"-"`
	// OldestWaitMS is how long the longest waiter has waited.
	OldestWaitMS int64 `json:"oldest_wait_ms"`
	// Mine are the asker's own waiters (flow), first come first: how many
	// are served before each, as the queue stands now.
	Mine []int `json:"mine,omitempty"`
}

// States reports the queues of the given scopes that have waiters, with
// flow's own waiters' places in them (flow: a user id, or "key/" and a
// key id, as the meter queues them; "" for none).
func (q *Queue) States(scopes []string, flow string) []State {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []State
	now := q.o.Now()
	for _, s := range scopes {
		sq := q.scopes[s]
		if sq == nil {
			continue
		}
		st := State{Scope: s, Waiting: sq.fq.n + sq.turns}
		for c := range sq.fq.classes {
			for _, fl := range sq.fq.classes[c].ring {
				st.Oldest = max(st.Oldest, now.Sub(fl.ws[0].at))
			}
		}
		st.OldestWaitMS = st.Oldest.Milliseconds()
		if flow != "" {
			for c := range sq.fq.classes {
				if fl := sq.fq.classes[c].flows[sq.fq.flowOf(&waiter{flow: flow})]; fl != nil {
					for _, w := range fl.ws {
						if w.flow == flow {
							st.Mine = append(st.Mine, sq.fq.position(w)+sq.turns)
						}
					}
				}
			}
		}
		out = append(out, st)
	}
	return out
}

// Len reports how many requests wait, on every scope.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, sq := range q.scopes {
		n += sq.fq.n + sq.turns
	}
	return n
}

// Run serves the board's order until ctx ends (only with a board): on
// every wake-up (an arrival, a release, a waiter leaving) and every Poll,
// it reads which scopes wait anywhere (for arrivals to queue behind them),
// renews this instance's waiters, and gives a turn to each local waiter
// the board names the head of its scope. When the board cannot be read,
// the scope's local head gets the turn (this instance alone is ordered,
// as without a board).
func (q *Queue) Run(ctx context.Context) {
	if q.o.Board == nil {
		return
	}
	for {
		q.serve(ctx)
		c, stop := q.o.Timer(q.o.Poll)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-q.wake:
			stop()
		case <-c:
		}
	}
}

// serve is one round of Run.
func (q *Queue) serve(ctx context.Context) {
	bctx, cancel := context.WithTimeout(ctx, boardTimeout)
	defer cancel()
	active, err := q.o.Board.Active(bctx)
	if err != nil {
		q.boardError(err)
	}
	q.mu.Lock()
	q.remote = active
	type local struct {
		scope string
		ids   []string
	}
	var todo []local
	for s, sq := range q.scopes {
		if sq.fq.n == 0 {
			continue
		}
		l := local{scope: s}
		for id, w := range sq.ids {
			if w.in {
				l.ids = append(l.ids, id)
			}
		}
		todo = append(todo, l)
	}
	q.mu.Unlock()
	for _, l := range todo {
		if err := q.o.Board.Touch(bctx, l.scope, l.ids); err != nil {
			q.boardError(err)
		}
		heads, err := q.o.Board.Heads(bctx, l.scope, 1)
		q.mu.Lock()
		sq := q.scopes[l.scope]
		switch {
		case sq == nil:
		case err != nil || len(heads) == 0:
			// The board is away, or lost this scope's waiters (Redis
			// restarted empty): order this instance's own.
			if err != nil {
				q.boardError(err)
			}
			if sq.turns == 0 {
				q.grant(sq)
			}
		default:
			if w := sq.ids[heads[0]]; w != nil && w.in {
				sq.fq.remove(w)
				w.granted = true
				sq.turns++
				w.turn <- struct{}{}
			}
		}
		q.mu.Unlock()
	}
}
