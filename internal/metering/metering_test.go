package metering_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// flakyStore is the SQLite store whose usage writes fail, as an outage
// does, while down is set.
type flakyStore struct {
	*sqlstore.Store
	down atomic.Bool
}

func (f *flakyStore) RecordUsage(ctx context.Context, events []usage.Event) (int, error) {
	if f.down.Load() {
		return 0, &errs.Error{Code: errs.Unavailable, Message: "connection refused"}
	}
	return f.Store.RecordUsage(ctx, events)
}

// world is a tenant with a member, two meters ("instances") over one
// engine and one store, and a fake clock.
type world struct {
	store  *flakyStore
	engine *quota.Memory
	clock  *quotatest.Clock
	a, b   *metering.Meter
	who    metering.Who
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "sluice.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ten := tenancy.NewService(st, log)
	boot, err := ten.Bootstrap(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ten.Authenticate(ctx, boot.Secret)
	if err != nil {
		t.Fatal(err)
	}
	admin := tenancy.WithPrincipal(ctx, p)
	tn, err := ten.CreateTenant(admin, tenancy.TenantInput{Name: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	prj, err := ten.CreateProject(admin, tenancy.ProjectInput{TenantID: tn.ID, Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := ten.CreateUser(admin, tenancy.UserInput{TenantID: tn.ID, Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ten.AddMember(admin, tenancy.MembershipInput{UserID: u.ID, ProjectID: prj.ID}); err != nil {
		t.Fatal(err)
	}
	mgr := policy.NewManager(st, policy.Spec{}, log)
	if err := mgr.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	w := &world{store: &flakyStore{Store: st}, clock: quotatest.NewClock(time.Now()),
		who: metering.Who{TenantID: tn.ID, UserID: u.ID, ProjectID: prj.ID}}
	w.engine = quota.NewMemory(quota.Options{Now: w.clock.Now})
	t.Cleanup(func() { w.engine.Close() })
	// Two meters, each with its own recorder, as two instances have: they
	// share only the engine and the store.
	for _, m := range []**metering.Meter{&w.a, &w.b} {
		rec := usage.NewRecorder(w.store, log, 5*time.Millisecond)
		t.Cleanup(func() { rec.Close() })
		*m = metering.New(w.engine, mgr, rec, log)
	}
	return w
}

// events returns the stored usage events by id.
func (w *world) events(t *testing.T) map[string]usage.Event {
	t.Helper()
	evs, err := w.store.UsageEvents(context.Background(), "", time.Unix(0, 0), time.Now().Add(24*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]usage.Event{}
	for _, e := range evs {
		out[e.ID] = e
	}
	return out
}

// TestSettleOnAnotherMeter: a ticket acquired through one meter is settled
// through another; the event carries the owner and kind the first one
// knew, and replays through either record nothing new.
func TestSettleOnAnotherMeter(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	adm, err := w.a.Acquire(ctx, w.who, "metering", quota.Ask{Requests: 1, Tokens: 100, Model: "gpt-x"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	view, err := w.b.Ticket(ctx, adm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if view.Who != w.who || view.Kind != "metering" || view.Tokens != 100 {
		t.Fatalf("ticket seen from the other meter: got %+v, want owner %+v, kind metering, 100 tokens", view, w.who)
	}
	s, err := w.b.Settle(ctx, adm.ID, quota.Usage{InputTokens: 30, OutputTokens: 40}, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*metering.Meter{w.a, w.b} {
		again, err := m.Settle(ctx, adm.ID, quota.Usage{InputTokens: 999}, "")
		if err != nil || again.Usage != s.Usage || !again.Replay {
			t.Fatalf("replay: got %+v, %v; want the first settlement, marked as a replay", again, err)
		}
	}
	evs := w.events(t)
	if len(evs) != 1 {
		t.Fatalf("got %d events, want 1", len(evs))
	}
	e := evs[adm.ID]
	if e.UserID != w.who.UserID || e.ProjectID != w.who.ProjectID || e.Kind != "metering" || e.Model != "gpt-x" || e.Tokens() != 70 {
		t.Fatalf("event: got %+v, want alice's metering event of 70 tokens on gpt-x", e)
	}
}

// TestSettleWaitsForDurability: while the store is down a settle does not
// answer success; a replay once it is back makes the event durable, once.
func TestSettleWaitsForDurability(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	adm, err := w.a.Acquire(ctx, w.who, "metering", quota.Ask{Requests: 1, Tokens: 10}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	w.store.down.Store(true)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = w.a.Settle(short, adm.ID, quota.Usage{InputTokens: 5}, "")
	cancel()
	if err == nil {
		t.Fatal("settle answered success while the store could not write its event")
	}
	if _, ok := w.events(t)[adm.ID]; ok {
		t.Fatal("event stored while the store was down")
	}
	// A caller that does not give up is refused after the meter's
	// patience, with 503 and Retry-After, not held for the outage.
	w.a.CommitPatience = 100 * time.Millisecond
	_, err = w.a.Settle(ctx, adm.ID, quota.Usage{InputTokens: 5}, "")
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.Unavailable || e.RetryAfter <= 0 {
		t.Fatalf("settle while the store is down: got %v, want unavailable with a Retry-After", err)
	}
	w.store.down.Store(false)
	if _, err := w.b.Settle(ctx, adm.ID, quota.Usage{InputTokens: 5}, ""); err != nil {
		t.Fatalf("replay after the store came back: %v", err)
	}
	if e, ok := w.events(t)[adm.ID]; !ok || e.Tokens() != 5 {
		t.Fatalf("after the replay: got %+v (stored %v), want the 5-token event", e, ok)
	}
}

// TestLateSettleIsChargedAndRecorded: a ticket settled after it expired
// is charged to the current window and recorded, so the counters and the
// ledger agree.
func TestLateSettleIsChargedAndRecorded(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	adm, err := w.a.Acquire(ctx, w.who, "metering", quota.Ask{Tokens: 100}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	w.clock.Advance(2 * time.Second)
	s, err := w.b.Settle(ctx, adm.ID, quota.Usage{InputTokens: 60}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Late {
		t.Fatalf("settle after expiry: got %+v, want Late", s)
	}
	use, err := w.a.Use(ctx, "user/"+w.who.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if use.TokensDay.Used != 60 {
		t.Fatalf("user tokens/day after a late settle: got %d, want 60", use.TokensDay.Used)
	}
	if e := w.events(t)[adm.ID]; e.Tokens() != 60 {
		t.Fatalf("late settle's event: got %d tokens, want 60", e.Tokens())
	}
}

// TestUnknownTicket: a ticket id that was never issued is not_found on
// every path.
func TestUnknownTicket(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	const id = "tkt_00000000000000000000000000"
	if _, err := w.a.Settle(ctx, id, quota.Usage{}, ""); !errs.Is(err, errs.NotFound) {
		t.Errorf("settle: got %v, want not_found", err)
	}
	if _, err := w.a.Heartbeat(ctx, id, time.Minute); !errs.Is(err, errs.NotFound) {
		t.Errorf("heartbeat: got %v, want not_found", err)
	}
	if _, err := w.a.Ticket(ctx, id); !errs.Is(err, errs.NotFound) && !errors.Is(err, quota.ErrUnknownTicket) {
		t.Errorf("ticket: got %v, want not_found", err)
	}
}
