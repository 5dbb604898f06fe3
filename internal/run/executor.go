package run

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/vector"
)

// Executor runs flow graphs. Every model call goes through the meter.
type Executor struct {
	Meter    *metering.Meter
	Models   *llm.Registry
	Messages MessageStore
	Guard    *Guard
	// Files, when set, is the project file storage File and SaveToFile
	// nodes read and write (nil: they fail, naming the node).
	Files FileStore
	Log   *slog.Logger
	// DemoModels maps every model name to the default model when no model
	// table is configured, so exported flows naming gpt-4o run on the
	// simulated model out of the box (the trace says so).
	DemoModels bool
	// Calls, when set, makes the run's model calls instead of the executor
	// itself (Meter, Models and DemoModels are then unused): a sandbox
	// worker's executor asks the server.
	Calls Caller
	// Components implements node types the executor does not, by type: the
	// sandbox worker's test components. Nil in the server.
	Components map[string]NodeFunc
	// OnModelCall, when set, is told each model call's model, provider,
	// outcome ("ok" or "error") and tokens (metrics). Unused when Gate is
	// set (the gate's own hook is).
	OnModelCall func(model, provider, outcome string, input, output int)
	// Gate makes the governed calls (nil: one over Meter with
	// OnModelCall): the server shares one with its OpenAI gateway, so
	// routing health, retries and the call log are the same for both.
	Gate *gate.Gate
	// Tools are the outside APIs the search components call (Tavily,
	// SearchApi, arXiv), by service name (ServiceTavily, …): the server's
	// tools configuration. A search node whose service is missing, or has
	// no key, is refused with 422.
	Tools map[string]ToolService
	// Now, when set, is the clock of components that read the time
	// (CurrentDate); nil is time.Now.
	Now func() time.Time
	// Vectors keeps the collections of vector-store and Knowledge
	// components (nil: flows that use one fail with a clear error).
	Vectors vector.Store
	// MCPServers are the MCP servers MCPTools nodes may use, by name (the
	// mcp_servers config section); no other is ever connected to.
	MCPServers []MCPServer
}

// now is the executor's clock.
func (e *Executor) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// NodeFunc implements a node type: given the node, its parameters (tweaks
// applied) and the text on its input_value, it returns the text of its
// outputs.
type NodeFunc func(ctx context.Context, n *flow.Node, param func(name string) flow.Param, input string) (string, error)

// MessageStore keeps chat history for Memory components.
type MessageStore interface {
	AppendMessage(ctx context.Context, m *Message) error
	// Messages returns the last n messages of a user's session, oldest
	// first: history is private to the user who had the conversation.
	Messages(ctx context.Context, tenantID, userID, sessionID string, n int) ([]*Message, error)
}

// Job is one run of a flow.
type Job struct {
	RunID  string
	FlowID string
	Flow   *flow.Flow
	Who    metering.Who

	InputValue      string
	InputType       string // chat (default), text, any
	OutputType      string // chat, text, any (default), debug
	OutputComponent string
	Tweaks          map[string]map[string]any
	SessionID       string

	Caps quota.Caps
	// DefaultModel is the model for nodes that select none: the first model
	// the innermost scope with a model list allows (a tenant's own models),
	// else the model table's default.
	DefaultModel string
	// Route is the run's routing (its tenant and plan, for deployments
	// dedicated to them); Allowed, when set, says which models the run's
	// chain may use, so that a call falls back only to those.
	Route   llm.RouteTags
	Allowed func(model string) bool
	// OnEvent, when set, receives streaming events (add_message, token).
	OnEvent func(event string, data any)
	// Progress, when set, is told when a node starts and ends, so that a
	// run stopped from outside (a sandbox worker killed at its deadline or
	// by the kernel) can still be recorded with what it did.
	Progress func(Progress)
}

// Progress is how far a run has got.
type Progress struct {
	Steps int64 `json:"steps"`
	// Node is the node that starts; "" when one ends.
	Node string `json:"node,omitempty"`
	// Done is the trace of the node that ended.
	Done *NodeTrace `json:"done,omitempty"`
}

