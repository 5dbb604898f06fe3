package run_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

func TestMemoryCeilingReserve(t *testing.T) {
	c := &run.MemoryCeiling{Total: 10 << 20, PerRun: 4 << 20, PerTool: 1 << 20}
	first, err := c.Reserve(6 << 20)
	if err != nil {
		t.Fatalf("first reservation: got %v, want it admitted", err)
	}
	second, err := c.Reserve(4 << 20)
	if err != nil {
		t.Fatalf("second reservation, filling the ceiling: got %v, want it admitted", err)
	}
	_, err = c.Reserve(1)
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.Unavailable || e.RetryAfter <= 0 {
		t.Fatalf("reservation past the ceiling: got %v, want unavailable with a Retry-After", err)
	}
	if used, runs := c.InUse(); used != 10<<20 || runs != 2 {
		t.Errorf("InUse = %d bytes, %d runs; want %d, 2", used, runs, 10<<20)
	}
	second()
	second() // a second call gives nothing back twice
	if used, runs := c.InUse(); used != 6<<20 || runs != 1 {
		t.Errorf("InUse after one release = %d bytes, %d runs; want %d, 1", used, runs, 6<<20)
	}
	third, err := c.Reserve(4 << 20)
	if err != nil {
		t.Fatalf("reservation after a release: got %v, want it admitted", err)
	}
	first()
	third()
	if used, runs := c.InUse(); used != 0 || runs != 0 {
		t.Errorf("InUse after every release = %d bytes, %d runs; want 0, 0", used, runs)
	}
	// A share larger than the whole ceiling will never fit: not worth a retry.
	if _, err := c.Reserve(11 << 20); !errs.Is(err, errs.Unprocessable) {
		t.Errorf("reservation larger than the ceiling: got %v, want unprocessable", err)
	}
}

func TestMemoryCeilingEstimate(t *testing.T) {
	c := &run.MemoryCeiling{Total: 1 << 30, PerRun: 4 << 20, PerTool: 10 << 20}
	g := &flow.Flow{Nodes: []*flow.Node{{ID: "in", Type: "ChatInput"}, {ID: "u", Type: "URLComponent"},
		{ID: "a", Type: "APIRequest"}, {ID: "c", Type: "CalculatorComponent"},
		{ID: "t", Type: "TavilySearchComponent"}, {ID: "s", Type: "SearchComponent"}, {ID: "x", Type: "ArXivComponent"}}}
	if got, want := c.Estimate(g), int64(54<<20); got != want {
		t.Errorf("Estimate = %d, want %d (4 MiB and 10 MiB for each of five fetching nodes)", got, want)
	}
}

// fakeSandbox runs capped runs in this process, as a sandbox would in a
// worker, and counts them.
type fakeSandbox struct {
	exec *run.Executor
	runs int
}

func (f *fakeSandbox) Check(quota.Caps) error { return nil }
func (f *fakeSandbox) Execute(ctx context.Context, job *run.Job) (*run.Result, error) {
	f.runs++
	res, err := f.exec.Execute(ctx, job)
	res.Resources = &run.Resources{MemoryEnforced: true}
	return res, err
}

// While in-process runs hold the whole ceiling, another in-process run is
// refused (503 with Retry-After, nothing recorded, its slot given back),
// and admitted again once the ceiling has room; a run for the sandbox does
// not use the ceiling.
func TestServiceInProcessCeiling(t *testing.T) {
	h := newHarness(t, llm.ModelConfig{Name: "fast", Provider: llm.ProviderSimulated, Default: true},
		llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(3600e9)})
	data := readFile(t, sharedFlowDir+"/basic-prompting.json")
	g := parseFlow(t, data)
	lm := g.NodesOfType("LanguageModelComponent")[0].ID
	fl := h.upload(data, "basic")
	ceiling := &run.MemoryCeiling{PerRun: 4 << 20, PerTool: 10 << 20}
	ceiling.Total = ceiling.Estimate(g) // room for one run
	h.svc.InProcess = ceiling

	ctx, cancel := context.WithCancel(h.member)
	done := make(chan *run.Outcome, 1)
	go func() {
		out, err := h.svc.Run(ctx, fl.ID, run.RunRequest{InputValue: "slow one", Tweaks: map[string]map[string]any{lm: {"model_name": "slow"}}}, nil)
		if err != nil {
			t.Errorf("first run: %v", err)
		}
		done <- out
	}()
	var before []*run.Record
	waitFor(t, "the first run to hold the ceiling and be recorded", func() bool {
		var err error
		if before, err = h.svc.Runs(h.member, tenancy.Filter{}); err != nil {
			t.Fatal(err)
		}
		_, runs := ceiling.InUse()
		return runs == 1 && len(before) == 1
	})

	_, err := h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: "second"}, nil)
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.Unavailable || e.RetryAfter <= 0 {
		t.Fatalf("run while the ceiling is full: got %v, want unavailable with a Retry-After", err)
	}
	if after, _ := h.svc.Runs(h.member, tenancy.Filter{}); len(after) != len(before) {
		t.Errorf("run records: got %d after the refusal, want %d", len(after), len(before))
	}
	if use := h.userUse(); use.Concurrency != 1 {
		t.Errorf("runs in flight after the refusal: got %d, want 1 (the refused run's slot given back)", use.Concurrency)
	}

	// A capped run goes to the sandbox, which the ceiling does not govern.
	sb := &fakeSandbox{exec: h.exec}
	h.svc.Sandbox = sb
	h.setUserLimits(`{"memory_per_run": "1GiB"}`)
	out, err := h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: "sandboxed"}, nil)
	if err != nil || out.Record.Status != run.StatusSucceeded || sb.runs != 1 {
		t.Fatalf("capped run while the ceiling is full: got %v (sandbox ran %d), want it run in the sandbox", err, sb.runs)
	}
	h.svc.Sandbox = nil

	cancel()
	if out := <-done; out == nil || out.Record.Status != run.StatusCancelled {
		t.Fatalf("first run after cancel: got %+v, want status cancelled", out)
	}
	if used, runs := ceiling.InUse(); used != 0 || runs != 0 {
		t.Errorf("ceiling after the first run ended: %d bytes, %d runs; want 0, 0", used, runs)
	}
	out, err = h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: "third"}, nil)
	if err != nil || out.Record.Status != run.StatusSucceeded {
		t.Fatalf("run once the ceiling has room: got %v, want success", err)
	}
}
