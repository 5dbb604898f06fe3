package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/admission"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/console"
	"github.com/sluicehq/sluice/internal/console/session"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/front"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/gateway"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/policydoc"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/redisqueue"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sandbox"
	"github.com/sluicehq/sluice/internal/sealed"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/vector"
)

// App is a whole Sluice server: built from a Config, started on a listener,
// stopped by cancelling the context given to Serve. It touches no signals and
// no globals, so tests start it on 127.0.0.1:0.
type App struct {
	cfg      config.Config
	log      *slog.Logger
	stdout   io.Writer
	store    *sqlstore.Store
	tenancy  *tenancy.Service
	policy   *policy.Service
	credits  *policy.Credits
	engine   *engine
	recorder *usage.Recorder
	meter    *metering.Meter
	metrics  *metrics.Metrics
	runs     *run.Service
	files    *files.Service
	gate     *gate.Gate
	models   *llm.Registry
	front    *front.Handler   // nil unless langflow.upstream is set
	web      *console.Console // its runs are stopped after the server drains
	sandbox  *sandbox.Sandbox
	sealer   *sealed.Box // nil without a server secret
	alerts   appAlerts
	ln       net.Listener
	srv      *http.Server

	stopBackground context.CancelFunc
	background     sync.WaitGroup
}

// NewApp opens the store, applies migrations and makes sure a first admin
// exists. stdout receives the one-time banner with a generated admin key.
func NewApp(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}
	store, err := sqlstore.Open(ctx, cfg.DatabaseURL, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	log.Info("store open", slog.String("store", store.Dialect()), slog.String("database", sqlstore.Redact(cfg.DatabaseURL)))
	a := &App{cfg: cfg, log: log, stdout: stdout, store: store, tenancy: tenancy.NewService(store, log)}
	if err := a.openSealer(); err != nil {
		store.Close()
		return nil, err
	}
	if err := a.bootstrap(ctx); err != nil {
		store.Close()
		return nil, err
	}
	if err := a.startQuota(ctx); err != nil {
		store.Close()
		return nil, err
	}
	// What an upload cut short by a crash left on disk (no record names
	// it) goes; an hour's grace spares uploads under way on other
	// instances sharing the directory.
	if n, err := a.files.Sweep(ctx, time.Hour); err != nil {
		a.log.Warn("sweeping the file directory failed", slog.String("error", err.Error()))
	} else if n > 0 {
		a.log.Info("removed files that uploads cut short left behind", slog.Int("files", n))
	}
	return a, nil
}

// openSealer derives the box upstream keys are sealed with from the
// server secret in secret_key_env's variable. Unset, nothing can be
// stored (and the operator is told when someone tries); too short, the
// server does not start.
func (a *App) openSealer() error {
	env := a.cfg.SecretKeyEnv
	if env == "" {
		return nil
	}
	v := os.Getenv(env)
	if v == "" {
		if a.cfg.Langflow.Upstream != "" {
			a.log.Info("no server secret: per-user and per-project LangFlow keys cannot be stored; every call forwards with langflow.api_key_env's key",
				slog.String("secret_key_env", env))
		}
		return nil
	}
	box, err := sealed.New([]byte(v))
	if err != nil {
		return fmt.Errorf("secret_key_env: %s: %w", env, err)
	}
	a.tenancy.SetSealer(box)
	a.sealer = box
	return nil
}

