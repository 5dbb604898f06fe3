package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// langflow is an httptest LangFlow speaking its wire formats: the run
// answer (outputs → outputs → results.message with properties.usage), the
// stream of JSON events separated by blank lines (add_message, token,
// end), webhooks, build jobs with their events, and {"detail": …} errors.
type langflow struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []string // x-api-key of each request
	queries []string
	paths   []string
	hold    chan struct{} // when set, runs wait for it (or their context)
	ended   chan struct{} // a held run's context ended
}

func newLangflow(t *testing.T) *langflow {
	t.Helper()
	lf := &langflow{ended: make(chan struct{}, 16)}
	lf.Server = httptest.NewServer(http.HandlerFunc(lf.serve))
	t.Cleanup(lf.Close)
	return lf
}

const lfRunAnswer = `{"session_id":"s1","outputs":[{"inputs":{"input_value":"hi"},"outputs":[{"results":{"message":{"id":"m1","text":"Hello!","sender":"Machine","sender_name":"AI","properties":{"source":{"id":"OpenAIModel-x","display_name":"OpenAI","source":"gpt-4o-mini"},"usage":{"input_tokens":30,"output_tokens":12,"total_tokens":42}}}},"outputs":{"message":{"message":"Hello!","type":"text"}},"messages":[{"id":"m1","message":"Hello!","properties":{"usage":{"input_tokens":30,"output_tokens":12,"total_tokens":42}}}],"timedelta":0.5,"duration":"0.5 seconds","component_display_name":"Chat Output","component_id":"ChatOutput-1"}]}]}`

func (lf *langflow) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body) // as LangFlow reads its JSON body (and then notices a caller gone)
	lf.mu.Lock()
	lf.keys = append(lf.keys, r.Header.Get("X-Api-Key"))
	lf.queries = append(lf.queries, r.URL.RawQuery)
	lf.paths = append(lf.paths, r.Method+" "+r.URL.Path)
	hold := lf.hold
	lf.mu.Unlock()
	if !strings.HasPrefix(r.Header.Get("X-Api-Key"), "lf-") {
		w.WriteHeader(403)
		io.WriteString(w, `{"detail":"An API key must be passed as query or header"}`)
		return
	}
	switch {
	case r.URL.Path == "/api/v1/run/missing":
		w.WriteHeader(404)
		io.WriteString(w, `{"detail":"Flow identifier missing not found"}`)
	case r.Method == "POST" && strings.HasPrefix(r.URL.Path, "/api/v1/files/upload/"):
		flow := strings.TrimPrefix(r.URL.Path, "/api/v1/files/upload/")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		fmt.Fprintf(w, `{"flowId":%q,"file_path":%q}`, flow, flow+"/2026-12-03_10-00-00_notes.txt")
	case strings.HasPrefix(r.URL.Path, "/api/v1/run/") && r.URL.Query().Get("stream") == "true":
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		fmt.Fprint(w, `{"event": "add_message", "data": {"id":"m0","text":"hi","sender":"User"}}`+"\n\n")
		fl.Flush()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				lf.ended <- struct{}{}
				return
			}
		}
		fmt.Fprint(w, `{"event": "token", "data": {"chunk":"Hel","id":"m1"}}`+"\n\n")
		fmt.Fprint(w, `{"event": "end", "data": {"result": `+lfRunAnswer+`}}`+"\n\n")
	case strings.HasPrefix(r.URL.Path, "/api/v1/run/"), strings.HasPrefix(r.URL.Path, "/api/v1/webhook/"):
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				lf.ended <- struct{}{}
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(r.URL.Path, "/api/v1/webhook/") {
			io.WriteString(w, `{"message":"Task started in the background","status":"in progress"}`)
			return
		}
		io.WriteString(w, lfRunAnswer)
	case strings.HasPrefix(r.URL.Path, "/api/v1/build/") && strings.HasSuffix(r.URL.Path, "/flow"):
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"job_id":"job-123"}`)
	case r.URL.Path == "/api/v1/build/job-123/events":
		w.Header().Set("Content-Type", "application/x-ndjson")
		fmt.Fprint(w, `{"event":"vertices_sorted","data":{"ids":["a"]}}`+"\n\n")
		fmt.Fprint(w, `{"event":"add_message","data":{"id":"m9","text":"done","properties":{"usage":{"input_tokens":5,"output_tokens":6}}}}`+"\n\n")
		fmt.Fprint(w, `{"event":"end","data":{}}`+"\n\n")
	case r.Method == "GET" && strings.HasPrefix(r.URL.Path, "/api/v1/flows/"):
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"f1","name":"Basic Prompting","data":{"nodes":[],"edges":[]}}`)
	default:
		w.WriteHeader(404)
		io.WriteString(w, `{"detail":"Not Found"}`)
	}
}

