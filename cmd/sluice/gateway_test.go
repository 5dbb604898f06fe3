package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/usage"
)

// End-to-end tests of the OpenAI-compatible gateway: the official openai-go
// client, with only its base URL and key changed, against a whole Sluice
// app, whose models point at an httptest upstream speaking OpenAI's wire
// format (JSON with usage, SSE chunks with the usage chunk, errors with
// their headers).

const (
	gwAdmin = "operator-chosen-admin-key-0123456789abcdef"
	// upstreamKey is the provider key in Sluice's model table: the upstream
	// must get it, the caller must never see it.
	upstreamKey = "sk-upstream-secret"
	// What the upstream reports for every chat completion (per choice for
	// the completion), streamed answer and embeddings call.
	upPromptTokens     = 21
	upCompletionTokens = 9
	upStreamTokens     = 3 // one per content chunk of streamText
	upEmbeddingTokens  = 7
)

// streamText is what the upstream streams, in three chunks.
var streamText = []string{"Hello", " from", " upstream"}

// upCall is one request the upstream received.
type upCall struct {
	Path string
	Auth string
	Body map[string]json.RawMessage
}

func (c upCall) has(field string) bool {
	v, ok := c.Body[field]
	return ok && string(v) != "null"
}

func (c upCall) int(field string) int {
	var n int
	_ = json.Unmarshal(c.Body[field], &n)
	return n
}

func (c upCall) str(field string) string {
	var s string
	_ = json.Unmarshal(c.Body[field], &s)
	return s
}

func (c upCall) stream() bool {
	var b bool
	_ = json.Unmarshal(c.Body["stream"], &b)
	return b
}

func (c upCall) includeUsage() bool {
	var o struct {
		IncludeUsage bool `json:"include_usage"`
	}
	_ = json.Unmarshal(c.Body["stream_options"], &o)
	return o.IncludeUsage
}

// upstream is a stand-in for OpenAI: it records what it receives and
// answers as OpenAI does, or as the test's answer function says.
type upstream struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []upCall
	// reported is the tokens the upstream reported in usage (answers and
	// usage chunks it sent).
	reported int64
	answer   func(w http.ResponseWriter, r *http.Request, c upCall)
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	c := upCall{Path: r.URL.Path, Auth: r.Header.Get("Authorization")}
	b, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(b, &c.Body)
	u.mu.Lock()
	u.got = append(u.got, c)
	answer := u.answer
	u.mu.Unlock()
	if answer == nil {
		answer = u.openAI
	}
	answer(w, r, c)
}

// setAnswer replaces how the upstream answers (nil: as OpenAI does).
func (u *upstream) setAnswer(f func(w http.ResponseWriter, r *http.Request, c upCall)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.answer = f
}

func (u *upstream) calls() []upCall {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upCall(nil), u.got...)
}

func (u *upstream) last(t *testing.T) upCall {
	t.Helper()
	got := u.calls()
	if len(got) == 0 {
		t.Fatal("the upstream received no request")
	}
	return got[len(got)-1]
}

func (u *upstream) report(tokens int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reported += int64(tokens)
}

func (u *upstream) reportedTokens() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.reported
}

// model is a row of Sluice's model table served by this upstream.
func (u *upstream) model(name string) llm.ModelConfig {
	return llm.ModelConfig{Name: name, Provider: llm.ProviderOpenAI, BaseURL: u.srv.URL + "/v1", APIKey: llm.NewSecret(upstreamKey)}
}

// openAI answers as OpenAI does: a chat completion (with tool calls when
// tools were given), a stream of chunks, embeddings, or a 404.
func (u *upstream) openAI(w http.ResponseWriter, r *http.Request, c upCall) {
	switch {
	case c.Path == "/v1/chat/completions" && c.stream():
		u.chatStream(w, c)
	case c.Path == "/v1/chat/completions":
		u.chat(w, c)
	case c.Path == "/v1/embeddings":
		u.embeddings(w, c)
	default:
		openAIError(w, http.StatusNotFound, "Invalid URL (POST "+c.Path+")", "invalid_request_error", "", "")
	}
}

func upHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("x-request-id", "req_upstream123")
	h.Set("openai-processing-ms", "42")
	h.Set("openai-organization", "org-upstream")
	// The provider's own limits for Sluice's key: not the caller's business.
	h.Set("x-ratelimit-limit-requests", "10000")
	h.Set("x-ratelimit-remaining-requests", "9999")
	h.Set("x-ratelimit-reset-requests", "6ms")
	h.Set("x-ratelimit-limit-tokens", "30000000")
	h.Set("x-ratelimit-remaining-tokens", "29999970")
	h.Set("x-ratelimit-reset-tokens", "0s")
}

func (u *upstream) chat(w http.ResponseWriter, c upCall) {
	n := max(c.int("n"), 1)
	choices := make([]map[string]any, 0, n)
	for i := range n {
		msg := map[string]any{"role": "assistant", "content": "Hello from upstream", "refusal": nil, "annotations": []any{}}
		finish := "stop"
		if c.has("tools") {
			msg["content"] = nil
			msg["tool_calls"] = []map[string]any{{"id": fmt.Sprintf("call_%d", i), "type": "function",
				"function": map[string]any{"name": "get_weather", "arguments": `{"location":"Paris"}`}}}
			finish = "tool_calls"
		}
		choices = append(choices, map[string]any{"index": i, "message": msg, "logprobs": nil, "finish_reason": finish})
	}
	out := upCompletionTokens * n
	upHeaders(w)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"id": "chatcmpl-upstream1", "object": "chat.completion", "created": 1767225600, "model": c.str("model") + "-2024-07-18",
		"choices": choices,
		"usage": map[string]any{"prompt_tokens": upPromptTokens, "completion_tokens": out, "total_tokens": upPromptTokens + out,
			"prompt_tokens_details":     map[string]int{"cached_tokens": 0, "audio_tokens": 0},
			"completion_tokens_details": map[string]int{"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
		"service_tier": "default", "system_fingerprint": "fp_upstream",
	})
	u.report(upPromptTokens + out)
}

