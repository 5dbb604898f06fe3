package console_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/console"
	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is the console over a real SQLite store, with a tenant "uni"
// (Asia/Shanghai) holding a project "web", a member alice with a key in
// it, and a tenant admin.
type env struct {
	t        *testing.T
	url      string
	clock    *clock
	store    *sqlstore.Store
	svc      *tenancy.Service
	policy   *policy.Service
	meter    *metering.Meter
	engine   quota.Backend
	platform context.Context // acts as the platform admin
	tenantID string
	project  string
	alice    string // alice's key
	aliceID  string
	aliceKey string // its id
	admin    string // the tenant admin's key
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	store, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "sluice.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	log := slog.New(slog.DiscardHandler)
	clk := &clock{now: time.Date(2026, 11, 20, 3, 0, 0, 0, time.UTC)}
	svc := tenancy.NewService(store, log)
	svc.SetClock(clk.Now)
	if _, err := svc.Bootstrap(ctx, ""); err != nil {
		t.Fatal(err)
	}
	mgr := policy.NewManager(store, policy.Spec{}, log)
	mgr.SetClock(clk.Now)
	pol := policy.NewService(store, mgr, log)
	pol.SetClock(clk.Now)
	if err := pol.EnsureDefaultPlans(ctx); err != nil {
		t.Fatal(err)
	}
	svc.OnChange = func(ctx context.Context) { _ = mgr.Reload(ctx) }
	engine := quota.NewMemory(quota.Options{Now: clk.Now})
	t.Cleanup(func() { engine.Close() })
	rec := usage.NewRecorder(store, log, 10*time.Millisecond)
	t.Cleanup(func() { rec.Close() })
	meter := metering.New(engine, mgr, rec, log)
	requests := policy.NewRequests(store, pol)
	requests.SetClock(clk.Now)

	e := &env{t: t, clock: clk, store: store, svc: svc, policy: pol, meter: meter, engine: engine,
		platform: tenancy.WithPrincipal(ctx, tenancy.SystemPrincipal)}
	ten, err := svc.CreateTenant(e.platform, tenancy.TenantInput{Name: "uni", Timezone: "Asia/Shanghai"})
	if err != nil {
		t.Fatal(err)
	}
	prj, err := svc.CreateProject(e.platform, tenancy.ProjectInput{TenantID: ten.ID, Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	alice, err := svc.CreateUser(e.platform, tenancy.UserInput{TenantID: ten.ID, Name: "alice", Role: tenancy.RoleMember})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AddMember(e.platform, tenancy.MembershipInput{UserID: alice.ID, ProjectID: prj.ID}); err != nil {
		t.Fatal(err)
	}
	k, secret, err := svc.CreateKey(e.platform, tenancy.KeyInput{UserID: alice.ID, ProjectID: prj.ID, Name: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	boss, err := svc.CreateUser(e.platform, tenancy.UserInput{TenantID: ten.ID, Name: "boss", Role: tenancy.RoleTenantAdmin})
	if err != nil {
		t.Fatal(err)
	}
	_, bossKey, err := svc.CreateKey(e.platform, tenancy.KeyInput{UserID: boss.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pol.SetLimits(e.platform, "project/"+prj.ID, policy.LimitsInput{Limits: policy.Spec{
		Tokens: policy.Budgets{{Amount: 100_000, Window: quota.WindowMonth}}}}); err != nil {
		t.Fatal(err)
	}
	if err := mgr.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	e.tenantID, e.project, e.alice, e.aliceID, e.aliceKey, e.admin = ten.ID, prj.ID, secret, alice.ID, k.ID, bossKey

	c := &console.Console{Tenancy: svc, Policy: pol, Meter: meter, Requests: requests, Ledger: store, Names: store,
		Sessions: session.NewManager(store, svc, 12*time.Hour, clk.Now), Log: log, Now: clk.Now,
		Mode: func() string { return "normal" }}
	ts := httptest.NewServer(c.Handler())
	t.Cleanup(ts.Close)
	e.url = ts.URL
	return e
}

// browser is a client with its own cookies that sends the Origin a
// browser sends.
type browser struct {
	t      *testing.T
	e      *env
	c      *http.Client
	origin string
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: e.t, e: e, origin: e.url,
		c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type page struct {
	status int
	body   string
	header http.Header
}

func (b *browser) get(path string) page {
	b.t.Helper()
	resp, err := b.c.Get(b.e.url + path)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(body), resp.Header}
}

func (b *browser) post(path string, form url.Values) page {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.e.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if b.origin != "" {
		req.Header.Set("Origin", b.origin)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(body), resp.Header}
}

var tags = regexp.MustCompile(`<[^>]*>`)

// visibleText is a page's text without its markup (attributes hold ids).
func visibleText(html string) string { return tags.ReplaceAllString(html, " ") }

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the token in a page's forms.
func (b *browser) csrf(path string) string {
	b.t.Helper()
	p := b.get(path)
	m := csrfField.FindStringSubmatch(p.body)
	if m == nil {
		b.t.Fatalf("GET %s: no csrf field in %d %s", path, p.status, p.body)
	}
	return m[1]
}

// signIn signs in with key and checks it worked.
func (b *browser) signIn(key string) {
	b.t.Helper()
	tok := b.csrf("/console/signin")
	p := b.post("/console/signin", url.Values{"csrf": {tok}, "key": {key}, "next": {"/console/"}})
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/console/" {
		b.t.Fatalf("sign in: %d %s, want 303 to /console/", p.status, p.body)
	}
}

func TestSignInShowsTheBarsWithNamesAndTheTenantsTimeZone(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	if p := b.get("/console/"); p.status != http.StatusSeeOther || !strings.HasPrefix(p.header.Get("Location"), "/console/signin") {
		t.Fatalf("GET /console/ signed out: %d %s, want 303 to the sign-in page", p.status, p.header.Get("Location"))
	}
	b.signIn(e.alice)
	// Use 85 % of the project's month.
	who := metering.Who{TenantID: e.tenantID, UserID: e.aliceID, ProjectID: e.project, KeyID: e.aliceKey}
	adm, err := e.meter.Acquire(metering.NoWait(context.Background()), who, "metering", quota.Ask{Requests: 1, Tokens: 85_000}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.meter.Settle(context.Background(), adm.ID, quota.Usage{InputTokens: 85_000}, ""); err != nil {
		t.Fatal(err)
	}
	p := b.get("/console/")
	if p.status != http.StatusOK {
		t.Fatalf("GET /console/: %d %s", p.status, p.body)
	}
	for _, want := range []string{
		"85 % of this month&#39;s tokens used, resets 1 Dec 00:00 Asia/Shanghai",
		`<span class="kind">Project</span> web`,
		`<span class="kind">Tenant</span> uni`,
		"85\u202f000 / 100\u202f000 tokens",
	} {
		if !strings.Contains(p.body, want) {
			t.Errorf("the member view lacks %q:\n%s", want, p.body)
		}
	}
	if text := visibleText(p.body); strings.Contains(text, "prj_") || strings.Contains(text, "ten_") {
		t.Errorf("the member view shows an id where a name belongs:\n%s", text)
	}
}
