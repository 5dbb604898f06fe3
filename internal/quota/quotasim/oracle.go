package quotasim

import (
	"cmp"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Invariant names, as Violation.Invariant reports them.
const (
	InvRequests    = "requests"
	InvTokensRate  = "tokens_rate"
	InvTokensDay   = "tokens/day"
	InvTokensMonth = "tokens/month"
	InvGPU         = "gpu_millis/month"
	InvCost        = "cost/month"
	InvConcurrency = "concurrency"
)

var budgetNames = [4]string{InvTokensDay, InvTokensMonth, InvGPU, InvCost}

// Violation is one breach of a limit that the oracle observed.
type Violation struct {
	Invariant string
	Scope     string
	// At is when it was observed, from the start of the run; for a rate,
	// Since is the start of the window [Since, At] that held too much.
	At, Since time.Duration
	// Got is what was admitted (a rate's units in the window, a budget's
	// settled use plus live reservations, the slots held); Bound what the
	// limit allows there (for budgets including the overrun allowance).
	Got, Bound float64
}

// Excess is by how much Got passed Bound.
func (v Violation) Excess() float64 { return v.Got - v.Bound }

func (v Violation) String() string {
	w := ""
	if v.Invariant == InvRequests || v.Invariant == InvTokensRate {
		w = fmt.Sprintf(" in [%v, %v]", v.Since, v.At)
	} else {
		w = fmt.Sprintf(" at %v", v.At)
	}
	return fmt.Sprintf("%s %s%s: got %.1f, bound %.1f (excess %.1f)", v.Scope, v.Invariant, w, v.Got, v.Bound, v.Excess())
}

// Breach sums up the violations of one invariant on one scope.
type Breach struct {
	Count int
	Worst Violation
}

// ledger is the usage ledger: one event per acknowledged settlement, as the
// usage store records them; a rebuild sums it.
type ledger struct {
	mu     sync.Mutex
	events []usageEvent
}

type usageEvent struct {
	at    time.Time
	chain []quota.Scope
	u     quota.Usage
}

type restored struct {
	key   string
	d     quota.Dimension
	w     quota.Window
	start time.Time
	used  int64
}

func (l *ledger) add(at time.Time, chain []quota.Scope, u quota.Usage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, usageEvent{at, chain, u})
}

