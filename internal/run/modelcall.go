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

// resolveModel finds the model for a node: the one it names, the default
// when it names none, or (demo mode, no model table) the default standing in
// for an unconfigured name.
func (s *state) resolveModel(n *flow.Node) (*llm.Model, string, error) {
	name := s.modelName(n)
	if name == "" {
		return s.e.Models.Default(), "", nil
	}
	m, err := s.e.Models.Lookup(name)
	if err == nil {
		return m, "", nil
	}
	if s.e.DemoModels {
		def := s.e.Models.Default()
		return def, "model " + name + " is not configured; ran on " + def.Name(), nil
	}
	return nil, "", errs.Field(errs.Unprocessable, "nodes."+n.ID+".model_name",
		"node %s asks for model %q, which is not in the model table (configured: %v)", n.ID, name, s.e.Models.Names())
}

// complete makes one governed model call for node caller with the model of
// node modelNode: reserve tokens (and GPU time, cost) through the meter,
// call, and settle the actual usage on every exit path.
func (s *state) complete(ctx context.Context, caller, modelNode *flow.Node, msgs []llm.Message, tools []llm.Tool, t *NodeTrace) (llm.Response, error) {
	m, note, err := s.resolveModel(modelNode)
	if err != nil {
		return llm.Response{}, err
	}
	req := llm.Request{Messages: msgs, Tools: tools}
	if v, ok := s.param(modelNode, "temperature").Float(); ok {
		req.Temperature = &v
	}
	resp, err := s.call(ctx, caller, m, req, modelNode)
	if err != nil {
		var d *quota.Denial
		if errors.As(err, &d) && d.Dimension == quota.DimGPUSeconds && m.Config().CPUFallback != "" {
			fb, ferr := s.e.Models.Lookup(m.Config().CPUFallback)
			if ferr == nil {
				note = "no GPU seconds left for " + m.Name() + "; routed to its CPU fallback " + fb.Name()
				m = fb
				resp, err = s.call(ctx, caller, m, req, modelNode)
			}
		}
	}
	t.Model = m.Name()
	if note != "" {
		t.Model += " (" + note + ")"
	}
	return resp, err
}

// call is one reserve → call → settle round.
func (s *state) call(ctx context.Context, caller *flow.Node, m *llm.Model, req llm.Request, modelNode *flow.Node) (llm.Response, error) {
	cfg := m.Config()
	in := m.CountRequest(req)
	maxOut := DefaultMaxTokens
	if v, ok := s.param(modelNode, "max_tokens").Int(); ok && v > 0 {
		maxOut = v
	}
	if c := s.job.Caps.MaxTokensPerCall; c > 0 && int64(maxOut) > c {
		maxOut = int(c)
	}
	if cw := cfg.ContextWindow; cw > 0 && in+maxOut > cw {
		maxOut = cw - in
		if maxOut <= 0 {
			return llm.Response{}, errs.Field(errs.Unprocessable, "nodes."+caller.ID,
				"node %s: the prompt (%d tokens) does not fit model %s's context window of %d", caller.ID, in, m.Name(), cw)
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
	adm, err := s.e.Meter.Acquire(ctx, s.job.Who, "model_call", ask, ttl)
	if err != nil {
		return llm.Response{}, err
	}
	if adm.Clamped {
		maxOut = int(adm.Tokens) - in
	}
	req.MaxTokens = maxOut
	s.callCount++
	start := time.Now()
	var resp llm.Response
	if s.job.OnEvent != nil && len(req.Tools) == 0 {
		msgID := caller.ID
		resp, err = m.Stream(ctx, req, func(chunk string) {
			s.emit("token", map[string]any{"chunk": chunk, "id": msgID})
		})
	} else {
		resp, err = m.Chat(ctx, req)
	}
	wall := time.Since(start)
	if resp.Simulated {
		s.simulated = true
	}
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
	_, serr := s.e.Meter.Settle(context.WithoutCancel(ctx), adm.ID, quota.Usage{
		InputTokens: int64(u.InputTokens), OutputTokens: int64(u.OutputTokens), GPUMillis: gpu, CostMicros: cost,
	}, m.Name())
	s.usage.Add(Usage{InputTokens: int64(u.InputTokens), OutputTokens: int64(u.OutputTokens), GPUMillis: gpu, CostMicros: cost})
	if serr != nil {
		s.e.Log.Error("settling a model call failed", "run_id", s.job.RunID, "error", serr.Error())
	}
	if err != nil {
		if ctx.Err() != nil {
			return resp, ctxError(ctx.Err())
		}
		return resp, err
	}
	return resp, nil
}