func (lf *langflow) count(prefix string) int {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	n := 0
	for _, p := range lf.paths {
		if strings.HasPrefix(p, prefix) {
			n++
		}
	}
	return n
}

// startFront starts Sluice in front of lf with policy applied.
func startFront(t *testing.T, lf *langflow, policy string, charge bool) (*started, alice) {
	t.Helper()
	cfg := testConfig(t)
	cfg.AdminKey = gwAdmin
	cfg.Langflow.Upstream = lf.URL
	cfg.Langflow.APIKeyEnv = "SLUICE_TEST_LANGFLOW_KEY"
	cfg.Langflow.ChargeReportedUsage = charge
	t.Setenv("SLUICE_TEST_LANGFLOW_KEY", "lf-upstream-key")
	s := start(t, cfg)
	return s, applyPolicy(t, s.url, gwAdmin, policy)
}

func lfPost(t *testing.T, ctx context.Context, url, key, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
	req.Header.Set("x-api-key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

const frontPolicy = `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {concurrency: 1, tokens: 100000/day, run_timeout: 2s}}
`

// TestFrontAttributesAndRecords: a run through the front carries the
// caller's Sluice key no further (LangFlow gets the key Sluice holds),
// answers as LangFlow did, and its usage event records the tokens LangFlow
// reported, once, to the caller.
func TestFrontAttributesAndRecords(t *testing.T) {
	lf := newLangflow(t)
	s, a := startFront(t, lf, frontPolicy, true)
	resp := lfPost(t, context.Background(), s.url+"/api/v1/run/f1?stream=false", a.key, `{"input_value":"hi"}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != lfRunAnswer {
		t.Fatalf("%d %s, want LangFlow's answer unchanged", resp.StatusCode, b)
	}
	// With ?x-api-key= as LangFlow accepts: the query key is removed too.
	req, _ := http.NewRequest("GET", s.url+"/api/v1/flows/f1?x-api-key="+a.key, nil)
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 200 {
		t.Fatalf("flow read: %d", r2.StatusCode)
	}
	lf.mu.Lock()
	for i, k := range lf.keys {
		if k != "lf-upstream-key" || strings.Contains(lf.queries[i], a.key) {
			t.Errorf("request %d reached LangFlow with key %q, query %q", i, k, lf.queries[i])
		}
	}
	lf.mu.Unlock()
	waitFor(t, "the run's usage event", func() (bool, string) {
		evs, err := s.app.store.UsageEvents(context.Background(), a.tenantID, time.Unix(0, 0), time.Now().Add(time.Hour), 100)
		if err != nil {
			return false, err.Error()
		}
		for _, e := range evs {
			if e.Kind == "langflow_run" && e.UserID == a.userID {
				return e.InputTokens == 30 && e.OutputTokens == 12 && e.Requests == 1, fmt.Sprintf("%+v", e)
			}
		}
		return false, fmt.Sprintf("%d events, none a langflow_run", len(evs))
	})
}

// TestFrontStreamsUnbufferedAndHoldsTheSlot: the first event of a streamed
// run reaches the caller while LangFlow is still working; meanwhile the
// caller's one concurrency slot is held (a second run is refused with
// LangFlow's {"detail"} shape); when the caller leaves, LangFlow's request
// is cancelled and the slot is free again.
func TestFrontStreamsUnbufferedAndHoldsTheSlot(t *testing.T) {
	lf := newLangflow(t)
	s, a := startFront(t, lf, frontPolicy, true)
	defer func() {
		if t.Failed() {
			t.Log(s.logs.String())
		}
	}()
	lf.mu.Lock()
	lf.hold = make(chan struct{})
	lf.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // a failure below leaves no run held at LangFlow
	resp := lfPost(t, ctx, s.url+"/api/v1/run/f1?stream=true", a.key, `{"input_value":"hi"}`)
	first, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.Contains(first, `"add_message"`) {
		t.Fatalf("first event %q (%v), want add_message before LangFlow finished", first, err)
	}
	// No retry: a stream cut here was the front's own transport closing
	// its connection to LangFlow (front.untilEOF; the deterministic case
	// is internal/front's TestStreamOutlivesItsRequestBody).
	second := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{"input_value":"again"}`)
	var body map[string]any
	_ = json.NewDecoder(second.Body).Decode(&body)
	second.Body.Close()
	if second.StatusCode != 429 || body["detail"] == nil || body["error"] == nil {
		t.Fatalf("second run while one is in flight: %d %v, want 429 with detail and error", second.StatusCode, body)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-lf.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("LangFlow's request was not cancelled when the caller left")
	}
	lf.mu.Lock()
	lf.hold = nil
	lf.mu.Unlock()
	waitFor(t, "the slot freed", func() (bool, string) {
		r := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{"input_value":"third"}`)
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r.StatusCode == 200, fmt.Sprint(r.StatusCode)
	})
}

// TestFrontRunTimeout: a run past the chain's run_timeout is cancelled at
// LangFlow and its slot freed.
func TestFrontRunTimeout(t *testing.T) {
	lf := newLangflow(t)
	s, a := startFront(t, lf, frontPolicy, true)
	lf.mu.Lock()
	lf.hold = make(chan struct{}) // never released: LangFlow "hangs"
	lf.mu.Unlock()
	resp := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{"input_value":"hi"}`)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	select {
	case <-lf.ended:
	case <-time.After(20 * time.Second):
		t.Log(s.logs.String())
		lf.mu.Lock()
		close(lf.hold)
		lf.mu.Unlock()
		t.Fatal("LangFlow's request was not cancelled at the run timeout")
	}
	if resp.StatusCode != 504 {
		t.Errorf("a run stopped at its timeout answered %d, want 504", resp.StatusCode)
	}
	lf.mu.Lock()
	lf.hold = nil
	lf.mu.Unlock()
	r := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{"input_value":"next"}`)
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Errorf("after the timeout: %d, want the slot free", r.StatusCode)
	}
}

// TestFrontRefusesCodeEndpoints: endpoints that run code or skip
// authentication on LangFlow are refused, saying why; reads pass.
func TestFrontRefusesCodeEndpoints(t *testing.T) {
	lf := newLangflow(t)
	s, a := startFront(t, lf, frontPolicy, true)
	for _, c := range []struct{ method, path string }{
		{"POST", "/api/v1/validate/code"}, {"POST", "/api/v1/validate/prompt"}, {"POST", "/api/v1/custom_component"},
		{"POST", "/api/v1/custom_component/update"}, {"POST", "/api/v1/build_public_tmp/f1/flow"}, {"GET", "/api/v1/auto_login"},
		{"POST", "/api/v1/flows/"}, {"PATCH", "/api/v1/flows/f1"},
	} {
		req, _ := http.NewRequest(c.method, s.url+c.path, strings.NewReader(`{"code":"import os"}`))
		req.Header.Set("x-api-key", a.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		detail, _ := body["detail"].(string)
		if resp.StatusCode != 403 || !strings.Contains(detail, "refused") || !strings.Contains(detail, "code_tenants") {
			t.Errorf("%s %s: %d %v, want 403 saying why and how to allow it", c.method, c.path, resp.StatusCode, body)
		}
	}
	if n := lf.count("POST /api/v1/validate") + lf.count("POST /api/v1/custom_component") + lf.count("PATCH /api/v1/flows"); n != 0 {
		t.Errorf("%d refused requests reached LangFlow", n)
	}
	// A wrong Sluice key never reaches LangFlow.
	resp := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", "not-a-key", `{}`)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("bad key: %d, want 401", resp.StatusCode)
	}
}

// TestFrontBuildJobHoldsItsSlot: a build's slot is held from the build
// request until its job's events end, and the usage in those events is
// recorded.
func TestFrontBuildJobHoldsItsSlot(t *testing.T) {
	lf := newLangflow(t)
	s, a := startFront(t, lf, frontPolicy, true)
	resp := lfPost(t, context.Background(), s.url+"/api/v1/build/f1/flow", a.key, `{}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "job-123") {
		t.Fatalf("build: %d %s", resp.StatusCode, b)
	}
	r := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{}`)
	bb, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 429 {
		t.Errorf("a run while the build's job runs: %d %s, want 429 (concurrency 1)", r.StatusCode, bb)
	}
	req, _ := http.NewRequest("GET", s.url+"/api/v1/build/job-123/events", nil)
	req.Header.Set("x-api-key", a.key)
	ev, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, ev.Body)
	ev.Body.Close()
	r = lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{}`)
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Errorf("after the job's events ended: %d, want the slot free", r.StatusCode)
	}
	waitFor(t, "the build's usage", func() (bool, string) {
		evs, _ := s.app.store.UsageEvents(context.Background(), a.tenantID, time.Unix(0, 0), time.Now().Add(time.Hour), 100)
		for _, e := range evs {
			if e.Kind == "langflow_build" {
				return e.InputTokens == 5 && e.OutputTokens == 6, fmt.Sprintf("%+v", e)
			}
		}
		return false, "no build event"
	})
}

