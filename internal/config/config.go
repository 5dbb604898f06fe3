// Package config owns Sluice's server configuration: defaults, an optional
// YAML file, SLUICE_* environment variables and flags, in that order of
// precedence, and validation that names the field at fault.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/vector"
)

// Config is what `sluice serve` needs to start.
type Config struct {
	// Addr is the HTTP listen address.
	Addr string `yaml:"addr"`
	// DataDir holds the SQLite database and the generated admin key.
	DataDir string `yaml:"data_dir"`
	// DatabaseURL selects the store: "sqlite:PATH", or a postgres:// or
	// postgresql:// URL; empty means SQLite in DataDir. Its password never
	// prints.
	DatabaseURL string `yaml:"database_url"`
	// AdminKey, when set at first start, becomes the first admin's key.
	// Secret: never printed.
	AdminKey Secret `yaml:"admin_key"`
	// SecretKeyEnv names the environment variable holding the server's
	// secret (at least 32 bytes), which seals the upstream keys Sluice
	// forwards with per user and project. Unset or empty: no upstream key
	// can be stored. Rotating it makes the stored keys unreadable (they
	// are set again).
	SecretKeyEnv string `yaml:"secret_key_env"`
	// Log settings.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`
	// MaxBodyBytes bounds admin and API request bodies.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ShutdownTimeout is how long in-flight requests get to finish.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// DefaultGlobalRate caps requests on the whole platform until an admin
	// sets global limits, so a fresh install cannot be flooded: "100/min".
	// "none" removes the cap.
	DefaultGlobalRate string `yaml:"default_global_rate"`
	// UsageFlushInterval is how often usage events queued without a
	// waiting caller are written; a settle waits for its own commit.
	UsageFlushInterval Duration `yaml:"usage_flush_interval"`
	// UsageQueueMax bounds the usage events waiting to be written. When
	// the store falls that far behind, settles answer 503 with Retry-After
	// instead of memory growing; 0 means 100000.
	UsageQueueMax int `yaml:"usage_queue_max"`
	// WhatIfMaxEvents bounds the usage events and runs one policy what-if
	// reads (docs/what-if.md); a longer ledger is refused. 0 means 1000000.
	WhatIfMaxEvents int `yaml:"whatif_max_events"`
	// PolicyPollInterval is how often an instance looks for changes made
	// by others (the shared store's change counter).
	PolicyPollInterval Duration `yaml:"policy_poll_interval"`
	// RunInterruptGrace is how long past its deadline a run still recorded
	// as running is ended as interrupted: the instance executing it
	// stopped (run.Service.ReconcileLost). 0 means 2 minutes.
	RunInterruptGrace Duration `yaml:"run_interrupt_grace"`
	// PolicyFile, when set, is a policy YAML (sluice apply's format) applied
	// at start and again whenever it changes.
	PolicyFile string `yaml:"policy_file"`
	// Models is the model table. Empty: one built-in simulated model, and
	// flows naming any model run on it (demo mode).
	Models []llm.ModelConfig `yaml:"models"`
	// Routing is how calls to a model with several deployments, or with
	// fallbacks, are retried and moved on when a deployment fails.
	Routing Routing `yaml:"routing"`
	// Gateway configures the OpenAI-compatible API under /v1/.
	Gateway Gateway `yaml:"gateway"`
	// Admission is the queue of governed work (runs, gateway calls, the
	// LangFlow front) waiting for a full concurrency limit.
	Admission Admission `yaml:"admission"`
	// Langflow, when its upstream is set, makes Sluice a governing front
	// for an existing LangFlow server (docs/langflow-front.md).
	Langflow Langflow `yaml:"langflow"`
	// Files bounds the files projects keep (uploads, SaveToFile).
	Files Files `yaml:"files"`
	// Vectors configures the local vector store of the flow runtime's
	// FAISS, Chroma and Knowledge components.
	Vectors Vectors `yaml:"vectors"`
	// Tools configures the outside services flows' search components call
	// (Tavily, SearchApi, arXiv): where they are and which environment
	// variable holds each one's key.
	Tools Tools `yaml:"tools"`
	// RedisURL, when set, makes the quota engine shared through Redis
	// (several instances enforce one set of limits); empty keeps it in
	// process. Secret: it may carry a password.
	RedisURL string `yaml:"redis_url"`
	// RedisCluster makes redis_url the seed URL of a Redis Cluster, in
	// go-redis's ParseClusterURL form: redis://HOST:PORT?addr=HOST:PORT&….
	// It needs quota_engine: lease.
	RedisCluster bool `yaml:"redis_cluster"`
	// RedisPrefix is the hash tag of every Redis key (one deployment).
	RedisPrefix string `yaml:"redis_prefix"`
	// RedisTimeout bounds every Redis call (default 100ms). A call past it
	// is sent again when that is safe, then answers 503; it does not by
	// itself switch the engine to local shares (see RedisTripAfter).
	RedisTimeout Duration `yaml:"redis_timeout"`
	// RedisProbeTimeout bounds the health probe (PING and the epoch read)
	// that a failed call triggers and that degraded mode repeats (default
	// 2s). A probe that fails switches to degraded mode; one that succeeds
	// is needed to leave it. It is at least redis_timeout, so that a loaded
	// machine is not taken for an outage.
	RedisProbeTimeout Duration `yaml:"redis_probe_timeout"`
	// RedisTripAfter is how many consecutive failed Redis calls switch to
	// degraded mode without waiting for the probe (default 3); calls that
	// fail together in one stall count once, and any success starts over.
	RedisTripAfter int `yaml:"redis_trip_after"`
	// QuotaEngine picks the shared quota engine behind redis_url:
	// QuotaEngineScript (redisquota, one script per decision; the default)
	// or QuotaEngineLease (leasequota, decisions in process on budget
	// leases). Without redis_url the engine is in process either way.
	QuotaEngine string `yaml:"quota_engine"`
	// Instances is how many instances share the limits while Redis is
	// unreachable (each then admits limit ÷ Instances); 0 counts them from
	// their heartbeats in Redis.
	Instances int `yaml:"instances"`
	// AllowHosts are host[:port] entries the URL and API tools may reach
	// although they are loopback or private (the SSRF guard refuses those
	// otherwise): "vm" allows ports 80 and 443, "vm:8080" that port, "vm:*"
	// any. A URL passes only if the host it names matches, case-insensitively
	// and exactly; another name for the same address does not.
	AllowHosts []string `yaml:"allow_hosts"`
	// MaxToolResponseBytes bounds what one URL or API tool call reads ("10MiB";
	// a URL tool's responses together). A longer response fails the node;
	// no more than this is ever held in memory.
	MaxToolResponseBytes Bytes `yaml:"max_tool_response_bytes"`
	// InProcessRunMemory is the ceiling on the memory the runs executing in
	// the server's own process (those without memory_per_run) may reserve
	// together; a run that does not fit is refused with 503 and Retry-After.
	// It is admission by estimate: the kernel enforces memory only for runs
	// in the sandbox.
	InProcessRunMemory Bytes `yaml:"inprocess_run_memory"`
	// InProcessRunReserve is what each in-process run reserves of
	// InProcessRunMemory before its tools; each URL or API node in its flow
	// adds MaxToolResponseBytes.
	InProcessRunReserve Bytes `yaml:"inprocess_run_reserve"`
	// Sandbox configures the worker processes that execute runs with a
	// memory cap (memory_per_run).
	Sandbox Sandbox `yaml:"sandbox"`
	// MCPServers are the MCP servers flows' MCPTools nodes may use, by
	// name (docs/flows.md#mcp-tools). Only these are ever connected to.
	MCPServers []MCPServer `yaml:"mcp_servers"`
	// Alerts configures quota threshold alerts (docs/alerts.md).
	Alerts Alerts `yaml:"alerts"`
	// Console configures the web console's sessions (docs/console.md).
	Console Console `yaml:"console"`

	// --- Settle bounds (POST /api/v1/quota/settle) ---

	// SettleOverrun is how much more than its ticket reserved a member may
	// settle, per dimension (default 4096 tokens, 60 GPU seconds, 1 USD). Tokens apply
	// only when the ticket's chain sets no max_tokens_per_call; with one,
	// that cap is the allowed overrun.
	SettleOverrun SettleAmounts `yaml:"settle_overrun"`
	// SettleSanity is the most a tenant admin (a service account reporting
	// for its users) or a platform admin may settle on one ticket (default
	// 1e9 tokens, 1e7 GPU seconds, 1e6 USD).
	SettleSanity SettleAmounts `yaml:"settle_sanity"`
}

