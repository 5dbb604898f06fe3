package console_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/console"
	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/policydoc"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/whatif"
)

const whatIfPath = "/console/admin/what-if"

// spendAt records, straight into the ledger, one call of 100 tokens by
// alice in project web at each time: the history a replay reads.
func (e *env) spendAt(t *testing.T, times ...time.Time) {
	t.Helper()
	chain, err := e.meter.Policy().Current().Chain(e.tenantID, e.aliceID, e.project)
	if err != nil {
		t.Fatal(err)
	}
	var evs []usage.Event
	for i, at := range times {
		evs = append(evs, usage.Event{ID: fmt.Sprintf("evt_whatif_%d_%d", at.UnixNano(), i), At: at, TenantID: e.tenantID,
			UserID: e.aliceID, ProjectID: e.project, Kind: "metering", Requests: 1, InputTokens: 50, OutputTokens: 50,
			Scopes: chain.PathKeys})
	}
	if _, err := e.store.RecordUsage(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
}

// webDraft limits project web of tenant to tokens.
func webDraft(tenant, tokens string) string {
	return fmt.Sprintf("tenants:\n  - name: %s\n    projects:\n      - name: web\n        limits: {tokens: %s}\n", tenant, tokens)
}

// postDraft posts the what-if form as the page's form does
// (multipart/form-data) with this session's token unless the fields carry
// one.
func (b *browser) postDraft(fields map[string]string) page {
	b.t.Helper()
	if _, ok := fields["csrf"]; !ok {
		fields["csrf"] = b.csrf(whatIfPath)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for k, v := range fields {
		if err := mw.WriteField(k, v); err != nil {
			b.t.Fatal(err)
		}
	}
	mw.Close()
	req, _ := http.NewRequest("POST", b.e.url+whatIfPath, &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if b.origin != "" {
		req.Header.Set("Origin", b.origin)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(out), resp.Header}
}

var wallRow = regexp.MustCompile(`<tr class="wall" data-dimension="([^"]*)" data-window="([^"]*)" data-part="[^"]*" data-denied="(\d+)" data-denied-tokens="(\d+)" data-first-wall-at="([^"]*)">`)

type shownWall struct {
	dimension, window string
	denied, tokens    int64
	firstWallAt       string
}

// shownWalls reads the report's rows.
func shownWalls(body string) []shownWall {
	var out []shownWall
	for _, m := range wallRow.FindAllStringSubmatch(body, -1) {
		d, _ := strconv.ParseInt(m[3], 10, 64)
		tk, _ := strconv.ParseInt(m[4], 10, 64)
		out = append(out, shownWall{m[1], m[2], d, tk, m[5]})
	}
	return out
}

var errorField = regexp.MustCompile(`id="whatif-error" data-field="([^"]*)"`)

// shownError is the field the page's error names, and whether it shows one.
func shownError(body string) (string, bool) {
	m := errorField.FindStringSubmatch(body)
	if m == nil {
		return "", false
	}
	return m[1], true
}

func TestWhatIfPageMemberIsRefused(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	if p := b.get(whatIfPath); p.status != http.StatusForbidden {
		t.Errorf("GET the what-if page as a member: %d, want 403", p.status)
	}
	tok := b.csrf("/console/")
	p := b.postDraft(map[string]string{"csrf": tok, "window": "24h", "draft": webDraft("uni", "1/day")})
	if p.status != http.StatusForbidden || !strings.Contains(p.body, "for tenant and platform admins") || strings.Contains(p.body, "whatif-report") {
		t.Errorf("POST a what-if as a member: %d, want 403 saying it is for admins:\n%s", p.status, p.body)
	}
}

// TestWhatIfTighterDraftReportsTheDenials: the tenant admin opens the page
// (the draft starts as the policy in force), replays 24 hours against 250
// tokens a day for project web, and sees the three calls past the budget
// denied, the wall in the tenant's zone; the live policy is unchanged.
func TestWhatIfTighterDraftReportsTheDenials(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now() // 2026-11-20 03:00 UTC, 11:00 in Shanghai
	first := now.Add(-time.Hour)
	e.spendAt(t, first, first.Add(time.Minute), first.Add(2*time.Minute), first.Add(3*time.Minute), first.Add(4*time.Minute))

	a := e.browser()
	a.signIn(e.admin)
	p := a.get(whatIfPath)
	if p.status != http.StatusOK {
		t.Fatalf("GET the what-if page: %d %s", p.status, p.body)
	}
	boss := tenancy.WithPrincipal(context.Background(), tenancy.Principal{UserID: "boss", TenantID: e.tenantID, Role: tenancy.RoleTenantAdmin})
	export := exportYAML(t, e, boss)
	if !strings.Contains(p.body, ">"+escaped(export)+"</textarea>") {
		t.Errorf("the draft does not start as the tenant's export:\n%s\nwant:\n%s", p.body, export)
	}
	if !strings.Contains(p.body, `id="nothing-applied"`) || !strings.Contains(p.body, `href="/console/admin/what-if"`) {
		t.Error("the page does not say nothing is applied, or the admin nav lacks it")
	}

	scope := "project/" + e.project
	limits, err := e.policy.Limits(e.platform, scope)
	if err != nil {
		t.Fatal(err)
	}
	use, err := e.meter.Use(context.Background(), scope)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := e.svc.Audit(e.platform, tenancy.Filter{})
	if err != nil {
		t.Fatal(err)
	}

	p = a.postDraft(map[string]string{"window": "24h", "draft": webDraft("uni", "250/day")})
	if p.status != http.StatusOK {
		t.Fatalf("run the what-if: %d %s", p.status, p.body)
	}
	got := shownWalls(p.body)
	want := []shownWall{{"tokens", "day", 3, 300, first.Add(2 * time.Minute).UTC().Format(time.RFC3339)}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got walls %+v, want %+v:\n%s", got, want, p.body)
	}
	text := visibleText(p.body)
	for _, w := range []string{
		"project web",
		"Fri 20 Nov 2026 10:02 Asia/Shanghai", // the wall, in the tenant's zone
		"250 tokens a day",
		"3 denied, 0 clamped, 0 queued",
		"over the last 24 hours",
		"the global scope is left out",
		"Nothing is applied",
	} {
		if !strings.Contains(text, w) {
			t.Errorf("the report lacks %q:\n%s", w, text)
		}
	}
	if !strings.Contains(p.body, `data-scope="`+scope+`"`) || !strings.Contains(p.body, `data-events="5"`) {
		t.Errorf("the report is not about 5 events of %s:\n%s", scope, p.body)
	}
	// The timeline's mark sits where the wall is: 23 h 2 min into 24 h.
	m := regexp.MustCompile(`<svg class="timeline"[^>]* data-fraction="([0-9.]+)"`).FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("the wall has no timeline:\n%s", p.body)
	}
	if f, _ := strconv.ParseFloat(m[1], 64); f < 0.9597 || f > 0.9598 {
		t.Errorf("the timeline marks the wall at %s of the window, want 0.9597 (23h02m of 24h)", m[1])
	}
	// The draft stays in the form, to edit and run again.
	if !strings.Contains(p.body, escaped(webDraft("uni", "250/day"))+"</textarea>") {
		t.Error("the form lost the draft")
	}

	// A looser draft: no wall.
	if p := a.postDraft(map[string]string{"window": "7d", "draft": webDraft("uni", "1000/day")}); p.status != http.StatusOK ||
		len(shownWalls(p.body)) != 0 || !strings.Contains(p.body, `id="no-walls"`) {
		t.Errorf("a looser draft: %d, want no walls:\n%s", p.status, p.body)
	}

	// Nothing was applied.
	if after := exportYAML(t, e, boss); after != export {
		t.Errorf("the policy changed:\nbefore %s\nafter  %s", export, after)
	}
	if after, err := e.policy.Limits(e.platform, scope); err != nil || !reflect.DeepEqual(after, limits) {
		t.Errorf("the project's limits changed: before %+v, after %+v (%v)", limits, after, err)
	}
	if after, err := e.meter.Use(context.Background(), scope); err != nil || !reflect.DeepEqual(after, use) {
		t.Errorf("the live engine changed: before %+v, after %+v (%v)", use, after, err)
	}
	if after, err := e.svc.Audit(e.platform, tenancy.Filter{}); err != nil || len(after) != len(audit) {
		t.Errorf("the audit log has %d entries, want %d (%v)", len(after), len(audit), err)
	}
}

func exportYAML(t *testing.T, e *env, ctx context.Context) string {
	t.Helper()
	doc, err := (&policydoc.Applier{Tenancy: e.svc, Policy: e.policy}).Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	y, err := doc.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return string(y)
}

// escaped escapes s as html/template writes text.
func escaped(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;")
	return r.Replace(s)
}

// TestWhatIfTenantAdminOfBCannotReplayA: the admin of another tenant is
// refused as the API refuses them: a draft naming tenant uni (403 naming
// tenants[0].name), uni's id (404), plans (403); their own draft replays
// their own ledger only.
func TestWhatIfTenantAdminOfBCannotReplayA(t *testing.T) {
	e := newEnv(t)
	e.spendAt(t, e.clock.Now().Add(-time.Hour))
	rival, err := e.svc.CreateTenant(e.platform, tenancy.TenantInput{Name: "rival", Timezone: "UTC"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := e.svc.CreateUser(e.platform, tenancy.UserInput{TenantID: rival.ID, Name: "mallory", Role: tenancy.RoleTenantAdmin})
	if err != nil {
		t.Fatal(err)
	}
	_, key, err := e.svc.CreateKey(e.platform, tenancy.KeyInput{UserID: u.ID})
	if err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	b.signIn(key)
	for _, c := range []struct {
		name   string
		fields map[string]string
		status int
		field  string
	}{
		{"a draft naming uni", map[string]string{"draft": webDraft("uni", "1/day")}, http.StatusForbidden, "tenants[0].name"},
		{"uni's id", map[string]string{"draft": "tenants: [{name: rival}]", "tenant_id": e.tenantID}, http.StatusNotFound, "tenant_id"},
		{"plans", map[string]string{"draft": "plans: {free: {limits: {tokens: 1/day}}}"}, http.StatusForbidden, "plans"},
		{"the global scope", map[string]string{"draft": "global: {limits: {requests: 1/min}}"}, http.StatusForbidden, "global"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.fields["window"] = "24h"
			p := b.postDraft(c.fields)
			field, shown := shownError(p.body)
			if p.status != c.status || !shown || field != c.field {
				t.Errorf("got %d naming %q, want %d naming %s:\n%s", p.status, field, c.status, c.field, p.body)
			}
			if strings.Contains(p.body, "whatif-report") || strings.Contains(visibleText(p.body), "project web") {
				t.Errorf("a refused replay shows a report or uni's project:\n%s", p.body)
			}
		})
	}
	// Her own tenant, with a draft that would deny everything: uni's call
	// is not in her ledger.
	p := b.postDraft(map[string]string{"window": "24h", "draft": "tenants: [{name: rival, limits: {tokens: 1/day}}]"})
	if p.status != http.StatusOK || !strings.Contains(p.body, `data-events="0"`) || len(shownWalls(p.body)) != 0 {
		t.Errorf("rival's own replay: %d, want 0 events and no walls:\n%s", p.status, p.body)
	}
}

// TestWhatIfBadInputShowsTheField: each mistake is shown above the form
// naming its field, the control at fault marked, the draft kept.
func TestWhatIfBadInputShowsTheField(t *testing.T) {
	e := newEnv(t)
	a := e.browser()
	a.signIn(e.admin)
	for _, c := range []struct {
		name, window, draft, field, control, says string
	}{
		{"a window too large", "91d", webDraft("uni", "1/day"), "window", "window", "at most 90d"},
		{"a window that is no window", "soon", webDraft("uni", "1/day"), "window", "window", ""},
		{"an unknown limit", "7d", "tenants: [{name: uni, limits: {tokns: 1/day}}]", "tenants[0].limits.tokns", "draft", ""},
		{"a plan that does not exist", "7d", "tenants: [{name: uni, plan: platinum}]", "tenants[0].plan", "draft", "platinum"},
		{"a budget that is no budget", "7d", webDraft("uni", "lots"), "tenants[0].projects[0].limits.tokens", "draft", `: &#34;lots&#34; is not a budget`},
		{"an empty draft", "7d", "  \n", "draft", "draft", "empty"},
		{"not YAML", "7d", "tenants: [", "", "draft", "not valid YAML"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := a.postDraft(map[string]string{"window": c.window, "draft": c.draft})
			field, shown := shownError(p.body)
			if p.status != http.StatusBadRequest || !shown || field != c.field {
				t.Fatalf("got %d naming %q, want 400 naming %q:\n%s", p.status, field, c.field, p.body)
			}
			if c.field != "" && !strings.Contains(visibleText(p.body), "In  "+c.field+" :") {
				t.Errorf("the error does not name %s to the reader:\n%s", c.field, visibleText(p.body))
			}
			if !strings.Contains(p.body, c.says) {
				t.Errorf("the error does not say %q:\n%s", c.says, p.body)
			}
			if !regexp.MustCompile(`id="` + c.control + `"[^>]*aria-invalid="true"`).MatchString(p.body) {
				t.Errorf("the %s control is not marked invalid:\n%s", c.control, p.body)
			}
			if strings.TrimSpace(c.draft) != "" && !strings.Contains(p.body, escaped(c.draft)+"</textarea>") {
				t.Errorf("the form lost the draft %q", c.draft)
			}
			if strings.Contains(p.body, "whatif-report") {
				t.Error("a refused replay shows a report")
			}
		})
	}
}

// TestWhatIfTooMuchHistoryNamesTheWindow: past whatif_max_events the
// replay is refused before it runs, naming the window.
func TestWhatIfTooMuchHistoryNamesTheWindow(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	e.spendAt(t, now.Add(-3*time.Hour), now.Add(-2*time.Hour), now.Add(-time.Hour))
	e.url = e.consoleWith(t, whatif.Options{MaxEvents: 2})
	a := e.browser()
	a.signIn(e.admin)
	p := a.postDraft(map[string]string{"window": "24h", "draft": webDraft("uni", "1/day")})
	if field, _ := shownError(p.body); p.status != http.StatusBadRequest || field != "window" || !strings.Contains(p.body, "whatif_max_events") {
		t.Errorf("got %d naming %q, want 400 naming window and whatif_max_events:\n%s", p.status, field, p.body)
	}
}

// consoleWith serves another console over e's services with what-if
// bounds opts and returns its URL.
func (e *env) consoleWith(t *testing.T, opts whatif.Options) string {
	t.Helper()
	c := &console.Console{Tenancy: e.svc, Policy: e.policy, Meter: e.meter, Requests: e.requests, Ledger: e.store, Names: e.store,
		Sessions: session.NewManager(e.store, e.svc, 12*time.Hour, e.clock.Now), Now: e.clock.Now, WhatIf: opts}
	ts := httptest.NewServer(c.Handler())
	t.Cleanup(ts.Close)
	return ts.URL
}

// TestWhatIfCSRFIsRefused: a replay without the session's token, from
// another site or without a session is refused and shows no report; a
// draft larger than a small form (64 KiB) goes through, one larger than
// a policy document may be does not.
func TestWhatIfCSRFIsRefused(t *testing.T) {
	e := newEnv(t)
	a := e.browser()
	a.signIn(e.admin)
	draft := webDraft("uni", "1/day")
	for _, c := range []struct {
		name   string
		b      *browser
		fields map[string]string
		why    string
	}{
		{"no token", a, map[string]string{"csrf": "", "draft": draft}, "security token"},
		{"a wrong token", a, map[string]string{"csrf": "forged", "draft": draft}, "security token"},
		{"another site", &browser{t: t, e: e, c: a.c, origin: "https://evil.example"}, map[string]string{"csrf": a.csrf(whatIfPath), "draft": draft}, "came from another site"},
		{"no session", e.browser(), map[string]string{"csrf": a.csrf(whatIfPath), "draft": draft}, "session has ended"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := c.b.postDraft(c.fields)
			if p.status != http.StatusForbidden || !strings.Contains(p.body, c.why) || strings.Contains(p.body, "whatif-report") {
				t.Errorf("got %d, want 403 saying %q and no report:\n%s", p.status, c.why, p.body)
			}
		})
	}
	big := draft + "# " + strings.Repeat("x", 100<<10) + "\n"
	if p := a.postDraft(map[string]string{"window": "24h", "draft": big}); p.status != http.StatusOK || !strings.Contains(p.body, "whatif-report") {
		t.Errorf("a 100 KiB draft: %d, want 200 with a report:\n%.2000s", p.status, p.body)
	}
	huge := "# " + strings.Repeat("x", policydoc.MaxSize+100<<10) + "\n"
	if p := a.postDraft(map[string]string{"window": "24h", "draft": huge}); p.status != http.StatusRequestEntityTooLarge {
		t.Errorf("a draft past policydoc.MaxSize: %d, want 413:\n%.2000s", p.status, p.body)
	}
}

// TestWhatIfPlatformAdminPicksTheLedger: a platform admin replays every
// tenant's ledger or one tenant's; each wall reads in its tenant's zone
// even in a replay of every tenant; an unknown tenant is 404.
func TestWhatIfPlatformAdminPicksTheLedger(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	e.spendAt(t, now.Add(-time.Hour), now.Add(-time.Hour+time.Minute))
	res, err := e.svc.Bootstrap(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	_, key, err := e.svc.CreateKey(e.platform, tenancy.KeyInput{UserID: res.UserID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CreateTenant(e.platform, tenancy.TenantInput{Name: "rival", Timezone: "UTC"}); err != nil {
		t.Fatal(err)
	}
	a := e.browser()
	a.signIn(key)
	page := a.get(whatIfPath)
	if page.status != http.StatusOK || !strings.Contains(page.body, `<option value="`+e.tenantID+`" >uni</option>`) ||
		!strings.Contains(page.body, "plans:") {
		t.Fatalf("the platform admin's page: %d, want a tenant pick and the whole policy (plans too) in the draft:\n%s", page.status, page.body)
	}
	for _, c := range []struct {
		tenant string
		events string
	}{{"", "2"}, {e.tenantID, "2"}} {
		p := a.postDraft(map[string]string{"window": "24h", "tenant_id": c.tenant, "draft": webDraft("uni", "150/day")})
		if p.status != http.StatusOK || !strings.Contains(p.body, `data-events="`+c.events+`"`) {
			t.Fatalf("tenant %q: %d, want %s events:\n%s", c.tenant, p.status, c.events, p.body)
		}
		if w := shownWalls(p.body); len(w) != 1 || w[0].denied != 1 {
			t.Errorf("tenant %q: got walls %+v, want the second call denied", c.tenant, w)
		}
		if !strings.Contains(visibleText(p.body), "Fri 20 Nov 2026 10:01 Asia/Shanghai") {
			t.Errorf("tenant %q: the wall is not shown in uni's zone:\n%s", c.tenant, visibleText(p.body))
		}
		if global := strings.Contains(p.body, "the global scope is left out"); global != (c.tenant != "") {
			t.Errorf("tenant %q: the note on the global scope is shown: %v", c.tenant, global)
		}
	}
	p := a.postDraft(map[string]string{"window": "24h", "tenant_id": "ten_nope", "draft": webDraft("uni", "150/day")})
	if field, _ := shownError(p.body); p.status != http.StatusNotFound || field != "tenant_id" ||
		!regexp.MustCompile(`id="tenant_id"[^>]*aria-invalid="true"`).MatchString(p.body) {
		t.Errorf("an unknown tenant: %d naming %q, want 404 naming tenant_id:\n%s", p.status, field, p.body)
	}
}