// sums returns each scope's budgets in the windows current at now (UTC).
func (l *ledger) sums(now time.Time) []restored {
	l.mu.Lock()
	defer l.mu.Unlock()
	day, month := dayStart(now), monthStart(now)
	type sum struct{ day, month, gpu, cost int64 }
	m := map[string]*sum{}
	for _, e := range l.events {
		if e.at.Before(month) || e.at.After(now) {
			continue
		}
		tokens := e.u.InputTokens + e.u.OutputTokens
		for _, sc := range e.chain {
			s := m[sc.Key]
			if s == nil {
				s = &sum{}
				m[sc.Key] = s
			}
			if !e.at.Before(day) {
				s.day += tokens
			}
			s.month += tokens
			s.gpu += e.u.GPUMillis
			s.cost += e.u.CostMicros
		}
	}
	var out []restored
	for _, k := range slices.Sorted(mapsKeys(m)) {
		s := m[k]
		out = append(out,
			restored{k, quota.DimTokens, quota.WindowDay, day, s.day},
			restored{k, quota.DimTokens, quota.WindowMonth, month, s.month},
			restored{k, quota.DimGPUSeconds, quota.WindowMonth, month, s.gpu},
			restored{k, quota.DimCost, quota.WindowMonth, month, s.cost})
	}
	return out
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func dayStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// oracle is told every admission, settlement and heartbeat as the clients
// saw them and checks the limits in the order the store could have
// decided them. Each call is an interval [start, ack]: a release (settle)
// counts from its start and a hold (admission) from its ack, the lenient
// ends, so that a correct engine is never blamed for latency; a rate
// charge counts when the store issued the ticket if it did (exact), else
// at the ack. Events wait until no call in flight could still produce an
// earlier one (a watermark), then are applied in time order.
type oracle struct {
	mu       sync.Mutex
	start    time.Time
	scopes   map[string]*scopeCheck
	tickets  map[string]*oticket
	inflight map[uint64]time.Time
	seq      uint64
	pending  []event
	digest   uint64
	rep      *Report
}

type oticket struct {
	id      string
	chain   []*scopeCheck
	ask     quota.Ask
	tokens  int64 // reserved
	decided time.Time
	expires time.Time
	windows [4]time.Time // the windows its reservations went to
	settled bool
	// fromStore: the store issued it, and refunds its tokens_rate when
	// it settles it; else the engine's own counters did, at the settle.
	fromStore bool
}

func (t *oticket) reserved(m int) int64 {
	switch m {
	case 0, 1:
		return t.tokens
	case 2:
		return t.ask.GPUMillis
	}
	return t.ask.CostMicros
}

func usageOf(u quota.Usage, m int) int64 {
	switch m {
	case 0, 1:
		return u.InputTokens + u.OutputTokens
	case 2:
		return u.GPUMillis
	}
	return u.CostMicros
}

func windowOf(t time.Time, m int) time.Time {
	if m == 0 {
		return dayStart(t)
	}
	return monthStart(t)
}

type scopeCheck struct {
	key     string
	rates   [2]*rateCheck // requests, tokens_rate
	budgets [4]*budgetCheck
	slots   int64 // concurrency bound, -1 if none
	live    map[*oticket]struct{}
}

type budgetCheck struct {
	limit        int64
	window       time.Time
	used, excess int64
}

type rateCheck struct {
	limit, burst, period int64
	cum                  int64
	min, minAt           int64
	have                 bool
}

type evKind uint8

const (
	evRelease evKind = iota // a settlement, at its start
	evExtend                // a heartbeat, at its ack
	evRefund                // a tokens_rate refund, when the store settles
	evRate                  // an admission's rate charge
	evHold                  // an admission's reservations and slot, at its ack
)

type event struct {
	at   time.Time
	kind evKind
	seq  uint64
	t    *oticket
	u    quota.Usage
	late bool
	exp  time.Time
	n    int64
}

func newOracle(start time.Time, scopes map[string]*quota.Limits, rep *Report) *oracle {
	o := &oracle{start: start, scopes: map[string]*scopeCheck{}, tickets: map[string]*oticket{}, inflight: map[uint64]time.Time{}, rep: rep,
		digest: 14695981039346656037}
	for key, l := range scopes {
		sc := &scopeCheck{key: key, slots: -1, live: map[*oticket]struct{}{}}
		if l != nil {
			for i, r := range [2]quota.Rate{l.Requests, l.TokensRate} {
				if !r.IsZero() {
					b := r.Burst
					if b == 0 {
						b = r.Limit
					}
					sc.rates[i] = &rateCheck{limit: r.Limit, burst: b, period: int64(r.Period)}
				}
			}
			for i, b := range [4]quota.Bound{l.TokensDay, l.TokensMonth, l.GPUMillisMonth, l.CostMicrosMonth} {
				if v, ok := b.Max(); ok {
					sc.budgets[i] = &budgetCheck{limit: v}
				}
			}
			if v, ok := l.Concurrency.Max(); ok {
				sc.slots = v
			}
		}
		o.scopes[key] = sc
	}
	return o
}

// begin opens a call at now and returns its id.
func (o *oracle) begin() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seq++
	o.inflight[o.seq] = time.Now()
	return o.seq
}

func (o *oracle) startOf(call uint64) time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.inflight[call]
}

// end closes a call, queueing its events, and applies what is final.
func (o *oracle) end(call uint64, evs ...event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.inflight, call)
	for _, e := range evs {
		o.seq++
		e.seq = o.seq
		o.pending = append(o.pending, e)
	}
	o.flush(false)
}

