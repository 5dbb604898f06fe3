package llm

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
)

// ModelConfig is one row of the model table operators configure, e.g. in
// YAML:
//
//	models:
//	  - name: gpt-4o-mini
//	    provider: openai
//	    api_key_env: OPENAI_API_KEY
//	    input_price_per_mtok: 0.15
//	    output_price_per_mtok: 0.60
//	    context_window: 128000
//	    default: true
//	  - name: llama3.1:70b
//	    provider: ollama
//	    base_url: http://gpu-box:11434
//	    gpu: true
//	    cpu_fallback: llama3.2:3b
//	  - name: llama3.2:3b
//	    provider: ollama
//
// Name is the model's name both to Sluice's callers and to the provider.
type ModelConfig struct {
	Name     string `yaml:"name" json:"name"`
	Provider string `yaml:"provider" json:"provider"` // openai, ollama, huggingface, simulated
	// BaseURL defaults per provider (DefaultOpenAIBaseURL, …).
	BaseURL string `yaml:"base_url,omitempty" json:"base_url,omitempty"`
	// APIKeyEnv names the environment variable holding the key. Preferred
	// over APIKey, so keys stay out of files.
	APIKeyEnv string `yaml:"api_key_env,omitempty" json:"api_key_env,omitempty"`
	// APIKey is the key, resolved from APIKeyEnv by NewRegistry (or set in
	// the file). It never prints.
	APIKey Secret `yaml:"api_key,omitempty" json:"api_key,omitzero"`
	// Prices in USD per million tokens; Cost uses them.
	InputPricePerMTok  float64 `yaml:"input_price_per_mtok,omitempty" json:"input_price_per_mtok,omitempty"`
	OutputPricePerMTok float64 `yaml:"output_price_per_mtok,omitempty" json:"output_price_per_mtok,omitempty"`
	// GPU marks a model that runs on a GPU: its calls need GPU quota and are
	// metered in GPU time.
	GPU bool `yaml:"gpu,omitempty" json:"gpu,omitempty"`
	// ContextWindow is the model's input+output limit in tokens; 0 unknown.
	ContextWindow int `yaml:"context_window,omitempty" json:"context_window,omitempty"`
	// CPUFallback names the model (not a GPU one) to use when GPU quota is
	// refused; empty means the call is refused instead.
	CPUFallback string `yaml:"cpu_fallback,omitempty" json:"cpu_fallback,omitempty"`
	// Default marks the model used when a flow or request names none. At
	// most one; without one, the first model is the default.
	Default bool `yaml:"default,omitempty" json:"default,omitempty"`
	// Latency and TokenLatency pace a simulated model (SimulatedOptions);
	// ignored by the other providers. Written "200ms".
	Latency      Duration `yaml:"latency,omitempty" json:"latency,omitempty"`
	TokenLatency Duration `yaml:"token_latency,omitempty" json:"token_latency,omitempty"`
}

// Duration is a time.Duration written as "15s" in YAML and JSON.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes "15s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads "15s", "200ms".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 200ms", b)
	}
	*d = Duration(v)
	return nil
}

var (
	envName   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	providers = []string{ProviderOpenAI, ProviderOllama, ProviderHuggingFace, ProviderSimulated}
)

// Validate checks one model on its own, naming the field at fault
// ("provider"). ValidateModels checks a table and names the row.
func (c ModelConfig) Validate() error {
	return c.validate("")
}

func (c ModelConfig) validate(prefix string) error {
	bad := func(field, format string, args ...any) error {
		return errs.Field(errs.Invalid, prefix+field, prefix+field+": "+format, args...)
	}
	switch {
	case strings.TrimSpace(c.Name) == "":
		return bad("name", "must not be empty")
	case strings.IndexFunc(c.Name, func(r rune) bool { return r <= ' ' }) >= 0:
		return bad("name", "%q must not contain spaces", c.Name)
	}
	known := false
	for _, p := range providers {
		known = known || c.Provider == p
	}
	if !known {
		return bad("provider", "%q is not one of %s", c.Provider, strings.Join(providers, ", "))
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("base_url", "%q is not an http(s) URL", c.BaseURL)
		}
		if u.User != nil {
			return bad("base_url", "must not carry credentials; use api_key_env")
		}
	}
	if c.APIKeyEnv != "" && !envName.MatchString(c.APIKeyEnv) {
		return bad("api_key_env", "%q is not an environment variable name", c.APIKeyEnv)
	}
	for _, p := range []struct {
		field string
		v     float64
	}{{"input_price_per_mtok", c.InputPricePerMTok}, {"output_price_per_mtok", c.OutputPricePerMTok}} {
		if p.v < 0 || math.IsNaN(p.v) || math.IsInf(p.v, 0) || p.v > 1e6 {
			return bad(p.field, "%v is not a price in USD per million tokens", p.v)
		}
	}
	if c.ContextWindow < 0 {
		return bad("context_window", "must not be negative")
	}
	if c.CPUFallback == c.Name {
		return bad("cpu_fallback", "must name another model")
	}
	if c.Latency < 0 {
		return bad("latency", "must not be negative")
	}
	if c.TokenLatency < 0 {
		return bad("token_latency", "must not be negative")
	}
	return nil
}