// Console configures the web console's sign-in sessions.
type Console struct {
	// SessionTTL is how long a console session lasts after sign-in.
	SessionTTL Duration `yaml:"session_ttl"`
	// SecureCookie is "auto" (the session cookie is Secure when the request
	// came over TLS or with X-Forwarded-Proto: https) or "always".
	SecureCookie string `yaml:"secure_cookie"`
}

// SettleAmounts are per-dimension amounts of a settle, in the units
// clients use. Default sets them; a YAML file overrides each one it names.
type SettleAmounts struct {
	Tokens     int64   `yaml:"tokens"` // input + output
	GPUSeconds float64 `yaml:"gpu_seconds"`
	CostUSD    float64 `yaml:"cost_usd"`
}

// Defaults of the settle bounds: a member may overrun a reservation by
// 4096 tokens (when no max_tokens_per_call applies), a minute of GPU time
// and one dollar; an admin may settle up to 10^9 tokens, 10^7 GPU seconds
// and 10^6 USD on one ticket.
var (
	defaultSettleOverrun = SettleAmounts{Tokens: 4096, GPUSeconds: 60, CostUSD: 1}
	defaultSettleSanity  = SettleAmounts{Tokens: 1e9, GPUSeconds: 1e7, CostUSD: 1e6}
)

// SettleUnits are settle amounts in the engine's units.
type SettleUnits struct {
	Tokens, GPUMillis, CostMicros int64
}

// Units returns a in the engine's units. Validate has checked that they
// convert exactly.
func (a SettleAmounts) Units() SettleUnits {
	return SettleUnits{Tokens: a.Tokens, GPUMillis: int64(math.Ceil(a.GPUSeconds * 1000)), CostMicros: int64(math.Ceil(a.CostUSD * 1e6))}
}

