// Package sandbox runs flow runs that have a memory cap in worker
// processes, one run per worker, each in its own memory cgroup (v2, else
// v1) created under Sluice's own, with the run's memory_per_run written as
// the group's limit before the job is sent. The kernel enforces the cap: a
// run that needs more is killed by the OOM killer and recorded
// memory_limit_exceeded, while the server and other runs carry on. A worker
// is the sluice binary itself (`sluice worker`); it talks to the server over
// its stdin and stdout (see protocol.go), and its model calls and chat
// messages go back to the server, which makes them governed as in-process
// runs are (reserve, call, settle; provider keys never leave the server).
// A pool keeps workers started ahead of need. Where no cgroup is writable
// the sandbox says so (Mode none) and, as configured, refuses capped runs or
// runs them unenforced.
package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
)

// DefaultWorkers is the pool's size when Options.Workers is 0.
const DefaultWorkers = 2

// Options configure a Sandbox.
type Options struct {
	// Command starts a worker: the sluice binary and "worker", or a test
	// binary that acts as one.
	Command []string
	// Env is the workers' whole environment. Keep provider keys out of it:
	// workers make no model calls of their own.
	Env []string
	// Workers is how many started workers wait for runs.
	Workers int
	// CgroupRoot is the cgroup directory to create Sluice's group in: ""
	// for this process's own cgroup, "none" for no cgroups.
	CgroupRoot string
	// RunUnenforced lets capped runs run without a memory limit when no
	// cgroup is usable; otherwise they are refused.
	RunUnenforced bool
	// Calls makes the workers' model calls (the server's executor) and
	// Messages stores their chat messages (nil: none are stored).
	Calls    run.Caller
	Messages run.MessageStore
	// Files, when set, gives runs the project's files (File, SaveToFile):
	// the workers ask, the server reads and writes in the run's project.
	Files run.FileStore
	// AllowHosts configures the workers' SSRF guard.
	AllowHosts []string
	// OnRun, when set, is told which worker process, in which cgroup ("" in
	// Mode none), takes each run.
	OnRun func(runID string, pid int, cgroup string)
	// Stderr receives the workers' logs; nil logs each line to Log.
	Stderr io.Writer
	Log    *slog.Logger
}

// Sandbox executes runs in worker processes. It implements run.Sandbox.
type Sandbox struct {
	opts   Options
	h      hierarchy
	reason string // why Mode is none
	pool   *pool
	// retiring counts the used workers being killed, reaped and removed
	// after their runs returned.
	retiring sync.WaitGroup
}

var _ run.Sandbox = (*Sandbox)(nil)

// New finds the cgroup to work in and starts the worker pool. It fails only
// on bad options: a host without usable cgroups gives a Sandbox in Mode
// none, whose Reason says why.
func New(opts Options) (*Sandbox, error) {
	if len(opts.Command) == 0 || opts.Command[0] == "" {
		return nil, errors.New("sandbox: no worker command")
	}
	if opts.Calls == nil {
		return nil, errors.New("sandbox: no caller for the workers' model calls")
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Stderr == nil {
		opts.Stderr = &lineLog{log: opts.Log}
	}
	s := &Sandbox{opts: opts}
	s.h, s.reason = detect(opts.CgroupRoot)
	sp := &spawner{command: opts.Command, env: opts.Env, stderr: opts.Stderr, h: s.h}
	size := opts.Workers
	if s.h.mode == ModeNone && !opts.RunUnenforced {
		size = 0 // every capped run is refused: no worker will be needed
	}
	s.pool = newPool(sp, size, func(msg string, err error) {
		opts.Log.Error(msg, slog.String("error", err.Error()))
	})
	return s, nil
}

// Mode is how memory caps are enforced: v2, v1 or none (also for a nil
// Sandbox).
func (s *Sandbox) Mode() Mode {
	if s == nil {
		return ModeNone
	}
	return s.h.mode
}

// Reason says why Mode is none ("" otherwise).
func (s *Sandbox) Reason() string { return s.reason }

// Dir is Sluice's cgroup, under which each worker gets its own ("" in Mode
// none).
func (s *Sandbox) Dir() string { return s.h.dir }

// Ready reports whether workers can be started: the last start's error
// when no worker is waiting.
func (s *Sandbox) Ready() error {
	if s == nil {
		return nil
	}
	return s.pool.health()
}

// Close retires the idle workers and removes Sluice's cgroup. Runs still
// executing keep their workers until they end; call Close after them.
func (s *Sandbox) Close() error {
	if s == nil {
		return nil
	}
	s.pool.close()
	s.retiring.Wait()
	return s.h.close()
}

// retireLater kills a used worker, reaps it and removes its cgroup, off the
// run's path, then tops the pool up.
func (s *Sandbox) retireLater(w *proc, runID string) {
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		if err := w.retire(); err != nil {
			s.opts.Log.Warn("removing a worker's cgroup failed", slog.String("run_id", runID), slog.String("error", err.Error()))
		}
		s.pool.fill()
	}()
}

