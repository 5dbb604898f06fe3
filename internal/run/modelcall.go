package run

import (
	"context"
	"errors"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
)

// DefaultMaxTokens is a model call's output allowance when neither the node
// nor the caps say.
const DefaultMaxTokens = gate.DefaultMaxTokens

// Caller makes a run's governed model calls: it resolves the model, reserves
// through the meter, calls the provider and settles on every exit path.
// *Executor is the in-process Caller; the executor of a sandboxed run, in
// its worker process, uses one that asks the server, so that provider keys,
// reservations and settlement never leave the server.
type Caller interface {
	Call(ctx context.Context, job *Job, c ModelCall) (CallResult, error)
}

// ModelCall is one model call a node asks for, with the node's settings
// already read (tweaks applied).
type ModelCall struct {
	// NodeID is the node making the call; ModelNodeID the node that chose
	// the model (the same node, or the model an Agent or chain is wired to).
	NodeID      string `json:"node_id"`
	ModelNodeID string `json:"model_node_id"`
	// Model is the model the node names; "" for the default.
	Model       string   `json:"model,omitempty"`
	Temperature *float64 `json:"temperature,omitempty"`
	// MaxTokens is the node's max_tokens; 0 for DefaultMaxTokens. The run's
	// max_tokens_per_call caps it.
	MaxTokens int           `json:"max_tokens,omitempty"`
	Messages  []llm.Message `json:"messages"`
	Tools     []llm.Tool    `json:"tools,omitempty"`
	// Schema asks for an answer conforming to a JSON schema (see
	// llm.Request.Schema).
	Schema *llm.ResponseSchema `json:"schema,omitempty"`
	// Stream asks for token events on the job's OnEvent.
	Stream bool `json:"stream,omitempty"`
}

// CallResult is what a model call did, whether or not it succeeded.
type CallResult struct {
	Response llm.Response `json:"response"`
	// Usage is what was settled for the call.
	Usage Usage `json:"usage"`
	// Calls counts the admitted provider calls (0 when refused).
	Calls int `json:"calls"`
	// Model names the model that answered, for the trace, with a note when
	// it stood in for another ("" when no model was resolved).
	Model string `json:"model,omitempty"`
	// StreamID is the id of the message the call's tokens were streamed
	// under ("" when it did not stream): the chat output that shows the
	// answer keeps it, as LangFlow's does.
	StreamID string `json:"stream_id,omitempty"`
}

// modelName reads the model a node selected, in any of the shapes LangFlow
// versions used: model_name, a model list ([{"name": …}]), model, repo_id.
func (s *state) modelName(n *flow.Node) string {
	for _, key := range []string{"model_name", "model", "repo_id", "model_id"} {
		p := s.param(n, key)
		switch v := p.Value.(type) {
		case string:
			if v != "" {
				return v
			}
		case []any:
			for _, item := range v {
				if m, ok := item.(map[string]any); ok {
					if name, ok := m["name"].(string); ok && name != "" {
						return name
					}
				}
				if name, ok := item.(string); ok && name != "" {
					return name
				}
			}
		}
	}
	return ""
}

// resolveModel finds the model for a call: the one its node names, the
// default when it names none, or (demo mode, no model table) the default
// standing in for an unconfigured name.
func (e *Executor) resolveModel(job *Job, c ModelCall) (*llm.Model, string, error) {
	if c.Model == "" {
		if job != nil && job.DefaultModel != "" {
			if m, err := e.Models.Lookup(job.DefaultModel); err == nil {
				return m, "", nil
			}
		}
		return e.Models.Default(), "", nil
	}
	m, err := e.Models.Lookup(c.Model)
	if err == nil {
		return m, "", nil
	}
	if e.DemoModels {
		def := e.Models.Default()
		return def, "model " + c.Model + " is not configured; ran on " + def.Name(), nil
	}
	return nil, "", errs.Field(errs.Unprocessable, "nodes."+c.ModelNodeID+".model_name",
		"node %s asks for model %q, which is not in the model table (configured: %v)", c.ModelNodeID, c.Model, e.Models.Names())
}

// complete makes one governed model call for node caller with the model of
// node modelNode, through the executor's Caller, and accounts for it in the
// run and the node's trace.
func (s *state) complete(ctx context.Context, caller, modelNode *flow.Node, msgs []llm.Message, tools []llm.Tool, t *NodeTrace) (llm.Response, error) {
	return s.completeCall(ctx, modelNode, ModelCall{NodeID: caller.ID, Messages: msgs, Tools: tools,
		Stream: s.job.OnEvent != nil && len(tools) == 0 && s.streams(modelNode)}, t)
}

