package gate_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/usage"
)

// meter records what the gate asks of it. clampTo, when set, admits that
// many tokens (a clamped admission); deny refuses.
type meter struct {
	mu      sync.Mutex
	asks    []quota.Ask
	settles []quota.Usage
	clampTo int64
	deny    error
}

func (m *meter) Acquire(_ context.Context, _ metering.Who, _ string, ask quota.Ask, _ time.Duration) (*metering.Admission, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.asks = append(m.asks, ask)
	if m.deny != nil {
		return nil, m.deny
	}
	t := quota.Ticket{ID: "tkt_1", Tokens: ask.Tokens}
	if m.clampTo > 0 && m.clampTo < ask.Tokens {
		t.Tokens, t.Clamped = m.clampTo, true
	}
	return &metering.Admission{Ticket: t}, nil
}

func (m *meter) SettleWith(_ context.Context, id string, u quota.Usage, _ string, _ func(*usage.Event)) (quota.Settlement, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settles = append(m.settles, u)
	return quota.Settlement{TicketID: id, Usage: u}, nil
}

// upstream is an OpenAI chat completions endpoint (its wire format) that
// records the max_tokens asked and answers with status, reporting 12
// prompt and 5 completion tokens on success.
func upstream(t *testing.T, status int) (*llm.Model, *int) {
	t.Helper()
	asked := new(int)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			MaxTokens           int `json:"max_tokens"`
			MaxCompletionTokens int `json:"max_completion_tokens"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		*asked = max(body.MaxTokens, body.MaxCompletionTokens)
		w.Header().Set("Content-Type", "application/json")
		if status != 200 {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(`{"error":{"message":"upstream broke","type":"server_error","param":null,"code":null}}`))
			return
		}
		_, _ = w.Write([]byte(`{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],
"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}`))
	}))
	t.Cleanup(srv.Close)
	reg, err := llm.NewRegistry([]llm.ModelConfig{{Name: "m", Provider: "openai", BaseURL: srv.URL, APIKey: llm.NewSecret("sk-test"),
		InputPricePerMTok: 1, OutputPricePerMTok: 2, ContextWindow: 4096}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := reg.Lookup("m")
	if err != nil {
		t.Fatal(err)
	}
	return m, asked
}

func call(m *llm.Model, maxTokens int) gate.Call {
	return gate.Call{Kind: "model_call", Model: m, Field: "nodes.n1", Subject: "node n1",
		Request: llm.Request{Messages: []llm.Message{{Role: "user", Content: "say hello"}}, MaxTokens: maxTokens}}
}

// TestDo: the prompt plus the output allowance is reserved, the output is
// capped by the caller's cap and clamped to what the meter admitted, and
// what the provider reported is settled, once.
func TestDo(t *testing.T) {
	m, asked := upstream(t, 200)
	mt := &meter{}
	g := gate.Gate{Meter: mt}
	c := call(m, 500)
	c.MaxTokensPerCall = 300
	res, err := g.Do(context.Background(), c)
	if err != nil || !res.Admitted || res.Response.Text == "" {
		t.Fatalf("Do: %+v, %v", res, err)
	}
	in := m.CountRequest(c.Request)
	if got := mt.asks[0].Tokens; got != int64(in+300) {
		t.Errorf("reserved %d tokens, want the prompt's %d + the cap of 300", got, in)
	}
	if *asked != 300 {
		t.Errorf("the provider was asked for %d output tokens, want 300", *asked)
	}
	want := quota.Usage{InputTokens: 12, OutputTokens: 5, CostMicros: m.Cost(llm.Usage{InputTokens: 12, OutputTokens: 5})}
	if len(mt.settles) != 1 || mt.settles[0] != want || res.Usage != want {
		t.Errorf("settled %+v (result %+v), want once %+v", mt.settles, res.Usage, want)
	}

	// Clamped: the meter admits prompt + 40; the provider is asked 40.
	mt2 := &meter{clampTo: int64(in + 40)}
	g2 := gate.Gate{Meter: mt2}
	if _, err := g2.Do(context.Background(), call(m, 500)); err != nil {
		t.Fatal(err)
	}
	if *asked != 40 {
		t.Errorf("clamped to prompt + 40: the provider was asked %d output tokens, want 40", *asked)
	}
}

// TestDoProviderError: a call the provider fails is settled with what the
// provider reported (nothing here) and its error returned; the meter's
// refusal is returned as it is, settling nothing; a prompt beyond the
// context window is refused before the meter, naming the caller's field.
func TestDoProviderError(t *testing.T) {
	m, _ := upstream(t, 500)
	mt := &meter{}
	g := gate.Gate{Meter: mt}
	res, err := g.Do(context.Background(), call(m, 100))
	if err == nil || !res.Admitted || len(mt.settles) != 1 || mt.settles[0] != (quota.Usage{}) {
		t.Fatalf("provider 500: %+v, %v, settles %+v; want an error, admitted, settled once with nothing", res, err, mt.settles)
	}

	denial := &quota.Denial{Code: quota.CodeQuotaExceeded, Scope: "user/u", Dimension: quota.DimTokens}
	mt = &meter{deny: denial}
	g = gate.Gate{Meter: mt}
	res, err = g.Do(context.Background(), call(m, 100))
	var d *quota.Denial
	if !errors.As(err, &d) || res.Admitted || len(mt.settles) != 0 {
		t.Fatalf("denied: %+v, %v, settles %+v; want the denial, nothing settled", res, err, mt.settles)
	}

	mt = &meter{}
	g = gate.Gate{Meter: mt}
	c := call(m, 100)
	long := make([]llm.Message, 0, 3000)
	for range 3000 {
		long = append(long, llm.Message{Role: "user", Content: "tokens tokens tokens"})
	}
	c.Request.Messages = long
	_, err = g.Do(context.Background(), c)
	if !errs.Is(err, errs.Unprocessable) || len(mt.asks) != 0 {
		t.Fatalf("a prompt past the context window: %v (asks %d), want Unprocessable before any ask", err, len(mt.asks))
	}
}