// Result is what a run produced.
type Result struct {
	Outputs  []ComponentOutput
	Usage    Usage
	Steps    int64
	Trace    []NodeTrace
	Messages []*Message
	// Simulated reports that a simulated model produced some of the text.
	Simulated bool
	// Resources is set when the run executed in a sandbox worker process.
	Resources *Resources
}

// Resources is what a sandboxed run's worker process used.
type Resources struct {
	// MemoryEnforced reports that the kernel held the worker to the run's
	// memory_per_run (a cgroup); false when the host allows no cgroup and
	// the operator chose to run capped runs anyway.
	MemoryEnforced bool
	// PeakMemory is the worker's peak memory in bytes: the cgroup's peak
	// when enforced, else the process's maximum resident set size, which
	// PeakApproximate marks.
	PeakMemory      int64
	PeakApproximate bool
	// CPUMillis is the worker's user and system CPU time.
	CPUMillis int64
}

// ComponentOutput is the value of one output component.
type ComponentOutput struct {
	NodeID      string
	DisplayName string
	Type        string
	Text        string
	Message     *Message
	Usage       Usage
	// Source is the component whose value the output shows (LangFlow's
	// message properties.source): the node on its input_value edge, and
	// the model it called, if any.
	Source Source
	// Duration is how long the output's node took.
	Duration time.Duration
}

// Source names the component a message came from, as LangFlow's message
// properties.source does.
type Source struct {
	ID          string `json:"id,omitempty"`
	DisplayName string `json:"display_name,omitempty"`
	Model       string `json:"source,omitempty"`
}

// RunError is a run that ended early, with the status to record.
type RunError struct {
	Status Status
	NodeID string
	Err    error
}

func (e *RunError) Error() string {
	if e.NodeID != "" {
		return fmt.Sprintf("node %s: %v", e.NodeID, e.Err)
	}
	return e.Err.Error()
}

func (e *RunError) Unwrap() error { return e.Err }

// value is what travels along an edge.
type value struct {
	text     string
	message  *Message   // set for chat messages
	model    *modelRef  // LanguageModel handles
	template *templated // PromptTemplate handles
	tool     *tool      // tools for agents
	tools    []*tool    // several tools on one edge (an MCP server's)
	data     *table     // Data, a list of Data, a DataFrame (see data.go)
	embed    *embedRef  // Embeddings handles (see embed.go)
}

// modelRef is a model chosen by a node, not yet called.
type modelRef struct {
	node *flow.Node
}

// templated is a prompt template with the variables its node bound.
type templated struct {
	template string
	vars     map[string]string
}

// state is one run in progress.
type state struct {
	// streamIDs holds, per node, the id of the message its model call
	// streamed tokens under.
	streamIDs map[string]string
	e         *Executor
	job       *Job
	f         *flow.Flow
	outputs   map[string]map[string]value
	inputs    map[string]map[string][]value
	trace     []NodeTrace
	usage     Usage
	steps     int64
	msgs      []*Message
	start     time.Time
	// callCount counts model calls, for the trace.
	callCount int
	// simulated is set once a simulated model answered.
	simulated bool
	// mcp holds the run's MCP sessions, by server name.
	mcp map[string]*mcpConn
}

// step counts a node, model turn or tool call against max_steps.
func (s *state) step(nodeID string) error {
	s.steps++
	if m := s.job.Caps.MaxSteps; m > 0 && s.steps > m {
		return &RunError{Status: StatusStepLimitExceeded, NodeID: nodeID,
			Err: errs.E(errs.QuotaExceeded, "the run reached its cap of %d steps (max_steps)", m)}
	}
	return nil
}

func (s *state) emit(event string, data any) {
	if s.job.OnEvent != nil {
		s.job.OnEvent(event, data)
	}
}

