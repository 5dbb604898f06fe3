package leasequota

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// Tickets that outlive their first moments are recorded in the store, so
// that any instance can settle, heartbeat or look them up (doc.go,
// "Settles and tickets"):
//
//   - A decision issues its ticket in process, as before, and queues it.
//     The recorder (every EngineOptions.RecordEvery) writes the tickets
//     older than EngineOptions.RecordAfter that are still live, in one
//     RecordTickets script per hash tag their chains touch, which moves
//     their reservations out of this instance's leases into the records.
//     A ticket settled before then never costs the store anything: the
//     decision path stays free of Redis.
//   - A ticket not yet recorded is settled here, on its leases, as before.
//     A recorded one (or one whose record call's outcome is unknown) is
//     settled through the store: SettleTicket on each of its tags (one
//     script each); the reservation there is the record's, so the local
//     leases are not touched, except tokens_rate, refunded as before.
//   - A ticket this instance did not issue names its tags in its id
//     (tkt_<random>.<tag>…); Settle, Heartbeat and Lookup go to the store on
//     each. A ticket too young to be recorded is not found at first: the
//     call waits for the issuer's recorder (RecordAfter + 2·RecordEvery at
//     most, tried again up to recordWaits times) before it answers
//     ErrUnknownTicket. tokens_rate is not refunded for those settles (the
//     bucket keeps the reservation; under-admission of at most the
//     difference, for one bucket period).
//   - An expired recorded ticket is refunded by the store's sweep, run by
//     every RecordTickets call and, for tags where this engine saw one of
//     its recorded tickets expire, before its next grant, its next Use and
//     by the recorder.
//   - Close records every live ticket first, so that they stay settleable
//     on the other instances (and are refunded at their expiry if not).

// ticketStore is what the engine needs of a store to record tickets;
// *Store has it. An engine on a store without it keeps its tickets in
// process only.
type ticketStore interface {
	RecordTickets(ctx context.Context, tenant string, recs []TicketRecord) (RecordResult, error)
	SettleTicket(ctx context.Context, tenant, id string, u quota.Usage) (TicketSettle, error)
	SettleTicketAhead(ctx context.Context, tenant, id string, u quota.Usage, known TicketView) (TicketSettle, error)
	HeartbeatTicket(ctx context.Context, tenant, id string, expires time.Time) (time.Time, error)
	LookupTicket(ctx context.Context, tenant, id string) (TicketView, error)
	ReclaimTickets(ctx context.Context, tenant string) (int, error)
}

var _ ticketStore = (*Store)(nil)

// Defaults for EngineOptions' ticket recording.
const (
	DefaultRecordAfter = 50 * time.Millisecond
	DefaultRecordEvery = 20 * time.Millisecond
)

// recordBatch bounds the tickets of one RecordTickets call.
const recordBatch = 256

// recordWaits is how many times a settle, heartbeat or lookup of a ticket
// no tag knows waits for its issuer to record it before answering that it
// is unknown.
const recordWaits = 3

// ticketTags returns the tenants of the hash tags chain scs touches, in
// chain order. Called with e.mu held.
func ticketTags(scs []*lscope) []string {
	var tags []string
	for _, s := range scs {
		found := false
		for _, t := range tags {
			if t == s.sc.Tenant {
				found = true
				break
			}
		}
		if !found {
			tags = append(tags, s.sc.Tenant)
		}
	}
	return tags
}

// idTags is the suffix of a ticket id naming its tags: ".g" for the
// global tag, ".t<tenant>" for a tenant whose name is made of letters,
// digits, '_' and '-', ".x<hex>" for any other.
func idTags(tags []string) string {
	var b strings.Builder
	for _, t := range tags {
		switch {
		case t == "":
			b.WriteString(".g")
		case plainTenant(t):
			b.WriteString(".t")
			b.WriteString(t)
		default:
			b.WriteString(".x")
			b.WriteString(hex.EncodeToString([]byte(t)))
		}
	}
	return b.String()
}

