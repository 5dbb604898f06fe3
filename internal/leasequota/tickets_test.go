package leasequota_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
)

const (
	mDay   = leasequota.MeterTokensDay
	mMonth = leasequota.MeterTokensMonth
	mConc  = leasequota.MeterConcurrency
)

// tokens and slot are reservations on the test scope.
func tokens(n int64) leasequota.TicketRes {
	return leasequota.TicketRes{Key: scope.Key, Meter: mDay, Amount: n, Window: day}
}

func slot() leasequota.TicketRes {
	return leasequota.TicketRes{Key: scope.Key, Meter: mConc, Amount: 1}
}

func ticket(id, owner string, exp time.Time, res ...leasequota.TicketRes) leasequota.TicketRecord {
	r := leasequota.TicketRecord{ID: id, Owner: owner, Expires: exp, Meta: "meta of " + id, Res: res}
	for _, x := range res {
		if x.Meter == mDay {
			r.Tokens += x.Amount
		}
	}
	return r
}

func mustRecord(t *testing.T, s *leasequota.Store, recs ...leasequota.TicketRecord) leasequota.RecordResult {
	t.Helper()
	r, err := s.RecordTickets(context.Background(), scope.Tenant, recs)
	if err != nil {
		t.Fatalf("RecordTickets: %v", err)
	}
	if len(r.Records) != len(recs) {
		t.Fatalf("RecordTickets: %d outcomes for %d records", len(r.Records), len(recs))
	}
	return r
}

func mustSettle(t *testing.T, s *leasequota.Store, id string, u quota.Usage) leasequota.TicketSettle {
	t.Helper()
	r, err := s.SettleTicket(context.Background(), scope.Tenant, id, u)
	if err != nil {
		t.Fatalf("SettleTicket %s: %v", id, err)
	}
	return r
}

func mustLookup(t *testing.T, s *leasequota.Store, id string) leasequota.TicketView {
	t.Helper()
	v, err := s.LookupTicket(context.Background(), scope.Tenant, id)
	if err != nil {
		t.Fatalf("LookupTicket %s: %v", id, err)
	}
	return v
}

// counters reports the test scope's tokens/day and concurrency counters.
func counters(t *testing.T, s *leasequota.Store) (int64, int64) {
	t.Helper()
	st := mustRead(t, s, scope)
	return st.Meters[mDay].Used, st.Meters[mConc].Used
}

func wantCounters(t *testing.T, s *leasequota.Store, tok, conc int64, when string) {
	t.Helper()
	if gt, gc := counters(t, s); gt != tok || gc != conc {
		t.Errorf("%s: used tokens %d slots %d, want %d and %d", when, gt, gc, tok, conc)
	}
}

// lease returns inst's lease on the test scope.
func lease(t *testing.T, s *leasequota.Store, inst string) leasequota.Lease {
	t.Helper()
	for _, l := range mustRead(t, s, scope).Leases {
		if l.Instance == inst {
			return l
		}
	}
	t.Fatalf("no lease of %s", inst)
	return leasequota.Lease{}
}

func grantTokensSlots(t *testing.T, s *leasequota.Store, inst string, ttl time.Duration, tok, tokPin, slots, slotPin int64) {
	t.Helper()
	g := mustGrant(t, s, reqID(), inst, ttl,
		leasequota.Want{Meter: mDay, Amount: tok, Pin: tokPin, Limit: 10000, Window: day},
		leasequota.Want{Meter: mConc, Amount: slots, Pin: slotPin, Limit: 1000})
	if g.Grants[0].Granted != tok || g.Grants[1].Granted != slots {
		t.Fatalf("granted %+v, want %d tokens and %d slots", g.Grants, tok, slots)
	}
}