// sse writes OpenAI's server-sent events.
type sse struct {
	w     http.ResponseWriter
	model string
	usage bool // include_usage: every chunk carries "usage":null
}

func newSSE(w http.ResponseWriter, c upCall) *sse {
	upHeaders(w)
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, model: c.str("model") + "-2024-07-18", usage: c.includeUsage()}
}

func (s *sse) chunk(choices []map[string]any, u any) {
	ch := map[string]any{"id": "chatcmpl-upstream2", "object": "chat.completion.chunk", "created": 1767225600, "model": s.model,
		"service_tier": "default", "system_fingerprint": "fp_upstream", "choices": choices}
	if s.usage {
		ch["usage"] = u
	}
	b, _ := json.Marshal(ch)
	fmt.Fprintf(s.w, "data: %s\n\n", b)
	s.w.(http.Flusher).Flush()
}

func (s *sse) delta(delta map[string]any, finish any) {
	s.chunk([]map[string]any{{"index": 0, "delta": delta, "logprobs": nil, "finish_reason": finish}}, nil)
}

func (s *sse) done() {
	fmt.Fprint(s.w, "data: [DONE]\n\n")
	s.w.(http.Flusher).Flush()
}

func (u *upstream) chatStream(w http.ResponseWriter, c upCall) {
	s := newSSE(w, c)
	if c.has("tools") {
		s.delta(map[string]any{"role": "assistant", "content": nil, "refusal": nil, "tool_calls": []map[string]any{{"index": 0, "id": "call_0",
			"type": "function", "function": map[string]any{"name": "get_weather", "arguments": ""}}}}, nil)
		for _, part := range []string{`{"location"`, `:"Paris"}`} {
			s.delta(map[string]any{"tool_calls": []map[string]any{{"index": 0, "function": map[string]any{"arguments": part}}}}, nil)
		}
		s.delta(map[string]any{}, "tool_calls")
	} else {
		s.delta(map[string]any{"role": "assistant", "content": "", "refusal": nil}, nil)
		for _, part := range streamText {
			s.delta(map[string]any{"content": part}, nil)
		}
		s.delta(map[string]any{}, "stop")
	}
	if s.usage {
		s.chunk([]map[string]any{}, map[string]int{"prompt_tokens": upPromptTokens, "completion_tokens": upStreamTokens,
			"total_tokens": upPromptTokens + upStreamTokens})
		u.report(upPromptTokens + upStreamTokens)
	}
	s.done()
}

func (u *upstream) embeddings(w http.ResponseWriter, c upCall) {
	var emb any = []float64{0.0023064255, -0.009327292, 0.015797347, -0.0077780345}
	if c.str("encoding_format") == "base64" {
		emb = "AAAAAAAAgD8AAAAAAAAAAA==" // [0, 1, 0, 0] as little-endian float32s
	}
	upHeaders(w)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"object": "list", "data": []any{map[string]any{"object": "embedding", "index": 0, "embedding": emb}},
		"model": c.str("model"), "usage": map[string]int{"prompt_tokens": upEmbeddingTokens, "total_tokens": upEmbeddingTokens},
	})
	u.report(upEmbeddingTokens)
}

// openAIError answers as OpenAI does when it refuses.
func openAIError(w http.ResponseWriter, status int, msg, typ, param, code string) {
	body := map[string]any{"message": msg, "type": typ, "param": nil, "code": nil}
	if param != "" {
		body["param"] = param
	}
	if code != "" {
		body["code"] = code
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": body})
}

// gwApp is a Sluice app with alice's openai-go client.
type gwApp struct {
	s      *started
	alice  alice
	client openai.Client
}

// startGateway starts Sluice with models served by up, applies policy and
// gives alice an openai-go client whose base URL and key are Sluice's.
func startGateway(t *testing.T, up *upstream, policy string, models ...string) *gwApp {
	t.Helper()
	cfg := testConfig(t)
	cfg.AdminKey = gwAdmin
	// The gate tries a deployment once more after a retryable failure
	// (the default, stated here because the tests count attempts).
	cfg.Routing.Retries = 1
	cfg.Routing.Backoff = config.Duration(10 * time.Millisecond)
	for _, m := range models {
		cfg.Models = append(cfg.Models, up.model(m))
	}
	s := start(t, cfg)
	a := applyPolicy(t, s.url, gwAdmin, policy)
	client := openai.NewClient(option.WithBaseURL(s.url+"/v1/"), option.WithAPIKey(a.key), option.WithMaxRetries(0))
	return &gwApp{s: s, alice: a, client: client}
}

func chatParams(model string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    shared.ChatModel(model),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("You are terse."), openai.UserMessage("Say hello.")},
	}
}

// apiError is err as openai-go's API error, or fails the test.
func apiError(t *testing.T, err error) *openai.Error {
	t.Helper()
	var ae *openai.Error
	if !errors.As(err, &ae) {
		t.Fatalf("got error %v (%T), want an *openai.Error", err, err)
	}
	return ae
}

