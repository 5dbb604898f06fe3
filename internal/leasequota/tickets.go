package leasequota

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
)

// Ticket records (doc.go, "Settles and tickets"): a ticket the engine
// admitted is written to Redis, one record per hash tag its chain touches
// (the global tag and the tenant's), holding the ticket's reservations on
// that tag's scopes. Recording moves each reservation out of the owner's
// lease, so the lease no longer holds it and the counter keeps counting it
// as the ticket's; any instance can then settle, heartbeat or look up the
// ticket with one script per tag, and an expired ticket is refunded by a
// sweep whoever issued it.
//
// Keys, under the tag only (a script touches one tag):
//
//	<tag>:k:<id>  string: the ticket's record (msgpack, see lua/ticket_prelude.lua);
//	              Options.KeyTTL while live, Options.ReplayTTL once settled or expired
//	<tag>:kx      sorted set: live tickets' ids by expiry µs
//
// The settle, sweep and heartbeat scripts change the counters of the scopes
// a record names (<tag>:s:<scope>), building those keys in the script
// under the same tag, as redisquota's scripts do; the record script
// declares every key it touches.
var (
	//go:embed lua/ticket_prelude.lua
	ticketPrelude string
	//go:embed lua/ticket_record.lua
	ticketRecordBody string
	//go:embed lua/ticket_settle.lua
	ticketSettleBody string
	//go:embed lua/ticket_heartbeat.lua
	ticketHeartbeatBody string
	//go:embed lua/ticket_lookup.lua
	ticketLookupBody string
	//go:embed lua/ticket_sweep.lua
	ticketSweepBody string

	ticketRecordScript    = redis.NewScript(prelude + ticketPrelude + ticketRecordBody)
	ticketSettleScript    = redis.NewScript(prelude + ticketPrelude + ticketSettleBody)
	ticketHeartbeatScript = redis.NewScript(prelude + ticketPrelude + ticketHeartbeatBody)
	ticketLookupScript    = redis.NewScript(prelude + ticketPrelude + ticketLookupBody)
	ticketSweepScript     = redis.NewScript(prelude + ticketPrelude + ticketSweepBody)
)

// TicketRes is a ticket's reservation on one meter of one scope of the
// call's tag.
type TicketRes struct {
	Key    string // the scope key
	Meter  Meter  // a budget, or MeterConcurrency with Amount 1
	Amount int64
	// Window is the start of a budget's window the reservation was taken
	// in, as the engine's leases hold it: in the scope's time zone, whose
	// name (Window.Location()) the record keeps so that a settle after the
	// window's end can find the current window.
	Window time.Time
	// Stranded is set on records read back (LookupTicket, SettleTicket,
	// RecordResult): the owner's lease did not hold the amount when the
	// ticket was recorded (it had been reclaimed, or had moved to a later
	// window), so it was not moved to the ticket. Set by the caller of
	// RecordTickets, it says the owner knows its lease lost the amount (a
	// reclaim it learnt of): nothing is moved, even if a newer lease holds
	// as much. A stranded reservation
	// is never refunded nor given back by the ticket; a settle charges
	// only use beyond it.
	Stranded bool
}

// TicketRecord is one ticket as recorded on one tag.
type TicketRecord struct {
	ID    string // the ticket id
	Owner string // the issuing instance, whose leases the reservations came from
	// Expires is when the ticket expires unless heartbeated or settled:
	// its reservations are refunded then (ReclaimTickets).
	Expires time.Time
	Meta    string
	// The ticket's reserved figures, reported by LookupTicket and
	// SettleTicket (quota.TicketInfo, quota.Settlement) and compared with
	// the usage for the overrun flag. They do not move any counter: Res
	// does.
	Tokens, GPUMillis, CostMicros int64
	// Res are the reservations on scopes of this tag; concurrency as
	// MeterConcurrency, Amount 1.
	Res []TicketRes
}

// RecordOutcome is what RecordTickets did with one record.
type RecordOutcome struct {
	// Replay is true when the record was already present: nothing was
	// moved again, and Stranded is what the first call found.
	Replay bool
	// Stranded lists the indices in Res of the reservations not found in
	// the owner's lease: their amounts stayed where they were (stranded
	// by a reclaim, or in an ended window). The engine drops them from its
	// leases without giving them back.
	Stranded []int
}

// RecordResult is a RecordTickets call's reply.
type RecordResult struct {
	Now     time.Time
	Records []RecordOutcome // per record, in order
	// Swept is how many expired tickets of the tag the call refunded (the
	// script runs the ticket sweep, as ReclaimTickets, after recording).
	Swept int
}