// Check refuses a capped run that the host cannot hold to its cap, unless
// the operator chose to run such runs unenforced.
func (s *Sandbox) Check(caps quota.Caps) error {
	if caps.MemoryPerRun > 0 && s.h.mode == ModeNone && !s.opts.RunUnenforced {
		return errs.E(errs.Unavailable,
			"this run has a memory cap of %s (memory_per_run), and this server cannot enforce memory caps (no writable memory cgroup), "+
				"so it refuses the run rather than run it unenforced; an operator may allow such runs with sandbox.unenforced: run", formatBytes(caps.MemoryPerRun))
	}
	return nil
}

// Execute runs the job in a worker held to job.Caps.MemoryPerRun and
// returns what it did. The run's model calls are made through Options.Calls
// with this job (its principal, caps and event stream), whatever the worker
// says. At ctx's end (run_timeout, a cancelled request) the worker's process
// group is killed.
func (s *Sandbox) Execute(ctx context.Context, job *run.Job) (*run.Result, error) {
	w, err := s.pool.get(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return &run.Result{}, contextRunError(ctx.Err(), "")
		}
		s.opts.Log.Error("no sandbox worker for a run", slog.String("run_id", job.RunID), slog.String("error", err.Error()))
		return &run.Result{}, &run.RunError{Status: run.StatusFailed, Err: errs.E(errs.Unavailable, "no sandbox worker could be started for the run")}
	}
	if s.opts.OnRun != nil {
		dir := ""
		if w.cg != nil {
			dir = w.cg.dir
		}
		s.opts.OnRun(job.RunID, w.pid, dir)
	}
	se := &session{s: s, job: job, w: w, limit: job.Caps.MemoryPerRun}
	return se.run(ctx)
}

// session is one run in one worker, seen from the server.
type session struct {
	s     *Sandbox
	job   *run.Job
	w     *proc
	limit int64

	wg sync.WaitGroup // request handlers

	mu        sync.Mutex
	usage     run.Usage
	simulated bool
	steps     int64
	trace     []run.NodeTrace
	current   string // the node running, from progress
	since     time.Time
	stored    []*run.Message
	// mcp holds the run's MCP sessions, opened on the worker's first MCP
	// operation; closed when the run ends.
	mcp *run.MCPSessions
}

