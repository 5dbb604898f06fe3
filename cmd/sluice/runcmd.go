package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/usage"
)

// runLocal runs a flow file in this process, without a server: sluice run
// FLOW.json --input "…". Model calls still go through a quota engine (with
// the safe default global rate) and are metered; chat history for Memory
// lives in a SQLite file under the data directory, per session.
func runLocal(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	input := fs.String("input", "", "the run's input value")
	inputType := fs.String("input-type", "chat", "chat, text or any")
	session := fs.String("session", "", "session id (Memory components remember per session)")
	tweaks := fs.String("tweaks", "", `JSON tweaks, e.g. {"Prompt-abc":{"template":"…"}}`)
	asJSON := fs.Bool("json", false, "print LangFlow's full JSON response")
	stream := fs.Bool("stream", false, "print tokens as they arrive")
	configFile := fs.String("config", getenv("SLUICE_CONFIG"), "YAML config file with a model table (env SLUICE_CONFIG)")
	data := fs.String("data", "", "data directory for chat history (default ./data)")
	fs.Usage = flagUsage(fs, stderr, "run", "run a flow file in this process, without a server", "sluice run FLOW.json [flags]",
		`The flow is a LangFlow export. Its model calls go through a quota engine with the default global
limits and are metered; models come from --config's model table (docs/models.md). The server's
client command is sluice flows run.`,
		[]string{`sluice run examples/flows/basic-prompting.json --input "Write a haiku about queues"`,
			`sluice run flow.json --input "hi" --stream --config sluice.yaml`,
			`sluice run flow.json --input "hi" --session s1 --json`,
			`sluice run flow.json --input "hi" --tweaks '{"Prompt-abc":{"template":"Answer briefly: {input}"}}'`})
	// Accept the flow path before or after the flags.
	var path string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		path, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if path == "" && fs.NArg() == 1 {
		path = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return usageError(fmt.Sprintf("run takes one flow file, got %q", fs.Args()))
	}
	if path == "" {
		return usageError("run needs a flow file: sluice run FLOW.json --input \"…\"")
	}
	cfg := config.Default()
	if *configFile != "" {
		if err := cfg.LoadFile(*configFile); err != nil {
			return err
		}
	}
	if err := cfg.Env(getenv); err != nil {
		return err
	}
	if *data != "" {
		cfg.DataDir = *data
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	req := run.RunRequest{InputValue: *input, InputType: *inputType, SessionID: *session}
	if *tweaks != "" {
		if err := json.Unmarshal([]byte(*tweaks), &req.Tweaks); err != nil {
			return usageError(fmt.Sprintf("--tweaks is not a JSON object of objects: %v", err))
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	g, err := flow.Parse(raw)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	store, err := sqlstore.OpenSQLite(ctx, filepath.Join(cfg.DataDir, "local-runs.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	mgr := policy.NewManager(store, cfg.GlobalDefault(), log)
	if err := mgr.Reload(ctx); err != nil {
		return err
	}
	engine := quota.NewMemory(quota.Options{})
	defer engine.Close()
	rec := usage.NewRecorder(store, log, 0)
	defer rec.Close()
	models, err := llm.NewRegistryWith(cfg.Models, os.Getenv, llm.RegistryOptions{Router: new(cfg.Routing.RouterOptions())})
	if err != nil {
		return err
	}
	meter := metering.New(engine, mgr, rec, log)
	mcp, err := mcpServers(cfg, os.Getenv)
	if err != nil {
		return err
	}
	svc := &run.Service{Store: store, Exec: &run.Executor{Meter: meter, Models: models, Messages: store,
		Guard: &run.Guard{AllowHosts: cfg.AllowHosts}, Log: log, DemoModels: len(cfg.Models) == 0, Vectors: newVectorStore(cfg.Vectors, store), Tools: toolServices(cfg.Tools, os.Getenv), MCPServers: mcp}, Log: log}
	var onEvent func(string, any)
	if *stream && !*asJSON {
		onEvent = func(event string, data any) {
			if event == "token" {
				if m, ok := data.(map[string]any); ok {
					fmt.Fprint(stdout, m["chunk"])
				}
			}
		}
	}
	out, err := svc.RunGraph(ctx, metering.Who{UserID: "cli"}, g, req, onEvent)
	if err != nil {
		return err
	}
	if out.Err != nil {
		fmt.Fprintf(stderr, "run %s: %s\n", out.Record.Status, describe(out.Err))
		return out.Err
	}
	switch {
	case *asJSON:
		b, _ := json.MarshalIndent(out.Response(req), "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
	case *stream:
		fmt.Fprintln(stdout)
	default:
		for _, o := range out.Result.Outputs {
			fmt.Fprintln(stdout, o.Text)
		}
	}
	u := out.Record.Usage
	fmt.Fprintf(stderr, "run %s: %s in %s, %d steps, %d input + %d output tokens",
		out.Record.ID, out.Record.Status, out.Record.EndedAt.Sub(out.Record.StartedAt).Round(1000), out.Record.Steps, u.InputTokens, u.OutputTokens)
	if u.CostMicros > 0 {
		fmt.Fprintf(stderr, ", $%.6f", float64(u.CostMicros)/1e6)
	}
	if len(cfg.Models) == 0 {
		fmt.Fprint(stderr, " (simulated model: no model table configured)")
	}
	fmt.Fprintln(stderr)
	return nil
}