// TicketView is a ticket's record as the store holds it.
type TicketView struct {
	TicketRecord
	// Settled once settled; Expired once past its expiry unsettled (its
	// reservations refunded, or about to be by the next sweep): a settle
	// then is late. A live ticket has neither.
	Settled, Expired bool
	// The first settlement, when Settled: usage, store time, Late (the
	// ticket had expired and was refunded before it: the use was charged
	// alone) and Overrun (use beyond a reserved figure).
	Usage     quota.Usage
	SettledAt time.Time
	Late      bool
	Overrun   bool
}

// TicketSettle is a SettleTicket call's reply.
type TicketSettle struct {
	Now time.Time // the store's time of the call
	// Replay is true when the ticket had been settled before this call:
	// Ticket holds the first settlement and nothing changed.
	Replay bool
	// Ahead is true when SettleTicketAhead found no record and left a
	// settled one in its place, which the issuer's record will settle.
	Ahead  bool
	Ticket TicketView
}

// zoneCache remembers the time zone of every budget window recorded by
// this process, by name, so that a settle after a window's end finds its
// zone without loading it (and finds zones LoadLocation does not know,
// such as fixed zones, when this process recorded them).
var zoneCache sync.Map // name → *time.Location

func zoneByName(name string) (*time.Location, error) {
	if l, ok := zoneCache.Load(name); ok {
		return l.(*time.Location), nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("time zone %q of a recorded window: %w: %w", name, quota.ErrInvalid, err)
	}
	zoneCache.Store(name, loc)
	return loc, nil
}

// RecordTickets writes recs on tenant's tag ("" for the global tag), in one
// script. For each record not already present it stores the record, adds
// it to the tag's expiry set, and moves each reservation out of the
// owner's lease on its scope (held g −= amount; a reclaim keeps min(pin, g)) when the
// lease holds it in the reservation's window; otherwise the reservation is
// marked stranded and reported. Counters do not change: the amount moves
// from the lease to the ticket. A record already present changes nothing
// (a replay), so a retried call is safe. The call then sweeps the tag's
// expired tickets (ReclaimTickets).
func (s *Store) RecordTickets(ctx context.Context, tenant string, recs []TicketRecord) (RecordResult, error) {
	op := "record tickets"
	if len(recs) == 0 {
		return RecordResult{}, fmt.Errorf("%s: none: %w", op, quota.ErrInvalid)
	}
	tag := s.Tag(tenant)
	scopes := map[string]int{}
	var names []string
	nres := 0
	for _, r := range recs {
		if r.ID == "" || r.Owner == "" || r.Expires.IsZero() {
			return RecordResult{}, fmt.Errorf("%s: ticket %q owner %q expiry %v: %w", op, r.ID, r.Owner, r.Expires, quota.ErrInvalid)
		}
		if r.Tokens < 0 || r.GPUMillis < 0 || r.CostMicros < 0 {
			return RecordResult{}, fmt.Errorf("%s: ticket %q: negative figures: %w", op, r.ID, quota.ErrInvalid)
		}
		for _, x := range r.Res {
			if x.Key == "" || x.Amount < 0 || !(x.Meter.isBudget() || x.Meter == MeterConcurrency) || x.Meter.isBudget() && x.Window.IsZero() {
				return RecordResult{}, fmt.Errorf("%s: ticket %q: reservation %+v: %w", op, r.ID, x, quota.ErrInvalid)
			}
			if _, ok := scopes[x.Key]; !ok {
				scopes[x.Key] = len(names) + 1
				names = append(names, x.Key)
			}
		}
		nres += len(r.Res)
	}
	keys := make([]string, 0, 2+len(names)+len(recs))
	keys = append(keys, tag+":kx")
	for _, n := range names {
		keys = append(keys, tag+":l:"+n)
	}
	args := make([]any, 0, 7+len(names)+8*len(recs)+7*nres)
	args = append(args, s.now(), s.epochArg(), tag, s.keyMS, s.replayMS, len(names), len(recs))
	for _, n := range names {
		args = append(args, n)
	}
	for _, r := range recs {
		keys = append(keys, tag+":k:"+r.ID)
		args = append(args, r.ID, r.Owner, r.Expires.UnixMicro(), r.Meta, r.Tokens, r.GPUMillis, r.CostMicros, len(r.Res))
		for _, x := range r.Res {
			var w, we int64
			zone := ""
			if x.Meter.isBudget() {
				loc := x.Window.Location()
				zone = loc.String()
				zoneCache.LoadOrStore(zone, loc)
				w, we = x.Window.Unix(), windowEnd(x.Window, x.Meter).Unix()
			}
			lost := 0
			if x.Stranded {
				lost = 1
			}
			args = append(args, scopes[x.Key], int(x.Meter), x.Amount, w, we, zone, lost)
		}
	}
	keys = append(keys, tag+":epoch")
	v, _, err := s.runAny(ctx, op, ticketRecordScript, keys, args)
	if err != nil {
		return RecordResult{}, err
	}
	if st, _ := v[0].(int64); st == -1 {
		return RecordResult{}, fmt.Errorf("%s: %w", op, ErrEpochLost)
	}
	bad := fmt.Errorf("%s: reply of %d values: %w", op, len(v), ErrUnavailable)
	if len(v) < 3 {
		return RecordResult{}, bad
	}
	res := RecordResult{Now: s.replyNow(v[1]), Swept: int(asInt(v[2])), Records: make([]RecordOutcome, len(recs))}
	p := 3
	for i := range recs {
		if p+2 > len(v) {
			return RecordResult{}, bad
		}
		o := RecordOutcome{Replay: asInt(v[p]) == 1}
		n := int(asInt(v[p+1]))
		p += 2
		if p+n > len(v) {
			return RecordResult{}, bad
		}
		for j := range n {
			o.Stranded = append(o.Stranded, int(asInt(v[p+j])))
		}
		p += n
		res.Records[i] = o
	}
	return res, nil
}

