package run

import (
	"context"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// MCPCaller reaches a run's MCP servers from a sandbox worker: the servers,
// their headers (tokens) and sessions stay with the server process, which
// lists and calls the tools for the worker (the call governed there as in
// process). *MCPSessions is the server's side.
type MCPCaller interface {
	MCP(ctx context.Context, job *Job, c MCPCall) (MCPResult, error)
}

// MCP operations.
const (
	MCPListTools = "tools"
	MCPCallTool  = "call"
)

// MCPCall is one MCP operation for a node of the run's flow.
type MCPCall struct {
	NodeID string         `json:"node_id"`
	Op     string         `json:"op"`
	Tool   string         `json:"tool,omitempty"`
	Args   map[string]any `json:"args,omitempty"`
}

// MCPResult is an operation's answer: the server's tools, or a call's
// result.
type MCPResult struct {
	Tools  []*mcp.Tool         `json:"tools,omitempty"`
	Result *mcp.CallToolResult `json:"result,omitempty"`
}

// MCPSessions are one sandboxed run's MCP sessions in the server: opened
// on the worker's first operation on a server, closed with the run.
type MCPSessions struct {
	mu sync.Mutex
	s  *state
}

// NewMCPSessions returns the MCP sessions of a sandboxed run of job.
func (e *Executor) NewMCPSessions(job *Job) *MCPSessions {
	return &MCPSessions{s: &state{e: e, job: job, f: job.Flow, outputs: map[string]map[string]value{}, inputs: map[string]map[string][]value{}}}
}

// MCP implements MCPCaller for the run's worker.
func (m *MCPSessions) MCP(ctx context.Context, job *Job, c MCPCall) (MCPResult, error) {
	m.mu.Lock() // a run's calls are one at a time
	defer m.mu.Unlock()
	var n *flow.Node
	if m.s.f != nil {
		n = m.s.f.Node(c.NodeID)
	}
	if n == nil || n.Type != TypeMCPTools {
		return MCPResult{}, errs.Field(errs.Invalid, "node_id", "node %q is not an MCPTools node of this run's flow", c.NodeID)
	}
	conn, err := m.s.mcpConnFor(ctx, n)
	if err != nil {
		return MCPResult{}, err
	}
	switch c.Op {
	case MCPListTools:
		return MCPResult{Tools: conn.tools}, nil
	case MCPCallTool:
		res, err := m.s.callMCP(ctx, n, conn, c.Tool, c.Args)
		return MCPResult{Result: res}, err
	}
	return MCPResult{}, errs.Field(errs.Invalid, "op", "unknown MCP operation %q", c.Op)
}

// Close ends the run's sessions.
func (m *MCPSessions) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.closeMCP()
}

// remoteMCPConn is a worker's view of a server's MCP session: the tools
// the server listed, calls made through it.
func (s *state) remoteMCPConn(ctx context.Context, n *flow.Node, mc MCPCaller) (*mcpConn, error) {
	key := "node:" + n.ID
	if c := s.mcp[key]; c != nil {
		return c, nil
	}
	res, err := mc.MCP(ctx, s.job, MCPCall{NodeID: n.ID, Op: MCPListTools})
	if err != nil {
		return nil, err
	}
	c := &mcpConn{tools: res.Tools, remote: mc, nodeID: n.ID}
	if s.mcp == nil {
		s.mcp = map[string]*mcpConn{}
	}
	s.mcp[key] = c
	return c, nil
}
