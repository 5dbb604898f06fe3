// Command sluice is the Sluice server and its command-line client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/errs"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() { os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr, os.Getenv)) }

// usageText is sluice help: the server's commands, then every client
// command (cli_cmd.go).
var usageText = `sluice governs LLM workflows: quotas per tenant, department, project and user.

Usage:
  sluice serve [flags]              run the server (sluice serve -h for flags)
  sluice run FLOW.json --input "…"  run a flow file in this process (no server needed)
  sluice version                    print the version
  sluice help [COMMAND [VERB]]      this help, or a command's

Client commands (each has -h with examples; see docs/cli.md):
` + clientHelp() + `
Client flags: --server URL (default $SLUICE_SERVER or http://127.0.0.1:8080); the API key is
read from $SLUICE_API_KEY; -o table|json (default: table on a terminal, JSON otherwise).
Names are accepted where ids are: --tenant university --project group-1 --user alice.

Examples:
  sluice tenants create --name university --timezone Asia/Shanghai
  sluice limits set project/group-1 --tenant university --limits '{"tokens":"1000000/month"}'
  sluice flows run basic --input "hello" --stream
`

func realMain(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stdout, stderr, getenv)
	case "run":
		err = runLocal(args[1:], stdout, stderr, getenv)
	case "worker":
		err = worker(args[1:], stdout, stderr, getenv)
	case "version", "--version":
		fmt.Fprintln(stdout, "sluice", version)
	case "help", "-h", "--help":
		if len(args) > 1 {
			switch args[1] {
			case "serve", "run", "worker": // their help is the flag package's, on stderr
				return realMain([]string{args[1], "-h"}, stdout, stderr, getenv)
			}
			err = runClient(append(args[1:], "-h"), stdout, stderr, getenv)
			break
		}
		fmt.Fprint(stdout, usageText)
	default:
		err = runClient(args, stdout, stderr, getenv)
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var usageErr usageError
	if errors.As(err, &usageErr) {
		fmt.Fprintf(stderr, "sluice: %s\n", usageErr)
		return 2
	}
	fmt.Fprintf(stderr, "sluice: %s\n", describe(err))
	return 1
}

// flagUsage is the -h of a command whose flags the flag package parses
// (serve, run): what it does, its usage line, its flags and examples.
func flagUsage(fs *flag.FlagSet, w io.Writer, name, summary, usage, about string, examples []string) func() {
	return func() {
		fmt.Fprintf(w, "sluice %s: %s\n\nUsage:\n  %s\n", name, summary, usage)
		if about != "" {
			fmt.Fprintf(w, "\n%s\n", about)
		}
		fmt.Fprint(w, "\nFlags (-name and --name are the same):\n")
		fs.PrintDefaults()
		fmt.Fprint(w, "\nExamples:\n")
		for _, e := range examples {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}

// usageError is a mistake on the command line.
type usageError string

func (u usageError) Error() string { return string(u) }

// describe renders an error for a person at a terminal.
func describe(err error) string {
	var e *errs.Error
	if errors.As(err, &e) && e.Code != errs.Internal {
		msg := string(e.Code) + ": " + e.Message
		if e.Field != "" {
			msg += " (field " + e.Field + ")"
		}
		return msg
	}
	return err.Error()
}

// serve loads the config (defaults, file, environment, flags) and runs the
// server until SIGINT or SIGTERM.
func serve(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", getenv("SLUICE_CONFIG"), "YAML config file (env SLUICE_CONFIG)")
	addr := fs.String("addr", "", "listen address (env SLUICE_ADDR, default 127.0.0.1:8080)")
	data := fs.String("data", "", "data directory (env SLUICE_DATA, default ./data)")
	dbURL := fs.String("database-url", "", "database: sqlite:PATH or postgres://USER@HOST/DB (env SLUICE_DATABASE_URL, default SQLite in the data directory)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (env SLUICE_LOG_LEVEL)")
	logFormat := fs.String("log-format", "", "json or text (env SLUICE_LOG_FORMAT)")
	langflow := fs.String("langflow-upstream", "", "govern an existing LangFlow at this URL (env SLUICE_LANGFLOW_UPSTREAM)")
	printConfig := fs.Bool("print-config", false, "print the effective configuration (secrets redacted) and exit")
	fs.Usage = flagUsage(fs, stderr, "serve", "run the server: the API, the gateway, the console and the quota engine",
		"sluice serve [flags]",
		`Settings come from the defaults, then --config's file, then SLUICE_* environment variables,
then these flags (docs/configuration.md has every setting). Without a database URL the data
lives in SQLite under the data directory; on first start an admin key is printed and kept in
DATA/admin.key.`,
		[]string{"sluice serve", "sluice serve --config sluice.yaml --addr 0.0.0.0:8080",
			"sluice serve --database-url postgres://sluice@db.internal/sluice --log-format text",
			"sluice serve --langflow-upstream http://127.0.0.1:7860", "sluice serve --config sluice.yaml --print-config"})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Sprintf("serve takes no arguments, got %q", fs.Args()))
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
	for dst, v := range map[*string]string{&cfg.Addr: *addr, &cfg.DataDir: *data, &cfg.DatabaseURL: *dbURL, &cfg.LogLevel: *logLevel, &cfg.LogFormat: *logFormat,
		&cfg.Langflow.Upstream: *langflow} {
		if v != "" {
			*dst = v
		}
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if *printConfig {
		fmt.Fprint(stdout, cfg.String())
		return nil
	}
	log := newLogger(stderr, cfg)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	app, err := NewApp(ctx, cfg, log, stdout)
	if err != nil {
		return err
	}
	return app.Serve(ctx)
}

func newLogger(w io.Writer, cfg config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
