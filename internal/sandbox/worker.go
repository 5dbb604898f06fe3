package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/run"
)

// TestComponentsEnv is the environment variable that, set to 1 in a
// worker's environment, enables the test components (TestAllocate). The
// server never reads it; tests set it through sandbox.worker_env.
const TestComponentsEnv = "SLUICE_SANDBOX_TEST_COMPONENTS"

// Work is the worker's side of the protocol (`sluice worker`): it says it
// is ready, reads one job from in, runs it with an executor whose model
// calls and chat messages go to the server, writes the result to out and
// returns. It returns early, with an error, if in closes (the server went
// away or gave up on the run).
func Work(ctx context.Context, in io.Reader, out io.Writer, log *slog.Logger, getenv func(string) string) error {
	c := newConn(in, out, 1<<30) // the job is as large as the server sends
	warm(log)
	if err := c.send(frameReady, 0, readyBody{PID: os.Getpid()}); err != nil {
		return err
	}
	f, err := c.recv()
	if errors.Is(err, io.EOF) {
		return nil // retired before it was used
	}
	if err != nil {
		return fmt.Errorf("read job: %w", err)
	}
	if f.Type != frameJob {
		return fmt.Errorf("first frame is %q, want %q", f.Type, frameJob)
	}
	var jb jobBody
	if err := json.Unmarshal(f.Body, &jb); err != nil {
		return fmt.Errorf("decode job: %w", err)
	}
	c.limit = maxFrame
	if jb.MemoryLimit > 0 {
		// Collect garbage harder near the cap than the default GOGC would,
		// so that garbage does not get a run killed. Live memory over the
		// cap still is.
		debug.SetMemoryLimit(jb.MemoryLimit - jb.MemoryLimit/8)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if jb.Flow == nil {
		return refuseJob(c, errs.E(errs.Invalid, "the job has no flow"))
	}
	r := &remote{c: c, pending: map[uint64]chan frame{}}
	// The answers' reader lives as long as the process: it ends when the
	// server closes our stdin, which also stops the run.
	go func() {
		defer cancel()
		r.dispatch()
	}()

	exec := &run.Executor{Calls: r, Guard: &run.Guard{AllowHosts: jb.AllowHosts}, Log: log}
	if jb.Messages {
		exec.Messages = r
	}
	if jb.MaxFileBytes > 0 {
		r.maxFile = jb.MaxFileBytes
		exec.Files = r
	}
	if getenv(TestComponentsEnv) == "1" {
		exec.Components = TestComponents()
	}
	job := &run.Job{RunID: jb.RunID, FlowID: jb.FlowID, Flow: jb.Flow, InputValue: jb.InputValue, InputType: jb.InputType,
		OutputType: jb.OutputType, OutputComponent: jb.OutputComponent, Tweaks: jb.Tweaks, SessionID: jb.SessionID, Caps: jb.Caps,
		Progress: func(p run.Progress) { r.progress(p, p.Node != "" && !quickNodes[nodeType(jb.Flow, p.Node)]) }}
	if jb.Events {
		job.OnEvent = func(event string, data any) {
			b, err := json.Marshal(data)
			if err == nil {
				_ = c.send(frameEvent, 0, eventBody{Event: event, Data: b})
			}
		}
	}
	res, runErr := exec.Execute(ctx, job)
	body := resultBody{Outputs: res.Outputs, Steps: res.Steps, Trace: res.Trace, Error: encodeError(runErr)}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		body.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		body.MaxRSS = ru.Maxrss << 10 // KiB on Linux
	}
	err = r.send(frameResult, 0, body)
	// Our stdout is done; the server closes our stdin when it has read it.
	cancel()
	return err
}

// refuseJob answers a job that cannot run.
func refuseJob(c *conn, err error) error {
	return c.send(frameResult, 0, resultBody{Error: encodeError(&run.RunError{Status: run.StatusFailed, Err: err})})
}

// remote is the worker's Caller and MessageStore: each method is a request
// to the server, answered on the same channel.
type remote struct {
	c       *conn
	steps   atomic.Int64
	maxFile int64 // the job's max_file_bytes: what a file frame carries at most

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan frame
	closed  bool

	// Progress frames wait here and go out with the next request or the
	// result, in the same write, so that the server wakes once for them;
	// or after progressDelay, so that a node that runs long with no
	// request (the one the kernel may stop) is known to the server.
	// wmu orders the writes that carry queued progress.
	wmu    sync.Mutex
	pmu    sync.Mutex
	queued []byte
	flush  *time.Timer
}

// send writes the queued progress and a frame.
func (r *remote) send(typ string, id uint64, body any) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	return r.c.sendAfter(r.takeProgress(), typ, id, body)
}

// progressDelay is how long progress may wait for a request to go with.
const progressDelay = 2 * time.Millisecond