// TestTicketRecordMovesReservation: recording moves the reservation out of
// the owner's lease (held drops, pin clamped to it) and leaves the
// counters alone: the amount is the ticket's now.
func TestTicketRecordMovesReservation(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	grantTokensSlots(t, s, "a", time.Minute, 500, 100, 3, 2)
	r := mustRecord(t, s, ticket("T1", "a", clk.Now().Add(time.Minute), tokens(200), slot()))
	if r.Records[0].Replay || len(r.Records[0].Stranded) != 0 {
		t.Errorf("outcome %+v, want a fresh record with nothing stranded", r.Records[0])
	}
	l := lease(t, s, "a")
	if m := l.Meters[mDay]; m.Held != 300 || m.Pinned != 100 {
		t.Errorf("lease tokens %+v, want held 300 (500 − 200), pinned 100", m)
	}
	if m := l.Meters[mConc]; m.Held != 2 || m.Pinned != 2 {
		t.Errorf("lease slots %+v, want held 2, pinned 2", m)
	}
	wantCounters(t, s, 500, 3, "after record")

	mustRecord(t, s, ticket("T2", "a", clk.Now().Add(time.Minute), tokens(250)))
	if m := lease(t, s, "a").Meters[mDay]; m.Held != 50 || m.Pinned != 50 {
		t.Errorf("lease tokens %+v, want held 50 and the pin clamped to it", m)
	}
	wantCounters(t, s, 500, 3, "after a second record")

	v := mustLookup(t, s, "T1")
	if v.Owner != "a" || v.Meta != "meta of T1" || v.Tokens != 200 || v.Settled || v.Expired ||
		!v.Expires.Equal(clk.Now().Add(time.Minute)) || len(v.Res) != 2 ||
		v.Res[0] != (leasequota.TicketRes{Key: scope.Key, Meter: mDay, Amount: 200, Window: time.Unix(day.Unix(), 0)}) ||
		v.Res[1] != (leasequota.TicketRes{Key: scope.Key, Meter: mConc, Amount: 1}) {
		t.Errorf("lookup %+v, want T1 live as recorded", v)
	}
}