// startQuota loads the policy, starts the engine and the usage recorder,
// and rebuilds the current windows' budgets from recorded usage, so a
// restart resets nobody's budget.
func (a *App) startQuota(ctx context.Context) error {
	global := a.cfg.GlobalDefault()
	if global.IsZero() {
		a.log.Warn("no default global rate: until an admin sets global limits, nothing caps the platform's total requests")
	}
	mgr := policy.NewManager(a.store, global, a.log)
	a.policy = policy.NewService(a.store, mgr, a.log)
	a.credits = policy.NewCredits(a.store, a.policy)
	if err := a.policy.EnsureDefaultPlans(ctx); err != nil {
		return fmt.Errorf("default plans: %w", err)
	}
	if err := mgr.Reload(ctx); err != nil {
		return fmt.Errorf("load policy: %w", err)
	}
	a.tenancy.OnChange = func(ctx context.Context) {
		if err := mgr.Reload(context.WithoutCancel(ctx)); err != nil {
			a.log.Error("policy reload after a tenancy change failed", slog.String("error", err.Error()))
		}
	}
	eng, err := a.newEngine(ctx, func(mode string) {
		if a.metrics != nil {
			a.metrics.SetMode(mode)
		}
	})
	if err != nil {
		return err
	}
	a.engine = eng
	a.metrics = metrics.New(func() float64 { return float64(a.recorder.Pending()) })
	a.recorder = usage.NewRecorder(a.store, a.log, time.Duration(a.cfg.UsageFlushInterval),
		usage.WithQueueMax(a.cfg.UsageQueueMax), usage.WithObserver(a.metrics))
	a.meter = metering.New(a.watchAdmissions(a.engine), mgr, a.recorder, a.log)
	a.meter.Ledger = a.store.UsageEvent
	a.meter.Credit = a.credits
	a.meter.OnDecision = func(kind, result, dim string) { a.metrics.Decisions.WithLabelValues(kind, result, dim).Inc() }
	a.meter.OnSettle = a.metrics.Settlements.Inc
	if f, ok := a.engine.Backend.(*quota.Failover); ok {
		a.meter.OnCommitted = f.Committed
	}
	if aq := a.cfg.Admission; aq.MaxWait > 0 {
		o := admission.Options{
			MaxQueue: aq.QueueMax, MaxPerFlow: aq.QueuePerUser, MaxWait: time.Duration(aq.MaxWait), Poll: time.Duration(aq.PollInterval),
			OnDone: func(c admission.Class, waited time.Duration, outcome string) {
				a.metrics.QueueWaits.WithLabelValues(c.String(), outcome).Observe(waited.Seconds())
			},
		}
		if a.engine.redis != nil {
			// Several instances: one fair queue per scope, in Redis.
			o.Board, o.Instance = redisqueue.New(a.engine.redis, a.cfg.RedisPrefix), a.engine.id
			var last atomic.Int64
			o.OnBoardError = func(err error) {
				if now := time.Now().UnixNano(); now-last.Load() > int64(10*time.Second) {
					last.Store(now)
					a.log.Warn("admission queue: the shared order in redis cannot be used; ordering this instance's waiters alone", slog.String("error", err.Error()))
				}
			}
		}
		a.meter.Queue = admission.New(o)
		a.metrics.SetQueueLength(a.meter.Queue.Len)
	}
	mgr.OnReload = func(s *policy.Snapshot) {
		a.tenancy.ForgetKeys() // a change made through another instance may have revoked a key
		a.engine.tenantsChanged()
		a.metrics.PolicyVersion.Set(float64(s.Version))
		a.metrics.SetMode(a.mode())
	}
	mgr.OnReload(mgr.Current())
	backend, n := "memory", 0
	if a.engine.shared {
		// Redis holds the counters, unless it has no epoch (new, restarted
		// empty, flushed): then one instance rebuilds them from the ledger
		// before any is admitted against them.
		backend = "redis"
		restorer := a.meter
		if a.engine.rebuildVia != nil {
			backend = "redis lease"
			restorer = metering.New(a.engine.rebuildVia, mgr, a.recorder, a.log)
		}
		a.engine.restore = func(ctx context.Context) (time.Time, int, error) {
			if err := a.recorder.Flush(ctx); err != nil {
				return time.Time{}, 0, fmt.Errorf("flush usage events: %w", err)
			}
			n, readAt, err := restorer.RestoreRead(ctx, a.store)
			return readAt, n, err
		}
		if _, err := a.engine.rebuild(ctx); err != nil {
			a.log.Error("quota counters in redis not confirmed at start: deciding on local shares until they are",
				slog.String("error", err.Error()))
		}
	} else if n, err = a.meter.Restore(ctx, a.store); err != nil {
		a.recorder.Close()
		a.engine.Close()
		return fmt.Errorf("restore usage counters: %w", err)
	}
	a.log.Info("quota engine ready", slog.String("backend", backend), slog.Int("restored_rollups", n))
	return a.startRuns()
}

