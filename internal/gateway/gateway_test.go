package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/gateway"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// auth knows one key.
type auth struct{}

func (auth) Authenticate(_ context.Context, secret string) (tenancy.Principal, error) {
	switch secret {
	case "sk-sluice-alice":
		return tenancy.Principal{KeyID: "key_1", UserID: "usr_alice", TenantID: "ten_1", Role: tenancy.RoleMember}, nil
	case "sk-sluice-bob":
		return tenancy.Principal{KeyID: "key_2", UserID: "usr_bob", TenantID: "ten_2", Role: tenancy.RoleMember}, nil
	}
	return tenancy.Principal{}, errs.E(errs.Unauthorized, "invalid API key")
}

// meter records asks and settlements; deny refuses.
type meter struct {
	mu      sync.Mutex
	asks    []quota.Ask
	settles []settled
	deny    error
	settled chan struct{}
}

type settled struct {
	usage      quota.Usage
	model, dep string
}

func newMeter() *meter { return &meter{settled: make(chan struct{}, 100)} }

func (m *meter) Acquire(_ context.Context, _ metering.Who, _ string, ask quota.Ask, _ time.Duration) (*metering.Admission, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.asks = append(m.asks, ask)
	if m.deny != nil {
		return nil, m.deny
	}
	t := quota.Ticket{ID: fmt.Sprintf("tkt_%d", len(m.asks)), Tokens: ask.Tokens}
	t.Remaining[0] = quota.Remaining{Dimension: quota.DimRequests, Scope: "user/usr_alice", Limit: 60, Remaining: 59,
		Period: time.Minute, ResetAt: time.Now().Add(time.Second)}
	return &metering.Admission{Ticket: t}, nil
}

func (m *meter) SettleWith(_ context.Context, id string, u quota.Usage, model string, annotate func(*usage.Event)) (quota.Settlement, error) {
	ev := usage.Event{}
	if annotate != nil {
		annotate(&ev)
	}
	m.mu.Lock()
	m.settles = append(m.settles, settled{u, model, ev.Deployment})
	m.mu.Unlock()
	m.settled <- struct{}{}
	return quota.Settlement{TicketID: id, Usage: u}, nil
}

// waitSettle waits for the n-th settlement and returns it.
func (m *meter) waitSettle(t *testing.T, n int) settled {
	t.Helper()
	for {
		m.mu.Lock()
		if len(m.settles) >= n {
			s := m.settles[n-1]
			m.mu.Unlock()
			return s
		}
		m.mu.Unlock()
		select {
		case <-m.settled:
		case <-time.After(10 * time.Second):
			t.Fatalf("no settlement %d within 10s", n)
		}
	}
}

// world is a gateway in front of upstreams.
type world struct {
	url   string
	meter *meter
	gate  *gate.Gate
}

func newWorld(t *testing.T, models []llm.ModelConfig) *world {
	t.Helper()
	return newWorldWith(t, models, llm.RegistryOptions{}, gate.Retry{})
}