// TestTicketSettle: a settle on another instance (another store and
// client: records do not depend on who wrote them) replaces the
// reservation with the use, below or above it, and frees the slot; a
// repeated settle returns the first settlement and changes nothing.
func TestTicketSettle(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	other, err := leasequota.NewStore(newClient(t), leasequota.Options{Prefix: prefixOf(t, s), Clock: clk.Now, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	grantTokensSlots(t, s, "a", time.Minute, 500, 0, 3, 0)
	exp := clk.Now().Add(time.Minute)
	mustRecord(t, s, ticket("T1", "a", exp, tokens(200), slot()), ticket("T2", "a", exp, tokens(100), slot()))
	clk.Advance(time.Second)

	r, err := other.SettleTicket(context.Background(), scope.Tenant, "T1", quota.Usage{InputTokens: 100, OutputTokens: 50})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Ticket
	if r.Replay || !first.Settled || first.Late || first.Overrun || first.Usage.InputTokens != 100 || first.Usage.OutputTokens != 50 ||
		first.Meta != "meta of T1" || first.Tokens != 200 || !first.SettledAt.Equal(clk.Now()) {
		t.Errorf("settle %+v, want T1 settled now with 100+50, not late nor overrun", r)
	}
	wantCounters(t, s, 450, 2, "settled 150 of 200") // 500 − 50, one slot freed

	r = mustSettle(t, s, "T2", quota.Usage{InputTokens: 180})
	if r.Replay || !r.Ticket.Overrun {
		t.Errorf("settle %+v, want an overrun", r)
	}
	wantCounters(t, s, 530, 1, "settled 180 of 100") // 450 + 80

	clk.Advance(time.Second)
	r = mustSettle(t, s, "T1", quota.Usage{InputTokens: 999})
	if !r.Replay || r.Ticket.Usage != first.Usage || !r.Ticket.SettledAt.Equal(first.SettledAt) {
		t.Errorf("repeated settle %+v, want the first settlement %+v marked Replay", r, first)
	}
	wantCounters(t, s, 530, 1, "after a repeated settle")
	if m := lease(t, s, "a").Meters[mDay]; m.Held != 200 {
		t.Errorf("lease held %d, want 200: settles do not touch the owner's lease", m.Held)
	}
	v := mustLookup(t, s, "T1")
	if !v.Settled || v.Expired || v.Usage != first.Usage {
		t.Errorf("lookup %+v, want T1 settled", v)
	}
}

// TestTicketSettleWindowChange: a reservation of yesterday's window is
// dead today: the use alone goes to today's counter, whether a grant has
// already restarted it or the settle must (the script asks for the current
// window); the month, still current, gets use − reservation.
func TestTicketSettleWindowChange(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	month := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	mustGrant(t, s, reqID(), "a", 72*time.Hour, // alive throughout: its reclaim would free its month lease
		leasequota.Want{Meter: mDay, Amount: 500, Limit: 10000, Window: day},
		leasequota.Want{Meter: mMonth, Amount: 500, Limit: 10000, Window: month})
	both := func(id string, n int64) leasequota.TicketRecord {
		return ticket(id, "a", clk.Now().Add(48*time.Hour), tokens(n), leasequota.TicketRes{Key: scope.Key, Meter: mMonth, Amount: n, Window: month})
	}
	mustRecord(t, s, both("T1", 200), both("T2", 100))
	clk.Advance(24 * time.Hour) // March 2nd, 12:00

	mustSettle(t, s, "T1", quota.Usage{InputTokens: 150})
	next := day.AddDate(0, 0, 1)
	st := mustRead(t, s, scope)
	if m := st.Meters[mDay]; m.Used != 150 || !m.Window.Equal(next) {
		t.Errorf("day %+v, want today's counter restarted with the use alone: 150 in %v", m, next)
	}
	if m := st.Meters[mMonth]; m.Used != 450 {
		t.Errorf("month used %d, want 500 − 50", m.Used)
	}

	g := mustGrant(t, s, reqID(), "b", time.Hour, leasequota.Want{Meter: mDay, Amount: 40, Limit: 10000, Window: next})
	if g.Grants[0].Used != 190 {
		t.Fatalf("today's counter %d after a grant of 40, want 190", g.Grants[0].Used)
	}
	mustSettle(t, s, "T2", quota.Usage{InputTokens: 30})
	st = mustRead(t, s, scope)
	if st.Meters[mDay].Used != 220 || st.Meters[mMonth].Used != 380 {
		t.Errorf("day %d month %d, want 190 + 30 and 450 − 70", st.Meters[mDay].Used, st.Meters[mMonth].Used)
	}
}

// TestTicketExpiry: the sweep refunds an expired ticket's reservations and
// keeps its record, so a later settle is late and charges the use alone;
// a settle finding a ticket past its expiry before any sweep does both.
func TestTicketExpiry(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	ctx := context.Background()
	grantTokensSlots(t, s, "a", time.Hour, 500, 0, 3, 0)
	mustRecord(t, s, ticket("T1", "a", clk.Now().Add(time.Minute), tokens(200), slot()),
		ticket("T2", "a", clk.Now().Add(10*time.Minute), tokens(100), slot()))
	clk.Advance(2 * time.Minute)

	if n, err := s.ReclaimTickets(ctx, scope.Tenant); err != nil || n != 1 {
		t.Fatalf("ReclaimTickets got %d %v, want 1", n, err)
	}
	wantCounters(t, s, 300, 2, "after T1's expiry")
	if n, _ := s.ReclaimTickets(ctx, scope.Tenant); n != 0 {
		t.Errorf("second ReclaimTickets got %d, want 0", n)
	}
	if v := mustLookup(t, s, "T1"); !v.Expired || v.Settled {
		t.Errorf("lookup %+v, want T1 expired", v)
	}
	if _, err := s.HeartbeatTicket(ctx, scope.Tenant, "T1", clk.Now().Add(time.Minute)); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("heartbeat of an expired ticket: %v, want ErrUnknownTicket", err)
	}

	r := mustSettle(t, s, "T1", quota.Usage{InputTokens: 150})
	if !r.Ticket.Late || r.Replay || r.Ticket.Overrun {
		t.Errorf("settle %+v, want late", r)
	}
	wantCounters(t, s, 450, 2, "late settle of 150") // the use alone; the slot was freed at expiry
	if r = mustSettle(t, s, "T1", quota.Usage{InputTokens: 150}); !r.Replay || !r.Ticket.Late {
		t.Errorf("repeated late settle %+v, want the first, late", r)
	}
	wantCounters(t, s, 450, 2, "repeated late settle")

	clk.Advance(10 * time.Minute) // T2 expired, not swept
	if r = mustSettle(t, s, "T2", quota.Usage{InputTokens: 60}); !r.Ticket.Late {
		t.Errorf("settle %+v, want late", r)
	}
	wantCounters(t, s, 410, 1, "settle past expiry") // 450 − 100 refunded + 60, slot freed
	if n, _ := s.ReclaimTickets(ctx, scope.Tenant); n != 0 {
		t.Errorf("ReclaimTickets got %d after T2's settle, want 0", n)
	}
	wantCounters(t, s, 410, 1, "after a sweep")
}

// TestTicketHeartbeat: a heartbeat moves the expiry, so the sweep leaves
// the ticket alone past its first expiry; past the new one it is refunded.
func TestTicketHeartbeat(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	ctx := context.Background()
	start := clk.Now()
	grantTokensSlots(t, s, "a", time.Hour, 500, 0, 3, 0)
	mustRecord(t, s, ticket("T1", "a", start.Add(time.Minute), tokens(200), slot()))
	clk.Advance(30 * time.Second)
	exp, err := s.HeartbeatTicket(ctx, scope.Tenant, "T1", start.Add(150*time.Second))
	if err != nil || !exp.Equal(start.Add(150*time.Second)) {
		t.Fatalf("heartbeat got %v %v, want %v", exp, err, start.Add(150*time.Second))
	}
	clk.Advance(time.Minute) // past the first expiry
	if n, err := s.ReclaimTickets(ctx, scope.Tenant); err != nil || n != 0 {
		t.Errorf("ReclaimTickets got %d %v, want 0", n, err)
	}
	wantCounters(t, s, 500, 3, "heartbeated ticket")
	if v := mustLookup(t, s, "T1"); v.Expired || !v.Expires.Equal(exp) {
		t.Errorf("lookup %+v, want live until %v", v, exp)
	}
	clk.Advance(time.Minute) // past the new expiry
	if _, err := s.HeartbeatTicket(ctx, scope.Tenant, "T1", clk.Now().Add(time.Minute)); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("heartbeat past expiry: %v, want ErrUnknownTicket", err)
	}
	wantCounters(t, s, 300, 2, "expired ticket found by a heartbeat")
	if v := mustLookup(t, s, "T1"); !v.Expired {
		t.Errorf("lookup %+v, want expired", v)
	}
}

