package metering_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/admission"
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
	ten    *tenancy.Service
	pol    *policy.Service
	admin  context.Context // the platform admin
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
	ten.OnChange = func(ctx context.Context) { _ = mgr.Reload(ctx) }
	w := &world{store: &flakyStore{Store: st}, clock: quotatest.NewClock(time.Now()),
		who: metering.Who{TenantID: tn.ID, UserID: u.ID, ProjectID: prj.ID},
		ten: ten, pol: policy.NewService(st, mgr, log), admin: admin}
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

// BenchmarkKeyScope measures what a key's scope adds to the in-process
// engine's decision: the 6-scope chains of quota's BenchmarkAcquireSettle
// alone, with a seventh key scope that limits nothing, and with one that
// limits requests. It is why a key scope without limits is left out of
// Chain.Scopes (see policy.Snapshot.Chain).
func BenchmarkKeyScope(b *testing.B) {
	const users = 100_000
	base := quotatest.BenchChains(users)
	withKey := func(l *quota.Limits) [][]quota.Scope {
		out := make([][]quota.Scope, users)
		for u, c := range base {
			k := c[len(c)-1]
			k.Key, k.Limits = fmt.Sprintf("key/key_%d", u), l
			out[u] = append(slices.Clip(c), k)
		}
		return out
	}
	for _, c := range []struct {
		name   string
		chains [][]quota.Scope
	}{
		{"none", base},
		{"unlimited", withKey(nil)},
		{"limited", withKey(&quota.Limits{Requests: quota.Rate{Limit: 1_000_000, Period: time.Second}})},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := quota.NewMemory(quota.Options{})
			defer e.Close()
			ctx := context.Background()
			ask := quota.Ask{Requests: 1, Tokens: 1200, MinTokens: 100, GPUMillis: 250, CostMicros: 900, Concurrency: true, Model: "llama3"}
			use := quota.Usage{InputTokens: 400, OutputTokens: 300, GPUMillis: 180, CostMicros: 610}
			for _, ch := range c.chains {
				tk, err := e.Acquire(ctx, quota.Request{Chain: ch, Ask: ask})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.Settle(ctx, tk.ID, use); err != nil {
					b.Fatal(err)
				}
			}
			x := uint64(88172645463325252)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				tk, err := e.Acquire(ctx, quota.Request{Chain: c.chains[x%users], Ask: ask})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.Settle(ctx, tk.ID, use); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// newKey makes a key of the world's member, limited when limits is not
// "", and returns whom a request made with it charges.
func (w *world) newKey(t *testing.T, name, limits string) metering.Who {
	t.Helper()
	in := policy.KeyInput{KeyInput: tenancy.KeyInput{UserID: w.who.UserID, Name: name}}
	var k *tenancy.Key
	var err error
	if limits == "" {
		k, _, err = w.ten.CreateKey(w.admin, in.KeyInput)
	} else {
		var s policy.Spec
		if err := json.Unmarshal([]byte(limits), &s); err != nil {
			t.Fatal(err)
		}
		in.Limits = &s
		k, _, _, err = w.pol.CreateKey(w.admin, in)
	}
	if err != nil {
		t.Fatalf("create key %s: %v", name, err)
	}
	who := w.who
	who.KeyID = k.ID
	return who
}

// denial returns err's quota denial, failing the test when it is not one.
func denial(t *testing.T, err error) *quota.Denial {
	t.Helper()
	var d *quota.Denial
	if !errors.As(err, &d) {
		t.Fatalf("got %v, want a quota denial", err)
	}
	return d
}

// TestKeyScopeLimitsItsKeyOnly: a key limited to 2 requests a minute has
// its third request denied at its own scope, while another key of the
// same user is still admitted; a key limited to model a is refused b; a
// minute later the first key is admitted again. Every event records the
// key it was made with.
func TestKeyScopeLimitsItsKeyOnly(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	ci := w.newKey(t, "ci", `{"requests":"2/min"}`)
	laptop := w.newKey(t, "laptop", "")
	small := w.newKey(t, "small", `{"models":["a"]}`)
	for i := range 2 {
		if _, err := w.a.Acquire(ctx, ci, "metering", quota.Ask{Requests: 1}, time.Minute); err != nil {
			t.Fatalf("request %d with ci: %v", i+1, err)
		}
	}
	_, err := w.a.Acquire(ctx, ci, "metering", quota.Ask{Requests: 1}, time.Minute)
	if d := denial(t, err); d.Scope != "key/"+ci.KeyID || d.Dimension != quota.DimRequests || d.Code != quota.CodeRateLimited {
		t.Fatalf("third request with ci: got %+v, want rate_limited on requests at key/%s", d, ci.KeyID)
	}
	adm, err := w.b.Acquire(ctx, laptop, "metering", quota.Ask{Requests: 1, Tokens: 10}, time.Minute)
	if err != nil {
		t.Fatalf("request with the user's other key: %v", err)
	}
	if _, err := w.a.Acquire(ctx, small, "metering", quota.Ask{Requests: 1, Model: "a"}, time.Minute); err != nil {
		t.Fatalf("model a with small: %v", err)
	}
	_, err = w.a.Acquire(ctx, small, "metering", quota.Ask{Requests: 1, Model: "b"}, time.Minute)
	if d := denial(t, err); d.Code != quota.CodeModelNotAllowed || d.Scope != "key/"+small.KeyID {
		t.Fatalf("model b with small: got %+v, want model_not_allowed at key/%s", d, small.KeyID)
	}
	// Model b is fine with a key that does not restrict it.
	if _, err := w.a.Acquire(ctx, laptop, "metering", quota.Ask{Requests: 1, Model: "b"}, time.Minute); err != nil {
		t.Fatalf("model b with laptop: %v", err)
	}
	w.clock.Advance(time.Minute)
	if _, err := w.a.Acquire(ctx, ci, "metering", quota.Ask{Requests: 1}, time.Minute); err != nil {
		t.Fatalf("ci a minute later: %v", err)
	}
	// The unlimited key's ticket names it (settled on the other meter),
	// and so does its event, as its chain's innermost scope.
	view, err := w.a.Ticket(ctx, adm.ID)
	if err != nil || view.Who != laptop {
		t.Fatalf("ticket of laptop: got %+v, %v, want who %+v", view, err, laptop)
	}
	if _, err := w.a.Settle(ctx, adm.ID, quota.Usage{InputTokens: 7}, ""); err != nil {
		t.Fatal(err)
	}
	ev := w.events(t)[adm.ID]
	if n := len(ev.Scopes); n == 0 || ev.Scopes[n-1] != "key/"+laptop.KeyID {
		t.Fatalf("event scopes: got %v, want key/%s last", ev.Scopes, laptop.KeyID)
	}
}

// TestRestoreSkipsKeysThatLimitNothing: counters rebuilt from the ledger
// (a restart, Redis back empty) restore a key's scope only when the key is
// in the engine's chains (it has limits): a counter restored for a key
// that limits nothing would never move again and disagree with the ledger.
func TestRestoreSkipsKeysThatLimitNothing(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	free := w.newKey(t, "free", "")
	capped := w.newKey(t, "capped", `{"tokens":"100000/day"}`)
	for _, who := range []metering.Who{free, capped} {
		adm, err := w.a.Acquire(ctx, who, "metering", quota.Ask{Tokens: 100}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.a.Settle(ctx, adm.ID, quota.Usage{InputTokens: 40, OutputTokens: 20}, ""); err != nil {
			t.Fatal(err)
		}
	}
	fresh := quota.NewMemory(quota.Options{Now: w.clock.Now})
	t.Cleanup(func() { fresh.Close() })
	rec := usage.NewRecorder(w.store, slog.New(slog.NewTextHandler(io.Discard, nil)), 5*time.Millisecond)
	t.Cleanup(func() { rec.Close() })
	m := metering.New(fresh, w.a.Policy(), rec, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := m.Restore(ctx, w.store); err != nil {
		t.Fatal(err)
	}
	for who, want := range map[metering.Who]int64{free: 0, capped: 60} {
		u, err := fresh.Use(ctx, "key/"+who.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		if u.TokensDay.Used != want {
			t.Errorf("key/%s restored %d tokens today, want %d", who.KeyID, u.TokensDay.Used, want)
		}
	}
}

// TestSettleQueued: a queued settle answers while the usage store is down
// (the counters settled, the event queued), and the event is written once
// the store is back; a plain settle in the same outage waits and answers
// 503.
func TestSettleQueued(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	w.store.down.Store(true)
	adm, err := w.a.Acquire(ctx, w.who, "metering", quota.Ask{Tokens: 100}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.a.SettleQueued(ctx, adm.ID, quota.Usage{InputTokens: 30, OutputTokens: 20}, "", nil); err != nil {
		t.Fatalf("queued settle while the store is down: %v, want an answer at once", err)
	}
	u, err := w.engine.Use(ctx, "user/"+w.who.UserID)
	if err != nil || u.TokensDay.Used != 50 {
		t.Fatalf("counters after a queued settle: %+v, %v, want 50 tokens settled", u.TokensDay, err)
	}
	adm2, err := w.a.Acquire(ctx, w.who, "metering", quota.Ask{Tokens: 100}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := w.a.SettleWith(pctx, adm2.ID, quota.Usage{InputTokens: 1}, "", nil); err == nil {
		t.Fatal("a durable settle answered while the store was down")
	}
	w.store.down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := w.events(t)[adm.ID]; ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the queued event was not written after the store came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestQueuedAcquireDecidesOnTheCurrentPolicy: an admission waiting for a
// full concurrency limit is decided on the limits in force when it tries
// again, not those of its arrival: raising the limit lets it in although
// nothing was released.
func TestQueuedAcquireDecidesOnTheCurrentPolicy(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	setConcurrency := func(n string) {
		var s policy.Spec
		if err := json.Unmarshal([]byte(`{"concurrency":`+n+`}`), &s); err != nil {
			t.Fatal(err)
		}
		if _, err := w.pol.SetLimits(w.admin, "user/"+w.who.UserID, policy.LimitsInput{Limits: s}); err != nil {
			t.Fatal(err)
		}
	}
	setConcurrency("1")
	m := w.a
	m.Queue = admission.New(admission.Options{MaxWait: time.Minute, Poll: 10 * time.Millisecond})
	ask := quota.Ask{Requests: 1, Concurrency: true}
	first, err := m.Acquire(ctx, w.who, "run", ask, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		adm, err := m.Acquire(ctx, w.who, "run", ask, time.Minute)
		if err == nil && !adm.Waited.Queued {
			err = errors.New("admitted without waiting")
		}
		done <- err
	}()
	for end := time.Now().Add(10 * time.Second); m.Queue.Len() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the second admission never queued")
		}
	}
	setConcurrency("2")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the queued admission: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queued admission still waits on the limit of its arrival")
	}
	if _, err := m.Settle(ctx, first.ID, quota.Usage{}, ""); err != nil {
		t.Fatal(err)
	}
}