// errorBody is the raw body of an API error answer.
func errorBody(t *testing.T, ae *openai.Error) string {
	t.Helper()
	b, err := io.ReadAll(ae.Response.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tokensDay is the scope's tokens/day meter as /api/v1/usage shows it to
// alice: used, and the limit (-1 when it has none).
func (g *gwApp) tokensDay(t *testing.T, scope string) (used, limit int64) {
	t.Helper()
	code, u := call(t, "GET", g.s.url+"/api/v1/usage", g.alice.key, "")
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/usage: got %d %v, want 200", code, u)
	}
	scopes, _ := u["scopes"].([]any)
	for _, s := range scopes {
		sm, _ := s.(map[string]any)
		if sm["scope"] != scope {
			continue
		}
		dims, _ := sm["dimensions"].([]any)
		for _, d := range dims {
			dm, _ := d.(map[string]any)
			if dm["dimension"] == "tokens" && dm["window"] == "day" {
				used, _ := dm["used"].(float64)
				limit := -1.0
				if l, ok := dm["limit"].(float64); ok {
					limit = l
				}
				return int64(used), int64(limit)
			}
		}
		return 0, -1 // no use and no limit: not shown
	}
	t.Fatalf("no scope %s in alice's usage %v", scope, u)
	return 0, 0
}

// events is alice's usage ledger: her usage events, once written out.
func (g *gwApp) events(t *testing.T) []usage.Event {
	t.Helper()
	ctx := context.Background()
	if err := g.s.app.recorder.Flush(ctx); err != nil {
		t.Fatalf("flush usage events: %v", err)
	}
	all, err := g.s.app.store.UsageEvents(ctx, g.alice.tenantID, time.Unix(0, 0), time.Now().Add(time.Hour), 10_000)
	if err != nil {
		t.Fatal(err)
	}
	var out []usage.Event
	for _, e := range all {
		if e.UserID == g.alice.userID {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls cond until it holds or 10 s pass; cond says what it
// saw last, for the failure.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s; last saw %s", what, saw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settled waits until alice's ledger holds n events and her tokens/day
// meter equals their tokens, and returns them.
func (g *gwApp) settled(t *testing.T, n int) []usage.Event {
	t.Helper()
	var evs []usage.Event
	waitFor(t, fmt.Sprintf("%d usage events for alice, her meter equal to the ledger", n), func() (bool, string) {
		evs = g.events(t)
		var sum int64
		for _, e := range evs {
			sum += e.Tokens()
		}
		used, _ := g.tokensDay(t, "user/"+g.alice.userID)
		return len(evs) == n && used == sum, fmt.Sprintf("%d events with %d tokens, meter %d", len(evs), sum, used)
	})
	return evs
}

// sameJSON reports whether a and b are the same JSON value.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

const alicePolicy = `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {requests: 60/min, tokens: 100000/day}}
`

// TestGatewayChat: a plain chat completion through Sluice answers with the
// upstream's text and usage; the upstream gets Sluice's provider key and
// never alice's; alice never sees the provider key; the answer carries
// OpenAI's rate limit headers with alice's limits, not the provider's.
func TestGatewayChat(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, alicePolicy, "gpt-4o-mini")

	var httpResp *http.Response
	resp, err := g.client.Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini"), option.WithResponseInto(&httpResp))
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	if got := resp.Choices[0].Message.Content; got != "Hello from upstream" {
		t.Errorf("answer: got %q, want %q", got, "Hello from upstream")
	}
	if resp.Usage.PromptTokens != upPromptTokens || resp.Usage.CompletionTokens != upCompletionTokens {
		t.Errorf("usage: got %d+%d, want %d+%d", resp.Usage.PromptTokens, resp.Usage.CompletionTokens, upPromptTokens, upCompletionTokens)
	}

	c := up.last(t)
	if c.Auth != "Bearer "+upstreamKey {
		t.Errorf("upstream Authorization: got %q, want the provider key", c.Auth)
	}
	if strings.Contains(c.Auth, g.alice.key) {
		t.Errorf("alice's Sluice key reached the upstream: %q", c.Auth)
	}
	if got := c.str("model"); got != "gpt-4o-mini" {
		t.Errorf("upstream model: got %q, want gpt-4o-mini", got)
	}

	var seen strings.Builder
	for k, vs := range httpResp.Header {
		seen.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
	}
	seen.WriteString(resp.RawJSON())
	if strings.Contains(seen.String(), upstreamKey) || strings.Contains(seen.String(), "upstream-secret") {
		t.Errorf("the provider key reached alice:\n%s", seen.String())
	}

	h := httpResp.Header
	for name, want := range map[string]string{"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
		"x-ratelimit-limit-tokens": "100000"} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
	}
	if rem, err := strconv.Atoi(h.Get("x-ratelimit-remaining-tokens")); err != nil || rem <= 0 || rem >= 100000 {
		t.Errorf("x-ratelimit-remaining-tokens: got %q, want the budget less this call's reservation", h.Get("x-ratelimit-remaining-tokens"))
	}
	for _, name := range []string{"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"} {
		if d, err := time.ParseDuration(h.Get(name)); err != nil || d <= 0 {
			t.Errorf("%s: got %q, want a positive duration in OpenAI's format", name, h.Get(name))
		}
	}
}

// TestGatewayPassthrough: what Sluice does not govern reaches the upstream
// as the client wrote it (tools, tool_choice, response_format, n, seed,
// stop, temperature, messages); the model's tool calls come back as tool
// calls; max_tokens is forwarded as set when the budget allows it.
func TestGatewayPassthrough(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, alicePolicy, "gpt-4o-mini")

	p := chatParams("gpt-4o-mini")
	p.Tools = []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
		Name:        "get_weather",
		Description: openai.String("The weather at a place"),
		Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"location": map[string]any{"type": "string"}},
			"required": []string{"location"}, "additionalProperties": false},
		Strict: openai.Bool(true),
	})}
	p.ToolChoice = openai.ToolChoiceOptionFunctionToolChoice(openai.ChatCompletionNamedToolChoiceFunctionParam{Name: "get_weather"})
	p.ResponseFormat = openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
		JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "weather", Strict: openai.Bool(true),
			Schema: map[string]any{"type": "object", "properties": map[string]any{"celsius": map[string]any{"type": "number"}},
				"required": []string{"celsius"}, "additionalProperties": false}},
	}}
	p.N = openai.Int(2)
	p.Seed = openai.Int(42)
	p.Stop = openai.ChatCompletionNewParamsStopUnion{OfStringArray: []string{"\n\n", "END"}}
	p.Temperature = openai.Float(0.2)
	p.MaxTokens = openai.Int(300)

	resp, err := g.client.Chat.Completions.New(context.Background(), p)
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	if len(resp.Choices) != 2 {
		t.Fatalf("choices: got %d, want 2", len(resp.Choices))
	}
	for i, ch := range resp.Choices {
		if len(ch.Message.ToolCalls) != 1 {
			t.Fatalf("choice %d: got %d tool calls, want 1", i, len(ch.Message.ToolCalls))
		}
		tc := ch.Message.ToolCalls[0]
		if tc.Type != "function" || tc.Function.Name != "get_weather" || tc.Function.Arguments != `{"location":"Paris"}` {
			t.Errorf("choice %d tool call: got %s %s(%s), want function get_weather({\"location\":\"Paris\"})", i, tc.Type, tc.Function.Name, tc.Function.Arguments)
		}
		if ch.FinishReason != "tool_calls" {
			t.Errorf("choice %d finish_reason: got %q, want tool_calls", i, ch.FinishReason)
		}
	}

	sent, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]json.RawMessage
	if err := json.Unmarshal(sent, &want); err != nil {
		t.Fatal(err)
	}
	c := up.last(t)
	for _, field := range []string{"messages", "tools", "tool_choice", "response_format", "n", "seed", "stop", "temperature", "max_tokens"} {
		if _, ok := want[field]; !ok {
			t.Fatalf("the client did not send %s: %s", field, sent)
		}
		if !c.has(field) || !sameJSON(t, c.Body[field], want[field]) {
			t.Errorf("upstream %s: got %s, want %s as the client sent it", field, c.Body[field], want[field])
		}
	}
	if c.has("max_completion_tokens") {
		t.Errorf("upstream got max_completion_tokens %s besides the client's max_tokens", c.Body["max_completion_tokens"])
	}
}

