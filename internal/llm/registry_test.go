package llm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestEmptyTableGivesSimulated(t *testing.T) {
	r, err := llm.NewRegistry(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Names(); len(got) != 1 || got[0] != "simulated" {
		t.Fatalf("Names = %q, want [simulated]", got)
	}
	m := r.Default()
	if m.Name() != "simulated" || m.Config().Provider != "simulated" {
		t.Fatalf("Default = %v, want the simulated model", m)
	}
	resp, err := m.Chat(context.Background(), llm.Request{Messages: []llm.Message{{Role: "user", Content: "hi there"}}})
	if err != nil || !resp.Simulated || resp.Model != "simulated" {
		t.Errorf("Chat = %+v, %v; want a simulated answer", resp, err)
	}
	if got := m.CountTokens([]llm.Message{{Role: "user", Content: "hello world"}}); got != 9 {
		t.Errorf("CountTokens = %d, want 9 (o200k_base with overhead)", got)
	}
}

func table() []llm.ModelConfig {
	return []llm.ModelConfig{
		{Name: "gpt-4o-mini", Provider: "openai", APIKeyEnv: "OPENAI_API_KEY", InputPricePerMTok: 0.15, OutputPricePerMTok: 0.60, ContextWindow: 128000},
		{Name: "llama3.1:70b", Provider: "ollama", BaseURL: "http://127.0.0.1:11434", GPU: true, CPUFallback: "llama3.2:3b", Default: true},
		{Name: "llama3.2:3b", Provider: "ollama"},
		{Name: "mistralai/Mistral-7B-Instruct-v0.3", Provider: "huggingface", APIKeyEnv: "HF_TOKEN"},
		{Name: "demo", Provider: "simulated", Latency: llm.Duration(time.Millisecond)},
	}
}

var tableEnv = env(map[string]string{"OPENAI_API_KEY": testKey, "HF_TOKEN": "hf_SECRET_abcdef"})

func TestRegistryLookup(t *testing.T) {
	r, err := llm.NewRegistry(table(), tableEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Names(), ","); got != "gpt-4o-mini,llama3.1:70b,llama3.2:3b,mistralai/Mistral-7B-Instruct-v0.3,demo" {
		t.Errorf("Names = %s, want table order", got)
	}
	if r.Default().Name() != "llama3.1:70b" {
		t.Errorf("Default = %s, want the one marked default", r.Default().Name())
	}
	m, err := r.Lookup("gpt-4o-mini")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Provider().(*llm.OpenAI); !ok || m.Config().APIKey.Reveal() != testKey {
		t.Errorf("gpt-4o-mini: provider %T, key resolved %v; want *llm.OpenAI with the key from the environment", m.Provider(), m.Config().APIKey.Reveal() == testKey)
	}
	for name, want := range map[string]any{"llama3.2:3b": &llm.Ollama{}, "mistralai/Mistral-7B-Instruct-v0.3": &llm.HuggingFace{}, "demo": &llm.Simulated{}} {
		m, err := r.Lookup(name)
		if err != nil || fmt.Sprintf("%T", m.Provider()) != fmt.Sprintf("%T", want) {
			t.Errorf("Lookup(%s) = %T, %v; want %T", name, m.Provider(), err, want)
		}
	}
	for _, name := range []string{"gpt-5", ""} {
		_, err := r.Lookup(name)
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Invalid || e.Field != "model" {
			t.Errorf("Lookup(%q) = %v, want invalid on field model", name, err)
		}
	}
	// Without a default mark, the first model is the default.
	rows := table()
	rows[1].Default = false
	r2, err := llm.NewRegistry(rows, tableEnv)
	if err != nil || r2.Default().Name() != "gpt-4o-mini" {
		t.Errorf("Default = %v, %v; want the first model", r2, err)
	}
}

func TestRegistryValidation(t *testing.T) {
	tests := []struct {
		name  string
		edit  func([]llm.ModelConfig) []llm.ModelConfig
		env   map[string]string
		field string
	}{
		{"unknown provider", func(m []llm.ModelConfig) []llm.ModelConfig { m[2].Provider = "anthropic"; return m }, nil, "models[2].provider"},
		{"no name", func(m []llm.ModelConfig) []llm.ModelConfig { m[0].Name = ""; return m }, nil, "models[0].name"},
		{"duplicate name", func(m []llm.ModelConfig) []llm.ModelConfig { m[3].Name = "demo"; return m }, nil, "models[4].name"},
		{"bad base url", func(m []llm.ModelConfig) []llm.ModelConfig { m[1].BaseURL = "gpu-box:11434"; return m }, nil, "models[1].base_url"},
		{"credentials in url", func(m []llm.ModelConfig) []llm.ModelConfig { m[1].BaseURL = "http://u:p@gpu-box:11434"; return m }, nil, "models[1].base_url"},
		{"bad env name", func(m []llm.ModelConfig) []llm.ModelConfig { m[0].APIKeyEnv = "OPENAI-KEY"; return m }, nil, "models[0].api_key_env"},
		{"negative price", func(m []llm.ModelConfig) []llm.ModelConfig { m[0].OutputPricePerMTok = -1; return m }, nil, "models[0].output_price_per_mtok"},
		{"two defaults", func(m []llm.ModelConfig) []llm.ModelConfig { m[4].Default = true; return m }, nil, "models[4].default"},
		{"unknown fallback", func(m []llm.ModelConfig) []llm.ModelConfig { m[1].CPUFallback = "tiny"; return m }, nil, "models[1].cpu_fallback"},
		{"fallback needs a GPU", func(m []llm.ModelConfig) []llm.ModelConfig { m[2].GPU = true; return m }, nil, "models[1].cpu_fallback"},
		{"negative context window", func(m []llm.ModelConfig) []llm.ModelConfig { m[0].ContextWindow = -1; return m }, nil, "models[0].context_window"},
		{"negative latency", func(m []llm.ModelConfig) []llm.ModelConfig { m[4].TokenLatency = -1; return m }, nil, "models[4].token_latency"},
		{"key variable unset", func(m []llm.ModelConfig) []llm.ModelConfig { return m }, map[string]string{"OPENAI_API_KEY": testKey}, "models[3].api_key_env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := tableEnv
			if tt.env != nil {
				getenv = env(tt.env)
			}
			_, err := llm.NewRegistry(tt.edit(table()), getenv)
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.Invalid || e.Field != tt.field {
				t.Fatalf("err = %v, want invalid naming %s", err, tt.field)
			}
			if !strings.Contains(e.Message, tt.field) {
				t.Errorf("message %q does not name %s", e.Message, tt.field)
			}
		})
	}
	// A row on its own names the bare field.
	var e *errs.Error
	if err := (llm.ModelConfig{Name: "x", Provider: "bedrock"}).Validate(); !errors.As(err, &e) || e.Field != "provider" {
		t.Errorf("Validate = %v, want field provider", err)
	}
	if err := llm.ValidateModels(table()); err != nil {
		t.Errorf("ValidateModels(good table) = %v", err)
	}
}