// TestTicketRecordReplay: a record sent again moves nothing again.
func TestTicketRecordReplay(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	grantTokensSlots(t, s, "a", time.Hour, 500, 0, 3, 0)
	exp := clk.Now().Add(time.Minute)
	mustRecord(t, s, ticket("T1", "a", exp, tokens(200), slot()))
	r := mustRecord(t, s, ticket("T1", "a", exp, tokens(200), slot()), ticket("T2", "a", exp, tokens(100)))
	if !r.Records[0].Replay || r.Records[1].Replay {
		t.Errorf("outcomes %+v, want T1 a replay and T2 fresh", r.Records)
	}
	l := lease(t, s, "a")
	if l.Meters[mDay].Held != 200 || l.Meters[mConc].Held != 2 {
		t.Errorf("lease tokens %d slots %d, want 500 − 200 − 100 and 3 − 1", l.Meters[mDay].Held, l.Meters[mConc].Held)
	}
	wantCounters(t, s, 500, 3, "after a replayed record")
}

// TestTicketStranded: a reservation whose lease was reclaimed is reported
// and left where reclaim put it (stranded, still counted); its settle
// charges only use beyond it, frees no slot, and its expiry refunds nothing.
func TestTicketStranded(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{MaxTTL: time.Hour})
	ctx := context.Background()
	grantTokensSlots(t, s, "dead", 10*time.Second, 500, 300, 3, 2)
	grantTokensSlots(t, s, "live", time.Hour, 100, 0, 1, 0)
	clk.Advance(11 * time.Second)
	if n, err := s.Reclaim(ctx, scope); err != nil || n != 1 {
		t.Fatalf("Reclaim got %d %v, want 1", n, err)
	}
	wantCounters(t, s, 400, 3, "after reclaim") // live 100 + 300 stranded; live 1 + 2 stranded
	exp := clk.Now().Add(time.Minute)
	r := mustRecord(t, s,
		ticket("T1", "dead", exp, tokens(200), slot()),
		ticket("T2", "live", exp, tokens(50), slot()),
		ticket("T3", "dead", exp, tokens(50)),
		ticket("T4", "dead", exp, tokens(20)))
	if got := r.Records[0].Stranded; !slices.Equal(got, []int{0, 1}) {
		t.Errorf("T1 stranded %v, want [0 1]", got)
	}
	if got := r.Records[1].Stranded; len(got) != 0 {
		t.Errorf("T2 stranded %v, want none", got)
	}
	if got := r.Records[2].Stranded; !slices.Equal(got, []int{0}) {
		t.Errorf("T3 stranded %v, want [0]", got)
	}
	wantCounters(t, s, 400, 3, "after recording")
	if l := lease(t, s, "live"); l.Meters[mDay].Held != 50 || l.Meters[mConc].Held != 0 {
		t.Errorf("live lease %+v, want 50 tokens and no slot left", l.Meters)
	}
	if v := mustLookup(t, s, "T1"); !v.Res[0].Stranded || !v.Res[1].Stranded {
		t.Errorf("lookup %+v, want both reservations stranded", v.Res)
	}
	if r := mustRecord(t, s, ticket("T1", "dead", exp, tokens(200), slot())); !r.Records[0].Replay || !slices.Equal(r.Records[0].Stranded, []int{0, 1}) {
		t.Errorf("replayed record %+v, want the stranded reservations reported again", r.Records[0])
	}

	mustSettle(t, s, "T1", quota.Usage{InputTokens: 150})
	wantCounters(t, s, 400, 3, "stranded settled below its reservation")
	mustSettle(t, s, "T3", quota.Usage{InputTokens: 80})
	wantCounters(t, s, 430, 3, "stranded settled 30 above")
	mustSettle(t, s, "T2", quota.Usage{InputTokens: 50})
	wantCounters(t, s, 430, 2, "live ticket settled") // its slot freed

	clk.Advance(2 * time.Minute)
	if n, _ := s.ReclaimTickets(ctx, scope.Tenant); n != 1 {
		t.Errorf("ReclaimTickets got %d, want T4", n)
	}
	wantCounters(t, s, 430, 2, "stranded ticket expired") // nothing refunded
}

