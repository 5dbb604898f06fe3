package alerts_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/quota"
)

var t0 = time.Date(2026, 5, 14, 10, 0, 0, 0, time.UTC)

func thresholdsOf(evs []*alerts.Event) []int {
	var out []int
	for _, e := range evs {
		out = append(out, e.Threshold)
	}
	return out
}

// 0 → 95% fires 80 and 90, once; → 100% fires 100, once; a new day fires
// again. Each event has its log line with the fixed keys.
func TestThresholdsFireOncePerPeriod(t *testing.T) {
	clk := newClock(t0)
	store := openSQLite(t, t.TempDir())
	addTenant(t, store)
	snap := snapshot(t, t0, `{"tokens":"1000/day"}`)
	eng := quota.NewMemory(quota.Options{Now: clk.Now})
	defer eng.Close()
	in := newInstance(t, store, eng, snap, clk, alerts.Endpoint{})

	if n := in.sweep(t); n != 0 {
		t.Fatalf("nothing used: %d events, want 0", n)
	}
	in.use(t, snap, 100)
	if n := in.sweep(t); n != 0 {
		t.Fatalf("10%% used: %d events, want 0", n)
	}
	in.use(t, snap, 850) // 95%
	if n := in.sweep(t); n != 2 {
		t.Fatalf("95%% used: %d events, want 2", n)
	}
	if got := thresholdsOf(in.fired); !slices.Equal(got, []int{80, 90}) {
		t.Fatalf("thresholds fired at 95%%: got %v, want [80 90]", got)
	}
	if n := in.sweep(t); n != 0 {
		t.Fatalf("95%% again: %d events, want 0 (once per period)", n)
	}
	in.use(t, snap, 50) // 100%
	if n := in.sweep(t); n != 1 {
		t.Fatalf("100%% used: %d events, want 1", n)
	}
	if n := in.sweep(t); n != 0 {
		t.Fatalf("100%% again: %d events, want 0", n)
	}
	if got := thresholdsOf(in.fired); !slices.Equal(got, []int{80, 90, 100}) {
		t.Fatalf("thresholds fired: got %v, want [80 90 100]", got)
	}
	ev := in.fired[2]
	if ev.Scope.Key != "tenant/"+tenantID || ev.Scope.Name != "university" || ev.Tenant == nil || ev.Tenant.Name != "university" ||
		ev.Dimension != "tokens" || ev.Window != "day" || ev.Period != "2026-05-14" || ev.Used != 1000 || ev.Limit != 1000 ||
		ev.Percent != 100 || !ev.ResetAt.Equal(time.Date(2026, 5, 15, 0, 0, 0, 0, time.UTC)) || ev.Type != alerts.EventType {
		t.Fatalf("100%% event: got %+v", ev)
	}
	lines := in.logs.lines(t, "quota threshold crossed")
	if len(lines) != 3 {
		t.Fatalf("log lines: got %d, want 3", len(lines))
	}
	for _, k := range []string{"tenant", "scope", "dimension", "window", "period", "threshold", "used", "limit"} {
		if _, ok := lines[0][k]; !ok {
			t.Errorf("log line lacks %q: %v", k, lines[0])
		}
	}
	if lines[0]["threshold"] != float64(80) || lines[0]["tenant"] != tenantID || lines[0]["used"] != float64(950) {
		t.Errorf("first log line: got %v", lines[0])
	}

	// A new instance over the same database (a restart) announces nothing
	// again: the database remembers.
	again := newInstance(t, store, eng, snap, clk, alerts.Endpoint{})
	again.use(t, snap, 0)
	if n := again.sweep(t); n != 0 {
		t.Fatalf("after a restart, same period: %d events, want 0", n)
	}

	// The next day is a new period.
	clk.Add(24 * time.Hour)
	in.use(t, snap, 850)
	if n := in.sweep(t); n != 1 {
		t.Fatalf("next day at 85%%: %d events, want 1", n)
	}
	if ev := in.fired[len(in.fired)-1]; ev.Period != "2026-05-15" || ev.Threshold != 80 || ev.Used != 850 {
		t.Fatalf("next day's event: got period %s threshold %d used %d, want 2026-05-15, 80, 850", ev.Period, ev.Threshold, ev.Used)
	}
}