// completeCall is complete for a call the caller has begun: c's node,
// messages, tools, schema and streaming; the model's settings are read
// from modelNode.
func (s *state) completeCall(ctx context.Context, modelNode *flow.Node, c ModelCall, t *NodeTrace) (llm.Response, error) {
	c.ModelNodeID, c.Model = modelNode.ID, s.modelName(modelNode)
	if v, ok := s.param(modelNode, "temperature").Float(); ok {
		c.Temperature = &v
	}
	if v, ok := s.param(modelNode, "max_tokens").Int(); ok && v > 0 {
		c.MaxTokens = v
	}
	var calls Caller = s.e
	if s.e.Calls != nil {
		calls = s.e.Calls
	}
	r, err := calls.Call(ctx, s.job, c)
	s.callCount += r.Calls
	s.usage.Add(r.Usage)
	if r.Response.Simulated {
		s.simulated = true
	}
	if r.Model != "" {
		t.Model = r.Model
	}
	if r.StreamID != "" {
		if s.streamIDs == nil {
			s.streamIDs = map[string]string{}
		}
		s.streamIDs[c.NodeID] = r.StreamID
	}
	return r.Response, err
}

// streams reports whether a model node streams its answer (its stream
// field): only then does a streamed run carry its tokens, as in LangFlow.
func (s *state) streams(n *flow.Node) bool {
	b, ok := s.param(n, "stream").Bool()
	return ok && b
}

// Call makes one governed model call in this process: reserve tokens (and
// GPU time, cost) through the meter, call, and settle the actual usage on
// every exit path. A model refused GPU time is retried on its CPU fallback.
func (e *Executor) Call(ctx context.Context, job *Job, c ModelCall) (CallResult, error) {
	var out CallResult
	m, note, err := e.resolveModel(job, c)
	if err != nil {
		return out, err
	}
	req := llm.Request{Messages: c.Messages, Tools: c.Tools, Temperature: c.Temperature, Schema: c.Schema}
	resp, err := e.call(ctx, job, c, m, req, &out)
	if err != nil {
		var d *quota.Denial
		if errors.As(err, &d) && d.Dimension == quota.DimGPUSeconds && m.Config().CPUFallback != "" {
			fb, ferr := e.Models.Lookup(m.Config().CPUFallback)
			if ferr == nil {
				note = "no GPU seconds left for " + m.Name() + "; routed to its CPU fallback " + fb.Name()
				m = fb
				resp, err = e.call(ctx, job, c, m, req, &out)
			}
		}
	}
	out.Response = resp
	out.Model = m.Name()
	if note != "" {
		out.Model += " (" + note + ")"
	}
	return out, err
}

// call is one governed call (gate.Gate.Do); it adds what it admitted and
// settled to out.
func (e *Executor) call(ctx context.Context, job *Job, c ModelCall, m *llm.Model, req llm.Request, out *CallResult) (llm.Response, error) {
	req.MaxTokens = c.MaxTokens
	cands, err := e.Models.Route(m.Name(), job.Route)
	if err != nil {
		return llm.Response{}, errs.Field(errs.Forbidden, "nodes."+c.ModelNodeID+".model_name",
			"node %s: model %s runs only on deployments dedicated to other customers", c.ModelNodeID, m.Name())
	}
	if job.Allowed != nil {
		kept := cands[:0:0]
		for _, d := range cands {
			if d.Name() == m.Name() || job.Allowed(d.Name()) {
				kept = append(kept, d)
			}
		}
		cands = kept
	}
	gc := gate.Call{Who: job.Who, Kind: "model_call", Model: m, Candidates: cands, Request: req, MaxTokensPerCall: job.Caps.MaxTokensPerCall,
		Field: "nodes." + c.NodeID, Subject: "node " + c.NodeID}
	if c.Stream && job.OnEvent != nil && len(req.Tools) == 0 {
		// As LangFlow: an empty AI message first, then the tokens under
		// its id; the chat output's message keeps the id.
		msgID := id.New("msg")
		gc.OnChunk = func(chunk string) {
			now := time.Now().UTC()
			if out.StreamID == "" {
				out.StreamID = msgID
				msg := messageJSON(&Message{ID: msgID, FlowID: job.FlowID, SessionID: job.SessionID, Sender: "Machine", SenderName: "AI", CreatedAt: now})
				props := msg["properties"].(map[string]any)
				props["state"] = "partial"
				props["source"] = Source{ID: c.ModelNodeID, DisplayName: c.ModelNodeID, Model: m.Name()}
				job.OnEvent("add_message", msg)
			}
			job.OnEvent("token", map[string]any{"chunk": chunk, "id": msgID, "timestamp": now.Format("2006-01-02 15:04:05 MST")})
		}
	}
	g := e.Gate
	if g == nil {
		g = &gate.Gate{Meter: e.Meter, OnModelCall: e.OnModelCall}
	}
	gc.RequestID = job.RunID
	res, err := g.Do(ctx, gc)
	if res.Admitted {
		out.Calls++
		out.Usage.Add(Usage{InputTokens: res.Usage.InputTokens, OutputTokens: res.Usage.OutputTokens,
			GPUMillis: res.Usage.GPUMillis, CostMicros: res.Usage.CostMicros})
	}
	if res.SettleErr != nil {
		e.Log.Error("settling a model call failed", "run_id", job.RunID, "error", res.SettleErr.Error())
	}
	if err != nil && res.Admitted && ctx.Err() != nil {
		return res.Response, ctxError(ctx.Err())
	}
	return res.Response, err
}
