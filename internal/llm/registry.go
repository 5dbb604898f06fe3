package llm

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/url"
	"regexp"
	"strings"
	"sync"
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
//	  - name: gpt-4o
//	    provider: openai
//	    fallbacks: [gpt-4o-mini]
//	    deployments:
//	      - {name: east, base_url: https://east.example/v1, api_key_env: EAST_KEY, weight: 3, rpm: 500}
//	      - {name: west, base_url: https://west.example/v1, api_key_env: WEST_KEY}
//	      - {name: acme, api_key_env: ACME_KEY, dedicated_to: ["tenant:acme"]}
//
// Name is the model's name to Sluice's callers, and to the provider unless
// a deployment says otherwise (DeploymentConfig.Model). A row without
// deployments is served by one deployment made of its own provider,
// base_url and key, named after the model.
type ModelConfig struct {
	Name string `yaml:"name" json:"name"`
	// Provider is openai, ollama, huggingface or simulated. With
	// deployments it is their default and may be left out if each names
	// its own.
	Provider string `yaml:"provider" json:"provider"`
	// BaseURL defaults per provider (DefaultOpenAIBaseURL, …). A model with
	// deployments sets it, and the key, on each deployment instead.
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
	// Deployments are the places the model is served from, among which
	// Registry.Route spreads calls by weight. Empty: the row itself is the
	// one deployment.
	Deployments []DeploymentConfig `yaml:"deployments,omitempty" json:"deployments,omitempty"`
	// Fallbacks name other models of the table to try, in order, once
	// every deployment of this one has failed with a retryable error
	// (see Registry.Route). Unlike CPUFallback it is about failures, not
	// quota.
	Fallbacks []string `yaml:"fallbacks,omitempty" json:"fallbacks,omitempty"`
}

