package leasequota

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// When the store loses its state (a Redis restarted empty: no epoch on the
// tag, ErrEpochLost), every lease this engine holds is void — the
// counters the app rebuilds from the ledger hold no lease — and so are the
// records of its tickets. The engine drops its leases the first time a
// call says so (lost), so that every decision goes to the store, which
// refuses until the rebuild (quota.Failover switches to local shares
// meanwhile). Its live tickets keep their ids; their reservations, counted
// nowhere now, become 0 (a settle charges the use alone) until the
// failover readmits them after the rebuild (Readmit), charging them to the
// rebuilt counters again. Until an instance makes its first call after the
// loss it may spend what its leases held (at most its leases: demand of
// about a second; a renewal comes every LeaseTTL/4).

var _ quota.Readmitter = (*Engine)(nil)

// lost drops every lease if err says the store lost its state.
func (e *Engine) lost(err error) {
	if err == nil || !errors.Is(err, ErrEpochLost) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dropLeases()
}

// dropLeases forgets every lease and what live tickets hold of them.
// Called with e.mu held.
func (e *Engine) dropLeases() {
	for _, s := range e.scopes {
		e.dropScope(s)
	}
	e.dropTickets()
}

// dropScope forgets scope s's leases. Called with e.mu held.
func (e *Engine) dropScope(s *lscope) {
	for m := range s.m {
		lm := &s.m[m]
		lm.avail, lm.g, lm.ret, lm.committed, lm.pin, lm.stale = 0, 0, 0, 0, 0, false
		lm.lots, lm.remaining, lm.known = nil, unknownRem, false
	}
	s.gen++
	s.validUntil = time.Time{}
	s.unsent = nil
}

// dropTickets makes the live tickets' reservations count nowhere and
// queues their records again. Called with e.mu held.
func (e *Engine) dropTickets() {
	for _, t := range e.tickets {
		if t.settled != nil || t.expired {
			continue
		}
		for i := range t.res {
			r := &t.res[i]
			if !r.m.isRate() {
				r.amt, r.gen = 0, r.s.gen // counted nowhere: a settle charges the use
			}
		}
		// Its records went with the state. It is recorded again once
		// Readmit has charged its reservations back (not before: a record
		// of nothing would then be what settles it).
		t.tried, t.recd = 0, 0
	}
}

// Rebuilt implements quota.Rebuilt: the failover calls it after the
// counters were rebuilt, before it readmits the live tickets, so that an
// instance that made no call since the loss drops its void leases too.
// What the background loop was granted since the epoch came back is in
// the rebuilt store: each scope returns everything it holds first (the
// store gives back at most what the lease record holds, so the void part
// returns nothing), then forgets it, under the scope's lock.
func (e *Engine) Rebuilt(ctx context.Context) {
	e.mu.Lock()
	scopes := make([]*lscope, 0, len(e.scopes))
	for _, s := range e.scopes {
		scopes = append(scopes, s)
	}
	e.mu.Unlock()
	for _, s := range scopes {
		s.io.Lock()
		e.mu.Lock()
		var gives []Give
		now := e.now()
		for m := range Meter(NumMeters) {
			lm := &s.m[m]
			if m.isRate() || m.isBudget() && !lm.window.Equal(s.window(m, now)) {
				continue
			}
			if n := lm.avail - lm.ret; n > 0 {
				gives = append(gives, Give{Meter: m, Amount: n, Window: lm.window})
			}
		}
		id := e.requestID()
		e.mu.Unlock()
		if len(gives) > 0 {
			e.st.Return(ctx, id, e.inst, s.sc, gives) // best effort: what fails stays stranded in the record
		}
		e.mu.Lock()
		e.dropScope(s)
		e.mu.Unlock()
		s.io.Unlock()
	}
	e.mu.Lock()
	e.dropTickets()
	e.mu.Unlock()
}

// Recovered implements quota.Recoverer: before the failover decides on the
// engine again after an outage, every budget and slot lease gives back
// what it holds unspent, and what is left (the reservations of live
// tickets) is renewed. The return matters after a rebuild: the background
// loop may have taken leases from the rebuilt counters before every
// instance had readmitted its live tickets (the failover's ReadmitHold),
// and a slot taken then would be handed out beside the one a readmitted
// ticket holds past the limit; given back, the next grant sees the
// readmissions. The renewal drops a lease the store no longer has (it
// restarted empty and another instance rebuilt it, the epoch back before
// this engine made a call) rather than spending it; a store without the
// epoch drops them all (lost).
func (e *Engine) Recovered(ctx context.Context) error {
	e.mu.Lock()
	var scopes []*lscope
	for _, s := range e.scopes {
		if !s.validUntil.IsZero() {
			scopes = append(scopes, s)
		}
	}
	e.mu.Unlock()
	if len(scopes) == 0 {
		return nil
	}
	for _, s := range scopes {
		if err := e.giveUnused(ctx, s, true); err != nil {
			e.lost(err)
			return fmt.Errorf("recovered: %w", err)
		}
	}
	return e.renewNow(ctx, scopes)
}