// Execute runs the job's flow to the end or to its first failure. The
// result holds what was done either way (usage, trace), so the caller can
// record it.
func (e *Executor) Execute(ctx context.Context, job *Job) (*Result, error) {
	s := &state{e: e, job: job, f: job.Flow, outputs: map[string]map[string]value{}, inputs: map[string]map[string][]value{}, start: time.Now()}
	err := s.run(ctx)
	s.closeMCP()
	res := &Result{Usage: s.usage, Steps: s.steps, Trace: s.trace, Messages: s.msgs, Simulated: s.simulated}
	if err == nil {
		res.Outputs = s.collect()
	}
	return res, err
}

func (s *state) run(ctx context.Context) error {
	for _, n := range s.f.Nodes {
		if c := n.Component(); c != nil && c.IsCustom {
			return &RunError{Status: StatusFailed, NodeID: n.ID, Err: errs.Field(errs.Unprocessable, "nodes."+n.ID,
				"node %s is custom code; custom components are never run in the server, and Sluice's sandbox workers do not run Python either", n.ID)}
		}
	}
	if err := CheckTweaks(s.f, s.job.Tweaks); err != nil {
		return &RunError{Status: StatusFailed, Err: err}
	}
	order, err := flow.Order(s.f)
	if err != nil {
		return &RunError{Status: StatusFailed, Err: err}
	}
	return s.runNodes(ctx, order)
}

// runNodes runs nodes (in flow.Order's order) in turn: a loop component
// runs together with its body (see loop.go).
func (s *state) runNodes(ctx context.Context, nodes []*flow.Node) error {
	units, err := s.schedule(nodes)
	if err != nil {
		return &RunError{Status: StatusFailed, Err: err}
	}
	for _, u := range units {
		if err := s.runNode(ctx, u); err != nil {
			return err
		}
	}
	return nil
}

// runNode runs one node (a loop with its body), with its step, progress
// and trace.
func (s *state) runNode(ctx context.Context, u unit) error {
	n := u.node
	if err := ctx.Err(); err != nil {
		return ctxError(err)
	}
	if s.toolOnly(n) {
		if n.Type == TypeMCPTools {
			tools, err := s.mcpTools(ctx, n)
			if err != nil {
				return &RunError{Status: statusOf(err), NodeID: n.ID, Err: err}
			}
			s.setOut(n.ID, flow.ToolOutput, value{tools: tools})
			return nil
		}
		if isSearch(n.Type) {
			// A tool that cannot work fails the run now, not the agent's
			// call of it later.
			if _, _, err := s.service(n); err != nil {
				return &RunError{Status: StatusFailed, NodeID: n.ID, Err: err}
			}
		}
		s.setOut(n.ID, flow.ToolOutput, value{tool: s.toolFor(n)})
		return nil
	}
	if err := s.step(n.ID); err != nil {
		return err
	}
	t := NodeTrace{NodeID: n.ID, Type: n.Type, StartedAt: time.Now().UTC()}
	if s.job.Progress != nil {
		s.job.Progress(Progress{Steps: s.steps, Node: n.ID})
	}
	before := s.usage
	calls := s.callCount
	var err error
	if u.body != nil {
		err = s.loop(ctx, n, u.body)
	} else {
		err = s.exec(ctx, n, &t)
	}
	t.DurationMS = float64(time.Since(t.StartedAt).Microseconds()) / 1000
	t.Usage = Usage{InputTokens: s.usage.InputTokens - before.InputTokens, OutputTokens: s.usage.OutputTokens - before.OutputTokens,
		GPUMillis: s.usage.GPUMillis - before.GPUMillis, CostMicros: s.usage.CostMicros - before.CostMicros}
	t.Calls = s.callCount - calls
	if u.body != nil {
		// The body's nodes have their own traces, with their calls.
		t.Usage, t.Calls = Usage{}, 0
	}
	if err != nil {
		t.Status, t.Error = "failed", err.Error()
		s.trace = append(s.trace, t)
		s.progress(&t)
		var re *RunError
		if errors.As(err, &re) {
			if re.NodeID == "" {
				re.NodeID = n.ID
			}
			return re
		}
		return &RunError{Status: statusOf(err), NodeID: n.ID, Err: err}
	}
	t.Status = "succeeded"
	t.OutputPreview = preview(s.textOf(n.ID))
	s.trace = append(s.trace, t)
	s.progress(&t)
	return nil
}