// newWorldWith builds the world with routing options and retries; waits
// between retries take no time.
func newWorldWith(t *testing.T, models []llm.ModelConfig, ro llm.RegistryOptions, retry gate.Retry) *world {
	t.Helper()
	reg, err := llm.NewRegistryWith(models, nil, ro)
	if err != nil {
		t.Fatal(err)
	}
	mt := newMeter()
	g := &gate.Gate{Meter: mt, Health: reg, Retry: retry, Sleep: func(context.Context, time.Duration) error { return nil }}
	h := &gateway.Handler{Auth: auth{}, Gate: g, Models: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &world{url: srv.URL, meter: mt, gate: g}
}

func openaiModel(name, url string) llm.ModelConfig {
	return llm.ModelConfig{Name: name, Provider: llm.ProviderOpenAI, BaseURL: url, APIKey: llm.NewSecret("sk-upstream"),
		InputPricePerMTok: 1, OutputPricePerMTok: 2, ContextWindow: 100_000}
}

func post(t *testing.T, url, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer sk-sluice-alice")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func chunkJSON(text string) string {
	b, _ := json.Marshal(map[string]any{"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
		"choices": []any{map[string]any{"index": 0, "delta": map[string]any{"content": text}, "finish_reason": nil}}})
	return string(b)
}

const usageChunk = `{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"up","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}`

// readEvents reads the data of every event of a stream.
func readEvents(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	return out
}

// TestStreamRelaysAndSettlesReportedUsage: chunks pass through in order,
// the provider is asked for its usage chunk, which the caller (who did
// not ask) does not get, and the settlement is what the provider reported.
func TestStreamRelaysAndSettlesReportedUsage(t *testing.T) {
	var asked map[string]any
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&asked)
		w.Header().Set("Content-Type", "text/event-stream")
		for _, s := range []string{chunkJSON("Hel"), chunkJSON("lo"), usageChunk, "[DONE]"} {
			fmt.Fprintf(w, "data: %s\n\n", s)
		}
	}))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	resp := post(t, w.url+"/v1/chat/completions", `{"model":"m","stream":true,"max_tokens":50,"seed":7,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp.Header.Get("x-ratelimit-remaining-requests") != "59" {
		t.Errorf("x-ratelimit-remaining-requests %q, want 59", resp.Header.Get("x-ratelimit-remaining-requests"))
	}
	events := readEvents(t, resp.Body)
	if len(events) != 3 || events[0] != chunkJSON("Hel") || events[1] != chunkJSON("lo") || events[2] != "[DONE]" {
		t.Fatalf("events %q, want the two chunks and [DONE], without the usage chunk", events)
	}
	so, _ := asked["stream_options"].(map[string]any)
	if so["include_usage"] != true || asked["seed"] != 7.0 || asked["max_tokens"] != 50.0 {
		t.Errorf("upstream asked %v, want include_usage, seed 7 and max_tokens 50 passed through", asked)
	}
	s := w.meter.waitSettle(t, 1)
	if s.usage.InputTokens != 11 || s.usage.OutputTokens != 7 || s.usage.CostMicros != 25 {
		t.Errorf("settled %+v, want the reported 11 in, 7 out at 25 µ$ (11·1 + 7·2)", s.usage)
	}
}

// TestStreamUsageChunkWhenAsked: a caller that asks include_usage gets it.
func TestStreamUsageChunkWhenAsked(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, s := range []string{chunkJSON("x"), usageChunk, "[DONE]"} {
			fmt.Fprintf(w, "data: %s\n\n", s)
		}
	}))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	resp := post(t, w.url+"/v1/chat/completions", `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	if events := readEvents(t, resp.Body); len(events) != 3 || events[1] != usageChunk {
		t.Fatalf("events %q, want the usage chunk relayed", events)
	}
}

// TestClientLeavesMidStream: the caller reads two chunks and hangs up;
// the provider's request is cancelled and the call is settled with the
// prompt and what was produced, not the reservation and not nothing.
func TestClientLeavesMidStream(t *testing.T) {
	upstreamDone := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, s := range []string{"one two three", " four five six"} {
			fmt.Fprintf(w, "data: %s\n\n", chunkJSON(s))
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done() // a slow model: waits until Sluice hangs up
		close(upstreamDone)
	}))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", w.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"max_tokens":500,"messages":[{"role":"user","content":"count for me"}]}`))
	req.Header.Set("Authorization", "Bearer sk-sluice-alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	got := 0
	for got < 2 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended after %d chunks: %v", got, err)
		}
		if strings.HasPrefix(line, "data: ") {
			got++
		}
	}
	cancel()
	resp.Body.Close()
	select {
	case <-upstreamDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the provider's request was not cancelled when the caller left")
	}
	s := w.meter.waitSettle(t, 1)
	if s.usage.InputTokens == 0 || s.usage.OutputTokens < 4 || s.usage.OutputTokens > 20 {
		t.Errorf("settled %+v, want the prompt and the ~6 tokens produced", s.usage)
	}
	if ask := w.meter.asks[0]; s.usage.InputTokens+s.usage.OutputTokens >= ask.Tokens {
		t.Errorf("settled %+v, no less than the reservation %d", s.usage, ask.Tokens)
	}
}

