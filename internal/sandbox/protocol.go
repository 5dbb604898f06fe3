package sandbox

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
)

// The worker and the server talk over the worker's stdin (server → worker)
// and stdout (worker → server) in frames: a 4-byte big-endian length, then
// that many bytes of JSON (a frame). Lengths are bounded, so a worker
// cannot make the server allocate without limit.
//
//	worker → server: ready, call, vector, append, messages, event, progress, result
//	server → worker: job, call_result, vector_result, append_result, messages_result
//
// A request (call, vector, append, messages) carries an id its answer
// repeats.
const maxFrame = 16 << 20

// Frame types.
const (
	frameReady          = "ready"
	frameJob            = "job"
	frameCall           = "call"
	frameCallResult     = "call_result"
	frameVector         = "vector"
	frameVectorResult   = "vector_result"
	frameSearch         = "search"
	frameSearchResult   = "search_result"
	frameMCP            = "mcp"
	frameMCPResult      = "mcp_result"
	frameAppend         = "append"
	frameAppendResult   = "append_result"
	frameMessages       = "messages"
	frameMessagesResult = "messages_result"
	frameFile           = "file"
	frameFileResult     = "file_result"
	frameEvent          = "event"
	frameProgress       = "progress"
	frameResult         = "result"
)

// frame is one message.
type frame struct {
	Type string          `json:"type"`
	ID   uint64          `json:"id,omitempty"`
	Body json.RawMessage `json:"body,omitempty"`
}

// readyBody is a worker's first frame.
type readyBody struct {
	PID int `json:"pid"`
}

// jobBody is what a worker needs to run a job. Identity (tenant, user,
// project) stays in the server: the worker's calls and messages are charged
// and scoped by the server's copy of the job, whatever the worker says.
type jobBody struct {
	RunID           string                    `json:"run_id"`
	FlowID          string                    `json:"flow_id,omitempty"`
	Flow            *flow.Flow                `json:"flow"`
	InputValue      string                    `json:"input_value,omitempty"`
	InputType       string                    `json:"input_type,omitempty"`
	OutputType      string                    `json:"output_type,omitempty"`
	OutputComponent string                    `json:"output_component,omitempty"`
	Tweaks          map[string]map[string]any `json:"tweaks,omitempty"`
	SessionID       string                    `json:"session_id,omitempty"`
	Caps            quota.Caps                `json:"caps"`
	// Events is set when the caller streams: the worker forwards its
	// add_message events and asks for token events on its model calls.
	Events bool `json:"events,omitempty"`
	// Messages is set when the server stores chat messages (Memory).
	Messages bool `json:"messages,omitempty"`
	// MaxFileBytes, when set, gives the run the project's files (File,
	// SaveToFile), through the server: the most one node reads or writes.
	MaxFileBytes int64 `json:"max_file_bytes,omitempty"`
	// AllowHosts configures the worker's SSRF guard.
	AllowHosts []string `json:"allow_hosts,omitempty"`
	// MemoryLimit, when set, is the cgroup's limit: the worker's Go runtime
	// collects garbage harder as it nears it.
	MemoryLimit int64 `json:"memory_limit,omitempty"`
}

// callBody is a model call request.
type callBody struct {
	run.ModelCall
	Steps int64 `json:"steps"`
}

// callResultBody answers a call.
type callResultBody struct {
	Result run.CallResult `json:"result"`
	Error  *wireError     `json:"error,omitempty"`
}

// vectorBody is a vector-store request (embeddings and the store, both in
// the server).
type vectorBody struct {
	run.VectorCall
	Steps int64 `json:"steps"`
}

// vectorResultBody answers a vector request.
type vectorResultBody struct {
	Result run.VectorResult `json:"result"`
	Error  *wireError       `json:"error,omitempty"`
}

// searchBody asks the server for a search node's call.
type searchBody struct {
	run.SearchCall
	Steps int64 `json:"steps"`
}

// searchResultBody answers a search request.
type searchResultBody struct {
	Result run.SearchResult `json:"result"`
	Error  *wireError       `json:"error,omitempty"`
}

