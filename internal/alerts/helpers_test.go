package alerts_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// clock is a fake clock shared by the engine, the alerter and the
// dispatcher.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuffer is a JSON log, safe for the dispatcher's goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// lines returns the decoded log lines with the given message.
func (l *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(l.buf.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line is not JSON: %s", line)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func newLog() (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	return slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// openSQLite opens a migrated SQLite store in a temporary directory.
func openSQLite(t *testing.T, dir string) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(dir, "sluice.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// pgDatabase creates an empty PostgreSQL database for this test, dropped
// when it ends, and returns its URL. The test fails without a server:
// a skipped test proves nothing.
func pgDatabase(t *testing.T) string {
	t.Helper()
	server := os.Getenv("SLUICE_TEST_POSTGRES_URL")
	if server == "" {
		t.Fatal("SLUICE_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts a throwaway PostgreSQL server and sets it")
	}
	admin, err := sql.Open("pgx", server)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var b [8]byte
	rand.Read(b[:])
	name := "sluice_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("CREATE DATABASE %s: %v", name, err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", server)
		if err != nil {
			t.Error(err)
			return
		}
		defer admin.Close()
		if _, err := admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

func openPostgres(t *testing.T, dbURL string) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.OpenPostgres(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

const (
	tenantID = "ten_01alerts"
	userID   = "usr_01alerts"
)

// addTenant creates the test tenant (its webhook's row refers to it).
func addTenant(t *testing.T, s *sqlstore.Store) {
	t.Helper()
	err := s.Update(context.Background(), func(tx tenancy.Tx) error {
		now := time.Now()
		if err := tx.InsertTenant(&tenancy.Tenant{ID: tenantID, Name: "university", Timezone: "UTC", CreatedAt: now, UpdatedAt: now}); err != nil {
			return err
		}
		return tx.InsertUser(&tenancy.User{ID: userID, TenantID: tenantID, Name: "alice", Role: tenancy.RoleMember, CreatedAt: now, UpdatedAt: now})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// snapshot is a policy with limits (JSON, as the API takes them) on the
// tenant's scope.
func snapshot(t testing.TB, now time.Time, limits string) *policy.Snapshot {
	t.Helper()
	var spec policy.Spec
	if err := json.Unmarshal([]byte(limits), &spec); err != nil {
		t.Fatal(err)
	}
	d := &policy.Data{
		Tree:   policy.Tree{Tenants: []policy.TreeTenant{{ID: tenantID, Name: "university", Timezone: "UTC"}}},
		Scopes: []*policy.ScopeLimits{{Scope: "tenant/" + tenantID, TenantID: tenantID, Limits: spec}},
	}
	return policy.NewSnapshot(d, policy.Spec{}, 1, now)
}

// instance is one Sluice instance's alert machinery.
type instance struct {
	tracker *alerts.Tracker
	engine  quota.Backend // the shared engine, seen through this instance's tracker
	alerter *alerts.Alerter
	disp    *alerts.Dispatcher
	fired   []*alerts.Event
	dropped int
	logs    *logBuffer
}

// newInstance builds an instance on store and the shared engine eng.
func newInstance(t *testing.T, store *sqlstore.Store, eng quota.Backend, snap *policy.Snapshot, clk *clock, global alerts.Endpoint) *instance {
	t.Helper()
	log, lb := newLog()
	in := &instance{tracker: alerts.NewTracker(0, clk.Now), logs: lb}
	in.engine = in.tracker.Watch(eng)
	in.alerter = &alerts.Alerter{Tracker: in.tracker, Usage: eng, Policy: func() *policy.Snapshot { return snap },
		Store: store, Log: log, Global: global.URL != "", Now: clk.Now,
		OnAlert: func(ev *alerts.Event) { in.fired = append(in.fired, ev) }, OnDropped: func(n int) { in.dropped += n }}
	in.disp = &alerts.Dispatcher{Store: store, Global: global, GlobalClient: &http.Client{}, Client: &http.Client{},
		Log: log, Now: clk.Now, Backoff: time.Second, MaxBackoff: time.Minute, MaxAttempts: 5}
	return in
}

// use admits and settles n tokens for the tenant's user through in.
func (in *instance) use(t *testing.T, snap *policy.Snapshot, n int64) {
	t.Helper()
	chain, err := snap.ChainFor(tenantID, userID, "", "")
	if err != nil {
		t.Fatal(err)
	}
	tk, err := in.engine.Acquire(context.Background(), quota.Request{Chain: chain.Scopes, Ask: quota.Ask{Requests: 1, Tokens: n}})
	if err != nil {
		t.Fatalf("acquire %d tokens: %v", n, err)
	}
	if _, err := in.engine.Settle(context.Background(), tk.ID, quota.Usage{InputTokens: n}); err != nil {
		t.Fatal(err)
	}
}

func (in *instance) sweep(t *testing.T) int {
	t.Helper()
	n, err := in.alerter.Sweep(context.Background())
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	return n
}

// receiver is a webhook endpoint standing in for a customer's: it
// verifies each request's signature with secret at the fake clock's time
// and answers with the next status of script (200 once it runs out).
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	script []int
	got    []received
}

type received struct {
	event    alerts.Event
	eventID  string
	verified error
	status   int
}

func newReceiver(t *testing.T, secret func() string, clk *clock, script ...int) *receiver {
	t.Helper()
	r := &receiver{script: script}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var ev alerts.Event
		_ = json.Unmarshal(body, &ev)
		verr := alerts.Verify(secret(), req.Header.Get(alerts.SignatureHeader), body, clk.Now(), 5*time.Minute)
		r.mu.Lock()
		status := http.StatusOK
		if len(r.script) > 0 {
			status, r.script = r.script[0], r.script[1:]
		}
		r.got = append(r.got, received{event: ev, eventID: req.Header.Get(alerts.EventIDHeader), verified: verr, status: status})
		r.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) requests() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

func policySnapshotForBench(b *testing.B) *policy.Snapshot {
	return snapshot(b, time.Now(), `{"tokens":["1000/day","100000/month"]}`)
}