// TestGatewayMaxTokensClamp: a max_tokens larger than the budget allows
// is lowered to what remains, in the field the client used.
func TestGatewayMaxTokensClamp(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 1000/day}}
`, "gpt-4o-mini")

	for _, field := range []string{"max_tokens", "max_completion_tokens"} {
		t.Run(field, func(t *testing.T) {
			p := chatParams("gpt-4o-mini")
			if field == "max_tokens" {
				p.MaxTokens = openai.Int(5000)
			} else {
				p.MaxCompletionTokens = openai.Int(5000)
			}
			if _, err := g.client.Chat.Completions.New(context.Background(), p); err != nil {
				t.Fatalf("chat: %v", err)
			}
			c := up.last(t)
			if got := c.int(field); got <= 0 || got >= 1000 {
				t.Errorf("upstream %s: got %s, want it clamped below the 1000-token budget", field, c.Body[field])
			}
			other := map[string]string{"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}[field]
			if c.has(other) {
				t.Errorf("upstream got %s %s besides the client's %s", other, c.Body[other], field)
			}
		})
	}
}

// TestGatewayStream: a streamed chat completion arrives chunk by chunk;
// Sluice asks the upstream for the usage chunk whatever the client asked,
// and hands it on only to a client that asked for it.
func TestGatewayStream(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, alicePolicy, "gpt-4o-mini")

	stream := func(t *testing.T, p openai.ChatCompletionNewParams) (openai.ChatCompletionAccumulator, []openai.ChatCompletionChunk) {
		t.Helper()
		s := g.client.Chat.Completions.NewStreaming(context.Background(), p)
		defer s.Close()
		var acc openai.ChatCompletionAccumulator
		var chunks []openai.ChatCompletionChunk
		for s.Next() {
			ch := s.Current()
			chunks = append(chunks, ch)
			if !acc.AddChunk(ch) {
				t.Fatalf("the accumulator refused chunk %s", ch.RawJSON())
			}
		}
		if err := s.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		return acc, chunks
	}
	usageChunks := func(chunks []openai.ChatCompletionChunk) (n int, last openai.CompletionUsage) {
		for _, ch := range chunks {
			if len(ch.Choices) == 0 || ch.Usage.TotalTokens > 0 {
				n++
				last = ch.Usage
			}
		}
		return n, last
	}

	t.Run("without usage", func(t *testing.T) {
		acc, chunks := stream(t, chatParams("gpt-4o-mini"))
		want := strings.Join(streamText, "")
		if len(acc.Choices) != 1 || acc.Choices[0].Message.Content != want {
			t.Fatalf("accumulated answer: got %+v, want %q", acc.Choices, want)
		}
		if want := len(streamText) + 2; len(chunks) != want { // role, content, finish
			t.Errorf("chunks: got %d, want the upstream's %d", len(chunks), want)
		}
		if !up.last(t).includeUsage() {
			t.Errorf("upstream stream_options: got %s, want include_usage true", up.last(t).Body["stream_options"])
		}
		if n, _ := usageChunks(chunks); n != 0 {
			t.Errorf("the client got %d usage chunks it did not ask for", n)
		}
	})

	t.Run("with usage", func(t *testing.T) {
		p := chatParams("gpt-4o-mini")
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		acc, chunks := stream(t, p)
		n, u := usageChunks(chunks)
		if n != 1 || u.PromptTokens != upPromptTokens || u.CompletionTokens != upStreamTokens {
			t.Errorf("usage chunks: got %d, last %d+%d; want 1 with %d+%d", n, u.PromptTokens, u.CompletionTokens, upPromptTokens, upStreamTokens)
		}
		if acc.Usage.TotalTokens != upPromptTokens+upStreamTokens {
			t.Errorf("accumulated usage: got %d tokens, want %d", acc.Usage.TotalTokens, upPromptTokens+upStreamTokens)
		}
	})

	t.Run("tool call", func(t *testing.T) {
		p := chatParams("gpt-4o-mini")
		p.Tools = []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name: "get_weather", Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"location": map[string]any{"type": "string"}}},
		})}
		acc, _ := stream(t, p)
		if len(acc.Choices) != 1 || len(acc.Choices[0].Message.ToolCalls) != 1 {
			t.Fatalf("accumulated answer: got %+v, want one tool call", acc.Choices)
		}
		tc := acc.Choices[0].Message.ToolCalls[0]
		if tc.Function.Name != "get_weather" || tc.Function.Arguments != `{"location":"Paris"}` {
			t.Errorf("tool call: got %s(%s), want get_weather({\"location\":\"Paris\"})", tc.Function.Name, tc.Function.Arguments)
		}
	})
}

// TestGatewayEmbeddingsAndModels: embeddings go through the upstream and
// settle its usage; the models list shows only the models alice's chain
// allows, and a chat with another model is refused with 403 before it
// reaches the upstream.
func TestGatewayEmbeddingsAndModels(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, `
tenants:
  - name: acme
    projects: [{name: web, limits: {models: [gpt-4o-mini, text-embedding-3-small]}}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 100000/day}}
