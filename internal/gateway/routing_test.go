package gateway_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/gateway"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
)

// upstream is an OpenAI-compatible provider whose behaviour a test sets:
// it counts the calls it got and the model names it was asked for.
type upstream struct {
	*httptest.Server
	calls  atomic.Int64
	mu     sync.Mutex
	models []string
	// mode: "ok", "500", "429", "hang", "reset", "400".
	mode atomic.Value
	in   int // prompt tokens it reports
	out  int
}

func newUpstream(t *testing.T, mode string, in, out int) *upstream {
	t.Helper()
	u := &upstream{in: in, out: out}
	u.mode.Store(mode)
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		var body struct {
			Model string `json:"model"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		u.mu.Lock()
		u.models = append(u.models, body.Model)
		u.mu.Unlock()
		switch u.mode.Load().(string) {
		case "500":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(500)
			io.WriteString(w, `{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}`)
		case "429":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("x-ratelimit-remaining-requests", "0")
			w.Header().Set("retry-after", "1")
			w.WriteHeader(429)
			io.WriteString(w, `{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}`)
		case "400":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			io.WriteString(w, `{"error":{"message":"Invalid schema for function 'f'","type":"invalid_request_error","param":"tools[0]","code":"invalid_function_parameters"}}`)
		case "hang":
			<-r.Context().Done()
		case "reset":
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":%q,
"choices":[{"index":0,"message":{"role":"assistant","content":"from %s"},"finish_reason":"stop"}],
"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, body.Model, body.Model, u.in, u.out, u.in+u.out)
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func deployment(name, url, upstreamModel string) llm.DeploymentConfig {
	return llm.DeploymentConfig{Name: name, Provider: llm.ProviderOpenAI, BaseURL: url, APIKey: llm.NewSecret("sk-" + name), Model: upstreamModel}
}

func chat(t *testing.T, url, key, model string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/v1/chat/completions",
		strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestFallbackAndCooldown: a deployment answering 500 is retried, then the
// call falls back to the next deployment, and only what that one used is
// settled, naming it. After three failures in a row the bad deployment
// cools down and is tried last; when the cooldown ends it is tried again.
func TestFallbackAndCooldown(t *testing.T) {
	bad := newUpstream(t, "500", 0, 0)
	good := newUpstream(t, "ok", 12, 5)
	now := time.Unix(1_800_000_000, 0)
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	// The bad deployment weighs 1000 to 1, so it is first while healthy
	// (the seeded order is the same every run).
	dBad := deployment("bad", bad.URL, "m-bad")
	dBad.Weight = 1000
	models := []llm.ModelConfig{{Name: "m", InputPricePerMTok: 1, OutputPricePerMTok: 2,
		Deployments: []llm.DeploymentConfig{dBad, deployment("good", good.URL, "m-good")}}}
	ro := llm.DefaultRouterOptions()
	ro.Retries = 1
	w := newWorldWith(t, models, llm.RegistryOptions{Router: &ro, Now: func() time.Time { return time.Unix(0, clock.Load()) },
		Rand: rand.New(rand.NewPCG(1, 2))}, gate.Retry{Retries: 1})
	for i := 1; i <= 6; i++ {
		status, body := chat(t, w.url, "sk-sluice-alice", "m")
		if status != 200 || !strings.Contains(body, "from m-good") {
			t.Fatalf("call %d: %d %s, want the good deployment's answer", i, status, body)
		}
		s := w.meter.waitSettle(t, i)
		if s.usage.InputTokens != 12 || s.usage.OutputTokens != 5 || s.dep != "good" || s.model != "m" {
			t.Errorf("call %d settled %+v, want 12+5 tokens on deployment good of m", i, s)
		}
	}
	// Each call that met the bad deployment tried it twice (one retry);
	// after 3 failures it cooled down and was no longer tried first.
	if n := bad.calls.Load(); n < 3 || n > 4 {
		t.Errorf("the failing deployment got %d calls, want 3 or 4 (cooled down after 3 failures)", n)
	}
	before := bad.calls.Load()
	for i := 0; i < 4; i++ {
		chat(t, w.url, "sk-sluice-alice", "m")
	}
	if bad.calls.Load() != before {
		t.Errorf("a cooling deployment was tried while a healthy one answered: %d calls, was %d", bad.calls.Load(), before)
	}
	clock.Add(int64(31 * time.Second))
	bad.mode.Store("ok")
	seen := false
	for i := 0; i < 20 && !seen; i++ {
		_, body := chat(t, w.url, "sk-sluice-alice", "m")
		seen = strings.Contains(body, "from m-bad")
	}
	if !seen {
		t.Error("after its cooldown, the mended deployment never served again")
	}
}

// TestFallbackModel: every deployment of a model rate limited → the call
// is served by its fallback model, settled at the fallback's name.
func TestFallbackModel(t *testing.T) {
	limited := newUpstream(t, "429", 0, 0)
	small := newUpstream(t, "ok", 9, 3)
	models := []llm.ModelConfig{
		{Name: "big", Provider: llm.ProviderOpenAI, BaseURL: limited.URL, Fallbacks: []string{"small"}},
		{Name: "small", Provider: llm.ProviderOpenAI, BaseURL: small.URL},
	}
	w := newWorldWith(t, models, llm.RegistryOptions{}, gate.Retry{Retries: 2})
	status, body := chat(t, w.url, "sk-sluice-alice", "big")
	if status != 200 || !strings.Contains(body, "from small") {
		t.Fatalf("%d %s, want the fallback model's answer", status, body)
	}
	if n := limited.calls.Load(); n != 3 {
		t.Errorf("the rate-limited model got %d calls, want 3 (two retries)", n)
	}
	if s := w.meter.waitSettle(t, 1); s.model != "small" || s.usage.InputTokens != 9 || s.usage.OutputTokens != 3 {
		t.Errorf("settled %+v, want small's 9+3", s)
	}
	// Nothing else to fall back to: a 429 with OpenAI's shape, nothing
	// settled beyond zero.
	small.mode.Store("429")
	status, body = chat(t, w.url, "sk-sluice-alice", "big")
	if status != 429 || !strings.Contains(body, `"rate_limit_exceeded"`) {
		t.Errorf("all rate limited: %d %s, want 429 rate_limit_exceeded", status, body)
	}
	if s := w.meter.waitSettle(t, 2); s.usage.InputTokens+s.usage.OutputTokens != 0 {
		t.Errorf("a call no provider answered settled %+v, want nothing", s.usage)
	}
}

// TestHangAndResetFallBack: an attempt that gets no answer within the
// attempt timeout, or whose connection is reset, moves to the next
// deployment; with none left the caller gets 504 or 502.
func TestHangAndResetFallBack(t *testing.T) {
	for _, mode := range []string{"hang", "reset"} {
		t.Run(mode, func(t *testing.T) {
			broken := newUpstream(t, mode, 0, 0)
			good := newUpstream(t, "ok", 4, 4)
			ro := llm.DefaultRouterOptions()
			// Weight the broken deployment so it comes first nearly always;
			// the test holds either way.
			dBroken, dGood := deployment("broken", broken.URL, "x"), deployment("good", good.URL, "y")
			dBroken.Weight = 1000
			w := newWorldWith(t, []llm.ModelConfig{{Name: "m", Deployments: []llm.DeploymentConfig{dBroken, dGood}}},
				llm.RegistryOptions{Router: &ro}, gate.Retry{AttemptTimeout: 200 * time.Millisecond})
			status, body := chat(t, w.url, "sk-sluice-alice", "m")
			if status != 200 || !strings.Contains(body, "from y") {
				t.Fatalf("%d %s, want the good deployment's answer", status, body)
			}
			good.mode.Store(mode)
			status, body = chat(t, w.url, "sk-sluice-alice", "m")
			want := map[string]int{"hang": 504, "reset": 502}[mode]
			if status != want || !strings.Contains(body, `"server_error"`) {
				t.Errorf("every deployment %s: %d %s, want %d server_error", mode, status, body, want)
			}
		})
	}
}

// TestProviderClientErrorIsNotRetried: a 400 from the provider is the
// caller's to mend: relayed at once, no retry, no fallback.
func TestProviderClientErrorIsNotRetried(t *testing.T) {
	strict := newUpstream(t, "400", 0, 0)
	other := newUpstream(t, "ok", 1, 1)
	w := newWorldWith(t, []llm.ModelConfig{{Name: "m", Deployments: []llm.DeploymentConfig{
		deployment("strict", strict.URL, "x"), deployment("other", other.URL, "y")}}}, llm.RegistryOptions{}, gate.Retry{Retries: 2})
	for i := 0; i < 10; i++ {
		status, body := chat(t, w.url, "sk-sluice-alice", "m")
		if status == 400 && !strings.Contains(body, "Invalid schema for function") {
			t.Errorf("400 without the provider's message: %s", body)
		}
	}
	if n := strict.calls.Load(); n > 10 {
		t.Errorf("the 400 was retried: %d calls for at most 10 requests", n)
	}
}

// TestDedicatedDeployment: a deployment dedicated to a tenant serves its
// calls first, and never another tenant's.
func TestDedicatedDeployment(t *testing.T) {
	dedicated := newUpstream(t, "ok", 1, 1)
	shared := newUpstream(t, "ok", 1, 1)
	dd := deployment("ent", dedicated.URL, "ded")
	dd.DedicatedTo = []string{"tenant:ten_1"}
	ds := deployment("shared", shared.URL, "shr")
	ds.Weight = 1000
	w := newWorldWith(t, []llm.ModelConfig{{Name: "m", Deployments: []llm.DeploymentConfig{dd, ds}}}, llm.RegistryOptions{}, gate.Retry{})
	for i := 0; i < 10; i++ {
		if _, body := chat(t, w.url, "sk-sluice-alice", "m"); !strings.Contains(body, "from ded") {
			t.Fatalf("tenant ten_1's call %d was not served by its dedicated deployment: %s", i, body)
		}
		if _, body := chat(t, w.url, "sk-sluice-bob", "m"); !strings.Contains(body, "from shr") {
			t.Fatalf("another tenant's call %d reached the dedicated deployment: %s", i, body)
		}
	}
	if dedicated.calls.Load() != 10 {
		t.Errorf("dedicated deployment got %d calls, want exactly ten_1's 10", dedicated.calls.Load())
	}
}

// TestDeploymentRPM: a deployment's provider rpm is counted on the quota
// engine; once it is spent, calls go to the next deployment without
// calling it, and when every deployment is at its limit the caller gets
// 429 without any provider being called.
func TestDeploymentRPM(t *testing.T) {
	first := newUpstream(t, "ok", 1, 1)
	second := newUpstream(t, "ok", 1, 1)
	d1, d2 := deployment("first", first.URL, "a"), deployment("second", second.URL, "b")
	d1.RPM, d1.Weight = 2, 1000
	d2.RPM = 3
	w := newWorldWith(t, []llm.ModelConfig{{Name: "m", Deployments: []llm.DeploymentConfig{d1, d2}}}, llm.RegistryOptions{}, gate.Retry{})
	eng := quota.NewMemory(quota.Options{})
	t.Cleanup(func() { eng.Close() })
	w.gate.Engine = eng
	for i := 0; i < 5; i++ {
		if status, body := chat(t, w.url, "sk-sluice-alice", "m"); status != 200 {
			t.Fatalf("call %d: %d %s", i, status, body)
		}
	}
	if first.calls.Load() != 2 || second.calls.Load() != 3 {
		t.Errorf("calls: first %d, second %d; want each at its rpm (2 and 3)", first.calls.Load(), second.calls.Load())
	}
	status, body := chat(t, w.url, "sk-sluice-alice", "m")
	if status != 429 || !strings.Contains(body, "rate_limit_exceeded") {
		t.Errorf("every deployment at its rpm: %d %s, want 429", status, body)
	}
	if first.calls.Load()+second.calls.Load() != 5 {
		t.Errorf("a provider was called past its rpm: %d calls", first.calls.Load()+second.calls.Load())
	}
}

// TestCallLog: one JSON line per governed call, with who, what, the
// deployment and the tokens, and no prompt text.
func TestCallLog(t *testing.T) {
	up := newUpstream(t, "ok", 21, 8)
	reg, err := llm.NewRegistry([]llm.ModelConfig{openaiModel("m", up.URL)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var mu sync.Mutex
	logw := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	g := &gate.Gate{Meter: newMeter(), Health: reg, Log: slog.New(slog.NewJSONHandler(logw, nil))}
	srv := httptest.NewServer(&gateway.Handler{Auth: auth{}, Gate: g, Models: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"my secret plans"}]}`))
	req.Header.Set("Authorization", "Bearer sk-sluice-alice")
	req.Header.Set("X-Request-Id", "req_test1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &line); err != nil {
		t.Fatalf("log %q is not one JSON line: %v", buf.String(), err)
	}
	for k, v := range map[string]any{"msg": "governed call", "tenant": "ten_1", "user": "usr_alice", "key": "key_1", "model": "m",
		"deployment": "m", "decision": "admitted", "status": "ok", "input_tokens": 21.0, "output_tokens": 8.0, "kind": "chat_completion"} {
		if line[k] != v {
			t.Errorf("log %s = %v, want %v", k, line[k], v)
		}
	}
	if _, ok := line["duration_ms"]; !ok {
		t.Error("no duration_ms")
	}
	if strings.Contains(buf.String(), "secret plans") {
		t.Error("the prompt was logged although log_prompts is off")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
