package console_test

import (
	"context"
	"html"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/console"
	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
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
	requests *policy.Requests
	platform context.Context // acts as the platform admin
	tenantID string
	project  string
	alice    string // alice's key
	aliceID  string
	aliceKey string // its id
	admin    string // the tenant admin's key
	runs     *run.Service
	// finished receives each run's record as the store records its end.
	finished chan *run.Record
	// degraded is the quota engine's mode as the console is told it.
	degraded atomic.Bool
}

// finishSignal is the real store, telling the test when a run ends (runs
// started from the console go on after the request that started them).
type finishSignal struct {
	*sqlstore.Store
	finished chan *run.Record
}

func (s finishSignal) FinishRun(ctx context.Context, r *run.Record) error {
	err := s.Store.FinishRun(ctx, r)
	select {
	case s.finished <- r:
	default:
	}
	return err
}

func newEnv(t *testing.T, models ...llm.ModelConfig) *env {
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

	e := &env{t: t, clock: clk, store: store, svc: svc, policy: pol, meter: meter, engine: engine, requests: requests,
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

	// Flows run on the simulated model unless the test names others.
	registry, err := llm.NewRegistry(models, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	e.finished = make(chan *run.Record, 16)
	exec := &run.Executor{Meter: meter, Models: registry, Messages: store, Guard: &run.Guard{}, Log: log, DemoModels: len(models) == 0}
	e.runs = &run.Service{Store: finishSignal{store, e.finished}, Tenancy: svc, Exec: exec, Log: log}

	c := &console.Console{Tenancy: svc, Policy: pol, Meter: meter, Requests: requests, Runs: e.runs, Ledger: store, Names: store,
		Sessions: session.NewManager(store, svc, 12*time.Hour, clk.Now), Log: log, Now: clk.Now,
		Mode: func() string { // as cmd/sluice's App.mode
			switch {
			case pol.Manager().Current().Platform().ReadOnly:
				return "read_only"
			case e.degraded.Load():
				return "degraded"
			}
			return "normal"
		}}
	ts := httptest.NewServer(c.Handler())
	t.Cleanup(ts.Close)
	t.Cleanup(c.Close) // runs first: the console's runs end before the store closes
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

func TestSessionCookieFlags(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		name   string
		proto  string
		secure bool
	}{{"plain http", "", false}, {"behind a TLS proxy", "https", true}} {
		t.Run(c.name, func(t *testing.T) {
			b := e.browser()
			tok := b.csrf("/console/signin")
			req, _ := http.NewRequest("POST", e.url+"/console/signin", strings.NewReader(url.Values{"csrf": {tok}, "key": {e.alice}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", e.url)
			if c.proto != "" {
				req.Header.Set("X-Forwarded-Proto", c.proto)
			}
			resp, err := b.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			var got *http.Cookie
			for _, ck := range resp.Cookies() {
				if ck.Name == console.CookieName && ck.Value != "" {
					got = ck
				}
			}
			if got == nil {
				t.Fatalf("sign in: %d, no session cookie", resp.StatusCode)
			}
			if !got.HttpOnly || got.SameSite != http.SameSiteStrictMode || got.Secure != c.secure || got.Path != "/console/" {
				t.Errorf("cookie HttpOnly=%v SameSite=%v Secure=%v Path=%q, want true Strict %v /console/", got.HttpOnly, got.SameSite, got.Secure, got.Path, c.secure)
			}
			if got.MaxAge != int((12 * time.Hour).Seconds()) {
				t.Errorf("cookie Max-Age %d, want 12h", got.MaxAge)
			}
			if strings.Contains(got.Value, e.alice) {
				t.Error("the cookie carries the API key")
			}
		})
	}
}

func TestSessionEndsOnExpiryOnSignOutAndWithItsKey(t *testing.T) {
	e := newEnv(t)
	signedOut := func(b *browser) bool {
		p := b.get("/console/")
		return p.status == http.StatusSeeOther && strings.HasPrefix(p.header.Get("Location"), "/console/signin")
	}
	t.Run("expiry", func(t *testing.T) {
		b := e.browser()
		b.signIn(e.alice)
		e.clock.Advance(12*time.Hour - time.Second)
		if signedOut(b) {
			t.Fatal("the session ended before its 12 h")
		}
		e.clock.Advance(time.Second)
		if !signedOut(b) {
			t.Fatal("the session lives on after its 12 h")
		}
	})
	t.Run("sign out", func(t *testing.T) {
		b := e.browser()
		b.signIn(e.alice)
		jar := b.c.Jar
		cookies := jar.Cookies(mustURL(e.url + "/console/"))
		p := b.post("/console/signout", url.Values{"csrf": {b.csrf("/console/")}})
		if p.status != http.StatusSeeOther {
			t.Fatalf("sign out: %d %s", p.status, p.body)
		}
		// The old cookie, replayed, names an ended session.
		replay := e.browser()
		replay.c.Jar.SetCookies(mustURL(e.url+"/console/"), cookies)
		if !signedOut(replay) {
			t.Fatal("a signed-out session's cookie still works")
		}
	})
	t.Run("its key revoked", func(t *testing.T) {
		_, secret, err := e.svc.CreateKey(e.platform, tenancy.KeyInput{UserID: e.aliceID, ProjectID: e.project, Name: "spare"})
		if err != nil {
			t.Fatal(err)
		}
		b := e.browser()
		b.signIn(secret)
		other := e.browser()
		other.signIn(e.alice)
		keys, err := e.svc.Keys(e.platform, tenancy.Filter{UserID: e.aliceID})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if k.Name == "spare" {
				if _, err := e.svc.RevokeKey(e.platform, k.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !signedOut(b) {
			t.Fatal("a session lives on after its key was revoked")
		}
		if signedOut(other) {
			t.Fatal("revoking one key ended a session made with another")
		}
	})
	t.Run("a bad key is refused", func(t *testing.T) {
		b := e.browser()
		tok := b.csrf("/console/signin")
		p := b.post("/console/signin", url.Values{"csrf": {tok}, "key": {"slk_not-a-key"}})
		if p.status != http.StatusUnauthorized || !strings.Contains(p.body, "invalid API key") {
			t.Fatalf("sign in with a bad key: %d, want 401 saying so:\n%s", p.status, p.body)
		}
	})
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestCSRFIsRefused: a change without this session's token, with another
// session's, from another site, or from nowhere, is refused with a 403 page
// that says why, and changes nothing.
func TestCSRFIsRefused(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	good := b.csrf("/console/requests")
	other := e.browser()
	other.signIn(e.alice)
	foreign := other.csrf("/console/")
	ask := func(tok string) url.Values {
		return url.Values{"csrf": {tok}, "dimension": {"tokens_month"}, "amount": {"5000"}, "duration": {"7d"}, "reason": {"exam"}}
	}
	for _, c := range []struct {
		name, origin, referer string
		form                  url.Values
		why                   string
	}{
		{"no token", e.url, "", url.Values{"dimension": {"tokens_month"}, "amount": {"5000"}}, "security token"},
		{"another session's token", e.url, "", ask(foreign), "security token"},
		{"a wrong token", e.url, "", ask("x" + good), "security token"},
		{"a foreign Origin", "https://evil.example", "", ask(good), "came from another site"},
		{"a foreign Referer", "", "https://evil.example/page", ask(good), "came from another site"},
		{"no Origin nor Referer", "", "", ask(good), "did not say which page it came from"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", e.url+"/console/requests", strings.NewReader(c.form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if c.origin != "" {
				req.Header.Set("Origin", c.origin)
			}
			if c.referer != "" {
				req.Header.Set("Referer", c.referer)
			}
			resp, err := b.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), c.why) {
				t.Errorf("got %d, want 403 saying %q:\n%s", resp.StatusCode, c.why, body)
			}
		})
	}
	if list := b.get("/console/requests"); strings.Contains(list.body, "data-request=") {
		t.Fatal("a refused request was recorded")
	}
	// The same form, done right, goes through.
	if p := b.post("/console/requests", ask(good)); p.status != http.StatusSeeOther {
		t.Fatalf("a good request: %d %s", p.status, p.body)
	}
	// The sign-in form has its own token.
	s := e.browser()
	if p := s.post("/console/signin", url.Values{"key": {e.alice}}); p.status != http.StatusForbidden {
		t.Errorf("sign in without the form's token: %d, want 403", p.status)
	}
}

func TestMemberCannotReachAdminPages(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	for _, path := range []string{"/console/admin/", "/console/admin/requests", "/console/admin/audit", "/console/admin/plans",
		"/console/admin/charts", "/console/admin/scope?scope=project/" + e.project} {
		if p := b.get(path); p.status != http.StatusForbidden {
			t.Errorf("GET %s as a member: %d, want 403", path, p.status)
		}
	}
	tok := b.csrf("/console/")
	if p := b.post("/console/admin/limits", url.Values{"csrf": {tok}, "scope": {"project/" + e.project}, "concurrency": {"99"}}); p.status != http.StatusForbidden {
		t.Errorf("POST limits as a member: %d, want 403", p.status)
	}
	if strings.Contains(b.get("/console/").body, `href="/console/admin/"`) {
		t.Error("a member's nav links to the admin pages")
	}
}

// TestAskApproveAndTheBarMoves: a member asks for more, the tenant admin
// approves it in their own session, and the member's bar's limit grows.
func TestAskApproveAndTheBarMoves(t *testing.T) {
	e := newEnv(t)
	m := e.browser()
	m.signIn(e.alice)
	if p := m.post("/console/requests", url.Values{"csrf": {m.csrf("/console/requests")}, "scope": {"project/" + e.project},
		"dimension": {"tokens_month"}, "amount": {"ten"}, "duration": {"7d"}, "reason": {"exam"}}); p.status != http.StatusBadRequest ||
		!strings.Contains(p.body, `id="amount-error"`) {
		t.Fatalf("a bad amount: %d, want 400 with the error beside the field:\n%s", p.status, p.body)
	}
	if p := m.post("/console/requests", url.Values{"csrf": {m.csrf("/console/requests")}, "scope": {"project/" + e.project},
		"dimension": {"tokens_month"}, "amount": {"50000"}, "duration": {"7d"}, "reason": {"exam week"}}); p.status != http.StatusSeeOther {
		t.Fatalf("ask: %d %s", p.status, p.body)
	}
	if p := m.get("/console/requests"); !strings.Contains(p.body, `data-status="pending"`) {
		t.Fatalf("the member's requests lack the pending one:\n%s", p.body)
	}
	a := e.browser()
	a.signIn(e.admin)
	p := a.get("/console/admin/requests")
	id := regexp.MustCompile(`data-request="(qrq_[^"]+)"`).FindStringSubmatch(p.body)
	if id == nil {
		t.Fatalf("the admin's pending list lacks the request:\n%s", p.body)
	}
	if p := a.post("/console/admin/requests/"+id[1]+"/approve", url.Values{"csrf": {a.csrf("/console/admin/requests")}, "note": {"ok"}}); p.status != http.StatusSeeOther {
		t.Fatalf("approve: %d %s", p.status, p.body)
	}
	if p := m.get("/console/"); !strings.Contains(p.body, `data-limit="150000"`) {
		t.Fatalf("the member's bar did not grow to 150000:\n%s", p.body)
	}
	if p := m.get("/console/requests"); !strings.Contains(p.body, `data-status="approved"`) || !strings.Contains(p.body, "<small>until ") ||
		!strings.Contains(p.body, "</html>") {
		t.Fatalf("the member's request is not shown approved, with its grant's end, on a whole page:\n%s", p.body)
	}
}

func TestLimitErrorsShowBesideTheField(t *testing.T) {
	e := newEnv(t)
	a := e.browser()
	a.signIn(e.admin)
	scope := "project/" + e.project
	p := a.post("/console/admin/limits", url.Values{"csrf": {a.csrf("/console/admin/scope?scope=" + scope)}, "scope": {scope},
		"requests": {"sixty a minute"}, "concurrency": {"4"}})
	if p.status != http.StatusBadRequest {
		t.Fatalf("bad limits: %d, want 400:\n%s", p.status, p.body)
	}
	// The message sits right after the requests field, and the sent values
	// are kept.
	i := strings.Index(p.body, `name="requests"`)
	if i < 0 || !strings.Contains(p.body[i:i+400], `class="field-error"`) || !strings.Contains(p.body, `value="sixty a minute"`) {
		t.Fatalf("the error is not beside the requests field:\n%s", p.body)
	}
	p = a.post("/console/admin/limits", url.Values{"csrf": {a.csrf("/console/admin/scope?scope=" + scope)}, "scope": {scope},
		"requests": {"60/min"}, "tokens": {"200000/month"}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("good limits: %d %s", p.status, p.body)
	}
	v, err := e.policy.Limits(e.platform, scope)
	if err != nil || v.Limits.Requests == nil || v.Limits.Requests.Limit != 60 {
		t.Fatalf("limits after saving: %+v %v", v, err)
	}
}

// TestCrossTenantIsRefused: the admin of another tenant opening this
// tenant's request or scope gets "not found", as the API answers.
func TestCrossTenantIsRefused(t *testing.T) {
	e := newEnv(t)
	other, err := e.svc.CreateTenant(e.platform, tenancy.TenantInput{Name: "rival", Timezone: "UTC"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := e.svc.CreateUser(e.platform, tenancy.UserInput{TenantID: other.ID, Name: "mallory", Role: tenancy.RoleTenantAdmin})
	if err != nil {
		t.Fatal(err)
	}
	_, key, err := e.svc.CreateKey(e.platform, tenancy.KeyInput{UserID: u.ID})
	if err != nil {
		t.Fatal(err)
	}
	m := e.browser()
	m.signIn(e.alice)
	m.post("/console/requests", url.Values{"csrf": {m.csrf("/console/requests")}, "dimension": {"tokens_month"}, "amount": {"1000"}, "duration": {"1d"}, "reason": {"x"}})
	reqs, err := e.requests.List(e.platform, policy.RequestFilter{})
	if err != nil || len(reqs) != 1 {
		t.Fatalf("requests: %v %v", reqs, err)
	}
	list := []string{reqs[0].ID}
	b := e.browser()
	b.signIn(key)
	for _, path := range []string{"/console/admin/requests/" + list[0], "/console/admin/scope?scope=project/" + e.project,
		"/console/admin/scope?scope=tenant/" + e.tenantID, "/console/admin/charts?scope=project/" + e.project} {
		if p := b.get(path); p.status != http.StatusNotFound {
			t.Errorf("GET %s as another tenant's admin: %d, want 404", path, p.status)
		}
	}
	tok := b.csrf("/console/admin/")
	if p := b.post("/console/admin/requests/"+list[0]+"/approve", url.Values{"csrf": {tok}}); p.status != http.StatusNotFound {
		t.Errorf("approving another tenant's request: %d, want 404", p.status)
	}
	if p := b.get("/console/admin/requests"); strings.Contains(p.body, list[0]) {
		t.Error("another tenant's request is in the pending list")
	}
}

// TestBannerSaysWhenDegradedOrReadOnly: every page carries a banner while
// the quota engine is degraded or the platform is read-only (with the
// operator's message), and none otherwise.
func TestBannerSaysWhenDegradedOrReadOnly(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	banner := func(path string) string {
		t.Helper()
		p := b.get(path)
		if p.status != http.StatusOK {
			t.Fatalf("GET %s: %d", path, p.status)
		}
		m := regexp.MustCompile(`<div class="banner" role="alert" id="banner">([^<]*)</div>`).FindStringSubmatch(p.body)
		if m == nil {
			return ""
		}
		return html.UnescapeString(m[1])
	}
	if got := banner("/console/"); got != "" {
		t.Fatalf("a banner in normal mode: %q", got)
	}
	e.degraded.Store(true)
	if got := banner("/console/requests"); !strings.Contains(got, "degraded") {
		t.Errorf("degraded: banner %q, want it to say degraded", got)
	}
	e.degraded.Store(false)
	if _, err := e.policy.SetPlatform(e.platform, policy.Platform{ReadOnly: true, Message: "maintenance until 18:00"}); err != nil {
		t.Fatal(err)
	}
	if got := banner("/console/keys"); !strings.Contains(got, "read-only") || !strings.Contains(got, "maintenance until 18:00") {
		t.Errorf("read-only: banner %q, want it to say read-only with the operator's message", got)
	}
	if _, err := e.policy.SetPlatform(e.platform, policy.Platform{}); err != nil {
		t.Fatal(err)
	}
	if got := banner("/console/"); got != "" {
		t.Errorf("a banner after read-only was lifted: %q", got)
	}
}