// quickNodes are the node types that end quickly or make a request to the
// server soon: their start can wait to go out with it. Any other node (a
// tool fetching a URL, a test component allocating memory) might be the
// one running when the worker is stopped, so its start is sent at once.
var quickNodes = map[string]bool{
	"ChatInput": true, "TextInput": true, "ChatOutput": true, "TextOutput": true, flow.TypePrompt: true, "Memory": true,
	"LanguageModelComponent": true, "OpenAIModel": true, "HuggingFaceHub": true, "OllamaModel": true,
	flow.TypeLLMChain: true, flow.TypeAgent: true, "CalculatorComponent": true,
}

func nodeType(f *flow.Flow, id string) string {
	if n := f.Node(id); n != nil {
		return n.Type
	}
	return ""
}

// progress queues a progress frame (the job's Progress), or sends it with
// those queued when now is set.
func (r *remote) progress(p run.Progress, now bool) {
	r.steps.Store(p.Steps)
	if now {
		_ = r.send(frameProgress, 0, p)
		return
	}
	r.pmu.Lock()
	defer r.pmu.Unlock()
	b, err := encode(r.queued, frameProgress, 0, p)
	if err != nil {
		return
	}
	r.queued = b
	if r.flush == nil {
		r.flush = time.AfterFunc(progressDelay, func() {
			r.wmu.Lock()
			defer r.wmu.Unlock()
			if b := r.takeProgress(); len(b) > 0 {
				_ = r.c.write(b)
			}
		})
	}
}

// takeProgress returns the queued progress frames and empties the queue.
func (r *remote) takeProgress() []byte {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if r.flush != nil {
		r.flush.Stop()
		r.flush = nil
	}
	b := r.queued
	r.queued = nil
	return b
}

var (
	_ run.Caller       = (*remote)(nil)
	_ run.FileStore    = (*remote)(nil)
	_ run.VectorCaller = (*remote)(nil)
	_ run.MessageStore = (*remote)(nil)
)

// dispatch hands each answer to its request until in closes.
func (r *remote) dispatch() {
	for {
		f, err := r.c.recv()
		if err != nil {
			r.mu.Lock()
			r.closed = true
			for id, ch := range r.pending {
				close(ch)
				delete(r.pending, id)
			}
			r.mu.Unlock()
			return
		}
		r.mu.Lock()
		ch := r.pending[f.ID]
		delete(r.pending, f.ID)
		r.mu.Unlock()
		if ch != nil {
			ch <- f
		}
	}
}

// ask sends a request and waits for its answer.
func (r *remote) ask(ctx context.Context, typ string, body any, answer any) error {
	ch := make(chan frame, 1)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errs.E(errs.Unavailable, "the server closed the worker's channel")
	}
	r.next++
	id := r.next
	r.pending[id] = ch
	r.mu.Unlock()
	if err := r.send(typ, id, body); err != nil {
		return err
	}
	select {
	case f, ok := <-ch:
		if !ok {
			return errs.E(errs.Unavailable, "the server closed the worker's channel")
		}
		return json.Unmarshal(f.Body, answer)
	case <-ctx.Done():
		// The server cancels its side of the call with the run; the answer,
		// if it comes, is dropped.
		return ctx.Err()
	}
}

// Call asks the server to make the governed model call.
func (r *remote) Call(ctx context.Context, _ *run.Job, mc run.ModelCall) (run.CallResult, error) {
	var ans callResultBody
	if err := r.ask(ctx, frameCall, callBody{ModelCall: mc, Steps: r.steps.Load()}, &ans); err != nil {
		return run.CallResult{}, err
	}
	return ans.Result, ans.Error.decode()
}

// Vector asks the server to do vector-store work (embed, store, search) in
// the run's project.
func (r *remote) Vector(ctx context.Context, _ *run.Job, c run.VectorCall) (run.VectorResult, error) {
	var ans vectorResultBody
	if err := r.ask(ctx, frameVector, vectorBody{VectorCall: c, Steps: r.steps.Load()}, &ans); err != nil {
		return run.VectorResult{}, err
	}
	return ans.Result, ans.Error.decode()
}

// Search asks the server to call a search node's service: its key stays
// there.
func (r *remote) Search(ctx context.Context, _ *run.Job, c run.SearchCall) (run.SearchResult, error) {
	var ans searchResultBody
	if err := r.ask(ctx, frameSearch, searchBody{SearchCall: c, Steps: r.steps.Load()}, &ans); err != nil {
		return run.SearchResult{}, err
	}
	return ans.Result, ans.Error.decode()
}

// MCP asks the server to list or call a node's MCP tools: the MCP
// servers and their tokens stay there.
func (r *remote) MCP(ctx context.Context, _ *run.Job, c run.MCPCall) (run.MCPResult, error) {
	var ans mcpResultBody
	if err := r.ask(ctx, frameMCP, mcpBody{MCPCall: c, Steps: r.steps.Load()}, &ans); err != nil {
		return run.MCPResult{}, err
	}
	return ans.Result, ans.Error.decode()
}

// AppendMessage asks the server to store a message of this run's session.
func (r *remote) AppendMessage(ctx context.Context, m *run.Message) error {
	var ans messagesResultBody
	if err := r.ask(ctx, frameAppend, m, &ans); err != nil {
		return err
	}
	return ans.Error.decode()
}