// TestTicketBatch: 300 records in one call, each moving 3 tokens and a slot.
func TestTicketBatch(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	grantTokensSlots(t, s, "a", time.Hour, 1000, 0, 300, 0)
	recs := make([]leasequota.TicketRecord, 300)
	for i := range recs {
		recs[i] = ticket("B"+strconv.Itoa(i), "a", clk.Now().Add(time.Minute), tokens(3), slot())
	}
	r := mustRecord(t, s, recs...)
	for i, o := range r.Records {
		if o.Replay || len(o.Stranded) != 0 {
			t.Fatalf("record %d: %+v, want fresh, nothing stranded", i, o)
		}
	}
	l := lease(t, s, "a")
	if l.Meters[mDay].Held != 100 || l.Meters[mConc].Held != 0 {
		t.Errorf("lease tokens %d slots %d, want 1000 − 900 and 0", l.Meters[mDay].Held, l.Meters[mConc].Held)
	}
	wantCounters(t, s, 1000, 300, "after 300 records")
	if v := mustLookup(t, s, "B299"); v.Tokens != 3 || len(v.Res) != 2 {
		t.Errorf("B299 %+v, want 3 tokens and a slot", v)
	}
	mustSettle(t, s, "B0", quota.Usage{OutputTokens: 1})
	wantCounters(t, s, 998, 299, "after a settle")
	clk.Advance(2 * time.Minute)
	n := 0
	for range 10 {
		k, err := s.ReclaimTickets(context.Background(), scope.Tenant)
		if err != nil {
			t.Fatal(err)
		}
		if k > 64 {
			t.Fatalf("ReclaimTickets expired %d in a call, want ≤ 64", k)
		}
		n += k
	}
	if n != 299 {
		t.Errorf("swept %d, want the 299 unsettled", n)
	}
	wantCounters(t, s, 101, 0, "after the sweep") // 998 − 299·3
}

// TestTicketUnknown: an id never recorded on the tag is unknown to every
// call; records are per tag, so the global tag does not know a tenant's.
func TestTicketUnknown(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{})
	ctx := context.Background()
	if _, err := s.SettleTicket(ctx, scope.Tenant, "nope", quota.Usage{InputTokens: 1}); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("settle: %v, want ErrUnknownTicket", err)
	}
	if _, err := s.HeartbeatTicket(ctx, scope.Tenant, "nope", clk.Now().Add(time.Minute)); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("heartbeat: %v, want ErrUnknownTicket", err)
	}
	if _, err := s.LookupTicket(ctx, scope.Tenant, "nope"); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("lookup: %v, want ErrUnknownTicket", err)
	}
	mustRecord(t, s, ticket("T1", "a", clk.Now().Add(time.Minute)))
	if _, err := s.SettleTicket(ctx, "", "T1", quota.Usage{}); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("settle on the global tag: %v, want ErrUnknownTicket", err)
	}
	if _, err := s.SettleTicket(ctx, scope.Tenant, "T1", quota.Usage{InputTokens: -1}); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("negative usage: %v, want ErrInvalid", err)
	}
	if _, err := s.RecordTickets(ctx, scope.Tenant, []leasequota.TicketRecord{ticket("T2", "a", clk.Now(),
		leasequota.TicketRes{Key: scope.Key, Meter: leasequota.MeterRequests, Amount: 1})}); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("record of a rate reservation: %v, want ErrInvalid", err)
	}
}

