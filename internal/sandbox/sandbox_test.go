package sandbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/sandbox"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// llmAllocFlow calls the model, then allocates: a run killed for memory
// has usage to record.
const llmAllocFlow = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"llm","type":"LanguageModelComponent"},
	{"id":"alloc","type":"TestAllocate","data":{"mib":%d}},{"id":"out","type":"ChatOutput"}],
	"edges":[{"source":"in","target":"llm"},{"source":"llm","target":"alloc"},{"source":"alloc","target":"out"}]}`

// TestMemoryCapUnderLoad is the sandbox's promise: with a 64 MiB cap, runs
// that need 256 MiB are all stopped by the kernel and recorded
// memory_limit_exceeded, with their model usage and their lease released,
// while runs that need 16 MiB all succeed with their peak measured, and the
// server keeps answering health checks and running in-process flows
// throughout.
func TestMemoryCapUnderLoad(t *testing.T) {
	const (
		oomRuns   = 100
		smallRuns = 20
		parallel  = 4
	)
	st := newStack(t, `{"memory_per_run":"64MiB","run_timeout":"60s"}`, sandbox.Options{Workers: parallel})
	requireCgroup(t, st)
	ctx := context.Background()

	// The server's other duties: health checks and an uncapped in-process
	// run, over and over while the sandboxed runs go on.
	health := httptest.NewServer((&httpapi.Server{Version: "test", Log: st.exec.Log}).Handler())
	defer health.Close()
	inProcess := &run.Service{Store: st.store, Exec: st.exec, Log: st.exec.Log}
	stop := make(chan struct{})
	var side sync.WaitGroup
	var healthOK, inProcessOK int
	var sideErr error
	inProcessFlow := parse(t, promptFlow)
	side.Add(1)
	go func() {
		defer side.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := http.Get(health.URL + "/healthz")
			if err != nil || resp.StatusCode != http.StatusOK {
				sideErr = fmt.Errorf("/healthz: %v %v", err, resp)
				return
			}
			resp.Body.Close()
			healthOK++
			out, err := inProcess.RunGraph(ctx, whoU2, inProcessFlow, run.RunRequest{InputValue: "still there?"}, nil)
			if err != nil || out.Err != nil || out.Record.Status != run.StatusSucceeded {
				sideErr = fmt.Errorf("in-process run: %v %v", err, out)
				return
			}
			inProcessOK++
			time.Sleep(20 * time.Millisecond)
		}
	}()

	type job struct{ mib int }
	jobs := make(chan job)
	go func() {
		for i := 0; i < oomRuns+smallRuns; i++ {
			if i%6 == 5 && i/6 < smallRuns {
				jobs <- job{16}
			} else {
				jobs <- job{256}
			}
		}
		close(jobs)
	}()
	flows := map[int]*flow.Flow{16: parse(t, fmt.Sprintf(llmAllocFlow, 16)), 256: parse(t, fmt.Sprintf(llmAllocFlow, 256))}
	var mu sync.Mutex
	var outs []*run.Outcome
	var mibs []int
	var refused []error
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < parallel; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				out, err := st.svc.RunGraph(ctx, whoU1, flows[j.mib], run.RunRequest{InputValue: "allocate"}, nil)
				mu.Lock()
				if err != nil {
					refused = append(refused, err)
				} else {
					outs, mibs = append(outs, out), append(mibs, j.mib)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(refused) > 0 {
		t.Fatalf("%d runs refused, the first: %v", len(refused), refused[0])
	}
	elapsed := time.Since(start)
	close(stop)
	side.Wait()
	if sideErr != nil {
		t.Fatalf("the server stopped answering during the sandboxed runs: %v", sideErr)
	}
	if healthOK == 0 || inProcessOK == 0 {
		t.Errorf("health checks %d, in-process runs %d during the sandboxed runs; want some of each", healthOK, inProcessOK)
	}
	t.Logf("%d sandboxed runs in %s; meanwhile %d health checks and %d in-process runs", len(outs), elapsed.Round(time.Millisecond), healthOK, inProcessOK)

	var oom, ok int
	for i, out := range outs {
		rec := out.Record
		if !rec.MemoryEnforced {
			t.Errorf("run %s (%d MiB): memory_enforced false, want true", rec.ID, mibs[i])
		}
		if rec.Usage.InputTokens == 0 || rec.Usage.OutputTokens == 0 {
			t.Errorf("run %s (%d MiB): usage %+v, want the model call's tokens", rec.ID, mibs[i], rec.Usage)
		}
		if w := st.worker(rec.ID); w.cgroup == "" || !gone(w.cgroup) {
			t.Errorf("run %s: worker cgroup %q still exists (or none was used)", rec.ID, w.cgroup)
		}
		switch mibs[i] {
		case 256:
			oom++
			if rec.Status != run.StatusMemoryLimitExceeded {
				t.Errorf("run %s (256 MiB under a 64 MiB cap): status %s (%v), want %s", rec.ID, rec.Status, out.Err, run.StatusMemoryLimitExceeded)
				continue
			}
			var re *run.RunError
			if !errors.As(out.Err, &re) || re.NodeID != "alloc" || errs.CodeOf(out.Err) != errs.QuotaExceeded || !strings.Contains(out.Err.Error(), "64 MiB") {
				t.Errorf("run %s: error %v, want node alloc, code quota_exceeded, naming the 64 MiB cap", rec.ID, out.Err)
			}
		case 16:
			ok++
			if rec.Status != run.StatusSucceeded {
				t.Errorf("run %s (16 MiB under a 64 MiB cap): status %s (%v), want succeeded", rec.ID, rec.Status, out.Err)
				continue
			}
			if rec.PeakMemory <= 16<<20 {
				t.Errorf("run %s: peak memory %d, want more than the 16 MiB it allocated", rec.ID, rec.PeakMemory)
			}
			if rec.CPUMillis <= 0 {
				t.Errorf("run %s: cpu_ms %d, want > 0", rec.ID, rec.CPUMillis)
			}
			if len(out.Result.Outputs) != 1 || out.Result.Outputs[0].Text != "allocated 16 MiB for "+out.Result.Trace[1].OutputPreview {
				t.Errorf("run %s: outputs %+v, want the allocation's text", rec.ID, out.Result.Outputs)
			}
		}
		stored, err := st.store.Run(ctx, rec.ID)
		if err != nil || stored.Status != rec.Status || stored.PeakMemory != rec.PeakMemory || !stored.MemoryEnforced {
			t.Errorf("stored run %s = %+v, %v; want status %s, peak %d, memory_enforced", rec.ID, stored, err, rec.Status, rec.PeakMemory)
		}
	}
	if oom != oomRuns || ok != smallRuns {
		t.Errorf("ran %d runs of 256 MiB and %d of 16 MiB, want %d and %d", oom, ok, oomRuns, smallRuns)
	}
	st.requireNoLeases(ctx)
}

// TestRunTimeoutKillsTheWorker: an agent that never stops calling tools is
// stopped at run_timeout by killing its worker: status timeout, the worker
// process gone, its cgroup removed, the model calls it made settled.
func TestRunTimeoutKillsTheWorker(t *testing.T) {
	// The timeout must leave the worker time to start and make model
	// calls (whose settling is checked): a race-built worker on a loaded
	// two-core machine took over a second to make its first, so 5 s.
	st := newStack(t, `{"memory_per_run":"256MiB","run_timeout":"5s"}`, sandbox.Options{Workers: 1},
		llm.ModelConfig{Name: llm.SimulatedLoopModel, Provider: llm.ProviderSimulated, Latency: llm.Duration(20 * time.Millisecond), Default: true})
	requireCgroup(t, st)
	ctx := context.Background()
	start := time.Now()
	out := st.run(ctx, agentFlow, run.RunRequest{InputValue: "what is 2+2?"}, nil)
	took := time.Since(start)
	rec := out.Record
	if rec.Status != run.StatusTimeout {
		t.Fatalf("status %s (%v), want timeout", rec.Status, out.Err)
	}
	// The timeout status says the deadline stopped the run (the agent
	// never stops on its own); how long that took is the machine's speed.
	t.Logf("the run ended after %s with a 5s run_timeout", took.Round(time.Millisecond))
	w := st.worker(rec.ID)
	if w.pid == 0 {
		t.Fatal("no worker took the run")
	}
	if err := syscall.Kill(w.pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("worker %d after the timeout: kill(0) = %v, want ESRCH (gone)", w.pid, err)
	}
	if !gone(w.cgroup) {
		t.Errorf("worker cgroup %s still exists after the run", w.cgroup)
	}
	if rec.Usage.InputTokens == 0 || rec.Steps < 2 {
		t.Errorf("usage %+v, steps %d; want the agent's model calls and steps recorded", rec.Usage, rec.Steps)
	}
	if n := len(rec.Trace); n == 0 || rec.Trace[n-1].NodeID != "agent" || rec.Trace[n-1].Status != "failed" {
		t.Errorf("trace %+v, want the agent last, failed", rec.Trace)
	}
	if !rec.MemoryEnforced || rec.CPUMillis <= 0 {
		t.Errorf("memory_enforced %v, cpu_ms %d; want true and > 0", rec.MemoryEnforced, rec.CPUMillis)
	}
	st.requireNoLeases(ctx)
}

// TestMaxStepsInTheWorker: max_steps stops the same agent in a worker as
// it does in process.
func TestMaxStepsInTheWorker(t *testing.T) {
	st := newStack(t, `{"memory_per_run":"256MiB","run_timeout":"30s","max_steps":7}`, sandbox.Options{Workers: 1},
		llm.ModelConfig{Name: llm.SimulatedLoopModel, Provider: llm.ProviderSimulated, Default: true})
	requireCgroup(t, st)
	ctx := context.Background()
	boxed := st.run(ctx, agentFlow, run.RunRequest{InputValue: "what is 2+2?"}, nil)
	inProcess, err := (&run.Service{Store: st.store, Exec: st.exec, Log: st.exec.Log}).RunGraph(ctx, whoU2, parse(t, agentFlow), run.RunRequest{InputValue: "what is 2+2?"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]*run.Outcome{"sandboxed": boxed, "in process": inProcess} {
		var re *run.RunError
		if out.Record.Status != run.StatusStepLimitExceeded || !errors.As(out.Err, &re) || re.NodeID != "agent" {
			t.Errorf("%s: status %s (%v), want step_limit_exceeded at agent", name, out.Record.Status, out.Err)
		}
	}
	if boxed.Record.Steps != inProcess.Record.Steps || boxed.Record.Usage != inProcess.Record.Usage || boxed.Err.Error() != inProcess.Err.Error() {
		t.Errorf("sandboxed: steps %d usage %+v err %q; in process: steps %d usage %+v err %q; want the same",
			boxed.Record.Steps, boxed.Record.Usage, boxed.Err, inProcess.Record.Steps, inProcess.Record.Usage, inProcess.Err)
	}
	if !boxed.Record.MemoryEnforced || inProcess.Record.MemoryEnforced {
		t.Errorf("memory_enforced: sandboxed %v, in process %v; want true, false", boxed.Record.MemoryEnforced, inProcess.Record.MemoryEnforced)
	}
}

// TestSandboxedRunMatchesInProcess: outputs, usage, steps, trace, streamed
// events and chat memory are the same whether a run executes in a worker
// or in the server.
func TestSandboxedRunMatchesInProcess(t *testing.T) {
	st := newStack(t, `{"memory_per_run":"256MiB","run_timeout":"30s"}`, sandbox.Options{Workers: 1})
	requireCgroup(t, st)
	ctx := context.Background()
	const memoryFlow = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"mem","type":"Memory"},
	{"id":"p","type":"Prompt","data":{"template":"History:\n{history}\nNow: {q}"}},
	{"id":"llm","type":"LanguageModelComponent","data":{"stream":true}},{"id":"out","type":"ChatOutput"}],
	"edges":[{"source":"in","target":"p","targetHandle":"q"},{"source":"mem","target":"p","targetHandle":"history"},{"source":"p","target":"llm"},{"source":"llm","target":"out"}]}`
	inProcess := &run.Service{Store: st.store, Exec: st.exec, Log: st.exec.Log}
	type events struct {
		mu     sync.Mutex
		tokens strings.Builder
		added  []string
	}
	runBoth := func(session, input string) (boxed, local *run.Outcome, be, le *events) {
		be, le = &events{}, &events{}
		collect := func(e *events) func(string, any) {
			return func(event string, data any) {
				e.mu.Lock()
				defer e.mu.Unlock()
				m, _ := data.(map[string]any)
				switch event {
				case "token":
					e.tokens.WriteString(fmt.Sprint(m["chunk"]))
				case "add_message":
					e.added = append(e.added, fmt.Sprintf("%v: %v", m["sender"], m["text"]))
				}
			}
		}
		boxed = st.run(ctx, memoryFlow, run.RunRequest{InputValue: input, SessionID: "boxed-" + session}, collect(be))
		local, err := inProcess.RunGraph(ctx, whoU1, parse(t, memoryFlow), run.RunRequest{InputValue: input, SessionID: "local-" + session}, collect(le))
		if err != nil {
			t.Fatal(err)
		}
		return boxed, local, be, le
	}
	for i, input := range []string{"My name is Ada.", "What is my name?"} {
		boxed, local, be, le := runBoth("s", input)
		if boxed.Err != nil || local.Err != nil {
			t.Fatalf("turn %d: errors %v / %v", i, boxed.Err, local.Err)
		}
		if boxed.Record.Usage != local.Record.Usage || boxed.Record.Steps != local.Record.Steps {
			t.Errorf("turn %d: usage %+v steps %d sandboxed, %+v %d in process", i, boxed.Record.Usage, boxed.Record.Steps, local.Record.Usage, local.Record.Steps)
		}
		if got, want := boxed.Result.Outputs[0].Text, local.Result.Outputs[0].Text; got != want {
			t.Errorf("turn %d: output %q sandboxed, %q in process", i, got, want)
		}
		if len(boxed.Record.Trace) != len(local.Record.Trace) {
			t.Fatalf("turn %d: trace %+v sandboxed, %+v in process", i, boxed.Record.Trace, local.Record.Trace)
		}
		for j := range boxed.Record.Trace {
			b, l := boxed.Record.Trace[j], local.Record.Trace[j]
			if b.NodeID != l.NodeID || b.Status != l.Status || b.Usage != l.Usage || b.Model != l.Model || b.Calls != l.Calls || b.OutputPreview != l.OutputPreview {
				t.Errorf("turn %d node %d: %+v sandboxed, %+v in process", i, j, b, l)
			}
		}
		if be.tokens.String() == "" || be.tokens.String() != le.tokens.String() || fmt.Sprint(be.added) != fmt.Sprint(le.added) {
			t.Errorf("turn %d: events sandboxed %q %v, in process %q %v; want the same, with tokens", i, be.tokens.String(), be.added, le.tokens.String(), le.added)
		}
		if len(boxed.Result.Messages) != 2 || boxed.Result.Messages[0].TenantID != whoU1.TenantID {
			t.Errorf("turn %d: stored messages %+v, want the run's two", i, boxed.Result.Messages)
		}
		if i == 1 && !strings.Contains(boxed.Record.Trace[2].OutputPreview, "My name is Ada.") {
			t.Errorf("second turn's prompt %q, want the first turn's message from memory", boxed.Record.Trace[2].OutputPreview)
		}
	}
	msgs, err := st.store.Messages(ctx, whoU1.TenantID, whoU1.UserID, "boxed-s", 10)
	if err != nil || len(msgs) != 4 {
		t.Errorf("session boxed-s holds %d messages (%v), want 4", len(msgs), err)
	}
}