// ValidateModels checks a model table: every row, unique names, at most one
// default, and fallbacks that name a model of the table that needs no GPU.
// Errors name the field as "models[2].provider".
func ValidateModels(models []ModelConfig) error {
	index := make(map[string]int, len(models))
	def := -1
	for i, m := range models {
		prefix := fmt.Sprintf("models[%d].", i)
		if err := m.validate(prefix); err != nil {
			return err
		}
		if j, dup := index[m.Name]; dup {
			return errs.Field(errs.Invalid, prefix+"name", "%sname: %q is already models[%d]", prefix, m.Name, j)
		}
		index[m.Name] = i
		if m.Default {
			if def >= 0 {
				return errs.Field(errs.Invalid, prefix+"default", "%sdefault: models[%d] is already the default", prefix, def)
			}
			def = i
		}
	}
	for i, m := range models {
		if m.CPUFallback == "" {
			continue
		}
		field := fmt.Sprintf("models[%d].cpu_fallback", i)
		j, ok := index[m.CPUFallback]
		if !ok {
			return errs.Field(errs.Invalid, field, "%s: %q is not a model in the table", field, m.CPUFallback)
		}
		if models[j].GPU {
			return errs.Field(errs.Invalid, field, "%s: %q needs a GPU itself", field, m.CPUFallback)
		}
	}
	return nil
}

// Model is a configured model ready to call. It is immutable and safe for
// concurrent use, and itself a Provider that fills in Request.Model.
type Model struct {
	cfg      ModelConfig
	provider Provider
	// Prices in pico-USD per token (USD per MTok × 10⁶), integers so Cost
	// rounds exactly.
	inPico, outPico int64
}

var _ Provider = (*Model)(nil)

// Name is the model's name.
func (m *Model) Name() string { return m.cfg.Name }

// Config returns the model's row of the table (its key redacted when
// printed).
func (m *Model) Config() ModelConfig { return m.cfg }

// Provider returns the backend that serves the model.
func (m *Model) Provider() Provider { return m.provider }

// Chat calls the model, with r.Model set to its name.
func (m *Model) Chat(ctx context.Context, r Request) (Response, error) {
	r.Model = m.cfg.Name
	return m.provider.Chat(ctx, r)
}

// Stream streams from the model, with r.Model set to its name.
func (m *Model) Stream(ctx context.Context, r Request, onDelta func(string)) (Response, error) {
	r.Model = m.cfg.Name
	return m.provider.Stream(ctx, r, onDelta)
}

// Cost is what u costs at the model's prices, in micro-USD, rounded up (a
// call is never free because it was small). Computed in integers: prices
// are held to 10⁻⁶ USD per million tokens.
func (m *Model) Cost(u Usage) int64 {
	in, out := max(int64(u.InputTokens), 0), max(int64(u.OutputTokens), 0)
	pico := in*m.inPico + out*m.outPico
	if pico <= 0 {
		return 0
	}
	return (pico + 999_999) / 1_000_000
}

// CountTokens counts the input tokens msgs cost on this model (see the
// package-level CountTokens).
func (m *Model) CountTokens(msgs []Message) int {
	if m.cfg.Provider == ProviderSimulated {
		return countMessages(encoders[encO200k], msgs)
	}
	return CountTokens(m.cfg.Name, msgs)
}