// startRuns builds the model registry and the flow runtime.
func (a *App) startRuns() error {
	models, err := llm.NewRegistryWith(a.cfg.Models, os.Getenv, llm.RegistryOptions{Router: new(a.cfg.Routing.RouterOptions())})
	if err != nil {
		return fmt.Errorf("models: %w", err)
	}
	demo := len(a.cfg.Models) == 0
	if demo {
		a.log.Warn("no model table configured: every model runs on the built-in simulated model, whose answers are marked simulated")
	}
	llm.WarmTokenizers()
	guard := &run.Guard{AllowHosts: a.cfg.AllowHosts, MaxResponseBytes: int64(a.cfg.MaxToolResponseBytes)}
	if err := guard.Validate(); err != nil {
		return fmt.Errorf("allow_hosts: %w", err)
	}
	if err := a.startAlerts(guard); err != nil {
		return err
	}
	ro := models.RouterOptions()
	a.gate = &gate.Gate{Meter: a.meter, Log: a.log, Health: models, Engine: a.engine,
		Retry: gate.Retry{Retries: ro.Retries, Backoff: ro.Backoff, AttemptTimeout: ro.AttemptTimeout},
		OnModelCall: func(model, provider, outcome string, in, out int) {
			a.metrics.ModelCalls.WithLabelValues(model, provider, outcome).Inc()
			a.metrics.Tokens.WithLabelValues(model, "input").Add(float64(in))
			a.metrics.Tokens.WithLabelValues(model, "output").Add(float64(out))
		}}
	a.models = models
	if err := a.startFront(); err != nil {
		return err
	}
	mcpServers, err := mcpServers(a.cfg, os.Getenv)
	if err != nil {
		return err
	}
	a.files = &files.Service{Store: a.store, Dir: a.cfg.FilesDir(), MaxFileBytes: int64(a.cfg.Files.MaxFileBytes),
		ProjectQuota: int64(a.cfg.Files.ProjectQuota), Log: a.log}
	exec := &run.Executor{Meter: a.meter, Models: models, Messages: a.store, Guard: guard,
		Log: a.log, DemoModels: demo, Gate: a.gate, Files: a.files,
		Vectors: newVectorStore(a.cfg.Vectors, a.store), Tools: toolServices(a.cfg.Tools, os.Getenv),
		MCPServers: mcpServers}
	a.runs = &run.Service{Store: a.store, Tenancy: a.tenancy, Exec: exec, Log: a.log,
		OnRunEnd: func(st run.Status) { a.metrics.Runs.WithLabelValues(string(st)).Inc() }}
	// Runs without memory_per_run execute here, where no kernel limit holds
	// them: the ceiling admits them by estimate instead.
	a.runs.InProcess = &run.MemoryCeiling{Total: int64(a.cfg.InProcessRunMemory),
		PerRun: int64(a.cfg.InProcessRunReserve), PerTool: int64(a.cfg.MaxToolResponseBytes)}
	a.log.Warn("runs without memory_per_run execute in the server process: the kernel does NOT enforce their memory; "+
		"they are admitted against the in-process run memory ceiling, by estimate",
		slog.String("inprocess_run_memory", policy.Bytes(a.cfg.InProcessRunMemory).String()),
		slog.String("inprocess_run_reserve", policy.Bytes(a.cfg.InProcessRunReserve).String()),
		slog.String("max_tool_response_bytes", policy.Bytes(a.cfg.MaxToolResponseBytes).String()))
	return a.startSandbox(exec)
}

