package run

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
)

// DefaultMaxIterations bounds an agent that sets no max_iterations.
const DefaultMaxIterations = 15

// agent runs the tool-calling loop: ask the model, run the tools it calls,
// give it their results, until it answers without calling a tool. Every
// turn and tool call is a step against max_steps; max_iterations bounds the
// turns too.
func (s *state) agent(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	modelNode := n
	if v, ok := s.in(n, "model"); ok && v.model != nil {
		modelNode = v.model.node
	}
	var tools []*tool
	for _, v := range s.inputs[n.ID]["tools"] {
		if v.tool != nil {
			tools = append(tools, v.tool)
		}
		tools = append(tools, v.tools...)
	}
	defs := make([]llm.Tool, len(tools))
	byName := map[string]*tool{}
	for i, tl := range tools {
		defs[i] = tl.def
		byName[tl.def.Name] = tl
	}
	var msgs []llm.Message
	if sys := s.text(n, "system_prompt"); sys != "" {
		msgs = append(msgs, llm.Message{Role: llm.RoleSystem, Content: sys})
	}
	if mem, ok := s.in(n, "memory"); ok && mem.text != "" {
		msgs = append(msgs, llm.Message{Role: llm.RoleSystem, Content: "Conversation so far:\n" + mem.text})
	}
	msgs = append(msgs, llm.Message{Role: llm.RoleUser, Content: s.text(n, "input_value")})
	maxIter := DefaultMaxIterations
	if v, ok := s.param(n, "max_iterations").Int(); ok && v > 0 {
		maxIter = v
	}
	for turn := 0; turn < maxIter; turn++ {
		if err := s.step(n.ID); err != nil {
			return err
		}
		resp, err := s.complete(ctx, n, modelNode, msgs, defs, t)
		if err != nil {
			return err
		}
		if len(resp.ToolCalls) == 0 {
			s.setOut(n.ID, "response", value{text: resp.Text})
			s.setOut(n.ID, "structured_response", value{text: resp.Text})
			return nil
		}
		msgs = append(msgs, llm.Message{Role: llm.RoleAssistant, Content: resp.Text, ToolCalls: resp.ToolCalls})
		for _, call := range resp.ToolCalls {
			if err := s.step(n.ID); err != nil {
				return err
			}
			result, err := s.runTool(ctx, byName[call.Name], call)
			if err != nil {
				return err
			}
			msgs = append(msgs, llm.Message{Role: llm.RoleTool, ToolCallID: call.ID, Name: call.Name, Content: result})
			if err := ctx.Err(); err != nil {
				return ctxError(err)
			}
		}
	}
	return &RunError{Status: StatusStepLimitExceeded, NodeID: n.ID,
		Err: errs.E(errs.QuotaExceeded, "agent %s used all %d of its iterations (max_iterations) without a final answer", n.ID, maxIter)}
}

// runTool calls a tool and returns what the model should read: its result
// or its error, so that the model can recover. A refusal by the meter (a
// governed tool call over the chain's limits) or the run's end is no
// error for the model to recover from: it ends the agent.
func (s *state) runTool(ctx context.Context, tl *tool, call llm.ToolCall) (string, error) {
	if tl == nil {
		return fmt.Sprintf("error: no tool named %q", call.Name), nil
	}
	args := map[string]any{}
	if call.Arguments != "" {
		if err := json.Unmarshal([]byte(call.Arguments), &args); err != nil {
			return fmt.Sprintf("error: arguments are not a JSON object: %v", err), nil
		}
	}
	out, err := tl.run(ctx, args)
	if err != nil {
		if d, ok := errors.AsType[*quota.Denial](err); ok {
			return "", d
		}
		if re, ok := errors.AsType[*RunError](err); ok {
			return "", re
		}
		var e *errs.Error
		if errors.As(err, &e) {
			return "error: " + e.Message, nil
		}
		return "error: " + err.Error(), nil
	}
	return preview4k(out), nil
}

// preview4k bounds a tool result fed back to the model.
func preview4k(s string) string {
	const max = 4000
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