// Messages asks the server for this run's session history.
func (r *remote) Messages(ctx context.Context, _, _, sessionID string, n int) ([]*run.Message, error) {
	var ans messagesResultBody
	if err := r.ask(ctx, frameMessages, messagesBody{SessionID: sessionID, N: n}, &ans); err != nil {
		return nil, err
	}
	return ans.Messages, ans.Error.decode()
}

// file asks the server for a file operation in the run's project.
func (r *remote) file(ctx context.Context, q fileBody) (fileResultBody, error) {
	var ans fileResultBody
	if err := r.ask(ctx, frameFile, q, &ans); err != nil {
		return ans, err
	}
	return ans, ans.Error.decode()
}

// Find asks the server for a file of the run's project by folder and name.
func (r *remote) Find(ctx context.Context, _ files.Scope, folder, name string) (*files.File, error) {
	ans, err := r.file(ctx, fileBody{Op: "find", Folder: folder, Name: name})
	return ans.File, err
}

// Get asks the server for a file of the run's project by id.
func (r *remote) Get(ctx context.Context, _ files.Scope, id string) (*files.File, error) {
	ans, err := r.file(ctx, fileBody{Op: "get", ID: id})
	return ans.File, err
}

// Read asks the server for a file's bytes. The run's deadline kills the
// worker, so the request needs no context of its own.
func (r *remote) Read(f *files.File) ([]byte, error) {
	ans, err := r.file(context.Background(), fileBody{Op: "read", ID: f.ID})
	return ans.Data, err
}

// Put sends a file for the server to store in the run's project.
func (r *remote) Put(ctx context.Context, _ files.Scope, folder, name string, naming files.Naming, _ string, rd io.Reader) (*files.File, error) {
	data, err := io.ReadAll(io.LimitReader(rd, r.maxFile+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > r.maxFile {
		return nil, errs.E(errs.TooLarge, "the file is larger than %d bytes, the most a sandboxed run writes", r.maxFile)
	}
	ans, err := r.file(ctx, fileBody{Op: "put", Folder: folder, Name: name, Naming: naming, Data: data})
	return ans.File, err
}

// MaxFile is the most a file frame carries.
func (r *remote) MaxFile() int64 { return r.maxFile }

// warmFlow is what warm runs: the common components, one model call.
const warmFlow = `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"p","type":"Prompt","data":{"template":"Warm up: {q}"}},
{"id":"llm","type":"LanguageModelComponent"},{"id":"out","type":"ChatOutput"}],
"edges":[{"source":"in","target":"p","targetHandle":"q"},{"source":"p","target":"llm"},{"source":"llm","target":"out"}]}`

// warm runs a small job through the same decoding, executor and encoding
// as a real one, before the worker says it is ready: a new process's first
// run otherwise pays milliseconds of first-touch page faults and heap
// growth, and a pooled worker can pay them while it waits.
func warm(log *slog.Logger) {
	g, err := flow.Parse([]byte(warmFlow))
	if err != nil {
		log.Warn("warm-up flow does not parse", slog.String("error", err.Error()))
		return
	}
	var buf bytes.Buffer
	c := newConn(&buf, &buf, maxFrame)
	if c.send(frameJob, 0, jobBody{RunID: "warm", Flow: g, InputValue: "hello", SessionID: "warm", Events: true}) != nil {
		return
	}
	f, err := c.recv()
	var jb jobBody
	if err != nil || json.Unmarshal(f.Body, &jb) != nil {
		return
	}
	exec := &run.Executor{Calls: warmCaller{}, Guard: &run.Guard{}, Log: log}
	job := &run.Job{RunID: jb.RunID, Flow: jb.Flow, InputValue: jb.InputValue, SessionID: jb.SessionID,
		Progress: func(p run.Progress) { _ = c.send(frameProgress, 0, p); _, _ = c.recv() },
		OnEvent:  func(string, any) {}}
	res, runErr := exec.Execute(context.Background(), job)
	_ = c.send(frameResult, 0, resultBody{Outputs: res.Outputs, Steps: res.Steps, Trace: res.Trace, Error: encodeError(runErr)})
	_, _ = c.recv()
}

// warmCaller answers warm's model call.
type warmCaller struct{}

func (warmCaller) Call(_ context.Context, _ *run.Job, mc run.ModelCall) (run.CallResult, error) {
	var buf bytes.Buffer
	c := newConn(&buf, &buf, maxFrame)
	_ = c.send(frameCall, 1, callBody{ModelCall: mc})
	_, _ = c.recv()
	r := run.CallResult{Response: llm.Response{Text: "warm", Usage: llm.Usage{InputTokens: 1, OutputTokens: 1}}, Calls: 1, Model: "warm"}
	_ = c.send(frameCallResult, 1, callResultBody{Result: r})
	f, err := c.recv()
	if err == nil {
		var ans callResultBody
		_ = json.Unmarshal(f.Body, &ans)
	}
	return r, nil
}