// SettleTicket settles ticket id on tenant's tag with usage u at the
// store's time, in one script (two when a reservation's budget window
// has ended by then and the script asks for the current windows of its
// time zone). Per reservation of a live ticket: a budget's counter gets
// use − amount while it counts the reservation's window; otherwise the use
// alone goes to the current window (an ended window's counter restarts
// without the reservation); concurrency is freed. A stranded reservation
// is charged only the use beyond it. A ticket past its expiry was (or is
// now) refunded: the settle is late and the use is charged alone. The
// record is kept, settled, for Options.ReplayTTL: a repeated settle
// returns the first settlement with Replay set and changes nothing. An
// unknown id (never recorded on this tag, or its retention over) is an
// error wrapping quota.ErrUnknownTicket.
//
// Usage counts as the engine's meters do: tokens/day and tokens/month the
// input plus output tokens, GPU the GPU ms, cost the cost µ$. Rates are
// not touched (the engine adjusts tokens_rate).
func (s *Store) SettleTicket(ctx context.Context, tenant, id string, u quota.Usage) (TicketSettle, error) {
	return s.settleTicket(ctx, tenant, id, u, nil)
}

// SettleTicketAhead is SettleTicket for a ticket that known, as another of
// its tags holds it (known: its view there, settled by the same usage), may
// not be recorded on tenant's tag yet: its issuer records a ticket on each
// tag in a separate call, so a settle elsewhere can come between them.
// When the record is there it is settled as SettleTicket does. When it is
// not, the settlement is kept in its place (Ahead, for Options.ReplayTTL),
// with known's figures, so that the issuer's RecordTickets settles the
// reservations as it records them (freed at once, use charged) rather than
// leave them counted on a live record until its expiry. A record that
// never comes (the issuer died first) leaves the reservations in its lease
// record, which a reclaim frees as for any unrecorded ticket.
func (s *Store) SettleTicketAhead(ctx context.Context, tenant, id string, u quota.Usage, known TicketView) (TicketSettle, error) {
	return s.settleTicket(ctx, tenant, id, u, &known)
}

