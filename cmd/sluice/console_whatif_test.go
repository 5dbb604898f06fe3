package main

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestConsoleWhatIfInABrowser: a tenant admin opens the policy what-if
// page in chromium, edits the draft (which starts as the policy in force)
// to a day's budget of exactly the first of three calls' tokens, runs it,
// and sees the wall: the two later calls denied, first hit at the second,
// in the tenant's zone, with its timeline.
func TestConsoleWhatIfInABrowser(t *testing.T) {
	path := chromium(t)
	w := newConsoleWorld(t)
	s, admin, prj, aliceKey, bossKey := w.s, w.admin, w.project, w.aliceKey, w.bossKey
	// Three chat completions on the built-in simulated model: the ledger
	// the replay reads (committed before each call answers).
	var spent []int64
	for i := range 3 {
		code, out := call(t, "POST", s.url+"/v1/chat/completions", aliceKey,
			fmt.Sprintf(`{"model":"sim","messages":[{"role":"user","content":"Question %d about quotas"}],"max_tokens":40}`, i))
		if code != http.StatusOK {
			t.Fatalf("chat completion %d: %d %v", i, code, out)
		}
		spent = append(spent, int64(out["usage"].(map[string]any)["total_tokens"].(float64)))
	}
	policyBefore := policyExport(t, s.url, admin)

	teacher := newBrowser(t, path)
	signInAs(t, teacher, s.url, bossKey)
	do(t, teacher, "open the what-if page",
		chromedp.Navigate(s.url+"/console/admin/"),
		chromedp.Click(chromedp.CSS(`a[href="/console/admin/what-if"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#draft`)),
	)
	draft := value(t, teacher, "read the draft", chromedp.Value(chromedp.CSS(`#draft`)))
	if !strings.Contains(draft, "name: group-1") || !strings.Contains(draft, "2000/month") {
		t.Fatalf("the draft does not start as the policy in force:\n%s", draft)
	}
	// The edit: the project's 2000 a month becomes the first call's
	// tokens a day.
	edited := strings.Replace(draft, "2000/month", fmt.Sprintf("%d/day", spent[0]), 1)
	do(t, teacher, "edit the draft and run it",
		chromedp.SetValue(chromedp.CSS(`#draft`), edited),
		chromedp.SetValue(chromedp.CSS(`#window`), "24h"),
		chromedp.Click(chromedp.CSS(`#whatif-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#whatif-report`)),
	)
	row := `section[data-scope="project/` + prj + `"] tr.wall[data-dimension="tokens"][data-window="day"]`
	do(t, teacher, "see the wall", chromedp.WaitVisible(chromedp.CSS(row+` svg.timeline`)))
	denied := value(t, teacher, "read the denials", chromedp.AttributeValue(chromedp.CSS(row), "data-denied")).Value
	tokens := value(t, teacher, "read the denied tokens", chromedp.AttributeValue(chromedp.CSS(row), "data-denied-tokens")).Value
	if n, _ := strconv.ParseInt(tokens, 10, 64); denied != "2" || n != spent[1]+spent[2] {
		t.Errorf("the wall denies %s calls of %s tokens, want 2 of %d (the second and third calls)", denied, tokens, spent[1]+spent[2])
	}
	if at := value(t, teacher, "read the first wall", chromedp.Text(chromedp.CSS(row+` .first-wall`))); !strings.HasSuffix(strings.TrimSpace(at), "Asia/Shanghai") {
		t.Errorf("the first wall reads %q, want a time in Asia/Shanghai", at)
	}
	if kept := value(t, teacher, "read the draft again", chromedp.Value(chromedp.CSS(`#draft`))); strings.TrimSpace(kept) != strings.TrimSpace(edited) {
		t.Errorf("the form lost the edited draft:\n%s", kept)
	}
	shoot(t, teacher, "admin-whatif")

	do(t, teacher, "a phone's width", chromedp.EmulateViewport(375, 812), chromedp.WaitVisible(chromedp.CSS(`#whatif-report`)))
	if value(t, teacher, "measure", chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`)) {
		t.Error("at 375 px the what-if page is wider than the screen")
	}
	shoot(t, teacher, "admin-whatif-375px")

	// Nothing was applied.
	if after := policyExport(t, s.url, admin); after != policyBefore {
		t.Errorf("the policy changed:\nbefore %s\nafter  %s", policyBefore, after)
	}
}

// policyExport is GET /api/v1/admin/policy as YAML.
func policyExport(t *testing.T, base, key string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/api/v1/admin/policy?format=yaml", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("export: %d %s %v", resp.StatusCode, body, err)
	}
	return string(body)
}