// validateSettle checks the settle bounds: non-negative, the sanity bound
// at least the overrun, and small enough that the engines count them
// exactly (2^52 tokens, milliseconds and micro-USD).
func (c *Config) validateSettle() error {
	const exact = 1 << 52
	for _, v := range []struct {
		field string
		a     SettleAmounts
	}{{"settle_overrun", c.SettleOverrun}, {"settle_sanity", c.SettleSanity}} {
		switch a := v.a; {
		case a.Tokens < 0 || a.Tokens > exact:
			return errs.Field(errs.Invalid, v.field+".tokens", "%s.tokens must be between 0 and 2^52", v.field)
		case !(a.GPUSeconds >= 0 && a.GPUSeconds*1000 <= exact):
			return errs.Field(errs.Invalid, v.field+".gpu_seconds", "%s.gpu_seconds must be between 0 and 2^52/1000", v.field)
		case !(a.CostUSD >= 0 && a.CostUSD*1e6 <= exact):
			return errs.Field(errs.Invalid, v.field+".cost_usd", "%s.cost_usd must be between 0 and 2^52/1e6", v.field)
		}
	}
	o, s := c.SettleOverrun.Units(), c.SettleSanity.Units()
	if s.Tokens < o.Tokens || s.GPUMillis < o.GPUMillis || s.CostMicros < o.CostMicros {
		return errs.Field(errs.Invalid, "settle_sanity", "settle_sanity must be at least settle_overrun in every dimension")
	}
	return nil
}

// Sandbox configures sandboxed runs: each run whose caps include
// memory_per_run executes in a worker process held to the cap by a memory
// cgroup.
type Sandbox struct {
	// Unenforced decides the fate of capped runs when the host gives Sluice
	// no writable memory cgroup: "refuse" them (503, saying why), "unready"
	// (refuse them and fail the readiness check, so that an orchestrator
	// sends such a server no traffic) or "run" them in a worker without a
	// limit, recorded memory_enforced: false.
	Unenforced string `yaml:"unenforced"`
	// Workers is how many workers are started ahead of need.
	Workers int `yaml:"workers"`
	// CgroupRoot is the cgroup directory Sluice creates its own group in:
	// empty for the server's own cgroup (v2 where its memory controller is
	// delegated, else v1), "none" to use no cgroup.
	CgroupRoot string `yaml:"cgroup_root"`
	// WorkerCommand starts a worker; empty for this binary with the
	// argument "worker". A wrapper (e.g. a network namespace tool) may go
	// in front.
	WorkerCommand []string `yaml:"worker_command"`
	// WorkerEnv is added to the workers' environment (NAME=value). Workers
	// otherwise get only PATH: never the server's secrets or provider keys.
	WorkerEnv []string `yaml:"worker_env"`
}

// Routing is the policy for models configured with several deployments or
// with fallbacks (docs/models.md): when a failing deployment is cooled down,
// and how the governed call retries before it moves to the next deployment
// or fallback model. It becomes the registry's llm.RouterOptions.
type Routing struct {
	// CooldownAfter is how many consecutive retryable failures (429, 5xx,
	// timeouts, broken connections) cool a deployment down (default 3);
	// 0 never does. At most 1000.
	CooldownAfter int `yaml:"cooldown_after"`
	// CooldownFor is how long a cooled-down deployment is tried only after
	// every healthy one and every fallback (default 30s, at most 1h).
	CooldownFor Duration `yaml:"cooldown_for"`
	// Retries is how many more times one deployment is tried after a
	// retryable failure before the next is (default 1; 0 to 10).
	Retries int `yaml:"retries"`
	// Backoff is the wait before the first retry on a deployment, doubling
	// for each further one (default 200ms, at most 1m); moving to another
	// deployment does not wait.
	Backoff Duration `yaml:"backoff"`
	// AttemptTimeout bounds one attempt on one deployment, so a hung
	// provider is left for the next; 0 (the default) leaves only the
	// caller's own deadline. At most 1h.
	AttemptTimeout Duration `yaml:"attempt_timeout"`
}

// Gateway configures the OpenAI-compatible API (docs/gateway.md).
// Admission configures the wait for a full concurrency limit: instead of
// a 429 at once, such work queues on the full scope, served by plan
// priority and fairly across users, for at most MaxWait.
type Admission struct {
	// MaxWait bounds a wait; 0 refuses at once (no queue).
	MaxWait Duration `yaml:"max_wait"`
	// QueueMax bounds the waiters of one scope.
	QueueMax int `yaml:"queue_max"`
	// QueuePerUser bounds one user's waiters in one scope.
	QueuePerUser int `yaml:"queue_per_user"`
	// PollInterval is how often the head of a queue tries again when no
	// release was seen on this instance (a slot freed on another one).
	PollInterval Duration `yaml:"poll_interval"`
}

type Gateway struct {
	// MaxBodyBytes bounds a /v1/ request body (default 8MiB: prompts with
	// long context or images are larger than admin requests; at most 64MiB).
	MaxBodyBytes Bytes `yaml:"max_body_bytes"`
	// DefaultMaxTokens is the output reserved for a call that asks no
	// max_tokens (default 4096), within the model's context window; the
	// provider is asked for no more than that.
	DefaultMaxTokens int `yaml:"default_max_tokens"`
	// LogPrompts puts each call's last user message in its call log line.
	// Off by default: prompts are the users' data.
	LogPrompts bool `yaml:"log_prompts"`
	// UsageCommit is "durable" (the default: a call answers once its usage
	// event is committed) or "queued" (it answers at once and the event is
	// written within usage_flush_interval; a process killed meanwhile
	// loses those events).
	UsageCommit string `yaml:"usage_commit"`
}

// envVarName matches an environment variable's name.
var envVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Files bounds the files projects keep.
type Files struct {
	// Dir holds the files' bytes; empty is data_dir/files. Instances that
	// share a PostgreSQL database must share this directory too.
	Dir string `yaml:"dir"`
	// MaxFileBytes bounds one file (an upload, a SaveToFile output).
	MaxFileBytes Bytes `yaml:"max_file_bytes"`
	// ProjectQuota bounds all of one project's files together.
	ProjectQuota Bytes `yaml:"project_quota"`
}