// TestErrorsFromTheWorker: a quota denial in the middle of a sandboxed run
// and a refused custom component end the run as they do in process.
func TestErrorsFromTheWorker(t *testing.T) {
	st := newStack(t, `{"memory_per_run":"256MiB","tokens":"30/day"}`, sandbox.Options{Workers: 1})
	requireCgroup(t, st)
	ctx := context.Background()
	out := st.run(ctx, promptFlow, run.RunRequest{InputValue: "a question that does not fit a tiny budget"}, nil)
	var d *quota.Denial
	if out.Record.Status != run.StatusQuotaExceeded || !errors.As(out.Err, &d) || d.Dimension != quota.DimTokens || out.Record.ErrorCode != quota.CodeQuotaExceeded {
		t.Errorf("status %s, error %v (code %s); want quota_exceeded with the token denial", out.Record.Status, out.Err, out.Record.ErrorCode)
	}
	const custom = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"py","type":"CustomComponent","data":{"code":"import os"}}],
	"edges":[{"source":"in","target":"py","targetHandle":"input_value"}]}`
	out = st.run(ctx, custom, run.RunRequest{InputValue: "x"}, nil)
	var re *run.RunError
	if out.Record.Status != run.StatusFailed || !errors.As(out.Err, &re) || re.NodeID != "py" || errs.CodeOf(out.Err) != errs.Unprocessable ||
		!strings.Contains(out.Err.Error(), "custom code") {
		t.Errorf("custom component: status %s, error %v; want failed, unprocessable, at py", out.Record.Status, out.Err)
	}
}

// TestWithoutCgroups: with the cgroup root forced to a path that does not
// exist, the sandbox reports mode none; by default it refuses capped runs
// with a clear error and records nothing; told to run them unenforced, it
// runs them in workers and records memory_enforced false with an
// approximate peak.
func TestWithoutCgroups(t *testing.T) {
	ctx := context.Background()
	refuse := newStack(t, `{"memory_per_run":"64MiB"}`, sandbox.Options{Workers: 1, CgroupRoot: "/nonexistent/sluice"})
	if refuse.sb.Mode() != sandbox.ModeNone || !strings.Contains(refuse.sb.Reason(), "/nonexistent/sluice") {
		t.Fatalf("mode %s (%s), want none naming the root", refuse.sb.Mode(), refuse.sb.Reason())
	}
	_, err := refuse.svc.RunGraph(ctx, whoU1, parse(t, fmt.Sprintf(allocFlow, 1)), run.RunRequest{InputValue: "x"}, nil)
	if !errs.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "cannot enforce memory caps") || !strings.Contains(err.Error(), "64 MiB") {
		t.Errorf("capped run without cgroups = %v, want unavailable saying memory caps cannot be enforced", err)
	}
	if runs, _ := refuse.store.Runs(ctx, tenancy.Filter{}); len(runs) != 0 {
		t.Errorf("a refused run was recorded: %+v", runs)
	}
	refuse.requireNoLeases(ctx)

	allow := newStack(t, `{"memory_per_run":"64MiB"}`, sandbox.Options{Workers: 1, CgroupRoot: "/nonexistent/sluice", RunUnenforced: true})
	out := allow.run(ctx, fmt.Sprintf(allocFlow, 16), run.RunRequest{InputValue: "x"}, nil)
	rec := out.Record
	if rec.Status != run.StatusSucceeded || rec.MemoryEnforced || rec.PeakMemory <= 16<<20 || rec.CPUMillis <= 0 {
		t.Errorf("unenforced run: status %s (%v), memory_enforced %v, peak %d, cpu_ms %d; want succeeded, false, > 16 MiB, > 0",
			rec.Status, out.Err, rec.MemoryEnforced, rec.PeakMemory, rec.CPUMillis)
	}
	if !out.Result.Resources.PeakApproximate {
		t.Errorf("peak without a cgroup not marked approximate")
	}
	if w := allow.worker(rec.ID); w.pid == 0 || w.cgroup != "" {
		t.Errorf("worker %+v, want a process and no cgroup", w)
	}
}

// TestWorkerThatCannotStart: a broken worker command shows in Ready and
// fails the run cleanly.
func TestWorkerThatCannotStart(t *testing.T) {
	st := newStack(t, `{"memory_per_run":"64MiB"}`, sandbox.Options{Workers: 1, Command: []string{"/bin/false"}, CgroupRoot: "none", RunUnenforced: true})
	ctx := context.Background()
	out := st.run(ctx, promptFlow, run.RunRequest{InputValue: "x"}, nil)
	if out.Record.Status != run.StatusFailed || errs.CodeOf(out.Err) != errs.Unavailable {
		t.Errorf("status %s, error %v; want failed, unavailable", out.Record.Status, out.Err)
	}
	deadline := time.Now().Add(time.Minute)
	for st.sb.Ready() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st.sb.Ready() == nil {
		t.Errorf("Ready() = nil with a worker command that exits at once")
	}
	st.requireNoLeases(ctx)
}

// TestCloseRemovesTheGroup: closing the sandbox retires idle workers and
// removes Sluice's cgroup.
func TestCloseRemovesTheGroup(t *testing.T) {
	st := newStack(t, `{"memory_per_run":"64MiB"}`, sandbox.Options{Workers: 2})
	requireCgroup(t, st)
	out := st.run(context.Background(), fmt.Sprintf(allocFlow, 1), run.RunRequest{InputValue: "x"}, nil)
	if out.Err != nil {
		t.Fatal(out.Err)
	}
	dir := st.sb.Dir()
	if !exists(dir) {
		t.Fatalf("Sluice's cgroup %s does not exist while the sandbox is open", dir)
	}
	if err := st.sb.Close(); err != nil {
		t.Fatal(err)
	}
	if exists(dir) {
		t.Errorf("Sluice's cgroup %s still exists after Close", dir)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// gone waits for a used worker's cgroup to be removed (in the background,
// after its run returned), for up to a minute: it takes milliseconds, and
// the minute is for a loaded machine.
func gone(path string) bool {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if !exists(path) {
			return true
		}
	}
	return false
}

// requireNoLeases checks that every run's concurrency slot was released.
func (st *stack) requireNoLeases(ctx context.Context) {
	st.t.Helper()
	for _, scope := range []string{policy.GlobalScope, policy.ScopeName(policy.KindUser, whoU1.UserID)} {
		u, err := st.meter.Use(ctx, scope)
		if err != nil {
			st.t.Fatal(err)
		}
		if u.Concurrency != 0 {
			st.t.Errorf("scope %s holds %d run slots after the runs ended, want 0", scope, u.Concurrency)
		}
	}
}

// TestVectorStoreInTheWorker: a sandboxed run's vector store is the
// server's: the worker asks the server to embed (governed, charged to the
// run) and to store and search, in the run's own project. What one run
// ingests, the next finds.
func TestVectorStoreInTheWorker(t *testing.T) {
	st := newStack(t, `{"memory_per_run":"64MiB"}`, sandbox.Options{Workers: 1, CgroupRoot: "/nonexistent/sluice", RunUnenforced: true})
	const rag = `{"nodes":[{"id":"doc","type":"TextInput","data":{"input_value":%q}},
	{"id":"split","type":"SplitText","data":{"chunk_size":60,"chunk_overlap":0,"separator":"\n"}},
	{"id":"in","type":"ChatInput"},{"id":"emb","type":"OpenAIEmbeddings"},{"id":"store","type":"Chroma","data":{"number_of_results":1}},
	{"id":"out","type":"ChatOutput"}],
	"edges":[{"source":"doc","target":"split"},{"source":"split","sourceHandle":"dataframe","target":"store","targetHandle":"ingest_data"},
	{"source":"in","target":"store","targetHandle":"search_query"},{"source":"emb","target":"store","targetHandle":"embedding"},
	{"source":"store","sourceHandle":"dataframe","target":"out"}]}`
	doc := "Budgets are reserved before each model call.\nWorkers run flows under a memory cap.\nCollections belong to one project."
	ctx := context.Background()
	out := st.run(ctx, fmt.Sprintf(rag, doc), run.RunRequest{InputValue: "which workers run under a memory cap?"}, nil)
	if out.Err != nil || out.Record.Status != run.StatusSucceeded {
		t.Fatalf("sandboxed RAG run: status %s, error %v", out.Record.Status, out.Err)
	}
	if got := out.Result.Outputs[0].Text; !strings.Contains(got, "Workers run flows under a memory cap.") || strings.Contains(got, "Budgets") {
		t.Errorf("output %q, want the one chunk about workers", got)
	}
	if out.Record.Usage.InputTokens == 0 || out.Record.Usage.OutputTokens != 0 || out.Result.Resources == nil {
		t.Errorf("usage %+v (resources %v), want the embeddings' input tokens charged to a sandboxed run", out.Record.Usage, out.Result.Resources)
	}
	// The next run (no document) finds what the first stored.
	const query = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"emb","type":"OpenAIEmbeddings"},{"id":"store","type":"Chroma","data":{"number_of_results":1}},
	{"id":"out","type":"ChatOutput"}],"edges":[{"source":"in","target":"store","targetHandle":"search_query"},
	{"source":"emb","target":"store","targetHandle":"embedding"},{"source":"store","sourceHandle":"dataframe","target":"out"}]}`
	out = st.run(ctx, query, run.RunRequest{InputValue: "who do collections belong to?"}, nil)
	if out.Err != nil || !strings.Contains(out.Result.Outputs[0].Text, "Collections belong to one project.") {
		t.Errorf("second run: %v, output %v; want the stored chunk about collections", out.Err, out.Result)
	}
}