`, "gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
	ctx := context.Background()

	emb, err := g.client.Embeddings.New(ctx, openai.EmbeddingNewParams{
		Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"The food was delicious."}},
	})
	if err != nil {
		t.Fatalf("embeddings: %v", err)
	}
	if len(emb.Data) != 1 || len(emb.Data[0].Embedding) != 4 {
		t.Errorf("embeddings: got %+v, want one vector of 4", emb.Data)
	}
	if emb.Usage.PromptTokens != upEmbeddingTokens {
		t.Errorf("embeddings usage: got %d, want %d", emb.Usage.PromptTokens, upEmbeddingTokens)
	}
	c := up.last(t)
	if c.Path != "/v1/embeddings" || c.Auth != "Bearer "+upstreamKey || !sameJSON(t, c.Body["input"], []byte(`["The food was delicious."]`)) {
		t.Errorf("upstream got %s with %q and input %s, want the client's input with the provider key", c.Path, c.Auth, c.Body["input"])
	}
	evs := g.settled(t, 1)
	if e := evs[0]; e.InputTokens != upEmbeddingTokens || e.OutputTokens != 0 || e.Model != "text-embedding-3-small" {
		t.Errorf("usage event: got %d+%d tokens on %q, want %d+0 on text-embedding-3-small", e.InputTokens, e.OutputTokens, e.Model, upEmbeddingTokens)
	}

	page, err := g.client.Models.List(ctx)
	if err != nil {
		t.Fatalf("models: %v", err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
	}
	if want := []string{"gpt-4o-mini", "text-embedding-3-small"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("models: got %v, want %v", ids, want)
	}

	before := len(up.calls())
	_, err = g.client.Chat.Completions.New(ctx, chatParams("gpt-4o"))
	ae := apiError(t, err)
	if ae.StatusCode != http.StatusForbidden {
		t.Errorf("chat with gpt-4o: got %d, want 403", ae.StatusCode)
	}
	if ae.Message == "" || ae.Type == "" {
		t.Errorf("403 body: got %q, want OpenAI's error shape", errorBody(t, ae))
	}
	if n := len(up.calls()); n != before {
		t.Errorf("the upstream got %d requests for a model alice may not use", n-before)
	}
}

// TestGatewayRateLimited: past alice's request rate, the client gets a 429
// rate_limit_exceeded with Retry-After and OpenAI's rate limit headers,
// and the upstream is not called.
func TestGatewayRateLimited(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {requests: 2/min, tokens: 100000/day}}
`, "gpt-4o-mini")
	ctx := context.Background()
	for i := range 2 {
		if _, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini")); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	_, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini"))
	ae := apiError(t, err)
	if ae.StatusCode != http.StatusTooManyRequests || ae.Code != "rate_limit_exceeded" {
		t.Fatalf("third call: got %d %q, want 429 rate_limit_exceeded (%s)", ae.StatusCode, ae.Code, errorBody(t, ae))
	}
	h := ae.Response.Header
	if s, err := strconv.Atoi(h.Get("Retry-After")); err != nil || s <= 0 || s > 60 {
		t.Errorf("Retry-After: got %q, want seconds until the rate admits one more", h.Get("Retry-After"))
	}
	if got := h.Get("x-ratelimit-remaining-requests"); got != "0" {
		t.Errorf("x-ratelimit-remaining-requests: got %q, want 0", got)
	}
	if got := h.Get("x-ratelimit-limit-requests"); got != "2" {
		t.Errorf("x-ratelimit-limit-requests: got %q, want 2", got)
	}
	if n := len(up.calls()); n != 2 {
		t.Errorf("upstream requests: got %d, want 2", n)
	}
}

