package sandbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sandbox"
	"github.com/sluicehq/sluice/internal/sqlstore"
	"github.com/sluicehq/sluice/internal/usage"
	"github.com/sluicehq/sluice/internal/vector"
)

// workerEnv makes this test binary act as a sandbox worker (TestMain).
const workerEnv = "SLUICE_SANDBOX_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
		if err := sandbox.Work(context.Background(), os.Stdin, os.Stdout, log, os.Getenv); err != nil {
			log.Error("worker failed", slog.String("error", err.Error()))
			os.Exit(1)
		}
		os.Exit(0)
	}
	// Flows using the test component validate in this process; workers
	// implement it (TestComponentsEnv).
	flow.Components[sandbox.TypeTestAllocate] = sandbox.TestAllocateComponent
	os.Exit(m.Run())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// worker is the process that took a run.
type worker struct {
	pid    int
	cgroup string
}

// stack is the flow runtime as the server wires it, with a sandbox whose
// workers are this test binary.
type stack struct {
	t     testing.TB
	store *sqlstore.Store
	exec  *run.Executor
	svc   *run.Service
	sb    *sandbox.Sandbox
	meter *metering.Meter
	logs  *syncBuffer

	mu      sync.Mutex
	workers map[string]worker // by run id
}

// newStack builds the runtime with limits (a policy spec in JSON) as the
// global scope's, so that every run has their caps.
func newStack(t testing.TB, limits string, opts sandbox.Options, models ...llm.ModelConfig) *stack {
	t.Helper()
	ctx := context.Background()
	st := &stack{t: t, logs: &syncBuffer{}, workers: map[string]worker{}}
	log := slog.New(slog.NewJSONHandler(st.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "sluice.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var spec policy.Spec
	if err := json.Unmarshal([]byte(limits), &spec); err != nil {
		t.Fatalf("limits %s: %v", limits, err)
	}
	mgr := policy.NewManager(store, spec, log)
	if err := mgr.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	engine := quota.NewMemory(quota.Options{})
	t.Cleanup(func() { engine.Close() })
	rec := usage.NewRecorder(store, log, 10*time.Millisecond)
	t.Cleanup(func() { rec.Close() })
	st.meter = metering.New(engine, mgr, rec, log)
	registry, err := llm.NewRegistry(models, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	st.exec = &run.Executor{Meter: st.meter, Models: registry, Messages: store, Guard: &run.Guard{}, Log: log, DemoModels: len(models) == 0,
		Vectors: store.Vectors(vector.Limits{})}
	if len(opts.Command) == 0 {
		opts.Command = []string{os.Args[0]}
	}
	opts.Env = append([]string{workerEnv + "=1", sandbox.TestComponentsEnv + "=1"}, opts.Env...)
	opts.Calls, opts.Messages, opts.Log = st.exec, store, log
	opts.OnRun = func(runID string, pid int, cgroup string) {
		st.mu.Lock()
		st.workers[runID] = worker{pid: pid, cgroup: cgroup}
		st.mu.Unlock()
	}
	st.sb, err = sandbox.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.sb.Close(); err != nil {
			t.Errorf("closing the sandbox: %v", err)
		}
	})
	st.store = store
	st.svc = &run.Service{Store: store, Exec: st.exec, Log: log, Sandbox: st.sb}
	return st
}

// requireCgroup fails the test when the sandbox cannot enforce memory
// caps: these tests prove the enforcement, so they must not pass without.
func requireCgroup(t testing.TB, st *stack) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root to create memory cgroups (euid %d); run it as root, as CI does", os.Geteuid())
	}
	if st.sb.Mode() == sandbox.ModeNone {
		t.Fatalf("this test needs a writable memory cgroup (v2 with the memory controller delegated, or v1), and there is none: %s", st.sb.Reason())
	}
}

var (
	whoU1 = metering.Who{UserID: "u1"}
	whoU2 = metering.Who{UserID: "u2"}
)

// parse parses a flow (compact JSON).
func parse(t testing.TB, flowJSON string) *flow.Flow {
	t.Helper()
	g, err := flow.Parse([]byte(flowJSON))
	if err != nil {
		t.Fatalf("parse flow: %v", err)
	}
	return g
}

// run runs a flow (compact JSON) as user u1 through the sandbox.
func (st *stack) run(ctx context.Context, flowJSON string, req run.RunRequest, onEvent func(string, any)) *run.Outcome {
	st.t.Helper()
	out, err := st.svc.RunGraph(ctx, whoU1, parse(st.t, flowJSON), req, onEvent)
	if err != nil {
		st.t.Fatalf("run refused: %v", err)
	}
	return out
}

// worker returns the worker that ran runID.
func (st *stack) worker(runID string) worker {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.workers[runID]
}

const (
	allocFlow = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"alloc","type":"TestAllocate","data":{"mib":%d}},{"id":"out","type":"ChatOutput"}],
	"edges":[{"source":"in","target":"alloc"},{"source":"alloc","target":"out"}]}`
	promptFlow = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"p","type":"Prompt","data":{"template":"Answer briefly: {q}"}},
	{"id":"llm","type":"LanguageModelComponent"},{"id":"out","type":"ChatOutput"}],
	"edges":[{"source":"in","target":"p","targetHandle":"q"},{"source":"p","target":"llm"},{"source":"llm","target":"out"}]}`
	agentFlow = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"calc","type":"CalculatorComponent"},
	{"id":"agent","type":"Agent","data":{"model_name":"simulated-loop","tools":"calc","max_iterations":1000}},{"id":"out","type":"ChatOutput"}],
	"edges":[{"source":"in","target":"agent"},{"source":"agent","target":"out"}]}`
)