// bootstrap creates the first platform admin and key if there is none.
func (a *App) bootstrap(ctx context.Context) error {
	res, err := a.tenancy.Bootstrap(ctx, string(a.cfg.AdminKey))
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if !res.Created {
		if a.cfg.AdminKey != "" {
			a.log.Info("bootstrap: an admin already exists; SLUICE_ADMIN_KEY is ignored")
		}
		return nil
	}
	if res.Secret == "" {
		a.log.Info("bootstrap: first platform admin created with the key from SLUICE_ADMIN_KEY", slog.String("user", res.UserID))
		return nil
	}
	path := filepath.Join(a.cfg.DataDir, "admin.key")
	if err := os.WriteFile(path, []byte(res.Secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fmt.Fprintf(a.stdout, "\nSluice created the first platform admin. Its API key is shown this once\n"+
		"and saved to %s (mode 0600):\n\n    %s\n\n", path, res.Secret)
	a.log.Info("bootstrap: first platform admin created; key written to file", slog.String("user", res.UserID), slog.String("file", path))
	return nil
}

// Listen binds the configured address.
func (a *App) Listen() error {
	ln, err := net.Listen("tcp", a.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.Addr, err)
	}
	a.ln = ln
	return nil
}

// Addr is the bound address (useful with port 0).
func (a *App) Addr() string { return a.ln.Addr().String() }

// Handler is the app's HTTP handler.
func (a *App) Handler() http.Handler {
	api := &httpapi.Server{
		Version:      version,
		Tenancy:      a.tenancy,
		Policy:       a.policy,
		Requests:     policy.NewRequests(a.store, a.policy),
		Credits:      a.credits,
		Meter:        a.meter,
		Metrics:      a.metrics,
		Quarantine:   a.store,
		Runs:         a.runs,
		Files:        a.files,
		Log:          a.log,
		MaxBodyBytes: a.cfg.MaxBodyBytes,
		Settle:       settleBounds(&a.cfg),
		Ready: func(ctx context.Context) map[string]error {
			return map[string]error{"store": a.store.Ping(ctx), "sandbox": a.sandboxReady()}
		},
		Sandbox: func() string { return string(a.sandbox.Mode()) },
		Mode:    a.mode,
		Gateway: &gateway.Handler{Auth: a.tenancy, Gate: a.gate, Models: a.models, Policy: a.policy.Manager(), Log: a.log,
			Demo: len(a.cfg.Models) == 0, MaxBodyBytes: int64(a.cfg.Gateway.MaxBodyBytes),
			MaxTokensDefault: a.cfg.Gateway.DefaultMaxTokens, LogPrompts: a.cfg.Gateway.LogPrompts,
			QueueUsage: a.cfg.Gateway.UsageCommit == "queued"},
		Alerts: a.alerts.service,
		WhatIf: whatIfOptions(&a.cfg),
	}
	if a.front != nil {
		api.Front, api.FrontPaths = a.front, front.Paths
	}
	a.web = a.console(api.Requests)
	api.Console = a.web.Handler()
	return api.Handler()
}

// console builds the web console over the app's services.
func (a *App) console(requests *policy.Requests) *console.Console {
	return &console.Console{Tenancy: a.tenancy, Policy: a.policy, Meter: a.meter, Requests: requests, Runs: a.runs,
		Ledger: a.store, Names: a.store, Mode: a.mode, Log: a.log, SecureCookie: a.cfg.Console.SecureCookie,
		Sessions: session.NewManager(a.store, a.tenancy, time.Duration(a.cfg.Console.SessionTTL), nil), WhatIf: whatIfOptions(&a.cfg)}
}

// settleBounds resolves the configured settle bounds for the API.
func settleBounds(c *config.Config) *httpapi.SettleBounds {
	o, s := c.SettleOverrun.Units(), c.SettleSanity.Units()
	return &httpapi.SettleBounds{OverrunTokens: o.Tokens, OverrunGPUMillis: o.GPUMillis, OverrunCostMicros: o.CostMicros,
		SanityTokens: s.Tokens, SanityGPUMillis: s.GPUMillis, SanityCostMicros: s.CostMicros}
}

// Serve serves until ctx is cancelled, then drains in-flight requests for
// up to the shutdown timeout and closes the store.
func (a *App) Serve(ctx context.Context) error {
	if a.ln == nil {
		if err := a.Listen(); err != nil {
			return err
		}
	}
	a.srv = &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.log.Info("sluice serving", slog.String("addr", a.Addr()), slog.String("store", a.store.Dialect()), slog.String("version", version))
	a.startBackground()
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(a.ln) }()
	select {
	case err := <-errc:
		a.web.Close()
		a.endBackground()
		a.closeQuota()
		a.store.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("sluice shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(a.cfg.ShutdownTimeout))
	defer cancel()
	err := a.srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	a.web.Close()
	a.endBackground()
	a.closeQuota()
	return errors.Join(err, a.store.Close())
}

// mode is the quota engine's mode: read_only (set by an admin), degraded
// (the shared store is unreachable) or normal.
func (a *App) mode() string {
	switch {
	case a.policy.Manager().Current().Platform().ReadOnly:
		return "read_only"
	case a.engine != nil && a.engine.degraded.Load():
		return "degraded"
	}
	return "normal"
}

// startBackground starts the goroutines the app owns: the policy watch
// (changes made on other instances) and the policy file watch.
func (a *App) startBackground() {
	ctx, cancel := context.WithCancel(context.Background())
	a.stopBackground = cancel
	mgr := a.policy.Manager()
	if a.runs != nil {
		// Cancels asked through another instance for runs executing here.
		a.background.Add(1)
		go func() {
			defer a.background.Done()
			a.runs.WatchCancels(ctx, time.Second)
		}()
		// Runs left running by an instance that was killed.
		a.background.Add(1)
		go func() {
			defer a.background.Done()
			a.runs.ReconcileLost(ctx, a.cfg.InterruptGrace(), time.Now)
		}()
	}
	if q := a.meter.Queue; q != nil {
		a.background.Add(1)
		go func() {
			defer a.background.Done()
			q.Run(ctx) // serves the shared order (a no-op without Redis)
		}()
	}
	a.background.Add(1)
	go func() {
		defer a.background.Done()
		mgr.Watch(ctx, time.Duration(a.cfg.PolicyPollInterval), a.store.ChangeVersion)
	}()
	a.runAlerts(ctx)
	a.background.Add(1)
	go func() {
		defer a.background.Done()
		a.settleCreditDraws(ctx, time.Minute)
	}()
	if a.cfg.PolicyFile != "" {
		ap := &policydoc.Applier{Tenancy: a.tenancy, Policy: a.policy}
		a.background.Add(1)
		go func() {
			defer a.background.Done()
			ap.WatchFile(ctx, a.cfg.PolicyFile, time.Second, a.log)
		}()
	}
}

// endBackground stops the app's goroutines and waits for them.
func (a *App) endBackground() {
	if a.stopBackground != nil {
		a.stopBackground()
	}
	a.background.Wait()
}

// closeQuota stops the sandbox's workers, writes out queued usage and stops
// the engine.
func (a *App) closeQuota() {
	if err := a.sandbox.Close(); err != nil {
		a.log.Warn("closing the sandbox", slog.String("error", err.Error()))
	}
	a.recorder.Close()
	a.engine.Close()
}

// startFront builds the front for an existing LangFlow, when configured.
func (a *App) startFront() error {
	lf := a.cfg.Langflow
	if lf.Upstream == "" {
		return nil
	}
	u, err := url.Parse(lf.Upstream)
	if err != nil {
		return fmt.Errorf("langflow.upstream: %w", err)
	}
	var key llm.Secret
	if lf.APIKeyEnv != "" {
		v := strings.TrimSpace(os.Getenv(lf.APIKeyEnv))
		if v == "" {
			return fmt.Errorf("langflow.api_key_env: environment variable %s is not set", lf.APIKeyEnv)
		}
		key = llm.NewSecret(v)
	}
	a.front = &front.Handler{Upstream: u, Key: key, Keys: a.tenancy, Auth: a.tenancy, Gate: a.gate, Log: a.log,
		CodeTenants: lf.CodeTenants, ChargeReportedUsage: lf.ChargeReportedUsage}
	a.log.Info("governing an existing LangFlow: its run, webhook, build, flow and file routes are proxied; Sluice's own flow runtime is off for them",
		slog.String("upstream", u.Redacted()), slog.Bool("charge_reported_usage", lf.ChargeReportedUsage))
	return nil
}

// newVectorStore is the flow runtime's vector store: the database's, or
// this process's memory when vectors.persist is off.
func newVectorStore(c config.Vectors, store *sqlstore.Store) vector.Store {
	if c.Persist {
		return store.Vectors(c.Limits())
	}
	return vector.NewMemory(c.Limits())
}

// toolServices are the search services of the configuration, each key read
// from the environment variable it names (a missing key refuses that
// service's nodes at run time, with the variable to set).
func toolServices(t config.Tools, getenv func(string) string) map[string]run.ToolService {
	out := map[string]run.ToolService{}
	for name, c := range map[string]config.ToolService{run.ServiceTavily: t.Tavily, run.ServiceSearchAPI: t.SearchAPI, run.ServiceArXiv: t.ArXiv} {
		svc := run.ToolService{BaseURL: c.BaseURL, KeyEnv: c.APIKeyEnv}
		if c.APIKeyEnv != "" {
			svc.Key = llm.NewSecret(strings.TrimSpace(getenv(c.APIKeyEnv)))
		}
		out[name] = svc
	}
	return out
}

// creditSettleDelay is how long after a window ends its credit draws are
// settled: the window's last usage events are in the ledger by then.
const creditSettleDelay = 5 * time.Minute

// settleCreditDraws gives back, every interval, what credit draws of
// ended windows did not use (policy.Credits.SettleDraws).
func (a *App) settleCreditDraws(ctx context.Context, every time.Duration) {
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		if _, err := a.credits.SettleDraws(ctx, time.Now().Add(-creditSettleDelay), a.store.WindowUse); err != nil && ctx.Err() == nil {
			a.log.Warn("settling credit draws", slog.String("error", err.Error()))
		}
	}
}