// TestUpstreamCutMidStream: the provider's connection breaks after a
// chunk: the caller gets the chunk and an error event, and the call is
// settled from what was produced.
func TestUpstreamCutMidStream(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: %s\n\n", chunkJSON("partial answer"))
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	resp := post(t, w.url+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	events := readEvents(t, resp.Body)
	if len(events) != 2 || events[0] != chunkJSON("partial answer") || !strings.Contains(events[1], `"error"`) {
		t.Fatalf("events %q, want the chunk then an error event", events)
	}
	s := w.meter.waitSettle(t, 1)
	if s.usage.OutputTokens == 0 || s.usage.InputTokens == 0 {
		t.Errorf("settled %+v, want the prompt and the partial answer", s.usage)
	}
}

// TestSlowStreamIsNotBuffered: each chunk reaches the caller before the
// provider sends the next.
func TestSlowStreamIsNotBuffered(t *testing.T) {
	next := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: %s\n\n", chunkJSON(fmt.Sprint(i)))
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	resp := post(t, w.url+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("chunk %d never arrived before the next was sent: %v", i, err)
			}
			if strings.HasPrefix(line, "data: ") {
				if !strings.Contains(line, fmt.Sprintf(`"content":"%d"`, i)) {
					t.Fatalf("got %q, want chunk %d", line, i)
				}
				break
			}
		}
		next <- struct{}{} // only now may the provider send the next one
	}
}

// TestDenialIsOpenAIShaped: a rate limit denial is a 429 with OpenAI's
// error body, Retry-After and x-ratelimit-* headers; a budget is
// insufficient_quota; a model not allowed is 403.
func TestDenialIsOpenAIShaped(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("a denied call reached the provider") }))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	cases := []struct {
		deny          *quota.Denial
		status        int
		typ, code     string
		header, value string
	}{
		{&quota.Denial{Code: quota.CodeRateLimited, Scope: "key/key_1", Dimension: quota.DimRequests, Limit: 2, Period: time.Minute, RetryAfter: 20 * time.Second},
			429, "requests", "rate_limit_exceeded", "x-ratelimit-remaining-requests", "0"},
		{&quota.Denial{Code: quota.CodeQuotaExceeded, Scope: "project/p", Dimension: quota.DimTokens, Window: quota.WindowDay, Limit: 1000, Used: 990, Requested: 100,
			ResetAt: time.Now().Add(time.Hour), RetryAfter: time.Hour}, 429, "insufficient_quota", "insufficient_quota", "x-ratelimit-remaining-tokens", "10"},
		{&quota.Denial{Code: quota.CodeModelNotAllowed, Scope: "key/key_1", Dimension: quota.DimModel, Model: "m"}, 403, "invalid_request_error", "model_not_allowed", "", ""},
	}
	for _, c := range cases {
		w.meter.deny = c.deny
		resp := post(t, w.url+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
		var body struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Code    *string `json:"code"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != c.status || body.Error.Type != c.typ || body.Error.Code == nil || *body.Error.Code != c.code || body.Error.Message == "" {
			t.Errorf("%s: %d %+v, want %d type %s code %s", c.deny.Code, resp.StatusCode, body.Error, c.status, c.typ, c.code)
		}
		if c.header != "" && resp.Header.Get(c.header) != c.value {
			t.Errorf("%s: %s = %q, want %q", c.deny.Code, c.header, resp.Header.Get(c.header), c.value)
		}
		if c.deny.RetryAfter > 0 && resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s: no Retry-After", c.deny.Code)
		}
	}
}

// TestBadRequestsNameTheParameter: OpenAI's 400 shape with param set.
func TestBadRequestsNameTheParameter(t *testing.T) {
	w := newWorld(t, nil)
	for body, param := range map[string]string{
		`{"messages":[{"role":"user","content":"hi"}]}`:                          "model",
		`{"model":"simulated","messages":[]}`:                                    "messages",
		`{"model":"simulated","n":0,"messages":[{"role":"user","content":"x"}]}`: "n",
		`{"model":"simulated","messages":[{"role":"robot","content":"x"}]}`:      "messages[0].role",
		`{"model":"simulated","messages":"hi"}`:                                  "messages",
	} {
		resp := post(t, w.url+"/v1/chat/completions", body)
		var b struct {
			Error struct {
				Param *string `json:"param"`
			} `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&b)
		resp.Body.Close()
		if resp.StatusCode != 400 || b.Error.Param == nil || *b.Error.Param != param {
			t.Errorf("%s: %d param %v, want 400 naming %s", body, resp.StatusCode, b.Error.Param, param)
		}
	}
	if len(w.meter.asks) != 0 {
		t.Errorf("bad requests were admitted: %v", w.meter.asks)
	}
	req, _ := http.NewRequest("GET", w.url+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer sk-wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("wrong key: %d, want 401", resp.StatusCode)
	}
}

