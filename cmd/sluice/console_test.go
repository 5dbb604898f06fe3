package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// chromium finds Debian's chromium. Without it the browser test skips,
// unless SLUICE_REQUIRE_BROWSER=1 (scripts/test sets it), when it fails.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("SLUICE_REQUIRE_BROWSER") == "1" {
		t.Fatal("chromium is not on PATH and SLUICE_REQUIRE_BROWSER=1: install it (apt-get install chromium)")
	}
	t.Skip("chromium is not on PATH (apt-get install chromium); set SLUICE_REQUIRE_BROWSER=1 to fail instead")
	return ""
}

// newBrowser starts a headless chromium of its own (its own profile, so
// its own cookies) and returns a tab's context.
func newBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("headless", true), chromedp.WindowSize(1280, 900), chromedp.UserDataDir(t.TempDir()))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	// One bound for the whole test's use of this browser: a hang fails
	// the test instead of stalling the suite.
	alloc, cancelTimeout := context.WithTimeout(alloc, 4*time.Minute)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelCtx(); cancelTimeout(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// get runs one action that answers a value.
func value[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// shoot writes a full-page screenshot to test-artifacts/console/.
func shoot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := filepath.Join("..", "..", "test-artifacts", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	png := value(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// signInAs signs in through the sign-in form, starting from /.
func signInAs(t *testing.T, ctx context.Context, base, key string) {
	t.Helper()
	do(t, ctx, "sign in",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#key`)),
		chromedp.SendKeys(chromedp.CSS(`#key`), key),
		chromedp.Submit(chromedp.CSS(`#key`)),
		chromedp.WaitVisible(chromedp.CSS(`form.signout`)),
	)
}

// meter reads a bar's used and limit from the member view.
func meter(t *testing.T, ctx context.Context, base, scope, dim, window string) (used, limit int64) {
	t.Helper()
	sel := fmt.Sprintf(`section[data-scope=%q] li[data-dimension=%q][data-window=%q]`, scope, dim, window)
	do(t, ctx, "open the member view", chromedp.Navigate(base+"/console/"), chromedp.WaitVisible(chromedp.CSS(sel)))
	u := value(t, ctx, "read "+sel, chromedp.AttributeValue(chromedp.CSS(sel), "data-used"))
	l := value(t, ctx, "read "+sel, chromedp.AttributeValue(chromedp.CSS(sel), "data-limit"))
	used, _ = strconv.ParseInt(u.Value, 10, 64)
	limit, _ = strconv.ParseInt(l.Value, 10, 64)
	return used, limit
}

// TestConsoleInABrowser drives the console in chromium against the real
// server: a member signs in and sees their bars, uses tokens through the
// OpenAI-compatible API and sees the bar move by exactly that, asks for
// more; a tenant admin (another browser) approves and the member's limit
// grows; a CSRF attempt and another tenant's admin are refused.
func TestConsoleInABrowser(t *testing.T) {
	path := chromium(t)
	w := newConsoleWorld(t)
	s, ten, prj, aliceKey, bossKey := w.s, w.tenant, w.project, w.aliceKey, w.bossKey
	mk := func(what, path, body string) map[string]any { return w.mk(t, what, path, body) }
	scope := "project/" + prj

	member := newBrowser(t, path)
	signInAs(t, member, s.url, aliceKey)
	used0, limit0 := meter(t, member, s.url, scope, "tokens", "month")
	if used0 != 0 || limit0 != 2000 {
		t.Fatalf("before any use: %d of %d tokens, want 0 of 2000", used0, limit0)
	}
	text := value(t, member, "read the sentence", chromedp.Text(chromedp.CSS(`section[data-scope="`+scope+`"] .sentence`)))
	if !strings.Contains(text, "of this month's tokens used, resets") || !strings.HasSuffix(strings.TrimSpace(text), "00:00 Asia/Shanghai") {
		t.Errorf("the bar says %q, want a reset at 00:00 Asia/Shanghai", text)
	}
	shoot(t, member, "member-before")

	// Use: one chat completion on the built-in simulated model.
	code, out := call(t, "POST", s.url+"/v1/chat/completions", aliceKey,
		`{"model":"sim","messages":[{"role":"user","content":"Tell me about quotas"}],"max_tokens":40}`)
	if code != http.StatusOK {
		t.Fatalf("chat completion: %d %v", code, out)
	}
	spent := int64(out["usage"].(map[string]any)["total_tokens"].(float64))
	if spent <= 0 {
		t.Fatalf("the completion used %d tokens", spent)
	}
	if used, _ := meter(t, member, s.url, scope, "tokens", "month"); used != spent {
		t.Fatalf("after the call the bar shows %d tokens used, want %d (the call's usage)", used, spent)
	}
	shoot(t, member, "member-after-use")

	// Ask for more.
	do(t, member, "ask for more",
		chromedp.Navigate(s.url+"/console/requests"),
		chromedp.WaitVisible(chromedp.CSS(`#amount`)),
		chromedp.SetValue(chromedp.CSS(`#scope`), scope),
		chromedp.SetValue(chromedp.CSS(`#dimension`), "tokens_month"),
		chromedp.SendKeys(chromedp.CSS(`#amount`), "5000"),
		chromedp.SendKeys(chromedp.CSS(`#reason`), "exam week"),
		chromedp.Submit(chromedp.CSS(`#amount`)),
		chromedp.WaitVisible(chromedp.CSS(`#my-requests tr[data-status="pending"]`)),
	)
	reqID := value(t, member, "read the request id", chromedp.AttributeValue(chromedp.CSS(`#my-requests tr[data-status="pending"]`), "data-request")).Value
	shoot(t, member, "member-asked")

	// The teacher approves it in a browser of their own.
	teacher := newBrowser(t, path)
	signInAs(t, teacher, s.url, bossKey)
	do(t, teacher, "approve",
		chromedp.Navigate(s.url+"/console/admin/requests"),
		chromedp.WaitVisible(chromedp.CSS(`section[data-request="`+reqID+`"]`)),
		chromedp.Submit(chromedp.CSS(`section[data-request="`+reqID+`"] form[action$="/approve"] input[name="note"]`)),
		chromedp.WaitVisible(chromedp.CSS(`p.notice`)),
	)
	shoot(t, teacher, "admin-approved")
	do(t, teacher, "tree", chromedp.Navigate(s.url+"/console/admin/"), chromedp.WaitVisible(chromedp.CSS(`section[data-scope="`+scope+`"]`)))
	shoot(t, teacher, "admin-tree")
	do(t, teacher, "charts", chromedp.Navigate(s.url+"/console/admin/charts?scope=tenant/"+ten), chromedp.WaitVisible(chromedp.CSS(`#chart-day svg`)))
	shoot(t, teacher, "admin-charts")

	if used, limit := meter(t, member, s.url, scope, "tokens", "month"); used != spent || limit != 7000 {
		t.Fatalf("after the approval: %d of %d tokens, want %d of 7000", used, limit, spent)
	}
	do(t, member, "a phone's width", chromedp.EmulateViewport(375, 812), chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`form.signout`)))
	overflow := value(t, member, "measure", chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	if overflow {
		t.Error("at 375 px the member view is wider than the screen")
	}
	shoot(t, member, "member-375px")

	// CSRF: a POST from the member's own page without the token, and one
	// carrying their session cookie from another site.
	status := value(t, member, "post without the token", chromedp.Evaluate[int](`fetch("/console/requests", {method: "POST",
		headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "dimension=tokens_month&amount=1&duration=1d&reason=x"}).then(r => r.status)`,
		chromedp.EvalAwaitPromise))
	if status != http.StatusForbidden {
		t.Errorf("a POST without the CSRF token: %d, want 403", status)
	}
	got, err := chromedp.Call(member, network.GetCookies, network.GetCookiesParams{URLs: []string{s.url + "/console/"}})
	if err != nil {
		t.Fatal(err)
	}
	var session string
	for _, c := range got.Cookies {
		if c.Name == "sluice_console" {
			session = c.Value
			if !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict {
				t.Errorf("session cookie HttpOnly=%v SameSite=%v, want true, Strict", c.HTTPOnly, c.SameSite)
			}
		}
	}
	if session == "" {
		t.Fatal("no session cookie in the member's browser")
	}
	req, _ := http.NewRequest("POST", s.url+"/console/requests", strings.NewReader(url.Values{"dimension": {"tokens_month"}, "amount": {"1"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	req.AddCookie(&http.Cookie{Name: "sluice_console", Value: session})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a POST from another site with the member's cookie: %d, want 403", resp.StatusCode)
	}

	// Another tenant's admin opens this tenant's request and scope.
	other := mk("tenant B", "/api/v1/admin/tenants", `{"name":"college","timezone":"UTC"}`)["id"].(string)
	mallory := mk("B's admin", "/api/v1/admin/users", `{"tenant_id":"`+other+`","name":"mallory","role":"tenant_admin"}`)["id"].(string)
	malloryKey := mk("B's admin key", "/api/v1/admin/keys", `{"user_id":"`+mallory+`"}`)["secret"].(string)
	rival := newBrowser(t, path)
	signInAs(t, rival, s.url, malloryKey)
	for _, p := range []string{"/console/admin/requests/" + reqID, "/console/admin/scope?scope=" + scope} {
		do(t, rival, "open "+p, chromedp.Navigate(s.url+p), chromedp.WaitVisible(chromedp.CSS(`#problem`)))
		heading := value(t, rival, "read the heading", chromedp.Text(chromedp.CSS(`h1`)))
		if heading != "Not found" {
			t.Errorf("another tenant's admin at %s sees %q, want Not found", p, heading)
		}
	}
	shoot(t, rival, "cross-tenant-refused")
}

// consoleWorld is what the browser tests start from: a server, the
// tenant university (Asia/Shanghai) with department cs101 and project
// group-1 (2,000 tokens a month), its member alice and its admin teacher,
// each with a key.
type consoleWorld struct {
	s                 *started
	admin             string
	tenant, project   string
	aliceKey, bossKey string
}

func newConsoleWorld(t *testing.T) consoleWorld {
	t.Helper()
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	w := consoleWorld{admin: string(cfg.AdminKey), s: start(t, cfg)}
	mk := func(what, path, body string) map[string]any { return w.mk(t, what, path, body) }
	w.tenant = mk("tenant", "/api/v1/admin/tenants", `{"name":"university","timezone":"Asia/Shanghai"}`)["id"].(string)
	dept := mk("department", "/api/v1/admin/departments", `{"tenant_id":"`+w.tenant+`","name":"cs101"}`)["id"].(string)
	w.project = mk("project", "/api/v1/admin/projects", `{"tenant_id":"`+w.tenant+`","department_id":"`+dept+`","name":"group-1"}`)["id"].(string)
	alice := mk("user", "/api/v1/admin/users", `{"tenant_id":"`+w.tenant+`","name":"alice","role":"member"}`)["id"].(string)
	mk("member", "/api/v1/admin/memberships", `{"user_id":"`+alice+`","project_id":"`+w.project+`"}`)
	w.aliceKey = mk("key", "/api/v1/admin/keys", `{"user_id":"`+alice+`","project_id":"`+w.project+`","name":"laptop"}`)["secret"].(string)
	boss := mk("admin user", "/api/v1/admin/users", `{"tenant_id":"`+w.tenant+`","name":"teacher","role":"tenant_admin"}`)["id"].(string)
	w.bossKey = mk("admin key", "/api/v1/admin/keys", `{"user_id":"`+boss+`"}`)["secret"].(string)
	if code, m := call(t, "PUT", w.s.url+"/api/v1/admin/limits/project/"+w.project, w.admin, `{"limits":{"tokens":"2000/month"}}`); code != http.StatusOK {
		t.Fatalf("limits: %d %v", code, m)
	}
	return w
}

// mk creates something as the platform admin (201 expected).
func (w consoleWorld) mk(t *testing.T, what, path, body string) map[string]any {
	t.Helper()
	code, m := call(t, "POST", w.s.url+path, w.admin, body)
	if code != http.StatusCreated {
		t.Fatalf("%s: %d %v", what, code, m)
	}
	return m
}