// mcpBody asks the server for an MCP operation.
type mcpBody struct {
	run.MCPCall
	Steps int64 `json:"steps"`
}

// mcpResultBody answers an MCP request.
type mcpResultBody struct {
	Result run.MCPResult `json:"result"`
	Error  *wireError    `json:"error,omitempty"`
}

// messagesBody asks for the session's last N messages.
type messagesBody struct {
	SessionID string `json:"session_id"`
	N         int    `json:"n"`
}

// messagesResultBody answers messages and append.
type messagesResultBody struct {
	Messages []*run.Message `json:"messages,omitempty"`
	Error    *wireError     `json:"error,omitempty"`
}

// fileBody is a worker's request on its run's project files. The server
// answers in the project of its own copy of the job, whatever the worker
// names.
type fileBody struct {
	Op     string       `json:"op"` // find, get, read, put
	Folder string       `json:"folder,omitempty"`
	Name   string       `json:"name,omitempty"`
	ID     string       `json:"id,omitempty"`
	Naming files.Naming `json:"naming,omitempty"`
	Data   []byte       `json:"data,omitempty"`
}

// fileResultBody answers file.
type fileResultBody struct {
	File  *files.File `json:"file,omitempty"`
	Data  []byte      `json:"data,omitempty"`
	Error *wireError  `json:"error,omitempty"`
}

// maxSandboxFile bounds a file a worker reads or writes: its bytes travel
// in one frame, base64-encoded.
const maxSandboxFile = 8 << 20

// eventBody is a streaming event the worker's run emitted.
type eventBody struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// resultBody is the worker's last frame.
type resultBody struct {
	Outputs []run.ComponentOutput `json:"outputs,omitempty"`
	Steps   int64                 `json:"steps"`
	Trace   []run.NodeTrace       `json:"trace,omitempty"`
	Error   *wireError            `json:"error,omitempty"`
	// CPU and MaxRSS are the worker's getrusage(RUSAGE_SELF) as it ends,
	// so that the server need not wait for its exit to record them.
	CPU    time.Duration `json:"cpu"`
	MaxRSS int64         `json:"max_rss"`
}

// conn reads and writes frames. Writes are safe for concurrent use; reads
// are not.
type conn struct {
	r  *bufio.Reader
	mu sync.Mutex
	w  io.Writer
	// limit bounds the frames read (maxFrame, or more for a worker reading
	// its job, which the server bounded).
	limit int
}

func newConn(r io.Reader, w io.Writer, limit int) *conn {
	return &conn{r: bufio.NewReaderSize(r, 64<<10), w: w, limit: limit}
}

// send writes one frame.
func (c *conn) send(typ string, id uint64, body any) error {
	return c.sendAfter(nil, typ, id, body)
}

// sendAfter writes frames already encoded (by encode), then one more, in
// one write: the peer wakes once for all of them.
func (c *conn) sendAfter(pending []byte, typ string, id uint64, body any) error {
	b, err := encode(pending, typ, id, body)
	if err != nil {
		return err
	}
	if err := c.write(b); err != nil {
		return fmt.Errorf("send %s frame: %w", typ, err)
	}
	return nil
}

// write writes encoded frames.
func (c *conn) write(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.w.Write(b)
	return err
}

// encode appends a frame to buf.
func encode(buf []byte, typ string, id uint64, body any) ([]byte, error) {
	var raw json.RawMessage
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return buf, fmt.Errorf("encode %s frame: %w", typ, err)
		}
		raw = b
	}
	b, err := json.Marshal(frame{Type: typ, ID: id, Body: raw})
	if err != nil {
		return buf, fmt.Errorf("encode %s frame: %w", typ, err)
	}
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(b)))
	return append(buf, b...), nil
}