// flush applies the pending events that no call in flight can precede
// (all of them if all).
func (o *oracle) flush(all bool) {
	mark := time.Now().Add(time.Nanosecond)
	if !all {
		for _, s := range o.inflight {
			if s.Before(mark) {
				mark = s
			}
		}
	}
	slices.SortFunc(o.pending, func(a, b event) int {
		return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.kind, b.kind), cmp.Compare(a.seq, b.seq))
	})
	n := 0
	for n < len(o.pending) && (all || o.pending[n].at.Before(mark)) {
		o.apply(&o.pending[n])
		n++
	}
	o.pending = slices.Delete(o.pending, 0, n)
}

func (o *oracle) mix(v uint64) {
	o.digest ^= v
	o.digest *= 1099511628211
}

func (o *oracle) apply(e *event) {
	t := e.t
	at := e.at.Sub(o.start)
	o.mix(uint64(e.kind)<<56 ^ uint64(at))
	switch e.kind {
	case evRate:
		for _, sc := range t.chain {
			if r := sc.rates[0]; r != nil && t.ask.Requests > 0 {
				o.charge(sc, InvRequests, r, int64(at), t.ask.Requests)
			}
			if r := sc.rates[1]; r != nil && t.tokens > 0 {
				o.charge(sc, InvTokensRate, r, int64(at), t.tokens)
			}
		}
	case evHold:
		for _, sc := range t.chain {
			sc.live[t] = struct{}{}
		}
		for _, sc := range t.chain {
			o.checkHolds(sc, e.at, t)
		}
	case evExtend:
		if !t.settled {
			t.expires = e.exp // now+ttl: it may shorten the ticket's life
		}
	case evRelease:
		if t.settled {
			return
		}
		t.settled = true
		o.mix(uint64(e.u.InputTokens+e.u.OutputTokens)<<20 ^ uint64(e.u.GPUMillis)<<8 ^ uint64(e.u.CostMicros))
		for _, sc := range t.chain {
			delete(sc.live, t)
			for m, b := range sc.budgets {
				if b == nil {
					continue
				}
				b.roll(windowOf(e.at, m))
				use := usageOf(e.u, m)
				res := int64(0)
				if !e.late && t.windows[m].Equal(b.window) {
					res = t.reserved(m)
				}
				b.used += use
				b.excess += max(use-res, 0)
			}
		}
		if !t.fromStore && !e.late {
			o.refund(t, t.tokens-(e.u.InputTokens+e.u.OutputTokens))
		}
	case evRefund:
		o.refund(t, e.n)
	}
}

// refund gives back to tokens_rate the unused part of a reservation, when
// the engine that charged it did; an overrun is charged anyway, and is the
// allowance.
func (o *oracle) refund(t *oticket, n int64) {
	if n <= 0 {
		return
	}
	o.mix(uint64(n))
	for _, sc := range t.chain {
		if r := sc.rates[1]; r != nil {
			r.cum -= n
		}
	}
}