// progress reports a node's end to the job's Progress.
func (s *state) progress(t *NodeTrace) {
	if s.job.Progress != nil {
		done := *t
		s.job.Progress(Progress{Steps: s.steps, Done: &done})
	}
}

// toolOnly reports a node used only as an agent's tool: it does not run in
// the graph, the agent calls it.
func (s *state) toolOnly(n *flow.Node) bool {
	out := s.f.Outgoing(n.ID)
	if len(out) == 0 {
		return false
	}
	for _, e := range out {
		if e.SourceOutput != flow.ToolOutput {
			return false
		}
	}
	return true
}

// statusOf maps an error from a node to the run's status.
func statusOf(err error) Status {
	var d *quota.Denial
	switch {
	case errors.As(err, &d) && d.Code == quota.CodeRateLimited:
		return StatusRateLimited
	case errors.As(err, &d):
		return StatusQuotaExceeded
	case errors.Is(err, context.DeadlineExceeded):
		return StatusTimeout
	case errors.Is(err, context.Canceled):
		return StatusCancelled
	}
	switch errs.CodeOf(err) {
	case errs.QuotaExceeded, errs.ModelNotAllowed:
		return StatusQuotaExceeded
	case errs.RateLimited:
		return StatusRateLimited
	}
	return StatusFailed
}

func ctxError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &RunError{Status: StatusTimeout, Err: errs.E(errs.Unavailable, "the run reached its time limit (run_timeout)")}
	}
	return &RunError{Status: StatusCancelled, Err: errs.E(errs.Unavailable, "the run was cancelled")}
}

func (s *state) setOut(nodeID, output string, v value) {
	m := s.outputs[nodeID]
	if m == nil {
		m = map[string]value{}
		s.outputs[nodeID] = m
	}
	m[output] = v
	// Deliver to the inputs of downstream nodes.
	for _, e := range s.f.Outgoing(nodeID) {
		if e.SourceOutput != output {
			continue
		}
		in := s.inputs[e.Target]
		if in == nil {
			in = map[string][]value{}
			s.inputs[e.Target] = in
		}
		in[e.TargetInput] = append(in[e.TargetInput], v)
	}
}

// in returns the first value on an input, whether it came by edge.
func (s *state) in(n *flow.Node, name string) (value, bool) {
	vs := s.inputs[n.ID][name]
	if len(vs) == 0 {
		return value{}, false
	}
	return vs[0], true
}

// text returns an input's text: from an edge, else the tweaked or stored
// parameter.
func (s *state) text(n *flow.Node, name string) string {
	if v, ok := s.in(n, name); ok {
		return v.text
	}
	return s.param(n, name).String()
}

// param returns a parameter with the job's tweaks applied (by node id or
// display name, as LangFlow accepts).
func (s *state) param(n *flow.Node, name string) flow.Param {
	for _, key := range []string{n.ID, n.DisplayName} {
		if t, ok := s.job.Tweaks[key]; ok && key != "" {
			if v, ok := t[name]; ok {
				return flow.Param{Value: v}
			}
		}
	}
	return n.Param(name)
}

// textOf is a node's main text: its first non-empty output, in a fixed
// order of the output names components use.
func (s *state) textOf(nodeID string) string {
	for _, name := range []string{"message", "text", "text_output", "prompt", "response", "messages_text", "result", "raw_results",
		"parsed_text", "current_date", "dataframe", "chunks", "structured_output", "done"} {
		if v, ok := s.outputs[nodeID][name]; ok && v.text != "" {
			return v.text
		}
	}
	return ""
}