// TestCompletionsPassThrough: the legacy completions API is passed
// through with its prompt counted, max_tokens clamped to the admission and
// the usage the provider reported settled; a streamed one relays "text"
// chunks and settles from them when the provider reports no usage.
func TestCompletionsPassThrough(t *testing.T) {
	var asked []map[string]any
	var mu sync.Mutex
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		asked = append(asked, body)
		mu.Unlock()
		if r.URL.Path != "/completions" {
			t.Errorf("path %s, want /completions", r.URL.Path)
		}
		if body["stream"] == true {
			w.Header().Set("Content-Type", "text/event-stream")
			for _, s := range []string{"once upon", " a time"} {
				fmt.Fprintf(w, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":%q,\"finish_reason\":null}]}\n\n", s)
			}
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" world","finish_reason":"length","logprobs":null}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	}))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	resp := post(t, w.url+"/v1/completions", `{"model":"m","prompt":"hello","max_tokens":7,"echo":true,"logprobs":2}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"text":" world"`) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if a := asked[0]; a["max_tokens"] != 7.0 || a["echo"] != true || a["logprobs"] != 2.0 || a["prompt"] != "hello" {
		t.Errorf("upstream asked %v, want prompt, max_tokens 7, echo and logprobs passed through", a)
	}
	if s := w.meter.waitSettle(t, 1); s.usage.InputTokens != 3 || s.usage.OutputTokens != 1 {
		t.Errorf("settled %+v, want the reported 3+1", s.usage)
	}
	reg, _ := llm.NewRegistry([]llm.ModelConfig{openaiModel("m", up.URL)}, nil)
	m, _ := reg.Lookup("m")
	hello, a, b2 := int64(m.CountText("hello")), int64(m.CountText("a")), int64(m.CountText("b"))
	if ask := w.meter.asks[0]; ask.Tokens != hello+7 || ask.Requests != 1 || !ask.Concurrency {
		t.Errorf("asked %+v, want the prompt (%d tokens) + 7, one request, a slot", ask, hello)
	}
	resp = post(t, w.url+"/v1/completions", `{"model":"m","prompt":["a","b"],"stream":true}`)
	events := readEvents(t, resp.Body)
	resp.Body.Close()
	if len(events) != 3 || !strings.Contains(events[1], `" a time"`) || events[2] != "[DONE]" {
		t.Fatalf("events %q", events)
	}
	if s := w.meter.waitSettle(t, 2); s.usage.OutputTokens != int64(m.CountText("once upon a time")) || s.usage.InputTokens != a+b2 {
		t.Errorf("settled %+v, want the %d prompt tokens and the answer counted", s.usage, a+b2)
	}
	// Two prompts: two answers reserved, each at the API's default of 16.
	if ask := w.meter.asks[1]; ask.Tokens != a+b2+2*16 {
		t.Errorf("asked %d tokens, want %d + 2×16", ask.Tokens, a+b2)
	}
}

