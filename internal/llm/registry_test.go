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

// routed is a table with deployments: gpt-4o spread over three, one of
// them dedicated, and falling back to the one-deployment gpt-4o-mini.
func routed() []llm.ModelConfig {
	return []llm.ModelConfig{
		{Name: "gpt-4o", Provider: "openai", InputPricePerMTok: 2.5, OutputPricePerMTok: 10, ContextWindow: 128000,
			Fallbacks: []string{"gpt-4o-mini"},
			Deployments: []llm.DeploymentConfig{
				{Name: "east", BaseURL: "https://east.example/v1", APIKeyEnv: "EAST_KEY", Weight: 3, RPM: 500, TPM: 30000, Model: "gpt-4o-2024-08-06"},
				{BaseURL: "https://west.example/v1", APIKeyEnv: "WEST_KEY"},
				{Name: "acme", Provider: "ollama", BaseURL: "http://acme-gpu:11434", Model: "llama3.1:70b", DedicatedTo: []string{"tenant:acme", "plan:enterprise"}},
			}},
		{Name: "gpt-4o-mini", Provider: "openai", APIKeyEnv: "OPENAI_API_KEY", InputPricePerMTok: 0.15, OutputPricePerMTok: 0.60},
	}
}

var routedEnv = env(map[string]string{"EAST_KEY": "sk-east", "WEST_KEY": "sk-west", "OPENAI_API_KEY": testKey})

func TestDeployments(t *testing.T) {
	r, err := llm.NewRegistry(routed(), routedEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Names(), ","); got != "gpt-4o,gpt-4o-mini" {
		t.Errorf("Names = %s, want one per model", got)
	}
	if got := len(r.Models()); got != 2 {
		t.Errorf("len(Models) = %d, want 2 (one per model)", got)
	}
	deps, err := r.Deployments("gpt-4o")
	if err != nil {
		t.Fatal(err)
	}
	type view struct {
		name, deployment, upstream, provider, baseURL, key string
		rpm, tpm                                           int64
		dedicated                                          string
	}
	want := []view{
		{"gpt-4o", "east", "gpt-4o-2024-08-06", "openai", "https://east.example/v1", "sk-east", 500, 30000, ""},
		{"gpt-4o", "gpt-4o#1", "gpt-4o", "openai", "https://west.example/v1", "sk-west", 0, 0, ""},
		{"gpt-4o", "acme", "llama3.1:70b", "ollama", "http://acme-gpu:11434", "", 0, 0, "tenant:acme,plan:enterprise"},
	}
	if len(deps) != len(want) {
		t.Fatalf("Deployments = %v, want %d", deps, len(want))
	}
	for i, m := range deps {
		c := m.Config()
		got := view{m.Name(), m.Deployment(), m.Upstream(), c.Provider, c.BaseURL, c.APIKey.Reveal(), m.RPM(), m.TPM(), strings.Join(m.DedicatedTo(), ",")}
		if got != want[i] {
			t.Errorf("deployment %d = %+v, want %+v", i, got, want[i])
		}
		// Prices, context window: the model's.
		if m.Cost(llm.Usage{InputTokens: 1000, OutputTokens: 1000}) != 12500 || c.ContextWindow != 128000 {
			t.Errorf("deployment %d: cost %d, context window %d; want the model's (12500 µUSD, 128000)", i, m.Cost(llm.Usage{InputTokens: 1000, OutputTokens: 1000}), c.ContextWindow)
		}
	}
	if _, ok := deps[2].Provider().(*llm.Ollama); !ok {
		t.Errorf("acme's provider is %T, want *llm.Ollama", deps[2].Provider())
	}
	if m, _ := r.Lookup("gpt-4o"); m != deps[0] {
		t.Errorf("Lookup = %v, want the first deployment", m)
	}
	if got := fmt.Sprint(r); !strings.Contains(got, "gpt-4o(east openai, gpt-4o#1 openai, acme ollama)") || !strings.Contains(got, "gpt-4o-mini(openai)") {
		t.Errorf("String = %q, want each deployment listed", got)
	}
	if got := fmt.Sprint(deps[1]); got != "model gpt-4o deployment gpt-4o#1 (openai)" {
		t.Errorf("deployment prints %q", got)
	}

	// A model without deployments is its own single one, named after it.
	mini, _ := r.Lookup("gpt-4o-mini")
	if mini.Deployment() != "gpt-4o-mini" || mini.Upstream() != "gpt-4o-mini" || mini.RPM() != 0 || len(mini.DedicatedTo()) != 0 || mini.Config().APIKey.Reveal() != testKey {
		t.Errorf("gpt-4o-mini: deployment %q, upstream %q; want both the model's name and its key", mini.Deployment(), mini.Upstream())
	}
	if got := fmt.Sprint(mini); got != "model gpt-4o-mini (openai)" {
		t.Errorf("gpt-4o-mini prints %q, want as before deployments", got)
	}
	if _, err := r.Deployments("gpt-5"); !errs.Is(err, errs.Invalid) {
		t.Errorf("Deployments(gpt-5) = %v, want invalid", err)
	}
}