// TestSearchInTheWorker: a sandboxed run's search node is called by the
// server, with the server's key for the service: the worker never has it
// (its environment and the job it is sent hold no key), and the results
// reach the flow as in process.
func TestSearchInTheWorker(t *testing.T) {
	const key = "tvly-dev-SANDBOX-7c2d"
	var got map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/search" || r.Header.Get("Authorization") != "Bearer "+key {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"detail":{"error":"Unauthorized: missing or invalid API key."}}`)
			return
		}
		_ = json.NewDecoder(r.Body).Decode(&got)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"query":"q","answer":null,"images":[],"results":[{"url":"https://example.org/babbage","title":"Babbage","content":"The analytical engine was designed by Charles Babbage.","score":0.9,"raw_content":null}],"response_time":0.5}`)
	}))
	defer srv.Close()
	st := newStack(t, `{"memory_per_run":"64MiB"}`, sandbox.Options{Workers: 1, CgroupRoot: "/nonexistent/sluice", RunUnenforced: true})
	st.exec.Tools = map[string]run.ToolService{run.ServiceTavily: {BaseURL: srv.URL, Key: llm.NewSecret(key)}}
	st.exec.Guard = &run.Guard{AllowHosts: []string{"127.0.0.1"}}
	const f = `{"nodes":[{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
	{"id":"search","type":"TavilySearchComponent","data":{"max_results":3,"include_answer":false,"include_images":false}},
	{"id":"p","type":"ParserComponent","data":{"pattern":"{title}: {content}","sep":"\n"}},
	{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}],
	"edges":[{"source":"in","target":"search","targetHandle":"query"},{"source":"search","sourceHandle":"dataframe","target":"p"},{"source":"p","target":"out"}]}`
	out := st.run(context.Background(), f, run.RunRequest{InputValue: "who designed the analytical engine?"}, nil)
	if out.Err != nil || out.Record.Status != run.StatusSucceeded {
		t.Fatalf("sandboxed search run: status %s, error %v", out.Record.Status, out.Err)
	}
	if got := out.Result.Outputs[0].Text; got != "Babbage: The analytical engine was designed by Charles Babbage." {
		t.Errorf("output %q", got)
	}
	if out.Result.Resources == nil {
		t.Error("no resources measured: the run did not go through the worker")
	}
	if got["query"] != "who designed the analytical engine?" || got["max_results"] != float64(3) {
		t.Errorf("Tavily got %v, want the query and the node's max_results", got)
	}
	if strings.Contains(st.logs.String(), key) {
		t.Error("the key is in the logs")
	}
}

// TestMCPInTheWorker: a sandboxed run's MCPTools node lists and calls its
// server's tools through the server process, which holds the server's
// token and the session: the tool answers, the call is counted, and the
// token is nowhere in the logs.
func TestMCPInTheWorker(t *testing.T) {
	const token = "Bearer mcp-sandbox-secret-91c2"
	type addIn struct {
		A float64 `json:"a"`
		B float64 `json:"b"`
	}
	type addOut struct {
		Sum float64 `json:"sum"`
	}
	var calls atomic.Int64
	srv := mcp.NewServer(&mcp.Implementation{Name: "calc", Version: "1.0.0"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "add", Description: "Add two numbers."},
		func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
			calls.Add(1)
			return nil, addOut{Sum: in.A + in.B}, nil
		})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	defer hs.Close()
	st := newStack(t, `{"memory_per_run":"64MiB"}`, sandbox.Options{Workers: 1, CgroupRoot: "/nonexistent/sluice", RunUnenforced: true})
	st.exec.MCPServers = []run.MCPServer{{Name: "calc", URL: hs.URL, Headers: map[string]string{"Authorization": token}}}
	const f = `{"nodes":[{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
	{"id":"mcp","type":"MCPTools","data":{"mcp_server":{"name":"calc","config":{}},"tool":"add","a":2}},
	{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}],
	"edges":[{"source":"in","sourceHandle":"message","target":"mcp","targetHandle":"b"},
	{"source":"mcp","sourceHandle":"response","target":"out","targetHandle":"input_value"}]}`
	out := st.run(context.Background(), f, run.RunRequest{InputValue: "40"}, nil)
	if out.Err != nil || out.Record.Status != run.StatusSucceeded {
		t.Fatalf("sandboxed MCP run: status %s, error %v", out.Record.Status, out.Err)
	}
	if got, want := out.Result.Outputs[0].Text, "|   sum |\n|------:|\n|    42 |"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	if out.Result.Resources == nil {
		t.Error("no resources measured: the run did not go through the worker")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the MCP server answered %d calls, want 1", n)
	}
	if strings.Contains(st.logs.String(), "mcp-sandbox-secret") {
		t.Error("the MCP token is in the logs")
	}
}