func (s *Store) settleTicket(ctx context.Context, tenant, id string, u quota.Usage, known *TicketView) (TicketSettle, error) {
	op := "settle ticket " + id
	if id == "" || u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return TicketSettle{}, fmt.Errorf("%s: usage %+v: %w", op, u, quota.ErrInvalid)
	}
	if known != nil && (known.Owner == "" || known.Expires.IsZero()) {
		return TicketSettle{}, fmt.Errorf("%s: known ticket %+v: %w", op, known.TicketRecord, quota.ErrInvalid)
	}
	tag := s.Tag(tenant)
	keys := []string{tag + ":k:" + id, tag + ":kx", tag + ":epoch"}
	var zones []any // name, day start, day end, month start, month end
	for try := 0; ; try++ {
		args := make([]any, 0, 11+len(zones))
		args = append(args, s.now(), s.epochArg(), tag, id, s.keyMS, s.replayMS,
			u.InputTokens, u.OutputTokens, u.GPUMillis, u.CostMicros, len(zones)/5)
		args = append(args, zones...)
		if k := known; k != nil {
			at := k.SettledAt
			if !k.Settled || at.IsZero() {
				at = time.Now()
			}
			args = append(args, "1", k.Owner, k.Expires.UnixMicro(), k.Meta, k.Tokens, k.GPUMillis, k.CostMicros,
				at.UnixMicro(), boolInt(k.Late), boolInt(k.Overrun))
		}
		v, resent, err := s.runAny(ctx, op, ticketSettleScript, keys, args)
		if err != nil {
			return TicketSettle{}, err
		}
		switch st, _ := v[0].(int64); st {
		case -1:
			return TicketSettle{}, fmt.Errorf("%s: %w", op, ErrEpochLost)
		case 0:
			return TicketSettle{}, fmt.Errorf("%s: %w", op, quota.ErrUnknownTicket)
		case 1, 2, 3:
			tv, err := parseTicket(id, v)
			if err != nil {
				return TicketSettle{}, fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
			}
			// Settled before and found by a resend: most likely by the
			// attempt whose reply was lost, so this call's own settle.
			return TicketSettle{Now: s.replyNow(v[1]), Replay: st == 2 && !resent, Ahead: st == 3, Ticket: tv}, nil
		case -3:
			if try == 3 {
				return TicketSettle{}, fmt.Errorf("%s: %w: current windows not found", op, ErrUnavailable)
			}
			now := time.UnixMicro(asInt(v[1])) // the script's: its windows must hold it
			for _, z := range v[2:] {
				name, _ := z.(string)
				loc, err := zoneByName(name)
				if err != nil {
					return TicketSettle{}, fmt.Errorf("%s: %w", op, err)
				}
				ds := windowStart(now, loc, MeterTokensDay)
				ms := windowStart(now, loc, MeterTokensMonth)
				zones = appendZone(zones, name, ds.Unix(), windowEnd(ds, MeterTokensDay).Unix(), ms.Unix(), windowEnd(ms, MeterTokensMonth).Unix())
			}
		default:
			return TicketSettle{}, fmt.Errorf("%s: status %v: %w", op, v[0], ErrUnavailable)
		}
	}
}

// appendZone sets a zone's windows in zones, replacing those it had.
func appendZone(zones []any, name string, b ...int64) []any {
	for i := 0; i+4 < len(zones); i += 5 {
		if zones[i] == name {
			for j := range 4 {
				zones[i+1+j] = b[j]
			}
			return zones
		}
	}
	zones = append(zones, name)
	for _, x := range b {
		zones = append(zones, x)
	}
	return zones
}