func (se *session) run(ctx context.Context) (*run.Result, error) {
	w, log := se.w, se.s.opts.Log
	cg := w.cg
	enforced := cg != nil && se.limit > 0
	if enforced {
		if err := cg.setLimit(se.limit); err != nil {
			_ = w.retire()
			log.Error("setting a worker's memory limit failed", slog.String("run_id", se.job.RunID), slog.String("error", err.Error()))
			return &run.Result{}, &run.RunError{Status: run.StatusFailed,
				Err: errs.E(errs.Unprocessable, "the run's memory cap of %s (memory_per_run) could not be applied to its worker; it may be below what a worker needs to start", formatBytes(se.limit))}
		}
	}
	jb := jobBody{RunID: se.job.RunID, FlowID: se.job.FlowID, Flow: withoutCode(se.job.Flow), InputValue: se.job.InputValue,
		InputType: se.job.InputType, OutputType: se.job.OutputType, OutputComponent: se.job.OutputComponent, Tweaks: se.job.Tweaks,
		SessionID: se.job.SessionID, Caps: se.job.Caps, Events: se.job.OnEvent != nil, AllowHosts: se.s.opts.AllowHosts,
		Messages: se.s.opts.Messages != nil, MemoryLimit: se.limit}
	if se.s.opts.Files != nil {
		jb.MaxFileBytes = min(se.s.opts.Files.MaxFile(), maxSandboxFile)
	}
	callCtx, cancelCalls := context.WithCancel(ctx)
	defer cancelCalls()
	// At the deadline the worker dies, whatever the server is doing with
	// it: a write to it blocked on a full pipe then fails.
	stopKill := context.AfterFunc(ctx, w.kill)
	defer stopKill()
	var result *resultBody
	var protoErr error
	if err := w.c.send(frameJob, 0, jb); err != nil {
		protoErr = err
	}
loop:
	for protoErr == nil {
		select {
		case f, ok := <-w.frames:
			if !ok {
				break loop // the worker exited
			}
			switch f.Type {
			case frameCall:
				se.handle(func() { se.call(callCtx, f) })
			case frameVector:
				se.handle(func() { se.vector(callCtx, f) })
			case frameSearch:
				se.handle(func() { se.search(callCtx, f) })
			case frameMCP:
				se.handle(func() { se.mcpOp(callCtx, f) })
			case frameAppend:
				se.handle(func() { se.appendMessage(callCtx, f) })
			case frameMessages:
				se.handle(func() { se.messages(callCtx, f) })
			case frameFile:
				se.handle(func() { se.file(callCtx, f) })
			case frameEvent:
				se.event(f)
			case frameProgress:
				se.progress(f)
			case frameResult:
				var rb resultBody
				if err := json.Unmarshal(f.Body, &rb); err != nil {
					protoErr = fmt.Errorf("decode result: %w", err)
					break loop
				}
				result = &rb
				break loop
			default:
				protoErr = fmt.Errorf("unexpected %q frame", f.Type)
			}
		case <-ctx.Done():
			break loop
		}
	}
	// One run per worker: it is killed now. One that sent its result had
	// nothing left to do and is reaped in the background, its CPU time and
	// maximum RSS as it reported them. Any other is reaped now, to learn
	// how it ended (the OOM killer?) and what it used.
	w.kill()
	cancelCalls()
	se.wg.Wait()
	if se.mcp != nil {
		se.mcp.Close()
	}
	var c counters
	var cpu time.Duration
	var maxRSS int64
	if result != nil {
		cpu, maxRSS = result.CPU, result.MaxRSS
	} else {
		w.wait()
		cpu, maxRSS = w.rusage()
	}
	if cg != nil {
		c = cg.read()
	}
	se.s.retireLater(w, se.job.RunID)

	se.mu.Lock()
	defer se.mu.Unlock()
	res := &run.Result{Usage: se.usage, Steps: se.steps, Trace: se.trace, Messages: se.stored, Simulated: se.simulated,
		Resources: &run.Resources{MemoryEnforced: enforced, PeakMemory: c.peak, CPUMillis: cpu.Milliseconds()}}
	if cg == nil || c.peak == 0 {
		res.Resources.PeakMemory, res.Resources.PeakApproximate = maxRSS, true
	}
	// Killed by the OOM killer: the kernel counted it, or (kernels before
	// 4.13, v1) the group hit its limit and the worker died of SIGKILL.
	oom := result == nil && enforced && (c.oomKill > 0 || (!c.oomKnown && c.failcnt > 0 && w.signaled(syscall.SIGKILL)))
	var runErr error
	switch {
	case result != nil:
		res.Steps = max(res.Steps, result.Steps)
		res.Trace = result.Trace
		runErr = result.Error.decode()
		if runErr == nil {
			res.Outputs = result.Outputs
		}
	case ctx.Err() != nil:
		runErr = contextRunError(ctx.Err(), se.current)
		se.failCurrent(res, runErr)
	case oom:
		runErr = &run.RunError{Status: run.StatusMemoryLimitExceeded, NodeID: se.current, Err: errs.E(errs.QuotaExceeded,
			"the run needed more memory than its cap of %s (memory_per_run); the kernel stopped its worker process", formatBytes(se.limit))}
		se.failCurrent(res, runErr)
	default:
		why := w.exitText()
		if protoErr != nil {
			why = protoErr.Error()
		} else if w.readErr != nil && !errors.Is(w.readErr, io.EOF) {
			why = w.readErr.Error()
		}
		log.Error("a sandbox worker ended without a result", slog.String("run_id", se.job.RunID), slog.Int("pid", w.pid), slog.String("error", why))
		runErr = &run.RunError{Status: run.StatusFailed, NodeID: se.current, Err: errs.E(errs.Unavailable, "the run's worker process ended unexpectedly (%s)", why)}
		se.failCurrent(res, runErr)
	}
	log.Debug("sandboxed run ended", slog.String("run_id", se.job.RunID), slog.Int("pid", w.pid), slog.String("mode", string(se.s.h.mode)),
		slog.Int64("peak_memory", res.Resources.PeakMemory), slog.Int64("cpu_ms", res.Resources.CPUMillis), slog.Bool("oom", oom))
	return res, runErr
}