// FilesDir is where file bytes are kept.
func (c *Config) FilesDir() string {
	if c.Files.Dir != "" {
		return c.Files.Dir
	}
	return filepath.Join(c.DataDir, "files")
}

// validateFiles checks the file limits.
func (c *Config) validateFiles() error {
	if c.Files.MaxFileBytes < 1<<10 || c.Files.MaxFileBytes > 1<<30 {
		return errs.Field(errs.Invalid, "files.max_file_bytes", "files.max_file_bytes %d is outside 1KiB..1GiB", c.Files.MaxFileBytes)
	}
	if c.Files.ProjectQuota < c.Files.MaxFileBytes || c.Files.ProjectQuota > 1<<40 {
		return errs.Field(errs.Invalid, "files.project_quota", "files.project_quota %s is less than files.max_file_bytes %s or more than 1TiB",
			policy.Bytes(c.Files.ProjectQuota), policy.Bytes(c.Files.MaxFileBytes))
	}
	return nil
}

// Langflow configures the front for an existing LangFlow server.
type Langflow struct {
	// Upstream is the LangFlow server's base URL (http://langflow:7860).
	// Set, Sluice serves LangFlow's run, webhook, build, flow-reading and
	// file routes by proxying them, governed, instead of running flows
	// itself.
	Upstream string `yaml:"upstream"`
	// APIKeyEnv names the environment variable holding the LangFlow API
	// key Sluice forwards with (callers never see it).
	APIKeyEnv string `yaml:"api_key_env"`
	// CodeTenants lists the tenant ids whose callers may use the
	// endpoints that run code on the LangFlow server (validate, custom
	// components, flow create and update); everyone else is refused.
	CodeTenants []string `yaml:"code_tenants"`
	// ChargeReportedUsage charges the tokens LangFlow reports for a run
	// (default true). Turn it off when LangFlow's model components call
	// Sluice's /v1, which meters their tokens exactly: else they count twice.
	ChargeReportedUsage bool `yaml:"charge_reported_usage"`
}

// Vectors configures the flow runtime's local vector store
// (docs/flows.md#embeddings-and-vector-stores).
type Vectors struct {
	// Persist keeps collections in the database (every instance sees
	// them, they outlive a restart); off, each instance keeps them in
	// memory until it stops.
	Persist bool `yaml:"persist"`
	// MaxPerCollection bounds the documents of one collection; an ingest
	// past it fails (422) before anything is embedded.
	MaxPerCollection int `yaml:"max_per_collection"`
	// MaxCollections bounds the collections of one project.
	MaxCollections int `yaml:"max_collections"`
	// MaxDimensions bounds the length of a stored vector.
	MaxDimensions int `yaml:"max_dimensions"`
}

// Limits are the store's bounds.
func (v Vectors) Limits() vector.Limits {
	return vector.Limits{MaxPerCollection: v.MaxPerCollection, MaxCollections: v.MaxCollections, MaxDimensions: v.MaxDimensions}
}

// Tools are the search services of the flow runtime.
type Tools struct {
	Tavily    ToolService `yaml:"tavily"`
	SearchAPI ToolService `yaml:"searchapi"`
	ArXiv     ToolService `yaml:"arxiv"`
}

// ToolService is one outside service: its base URL, which the SSRF guard
// lets its component reach even when it is private, and the environment
// variable holding its key (read at start, never printed).
type ToolService struct {
	BaseURL   string `yaml:"base_url"`
	APIKeyEnv string `yaml:"api_key_env"`
}

// each returns the services with their config paths.
func (t *Tools) each() []struct {
	path string
	s    *ToolService
} {
	return []struct {
		path string
		s    *ToolService
	}{{"tools.tavily", &t.Tavily}, {"tools.searchapi", &t.SearchAPI}, {"tools.arxiv", &t.ArXiv}}
}

// defaultRouting is llm.DefaultRouterOptions in the config's units.
func defaultRouting() Routing {
	o := llm.DefaultRouterOptions()
	return Routing{
		CooldownAfter:  o.CooldownAfter,
		CooldownFor:    Duration(o.CooldownFor),
		Retries:        o.Retries,
		Backoff:        Duration(o.Backoff),
		AttemptTimeout: Duration(o.AttemptTimeout),
	}
}

// RouterOptions returns r for llm.NewRegistryWith.
func (r Routing) RouterOptions() llm.RouterOptions {
	return llm.RouterOptions{
		CooldownAfter:  r.CooldownAfter,
		CooldownFor:    time.Duration(r.CooldownFor),
		Retries:        r.Retries,
		Backoff:        time.Duration(r.Backoff),
		AttemptTimeout: time.Duration(r.AttemptTimeout),
	}
}

// Values of Sandbox.Unenforced.
const (
	UnenforcedRefuse  = "refuse"
	UnenforcedUnready = "unready"
	UnenforcedRun     = "run"
)

// Secret is a string that never prints.
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "<redacted>"
}

// MarshalYAML keeps secrets out of printed configs.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON keeps secrets out of JSON.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// GoString keeps secrets out of %#v.
func (s Secret) GoString() string { return s.String() }

// LogValue keeps secrets out of structured logs.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Duration is a time.Duration written as "15s" in YAML.
type Duration time.Duration

// UnmarshalYAML reads "15s", "2m".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 15s", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as text.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Bytes is a size written as a number of bytes or with a unit: "10MiB",
// "512MB".
type Bytes int64

// UnmarshalYAML reads 10485760 or "10MiB".
func (b *Bytes) UnmarshalYAML(n *yaml.Node) error {
	v, err := policy.ParseBytes(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a size such as 10MiB", n.Line, n.Value)
	}
	*b = Bytes(v)
	return nil
}

