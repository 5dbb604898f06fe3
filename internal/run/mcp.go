package run

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
)

// TypeMCPTools is LangFlow's MCP Tools component: the tools of an MCP
// server, called as a node or handed to an Agent.
const TypeMCPTools = "MCPTools"

// MCPServer is an MCP server the operator declared (the mcp_servers config
// section). Flows name it; they never give its address.
type MCPServer struct {
	Name string
	// URL is its streamable HTTP endpoint.
	URL string
	// Headers go with every request (Authorization): values read from the
	// environment at start, secret, never logged or shown.
	Headers map[string]string
	// Timeout bounds one request (0: DefaultMCPTimeout).
	Timeout time.Duration
}

// DefaultMCPTimeout bounds an MCP request when the server sets no timeout.
const DefaultMCPTimeout = 30 * time.Second

// maxMCPTools bounds the tools read from one server.
const maxMCPTools = 256

// String names the server without its headers.
func (m MCPServer) String() string { return m.Name + " (" + m.URL + ")" }

// GoString keeps the headers out of %#v.
func (m MCPServer) GoString() string { return m.String() }

func (m MCPServer) timeout() time.Duration {
	if m.Timeout > 0 {
		return m.Timeout
	}
	return DefaultMCPTimeout
}

// mcpServerName reads the server a node selected: LangFlow's McpInput
// holds {"name": …, "config": …} (older exports: the name alone). The
// config a flow carries is ignored: only the operator's is used.
func mcpServerName(p flow.Param) string {
	switch v := p.Value.(type) {
	case string:
		return strings.TrimSpace(v)
	case map[string]any:
		if s, ok := v["name"].(string); ok {
			return strings.TrimSpace(s)
		}
	}
	return ""
}

// mcpServer resolves the server a node names among the configured ones;
// an unknown name or no configured server is the flow's error (422).
func (s *state) mcpServer(n *flow.Node) (MCPServer, error) {
	field := "nodes." + n.ID + ".mcp_server"
	name := mcpServerName(s.param(n, "mcp_server"))
	servers := s.e.MCPServers
	if name == "" {
		return MCPServer{}, errs.Field(errs.Unprocessable, field, "node %s (MCPTools) selects no MCP server; select one that the mcp_servers config section declares", n.ID)
	}
	if len(servers) == 0 {
		return MCPServer{}, errs.Field(errs.Unprocessable, field,
			"node %s (MCPTools) uses the MCP server %q, but no MCP servers are configured: the operator declares them in the mcp_servers config section", n.ID, name)
	}
	for _, srv := range servers {
		if srv.Name == name {
			return srv, nil
		}
	}
	names := make([]string, len(servers))
	for i, srv := range servers {
		names[i] = strconv.Quote(srv.Name)
	}
	return MCPServer{}, errs.Field(errs.Unprocessable, field,
		"node %s (MCPTools) uses the MCP server %q, which the mcp_servers config section does not declare (it declares %s)", n.ID, name, strings.Join(names, ", "))
}

// CheckMCP refuses, before a run is admitted, a flow whose MCPTools nodes
// name a server the operator did not declare (tweaks applied).
func (e *Executor) CheckMCP(f *flow.Flow, tweaks map[string]map[string]any) error {
	s := &state{e: e, job: &Job{Tweaks: tweaks}}
	for _, n := range f.Nodes {
		if n != nil && n.Type == TypeMCPTools {
			if _, err := s.mcpServer(n); err != nil {
				return err
			}
		}
	}
	return nil
}

func errSandboxedMCP(n *flow.Node) error {
	return errs.Field(errs.Unprocessable, "nodes."+n.ID, "node %s (MCPTools): this sandbox worker cannot reach the server's MCP servers", n.ID)
}

// mcpConn is a run's session with one MCP server and the tools it listed.
type mcpConn struct {
	srv     MCPServer
	session *mcp.ClientSession
	tools   []*mcp.Tool
	limit   int64
	// remote, in a sandbox worker, makes the calls through the server
	// (session is nil then), for node nodeID.
	remote MCPCaller
	nodeID string
	// over is set when a response passed the cap (the transport cut it).
	over atomic.Bool
}