// failCurrent adds the trace of the node the worker was running when it
// was stopped.
func (se *session) failCurrent(res *run.Result, err error) {
	if se.current == "" {
		return
	}
	t := run.NodeTrace{NodeID: se.current, Status: "failed", StartedAt: se.since, Error: err.Error(),
		DurationMS: float64(time.Since(se.since).Microseconds()) / 1000, Usage: res.Usage}
	if se.job.Flow != nil {
		if n := se.job.Flow.Node(se.current); n != nil {
			t.Type = n.Type
		}
	}
	for _, done := range res.Trace {
		t.Usage.InputTokens -= done.Usage.InputTokens
		t.Usage.OutputTokens -= done.Usage.OutputTokens
		t.Usage.GPUMillis -= done.Usage.GPUMillis
		t.Usage.CostMicros -= done.Usage.CostMicros
	}
	res.Trace = append(res.Trace, t)
}

// handle runs a request handler; the run waits for it before it ends.
func (se *session) handle(f func()) {
	se.wg.Add(1)
	go func() {
		defer se.wg.Done()
		f()
	}()
}

// call makes a model call the worker asked for, charged to the server's
// copy of the job.
func (se *session) call(ctx context.Context, f frame) {
	var cb callBody
	var r run.CallResult
	err := json.Unmarshal(f.Body, &cb)
	if err == nil {
		r, err = se.s.opts.Calls.Call(ctx, se.job, cb.ModelCall)
		se.mu.Lock()
		se.usage.Add(r.Usage)
		se.simulated = se.simulated || r.Response.Simulated
		se.steps = max(se.steps, cb.Steps)
		se.mu.Unlock()
	}
	_ = se.w.c.send(frameCallResult, f.ID, callResultBody{Result: r, Error: encodeError(err)})
}

// vector does the vector-store work the worker asked for, with the
// server's Calls, in the server's copy of the job's project.
func (se *session) vector(ctx context.Context, f frame) {
	var vb vectorBody
	var r run.VectorResult
	err := json.Unmarshal(f.Body, &vb)
	if err == nil {
		vc, ok := se.s.opts.Calls.(run.VectorCaller)
		if !ok {
			err = errs.E(errs.Unprocessable, "node %s: this server has no vector store for sandboxed runs", vb.NodeID)
		} else {
			r, err = vc.Vector(ctx, se.job, vb.VectorCall)
		}
		se.mu.Lock()
		se.usage.Add(r.Usage)
		se.simulated = se.simulated || r.Simulated
		se.steps = max(se.steps, vb.Steps)
		se.mu.Unlock()
	}
	_ = se.w.c.send(frameVectorResult, f.ID, vectorResultBody{Result: r, Error: encodeError(err)})
}