// MarshalYAML writes the size with its largest whole binary unit.
func (b Bytes) MarshalYAML() (any, error) { return policy.Bytes(b).String(), nil }

// envInProcess applies the variables of the tool response cap and the
// in-process memory ceiling.
func (c *Config) envInProcess(getenv func(string) string) error {
	for _, v := range []struct {
		name string
		dst  *Bytes
	}{
		{"SLUICE_MAX_TOOL_RESPONSE_BYTES", &c.MaxToolResponseBytes},
		{"SLUICE_INPROCESS_RUN_MEMORY", &c.InProcessRunMemory},
		{"SLUICE_INPROCESS_RUN_RESERVE", &c.InProcessRunReserve},
	} {
		s := getenv(v.name)
		if s == "" {
			continue
		}
		n, err := policy.ParseBytes(s)
		if err != nil {
			return errs.Field(errs.Invalid, v.name, "%s %q is not a size such as 10MiB", v.name, s)
		}
		*v.dst = Bytes(n)
	}
	return nil
}

// validateInProcess checks the tool response cap and the in-process memory
// ceiling: at least one run with one URL or API node must fit.
func (c *Config) validateInProcess() error {
	if c.MaxToolResponseBytes < 1<<10 || c.MaxToolResponseBytes > 1<<30 {
		return errs.Field(errs.Invalid, "max_tool_response_bytes", "max_tool_response_bytes %d is outside 1KiB..1GiB", c.MaxToolResponseBytes)
	}
	if c.InProcessRunReserve < 64<<10 {
		return errs.Field(errs.Invalid, "inprocess_run_reserve", "inprocess_run_reserve %d is under 64KiB", c.InProcessRunReserve)
	}
	if need := c.InProcessRunReserve + c.MaxToolResponseBytes; c.InProcessRunMemory < need {
		return errs.Field(errs.Invalid, "inprocess_run_memory",
			"inprocess_run_memory %s is less than one run with one URL or API tool needs (inprocess_run_reserve + max_tool_response_bytes = %s)",
			policy.Bytes(c.InProcessRunMemory), policy.Bytes(need))
	}
	return nil
}

// The values of quota_engine.
const (
	QuotaEngineScript = "script"
	QuotaEngineLease  = "lease"
)

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		Addr:            "127.0.0.1:8080",
		DataDir:         "./data",
		LogLevel:        "info",
		LogFormat:       "json",
		MaxBodyBytes:    1 << 20,
		ShutdownTimeout: Duration(15 * time.Second),

		DefaultGlobalRate:  "100/min",
		UsageFlushInterval: Duration(100 * time.Millisecond),
		PolicyPollInterval: Duration(500 * time.Millisecond),
		RedisTimeout:       Duration(100 * time.Millisecond),
		RedisProbeTimeout:  Duration(2 * time.Second),
		RedisTripAfter:     3,
		QuotaEngine:        QuotaEngineScript,
		// Printed as applied: the engine and the recorder would take these
		// for empty and 0 too, but --print-config should say what runs.
		RedisPrefix:   "sluice",
		UsageQueueMax: 100_000,
		SettleOverrun: defaultSettleOverrun,
		SettleSanity:  defaultSettleSanity,

		MaxToolResponseBytes: 10 << 20,
		InProcessRunMemory:   512 << 20,
		InProcessRunReserve:  4 << 20,

		Sandbox:      Sandbox{Unenforced: UnenforcedRefuse, Workers: 2},
		Alerts:       defaultAlerts(),
		Console:      Console{SessionTTL: Duration(12 * time.Hour), SecureCookie: "auto"},
		Routing:      defaultRouting(),
		Gateway:      Gateway{MaxBodyBytes: 8 << 20, DefaultMaxTokens: 4096, UsageCommit: "durable"},
		Admission:    Admission{MaxWait: Duration(30 * time.Second), QueueMax: 100, QueuePerUser: 10, PollInterval: Duration(250 * time.Millisecond)},
		Langflow:     Langflow{ChargeReportedUsage: true},
		SecretKeyEnv: "SLUICE_SECRET_KEY",
		Files:        Files{MaxFileBytes: 32 << 20, ProjectQuota: 512 << 20},
		Vectors:      Vectors{Persist: true, MaxPerCollection: 10_000, MaxCollections: 100, MaxDimensions: 4096},
		Tools: Tools{
			Tavily:    ToolService{BaseURL: "https://api.tavily.com", APIKeyEnv: "TAVILY_API_KEY"},
			SearchAPI: ToolService{BaseURL: "https://www.searchapi.io", APIKeyEnv: "SEARCHAPI_API_KEY"},
			ArXiv:     ToolService{BaseURL: "https://export.arxiv.org"},
		},
	}
}

// Parse reads YAML over c. Unknown fields are errors.
func (c *Config) Parse(r io.Reader) error {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return errs.E(errs.Invalid, "config file: %v", err)
	}
	return nil
}

// LoadFile reads the YAML file at path over c.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return errs.Field(errs.Invalid, "config", "read config file: %v", err)
	}
	return c.Parse(bytes.NewReader(b))
}