const frontKeysPolicy = `
tenants:
  - name: acme
    projects: [{name: web}, {name: ops}]
    users:
      - {name: alice, projects: [web]}
      - {name: bob, projects: [web]}
      - {name: carol, projects: [ops]}
`

// TestFrontForwardsEachCallersOwnKey: with a server secret, a user's own
// LangFlow key (set by the user), else their project's (set by an admin),
// else the server's key goes upstream; the stored keys are sealed (the
// database holds no key in the clear), answers and the audit log show
// hints only, a member cannot set a project's key or another user's, and
// a key sealed under another secret fails the call (503) instead of
// forwarding under the server's identity.
func TestFrontForwardsEachCallersOwnKey(t *testing.T) {
	lf := newLangflow(t)
	cfg := testConfig(t)
	cfg.AdminKey = gwAdmin
	cfg.Langflow.Upstream = lf.URL
	cfg.Langflow.APIKeyEnv = "SLUICE_TEST_LANGFLOW_KEY"
	cfg.SecretKeyEnv = "SLUICE_TEST_SECRET"
	t.Setenv("SLUICE_TEST_LANGFLOW_KEY", "lf-upstream-key")
	t.Setenv("SLUICE_TEST_SECRET", "test secret: thirty-two bytes or more of it")
	s := start(t, cfg)
	a := applyPolicy(t, s.url, gwAdmin, frontKeysPolicy)
	ids := map[string]string{}
	_, users := call(t, "GET", s.url+"/api/v1/admin/users", gwAdmin, "")
	for _, u := range users["items"].([]any) {
		m := u.(map[string]any)
		ids[m["name"].(string)] = m["id"].(string)
	}
	_, projects := call(t, "GET", s.url+"/api/v1/admin/projects", gwAdmin, "")
	for _, p := range projects["items"].([]any) {
		m := p.(map[string]any)
		ids[m["name"].(string)] = m["id"].(string)
	}
	keyOf := func(user, project string) string {
		code, k := call(t, "POST", s.url+"/api/v1/admin/keys", gwAdmin, `{"user_id":"`+ids[user]+`","project_id":"`+ids[project]+`"}`)
		if code != 201 {
			t.Fatalf("key for %s: %d %v", user, code, k)
		}
		return k["secret"].(string)
	}
	bob, carol := keyOf("bob", "web"), keyOf("carol", "ops")

	// Alice sets her own; a member may not set the project's or bob's.
	code, m := call(t, "PUT", s.url+"/api/v1/admin/upstream-keys/langflow/user/"+a.userID, a.key, `{"api_key":"lf-alice-0001"}`)
	if code != 200 || m["hint"] != "…0001" || strings.Contains(fmt.Sprint(m), "lf-alice") {
		t.Fatalf("alice sets her key: %d %v, want 200 with the hint only", code, m)
	}
	if code, m := call(t, "PUT", s.url+"/api/v1/admin/upstream-keys/langflow/project/"+ids["web"], a.key, `{"api_key":"lf-web-0002"}`); code != 403 {
		t.Errorf("a member sets the project's key: %d %v, want 403", code, m)
	}
	if code, m := call(t, "PUT", s.url+"/api/v1/admin/upstream-keys/langflow/user/"+ids["bob"], a.key, `{"api_key":"lf-bob-0003"}`); code != 403 {
		t.Errorf("alice sets bob's key: %d %v, want 403", code, m)
	}
	if code, m := call(t, "PUT", s.url+"/api/v1/admin/upstream-keys/langflow/user/"+a.userID, a.key, `{"api_key":"has space"}`); code != 400 || !strings.Contains(fmt.Sprint(m), "api_key") {
		t.Errorf("a key with a space: %d %v, want 400 naming api_key", code, m)
	}
	if code, m := call(t, "PUT", s.url+"/api/v1/admin/upstream-keys/langflow/project/"+ids["web"], gwAdmin, `{"api_key":"lf-web-0002"}`); code != 200 {
		t.Fatalf("the admin sets web's key: %d %v", code, m)
	}

	runAs := func(key string) string {
		t.Helper()
		lf.mu.Lock()
		n := len(lf.keys)
		lf.mu.Unlock()
		resp := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", key, `{"input_value":"hi"}`)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("run: %d", resp.StatusCode)
		}
		lf.mu.Lock()
		defer lf.mu.Unlock()
		return lf.keys[n]
	}
	for _, c := range []struct{ who, key, want string }{
		{"alice (her own key)", a.key, "lf-alice-0001"},
		{"bob (web's key)", bob, "lf-web-0002"},
		{"carol (the server's key)", carol, "lf-upstream-key"},
	} {
		if got := runAs(c.key); got != c.want {
			t.Errorf("%s: LangFlow received %q, want %q", c.who, got, c.want)
		}
	}

	// Members see their own key's hint; the admin sees both.
	_, mine := call(t, "GET", s.url+"/api/v1/admin/upstream-keys/langflow", a.key, "")
	if d := mine["data"].([]any); len(d) != 1 || d[0].(map[string]any)["scope"] != "user/"+a.userID {
		t.Errorf("alice's list: %v, want her key only", mine)
	}
	_, all := call(t, "GET", s.url+"/api/v1/admin/upstream-keys/langflow", gwAdmin, "")
	if d := all["data"].([]any); len(d) != 2 {
		t.Errorf("the admin's list: %v, want 2", all)
	}

	// Nothing in the database or the audit log holds a key in the clear.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(cfg.DataDir, "sluice.db")+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sealedVals []string
	rows, err := db.Query(`SELECT sealed FROM upstream_keys`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		rows.Scan(&v)
		sealedVals = append(sealedVals, v)
	}
	rows.Close()
	if len(sealedVals) != 2 {
		t.Fatalf("%d sealed rows, want 2", len(sealedVals))
	}
	_, audit := call(t, "GET", s.url+"/api/v1/admin/audit", gwAdmin, "")
	for _, v := range append(sealedVals, fmt.Sprint(audit)) {
		if strings.Contains(v, "lf-alice") || strings.Contains(v, "lf-web") {
			t.Errorf("a key in the clear: %s", v)
		}
	}
	if !strings.Contains(fmt.Sprint(audit), "upstream_key.set") {
		t.Error("no upstream_key.set in the audit log")
	}

	// Deleted, alice falls back to the project's key.
	if code, m := call(t, "DELETE", s.url+"/api/v1/admin/upstream-keys/langflow/user/"+a.userID, a.key, ""); code != 204 {
		t.Fatalf("delete: %d %v", code, m)
	}
	if got := runAs(a.key); got != "lf-web-0002" {
		t.Errorf("alice after deleting hers: %q, want web's", got)
	}

	// A row sealed under another secret (a rotated secret) fails the call.
	if _, err := db.Exec(`UPDATE upstream_keys SET sealed = 'v1.AAAAAAAA.AAAA'`); err != nil {
		t.Fatal(err)
	}
	resp := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", bob, `{"input_value":"hi"}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "different server secret") || !strings.Contains(string(b), "detail") {
		t.Errorf("bob with an unreadable key: %d %s, want 503 saying why", resp.StatusCode, b)
	}
}