// search makes a search node's call for the worker, with the server's
// key for the service, behind its SSRF guard.
func (se *session) search(ctx context.Context, f frame) {
	var sb searchBody
	var r run.SearchResult
	err := json.Unmarshal(f.Body, &sb)
	if err == nil {
		sc, ok := se.s.opts.Calls.(run.SearchCaller)
		if !ok {
			err = errs.E(errs.Unprocessable, "node %s: this server makes no search calls for sandboxed runs", sb.NodeID)
		} else {
			r, err = sc.Search(ctx, se.job, sb.SearchCall)
		}
		se.mu.Lock()
		se.steps = max(se.steps, sb.Steps)
		se.mu.Unlock()
	}
	_ = se.w.c.send(frameSearchResult, f.ID, searchResultBody{Result: r, Error: encodeError(err)})
}

// mcpSessions is what opens a run's MCP sessions in the server (the
// executor).
type mcpSessions interface {
	NewMCPSessions(job *run.Job) *run.MCPSessions
}

// mcpOp lists or calls a run's MCP tools for the worker: the MCP servers,
// their tokens and sessions are the server's.
func (se *session) mcpOp(ctx context.Context, f frame) {
	var mb mcpBody
	var r run.MCPResult
	err := json.Unmarshal(f.Body, &mb)
	if err == nil {
		se.mu.Lock()
		if se.mcp == nil {
			if ms, ok := se.s.opts.Calls.(mcpSessions); ok {
				se.mcp = ms.NewMCPSessions(se.job)
			}
		}
		m := se.mcp
		se.steps = max(se.steps, mb.Steps)
		se.mu.Unlock()
		if m == nil {
			err = errs.E(errs.Unprocessable, "node %s: this server makes no MCP calls for sandboxed runs", mb.NodeID)
		} else {
			r, err = m.MCP(ctx, se.job, mb.MCPCall)
		}
	}
	_ = se.w.c.send(frameMCPResult, f.ID, mcpResultBody{Result: r, Error: encodeError(err)})
}

// appendMessage stores a message in the run's own session.
func (se *session) appendMessage(ctx context.Context, f frame) {
	var m run.Message
	err := json.Unmarshal(f.Body, &m)
	if err == nil && m.SessionID != se.job.SessionID {
		err = errs.E(errs.Forbidden, "a run stores messages in its own session only")
	}
	if err == nil {
		m.TenantID, m.UserID, m.RunID, m.FlowID = se.job.Who.TenantID, se.job.Who.UserID, se.job.RunID, se.job.FlowID
		err = se.s.opts.Messages.AppendMessage(context.WithoutCancel(ctx), &m)
	}
	if err == nil {
		se.mu.Lock()
		se.stored = append(se.stored, &m)
		se.mu.Unlock()
	}
	_ = se.w.c.send(frameAppendResult, f.ID, messagesResultBody{Error: encodeError(err)})
}

// maxHistory bounds the messages a worker may ask for at once.
const maxHistory = 2000

// messages reads the run's own session history.
func (se *session) messages(ctx context.Context, f frame) {
	var q messagesBody
	var out []*run.Message
	err := json.Unmarshal(f.Body, &q)
	if err == nil && q.SessionID != se.job.SessionID {
		err = errs.E(errs.Forbidden, "a run reads its own session only")
	}
	if err == nil {
		out, err = se.s.opts.Messages.Messages(ctx, se.job.Who.TenantID, se.job.Who.UserID, se.job.SessionID, min(max(q.N, 0), maxHistory))
	}
	_ = se.w.c.send(frameMessagesResult, f.ID, messagesResultBody{Messages: out, Error: encodeError(err)})
}