// preview shortens text for traces and records.
func preview(s string) string {
	const max = 500
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// collect gathers the run's result: its output components (filtered by
// output_type / output_component), or, in flows without any (compact and
// legacy chains), the values of the nodes nothing consumes.
// sourceOf is the component on an output node's input_value edge, with
// the model it called (LangFlow's properties.source).
func (s *state) sourceOf(n *flow.Node) Source {
	for _, e := range s.f.Incoming(n.ID) {
		if e.TargetInput != "input_value" {
			continue
		}
		src := s.f.Node(e.Source)
		if src == nil {
			break
		}
		name := src.DisplayName
		if name == "" {
			name = src.Type
		}
		return Source{ID: src.ID, DisplayName: name, Model: s.modelOf(src.ID)}
	}
	return Source{}
}

// modelOf is the model node id called, from its trace ("" for none).
func (s *state) modelOf(id string) string {
	for i := len(s.trace) - 1; i >= 0; i-- {
		if s.trace[i].NodeID == id {
			return s.trace[i].Model
		}
	}
	return ""
}

// took is how long node id ran, from its trace.
func (s *state) took(id string) time.Duration {
	for i := len(s.trace) - 1; i >= 0; i-- {
		if s.trace[i].NodeID == id {
			return time.Duration(s.trace[i].DurationMS * float64(time.Millisecond))
		}
	}
	return 0
}

func (s *state) collect() []ComponentOutput {
	var out []ComponentOutput
	for _, n := range s.f.Nodes {
		c := n.Component()
		if c == nil || !c.IsOutput {
			continue
		}
		if s.job.OutputComponent != "" && n.ID != s.job.OutputComponent {
			continue
		}
		switch s.job.OutputType {
		case "chat":
			if n.Type != "ChatOutput" {
				continue
			}
		case "text":
			if n.Type != "TextOutput" {
				continue
			}
		}
		// An output component has one output: "message" or "text".
		if v, ok := s.outputs[n.ID][c.Outputs[0].Name]; ok {
			out = append(out, ComponentOutput{NodeID: n.ID, DisplayName: n.DisplayName, Type: n.Type, Text: v.text, Message: v.message,
				Source: s.sourceOf(n), Duration: s.took(n.ID)})
		}
	}
	if len(out) > 0 || s.hasOutputComponents() {
		return out
	}
	for _, n := range s.f.Nodes {
		if len(s.f.Outgoing(n.ID)) > 0 {
			continue
		}
		if s.outputs[n.ID] != nil {
			out = append(out, ComponentOutput{NodeID: n.ID, DisplayName: n.DisplayName, Type: n.Type, Text: s.textOf(n.ID),
				Source: Source{ID: n.ID, DisplayName: n.DisplayName, Model: s.modelOf(n.ID)}, Duration: s.took(n.ID)})
		}
	}
	return out
}

func (s *state) hasOutputComponents() bool {
	for _, n := range s.f.Nodes {
		if c := n.Component(); c != nil && c.IsOutput {
			return true
		}
	}
	return false
}

// newMessage makes a chat message of this run.
func (s *state) newMessage(n *flow.Node, sender, senderName, text string) *Message {
	return &Message{ID: id.New("msg"), TenantID: s.job.Who.TenantID, UserID: s.job.Who.UserID, FlowID: s.job.FlowID, SessionID: s.job.SessionID,
		Sender: sender, SenderName: senderName, Text: text, RunID: s.job.RunID, CreatedAt: time.Now().UTC()}
}

// store keeps a message for Memory when the node asks for it.
func (s *state) store(ctx context.Context, n *flow.Node, m *Message) error {
	if b, ok := s.param(n, "should_store_message").Bool(); ok && !b {
		return nil
	}
	if s.e.Messages == nil || m.SessionID == "" {
		return nil
	}
	if err := s.e.Messages.AppendMessage(context.WithoutCancel(ctx), m); err != nil {
		return err
	}
	s.msgs = append(s.msgs, m)
	s.emit("add_message", messageJSON(m))
	return nil
}

// joinTexts joins the texts of several values.
func joinTexts(vs []value) string {
	parts := make([]string, 0, len(vs))
	for _, v := range vs {
		parts = append(parts, v.text)
	}
	return strings.Join(parts, "\n")
}