// recv reads one frame.
func (c *conn) recv() (frame, error) {
	var f frame
	var hdr [4]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		return f, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if int64(n) > int64(c.limit) {
		return f, fmt.Errorf("frame of %d bytes is over the %d-byte limit", n, c.limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		return f, fmt.Errorf("read frame: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("decode frame: %w", err)
	}
	return f, nil
}

// wireError carries an error across the process boundary with what the
// run and the API look at: a *run.RunError's status and node, the
// *errs.Error code, field and message, a *quota.Denial, a context error.
type wireError struct {
	Text    string      `json:"text"`
	Status  run.Status  `json:"status,omitempty"`
	NodeID  string      `json:"node_id,omitempty"`
	Code    errs.Code   `json:"code,omitempty"`
	Field   string      `json:"field,omitempty"`
	Message string      `json:"message,omitempty"`
	Denial  *wireDenial `json:"denial,omitempty"`
	Context string      `json:"context,omitempty"` // "deadline" or "canceled"
}

// wireDenial is a quota.Denial.
type wireDenial struct {
	Code       string        `json:"code"`
	Scope      string        `json:"scope"`
	Dimension  string        `json:"dimension"`
	Window     string        `json:"window,omitempty"`
	Model      string        `json:"model,omitempty"`
	Limit      int64         `json:"limit"`
	Period     time.Duration `json:"period,omitempty"`
	Used       int64         `json:"used"`
	Requested  int64         `json:"requested"`
	ResetAt    time.Time     `json:"reset_at"`
	RetryAfter time.Duration `json:"retry_after,omitempty"`
}

// encodeError flattens err for the wire; nil stays nil.
func encodeError(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Text: err.Error()}
	inner := err
	var re *run.RunError
	if errors.As(err, &re) {
		w.Status, w.NodeID = re.Status, re.NodeID
		inner = re.Err
		if inner == nil {
			inner = errors.New(w.Text)
		}
		w.Text = inner.Error()
	}
	var d *quota.Denial
	if errors.As(inner, &d) {
		w.Denial = &wireDenial{Code: d.Code, Scope: d.Scope, Dimension: d.Dimension.String(), Window: d.Window.String(), Model: d.Model,
			Limit: d.Limit, Period: d.Period, Used: d.Used, Requested: d.Requested, ResetAt: d.ResetAt, RetryAfter: d.RetryAfter}
	}
	var e *errs.Error
	if errors.As(inner, &e) {
		w.Code, w.Field, w.Message = e.Code, e.Field, e.Message
	}
	switch {
	case errors.Is(inner, context.DeadlineExceeded):
		w.Context = "deadline"
	case errors.Is(inner, context.Canceled):
		w.Context = "canceled"
	}
	return w
}

// decode rebuilds an error with the original's text that behaves as the
// original did under errors.As and errors.Is for the types above.
func (w *wireError) decode() error {
	if w == nil {
		return nil
	}
	var typed error
	switch {
	case w.Denial != nil:
		d := &quota.Denial{Code: w.Denial.Code, Scope: w.Denial.Scope, Model: w.Denial.Model, Limit: w.Denial.Limit, Period: w.Denial.Period,
			Used: w.Denial.Used, Requested: w.Denial.Requested, ResetAt: w.Denial.ResetAt, RetryAfter: w.Denial.RetryAfter}
		d.Dimension, _ = quota.ParseDimension(w.Denial.Dimension)
		d.Window, _ = quota.ParseWindow(w.Denial.Window)
		typed = d
	case w.Code != "":
		e := &errs.Error{Code: w.Code, Field: w.Field, Message: w.Message}
		if w.Context != "" {
			e.Err = contextErr(w.Context)
		}
		typed = e
	case w.Context != "":
		typed = contextErr(w.Context)
	}
	var err error = &remoteError{text: w.Text, err: typed}
	if w.Status != "" {
		return &run.RunError{Status: w.Status, NodeID: w.NodeID, Err: err}
	}
	return err
}

// remoteError is an error that happened in the other process: its text,
// and what errors.As and errors.Is should find in it.
type remoteError struct {
	text string
	err  error
}

func (r *remoteError) Error() string { return r.text }
func (r *remoteError) Unwrap() error { return r.err }

func contextErr(kind string) error {
	if kind == "deadline" {
		return context.DeadlineExceeded
	}
	return context.Canceled
}
