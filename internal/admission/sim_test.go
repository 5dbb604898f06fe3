package admission

import (
	"fmt"
	"testing"
)

// The simulations below drive the queue's ordering (fairQueue) on a
// discrete clock: no goroutines, no sleeps, the same result on every
// machine. A scope has limit slots; each flow submits a run every period
// ticks that holds a slot for hold ticks. A run that finds the slots full
// queues (bounded per scope and per flow, as Queue bounds them) and is
// given up once it has waited maxWait ticks.

type simFlow struct {
	name   string
	class  Class
	period int // ticks between submissions
	offset int
}

type simResult struct {
	submitted, served, refused, timedOut map[string]int
	waitSum                              map[string]int
	// violations counts starts of a waiter while one of a better class
	// waited.
	violations int
}

type simConfig struct {
	limit, hold, maxWait, ticks int
	maxQueue, maxPerFlow        int
	fifo                        bool
}

func simulate(cfg simConfig, flows []simFlow) simResult {
	r := simResult{submitted: map[string]int{}, served: map[string]int{}, refused: map[string]int{}, timedOut: map[string]int{}, waitSum: map[string]int{}}
	fq := fairQueue{fifo: cfg.fifo}
	var ends []int // end tick of each running run
	type meta struct {
		at int
	}
	born := map[*waiter]meta{}
	var seq uint64
	start := func(w *waiter, now int) {
		r.served[w.flow]++
		r.waitSum[w.flow] += now - born[w].at
		delete(born, w)
		fq.done(w)
		ends = append(ends, now+cfg.hold)
	}
	for now := 0; now < cfg.ticks; now++ {
		// Runs ending now free their slots.
		kept := ends[:0]
		for _, e := range ends {
			if e > now {
				kept = append(kept, e)
			}
		}
		ends = kept
		// Waiters past their wait give up.
		for w, m := range born {
			if now-m.at > cfg.maxWait {
				fq.remove(w)
				fq.done(w)
				delete(born, w)
				r.timedOut[w.flow]++
			}
		}
		// Free slots go to the queue, in its order.
		for len(ends) < cfg.limit {
			w := fq.take()
			if w == nil {
				break
			}
			if b := fq.peek(); b != nil && b.class < w.class {
				r.violations++
			}
			start(w, now)
		}
		// Arrivals.
		for _, f := range flows {
			if (now+f.offset)%f.period != 0 {
				continue
			}
			r.submitted[f.name]++
			if fq.n == 0 && len(ends) < cfg.limit {
				r.served[f.name]++
				ends = append(ends, now+cfg.hold)
				continue
			}
			if fq.n >= cfg.maxQueue || fq.flowQueued(f.class, f.name) >= cfg.maxPerFlow {
				r.refused[f.name]++
				continue
			}
			seq++
			w := &waiter{flow: f.name, class: f.class}
			fq.push(w, seq)
			born[w] = meta{at: now}
		}
	}
	return r
}

var simBase = simConfig{limit: 10, hold: 100, maxWait: 60, ticks: 200_000, maxQueue: 100, maxPerFlow: 10}

// Five users of one class each asking for more than the scope can give:
// each gets within ±10% of a fifth.
func TestFairShareEqualUsers(t *testing.T) {
	var flows []simFlow
	for i := range 5 {
		flows = append(flows, simFlow{name: fmt.Sprintf("u%d", i), class: ClassNormal, period: 5 + i, offset: i})
	}
	r := simulate(simBase, flows)
	total := 0
	for _, f := range flows {
		total += r.served[f.name]
	}
	fair := float64(total) / float64(len(flows))
	for _, f := range flows {
		got := float64(r.served[f.name])
		if got < 0.9*fair || got > 1.1*fair {
			t.Errorf("%s served %.0f runs, the fair share is %.0f (±10%%): %v", f.name, got, fair, r.served)
		}
	}
	t.Logf("served %v of %d (fair share %.0f)", r.served, total, fair)
}

