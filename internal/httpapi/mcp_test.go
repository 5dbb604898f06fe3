package httpapi_test

import (
	"strings"
	"testing"
)

// A flow whose MCP Tools node names a server when the operator declared
// none is refused over the API with 422, naming the node's field and the
// config section to set; nothing is connected to, whatever URL the flow
// carries.
func TestRunWithUndeclaredMCPServerIs422(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	const data = `{"nodes":[
		{"id":"mcp","type":"MCPTools","data":{"mcp_server":{"name":"notes","config":{"url":"http://169.254.169.254/mcp"}},"tool":"add"}},
		{"id":"out","type":"ChatOutput","data":{}}
	],"edges":[{"source":"mcp","sourceHandle":"response","target":"out","targetHandle":"input_value"}]}`
	id := e.uploadFlow(w.memberKey, []byte(data), "mcp")
	r := e.runFlow(w.memberKey, id, map[string]any{"input_value": "hi"})
	if r.status != 422 || r.errCode() != "unprocessable" || r.errField() != "nodes.mcp.mcp_server" {
		t.Fatalf("got %d field %q, want 422 field nodes.mcp.mcp_server: %s", r.status, r.errField(), r.raw)
	}
	if !strings.Contains(string(r.raw), "mcp_servers") {
		t.Errorf("the error does not name the mcp_servers config section: %s", r.raw)
	}
}
