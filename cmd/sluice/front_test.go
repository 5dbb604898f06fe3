package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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

const lfRunAnswer = `{"session_id":"s1","outputs":[{"inputs":{"input_value":"hi"},"outputs":[{"results":{"message":{"id":"m1","text":"Hello!","sender":"Machine","sender_name":"AI","properties":{"source":{"id":"OpenAIModel-x","display_name":"OpenAI","source":"gpt-4o-mini"},"usage":{"input_tokens":30,"output_tokens":12,"total_tokens":42}}}},"messages":[{"id":"m1","message":"Hello!","properties":{"usage":{"input_tokens":30,"output_tokens":12,"total_tokens":42}}}],"timedelta":0.5,"duration":"0.5 seconds","component_display_name":"Chat Output","component_id":"ChatOutput-1"}]}]}`

func (lf *langflow) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body) // as LangFlow reads its JSON body (and then notices a caller gone)
	lf.mu.Lock()
	lf.keys = append(lf.keys, r.Header.Get("X-Api-Key"))
	lf.queries = append(lf.queries, r.URL.RawQuery)
	lf.paths = append(lf.paths, r.Method+" "+r.URL.Path)
	hold := lf.hold
	lf.mu.Unlock()
	if r.Header.Get("X-Api-Key") != "lf-upstream-key" {
		w.WriteHeader(403)
		io.WriteString(w, `{"detail":"An API key must be passed as query or header"}`)
		return
	}
	switch {
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
	lf.mu.Lock()
	lf.hold = make(chan struct{})
	lf.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	resp := lfPost(t, ctx, s.url+"/api/v1/run/f1?stream=true", a.key, `{"input_value":"hi"}`)
	first, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.Contains(first, `"add_message"`) {
		t.Fatalf("first event %q (%v), want add_message before LangFlow finished", first, err)
	}
	second := lfPost(t, context.Background(), s.url+"/api/v1/run/f1", a.key, `{"input_value":"again"}`)
	var body map[string]any
	_ = json.NewDecoder(second.Body).Decode(&body)
	second.Body.Close()
	if second.StatusCode != 429 || body["detail"] == nil || body["error"] == nil {
		t.Errorf("second run while one is in flight: %d %v, want 429 with detail and error", second.StatusCode, body)
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
	defer func() {
		if t.Failed() {
			t.Log(s.logs.String())
		}
	}()
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