// A light user (a fifth of the scope's capacity) beside a user sending
// ten times more: with fair queuing the light user gets at least 95% of
// what it gets alone; the control, first come first served with the same
// bounds, shows that the queue is what makes the difference.
func TestFairLightUserBesideHeavyUser(t *testing.T) {
	light := simFlow{name: "light", class: ClassNormal, period: 50}
	heavy := simFlow{name: "heavy", class: ClassNormal, period: 5, offset: 1}
	alone := simulate(simBase, []simFlow{light})
	fair := simulate(simBase, []simFlow{light, heavy})
	fifoCfg := simBase
	fifoCfg.fifo = true
	fifo := simulate(fifoCfg, []simFlow{light, heavy})

	share := func(r simResult) float64 { return float64(r.served["light"]) / float64(alone.served["light"]) }
	t.Logf("light alone: %d served; beside heavy: fair %d (%.1f%%, mean wait %d), fifo %d (%.1f%%, %d timed out)",
		alone.served["light"], fair.served["light"], 100*share(fair), fair.waitSum["light"]/max(fair.served["light"], 1),
		fifo.served["light"], 100*share(fifo), fifo.timedOut["light"])
	if alone.served["light"] != alone.submitted["light"] {
		t.Fatalf("alone, the light user should get everything: %d of %d", alone.served["light"], alone.submitted["light"])
	}
	if share(fair) < 0.95 {
		t.Errorf("beside a heavy user, the light user got %.1f%% of what it gets alone, want >= 95%%", 100*share(fair))
	}
	if share(fifo) >= 0.95 {
		t.Errorf("control: first come first served gave the light user %.1f%%: the test cannot tell fair queuing from none", 100*share(fifo))
	}
	if fair.served["heavy"]+fair.served["light"] < fifo.served["heavy"]+fifo.served["light"]-2 {
		t.Errorf("fair queuing served %d runs in all, first come first served %d: fairness should not waste slots",
			fair.served["heavy"]+fair.served["light"], fifo.served["heavy"]+fifo.served["light"])
	}
}

// A user with 100 runs queued cannot starve a user with one.
func TestFairOneRunBehindAHundred(t *testing.T) {
	fq := fairQueue{}
	var seq uint64
	for range 100 {
		seq++
		fq.push(&waiter{flow: "busy", class: ClassNormal}, seq)
	}
	seq++
	one := &waiter{flow: "one", class: ClassNormal}
	fq.push(one, seq)
	if p := fq.position(one); p > 1 {
		t.Errorf("the one run is %d in line behind a user with 100 queued, want at most 1", p)
	}
	for i := 0; ; i++ {
		w := fq.take()
		if w == one {
			if i > 1 {
				t.Errorf("the one run was served after %d of the busy user's", i)
			}
			break
		}
		fq.done(w)
	}
}

// Classes are strict: no normal run starts while a high one waits, and
// the high class's waits stay short under a flood of normal and low runs.
func TestPriorityClassesServedInOrder(t *testing.T) {
	flows := []simFlow{
		{name: "enterprise", class: ClassHigh, period: 20},
		{name: "pro", class: ClassNormal, period: 4, offset: 1},
		{name: "free", class: ClassLow, period: 4, offset: 2},
	}
	// Waits up to one run's length: every slot may be held by runs that
	// started together, and nothing preempts a running run.
	cfg := simBase
	cfg.maxWait = cfg.hold + 10
	r := simulate(cfg, flows)
	t.Logf("served %v; timed out %v; refused %v; mean wait enterprise %d, pro %d, free %d", r.served, r.timedOut, r.refused,
		r.waitSum["enterprise"]/max(r.served["enterprise"], 1), r.waitSum["pro"]/max(r.served["pro"], 1), r.waitSum["free"]/max(r.served["free"], 1))
	if r.violations > 0 {
		t.Errorf("%d runs started while a run of a better class waited", r.violations)
	}
	if r.timedOut["enterprise"]+r.refused["enterprise"] > 0 || r.served["enterprise"] < r.submitted["enterprise"]-cfg.limit {
		t.Errorf("enterprise: %d of %d served, %d timed out, %d refused", r.served["enterprise"], r.submitted["enterprise"],
			r.timedOut["enterprise"], r.refused["enterprise"])
	}
	if r.served["pro"] <= r.served["free"] {
		t.Errorf("pro served %d, free %d: the normal class should come first", r.served["pro"], r.served["free"])
	}
}

// The per-flow bound keeps one user from filling the queue: the light
// user's runs are never refused for a full queue.
func TestQueueBoundPerFlow(t *testing.T) {
	cfg := simBase
	cfg.maxQueue = 20
	cfg.maxPerFlow = 10
	r := simulate(cfg, []simFlow{{name: "light", class: ClassNormal, period: 50}, {name: "heavy", class: ClassNormal, period: 1, offset: 1}})
	if r.refused["light"] != 0 {
		t.Errorf("the light user was refused %d times for a full queue", r.refused["light"])
	}
	if r.refused["heavy"] == 0 {
		t.Errorf("the heavy user was never refused: the bound did not hold")
	}
}