// TestFrontModelsMeteredThroughV1 is docs/langflow-front.md's "Metering
// every token" end to end: LangFlow's model component calls Sluice's /v1
// with the calling user's Sluice key (a LangFlow variable of that user,
// found here by the user's own LangFlow key, which the front forwarded),
// and with charge_reported_usage off every token is in the ledger once,
// exactly as the provider reported it, on the user: the model call as a
// gateway call, the run as a langflow_run with no tokens.
func TestFrontModelsMeteredThroughV1(t *testing.T) {
	up := newUpstream(t)
	var sluiceURL string
	var mu sync.Mutex
	sluiceKeyOf := map[string]string{} // LangFlow key → the user's Sluice key (a LangFlow variable)
	lf := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		mu.Lock()
		key := sluiceKeyOf[r.Header.Get("X-Api-Key")]
		mu.Unlock()
		if key == "" {
			w.WriteHeader(403)
			io.WriteString(w, `{"detail":"Invalid API key"}`)
			return
		}
		// The flow's OpenAI component, base URL Sluice's /v1.
		req, _ := http.NewRequestWithContext(r.Context(), "POST", sluiceURL+"/v1/chat/completions",
			strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			w.WriteHeader(500)
			return
		}
		var cc struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
			Usage struct {
				Prompt     int `json:"prompt_tokens"`
				Completion int `json:"completion_tokens"`
			} `json:"usage"`
		}
		json.NewDecoder(resp.Body).Decode(&cc)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(cc.Choices) == 0 {
			w.WriteHeader(500)
			fmt.Fprintf(w, `{"detail":"model call answered %d"}`, resp.StatusCode)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"session_id":"f1","outputs":[{"inputs":{"input_value":"hi"},"outputs":[{"results":{"message":{"text":%q,"properties":{"usage":{"input_tokens":%d,"output_tokens":%d}}}}}]}]}`,
			cc.Choices[0].Message.Content, cc.Usage.Prompt, cc.Usage.Completion)
	}))
	t.Cleanup(lf.Close)

	cfg := testConfig(t)
	cfg.AdminKey = gwAdmin
	cfg.Models = append(cfg.Models, up.model("gpt-4o-mini"))
	cfg.Langflow.Upstream = lf.URL
	cfg.Langflow.ChargeReportedUsage = false
	cfg.SecretKeyEnv = "SLUICE_TEST_SECRET"
	t.Setenv("SLUICE_TEST_SECRET", "test secret: thirty-two bytes or more of it")
	s := start(t, cfg)
	sluiceURL = s.url
	// Concurrency 2: the run holds one slot through the front, its model
	// call through /v1 another (docs/langflow-front.md).
	a := applyPolicy(t, s.url, gwAdmin, strings.Replace(frontPolicy, "concurrency: 1", "concurrency: 2", 1))
	mu.Lock()
	sluiceKeyOf["lf-alice"] = a.key
	mu.Unlock()
	if code, m := call(t, "PUT", s.url+"/api/v1/admin/upstream-keys/langflow/user/"+a.userID, a.key, `{"api_key":"lf-alice"}`); code != 200 {
		t.Fatalf("alice's LangFlow key: %d %v", code, m)
	}
	for range 3 {
		resp := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{"input_value":"hi"}`)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("run: %d %s", resp.StatusCode, b)
		}
	}
	var ledger, gateway, runs int64
	waitFor(t, "3 runs and 3 model calls in the ledger", func() (bool, string) {
		evs, err := s.app.store.UsageEvents(context.Background(), a.tenantID, time.Unix(0, 0), time.Now().Add(time.Hour), 100)
		if err != nil {
			return false, err.Error()
		}
		ledger, gateway, runs = 0, 0, 0
		var kinds []string
		for _, e := range evs {
			if e.UserID != a.userID {
				continue
			}
			kinds = append(kinds, e.Kind+"/"+e.Model)
			ledger += e.InputTokens + e.OutputTokens
			switch e.Kind {
			case "langflow_run":
				runs++
				if e.InputTokens+e.OutputTokens != 0 {
					return false, fmt.Sprintf("a langflow_run charged %d tokens: counted twice", e.InputTokens+e.OutputTokens)
				}
			default:
				if e.Model == "gpt-4o-mini" {
					gateway++
				}
			}
		}
		return runs == 3 && gateway == 3, fmt.Sprint(kinds)
	})
	if want := up.reportedTokens(); ledger != want || want != 3*(upPromptTokens+upCompletionTokens) {
		t.Errorf("alice's ledger holds %d tokens, the provider reported %d (want 3×%d)", ledger, want, upPromptTokens+upCompletionTokens)
	}
}