// TestGatewayQuotaExhausted: once alice's token budget is spent, the
// client gets a 429 insufficient_quota.
func TestGatewayQuotaExhausted(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 40/day}}
`, "gpt-4o-mini")
	ctx := context.Background()
	if _, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini")); err != nil {
		t.Fatalf("first call: %v", err)
	}
	g.settled(t, 1) // 30 of 40 used: the next cannot reserve a prompt and 16 tokens of answer
	_, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini"))
	ae := apiError(t, err)
	if ae.StatusCode != http.StatusTooManyRequests || ae.Code != "insufficient_quota" {
		t.Fatalf("second call: got %d %q, want 429 insufficient_quota (%s)", ae.StatusCode, ae.Code, errorBody(t, ae))
	}
	if s, err := strconv.Atoi(ae.Response.Header.Get("Retry-After")); err != nil || s <= 0 {
		t.Errorf("Retry-After: got %q, want the seconds until the day's budget is whole again", ae.Response.Header.Get("Retry-After"))
	}
	if got := ae.Response.Header.Get("x-ratelimit-remaining-tokens"); got != "10" {
		t.Errorf("x-ratelimit-remaining-tokens: got %q, want 10", got)
	}
	if n := len(up.calls()); n != 1 {
		t.Errorf("upstream requests: got %d, want 1", n)
	}
}

// TestGatewayDenialCarriesRateHeaders: a denial carries OpenAI's rate
// limit headers of the limit that denied it, and Retry-After
// (docs/gateway.md, "Errors and headers").
func TestGatewayDenialCarriesRateHeaders(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {requests: 1/min, tokens: 100000/day}}
`, "gpt-4o-mini")
	ctx := context.Background()
	if _, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini")); err != nil {
		t.Fatalf("first call: %v", err)
	}
	_, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini"))
	ae := apiError(t, err)
	if ae.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second call: got %d, want 429", ae.StatusCode)
	}
	h := ae.Response.Header
	if h.Get("x-ratelimit-limit-requests") != "1" || h.Get("x-ratelimit-remaining-requests") != "0" {
		t.Errorf("request headers: got limit %q remaining %q, want 1 and 0", h.Get("x-ratelimit-limit-requests"), h.Get("x-ratelimit-remaining-requests"))
	}
	// A denial reports the limit that denied it (docs/gateway.md): the
	// token limits were not consulted, so they are not reported.
	if got := h.Get("x-ratelimit-limit-tokens"); got != "" {
		t.Errorf("x-ratelimit-limit-tokens on a request-rate denial: got %q, want none (not consulted)", got)
	}
}

// TestGatewayLedgerEqualsUsage: after plain, streamed and embeddings
// calls, alice's usage events and her meters hold exactly the tokens the
// upstream reported.
func TestGatewayLedgerEqualsUsage(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, alicePolicy, "gpt-4o-mini", "text-embedding-3-small")
	ctx := context.Background()

	if _, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini")); err != nil {
		t.Fatalf("chat: %v", err)
	}
	p := chatParams("gpt-4o-mini")
	p.N = openai.Int(3)
	if _, err := g.client.Chat.Completions.New(ctx, p); err != nil {
		t.Fatalf("chat n=3: %v", err)
	}
	s := g.client.Chat.Completions.NewStreaming(ctx, chatParams("gpt-4o-mini"))
	for s.Next() {
	}
	if err := s.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	s.Close()
	if _, err := g.client.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hello")}}); err != nil {
		t.Fatalf("embeddings: %v", err)
	}

	evs := g.settled(t, 4)
	var sum int64
	kinds := map[string]int{}
	for _, e := range evs {
		sum += e.Tokens()
		kinds[e.Kind]++
		if e.Requests != 1 {
			t.Errorf("event %s (%s): got %d requests, want 1", e.ID, e.Kind, e.Requests)
		}
		if e.Deployment == "" || e.Deployment != e.Model {
			t.Errorf("event %s (%s): deployment %q, want the serving deployment (%q: a model without deployments is its own)", e.ID, e.Kind, e.Deployment, e.Model)
		}
	}
	want := int64(upPromptTokens + upCompletionTokens + upPromptTokens + 3*upCompletionTokens + upPromptTokens + upStreamTokens + upEmbeddingTokens)
	if rep := up.reportedTokens(); rep != want {
		t.Fatalf("the upstream reported %d tokens, the test expected %d", rep, want)
	}
	if sum != want {
		t.Errorf("ledger: got %d tokens, want the %d the upstream reported (%+v)", sum, want, evs)
	}
	if used, _ := g.tokensDay(t, "user/"+g.alice.userID); used != want {
		t.Errorf("alice's tokens/day meter: got %d, want %d", used, want)
	}
	if kinds["chat_completion"] != 3 || kinds["embedding"] != 1 {
		t.Errorf("event kinds: got %v, want 3 chat_completion and 1 embedding", kinds)
	}
}

