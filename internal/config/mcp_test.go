package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/errs"
)

func TestMCPServers(t *testing.T) {
	const valid = `
mcp_servers:
  - name: notes
    url: http://notes.internal:8000/mcp
    headers_env:
      Authorization: MCP_NOTES_AUTH
    timeout: 20s
  - name: search.v2
    url: https://search.example/mcp
`
	c := config.Default()
	if err := c.Parse(strings.NewReader(valid)); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}
	if len(c.MCPServers) != 2 || c.MCPServers[0].RequestTimeout() != 20*time.Second || c.MCPServers[1].RequestTimeout() != config.DefaultMCPTimeout {
		t.Fatalf("servers: got %+v", c.MCPServers)
	}
	const secret = "Bearer mcp-secret-91c2"
	h, err := c.MCPServers[0].Headers(0, env(map[string]string{"MCP_NOTES_AUTH": secret}))
	if err != nil || h["Authorization"] != secret {
		t.Fatalf("Headers() = %v, %v; want the variable's value", h, err)
	}
	_, err = c.MCPServers[0].Headers(0, env(nil))
	if got := fieldOf(t, err); got != "mcp_servers[0].headers_env.Authorization" {
		t.Errorf("unset variable: field %q, want mcp_servers[0].headers_env.Authorization", got)
	}
	// The file holds the variable's name only; printing shows no value.
	if s := c.String(); !strings.Contains(s, "MCP_NOTES_AUTH") || strings.Contains(s, secret) {
		t.Errorf("printed config:\n%s", s)
	}
}

func TestMCPServersInvalid(t *testing.T) {
	tests := []struct {
		name, yaml, field string
	}{
		{"no name", "- url: http://a/mcp", "mcp_servers[0].name"},
		{"bad name", "- name: 'a b'\n  url: http://a/mcp", "mcp_servers[0].name"},
		{"duplicate", "- name: a\n  url: http://a/mcp\n- name: a\n  url: http://b/mcp", "mcp_servers[1].name"},
		{"no url", "- name: a", "mcp_servers[0].url"},
		{"not http", "- name: a\n  url: file:///etc/passwd", "mcp_servers[0].url"},
		{"credentials in the url", "- name: a\n  url: http://u:p@a/mcp", "mcp_servers[0].url"},
		{"bad header", "- name: a\n  url: http://a/mcp\n  headers_env: {'X Y': TOKEN}", "mcp_servers[0].headers_env"},
		{"bad variable", "- name: a\n  url: http://a/mcp\n  headers_env: {Authorization: 'not-a-var'}", "mcp_servers[0].headers_env.Authorization"},
		{"timeout too long", "- name: a\n  url: http://a/mcp\n  timeout: 1h", "mcp_servers[0].timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if err := c.Parse(strings.NewReader("mcp_servers:\n" + indent(tt.yaml))); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			if errs.CodeOf(err) != errs.Invalid {
				t.Fatalf("Validate() = %v, want invalid", err)
			}
			if got := fieldOf(t, err); got != tt.field {
				t.Errorf("field: got %q, want %q", got, tt.field)
			}
		})
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