// CountRequest counts the input tokens of r on this model, tool
// definitions included: the figure to reserve before a call, with
// MaxTokens added for the output.
func (m *Model) CountRequest(r Request) int {
	if m.cfg.Provider == ProviderSimulated {
		e := encoders[encO200k]
		return countMessages(e, r.Messages) + countTools(e, r.Tools)
	}
	r.Model = m.cfg.Name
	return CountRequest(r)
}

// CountText counts the tokens of s on this model.
func (m *Model) CountText(s string) int {
	if m.cfg.Provider == ProviderSimulated {
		return encoders[encO200k].count(s)
	}
	return CountText(m.cfg.Name, s)
}

// String names the model and its provider, never its key.
func (m *Model) String() string {
	if m == nil {
		return "<nil model>"
	}
	return fmt.Sprintf("model %s (%s)", m.cfg.Name, m.cfg.Provider)
}

// Format prints the model as String does under every verb, so that even
// %+v and %#v, which would walk the fields, show no key.
func (m *Model) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, m.String()) }

// Registry is the model table in use: immutable, safe for concurrent use.
type Registry struct {
	models []*Model
	byName map[string]*Model
	def    *Model
}

// NewRegistry validates models, resolves each APIKeyEnv with getenv, and
// builds each model's provider. An empty table gives a registry holding one
// model, "simulated" (provider simulated, no latency), as the default. A
// key variable that is named but empty is an error (naming
// models[i].api_key_env): a model that can only fail should stop start-up,
// not the first request.
func NewRegistry(models []ModelConfig, getenv func(string) string) (*Registry, error) {
	if len(models) == 0 {
		models = []ModelConfig{{Name: ProviderSimulated, Provider: ProviderSimulated, Default: true}}
	}
	if err := ValidateModels(models); err != nil {
		return nil, err
	}
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	r := &Registry{byName: make(map[string]*Model, len(models))}
	for i, c := range models {
		if c.APIKeyEnv != "" {
			v := strings.TrimSpace(getenv(c.APIKeyEnv))
			if v == "" {
				field := fmt.Sprintf("models[%d].api_key_env", i)
				return nil, errs.Field(errs.Invalid, field, "%s: environment variable %s is not set", field, c.APIKeyEnv)
			}
			c.APIKey = NewSecret(v)
		}
		m := &Model{
			cfg:     c,
			inPico:  int64(math.Round(c.InputPricePerMTok * 1e6)),
			outPico: int64(math.Round(c.OutputPricePerMTok * 1e6)),
		}
		switch c.Provider {
		case ProviderOpenAI:
			m.provider = NewOpenAI(c.BaseURL, c.APIKey, nil)
		case ProviderOllama:
			m.provider = NewOllama(c.BaseURL, c.APIKey, nil)
		case ProviderHuggingFace:
			m.provider = NewHuggingFace(c.BaseURL, c.APIKey, nil)
		case ProviderSimulated:
			m.provider = NewSimulated(SimulatedOptions{Latency: time.Duration(c.Latency), TokenLatency: time.Duration(c.TokenLatency)})
		}
		r.models = append(r.models, m)
		r.byName[c.Name] = m
		if c.Default {
			r.def = m
		}
	}
	if r.def == nil {
		r.def = r.models[0]
	}
	return r, nil
}

// Lookup returns the model called name. An unknown or empty name is an
// errs.Invalid error on the field "model".
func (r *Registry) Lookup(name string) (*Model, error) {
	if name == "" {
		return nil, errs.Field(errs.Invalid, "model", "model must be named")
	}
	if m, ok := r.byName[name]; ok {
		return m, nil
	}
	return nil, errs.Field(errs.Invalid, "model", "unknown model %q", name)
}

// Default returns the default model.
func (r *Registry) Default() *Model { return r.def }

// Names lists the models in table order.
func (r *Registry) Names() []string {
	names := make([]string, len(r.models))
	for i, m := range r.models {
		names[i] = m.cfg.Name
	}
	return names
}

// Models lists the models in table order.
func (r *Registry) Models() []*Model { return append([]*Model(nil), r.models...) }

// String lists the models, never a key.
func (r *Registry) String() string {
	if r == nil {
		return "<nil registry>"
	}
	parts := make([]string, len(r.models))
	for i, m := range r.models {
		parts[i] = m.cfg.Name + "(" + m.cfg.Provider + ")"
	}
	return "models: " + strings.Join(parts, ", ") + "; default " + r.def.cfg.Name
}

// Format prints the registry as String does under every verb.
func (r *Registry) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, r.String()) }