// mcpConnFor returns the run's session with the node's server, connecting
// and listing its tools the first time: a run lists a server's tools once.
func (s *state) mcpConnFor(ctx context.Context, n *flow.Node) (*mcpConn, error) {
	if s.e.Calls != nil {
		// A sandbox worker: the servers and their secrets stay with the
		// server process, which lists and calls the tools.
		mc, ok := s.e.Calls.(MCPCaller)
		if !ok {
			return nil, errSandboxedMCP(n)
		}
		return s.remoteMCPConn(ctx, n, mc)
	}
	srv, err := s.mcpServer(n)
	if err != nil {
		return nil, err
	}
	if c := s.mcp[srv.Name]; c != nil {
		return c, nil
	}
	c := &mcpConn{srv: srv, limit: s.guard().maxResponse()}
	hc, err := c.httpClient(s.guard())
	if err != nil {
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+".mcp_server", "node %s: MCP server %s: %v", n.ID, srv.Name, err)
	}
	defer func() {
		if c.session == nil {
			hc.CloseIdleConnections()
		}
	}()
	tr := &mcp.StreamableClientTransport{Endpoint: srv.URL, HTTPClient: hc, MaxRetries: -1, DisableStandaloneSSE: true,
		MaxEventSize: int(min(c.limit, 1<<30))}
	client := mcp.NewClient(&mcp.Implementation{Name: "sluice", Version: "1"}, nil)
	cctx, cancel := context.WithTimeout(ctx, srv.timeout())
	defer cancel()
	session, err := client.Connect(cctx, tr, nil)
	if err != nil {
		return nil, c.failure(ctx, cctx, n, "connecting", err)
	}
	for t, err := range session.Tools(cctx, nil) {
		if err != nil {
			_ = session.Close()
			return nil, c.failure(ctx, cctx, n, "listing tools", err)
		}
		if len(c.tools) == maxMCPTools {
			_ = session.Close()
			return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+".mcp_server", "node %s: MCP server %s lists more than %d tools", n.ID, srv.Name, maxMCPTools)
		}
		c.tools = append(c.tools, t)
	}
	c.session = session
	if s.mcp == nil {
		s.mcp = map[string]*mcpConn{}
	}
	s.mcp[srv.Name] = c
	return c, nil
}

// closeMCP ends the run's MCP sessions.
func (s *state) closeMCP() {
	for _, c := range s.mcp {
		if c.session != nil {
			_ = c.session.Close()
		}
	}
	s.mcp = nil
}

// httpClient is the guard's client with the server's host allowed (the
// operator declared it, so loopback or private is fine), its headers set,
// every response capped at the tool response cap, and no redirects (they
// would lead where the operator did not say).
func (c *mcpConn) httpClient(g *Guard) (*http.Client, error) {
	u, err := url.Parse(c.srv.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not a URL", c.srv.URL)
	}
	allowed := &Guard{AllowHosts: append(slices.Clip(g.AllowHosts), u.Host), MaxResponseBytes: g.MaxResponseBytes, resolve: g.resolve}
	if _, err := allowed.CheckURL(c.srv.URL); err != nil {
		return nil, err
	}
	hc := allowed.Client(c.srv.timeout())
	hc.Timeout = 0 // each request's context bounds it
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	hc.Transport = &mcpTransport{base: hc.Transport, conn: c}
	return hc, nil
}

// mcpTransport sets the server's headers and caps every response body.
type mcpTransport struct {
	base http.RoundTripper
	conn *mcpConn
}

func (t *mcpTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if len(t.conn.srv.Headers) > 0 {
		req = req.Clone(req.Context())
		for k, v := range t.conn.srv.Headers {
			req.Header.Set(k, v)
		}
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.conn.limit {
		resp.Body.Close()
		t.conn.over.Store(true)
		return nil, errMCPTooLarge
	}
	resp.Body = &cappedBody{rc: resp.Body, left: t.conn.limit, conn: t.conn}
	return resp, nil
}

var errMCPTooLarge = errors.New("response exceeds the tool response cap")

// cappedBody fails a body longer than the cap instead of reading it all.
type cappedBody struct {
	rc   io.ReadCloser
	left int64
	conn *mcpConn
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, errMCPTooLarge
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		b.conn.over.Store(true)
		return 0, errMCPTooLarge
	}
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }

// failure words an error of a request to the server, naming the node and
// what was done; the run's own deadline or cancellation stays the run's.
func (c *mcpConn) failure(ctx, reqCtx context.Context, n *flow.Node, doing string, err error) error {
	if ctx.Err() != nil {
		return ctxError(ctx.Err())
	}
	if c.over.Load() {
		return errs.E(errs.TooLarge, "node %s: %s on MCP server %s: a response exceeds the %s cap (max_tool_response_bytes)", n.ID, doing, c.srv.Name, sizeText(c.limit))
	}
	if reqCtx.Err() != nil {
		return errs.E(errs.Unavailable, "node %s: %s on MCP server %s: no answer within %s (mcp_servers timeout)", n.ID, doing, c.srv.Name, c.srv.timeout())
	}
	if e, ok := errors.AsType[*errs.Error](err); ok && e.Code == errs.Forbidden {
		return errs.E(errs.Forbidden, "node %s: MCP server %s: %s", n.ID, c.srv.Name, e.Message)
	}
	return errs.E(errs.Unavailable, "node %s: %s on MCP server %s failed: %v", n.ID, doing, c.srv.Name, err)
}

// governor is the executor's gate, or one over its meter.
func (e *Executor) governor() *gate.Gate {
	if e.Gate != nil {
		return e.Gate
	}
	return &gate.Gate{Meter: e.Meter, OnModelCall: e.OnModelCall}
}