// Env applies SLUICE_* variables from getenv over c.
func (c *Config) Env(getenv func(string) string) error {
	str := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	str("SLUICE_ADDR", &c.Addr)
	str("SLUICE_DATA", &c.DataDir)
	str("SLUICE_DATABASE_URL", &c.DatabaseURL)
	str("SLUICE_LOG_LEVEL", &c.LogLevel)
	str("SLUICE_LOG_FORMAT", &c.LogFormat)
	str("SLUICE_DEFAULT_GLOBAL_RATE", &c.DefaultGlobalRate)
	str("SLUICE_POLICY_FILE", &c.PolicyFile)
	if err := c.envInProcess(getenv); err != nil {
		return err
	}
	str("SLUICE_LANGFLOW_UPSTREAM", &c.Langflow.Upstream)
	str("SLUICE_REDIS_URL", &c.RedisURL)
	str("SLUICE_REDIS_PREFIX", &c.RedisPrefix)
	if v := getenv("SLUICE_REDIS_CLUSTER"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errs.Field(errs.Invalid, "SLUICE_REDIS_CLUSTER", "SLUICE_REDIS_CLUSTER %q is not true or false", v)
		}
		c.RedisCluster = b
	}
	if v := getenv("SLUICE_INSTANCES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return errs.Field(errs.Invalid, "SLUICE_INSTANCES", "SLUICE_INSTANCES %q is not a whole number", v)
		}
		c.Instances = n
	}
	str("SLUICE_SANDBOX_UNENFORCED", &c.Sandbox.Unenforced)
	str("SLUICE_SANDBOX_CGROUP_ROOT", &c.Sandbox.CgroupRoot)
	if v := getenv("SLUICE_SANDBOX_WORKERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return errs.Field(errs.Invalid, "SLUICE_SANDBOX_WORKERS", "SLUICE_SANDBOX_WORKERS %q is not a whole number", v)
		}
		c.Sandbox.Workers = n
	}
	if v := getenv("SLUICE_ADMIN_KEY"); v != "" {
		c.AdminKey = Secret(v)
	}
	if v := getenv("SLUICE_MAX_BODY_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return errs.Field(errs.Invalid, "SLUICE_MAX_BODY_BYTES", "SLUICE_MAX_BODY_BYTES %q is not a whole number of bytes", v)
		}
		c.MaxBodyBytes = n
	}
	if v := getenv("SLUICE_SHUTDOWN_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errs.Field(errs.Invalid, "SLUICE_SHUTDOWN_TIMEOUT", "SLUICE_SHUTDOWN_TIMEOUT %q is not a duration such as 15s", v)
		}
		c.ShutdownTimeout = Duration(d)
	}
	return nil
}