// storeSettled is told, under the store's lock, that the store settled a
// ticket: the moment its tokens_rate refund takes effect.
func (o *oracle) storeSettled(id string, st quota.Settlement) {
	if st.Late || st.Replay {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	t := o.tickets[id]
	if t == nil || !t.fromStore {
		return
	}
	o.seq++
	o.pending = append(o.pending, event{at: time.Now(), kind: evRefund, seq: o.seq, t: t,
		n: st.ReservedTokens - (st.Usage.InputTokens + st.Usage.OutputTokens)})
}

func (b *budgetCheck) roll(w time.Time) {
	if !b.window.Equal(w) {
		b.window, b.used, b.excess = w, 0, 0
	}
}

// checkHolds checks a scope's budgets and concurrency at at, after t's
// admission.
func (o *oracle) checkHolds(sc *scopeCheck, at time.Time, t *oticket) {
	var res [4]int64
	slots := int64(0)
	for lt := range sc.live {
		if !lt.expires.After(at) {
			delete(sc.live, lt)
			continue
		}
		for m := range res {
			if lt.windows[m].Equal(windowOf(at, m)) {
				res[m] += lt.reserved(m)
			}
		}
		if lt.ask.Concurrency {
			slots++
		}
	}
	rel := at.Sub(o.start)
	for m, b := range sc.budgets {
		if b == nil || t.reserved(m) == 0 {
			continue
		}
		b.roll(windowOf(at, m))
		if got, bound := b.used+res[m], b.limit+b.excess; got > bound {
			o.violate(Violation{Invariant: budgetNames[m], Scope: sc.key, At: rel, Got: float64(got), Bound: float64(bound)})
		}
	}
	if sc.slots >= 0 && t.ask.Concurrency && slots > sc.slots {
		o.violate(Violation{Invariant: InvConcurrency, Scope: sc.key, At: rel, Got: float64(slots), Bound: float64(sc.slots)})
	}
}

// charge adds n units admitted at t (ns from the start) to a rate and checks
// every window [t_i, t] that starts at an admission: units admitted in it
// ≤ burst + limit·(t-t_i)/period. Multiplied by the period, that is
// period·cum(t) - limit·t - min_i(period·cum(before t_i) - limit·t_i) ≤
// burst·period, so a running minimum checks them all at once.
func (o *oracle) charge(sc *scopeCheck, inv string, r *rateCheck, t, n int64) {
	pc, ok1 := mul(r.period, r.cum)
	lt, ok2 := mul(r.limit, t)
	if !ok1 || !ok2 {
		o.rep.Overflow = true
		return
	}
	if key := pc - lt; !r.have || key < r.min {
		r.min, r.minAt, r.have = key, t, true
	}
	r.cum += n
	pc, ok1 = mul(r.period, r.cum)
	bound, ok2 := mul(r.burst, r.period)
	if !ok1 || !ok2 {
		o.rep.Overflow = true
		return
	}
	if excess := pc - lt - r.min - bound; excess > 0 {
		span := t - r.minAt
		b := float64(r.burst) + float64(r.limit)*float64(span)/float64(r.period)
		got := b + float64(excess)/float64(r.period)
		o.violate(Violation{Invariant: inv, Scope: sc.key, At: time.Duration(t), Since: time.Duration(r.minAt), Got: got, Bound: b})
	}
}

func mul(a, b int64) (int64, bool) {
	if a < 0 || b < 0 {
		return 0, false
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	return int64(lo), hi == 0 && lo <= math.MaxInt64
}

func (o *oracle) violate(v Violation) {
	r := o.rep
	r.Violations++
	o.mix(uint64(len(v.Invariant))<<40 ^ uint64(v.At))
	if r.Breaches == nil {
		r.Breaches = map[string]*Breach{}
	}
	k := v.Invariant + " " + v.Scope
	b := r.Breaches[k]
	if b == nil {
		b = &Breach{}
		r.Breaches[k] = b
	}
	b.Count++
	if b.Count == 1 || v.Excess() > b.Worst.Excess() {
		b.Worst = v
	}
	if len(r.First) < 10 {
		r.First = append(r.First, v)
	}
}

// summary lists the breaches, worst first.
func (r *Report) summary() string {
	keys := make([]string, 0, len(r.Breaches))
	for k := range r.Breaches {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := r.Breaches[keys[i]], r.Breaches[keys[j]]
		if a.Worst.Excess() != b.Worst.Excess() {
			return a.Worst.Excess() > b.Worst.Excess()
		}
		return keys[i] < keys[j]
	})
	var s strings.Builder
	if len(keys) > 12 {
		defer fmt.Fprintf(&s, "\n  … and %d more", len(keys)-12)
		keys = keys[:12]
	}
	for _, k := range keys {
		b := r.Breaches[k]
		fmt.Fprintf(&s, "\n  %d× %s; worst: %s", b.Count, k, b.Worst)
	}
	return s.String()
}