func TestDeploymentValidation(t *testing.T) {
	edit := func(f func(m []llm.ModelConfig)) func() []llm.ModelConfig {
		return func() []llm.ModelConfig { m := routed(); f(m); return m }
	}
	tests := []struct {
		name   string
		models func() []llm.ModelConfig
		env    map[string]string
		field  string
	}{
		{"bad base url", edit(func(m []llm.ModelConfig) { m[0].Deployments[1].BaseURL = "west.example" }), nil, "models[0].deployments[1].base_url"},
		{"credentials in url", edit(func(m []llm.ModelConfig) { m[0].Deployments[0].BaseURL = "https://u:p@east.example" }), nil, "models[0].deployments[0].base_url"},
		{"bad env name", edit(func(m []llm.ModelConfig) { m[0].Deployments[1].APIKeyEnv = "WEST-KEY" }), nil, "models[0].deployments[1].api_key_env"},
		{"key variable unset", routed, map[string]string{"EAST_KEY": "sk-east", "OPENAI_API_KEY": testKey}, "models[0].deployments[1].api_key_env"},
		{"unknown provider", edit(func(m []llm.ModelConfig) { m[0].Deployments[2].Provider = "bedrock" }), nil, "models[0].deployments[2].provider"},
		{"no provider anywhere", edit(func(m []llm.ModelConfig) { m[0].Provider = "" }), nil, "models[0].deployments[0].provider"},
		{"unknown provider on the row", edit(func(m []llm.ModelConfig) { m[0].Provider = "bedrock" }), nil, "models[0].provider"},
		{"duplicate name", edit(func(m []llm.ModelConfig) { m[0].Deployments[2].Name = "east" }), nil, "models[0].deployments[2].name"},
		{"explicit name taking a default", edit(func(m []llm.ModelConfig) { m[0].Deployments[2].Name = "gpt-4o#1" }), nil, "models[0].deployments[2].name"},
		{"name with a space", edit(func(m []llm.ModelConfig) { m[0].Deployments[0].Name = "us east" }), nil, "models[0].deployments[0].name"},
		{"upstream with a space", edit(func(m []llm.ModelConfig) { m[0].Deployments[0].Model = "gpt 4o" }), nil, "models[0].deployments[0].model"},
		{"negative weight", edit(func(m []llm.ModelConfig) { m[0].Deployments[1].Weight = -1 }), nil, "models[0].deployments[1].weight"},
		{"huge weight", edit(func(m []llm.ModelConfig) { m[0].Deployments[1].Weight = 1e7 }), nil, "models[0].deployments[1].weight"},
		{"negative rpm", edit(func(m []llm.ModelConfig) { m[0].Deployments[0].RPM = -5 }), nil, "models[0].deployments[0].rpm"},
		{"negative tpm", edit(func(m []llm.ModelConfig) { m[0].Deployments[0].TPM = -5 }), nil, "models[0].deployments[0].tpm"},
		{"dedicated to a bare name", edit(func(m []llm.ModelConfig) { m[0].Deployments[2].DedicatedTo[1] = "enterprise" }), nil, "models[0].deployments[2].dedicated_to[1]"},
		{"dedicated to an unknown kind", edit(func(m []llm.ModelConfig) { m[0].Deployments[2].DedicatedTo[0] = "org:acme" }), nil, "models[0].deployments[2].dedicated_to[0]"},
		{"dedicated to nobody", edit(func(m []llm.ModelConfig) { m[0].Deployments[2].DedicatedTo[0] = "tenant:" }), nil, "models[0].deployments[2].dedicated_to[0]"},
		{"dedicated twice", edit(func(m []llm.ModelConfig) { m[0].Deployments[2].DedicatedTo[1] = "tenant:acme" }), nil, "models[0].deployments[2].dedicated_to[1]"},
		{"row base url beside deployments", edit(func(m []llm.ModelConfig) { m[0].BaseURL = "https://api.openai.com/v1" }), nil, "models[0].base_url"},
		{"row key beside deployments", edit(func(m []llm.ModelConfig) { m[0].APIKeyEnv = "OPENAI_API_KEY" }), nil, "models[0].api_key_env"},
		{"row key in the file beside deployments", edit(func(m []llm.ModelConfig) { m[0].APIKey = llm.NewSecret("sk-file") }), nil, "models[0].api_key"},
		{"unknown fallback", edit(func(m []llm.ModelConfig) { m[0].Fallbacks = []string{"gpt-4o-mini", "claude"} }), nil, "models[0].fallbacks[1]"},
		{"fallback to itself", edit(func(m []llm.ModelConfig) { m[1].Fallbacks = []string{"gpt-4o-mini"} }), nil, "models[1].fallbacks[0]"},
		{"fallback twice", edit(func(m []llm.ModelConfig) { m[0].Fallbacks = []string{"gpt-4o-mini", "gpt-4o-mini"} }), nil, "models[0].fallbacks[1]"},
		{"empty fallback", edit(func(m []llm.ModelConfig) { m[0].Fallbacks = []string{""} }), nil, "models[0].fallbacks[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := routedEnv
			if tt.env != nil {
				getenv = env(tt.env)
			}
			_, err := llm.NewRegistry(tt.models(), getenv)
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.Invalid || e.Field != tt.field {
				t.Fatalf("err = %v, want invalid naming %s", err, tt.field)
			}
			if !strings.Contains(e.Message, tt.field) {
				t.Errorf("message %q does not name %s", e.Message, tt.field)
			}
		})
	}
	if err := llm.ValidateModels(routed()); err != nil {
		t.Errorf("ValidateModels(routed table) = %v", err)
	}
	// The row's provider may be left out when every deployment names one.
	rows := routed()
	rows[0].Provider = ""
	for i := range rows[0].Deployments {
		rows[0].Deployments[i].Provider = "openai"
	}
	if err := llm.ValidateModels(rows); err != nil {
		t.Errorf("ValidateModels(providers on every deployment only) = %v", err)
	}
	// A row on its own names the bare field.
	row := routed()[0]
	row.Deployments[1].BaseURL = "ftp://west"
	var e *errs.Error
	if err := row.Validate(); !errors.As(err, &e) || e.Field != "deployments[1].base_url" {
		t.Errorf("Validate = %v, want field deployments[1].base_url", err)
	}
}