// TestGatewayClientDisconnectsMidStream: a client that leaves mid-stream
// stops the upstream; the call is settled from what was produced (the
// prompt and the chunks sent) and its reservation released.
func TestGatewayClientDisconnectsMidStream(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, alicePolicy, "gpt-4o-mini")
	upGone := make(chan struct{})
	up.setAnswer(func(w http.ResponseWriter, r *http.Request, c upCall) {
		s := newSSE(w, c)
		s.delta(map[string]any{"role": "assistant", "content": "", "refusal": nil}, nil)
		for _, part := range streamText {
			s.delta(map[string]any{"content": part}, nil)
		}
		<-r.Context().Done() // a slow model: nothing more until Sluice hangs up
		close(upGone)
	})

	ctx, cancel := context.WithCancel(context.Background())
	s := g.client.Chat.Completions.NewStreaming(ctx, chatParams("gpt-4o-mini"))
	for i := range 2 {
		if !s.Next() {
			t.Fatalf("chunk %d: %v", i+1, s.Err())
		}
	}
	cancel()
	s.Close()

	select {
	case <-upGone:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was not cancelled within 10s of the client leaving")
	}
	evs := g.settled(t, 1)
	e := evs[0]
	if e.InputTokens <= 0 || e.OutputTokens <= 0 {
		t.Errorf("usage event of the cut stream: got %d+%d tokens, want the prompt and the chunks produced", e.InputTokens, e.OutputTokens)
	}
	if used, limit := g.tokensDay(t, "user/"+g.alice.userID); used != e.Tokens() || limit != 100000 {
		t.Errorf("alice's tokens/day after the cut stream: got %d of %d, want the settled %d of 100000 (reservation released)", used, limit, e.Tokens())
	}

	// The next call is admitted and answered as usual.
	up.setAnswer(nil)
	if _, err := g.client.Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini")); err != nil {
		t.Fatalf("the call after the cut stream: %v", err)
	}
}