func TestCost(t *testing.T) {
	r, err := llm.NewRegistry(table(), tableEnv)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := r.Lookup("gpt-4o-mini") // $0.15 in, $0.60 out per million tokens
	for _, tt := range []struct {
		u    llm.Usage
		want int64
	}{
		{llm.Usage{InputTokens: 1000, OutputTokens: 500}, 450}, // 150 + 300 µUSD exactly
		{llm.Usage{InputTokens: 1}, 1},                         // 0.15 µUSD rounds up
		{llm.Usage{InputTokens: 7, OutputTokens: 3}, 3},        // 1.05 + 1.8 = 2.85
		{llm.Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000}, 750_000},
		{llm.Usage{}, 0},
		{llm.Usage{InputTokens: -5}, 0},
	} {
		if got := m.Cost(tt.u); got != tt.want {
			t.Errorf("Cost(%+v) = %d µUSD, want %d", tt.u, got, tt.want)
		}
	}
	free, _ := r.Lookup("llama3.2:3b")
	if got := free.Cost(llm.Usage{InputTokens: 1e6, OutputTokens: 1e6}); got != 0 {
		t.Errorf("Cost on an unpriced model = %d, want 0", got)
	}
}

// TestSecretsNeverPrint formats everything that holds a key, every way a
// program might, and looks for the key.
func TestSecretsNeverPrint(t *testing.T) {
	r, err := llm.NewRegistry(table(), tableEnv)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := r.Lookup("gpt-4o-mini")
	cfg := m.Config()
	direct := table()[0]
	direct.APIKey = llm.NewSecret(testKey) // a key written in the file
	holder := struct {
		key   llm.Secret // unexported: fmt cannot call its methods
		model llm.Model
	}{cfg.APIKey, *m}

	var out bytes.Buffer
	for _, v := range []any{r, m, *m, cfg, &cfg, direct, cfg.APIKey, m.Provider(), holder, []llm.ModelConfig{cfg}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal(%T): %v", v, err)
		}
		out.Write(b)
	}
	log := slog.New(slog.NewJSONHandler(&out, nil))
	log.Info("model", "key", cfg.APIKey, "config", cfg, "model", m, "registry", r)
	slog.New(slog.NewTextHandler(&out, nil)).Info("model", "key", cfg.APIKey, "config", cfg)

	for _, secret := range []string{testKey, "hf_SECRET_abcdef", fmt.Sprintf("%x", testKey)} {
		if strings.Contains(out.String(), secret) {
			t.Fatalf("key %q printed in:\n%s", secret, out.String())
		}
	}
	if !strings.Contains(out.String(), "<redacted>") {
		t.Error("no <redacted> marker at all; did anything print?")
	}
	if cfg.APIKey.Reveal() != testKey {
		t.Error("Reveal lost the key")
	}
}

func TestModelConfigJSON(t *testing.T) {
	var cfgs []llm.ModelConfig
	in := `[{"name":"gpt-4o-mini","provider":"openai","api_key":"sk-in-file","input_price_per_mtok":0.15,"output_price_per_mtok":0.6,"default":true},
	        {"name":"demo","provider":"simulated","latency":"250ms","token_latency":"2ms"}]`
	if err := json.Unmarshal([]byte(in), &cfgs); err != nil {
		t.Fatal(err)
	}
	if cfgs[0].APIKey.Reveal() != "sk-in-file" || cfgs[1].Latency != llm.Duration(250*time.Millisecond) || cfgs[1].TokenLatency != llm.Duration(2*time.Millisecond) {
		t.Errorf("parsed %+v, want the key and latencies", cfgs)
	}
	out, _ := json.Marshal(cfgs)
	if strings.Contains(string(out), "sk-in-file") || !strings.Contains(string(out), `"latency":"250ms"`) {
		t.Errorf("marshalled %s, want the key redacted and latency as text", out)
	}
	if err := json.Unmarshal([]byte(`[{"name":"x","provider":"simulated","latency":"soon"}]`), &cfgs); err == nil {
		t.Error("latency \"soon\" parsed")
	}
}
