package main

import (
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestConsoleFlowsInABrowser drives the console's flow pages in chromium
// against the real server: a member uploads LangFlow's basic prompting
// starter, runs it from the flow's page and watches the answer stream in
// (the page's script; the built-in simulated model answers), opens the
// run's page and finds the graph with each node's tokens, equal to the
// API's record of the run; another tenant's admin gets Not found for the
// flow and the run.
func TestConsoleFlowsInABrowser(t *testing.T) {
	path := chromium(t)
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	admin := string(cfg.AdminKey)
	s := start(t, cfg)

	mk := func(what, path, body string) map[string]any {
		t.Helper()
		code, m := call(t, "POST", s.url+path, admin, body)
		if code != http.StatusCreated {
			t.Fatalf("%s: %d %v", what, code, m)
		}
		return m
	}
	ten := mk("tenant", "/api/v1/admin/tenants", `{"name":"university","timezone":"Asia/Shanghai"}`)["id"].(string)
	prj := mk("project", "/api/v1/admin/projects", `{"tenant_id":"`+ten+`","name":"group-1"}`)["id"].(string)
	alice := mk("user", "/api/v1/admin/users", `{"tenant_id":"`+ten+`","name":"alice","role":"member"}`)["id"].(string)
	mk("member", "/api/v1/admin/memberships", `{"user_id":"`+alice+`","project_id":"`+prj+`"}`)
	aliceKey := mk("key", "/api/v1/admin/keys", `{"user_id":"`+alice+`","project_id":"`+prj+`","name":"laptop"}`)["secret"].(string)

	member := newBrowser(t, path)
	signInAs(t, member, s.url, aliceKey)
	export, err := filepath.Abs(filepath.Join("..", "..", "examples", "flows", "basic-prompting.json"))
	if err != nil {
		t.Fatal(err)
	}
	do(t, member, "upload the basic prompting starter",
		chromedp.Navigate(s.url+"/console/flows"),
		chromedp.WaitVisible(chromedp.CSS(`#flow-file`)),
		chromedp.SetUploadFiles(chromedp.CSS(`#flow-file`), []string{export}),
		chromedp.Submit(chromedp.CSS(`#flow-file`)),
		chromedp.WaitVisible(chromedp.CSS(`#run-form`)),
	)
	if notice := value(t, member, "read the notice", chromedp.Text(chromedp.CSS(`p.notice`))); !strings.Contains(notice, "uploaded and checked") {
		t.Errorf("after the upload the page says %q", notice)
	}
	shoot(t, member, "flow-uploaded")
	do(t, member, "the flows list", chromedp.Navigate(s.url+"/console/flows"), chromedp.WaitVisible(chromedp.CSS(`#flows`)))
	if row := value(t, member, "read the list", chromedp.Text(chromedp.CSS(`#flows tbody tr`))); !strings.Contains(row, "Basic Prompting") || !strings.Contains(row, "alice") || !strings.Contains(row, "group-1") {
		t.Errorf("the flows list's row: %q, want the flow's name, owner and project", row)
	}
	shoot(t, member, "flows-list")

	// Run it: the script streams the answer into the page.
	flowURL := value(t, member, "read the flow's link", chromedp.AttributeValue(chromedp.CSS(`#flows tbody tr a`), "href")).Value
	do(t, member, "run the flow",
		chromedp.Navigate(s.url+flowURL),
		chromedp.WaitVisible(chromedp.CSS(`#input`)),
		chromedp.SendKeys(chromedp.CSS(`#input`), "Tell me about quotas"),
		chromedp.Click(chromedp.CSS(`#run-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#live[data-status="succeeded"]`)),
	)
	if loc := value(t, member, "where the browser is", chromedp.Location()); !strings.HasSuffix(loc, flowURL) {
		t.Errorf("after running the browser is at %s, want still on the flow's page (the answer streamed in)", loc)
	}
	answer := value(t, member, "read the answer", chromedp.Text(chromedp.CSS(`#answer`)))
	if strings.TrimSpace(answer) == "" {
		t.Fatal("no answer appeared on the flow's page")
	}
	done := value(t, member, "read the progress", chromedp.Evaluate[string](`(function(){var b=document.getElementById("run-progress");return b.value+"/"+b.max;})()`))
	if done != "4/4" {
		t.Errorf("the progress bar ends at %s, want 4/4 nodes", done)
	}
	shoot(t, member, "flow-streamed")

	// The run's page: the graph with each node's tokens.
	do(t, member, "open the run's page",
		chromedp.Click(chromedp.CSS(`#run-link a`)),
		chromedp.WaitVisible(chromedp.CSS(`#graph svg`)),
		chromedp.WaitVisible(chromedp.CSS(`#nodes`)),
	)
	loc := value(t, member, "the run's page", chromedp.Location())
	runID := loc[strings.LastIndex(loc, "/")+1:]
	code, rec := call(t, "GET", s.url+"/api/v1/runs/"+runID, aliceKey, "")
	if code != http.StatusOK || rec["status"] != "succeeded" {
		t.Fatalf("the run through the API: %d %v", code, rec)
	}
	if got := rec["output_preview"].(string); !strings.HasPrefix(strings.TrimSpace(answer), strings.TrimSuffix(got, "…")) {
		t.Errorf("the streamed answer %q is not the run's output %q", answer, got)
	}
	for _, tr := range rec["trace"].([]any) {
		node := tr.(map[string]any)
		u := node["usage"].(map[string]any)
		want := int64(u["input_tokens"].(float64) + u["output_tokens"].(float64))
		sel := `#graph g[data-node="` + node["node_id"].(string) + `"] text[data-fig="tokens"]`
		got := value(t, member, "read "+sel, chromedp.TextContent(chromedp.CSS(sel)))
		n, _ := strconv.ParseInt(strings.NewReplacer("\u202f", "", " tokens", "").Replace(got), 10, 64)
		if n != want {
			t.Errorf("node %s is drawn with %q, want %d tokens", node["node_id"], got, want)
		}
	}
	hot := value(t, member, "the highlighted node", chromedp.AttributeValue(chromedp.CSS(`#graph g[data-hot="true"]`), "data-node")).Value
	if hot != "LanguageModelComponent-LsJMR" {
		t.Errorf("the highlighted node is %q, want the model node", hot)
	}
	shoot(t, member, "run-page")
	do(t, member, "the runs list", chromedp.Navigate(s.url+"/console/runs"), chromedp.WaitVisible(chromedp.CSS(`#runs tr[data-run="`+runID+`"][data-status="succeeded"]`)))
	shoot(t, member, "runs-list")

	// Another tenant's admin follows the same links.
	other := mk("tenant B", "/api/v1/admin/tenants", `{"name":"college","timezone":"UTC"}`)["id"].(string)
	mallory := mk("B's admin", "/api/v1/admin/users", `{"tenant_id":"`+other+`","name":"mallory","role":"tenant_admin"}`)["id"].(string)
	malloryKey := mk("B's admin key", "/api/v1/admin/keys", `{"user_id":"`+mallory+`"}`)["secret"].(string)
	rival := newBrowser(t, path)
	signInAs(t, rival, s.url, malloryKey)
	for _, p := range []string{flowURL, "/console/runs/" + runID} {
		do(t, rival, "open "+p, chromedp.Navigate(s.url+p), chromedp.WaitVisible(chromedp.CSS(`#problem`)))
		if heading := value(t, rival, "read the heading", chromedp.Text(chromedp.CSS(`h1`))); heading != "Not found" {
			t.Errorf("another tenant's admin at %s sees %q, want Not found", p, heading)
		}
	}
	shoot(t, rival, "flow-cross-tenant-refused")
}