// TestGatewayConcurrencyLimit: a concurrency limit of 1 holds while a
// stream is in flight, and the slot is freed when its client leaves.
func TestGatewayConcurrencyLimit(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 100000/day, concurrency: 1}}
`, "gpt-4o-mini")
	up.setAnswer(func(w http.ResponseWriter, r *http.Request, c upCall) {
		s := newSSE(w, c)
		s.delta(map[string]any{"role": "assistant", "content": "", "refusal": nil}, nil)
		s.delta(map[string]any{"content": "Hello"}, nil)
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := g.client.Chat.Completions.NewStreaming(ctx, chatParams("gpt-4o-mini"))
	if !s.Next() {
		t.Fatalf("first chunk: %v", s.Err())
	}
	up.setAnswer(nil)
	_, err := g.client.Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini"))
	if err == nil {
		t.Fatal("a second call was admitted while one was in flight under concurrency: 1")
	}
	ae := apiError(t, err)
	if ae.StatusCode != http.StatusTooManyRequests || ae.Code != "rate_limit_exceeded" {
		t.Errorf("second call in flight: got %d %q, want 429 rate_limit_exceeded", ae.StatusCode, ae.Code)
	}
	cancel()
	s.Close()
	waitFor(t, "a call admitted once the stream's client left", func() (bool, string) {
		_, err := g.client.Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini"))
		return err == nil, fmt.Sprint(err)
	})
}

// TestGatewayUpstreamFailures: a provider failure the gate's retry mends
// is invisible to the client and only the answer's usage is settled; one it
// does not mend answers the client in OpenAI's error shape, settles
// nothing and shows the provider key to nobody; a provider's complaint
// about the request is handed on, not retried.
func TestGatewayUpstreamFailures(t *testing.T) {
	fail500 := func(w http.ResponseWriter, r *http.Request, c upCall) {
		openAIError(w, http.StatusInternalServerError, "The server had an error while processing your request. Sorry about that!", "server_error", "", "")
	}
	tests := []struct {
		name string
		// answer answers up's attempt-th request (from 1).
		answer   func(up *upstream, attempt int, w http.ResponseWriter, r *http.Request, c upCall)
		status   int
		code     string
		attempts int   // requests the upstream must get: 1 + the gate's one retry when retryable
		tokens   int64 // settled
		// message is what the client's error message must contain.
		message string
		// retryAfter is the Retry-After the client must get ("": any).
		retryAfter string
	}{
		{
			name: "500 then success",
			answer: func(up *upstream, attempt int, w http.ResponseWriter, r *http.Request, c upCall) {
				if attempt == 1 {
					fail500(w, r, c)
					return
				}
				up.chat(w, c)
			},
			status: http.StatusOK, attempts: 2, tokens: upPromptTokens + upCompletionTokens,
		},
		{
			name:   "500",
			answer: func(_ *upstream, _ int, w http.ResponseWriter, r *http.Request, c upCall) { fail500(w, r, c) },
			status: http.StatusBadGateway, code: "upstream_error", attempts: 2,
		},
		{
			name: "connection reset",
			answer: func(_ *upstream, _ int, w http.ResponseWriter, r *http.Request, c upCall) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					panic(err)
				}
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // close with RST
				}
				conn.Close()
			},
			status: http.StatusBadGateway, code: "upstream_error", attempts: 2,
		},
		{
			name: "400",
			answer: func(_ *upstream, _ int, w http.ResponseWriter, r *http.Request, c upCall) {
				// Some providers echo the key they were given: it must be
				// scrubbed from the message handed on.
				openAIError(w, http.StatusBadRequest, "Invalid value for 'temperature' with key "+upstreamKey+": must be at most 2.",
					"invalid_request_error", "temperature", "invalid_value")
			},
			status: http.StatusBadRequest, code: "invalid_value", attempts: 1, message: "Invalid value for 'temperature'",
		},
		{
			name: "429",
			answer: func(_ *upstream, _ int, w http.ResponseWriter, r *http.Request, c upCall) {
				h := w.Header()
				h.Set("retry-after", "1")
				h.Set("x-ratelimit-limit-requests", "500")
				h.Set("x-ratelimit-remaining-requests", "0")
				h.Set("x-ratelimit-reset-requests", "120ms")
				openAIError(w, http.StatusTooManyRequests, "Rate limit reached for gpt-4o-mini in organization org-upstream on requests per min (RPM): Limit 500, Used 500, Requested 1.",
					"requests", "", "rate_limit_exceeded")
			},
			status: http.StatusTooManyRequests, code: "rate_limit_exceeded", attempts: 2, retryAfter: "1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t)
			var mu sync.Mutex
			attempt := 0
			up.setAnswer(func(w http.ResponseWriter, r *http.Request, c upCall) {
				mu.Lock()
				attempt++
				n := attempt
				mu.Unlock()
				tc.answer(up, n, w, r, c)
			})
			g := startGateway(t, up, alicePolicy, "gpt-4o-mini")

			var httpResp *http.Response
			resp, err := g.client.Chat.Completions.New(context.Background(), chatParams("gpt-4o-mini"), option.WithResponseInto(&httpResp))
			var seen strings.Builder
			if tc.status == http.StatusOK {
				if err != nil {
					t.Fatalf("got %v, want the retry's answer", err)
				}
				if got := resp.Choices[0].Message.Content; got != "Hello from upstream" {
					t.Errorf("answer: got %q, want %q", got, "Hello from upstream")
				}
				seen.WriteString(resp.RawJSON())
			} else {
				ae := apiError(t, err)
				body := errorBody(t, ae)
				if ae.StatusCode != tc.status || ae.Code != tc.code {
					t.Errorf("got %d %q, want %d %q (%s)", ae.StatusCode, ae.Code, tc.status, tc.code, body)
				}
				if ae.Message == "" || ae.Type == "" {
					t.Errorf("body: got %s, want OpenAI's error shape", body)
				}
				if !strings.Contains(ae.Message, tc.message) {
					t.Errorf("message: got %q, want it to contain %q", ae.Message, tc.message)
				}
				if tc.retryAfter != "" && ae.Response.Header.Get("Retry-After") != tc.retryAfter {
					t.Errorf("Retry-After: got %q, want %q", ae.Response.Header.Get("Retry-After"), tc.retryAfter)
				}
				seen.WriteString(body)
			}
			for k, vs := range httpResp.Header {
				seen.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
			}
			if strings.Contains(seen.String(), upstreamKey) || strings.Contains(seen.String(), "org-upstream") {
				t.Errorf("the provider's key or internals reached alice:\n%s", seen.String())
			}
			if n := len(up.calls()); n != tc.attempts {
				t.Errorf("upstream requests: got %d, want %d", n, tc.attempts)
			}
			evs := g.settled(t, 1)
			if e := evs[0]; e.Tokens() != tc.tokens {
				t.Errorf("usage event: got %d+%d tokens, want %d", e.InputTokens, e.OutputTokens, tc.tokens)
			}
		})
	}
}

// TestGatewayVirtualKeyLimits: a key made with its own limits (one call to
// the keys API) is a scope of its own: its third call of the minute is
// refused at key/ID while the same user's other key is admitted, its model
// allow-list narrows /v1/models, and the spend per key report shows what
// each key used.
func TestGatewayVirtualKeyLimits(t *testing.T) {
	up := newUpstream(t)
	g := startGateway(t, up, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web]}
`, "gpt-4o-mini", "gpt-4o")
	code, key := call(t, "POST", g.s.url+"/api/v1/admin/keys", gwAdmin, `{"user_id":"`+g.alice.userID+`","name":"ci",
		"limits":{"requests":"2/min","models":["gpt-4o-mini"]}}`)
	if code != 201 {
		t.Fatalf("limited key: %d %v", code, key)
	}
	limited := openai.NewClient(option.WithBaseURL(g.s.url+"/v1/"), option.WithAPIKey(key["secret"].(string)), option.WithMaxRetries(0))
	ctx := context.Background()
	for i := range 2 {
		if _, err := limited.Chat.Completions.New(ctx, chatParams("gpt-4o-mini")); err != nil {
			t.Fatalf("limited key, call %d: %v", i+1, err)
		}
	}
	_, err := limited.Chat.Completions.New(ctx, chatParams("gpt-4o-mini"))
	if ae := apiError(t, err); ae.StatusCode != http.StatusTooManyRequests || !strings.Contains(ae.Message, "key/"+key["id"].(string)) {
		t.Fatalf("limited key, third call: %d %q, want 429 at key/%s", ae.StatusCode, ae.Message, key["id"])
	}
	if _, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o-mini")); err != nil {
		t.Fatalf("the same user's other key was refused: %v", err)
	}
	page, err := limited.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != "gpt-4o-mini" {
		t.Errorf("models of the limited key: %+v, want only gpt-4o-mini", page.Data)
	}
	if _, err := g.client.Chat.Completions.New(ctx, chatParams("gpt-4o")); err != nil {
		t.Errorf("the unrestricted key was refused gpt-4o: %v", err)
	}
	// Spend per key: the limited key's two calls, the other key's two.
	waitFor(t, "spend per key", func() (bool, string) {
		_, rep := call(t, "GET", g.s.url+"/api/v1/admin/usage/keys?tenant_id="+g.alice.tenantID, gwAdmin, "")
		b, _ := json.Marshal(rep)
		items, _ := rep["items"].([]any)
		requests := map[string]float64{}
		for _, it := range items {
			m := it.(map[string]any)
			id, _ := m["key_id"].(string)
			if id == "" {
				id, _ = m["id"].(string)
			}
			r, _ := m["requests"].(float64)
			requests[id] += r
		}
		return requests[key["id"].(string)] == 2 && requests[g.alice.keyID] == 2, string(b)
	})
}