// Two instances on one PostgreSQL database both see the crossing; one
// records and announces each event, and the endpoint gets each once.
func TestOncePerPeriodAcrossInstances(t *testing.T) {
	clk := newClock(t0)
	dbURL := pgDatabase(t)
	storeA, storeB := openPostgres(t, dbURL), openPostgres(t, dbURL)
	addTenant(t, storeA)
	snap := snapshot(t, t0, `{"tokens":["1000/day","5000/month"]}`)
	eng := quota.NewMemory(quota.Options{Now: clk.Now}) // stands for the shared engine (Redis)
	defer eng.Close()
	const secret = "platform-secret-0123456789"
	rcv := newReceiver(t, func() string { return secret }, clk)
	global := alerts.Endpoint{URL: rcv.srv.URL, Secret: secret}
	a := newInstance(t, storeA, eng, snap, clk, global)
	b := newInstance(t, storeB, eng, snap, clk, global)
	a.use(t, snap, 500)
	b.use(t, snap, 450) // 95% of the day, 19% of the month

	var wg sync.WaitGroup
	var na, nb int
	var ea, eb error
	wg.Add(2)
	go func() { defer wg.Done(); na, ea = a.alerter.Sweep(context.Background()) }()
	go func() { defer wg.Done(); nb, eb = b.alerter.Sweep(context.Background()) }()
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatalf("sweeps: %v, %v", ea, eb)
	}
	if na+nb != 2 {
		t.Fatalf("events announced: %d by A + %d by B, want 2 in all", na, nb)
	}
	all := append(thresholdsOf(a.fired), thresholdsOf(b.fired)...)
	slices.Sort(all)
	if !slices.Equal(all, []int{80, 90}) {
		t.Fatalf("thresholds announced: got %v, want [80 90]", all)
	}
	// Both sweep again: neither announces anything.
	if n := a.sweep(t) + b.sweep(t); n != 0 {
		t.Fatalf("second sweeps: %d events, want 0", n)
	}
	// Both dispatchers deliver at once: each event reaches the endpoint once.
	wg.Add(2)
	for _, in := range []*instance{a, b} {
		go func() {
			defer wg.Done()
			if _, err := in.disp.DeliverDue(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got := rcv.requests()
	if len(got) != 2 {
		t.Fatalf("webhooks received: %d, want 2", len(got))
	}
	ids := map[string]bool{}
	for _, r := range got {
		if r.verified != nil {
			t.Errorf("signature of %s: %v", r.eventID, r.verified)
		}
		if r.eventID != r.event.ID {
			t.Errorf("X-Sluice-Event-Id %s, body id %s", r.eventID, r.event.ID)
		}
		ids[r.eventID] = true
	}
	if len(ids) != 2 {
		t.Fatalf("distinct events received: %d, want 2", len(ids))
	}
	if n, err := storeB.PendingDeliveries(context.Background()); err != nil || n != 0 {
		t.Fatalf("pending deliveries: %d (%v), want 0", n, err)
	}
}

// The signature is HMAC-SHA256 over "<unix>.<body>", hex, as documented.
func TestSignature(t *testing.T) {
	body := []byte(`{"id":"evt_1","type":"quota.threshold"}`)
	at := time.Unix(1_780_000_000, 0)
	h := alerts.Sign("s3cret-s3cret-s3cret", at, body)

	m := hmac.New(sha256.New, []byte("s3cret-s3cret-s3cret"))
	m.Write([]byte(strconv.FormatInt(at.Unix(), 10) + "." + string(body)))
	if want := "t=1780000000,v1=" + hex.EncodeToString(m.Sum(nil)); h != want {
		t.Fatalf("signature: got %s, want %s", h, want)
	}
	if err := alerts.Verify("s3cret-s3cret-s3cret", h, body, at.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatalf("verify with the right secret: %v", err)
	}
	for _, c := range []struct {
		name, secret, header string
		body                 []byte
		now                  time.Time
		want                 error
	}{
		{"wrong secret", "another-secret-entirely", h, body, at, alerts.ErrBadSignature},
		{"changed body", "s3cret-s3cret-s3cret", h, []byte(`{"id":"evt_2"}`), at, alerts.ErrBadSignature},
		{"replayed late", "s3cret-s3cret-s3cret", h, body, at.Add(10 * time.Minute), alerts.ErrStale},
		{"garbage", "s3cret-s3cret-s3cret", "v1=abc", body, at, alerts.ErrBadSignature},
	} {
		if err := alerts.Verify(c.secret, c.header, c.body, c.now, 5*time.Minute); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

// A receiver failing twice then answering 200 gets three attempts, 1 s
// and 2 s apart on the fake clock; each is signed, and the log records
// them.
func TestRetryWithBackoff(t *testing.T) {
	clk := newClock(t0)
	store := openSQLite(t, t.TempDir())
	addTenant(t, store)
	snap := snapshot(t, t0, `{"tokens":"1000/day"}`)
	eng := quota.NewMemory(quota.Options{Now: clk.Now})
	defer eng.Close()
	const secret = "platform-secret-0123456789"
	rcv := newReceiver(t, func() string { return secret }, clk, 500, 503)
	in := newInstance(t, store, eng, snap, clk, alerts.Endpoint{URL: rcv.srv.URL, Secret: secret})
	in.alerter.Thresholds = []int{50}
	in.use(t, snap, 600)
	if n := in.sweep(t); n != 1 {
		t.Fatalf("events: %d, want 1", n)
	}
	ctx := context.Background()
	deliver := func(want int) {
		t.Helper()
		n, err := in.disp.DeliverDue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Fatalf("delivered %d, want %d", n, want)
		}
	}
	log := func() *alerts.Delivery {
		t.Helper()
		ds, err := store.Deliveries(ctx, alerts.DeliveryFilter{})
		if err != nil || len(ds) != 1 {
			t.Fatalf("deliveries: %v (%v), want one", ds, err)
		}
		return ds[0]
	}
	deliver(0)
	d := log()
	if d.Attempts != 1 || d.LastStatus != 500 || d.Status != alerts.StatusPending || d.NextAttemptAt == nil || !d.NextAttemptAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("after the first attempt: got %+v, want attempt 1, 500, next at +1s", d)
	}
	deliver(0) // not due yet
	if len(rcv.requests()) != 1 {
		t.Fatalf("a delivery not due was sent")
	}
	clk.Add(time.Second)
	deliver(0)
	d = log()
	if d.Attempts != 2 || d.LastStatus != 503 || !d.NextAttemptAt.Equal(t0.Add(3*time.Second)) || d.LastError == "" {
		t.Fatalf("after the second attempt: got %+v, want attempt 2, 503, next at +3s", d)
	}
	clk.Add(time.Second)
	deliver(0) // backoff doubled: not due at +2s
	clk.Add(time.Second)
	deliver(1)
	d = log()
	if d.Attempts != 3 || d.Status != alerts.StatusDelivered || d.LastStatus != 200 || d.NextAttemptAt != nil || d.LastError != "" {
		t.Fatalf("after the third attempt: got %+v, want delivered on attempt 3", d)
	}
	got := rcv.requests()
	if len(got) != 3 {
		t.Fatalf("requests: %d, want 3", len(got))
	}
	for i, r := range got {
		if r.verified != nil {
			t.Errorf("attempt %d signature: %v", i+1, r.verified)
		}
	}
}

// A delivery that never succeeds fails after MaxAttempts and stops.
func TestDeliveryGivesUp(t *testing.T) {
	clk := newClock(t0)
	store := openSQLite(t, t.TempDir())
	addTenant(t, store)
	snap := snapshot(t, t0, `{"tokens":"1000/day"}`)
	eng := quota.NewMemory(quota.Options{Now: clk.Now})
	defer eng.Close()
	rcv := newReceiver(t, func() string { return "x" }, clk, 500, 500, 500, 500, 500, 500)
	in := newInstance(t, store, eng, snap, clk, alerts.Endpoint{URL: rcv.srv.URL, Secret: "platform-secret-0123456789"})
	in.disp.MaxAttempts = 3
	in.alerter.Thresholds = []int{50}
	in.use(t, snap, 600)
	in.sweep(t)
	for range 6 {
		if _, err := in.disp.DeliverDue(context.Background()); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Minute)
	}
	if n := len(rcv.requests()); n != 3 {
		t.Fatalf("attempts: %d, want 3", n)
	}
	ds, _ := store.Deliveries(context.Background(), alerts.DeliveryFilter{Status: alerts.StatusFailed})
	if len(ds) != 1 || ds[0].Attempts != 3 {
		t.Fatalf("failed deliveries: %+v, want one after 3 attempts", ds)
	}
}

// An undelivered row survives a restart: a new store and dispatcher over
// the same database deliver it; so does one whose attempt was claimed by
// an instance that died, once its claim lapses.
func TestRestartDeliversOutbox(t *testing.T) {
	clk := newClock(t0)
	dir := t.TempDir()
	store := openSQLite(t, dir)
	addTenant(t, store)
	snap := snapshot(t, t0, `{"tokens":"1000/day"}`)
	eng := quota.NewMemory(quota.Options{Now: clk.Now})
	defer eng.Close()
	const secret = "platform-secret-0123456789"
	rcv := newReceiver(t, func() string { return secret }, clk)
	global := alerts.Endpoint{URL: rcv.srv.URL, Secret: secret}
	in := newInstance(t, store, eng, snap, clk, global)
	in.use(t, snap, 950)
	if n := in.sweep(t); n != 2 {
		t.Fatalf("events: %d, want 2", n)
	}
	// The first instance claims one delivery and dies before sending it.
	ctx := context.Background()
	due, err := store.DueDeliveries(ctx, clk.Now(), 10)
	if err != nil || len(due) != 2 {
		t.Fatalf("due: %d (%v), want 2", len(due), err)
	}
	if ok, err := store.ClaimDelivery(ctx, due[0], clk.Now().Add(time.Minute), clk.Now()); !ok || err != nil {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	reopened := openSQLite(t, dir)
	next := newInstance(t, reopened, eng, snap, clk, global)
	if n, err := next.disp.DeliverDue(ctx); err != nil || n != 1 {
		t.Fatalf("after the restart: delivered %d (%v), want 1 (the other is still claimed)", n, err)
	}
	clk.Add(time.Minute)
	if n, err := next.disp.DeliverDue(ctx); err != nil || n != 1 {
		t.Fatalf("after the claim lapsed: delivered %d (%v), want 1", n, err)
	}
	if got := rcv.requests(); len(got) != 2 || got[0].eventID == got[1].eventID {
		t.Fatalf("received %d requests, want the 2 events once each", len(got))
	}
	ds, _ := reopened.Deliveries(ctx, alerts.DeliveryFilter{})
	for _, d := range ds {
		if d.Status != alerts.StatusDelivered {
			t.Errorf("delivery %s: %s, want delivered", d.ID, d.Status)
		}
	}
}

// A full outbox queues nothing more, says so loudly and counts it; the
// event itself is still recorded and announced.
func TestOutboxBounded(t *testing.T) {
	clk := newClock(t0)
	store := openSQLite(t, t.TempDir())
	addTenant(t, store)
	snap := snapshot(t, t0, `{"tokens":"1000/day"}`)
	eng := quota.NewMemory(quota.Options{Now: clk.Now})
	defer eng.Close()
	in := newInstance(t, store, eng, snap, clk, alerts.Endpoint{URL: "http://127.0.0.1:9/unreachable", Secret: "platform-secret-0123456789"})
	in.alerter.OutboxMax = 1
	in.use(t, snap, 950)
	if n := in.sweep(t); n != 2 {
		t.Fatalf("events: %d, want 2", n)
	}
	if n, _ := store.PendingDeliveries(context.Background()); n != 1 {
		t.Fatalf("pending: %d, want 1 (the bound)", n)
	}
	if in.dropped != 1 {
		t.Fatalf("dropped: %d, want 1", in.dropped)
	}
	if l := in.logs.lines(t, "alerts: the webhook outbox is full: this event's webhooks are NOT queued (raise alerts.outbox_max or fix the receiving endpoints)"); len(l) != 1 || l[0]["level"] != "ERROR" {
		t.Fatalf("outbox-full log lines: %v, want one at ERROR", l)
	}
}

// The tracker forgets a scope once its time is up, holds no more than
// its bound, and watches only scopes with a budget.
func TestTracker(t *testing.T) {
	clk := newClock(t0)
	snap := snapshot(t, t0, `{"tokens":"1000/day"}`)
	tr := alerts.NewTracker(1, clk.Now)
	chain, err := snap.ChainFor(tenantID, userID, "", "")
	if err != nil {
		t.Fatal(err)
	}
	tr.Touch(chain.Scopes, time.Minute)
	if tr.Len() != 1 {
		t.Fatalf("tracked: %d, want 1 (only the tenant has a budget)", tr.Len())
	}
	other := []quota.Scope{{Key: "user/x", Limits: chain.Scopes[1].Limits}}
	tr.Touch(other, time.Minute)
	if tr.Len() != 1 {
		t.Fatalf("tracked past the bound: %d, want 1", tr.Len())
	}
	store := openSQLite(t, t.TempDir())
	eng := quota.NewMemory(quota.Options{Now: clk.Now})
	defer eng.Close()
	in := newInstance(t, store, eng, snap, clk, alerts.Endpoint{})
	in.alerter.Tracker = tr
	in.sweep(t)
	if l := in.logs.lines(t, "alerts: the scope tracker is full: scopes admitted meanwhile are not watched for thresholds until others go idle"); len(l) != 1 {
		t.Fatalf("tracker-full log lines: %d, want 1", len(l))
	}
	clk.Add(21 * time.Minute) // 15 min (shortest TTL counted) + 5 min, and a bit
	in.sweep(t)
	if tr.Len() != 0 {
		t.Fatalf("tracked after going idle: %d, want 0", tr.Len())
	}
}

func TestValidateThresholds(t *testing.T) {
	for _, c := range []struct {
		ts []int
		ok bool
	}{
		{[]int{80, 90, 100}, true}, {[]int{50}, true}, {nil, false}, {[]int{90, 80}, false}, {[]int{0}, false}, {[]int{80, 80}, false},
	} {
		if err := alerts.ValidateThresholds(c.ts); (err == nil) != c.ok {
			t.Errorf("%v: got %v, want ok=%v", c.ts, err, c.ok)
		}
	}
}

// Noting an admission of scopes already tracked costs no allocation:
// it runs on every admission.
func TestTrackerTouchAllocs(t *testing.T) {
	snap := snapshot(t, t0, `{"tokens":"1000/day"}`)
	chain, err := snap.ChainFor(tenantID, userID, "", "")
	if err != nil {
		t.Fatal(err)
	}
	tr := alerts.NewTracker(0, nil)
	tr.Touch(chain.Scopes, 0)
	if n := testing.AllocsPerRun(1000, func() { tr.Touch(chain.Scopes, 0) }); n != 0 {
		t.Fatalf("allocations per touch: %v, want 0", n)
	}
}

func BenchmarkTrackerTouch(b *testing.B) {
	snap := policySnapshotForBench(b)
	chain, _ := snap.ChainFor(tenantID, userID, "", "")
	tr := alerts.NewTracker(0, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tr.Touch(chain.Scopes, 0)
		}
	})
}