// HeartbeatTicket moves live ticket id's expiry on tenant's tag to expires
// (absolute, so a retry is harmless) and returns it. A ticket settled,
// expired (a live one found past its expiry is refunded now) or unknown is
// an error wrapping quota.ErrUnknownTicket.
func (s *Store) HeartbeatTicket(ctx context.Context, tenant, id string, expires time.Time) (time.Time, error) {
	op := "heartbeat ticket " + id
	if id == "" || expires.IsZero() {
		return time.Time{}, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	tag := s.Tag(tenant)
	keys := []string{tag + ":k:" + id, tag + ":kx", tag + ":epoch"}
	v, _, err := s.runAny(ctx, op, ticketHeartbeatScript, keys,
		[]any{s.now(), s.epochArg(), tag, id, s.keyMS, s.replayMS, expires.UnixMicro()})
	if err != nil {
		return time.Time{}, err
	}
	switch st, _ := v[0].(int64); {
	case st == -1:
		return time.Time{}, fmt.Errorf("%s: %w", op, ErrEpochLost)
	case st == 0:
		return time.Time{}, fmt.Errorf("%s: %w", op, quota.ErrUnknownTicket)
	case st == 1 && len(v) == 3:
		return time.UnixMicro(asInt(v[2])), nil
	}
	return time.Time{}, fmt.Errorf("%s: reply %v: %w", op, v, ErrUnavailable)
}

// LookupTicket returns ticket id's record on tenant's tag, changing
// nothing: live, settled (with its settlement) or expired. Unknown: an
// error wrapping quota.ErrUnknownTicket.
func (s *Store) LookupTicket(ctx context.Context, tenant, id string) (TicketView, error) {
	op := "lookup ticket " + id
	if id == "" {
		return TicketView{}, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := time.Now()
	v, err := ticketLookupScript.Run(cctx, s.c, []string{s.Tag(tenant) + ":k:" + id}, s.now()).Slice()
	s.observed("lookup", ctx, cctx, err, start)
	if err != nil || len(v) < 2 {
		return TicketView{}, fmt.Errorf("%s: %w: %v", op, ErrUnavailable, err)
	}
	if st, _ := v[0].(int64); st == 0 {
		return TicketView{}, fmt.Errorf("%s: %w", op, quota.ErrUnknownTicket)
	}
	tv, err := parseTicket(id, v)
	if err != nil {
		return TicketView{}, fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
	return tv, nil
}

// ReclaimTickets refunds the reservations of tenant's tag's tickets past
// their expiry (at most 64 a call, the oldest first), keeping their
// records, marked expired, for Options.ReplayTTL so that a later settle is
// late rather than unknown; it reports how many. RecordTickets sweeps too
// (after recording), so only a sweeper of tags with no recent records
// needs it.
func (s *Store) ReclaimTickets(ctx context.Context, tenant string) (int, error) {
	op := "reclaim tickets"
	tag := s.Tag(tenant)
	v, _, err := s.runAny(ctx, op, ticketSweepScript, []string{tag + ":kx", tag + ":epoch"},
		[]any{s.now(), s.epochArg(), tag, s.keyMS, s.replayMS})
	if err != nil {
		return 0, err
	}
	if st, _ := v[0].(int64); st == -1 {
		return 0, fmt.Errorf("%s: %w", op, ErrEpochLost)
	}
	if len(v) != 3 {
		return 0, fmt.Errorf("%s: reply %v: %w", op, v, ErrUnavailable)
	}
	return int(asInt(v[2])), nil
}

// parseTicket decodes lua/ticket_prelude.lua's tk_reply.
func parseTicket(id string, v []any) (TicketView, error) {
	const head = 17
	if len(v) < head {
		return TicketView{}, fmt.Errorf("ticket reply of %d values", len(v))
	}
	str := func(x any) string { s, _ := x.(string); return s }
	tv := TicketView{TicketRecord: TicketRecord{
		ID: id, Owner: str(v[2]), Expires: time.UnixMicro(asInt(v[3])), Meta: str(v[4]),
		Tokens: asInt(v[5]), GPUMillis: asInt(v[6]), CostMicros: asInt(v[7]),
	}}
	now := asInt(v[1])
	switch str(v[8]) {
	case "s":
		tv.Settled = true
		tv.Usage = quota.Usage{InputTokens: asInt(v[9]), OutputTokens: asInt(v[10]), GPUMillis: asInt(v[11]), CostMicros: asInt(v[12])}
		tv.SettledAt = time.UnixMicro(asInt(v[13]))
		tv.Late, tv.Overrun = asInt(v[14]) == 1, asInt(v[15]) == 1
	case "x":
		tv.Expired = true
	case "l":
		tv.Expired = asInt(v[3]) <= now
	default:
		return TicketView{}, fmt.Errorf("ticket state %v", v[8])
	}
	n := int(asInt(v[16]))
	if len(v) != head+5*n {
		return TicketView{}, fmt.Errorf("ticket reply of %d values for %d reservations", len(v), n)
	}
	for i := range n {
		b := head + 5*i
		r := TicketRes{Key: str(v[b]), Meter: Meter(asInt(v[b+1])), Amount: asInt(v[b+2]), Stranded: asInt(v[b+4]) == 1}
		if r.Meter.isBudget() {
			r.Window = time.Unix(asInt(v[b+3]), 0)
		}
		tv.Res = append(tv.Res, r)
	}
	return tv, nil
}

func asInt(x any) int64 { n, _ := x.(int64); return n }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// replyNow is the store's time of a reply: the script's now, or the
// store's clock exactly when it has one.
func (s *Store) replyNow(x any) time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.UnixMicro(asInt(x))
}

// runAny is run for scripts whose replies mix strings and integers; resent
// reports that an earlier send of the same call may have been carried out
// (its reply was lost).
func (s *Store) runAny(ctx context.Context, op string, sc *redis.Script, keys []string, args []any) ([]any, bool, error) {
	var err error
	resent := false
	for try := 0; try <= s.retries; try++ {
		var v []any
		cctx, cancel := context.WithTimeout(ctx, s.timeout)
		start := time.Now()
		v, err = sc.Run(cctx, s.c, keys, args...).Slice()
		s.observed(op, ctx, cctx, err, start)
		cancel()
		if err == nil {
			if len(v) == 0 {
				return nil, resent, fmt.Errorf("%s: empty reply: %w", op, ErrUnavailable)
			}
			return v, resent, nil
		}
		var rerr redis.Error
		if errors.As(err, &rerr) || ctx.Err() != nil {
			break // Redis refused the script, or the caller gave up
		}
		resent = true
	}
	return nil, resent, fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}