// DeploymentConfig is one place a model is served from: a provider, base
// URL and key, with the provider's own limits for it. Prices, GPU use and
// the context window are the model's.
type DeploymentConfig struct {
	// Name is unique within its model; default "<model>#<index>"
	// ("gpt-4o#0"). Usage events and logs record it.
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// Provider defaults to the model's.
	Provider string `yaml:"provider,omitempty" json:"provider,omitempty"`
	// BaseURL defaults per provider, as ModelConfig.BaseURL.
	BaseURL string `yaml:"base_url,omitempty" json:"base_url,omitempty"`
	// APIKeyEnv and APIKey are as in ModelConfig. Nothing is inherited from
	// the model: a key is only ever sent where its deployment says.
	APIKeyEnv string `yaml:"api_key_env,omitempty" json:"api_key_env,omitempty"`
	APIKey    Secret `yaml:"api_key,omitempty" json:"api_key,omitzero"`
	// Model is the name the provider knows (Azure's deployment name, a
	// dated snapshot, another vendor's spelling); default the model's name.
	Model string `yaml:"model,omitempty" json:"model,omitempty"`
	// Weight is the deployment's share of its group's traffic relative to
	// the others'. Absent (0) means 1; there is no standby weight: a
	// deployment for failures only belongs in a fallback model.
	Weight int `yaml:"weight,omitempty" json:"weight,omitempty"`
	// RPM and TPM are the provider's requests and tokens per minute for
	// this deployment; 0 means none known.
	RPM int64 `yaml:"rpm,omitempty" json:"rpm,omitempty"`
	TPM int64 `yaml:"tpm,omitempty" json:"tpm,omitempty"`
	// DedicatedTo reserves the deployment: "plan:<name>" or
	// "tenant:<tenant id>" entries. Those callers are routed to it before
	// the model's other deployments; nobody else's calls ever are.
	DedicatedTo []string `yaml:"dedicated_to,omitempty" json:"dedicated_to,omitempty"`
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
// ("provider", "deployments[1].base_url"). ValidateModels checks a table
// and names the row.
func (c ModelConfig) Validate() error {
	return c.validate("")
}

// invalid is an errs.Invalid error on field whose message starts with it.
func invalid(field, format string, args ...any) error {
	return errs.Field(errs.Invalid, field, field+": "+format, args...)
}

// validName is a name without spaces or control characters.
func validName(s string) bool {
	return strings.TrimSpace(s) != "" && strings.IndexFunc(s, func(r rune) bool { return r <= ' ' }) < 0
}

func knownProvider(p string) bool {
	for _, q := range providers {
		if p == q {
			return true
		}
	}
	return false
}

// validateEndpoint checks a base URL and a key variable name.
func validateEndpoint(prefix, baseURL, apiKeyEnv string) error {
	if baseURL != "" {
		u, err := url.Parse(baseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid(prefix+"base_url", "%q is not an http(s) URL", baseURL)
		}
		if u.User != nil {
			return invalid(prefix+"base_url", "must not carry credentials; use api_key_env")
		}
	}
	if apiKeyEnv != "" && !envName.MatchString(apiKeyEnv) {
		return invalid(prefix+"api_key_env", "%q is not an environment variable name", apiKeyEnv)
	}
	return nil
}

func (c ModelConfig) validate(prefix string) error {
	bad := func(field, format string, args ...any) error {
		return invalid(prefix+field, format, args...)
	}
	switch {
	case strings.TrimSpace(c.Name) == "":
		return bad("name", "must not be empty")
	case !validName(c.Name):
		return bad("name", "%q must not contain spaces", c.Name)
	}
	// With deployments the row's provider is only their default.
	if !knownProvider(c.Provider) && (len(c.Deployments) == 0 || c.Provider != "") {
		return bad("provider", "%q is not one of %s", c.Provider, strings.Join(providers, ", "))
	}
	if len(c.Deployments) > 0 {
		// A key on the row would be sent wherever a deployment points;
		// each deployment names its own instead.
		switch {
		case c.BaseURL != "":
			return bad("base_url", "set it on each deployment: a model with deployments has no endpoint of its own")
		case c.APIKeyEnv != "":
			return bad("api_key_env", "set it on each deployment: a model with deployments has no key of its own")
		case !c.APIKey.IsZero():
			return bad("api_key", "set it on each deployment: a model with deployments has no key of its own")
		}
	} else if err := validateEndpoint(prefix, c.BaseURL, c.APIKeyEnv); err != nil {
		return err
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
	names := make(map[string]int, len(c.Deployments))
	for j, d := range c.Deployments {
		dprefix := fmt.Sprintf("%sdeployments[%d].", prefix, j)
		if err := d.validate(dprefix, c.Provider); err != nil {
			return err
		}
		name := deploymentName(c.Name, j, d)
		if k, dup := names[name]; dup {
			return invalid(dprefix+"name", "%q is already deployments[%d]", name, k)
		}
		names[name] = j
	}
	for k, f := range c.Fallbacks {
		field := fmt.Sprintf("%sfallbacks[%d]", prefix, k)
		switch {
		case f == "":
			return invalid(field, "must name a model")
		case f == c.Name:
			return invalid(field, "must name another model")
		}
		for l := range k {
			if c.Fallbacks[l] == f {
				return invalid(field, "%q is already fallbacks[%d]", f, l)
			}
		}
	}
	return nil
}

// deploymentName is d's name: its own, or "<model>#<index>".
func deploymentName(model string, index int, d DeploymentConfig) string {
	if d.Name != "" {
		return d.Name
	}
	return fmt.Sprintf("%s#%d", model, index)
}

// Dedication kinds, the prefixes of DeploymentConfig.DedicatedTo entries.
const (
	dedicatedPlan   = "plan"
	dedicatedTenant = "tenant"
)

// validate checks a deployment; defProvider is its model's provider.
func (d DeploymentConfig) validate(prefix, defProvider string) error {
	if d.Name != "" && !validName(d.Name) {
		return invalid(prefix+"name", "%q must not contain spaces", d.Name)
	}
	switch p := d.Provider; {
	case p == "" && defProvider == "":
		return invalid(prefix+"provider", "must be set, here or on the model (one of %s)", strings.Join(providers, ", "))
	case p != "" && !knownProvider(p):
		return invalid(prefix+"provider", "%q is not one of %s", p, strings.Join(providers, ", "))
	}
	if err := validateEndpoint(prefix, d.BaseURL, d.APIKeyEnv); err != nil {
		return err
	}
	if d.Model != "" && !validName(d.Model) {
		return invalid(prefix+"model", "%q must not contain spaces", d.Model)
	}
	if d.Weight < 0 || d.Weight > maxWeight {
		return invalid(prefix+"weight", "%d is not between 1 and %d (absent means 1)", d.Weight, maxWeight)
	}
	if d.RPM < 0 {
		return invalid(prefix+"rpm", "must not be negative (0 means no limit)")
	}
	if d.TPM < 0 {
		return invalid(prefix+"tpm", "must not be negative (0 means no limit)")
	}
	for k, e := range d.DedicatedTo {
		field := fmt.Sprintf("%sdedicated_to[%d]", prefix, k)
		kind, id, ok := strings.Cut(e, ":")
		if !ok || (kind != dedicatedPlan && kind != dedicatedTenant) || !validName(id) {
			return invalid(field, "%q is not plan:<name> or tenant:<tenant id>", e)
		}
		for l := range k {
			if d.DedicatedTo[l] == e {
				return invalid(field, "%q is already dedicated_to[%d]", e, l)
			}
		}
	}
	return nil
}

// maxWeight bounds a deployment's weight, so weights add up without
// overflow and a typo (weight: 10000000) is caught.
const maxWeight = 1_000_000

// ValidateModels checks a model table: every row, unique names, at most one
// default, CPU fallbacks that name a model of the table that needs no GPU,
// and fallbacks that name a model of the table. Errors name the field as
// "models[2].provider" or "models[2].deployments[1].base_url".
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
		for k, f := range m.Fallbacks {
			if _, ok := index[f]; !ok {
				return invalid(fmt.Sprintf("models[%d].fallbacks[%d]", i, k), "%q is not a model in the table", f)
			}
		}
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

// Model is one deployment of a configured model, ready to call. It is
// immutable and safe for concurrent use, and itself a Provider that fills
// in Request.Model with the deployment's upstream name. Its health (see
// Registry.Report) is kept by the registry that made it.
type Model struct {
	cfg      ModelConfig // the row, with the deployment's provider, base URL and key
	provider Provider
	// Prices in pico-USD per token (USD per MTok × 10⁶), integers so Cost
	// rounds exactly.
	inPico, outPico int64

	deployment  string
	upstream    string
	weight      int
	rpm, tpm    int64
	dedicatedTo []string
	dedication  []dedication // dedicatedTo parsed, for Route
	health      *health
}

// dedication is one parsed DedicatedTo entry.
type dedication struct {
	plan bool // else a tenant
	id   string
}

var _ Provider = (*Model)(nil)

// Name is the model's public name: what callers ask for, and what quota
// and usage events record. Every deployment of a model has the same.
func (m *Model) Name() string { return m.cfg.Name }

// Deployment is the deployment's name, unique within its model (the
// model's own name for a model configured without deployments).
func (m *Model) Deployment() string { return m.deployment }

// Upstream is the model's name at the provider, which Chat and Stream send.
func (m *Model) Upstream() string { return m.upstream }

// RPM is the provider's requests-per-minute limit for this deployment, 0
// when none is configured.
func (m *Model) RPM() int64 { return m.rpm }

// TPM is the provider's tokens-per-minute limit for this deployment, 0
// when none is configured.
func (m *Model) TPM() int64 { return m.tpm }

// DedicatedTo lists the "plan:<name>" and "tenant:<id>" callers the
// deployment is reserved for; empty means anyone's.
func (m *Model) DedicatedTo() []string { return append([]string(nil), m.dedicatedTo...) }

// Config returns the model's row of the table with this deployment's
// provider, base URL and key in place of the row's (its key redacted when
// printed).
func (m *Model) Config() ModelConfig { return m.cfg }

// Provider returns the backend that serves the deployment.
func (m *Model) Provider() Provider { return m.provider }

// Chat calls the model, with r.Model set to its upstream name.
func (m *Model) Chat(ctx context.Context, r Request) (Response, error) {
	r.Model = m.upstream
	return m.provider.Chat(ctx, r)
}

// Stream streams from the model, with r.Model set to its upstream name.
func (m *Model) Stream(ctx context.Context, r Request, onDelta func(string)) (Response, error) {
	r.Model = m.upstream
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
// package-level CountTokens). The tokenizer is chosen by the upstream
// name, the one the provider counts with.
func (m *Model) CountTokens(msgs []Message) int {
	if m.cfg.Provider == ProviderSimulated {
		return countMessages(encoders[encO200k], msgs)
	}
	return CountTokens(m.upstream, msgs)
}

// CountRequest counts the input tokens of r on this model, tool
// definitions included: the figure to reserve before a call, with
// MaxTokens added for the output.
func (m *Model) CountRequest(r Request) int {
	if m.cfg.Provider == ProviderSimulated {
		e := encoders[encO200k]
		return countMessages(e, r.Messages) + countTools(e, r.Tools)
	}
	r.Model = m.upstream
	return CountRequest(r)
}

// CountText counts the tokens of s on this model.
func (m *Model) CountText(s string) int {
	if m.cfg.Provider == ProviderSimulated {
		return encoders[encO200k].count(s)
	}
	return CountText(m.upstream, s)
}

// String names the model, its deployment when it has several, and its
// provider, never its key.
func (m *Model) String() string {
	if m == nil {
		return "<nil model>"
	}
	if m.deployment != m.cfg.Name {
		return fmt.Sprintf("model %s deployment %s (%s)", m.cfg.Name, m.deployment, m.cfg.Provider)
	}
	return fmt.Sprintf("model %s (%s)", m.cfg.Name, m.cfg.Provider)
}

// Format prints the model as String does under every verb, so that even
// %+v and %#v, which would walk the fields, show no key.
func (m *Model) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, m.String()) }

// Registry is the model table in use, and the router over its deployments.
// The table is immutable; deployment health changes (Report). Safe for
// concurrent use.
type Registry struct {
	models []*Model // each model's first deployment, in table order
	byName map[string]*route
	def    *Model

	opts  RouterOptions
	now   func() time.Time
	rndMu sync.Mutex
	rnd   *rand.Rand // nil: math/rand/v2's global source, which needs no lock
}

// RegistryOptions tune NewRegistryWith. The zero value gives what
// NewRegistry does.
type RegistryOptions struct {
	// Router is the routing policy; nil means DefaultRouterOptions().
	Router *RouterOptions
	// Now is the clock of cooldowns; nil means time.Now.
	Now func() time.Time
	// Rand draws the weighted order of deployments; nil means
	// math/rand/v2's global source. Tests seed one.
	Rand *rand.Rand
}

// NewRegistry is NewRegistryWith with the default options.
func NewRegistry(models []ModelConfig, getenv func(string) string) (*Registry, error) {
	return NewRegistryWith(models, getenv, RegistryOptions{})
}

// NewRegistryWith validates models and the router options, resolves each
// APIKeyEnv with getenv, and builds each deployment's provider. An empty
// table gives a registry holding one model, "simulated" (provider
// simulated, no latency), as the default. A key variable that is named but
// empty is an error (naming models[i].api_key_env or
// models[i].deployments[j].api_key_env): a model that can only fail should
// stop start-up, not the first request.
func NewRegistryWith(models []ModelConfig, getenv func(string) string, o RegistryOptions) (*Registry, error) {
	if len(models) == 0 {
		models = []ModelConfig{{Name: ProviderSimulated, Provider: ProviderSimulated, Default: true}}
	}
	if err := ValidateModels(models); err != nil {
		return nil, err
	}
	r := &Registry{byName: make(map[string]*route, len(models)), opts: DefaultRouterOptions(), now: o.Now, rnd: o.Rand}
	if o.Router != nil {
		if err := o.Router.Validate(); err != nil {
			return nil, err
		}
		r.opts = *o.Router
	}
	if r.now == nil {
		r.now = time.Now
	}
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	for i, c := range models {
		deps := c.Deployments
		prefix := fmt.Sprintf("models[%d].", i)
		if len(deps) == 0 {
			deps = []DeploymentConfig{{Name: c.Name, Provider: c.Provider, BaseURL: c.BaseURL, APIKeyEnv: c.APIKeyEnv, APIKey: c.APIKey}}
		}
		rt := &route{fallbacks: c.Fallbacks}
		for j, d := range deps {
			dprefix := prefix
			if len(c.Deployments) > 0 {
				dprefix = fmt.Sprintf("%sdeployments[%d].", prefix, j)
			}
			if d.APIKeyEnv != "" {
				v := strings.TrimSpace(getenv(d.APIKeyEnv))
				if v == "" {
					field := dprefix + "api_key_env"
					return nil, errs.Field(errs.Invalid, field, "%s: environment variable %s is not set", field, d.APIKeyEnv)
				}
				d.APIKey = NewSecret(v)
			}
			m := newModel(c, j, d)
			rt.deps = append(rt.deps, m)
			if len(m.dedication) > 0 {
				rt.dedicated = append(rt.dedicated, m)
			} else {
				rt.open = append(rt.open, m)
			}
		}
		r.models = append(r.models, rt.deps[0])
		r.byName[c.Name] = rt
		if c.Default {
			r.def = rt.deps[0]
		}
	}
	if r.def == nil {
		r.def = r.models[0]
	}
	r.chainFallbacks()
	return r, nil
}

// newModel builds deployment index of row c; d's key is resolved.
func newModel(c ModelConfig, index int, d DeploymentConfig) *Model {
	cfg := c
	if d.Provider != "" {
		cfg.Provider = d.Provider
	}
	cfg.BaseURL, cfg.APIKeyEnv, cfg.APIKey = d.BaseURL, d.APIKeyEnv, d.APIKey
	m := &Model{
		cfg:         cfg,
		inPico:      int64(math.Round(c.InputPricePerMTok * 1e6)),
		outPico:     int64(math.Round(c.OutputPricePerMTok * 1e6)),
		deployment:  deploymentName(c.Name, index, d),
		upstream:    cmp.Or(d.Model, c.Name),
		weight:      cmp.Or(d.Weight, 1),
		rpm:         d.RPM,
		tpm:         d.TPM,
		dedicatedTo: d.DedicatedTo,
		health:      new(health),
	}
	for _, e := range d.DedicatedTo {
		kind, id, _ := strings.Cut(e, ":")
		m.dedication = append(m.dedication, dedication{plan: kind == dedicatedPlan, id: id})
	}
	switch cfg.Provider {
	case ProviderOpenAI:
		m.provider = NewOpenAI(cfg.BaseURL, cfg.APIKey, nil)
	case ProviderOllama:
		m.provider = NewOllama(cfg.BaseURL, cfg.APIKey, nil)
	case ProviderHuggingFace:
		m.provider = NewHuggingFace(cfg.BaseURL, cfg.APIKey, nil)
	case ProviderSimulated:
		m.provider = NewSimulated(SimulatedOptions{Latency: time.Duration(c.Latency), TokenLatency: time.Duration(c.TokenLatency)})
	}
	return m
}

// Lookup returns the model called name: its first deployment. An unknown
// or empty name is an errs.Invalid error on the field "model". Calls that
// should be spread over the model's deployments and fall back on failure
// use Route instead.
func (r *Registry) Lookup(name string) (*Model, error) {
	rt, err := r.route(name)
	if err != nil {
		return nil, err
	}
	return rt.deps[0], nil
}

func (r *Registry) route(name string) (*route, error) {
	if name == "" {
		return nil, errs.Field(errs.Invalid, "model", "model must be named")
	}
	if rt, ok := r.byName[name]; ok {
		return rt, nil
	}
	return nil, errs.Field(errs.Invalid, "model", "unknown model %q", name)
}

// Deployments lists the deployments of the model called name in table
// order, dedicated ones included (for start-up work such as registering
// their rpm/tpm limits, not for choosing one: see Route).
func (r *Registry) Deployments(name string) ([]*Model, error) {
	rt, err := r.route(name)
	if err != nil {
		return nil, err
	}
	return append([]*Model(nil), rt.deps...), nil
}

// Default returns the default model (its first deployment).
func (r *Registry) Default() *Model { return r.def }

// Names lists the models in table order.
func (r *Registry) Names() []string {
	names := make([]string, len(r.models))
	for i, m := range r.models {
		names[i] = m.cfg.Name
	}
	return names
}

// Models lists the models in table order, one entry (the first
// deployment) per model.
func (r *Registry) Models() []*Model { return append([]*Model(nil), r.models...) }

// String lists the models and their deployments, never a key.
func (r *Registry) String() string {
	if r == nil {
		return "<nil registry>"
	}
	parts := make([]string, len(r.models))
	for i, m := range r.models {
		deps := r.byName[m.cfg.Name].deps
		if len(deps) == 1 && deps[0].deployment == m.cfg.Name {
			parts[i] = m.cfg.Name + "(" + m.cfg.Provider + ")"
			continue
		}
		each := make([]string, len(deps))
		for j, d := range deps {
			each[j] = d.deployment + " " + d.cfg.Provider
		}
		parts[i] = m.cfg.Name + "(" + strings.Join(each, ", ") + ")"
	}
	return "models: " + strings.Join(parts, ", ") + "; default " + r.def.cfg.Name
}

// Format prints the registry as String does under every verb.
func (r *Registry) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, r.String()) }