// Validate checks every field and names the first that is wrong.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return errs.Field(errs.Invalid, "addr", "addr %q is not host:port (e.g. 127.0.0.1:8080)", c.Addr)
	}
	if c.DataDir == "" {
		return errs.Field(errs.Invalid, "data_dir", "data_dir must not be empty")
	}
	if err := validDatabaseURL(c.DatabaseURL); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return errs.Field(errs.Invalid, "log_level", "log_level %q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return errs.Field(errs.Invalid, "log_format", "log_format %q is not json or text", c.LogFormat)
	}
	if c.MaxBodyBytes < 1024 || c.MaxBodyBytes > 64<<20 {
		return errs.Field(errs.Invalid, "max_body_bytes", "max_body_bytes %d is outside 1024..67108864", c.MaxBodyBytes)
	}
	if c.ShutdownTimeout <= 0 {
		return errs.Field(errs.Invalid, "shutdown_timeout", "shutdown_timeout must be positive")
	}
	if c.DefaultGlobalRate != "none" {
		var r policy.RateSpec
		if err := json.Unmarshal([]byte(strconv.Quote(c.DefaultGlobalRate)), &r); err != nil {
			return errs.Field(errs.Invalid, "default_global_rate", "default_global_rate: %v (or \"none\")", err)
		}
	}
	if c.PolicyPollInterval <= 0 || time.Duration(c.PolicyPollInterval) > time.Second {
		return errs.Field(errs.Invalid, "policy_poll_interval", "policy_poll_interval must be between 0 and 1s, so changes reach every instance within a second")
	}
	if c.RunInterruptGrace != 0 && (c.RunInterruptGrace < Duration(time.Second) || c.RunInterruptGrace > Duration(24*time.Hour)) {
		return errs.Field(errs.Invalid, "run_interrupt_grace", "run_interrupt_grace must be between 1s and 24h")
	}
	if c.RedisURL != "" && !strings.HasPrefix(c.RedisURL, "redis://") && !strings.HasPrefix(c.RedisURL, "rediss://") && !strings.HasPrefix(c.RedisURL, "unix://") {
		return errs.Field(errs.Invalid, "redis_url", "redis_url must be redis://HOST:PORT[/DB], rediss://… or unix://…")
	}
	if c.RedisTimeout <= 0 || time.Duration(c.RedisTimeout) > 10*time.Second {
		return errs.Field(errs.Invalid, "redis_timeout", "redis_timeout must be between 0 and 10s")
	}
	if c.RedisProbeTimeout <= 0 || time.Duration(c.RedisProbeTimeout) > time.Minute {
		return errs.Field(errs.Invalid, "redis_probe_timeout", "redis_probe_timeout must be between 0 and 1m")
	}
	if c.RedisTripAfter < 1 || c.RedisTripAfter > 1000 {
		return errs.Field(errs.Invalid, "redis_trip_after", "redis_trip_after must be between 1 and 1000")
	}
	if c.QuotaEngine != QuotaEngineScript && c.QuotaEngine != QuotaEngineLease {
		return errs.Field(errs.Invalid, "quota_engine", "quota_engine must be %q or %q, not %q", QuotaEngineScript, QuotaEngineLease, c.QuotaEngine)
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if c.Instances < 0 || c.Instances > 10000 {
		return errs.Field(errs.Invalid, "instances", "instances must be between 0 (count them) and 10000")
	}
	if strings.ContainsAny(c.RedisPrefix, "{}") {
		return errs.Field(errs.Invalid, "redis_prefix", "redis_prefix must not contain braces (it becomes the hash tag)")
	}
	if err := llm.ValidateModels(c.Models); err != nil {
		return err
	}
	if g := c.Gateway; g.MaxBodyBytes < 1024 || g.MaxBodyBytes > 64<<20 {
		return errs.Field(errs.Invalid, "gateway.max_body_bytes", "gateway.max_body_bytes %d is outside 1KiB..64MiB", int64(g.MaxBodyBytes))
	}
	if a := c.Admission; a.MaxWait < 0 || time.Duration(a.MaxWait) > 10*time.Minute {
		return errs.Field(errs.Invalid, "admission.max_wait", "admission.max_wait must be between 0 (no queue) and 10m")
	}
	if a := c.Admission; a.MaxWait > 0 && (a.QueueMax < 1 || a.QueueMax > 100_000) {
		return errs.Field(errs.Invalid, "admission.queue_max", "admission.queue_max must be between 1 and 100000")
	}
	if a := c.Admission; a.MaxWait > 0 && (a.QueuePerUser < 1 || a.QueuePerUser > a.QueueMax) {
		return errs.Field(errs.Invalid, "admission.queue_per_user", "admission.queue_per_user must be between 1 and admission.queue_max")
	}
	if a := c.Admission; a.MaxWait > 0 && (a.PollInterval < Duration(10*time.Millisecond) || time.Duration(a.PollInterval) > 10*time.Second) {
		return errs.Field(errs.Invalid, "admission.poll_interval", "admission.poll_interval must be between 10ms and 10s")
	}
	if t := time.Duration(c.Console.SessionTTL); t < time.Minute || t > 30*24*time.Hour {
		return errs.Field(errs.Invalid, "console.session_ttl", "console.session_ttl %s must be between 1m and 720h", t)
	}
	if v := c.Console.SecureCookie; v != "auto" && v != "always" {
		return errs.Field(errs.Invalid, "console.secure_cookie", "console.secure_cookie %q is not auto or always", v)
	}
	if u := c.Gateway.UsageCommit; u != "durable" && u != "queued" {
		return errs.Field(errs.Invalid, "gateway.usage_commit", "gateway.usage_commit %q is not durable or queued", u)
	}
	if g := c.Gateway; g.DefaultMaxTokens < 1 || g.DefaultMaxTokens > 1_000_000 {
		return errs.Field(errs.Invalid, "gateway.default_max_tokens", "gateway.default_max_tokens %d is outside 1..1000000", g.DefaultMaxTokens)
	}
	if u := c.Langflow.Upstream; u != "" {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.User != nil {
			return errs.Field(errs.Invalid, "langflow.upstream", "langflow.upstream %q is not an http(s) URL without credentials", u)
		}
	}
	if v := c.SecretKeyEnv; v != "" && !envVarName.MatchString(v) {
		return errs.Field(errs.Invalid, "secret_key_env", "secret_key_env %q is not an environment variable name", v)
	}
	if v := c.Vectors.MaxPerCollection; v < 1 || v > 1_000_000 {
		return errs.Field(errs.Invalid, "vectors.max_per_collection", "vectors.max_per_collection %d is outside 1..1000000", v)
	}
	if v := c.Vectors.MaxCollections; v < 1 || v > 100_000 {
		return errs.Field(errs.Invalid, "vectors.max_collections", "vectors.max_collections %d is outside 1..100000", v)
	}
	if v := c.Vectors.MaxDimensions; v < 1 || v > 65_536 {
		return errs.Field(errs.Invalid, "vectors.max_dimensions", "vectors.max_dimensions %d is outside 1..65536", v)
	}
	for _, t := range c.Tools.each() {
		if u := t.s.BaseURL; u != "" {
			pu, err := url.Parse(u)
			if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.User != nil || pu.RawQuery != "" {
				return errs.Field(errs.Invalid, t.path+".base_url", "%s.base_url %q is not an http(s) URL without credentials or query", t.path, u)
			}
		}
		if v := t.s.APIKeyEnv; v != "" && !envVarName.MatchString(v) {
			return errs.Field(errs.Invalid, t.path+".api_key_env", "%s.api_key_env %q is not an environment variable name", t.path, v)
		}
	}
	if v := c.Langflow.APIKeyEnv; v != "" && !envVarName.MatchString(v) {
		return errs.Field(errs.Invalid, "langflow.api_key_env", "langflow.api_key_env %q is not an environment variable name", v)
	}
	// llm names the fields as this section does: routing.cooldown_for.
	if err := c.Routing.RouterOptions().Validate(); err != nil {
		return err
	}
	if c.UsageFlushInterval <= 0 || time.Duration(c.UsageFlushInterval) > 10*time.Second {
		return errs.Field(errs.Invalid, "usage_flush_interval", "usage_flush_interval must be between 0 and 10s")
	}
	if c.UsageQueueMax < 0 || c.UsageQueueMax > 10_000_000 {
		return errs.Field(errs.Invalid, "usage_queue_max", "usage_queue_max must be between 0 (the default, 100000) and 10000000")
	}
	if c.WhatIfMaxEvents < 0 || c.WhatIfMaxEvents > 100_000_000 {
		return errs.Field(errs.Invalid, "whatif_max_events", "whatif_max_events must be between 0 (the default, 1000000) and 100000000")
	}
	if err := c.validateFiles(); err != nil {
		return err
	}
	if err := c.validateInProcess(); err != nil {
		return err
	}
	if err := c.validateSettle(); err != nil {
		return err
	}
	if err := c.validateMCP(); err != nil {
		return err
	}
	if err := c.validateAlerts(); err != nil {
		return err
	}
	return c.Sandbox.validate()
}