func plainTenant(t string) bool {
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// parseTags returns the tags a ticket id names, or false when it names
// none (not an id of this engine's kind).
func parseTags(id string) ([]string, bool) {
	parts := strings.Split(id, ".")
	if len(parts) < 2 || !strings.HasPrefix(parts[0], "tkt_") || len(parts) > 9 {
		return nil, false
	}
	tags := make([]string, 0, len(parts)-1)
	for _, p := range parts[1:] {
		switch {
		case p == "g":
			tags = append(tags, "")
		case len(p) > 1 && p[0] == 't' && plainTenant(p[1:]):
			tags = append(tags, p[1:])
		case len(p) > 1 && p[0] == 'x':
			b, err := hex.DecodeString(p[1:])
			if err != nil {
				return nil, false
			}
			tags = append(tags, string(b))
		default:
			return nil, false
		}
	}
	return tags, true
}

// inStore reports whether t's record may exist in the store: then the
// store, not the local leases, holds its reservations (or will once the
// outcome of a record call is known).
func (t *ticket) inStore() bool { return t.tried != 0 }

// wanted reports whether t must still be recorded: unsettled and not
// recorded on every tag. An expired ticket is recorded too: one tried
// before (a record call whose outcome is unknown) so that the sweep
// refunds what it holds, one released here so that a late settle
// elsewhere finds it (its reservations recorded as 0: nothing moves).
func (t *ticket) wanted() bool {
	return t.settled == nil && !t.recorded()
}

// recorded reports whether t is recorded on every tag.
func (t *ticket) recorded() bool { return t.recd == 1<<len(t.tags)-1 }

// recordLoop runs the recorder every RecordEvery until ctx ends.
func (e *Engine) recordLoop(ctx context.Context) {
	tk := time.NewTicker(e.o.RecordEvery)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		e.flushRecords(ctx, false)
		e.sweepDue(ctx)
	}
}

// recCall is one RecordTickets call: the records of tag for tickets.
type recCall struct {
	tag     string
	tickets []*ticket
	recs    []TicketRecord
	idx     []int // each ticket's index in its tags
}

// flushRecords records the queued tickets older than RecordAfter (all of
// them with all set) that are live and not recorded yet, and returns
// whether every call succeeded.
func (e *Engine) flushRecords(ctx context.Context, all bool) bool {
	if e.ts == nil {
		return true
	}
	// Held from before a ticket is marked tried until its record is in:
	// a sweep waits for it (sweepTag).
	e.recIO.Lock()
	defer e.recIO.Unlock()
	e.mu.Lock()
	cutoff := time.Now().Add(-e.o.RecordAfter)
	var (
		calls []*recCall
		byTag = map[string]*recCall{}
		wait  = make(chan struct{})
		keep  []*ticket
		n     int
	)
	for len(e.pending) > 0 {
		t := e.pending[0]
		if !all && t.issued.After(cutoff) || n >= recordBatch*8 {
			break
		}
		e.pending[0] = nil
		e.pending = e.pending[1:]
		switch {
		case !t.wanted():
			continue
		case t.busy != nil:
			keep = append(keep, t) // a settle is recording it
			continue
		}
		n++
		t.busy = wait
		for i, tag := range t.tags {
			if t.recd&(1<<i) != 0 {
				continue
			}
			c := byTag[tag]
			if c == nil || len(c.recs) >= recordBatch {
				c = &recCall{tag: tag}
				byTag[tag] = c
				calls = append(calls, c)
			}
			c.tickets = append(c.tickets, t)
			c.idx = append(c.idx, i)
			c.recs = append(c.recs, e.recordOf(t, tag))
			t.tried |= 1 << i
		}
	}
	e.pending = append(keep, e.pending...)
	e.mu.Unlock()
	if len(calls) == 0 {
		close(wait)
		return true
	}
	ok := true
	done := make(chan bool, len(calls))
	for _, c := range calls {
		go func() { done <- e.record(ctx, c) }()
	}
	for range calls {
		ok = <-done && ok
	}
	e.mu.Lock()
	for _, c := range calls {
		for _, t := range c.tickets {
			if t.busy == wait {
				t.busy = nil
				if t.wanted() {
					e.pending = append(e.pending, t) // tried again next round
				}
			}
		}
	}
	e.mu.Unlock()
	close(wait)
	return ok
}