// file reads or writes the run's project's files for the worker: always
// in the project of the server's copy of the job, writing only into the
// project's own folder, as SaveToFile does.
func (se *session) file(ctx context.Context, f frame) {
	var q fileBody
	var ans fileResultBody
	err := json.Unmarshal(f.Body, &q)
	fs := se.s.opts.Files
	sc := files.Scope{TenantID: se.job.Who.TenantID, ProjectID: se.job.Who.ProjectID}
	if err == nil && fs == nil {
		err = errs.E(errs.Unprocessable, "this server keeps no project files")
	}
	if q.Folder == "" {
		q.Folder = sc.ProjectID // the worker does not know its project: "" is the project's own folder
	}
	if err == nil {
		switch q.Op {
		case "find":
			ans.File, err = fs.Find(ctx, sc, q.Folder, q.Name)
		case "get":
			ans.File, err = fs.Get(ctx, sc, q.ID)
		case "read":
			var fl *files.File
			if fl, err = fs.Get(ctx, sc, q.ID); err == nil {
				if fl.Size > maxSandboxFile {
					err = errs.E(errs.TooLarge, "file %s is larger than %s, the most a sandboxed run reads", fl.Name, formatBytes(maxSandboxFile))
				} else {
					ans.Data, err = fs.Read(fl)
				}
			}
		case "put":
			if q.Folder != sc.ProjectID {
				err = errs.E(errs.Forbidden, "a run writes its project's own files only")
			} else {
				ans.File, err = fs.Put(context.WithoutCancel(ctx), sc, q.Folder, q.Name, q.Naming, se.job.Who.UserID, bytes.NewReader(q.Data))
			}
		default:
			err = errs.E(errs.Invalid, "unknown file operation %q", q.Op)
		}
	}
	ans.Error = encodeError(err)
	_ = se.w.c.send(frameFileResult, f.ID, ans)
}

// event forwards the worker's add_message events to the caller's stream.
// Token events come from the server's own model calls.
func (se *session) event(f frame) {
	var ev eventBody
	if se.job.OnEvent == nil || json.Unmarshal(f.Body, &ev) != nil || ev.Event != "add_message" {
		return
	}
	var data any
	if json.Unmarshal(ev.Data, &data) == nil {
		se.job.OnEvent(ev.Event, data)
	}
}

// progress records how far the worker got.
func (se *session) progress(f frame) {
	var p run.Progress
	if json.Unmarshal(f.Body, &p) != nil {
		return
	}
	se.mu.Lock()
	defer se.mu.Unlock()
	se.steps = max(se.steps, p.Steps)
	if p.Node != "" {
		se.current, se.since = p.Node, time.Now().UTC()
	}
	if p.Done != nil {
		se.trace = append(se.trace, *p.Done)
		se.current = ""
	}
	if se.job.Progress != nil {
		se.job.Progress(p)
	}
}

// contextRunError is the run's error when ctx ended it.
func contextRunError(err error, nodeID string) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &run.RunError{Status: run.StatusTimeout, NodeID: nodeID, Err: errs.E(errs.Unavailable, "the run reached its time limit (run_timeout)")}
	}
	return &run.RunError{Status: run.StatusCancelled, NodeID: nodeID, Err: errs.E(errs.Unavailable, "the run was cancelled")}
}

// withoutCode copies f without the nodes' Python sources, which workers
// never run and which make up most of a LangFlow export.
func withoutCode(f *flow.Flow) *flow.Flow {
	if f == nil {
		return nil
	}
	c := *f
	c.Nodes = make([]*flow.Node, len(f.Nodes))
	for i, n := range f.Nodes {
		if n == nil || n.Code == "" {
			c.Nodes[i] = n
			continue
		}
		nc := *n
		nc.Code = ""
		c.Nodes[i] = &nc
	}
	return &c
}

// formatBytes writes a byte count for people: 64 MiB, 1.5 GiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	s := fmt.Sprintf("%.1f", v)
	if v == float64(int64(v)) {
		s = fmt.Sprintf("%d", int64(v))
	}
	return s + " " + string("KMGTPE"[exp]) + "iB"
}

// lineLog logs each line a worker writes to stderr.
type lineLog struct {
	log *slog.Logger
	mu  sync.Mutex
	buf []byte
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		if i > 0 {
			l.log.Warn("sandbox worker", slog.String("output", string(l.buf[:min(i, 8<<10)])))
		}
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 64<<10 {
		l.buf = l.buf[:0] // a line that never ends
	}
	return len(p), nil
}