// Readmit implements quota.Readmitter: after a rebuild, a live ticket this
// engine issued has its reservations (slot, tokens, GPU, cost) charged
// again to the rebuilt counters of its scopes, past any limit (it was
// admitted), held in this engine's leases until the recorder records it.
// A ticket this engine does not know live is left alone.
func (e *Engine) Readmit(ctx context.Context, id string, r quota.Request, expires time.Time) error {
	e.mu.Lock()
	t := e.tickets[id]
	if t == nil || t.settled != nil || t.expired {
		e.mu.Unlock()
		return nil
	}
	now := e.now()
	type charge struct {
		s     *lscope
		id    string
		wants []Want
		idx   []int
	}
	var calls []*charge
	byScope := map[*lscope]*charge{}
	for _, sc := range r.Chain {
		s := e.scope(&sc)
		for m := range Meter(NumMeters) {
			var amt int64
			switch {
			case m == MeterConcurrency && r.Ask.Concurrency:
				amt = 1
			case m.isBudget():
				amt = askOf(&r.Ask, m, r.Ask.Tokens)
			}
			if amt <= 0 {
				continue
			}
			j := -1
			for k := range t.res {
				if t.res[k].s == s && t.res[k].m == m {
					j = k
				}
			}
			if j < 0 {
				continue // not counted on this scope when admitted
			}
			c := byScope[s]
			if c == nil {
				c = &charge{s: s, id: e.requestID()}
				byScope[s] = c
				calls = append(calls, c)
			}
			lm := &s.m[m]
			w := Want{Meter: m, Amount: amt, Limit: unbounded}
			if m.isBudget() {
				w.Window = s.window(m, now)
				lm = e.sync(s, m, now, lm.limit, lm.rate)
			}
			w.Pin, w.PinSeq = e.pinFor(lm, m, amt)
			c.wants = append(c.wants, w)
			c.idx = append(c.idx, j)
		}
	}
	t.expires = expires
	e.nextExp, e.lastSweep = time.Time{}, time.Time{}
	e.mu.Unlock()
	for _, c := range calls {
		c.s.io.Lock()
		sent := e.now()
		res, err := e.st.Grant(ctx, c.id, e.inst, c.s.sc, e.o.LeaseTTL, c.wants)
		if err != nil {
			c.s.io.Unlock()
			e.lost(err)
			return fmt.Errorf("readmit %s: %w", t.id, err)
		}
		e.mu.Lock()
		e.applyOverrun(c.s, sent, c.wants, res)
		for k, j := range c.idx {
			w := &c.wants[k]
			if t.settled != nil || t.expired {
				// Released while the charge was out (with nothing): what
				// it took is the lease's, free to spend or give back.
				lm := &c.s.m[w.Meter]
				if !w.Meter.isBudget() || w.Window.Equal(lm.window) {
					lm.committed -= w.Amount
					lm.avail += w.Amount
				}
				continue
			}
			res := &t.res[j]
			res.amt, res.gen = c.wants[k].Amount, c.s.gen
			if c.wants[k].Meter.isBudget() {
				res.window = c.wants[k].Window
			}
		}
		e.mu.Unlock()
		c.s.io.Unlock()
	}
	e.mu.Lock()
	if t.settled == nil && t.tried == 0 {
		e.pending = append(e.pending, t) // recorded with what it holds again
	}
	e.mu.Unlock()
	return nil
}

var _ quota.SlotHolder = (*Engine)(nil)

// HoldSlots implements quota.SlotHolder: a ticket of this engine that
// holds a slot on every scope of chain with a concurrency limit, charged
// past the limit as Readmit charges, and recorded, settled and expired
// like any other. A call that fails leaves what it charged to the ticket,
// which frees it at expires.
func (e *Engine) HoldSlots(ctx context.Context, chain []quota.Scope, expires time.Time) (string, error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return "", quota.ErrClosed
	}
	t := &ticket{id: e.newID(), expires: expires, issued: time.Now()}
	scs := make([]*lscope, len(chain))
	for i := range chain {
		s := e.scope(&chain[i])
		scs[i] = s
		if _, _, ok := limitOf(chain[i].Limits, MeterConcurrency); ok {
			t.res = append(t.res, reservation{s: s, m: MeterConcurrency, gen: s.gen})
		}
	}
	if e.ts != nil {
		if tags := ticketTags(scs); len(tags) <= 8 {
			t.tags = tags
			t.id += idTags(tags)
		}
	}
	e.tickets[t.id] = t
	e.mu.Unlock()
	r := quota.Request{Chain: chain, Ask: quota.Ask{Concurrency: true}}
	if err := e.Readmit(ctx, t.id, r, expires); err != nil {
		return "", err
	}
	return t.id, nil
}