// recordOf builds t's record on tag. Called with e.mu held.
func (e *Engine) recordOf(t *ticket, tag string) TicketRecord {
	rec := TicketRecord{ID: t.id, Owner: e.inst, Expires: t.expires, Meta: t.meta, Tokens: t.tokens, GPUMillis: t.gpu, CostMicros: t.cost}
	for _, r := range t.res {
		if r.s.sc.Tenant != tag || r.m.isRate() {
			continue
		}
		x := TicketRes{Key: r.s.sc.Key, Meter: r.m, Amount: r.amt, Stranded: r.gen != r.s.gen && r.amt > 0}
		if r.m.isBudget() {
			x.Window = r.window
		}
		rec.Res = append(rec.Res, x)
	}
	return rec
}

// record runs one RecordTickets call and applies its outcome: a recorded
// reservation leaves the lease it was taken from (the store moved it to the
// ticket). A failed call leaves the outcome unknown: the tickets stay
// tried, and are recorded again (a replay changes nothing) before they are
// settled.
func (e *Engine) record(ctx context.Context, c *recCall) bool {
	res, err := e.ts.RecordTickets(ctx, c.tag, c.recs)
	if err != nil {
		e.lost(err)
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()

	e.recTags[c.tag] = true
	for k, t := range c.tickets {
		e.recordedOn(t, c.tag, c.idx[k], res.Records[k])
	}
	return true
}

// recordedOn applies a record's outcome to ticket t on its i-th tag: the
// reservations the store moved leave the local lease's record of what the
// store holds (g); stranded ones stay with their lease, which lost them.
// Called with e.mu held.
func (e *Engine) recordedOn(t *ticket, tag string, i int, o RecordOutcome) {
	if t.recd&(1<<i) != 0 {
		return
	}
	t.recd |= 1 << i
	q := 0
	for _, r := range t.res {
		if r.s.sc.Tenant != tag || r.m.isRate() {
			continue
		}
		stranded := false
		for _, x := range o.Stranded {
			if x == q {
				stranded = true
			}
		}
		q++
		if stranded || r.gen != r.s.gen || r.amt == 0 {
			continue
		}
		lm := &r.s.m[r.m]
		if !r.m.isBudget() || lm.window.Equal(r.window) {
			// The ticket's now: no longer this lease's to pin. (A grant
			// whose reply came first may have shown the lease without it
			// already, so g can run below what the lease holds until the
			// next grant: it only gates the refresh's pin-low renewals,
			// and keeping it exact (the larger of this and avail +
			// committed) made those twice as many store calls for three
			// instances, 45k → 29k pairs/s, for no decision.)
			lm.g = max(lm.g-r.amt, 0)
			lm.committed -= r.amt
		}
	}
}

// ensureRecorded waits for a record call of t in flight, and records t
// again on the tags whose outcome is unknown. It returns with e.mu held,
// as it was called.
func (e *Engine) ensureRecorded(ctx context.Context, t *ticket) error {
	for {
		if t.busy != nil {
			w := t.busy
			e.mu.Unlock()
			select {
			case <-w:
			case <-ctx.Done():
				e.mu.Lock()
				return ctx.Err()
			}
			e.mu.Lock()
			continue
		}
		if t.recorded() {
			return nil
		}
		e.mu.Unlock()
		e.recIO.Lock()
		e.mu.Lock()
		if t.busy != nil || t.recorded() {
			e.recIO.Unlock()
			continue
		}
		var calls []*recCall
		for i, tag := range t.tags {
			if t.recd&(1<<i) == 0 {
				t.tried |= 1 << i
				calls = append(calls, &recCall{tag: tag, tickets: []*ticket{t}, idx: []int{i}, recs: []TicketRecord{e.recordOf(t, tag)}})
			}
		}
		wait := make(chan struct{})
		t.busy = wait
		e.mu.Unlock()
		ok := true
		for _, c := range calls {
			ok = e.record(ctx, c) && ok
		}
		e.recIO.Unlock()
		e.mu.Lock()
		t.busy = nil
		close(wait)
		if !ok {
			return fmt.Errorf("record ticket %s: %w", t.id, ErrUnavailable)
		}
	}
}

// settleStored settles ticket id through the store on each of its tags and
// returns the settlement the first tag (the ticket's own outcome) gives.
// An id no tag knows is retried while its issuer may still record it.
func (e *Engine) settleStored(ctx context.Context, id string, tags []string, u quota.Usage, wait bool) (quota.Settlement, []TicketView, error) {
	for try := 0; ; try++ {
		var (
			st      quota.Settlement
			found   bool
			first   TicketView
			views   []TicketView
			errs    []error
			missing []string
		)
		for _, tag := range tags {
			res, err := e.ts.SettleTicket(ctx, tag, id, u)
			if errors.Is(err, quota.ErrUnknownTicket) {
				missing = append(missing, tag)
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !found {
				v := res.Ticket
				st = quota.Settlement{TicketID: id, Usage: v.Usage, ReservedTokens: v.Tokens, ReservedGPUMillis: v.GPUMillis,
					ReservedCostMicros: v.CostMicros, Overrun: v.Overrun, SettledAt: v.SettledAt.UTC(), Late: v.Late,
					Replay: res.Replay, Meta: v.Meta}
				first = v
			}
			found = true
			if !res.Replay {
				views = append(views, res.Ticket)
			}
		}
		if found && len(errs) == 0 {
			// The issuer records a ticket on each tag in its own call:
			// a tag that does not know it yet may be about to. The
			// settlement waits there for the record, which settles its
			// reservations as it lands; without it they stayed counted
			// on a live record until its expiry (a slot and a
			// reservation per ticket settled in that gap).
			for _, tag := range missing {
				res, err := e.ts.SettleTicketAhead(ctx, tag, id, first.Usage, first)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if !res.Replay && !res.Ahead {
					views = append(views, res.Ticket) // recorded meanwhile, and settled now
				}
			}
		}
		if len(errs) > 0 {
			return quota.Settlement{}, nil, fmt.Errorf("settle %s: %w", id, errors.Join(errs...))
		}
		if found {
			e.mu.Lock()
			e.settledInStore(views, u)
			e.mu.Unlock()
			return st, views, nil
		}
		if !wait || try >= recordWaits {
			return quota.Settlement{}, nil, fmt.Errorf("settle %s: %w", id, quota.ErrUnknownTicket)
		}
		if err := e.waitRecorder(ctx); err != nil {
			return quota.Settlement{}, nil, err
		}
	}
}

// settledInStore follows a settle the store carried out (views, one per
// tag, not replays) in what this engine believes remains of each scope's
// limits, as the store's counters moved: a live ticket's reservations
// replaced by the use, a late one's use added. Called with e.mu held.
func (e *Engine) settledInStore(views []TicketView, u quota.Usage) {
	now := e.now()
	for _, v := range views {
		for _, r := range v.Res {
			s := e.scopes[r.Key]
			if s == nil {
				continue
			}
			lm := &s.m[r.Meter]
			if lm.remaining == unknownRem {
				continue
			}
			if r.Meter == MeterConcurrency {
				if !v.Late && !r.Stranded {
					lm.remaining += r.Amount
				}
				continue
			}
			if !lm.window.Equal(s.window(r.Meter, now)) {
				continue
			}
			use := usageOf(u, r.Meter)
			switch {
			case v.Late || !r.Window.Equal(lm.window):
				lm.remaining -= use
			case r.Stranded:
				lm.remaining -= max(use-r.Amount, 0)
			default:
				lm.remaining -= use - r.Amount
			}
		}
	}
}

// waitRecorder waits as long as an issuer's recorder may take to record a
// fresh ticket.
func (e *Engine) waitRecorder(ctx context.Context) error {
	tm := time.NewTimer(e.o.RecordAfter + 2*e.o.RecordEvery)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// heartbeatStored moves ticket id's expiry to expires on each of its tags.
func (e *Engine) heartbeatStored(ctx context.Context, id string, tags []string, expires time.Time, wait bool) (time.Time, error) {
	for try := 0; ; try++ {
		var (
			at    time.Time
			found bool
			errs  []error
		)
		for _, tag := range tags {
			x, err := e.ts.HeartbeatTicket(ctx, tag, id, expires)
			if errors.Is(err, quota.ErrUnknownTicket) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			at, found = x, true
		}
		if found && at.Equal(expires.Truncate(time.Microsecond)) {
			at = expires // the store keeps µs
		}
		if len(errs) > 0 {
			return time.Time{}, fmt.Errorf("heartbeat %s: %w", id, errors.Join(errs...))
		}
		if found {
			return at, nil
		}
		if !wait || try >= recordWaits {
			return time.Time{}, fmt.Errorf("heartbeat %s: %w", id, quota.ErrUnknownTicket)
		}
		if err := e.waitRecorder(ctx); err != nil {
			return time.Time{}, err
		}
	}
}

// lookupStored reads ticket id's record on the first of its tags that
// knows it.
func (e *Engine) lookupStored(ctx context.Context, id string, tags []string, wait bool) (quota.TicketInfo, error) {
	for try := 0; ; try++ {
		for _, tag := range tags {
			v, err := e.ts.LookupTicket(ctx, tag, id)
			if errors.Is(err, quota.ErrUnknownTicket) {
				continue
			}
			if err != nil {
				return quota.TicketInfo{}, fmt.Errorf("lookup %s: %w", id, err)
			}
			info := quota.TicketInfo{ID: id, Meta: v.Meta, Tokens: v.Tokens, GPUMillis: v.GPUMillis, CostMicros: v.CostMicros,
				Settled: v.Settled, Expired: v.Expired && !v.Settled}
			if !v.Settled {
				info.ExpiresAt = v.Expires
			}
			return info, nil
		}
		if !wait || try >= recordWaits {
			return quota.TicketInfo{}, fmt.Errorf("lookup %s: %w", id, quota.ErrUnknownTicket)
		}
		if err := e.waitRecorder(ctx); err != nil {
			return quota.TicketInfo{}, err
		}
	}
}

// sweepDue runs the store's ticket sweep on the tags where this engine saw
// a recorded ticket expire and, once a second, on every tag it recorded
// on.
func (e *Engine) sweepDue(ctx context.Context) {
	if e.ts == nil {
		return
	}
	e.mu.Lock()
	now := e.now()
	periodic := now.Sub(e.lastTicketSweep) >= time.Second || now.Before(e.lastTicketSweep)
	if periodic {
		e.lastTicketSweep = now
	}
	var tags []string
	for tag := range e.recTags {
		if e.sweepTags[tag] || periodic {
			tags = append(tags, tag)
			delete(e.sweepTags, tag)
		}
	}
	e.mu.Unlock()
	for _, tag := range tags {
		e.sweep(ctx, tag)
	}
}

// sweepTag runs the store's ticket sweep on tag if this engine saw one of
// its recorded tickets there expire: before a grant or a read of the tag,
// so that what expired is back.
func (e *Engine) sweepTag(ctx context.Context, tag string) {
	if e.ts == nil {
		return
	}
	e.mu.Lock()
	due := e.sweepTags[tag]
	e.mu.Unlock()
	if !due {
		return
	}
	// A record call in flight may be writing a ticket that expired
	// meanwhile: its refund must be in before the caller reads.
	e.recIO.Lock()
	e.recIO.Unlock()
	e.mu.Lock()
	delete(e.sweepTags, tag)
	e.mu.Unlock()
	e.sweep(ctx, tag)
}

// sweep reclaims tag's expired tickets until a call finds fewer than a
// full batch; a failure leaves the tag due.
func (e *Engine) sweep(ctx context.Context, tag string) {
	for range 64 {
		n, err := e.ts.ReclaimTickets(ctx, tag)
		if err != nil {
			e.mu.Lock()
			e.sweepTags[tag] = true
			e.mu.Unlock()
			return
		}
		if n < 64 {
			return
		}
	}
}