// TestTicketEpoch: with RequireEpoch, the mutating ticket calls change
// nothing until the tag's epoch is set.
func TestTicketEpoch(t *testing.T) {
	clk := newClock()
	s := newStore(t, newClient(t), clk, leasequota.Options{RequireEpoch: true})
	ctx := context.Background()
	exp := clk.Now().Add(time.Minute)
	if _, err := s.RecordTickets(ctx, scope.Tenant, []leasequota.TicketRecord{ticket("T1", "a", exp, slot())}); !errors.Is(err, leasequota.ErrEpochLost) {
		t.Errorf("record: %v, want ErrEpochLost", err)
	}
	if _, err := s.LookupTicket(ctx, scope.Tenant, "T1"); !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("lookup after a refused record: %v, want ErrUnknownTicket", err)
	}
	if err := s.SetEpoch(ctx, scope.Tenant, "e1"); err != nil {
		t.Fatal(err)
	}
	mustGrant(t, s, reqID(), "a", time.Hour, leasequota.Want{Meter: mConc, Amount: 1, Limit: 5})
	mustRecord(t, s, ticket("T1", "a", exp, slot()))
	if err := newClient(t).Del(ctx, s.Tag(scope.Tenant)+":epoch").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SettleTicket(ctx, scope.Tenant, "T1", quota.Usage{}); !errors.Is(err, leasequota.ErrEpochLost) || !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("settle: %v, want ErrEpochLost", err)
	}
	if _, err := s.HeartbeatTicket(ctx, scope.Tenant, "T1", exp); !errors.Is(err, leasequota.ErrEpochLost) {
		t.Errorf("heartbeat: %v, want ErrEpochLost", err)
	}
	if _, err := s.ReclaimTickets(ctx, scope.Tenant); !errors.Is(err, leasequota.ErrEpochLost) {
		t.Errorf("reclaim: %v, want ErrEpochLost", err)
	}
	wantCounters(t, s, 0, 1, "refused settle")
	if v := mustLookup(t, s, "T1"); v.Settled {
		t.Errorf("T1 settled by a refused call")
	}
	s.SetEpoch(ctx, scope.Tenant, "e2")
	mustSettle(t, s, "T1", quota.Usage{})
	wantCounters(t, s, 0, 0, "settle with the epoch back")
}

// TestTicketRedisTime: with Redis's own clock, a ticket records, settles
// and reports its settlement time from Redis.
func TestTicketRedisTime(t *testing.T) {
	s := newStore(t, newClient(t), nil, leasequota.Options{})
	now := time.Now().UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	if now.Add(10 * time.Minute).After(today.AddDate(0, 0, 1)) {
		t.Skip("too close to midnight UTC: the day's window would end during the test")
	}
	mustGrant(t, s, reqID(), "a", time.Minute,
		leasequota.Want{Meter: mDay, Amount: 500, Limit: 10000, Window: today},
		leasequota.Want{Meter: mConc, Amount: 1, Limit: 10})
	mustRecord(t, s, ticket("T1", "a", now.Add(10*time.Minute), leasequota.TicketRes{Key: scope.Key, Meter: mDay, Amount: 200, Window: today}, slot()))
	before := time.Now()
	r := mustSettle(t, s, "T1", quota.Usage{InputTokens: 20})
	after := time.Now()
	// Redis's clock and this process's are the same machine's: the
	// settlement's time lies between the call's start and end (a second
	// of slack for the clocks' resolutions), however slow the call was.
	if r.Ticket.Late || r.Ticket.SettledAt.Before(before.Add(-time.Second)) || r.Ticket.SettledAt.After(after.Add(time.Second)) {
		t.Errorf("settle %+v, want settled on time between %v and %v", r, before, after)
	}
	wantCounters(t, s, 320, 0, "settled 20 of 200")
}