func TestDeploymentsJSON(t *testing.T) {
	var cfgs []llm.ModelConfig
	in := `[{"name":"gpt-4o","provider":"openai","fallbacks":["demo"],
	         "deployments":[{"name":"east","api_key":"sk-in-file","model":"gpt-4o-2024-08-06","weight":2,"rpm":10,"tpm":1000,"dedicated_to":["plan:pro"]}]},
	        {"name":"demo","provider":"simulated"}]`
	if err := json.Unmarshal([]byte(in), &cfgs); err != nil {
		t.Fatal(err)
	}
	d := cfgs[0].Deployments[0]
	if d.Name != "east" || d.APIKey.Reveal() != "sk-in-file" || d.Model != "gpt-4o-2024-08-06" || d.Weight != 2 || d.RPM != 10 || d.TPM != 1000 ||
		len(d.DedicatedTo) != 1 || cfgs[0].Fallbacks[0] != "demo" {
		t.Errorf("parsed %+v, want every field", cfgs[0])
	}
	out, _ := json.Marshal(cfgs)
	if strings.Contains(string(out), "sk-in-file") || !strings.Contains(string(out), `"dedicated_to":["plan:pro"]`) {
		t.Errorf("marshalled %s, want the key redacted and the rest kept", out)
	}
	r, err := llm.NewRegistry(cfgs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := r.Lookup("gpt-4o"); fmt.Sprintf("%+v %#v", m, m.Config()) == "" || strings.Contains(fmt.Sprintf("%+v %#v %v", m, m.Config(), r), "sk-in-file") {
		t.Error("a deployment's key printed")
	}
}