func (s *Sandbox) validate() error {
	switch s.Unenforced {
	case UnenforcedRefuse, UnenforcedUnready, UnenforcedRun:
	default:
		return errs.Field(errs.Invalid, "sandbox.unenforced", "sandbox.unenforced %q is not refuse, unready or run", s.Unenforced)
	}
	if s.Workers < 1 || s.Workers > 256 {
		return errs.Field(errs.Invalid, "sandbox.workers", "sandbox.workers %d is outside 1..256", s.Workers)
	}
	if s.CgroupRoot != "" && s.CgroupRoot != "none" && !strings.HasPrefix(s.CgroupRoot, "/") {
		return errs.Field(errs.Invalid, "sandbox.cgroup_root", "sandbox.cgroup_root %q is not an absolute path or none", s.CgroupRoot)
	}
	if len(s.WorkerCommand) > 0 && strings.TrimSpace(s.WorkerCommand[0]) == "" {
		return errs.Field(errs.Invalid, "sandbox.worker_command", "sandbox.worker_command must start with a program")
	}
	for i, kv := range s.WorkerEnv {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || name == "" || strings.ContainsAny(name, " \t\n") {
			return errs.Field(errs.Invalid, fmt.Sprintf("sandbox.worker_env[%d]", i), "sandbox.worker_env[%d] is not NAME=value", i)
		}
	}
	return nil
}

// validateCluster checks redis_cluster: a seed URL that go-redis parses,
// and the lease engine.
func (c *Config) validateCluster() error {
	if !c.RedisCluster {
		return nil
	}
	if c.RedisURL == "" {
		return errs.Field(errs.Invalid, "redis_cluster", "redis_cluster needs redis_url, the cluster's seed URL")
	}
	if c.QuotaEngine != QuotaEngineLease {
		return errs.Field(errs.Invalid, "redis_cluster",
			"redis_cluster needs quota_engine: lease: the script engine keeps every key on one hash tag, so a cluster would put all its load on one primary")
	}
	// url.Parse's error quotes the URL, password and all.
	if _, err := url.Parse(c.RedisURL); err != nil {
		return errs.Field(errs.Invalid, "redis_url", "redis_url %s is not a valid URL", RedactURL(c.RedisURL))
	}
	if _, err := redis.ParseClusterURL(c.RedisURL); err != nil {
		return errs.Field(errs.Invalid, "redis_url", "redis_url is not a Redis Cluster seed URL (redis://HOST:PORT?addr=HOST:PORT&addr=…): %v", err)
	}
	return nil
}

// GlobalDefault is the spec the global scope has until an admin sets one.
func (c *Config) GlobalDefault() policy.Spec {
	var s policy.Spec
	if c.DefaultGlobalRate == "none" {
		return s
	}
	var r policy.RateSpec
	if json.Unmarshal([]byte(strconv.Quote(c.DefaultGlobalRate)), &r) == nil {
		s.Requests = &r
	}
	return s
}

// SQLitePath is the database file: from database_url "sqlite:PATH", else
// sluice.db in the data directory.
func (c *Config) SQLitePath() string {
	if p, ok := strings.CutPrefix(c.DatabaseURL, "sqlite:"); ok && p != "" {
		return p
	}
	return strings.TrimRight(c.DataDir, "/") + "/sluice.db"
}

func validDatabaseURL(s string) error {
	switch {
	case s == "", strings.HasPrefix(s, "sqlite:"):
		return nil
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		// The parse error would quote the URL, password and all.
		if _, err := url.Parse(s); err != nil {
			return errs.Field(errs.Invalid, "database_url", "database_url %s is not a valid URL", RedactURL(s))
		}
		return nil
	}
	return errs.Field(errs.Invalid, "database_url", "database_url %s is not sqlite:PATH, postgres://… or postgresql://…", RedactURL(s))
}

// RedactURL replaces the password of a database URL, and any password
// parameter, with "xxxxx". (sqlstore.Redact does the same for the store's
// errors; config does not import the store.)
func RedactURL(s string) string {
	const mask = "xxxxx"
	u, err := url.Parse(s)
	if err != nil {
		if strings.Contains(s, "@") || strings.Contains(strings.ToLower(s), "password") {
			return "<unparseable database URL>"
		}
		return s
	}
	changed := false
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), mask)
		changed = true
	}
	if strings.Contains(strings.ToLower(u.RawQuery), "password") {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			u.RawQuery = mask
		} else {
			for k := range q {
				if strings.Contains(strings.ToLower(k), "password") {
					q.Set(k, mask)
				}
			}
			u.RawQuery = q.Encode()
		}
		changed = true
	}
	if !changed {
		return s
	}
	return u.String()
}

// String prints the config as YAML, secrets redacted: the admin key, and
// the password in database_url.
func (c Config) String() string {
	c.DatabaseURL = RedactURL(c.DatabaseURL)
	c.RedisURL = RedactURL(c.RedisURL)
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Sprintf("config: %v", err)
	}
	return string(b)
}

// InterruptGrace is RunInterruptGrace with its default applied.
func (c *Config) InterruptGrace() time.Duration {
	if c.RunInterruptGrace == 0 {
		return 2 * time.Minute
	}
	return time.Duration(c.RunInterruptGrace)
}
