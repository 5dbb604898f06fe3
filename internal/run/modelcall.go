package run

import (
	"context"
	"errors"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
)

// DefaultMaxTokens is a model call's output allowance when neither the node
// nor the caps say.
const DefaultMaxTokens = 1024

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
	c := ModelCall{NodeID: caller.ID, ModelNodeID: modelNode.ID, Model: s.modelName(modelNode), Messages: msgs, Tools: tools,
		Stream: s.job.OnEvent != nil && len(tools) == 0}
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
	return r.Response, err
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
	req := llm.Request{Messages: c.Messages, Tools: c.Tools, Temperature: c.Temperature}
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

// call is one reserve → call → settle round; it adds what it admitted and
// settled to out.
func (e *Executor) call(ctx context.Context, job *Job, c ModelCall, m *llm.Model, req llm.Request, out *CallResult) (llm.Response, error) {
	cfg := m.Config()
	in := m.CountRequest(req)
	maxOut := DefaultMaxTokens
	if c.MaxTokens > 0 {
		maxOut = c.MaxTokens
	}
	if cp := job.Caps.MaxTokensPerCall; cp > 0 && int64(maxOut) > cp {
		maxOut = int(cp)
	}
	if cw := cfg.ContextWindow; cw > 0 && in+maxOut > cw {
		maxOut = cw - in
		if maxOut <= 0 {
			return llm.Response{}, errs.Field(errs.Unprocessable, "nodes."+c.NodeID,
				"node %s: the prompt (%d tokens) does not fit model %s's context window of %d", c.NodeID, in, m.Name(), cw)
		}
	}
	ask := quota.Ask{
		Tokens:     int64(in + maxOut),
		MinTokens:  int64(in + min(maxOut, 16)),
		CostMicros: m.Cost(llm.Usage{InputTokens: in, OutputTokens: maxOut}),
		Model:      m.Name(),
	}
	if cfg.GPU {
		ask.GPUMillis = 1 // checks that GPU time remains; the actual time is settled
	}
	ttl := time.Minute
	if dl, ok := ctx.Deadline(); ok {
		ttl = time.Until(dl) + time.Minute
	}
	adm, err := e.Meter.Acquire(ctx, job.Who, "model_call", ask, ttl)
	if err != nil {
		return llm.Response{}, err
	}
	if adm.Clamped {
		maxOut = int(adm.Tokens) - in
	}
	req.MaxTokens = maxOut
	out.Calls++
	start := time.Now()
	var resp llm.Response
	if c.Stream && job.OnEvent != nil && len(req.Tools) == 0 {
		msgID := c.NodeID
		resp, err = m.Stream(ctx, req, func(chunk string) {
			job.OnEvent("token", map[string]any{"chunk": chunk, "id": msgID})
		})
	} else {
		resp, err = m.Chat(ctx, req)
	}
	wall := time.Since(start)
	u := resp.Usage
	gpu := int64(0)
	if cfg.GPU {
		gpu = u.GPU.Milliseconds()
		if u.GPU == 0 {
			gpu = wall.Milliseconds() // no compute time reported: the call's wall time
		}
		gpu = max(gpu, 1)
	}
	cost := m.Cost(u)
	// Settle whatever happened: success, provider error, timeout, cancel.
	serr := retrySettle(func() error {
		_, err := e.Meter.Settle(context.WithoutCancel(ctx), adm.ID, quota.Usage{
			InputTokens: int64(u.InputTokens), OutputTokens: int64(u.OutputTokens), GPUMillis: gpu, CostMicros: cost,
		}, m.Name())
		return err
	})
	out.Usage.Add(Usage{InputTokens: int64(u.InputTokens), OutputTokens: int64(u.OutputTokens), GPUMillis: gpu, CostMicros: cost})
	if serr != nil {
		e.Log.Error("settling a model call failed", "run_id", job.RunID, "error", serr.Error())
	}
	if e.OnModelCall != nil {
		outcome := "ok"
		if err != nil {
			outcome = "error"
		}
		e.OnModelCall(m.Name(), cfg.Provider, outcome, u.InputTokens, u.OutputTokens)
	}
	if err != nil {
		if ctx.Err() != nil {
			return resp, ctxError(ctx.Err())
		}
		return resp, err
	}
	return resp, nil
}