// TestStreamWithoutDone: a compatible server that ends a complete stream
// without [DONE] is not reported as broken off.
func TestStreamWithoutDone(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: %s\n\n", chunkJSON("all of it"))
		fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\n")
	}))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	resp := post(t, w.url+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	events := readEvents(t, resp.Body)
	if len(events) != 3 || events[2] != "[DONE]" {
		t.Fatalf("events %q, want the two chunks and [DONE], no error", events)
	}
}

// TestSimulatedEmbeddings: the simulated model answers /v1/embeddings with
// its hashed bag-of-words vectors (texts sharing words are nearer than
// unrelated ones), in OpenAI's shape, with the prompt settled.
func TestSimulatedEmbeddings(t *testing.T) {
	w := newWorld(t, nil)
	resp := post(t, w.url+"/v1/embeddings", `{"model":"simulated","dimensions":64,"input":["the quota of a tenant","a tenant's quota","cats sleep in the sun"]}`)
	defer resp.Body.Close()
	var b struct {
		Object string `json:"object"`
		Data   []struct {
			Index     int       `json:"index"`
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil || resp.StatusCode != 200 {
		t.Fatalf("got %d, %v", resp.StatusCode, err)
	}
	if b.Object != "list" || len(b.Data) != 3 || len(b.Data[0].Embedding) != 64 || b.Usage.PromptTokens == 0 {
		t.Fatalf("got %+v, want 3 vectors of 64 and the prompt's tokens", b)
	}
	dot := func(x, y []float64) (d float64) {
		for i := range x {
			d += x[i] * y[i]
		}
		return d
	}
	if near, far := dot(b.Data[0].Embedding, b.Data[1].Embedding), dot(b.Data[0].Embedding, b.Data[2].Embedding); near <= far {
		t.Errorf("cosine of texts sharing words %.3f, of unrelated ones %.3f: want the first higher", near, far)
	}
	if s := w.meter.waitSettle(t, 1); s.usage.InputTokens != int64(b.Usage.PromptTokens) || s.usage.OutputTokens != 0 {
		t.Errorf("settled %+v, want the %d prompt tokens and no output", s.usage, b.Usage.PromptTokens)
	}
}

// TestSharedPartDenial: a refusal at a pool's shared part says whose
// shared part is used up and who can raise it, in OpenAI's shape.
func TestSharedPartDenial(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("a denied call reached the provider") }))
	defer up.Close()
	w := newWorld(t, []llm.ModelConfig{openaiModel("m", up.URL)})
	d := &quota.Denial{Code: quota.CodeQuotaExceeded, Scope: "department/dep_r", Dimension: quota.DimTokens, Window: quota.WindowDay,
		Limit: 600, Used: 600, Requested: 10, RetryAfter: time.Hour}
	w.meter.deny = &metering.SharedDenial{Denial: d, Pool: "department/dep_r", Label: "department research", Tenant: "acme"}
	resp := post(t, w.url+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	var body struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		} `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != 429 || body.Error.Type != "insufficient_quota" || resp.Header.Get("Retry-After") == "" ||
		!strings.HasPrefix(body.Error.Message, "The shared part of department research is used up") ||
		!strings.Contains(body.Error.Message, "ask an admin of acme to raise it") {
		t.Fatalf("got %d %+v (Retry-After %q), want 429 insufficient_quota naming the shared part and who raises it",
			resp.StatusCode, body.Error, resp.Header.Get("Retry-After"))
	}
}
