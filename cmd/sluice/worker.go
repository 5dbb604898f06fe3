package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sandbox"
)

// worker is `sluice worker`, the sandbox's worker process: the server starts
// it, gives it one run over stdin and stdout, and makes the run's model
// calls for it. It is not meant to be run by hand.
func worker(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		fmt.Fprint(stderr, workerHelp)
		return nil
	}
	if len(args) > 0 {
		return usageError("worker takes no arguments: the server starts workers itself (sluice worker -h)")
	}
	// stdout is the channel to the server: nothing else may write to it.
	if stdout == io.Writer(os.Stdout) {
		os.Stdout = os.Stderr
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(getenv("SLUICE_LOG_LEVEL")))
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With(slog.String("process", "worker"), slog.Int("pid", os.Getpid()))
	return sandbox.Work(context.Background(), os.Stdin, stdout, log, getenv)
}

const workerHelp = `sluice worker: the sandbox's worker process (started by the server, not by hand)

Usage:
  sluice worker

sluice serve starts sandbox.workers of these (config sandbox.worker_command, default this
binary with "worker") and gives each one run at a time over standard input and output, held to
the run's memory_per_run by a cgroup; the worker asks the server for its model calls. It takes
no flags; SLUICE_LOG_LEVEL sets its log level (its logs go to standard error).

Examples:
  sluice serve --config sluice.yaml    # starts the workers itself
  sluice worker -h                     # this help
`

// testWorkerEnv is set by this package's tests: what makes the test binary
// act as sluice when it is started as a worker (see TestMain).
var testWorkerEnv []string

// startSandbox starts the worker pool that executes the runs with a memory
// cap, and says loudly when the host lets it enforce none.
func (a *App) startSandbox(exec *run.Executor) error {
	sc := a.cfg.Sandbox
	command := sc.WorkerCommand
	if len(command) == 0 {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("sandbox: find this binary to start workers: %w", err)
		}
		command = []string{self, "worker"}
	}
	// Workers get PATH and what the operator adds, never the server's
	// environment: provider keys stay in the server.
	env := append([]string{"PATH=" + os.Getenv("PATH")}, testWorkerEnv...)
	env = append(env, sc.WorkerEnv...)
	sb, err := sandbox.New(sandbox.Options{Command: command, Env: env, Workers: sc.Workers, CgroupRoot: sc.CgroupRoot,
		RunUnenforced: sc.Unenforced == config.UnenforcedRun, Calls: exec, Messages: exec.Messages, Files: exec.Files, AllowHosts: a.cfg.AllowHosts, Log: a.log})
	if err != nil {
		return err
	}
	switch {
	case sb.Mode() != sandbox.ModeNone:
		a.log.Info("sandbox ready: runs with memory_per_run execute in worker processes held to it by the kernel",
			slog.String("cgroup", string(sb.Mode())), slog.String("dir", sb.Dir()), slog.Int("workers", sc.Workers))
	case sc.Unenforced == config.UnenforcedUnready:
		a.log.Error("sandbox: memory caps CANNOT be enforced on this host; runs with memory_per_run are refused and /readyz reports "+
			"this server not ready (sandbox.unenforced: unready; set refuse or run to serve anyway)", slog.String("reason", sb.Reason()))
	case sc.Unenforced == config.UnenforcedRun:
		a.log.Warn("sandbox: memory caps CANNOT be enforced on this host; runs with memory_per_run execute in workers without a limit "+
			"and are recorded memory_enforced: false (sandbox.unenforced: run)", slog.String("reason", sb.Reason()))
	default:
		a.log.Warn("sandbox: memory caps CANNOT be enforced on this host; runs with memory_per_run are refused "+
			"(set sandbox.unenforced: run to run them unenforced)", slog.String("reason", sb.Reason()))
	}
	a.sandbox = sb
	a.runs.Sandbox = sb
	return nil
}

// sandboxReady is the sandbox's readiness check: workers can be started,
// and, where the operator chose sandbox.unenforced: unready, memory caps
// can be enforced, so that an orchestrator sends a server that would refuse
// every capped run no traffic.
func (a *App) sandboxReady() error {
	if a.sandbox != nil && a.sandbox.Mode() == sandbox.ModeNone && a.cfg.Sandbox.Unenforced == config.UnenforcedUnready {
		return fmt.Errorf("memory caps cannot be enforced (%s) and sandbox.unenforced is unready", a.sandbox.Reason())
	}
	return a.sandbox.Ready()
}
