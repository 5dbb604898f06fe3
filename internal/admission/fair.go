package admission

import "time"

// Class is a scheduling class: the plan's priority. A lower Class is
// served first; classes are strict (every waiter of a class is served
// before any of the next).
type Class uint8

// The classes, in the order they are served.
const (
	ClassHigh Class = iota
	ClassNormal
	ClassLow
	numClasses
)

// String names the class as plans do ("high", "normal", "low").
func (c Class) String() string {
	switch c {
	case ClassHigh:
		return "high"
	case ClassNormal:
		return "normal"
	case ClassLow:
		return "low"
	}
	return "unknown"
}

// waiter is one queued request.
type waiter struct {
	id    string // with a board: unique across instances
	flow  string
	class Class
	seq   uint64
	at    time.Time // when it entered
	in    bool      // in its flow's queue (not holding a turn, not gone)
	turn  chan struct{}
	// granted is set while the waiter holds a turn (under the queue's
	// lock): it is out of its flow's queue, trying to acquire.
	granted bool
}

// fairQueue orders the waiters of one scope: by class, strictly, then
// round-robin over flows, each flow's waiters first come first served. A
// flow with many queued requests gets one turn per round, like a flow with
// one; a flow that starts waiting joins the end of the current round. A
// waiter that gives up takes nothing from its flow's later turns (no debt,
// unlike fair queuing by arrival tags). It is a plain data structure:
// Queue locks it.
type fairQueue struct {
	classes [numClasses]classQueue
	n       int // waiters in flow queues
	// fifo disables fairness (one flow for everyone: first come, first
	// served): the control that shows what the round-robin changes.
	fifo bool
}

type classQueue struct {
	flows map[string]*flowQueue
	ring  []*flowQueue // flows with waiters, in service order
	next  int          // the ring's next flow to serve
	// queued counts each flow's waiters, queued or holding a turn.
	queued map[string]int
}

type flowQueue struct {
	name string
	ws   []*waiter
}

func (f *fairQueue) class(c Class) *classQueue {
	q := &f.classes[c]
	if q.flows == nil {
		q.flows = map[string]*flowQueue{}
		q.queued = map[string]int{}
	}
	return q
}

func (f *fairQueue) flowOf(w *waiter) string {
	if f.fifo {
		return ""
	}
	return w.flow
}

// flowQueued returns how many of flow's waiters are queued in class c.
func (f *fairQueue) flowQueued(c Class, flow string) int { return f.class(c).queued[flow] }

// push queues w at the end of its flow's queue; a flow not in the ring
// joins it at the end of the current round.
func (f *fairQueue) push(w *waiter, seq uint64) {
	q := f.class(w.class)
	w.seq = seq
	q.queued[w.flow]++
	fl := q.flows[f.flowOf(w)]
	if fl == nil {
		fl = &flowQueue{name: f.flowOf(w)}
		q.flows[fl.name] = fl
	}
	if len(fl.ws) == 0 {
		q.join(fl, false)
	}
	fl.ws = append(fl.ws, w)
	w.in = true
	f.n++
}

// join puts fl in the ring: served next when first, else last in the
// current round.
func (q *classQueue) join(fl *flowQueue, first bool) {
	at := q.next
	q.ring = append(q.ring, nil)
	copy(q.ring[at+1:], q.ring[at:])
	q.ring[at] = fl
	if !first {
		q.next++
	}
	if q.next >= len(q.ring) {
		q.next = 0
	}
}

// quit takes the flow at ring index i out of the ring.
func (q *classQueue) quit(i int) {
	q.ring = append(q.ring[:i], q.ring[i+1:]...)
	if i < q.next {
		q.next--
	}
	if q.next >= len(q.ring) {
		q.next = 0
	}
	if fl := q.ring; len(fl) == 0 {
		q.next = 0
	}
}

// peek returns the next waiter to serve, or nil.
func (f *fairQueue) peek() *waiter {
	for c := range f.classes {
		if q := &f.classes[c]; len(q.ring) > 0 {
			return q.ring[q.next].ws[0]
		}
	}
	return nil
}

// take removes the next waiter to serve and moves its class's round on.
// The waiter still counts as queued for its flow (holding a turn) until
// done or back.
func (f *fairQueue) take() *waiter {
	for c := range f.classes {
		q := &f.classes[c]
		if len(q.ring) == 0 {
			continue
		}
		fl := q.ring[q.next]
		w := fl.ws[0]
		fl.ws[0] = nil
		fl.ws = fl.ws[1:]
		if len(fl.ws) == 0 {
			q.quit(q.next)
		} else {
			q.next = (q.next + 1) % len(q.ring)
		}
		w.in = false
		f.n--
		return w
	}
	return nil
}

// back puts a waiter that held a turn, and was refused again, back at the
// head of its flow, whose turn comes next.
func (f *fairQueue) back(w *waiter) {
	q := f.class(w.class)
	fl := q.flows[f.flowOf(w)]
	if fl == nil {
		fl = &flowQueue{name: f.flowOf(w)}
		q.flows[fl.name] = fl
	}
	if len(fl.ws) == 0 {
		q.join(fl, true)
	} else {
		for i, r := range q.ring {
			if r == fl {
				q.next = i
			}
		}
	}
	fl.ws = append([]*waiter{w}, fl.ws...)
	w.in = true
	f.n++
}

// remove takes w out of its flow's queue if it is there.
func (f *fairQueue) remove(w *waiter) {
	if !w.in {
		return
	}
	q := f.class(w.class)
	fl := q.flows[f.flowOf(w)]
	for i, o := range fl.ws {
		if o == w {
			fl.ws = append(fl.ws[:i], fl.ws[i+1:]...)
			break
		}
	}
	if len(fl.ws) == 0 {
		for i, r := range q.ring {
			if r == fl {
				q.quit(i)
				break
			}
		}
	}
	w.in = false
	f.n--
}

// done forgets w (served, refused for another reason, or gone).
func (f *fairQueue) done(w *waiter) {
	q := f.class(w.class)
	if q.queued[w.flow]--; q.queued[w.flow] <= 0 {
		delete(q.queued, w.flow)
	}
	if fl := q.flows[f.flowOf(w)]; fl != nil && len(fl.ws) == 0 && q.queued[fl.name] == 0 {
		delete(q.flows, fl.name)
	}
}

// position is how many waiters would be served before w, were no more to
// come: every better class, and in its class one per flow per round.
func (f *fairQueue) position(w *waiter) int {
	n := 0
	for c := range f.classes[:w.class] {
		n += len(f.classes[c].ring) // at least one round of each
		for _, fl := range f.classes[c].ring {
			n += len(fl.ws) - 1
		}
	}
	q := &f.classes[w.class]
	mine, k := -1, 0
	for i, fl := range q.ring {
		for j, o := range fl.ws {
			if o == w {
				mine, k = i, j
			}
		}
	}
	if mine < 0 {
		return n
	}
	for i, fl := range q.ring {
		// Flows served before w's in its round: those from next up to it.
		before := (i-q.next+len(q.ring))%len(q.ring) < (mine-q.next+len(q.ring))%len(q.ring)
		take := k
		if before {
			take++
		}
		n += min(len(fl.ws), take)
	}
	return n
}