// callMCP calls one tool as a governed request (a request against the
// chain's rates, refused when none is left), bounded by the server's
// timeout and the tool response cap. A result the server marks as an
// error is an error naming the node and the tool.
func (s *state) callMCP(ctx context.Context, n *flow.Node, c *mcpConn, name string, args map[string]any) (*mcp.CallToolResult, error) {
	if c.remote != nil {
		// The server governs, bounds and makes the call.
		r, err := c.remote.MCP(ctx, s.job, MCPCall{NodeID: n.ID, Op: MCPCallTool, Tool: name, Args: args})
		if err != nil {
			return nil, err
		}
		if r.Result == nil {
			return nil, errs.E(errs.Unavailable, "node %s: MCP tool %q: the server sent no result", n.ID, name)
		}
		return r.Result, nil
	}
	timeout := c.srv.timeout()
	if v, ok := s.param(n, "tool_execution_timeout").Float(); ok && v > 0 && time.Duration(v*float64(time.Second)) < timeout {
		timeout = time.Duration(v * float64(time.Second))
	}
	var res *mcp.CallToolResult
	err := s.e.governor().Request(ctx, s.job.Who, "mcp_call", s.job.RunID, func(ctx context.Context) error {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c.over.Store(false) // a run's calls are one at a time
		r, err := c.session.CallTool(cctx, &mcp.CallToolParams{Name: name, Arguments: args})
		if err != nil {
			return c.failure(ctx, cctx, n, fmt.Sprintf("calling tool %q", name), err)
		}
		res = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	if res.IsError {
		return nil, errs.E(errs.Unavailable, "node %s: MCP tool %q on server %s failed: %s", n.ID, name, c.srv.Name, preview(mcpText(res)))
	}
	return res, nil
}

// mcpText is a result as the model reads it: its text items, other items
// as JSON.
func mcpText(res *mcp.CallToolResult) string {
	parts := make([]string, 0, len(res.Content))
	for _, item := range res.Content {
		if t, ok := item.(*mcp.TextContent); ok {
			parts = append(parts, t.Text)
			continue
		}
		if b, err := json.Marshal(item); err == nil {
			parts = append(parts, string(b))
		}
	}
	if len(parts) == 0 && res.StructuredContent != nil {
		if b, err := json.Marshal(res.StructuredContent); err == nil {
			parts = append(parts, string(b))
		}
	}
	return strings.Join(parts, "\n")
}

// mcpRows is a result as LangFlow's build_output makes its DataFrame: a
// row per content item, a text item holding a JSON object becoming that
// object, one holding other JSON {text, parsed_value, type}.
func mcpRows(res *mcp.CallToolResult) []row {
	rows := make([]row, 0, len(res.Content))
	for _, item := range res.Content {
		var m map[string]any
		b, err := json.Marshal(item)
		if err != nil || json.Unmarshal(b, &m) != nil {
			continue
		}
		r := rowFromMap(m)
		if t, ok := item.(*mcp.TextContent); ok {
			var parsed any
			if json.Unmarshal([]byte(t.Text), &parsed) == nil {
				if obj, ok := parsed.(map[string]any); ok {
					r = rowFromMap(obj)
				} else {
					r = row{{"text", t.Text}, {"parsed_value", parsed}, {"type", "text"}}
				}
			} else {
				r = row{{"type", "text"}, {"text", t.Text}}
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// mcpNode runs MCPTools as a node: it calls the selected tool with the
// node's fields for the tool's parameters and outputs the result as a
// DataFrame.
func (s *state) mcpNode(ctx context.Context, n *flow.Node) error {
	c, err := s.mcpConnFor(ctx, n)
	if err != nil {
		return err
	}
	name := s.param(n, "tool").String()
	if name == "" {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".tool", "node %s (MCPTools) selects no tool", n.ID)
	}
	i := slices.IndexFunc(c.tools, func(t *mcp.Tool) bool { return t.Name == name })
	if i < 0 {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".tool", "node %s: MCP server %s has no tool %q", n.ID, c.srv.Name, name)
	}
	args, err := s.mcpArgs(n, c.tools[i])
	if err != nil {
		return err
	}
	res, err := s.callMCP(ctx, n, c, name, args)
	if err != nil {
		return err
	}
	s.setOut(n.ID, "response", dataValue(&table{kind: dataFrame, rows: mcpRows(res)}))
	return nil
}

// mcpArgs reads a tool's arguments from the node's fields named after its
// parameters (an edge, else the value), leaving out blank optional ones so
// that the server's defaults hold, as LangFlow does.
func (s *state) mcpArgs(n *flow.Node, t *mcp.Tool) (map[string]any, error) {
	var schema struct {
		Properties map[string]struct {
			Type any `json:"type"`
		} `json:"properties"`
		Required []string `json:"required"`
	}
	if b, err := json.Marshal(t.InputSchema); err == nil {
		_ = json.Unmarshal(b, &schema)
	}
	args := map[string]any{}
	for name, prop := range schema.Properties {
		required := slices.Contains(schema.Required, name)
		var v any
		if in, ok := s.in(n, name); ok {
			v = in.text
		} else {
			v = s.param(n, name).Value
		}
		if v == nil || (v == "" && !required) {
			if required {
				return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+name, "node %s: MCP tool %q needs %q", n.ID, t.Name, name)
			}
			continue
		}
		typ, _ := prop.Type.(string)
		if str, ok := v.(string); ok && typ != "string" && typ != "" {
			var parsed any
			if err := json.Unmarshal([]byte(str), &parsed); err != nil {
				return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+name, "node %s: %q of MCP tool %q takes a %s, not %q", n.ID, name, t.Name, typ, preview(str))
			}
			v = parsed
		}
		args[name] = v
	}
	return args, nil
}

// mcpTools are the server's tools as an Agent's tools: every tool, less
// those the export's tools_metadata switched off, named and described as
// there when it renames them.
func (s *state) mcpTools(ctx context.Context, n *flow.Node) ([]*tool, error) {
	c, err := s.mcpConnFor(ctx, n)
	if err != nil {
		return nil, err
	}
	meta := map[string]map[string]any{}
	if md, ok := s.param(n, "tools_metadata").Value.([]any); ok {
		for _, e := range md {
			m, ok := e.(map[string]any)
			if !ok {
				continue
			}
			key, _ := m["name"].(string)
			if tags, ok := m["tags"].([]any); ok && len(tags) > 0 {
				if t, ok := tags[0].(string); ok && t != "" {
					key = t
				}
			}
			if key != "" {
				meta[key] = m
			}
		}
	}
	var out []*tool
	for _, mt := range c.tools {
		def := llm.Tool{Name: mt.Name, Description: mt.Description}
		if m, ok := meta[mt.Name]; ok {
			if on, ok := m["status"].(bool); ok && !on {
				continue
			}
			if v, ok := m["name"].(string); ok && v != "" {
				def.Name = v
			}
			if v, ok := m["description"].(string); ok && v != "" {
				def.Description = v
			}
		}
		schema := mt.InputSchema
		if schema == nil {
			schema = map[string]any{"type": "object", "properties": map[string]any{}}
		}
		def.Parameters, _ = json.Marshal(schema)
		name := mt.Name
		out = append(out, &tool{def: def, run: func(ctx context.Context, args map[string]any) (string, error) {
			res, err := s.callMCP(ctx, n, c, name, args)
			if err != nil {
				return "", err
			}
			return mcpText(res), nil
		}})
	}
	return out, nil
}
