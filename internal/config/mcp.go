package config

import (
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
)

// MCPServer is an MCP server that flows may use by name (mcp_servers). The
// operator declares the servers; a flow only names one, so no flow can make
// Sluice connect anywhere the operator did not list.
type MCPServer struct {
	// Name is what a flow's MCPTools node selects (its mcp_server value).
	Name string `yaml:"name"`
	// URL is the server's streamable HTTP endpoint (http(s), no
	// credentials in it).
	URL string `yaml:"url"`
	// HeadersEnv maps a header name to the environment variable holding
	// its value (Authorization: MCP_NOTES_TOKEN), so that secrets stay out
	// of the file; the values are read at start and never printed.
	HeadersEnv map[string]string `yaml:"headers_env,omitempty"`
	// Timeout bounds one MCP request (listing tools, one tool call);
	// default 30s, at most 10m.
	Timeout Duration `yaml:"timeout,omitempty"`
}

// DefaultMCPTimeout bounds an MCP request when the server sets no timeout.
const DefaultMCPTimeout = 30 * time.Second

var (
	mcpName    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// validateMCP checks the mcp_servers section, naming the entry and field at
// fault (mcp_servers[1].url).
func (c *Config) validateMCP() error {
	seen := map[string]bool{}
	for i, s := range c.MCPServers {
		field := func(name string) string { return fmt.Sprintf("mcp_servers[%d].%s", i, name) }
		if !mcpName.MatchString(s.Name) {
			return errs.Field(errs.Invalid, field("name"), "%s %q is not a name of 1-64 letters, digits, '_', '.' or '-'", field("name"), s.Name)
		}
		if seen[s.Name] {
			return errs.Field(errs.Invalid, field("name"), "%s %q is declared twice", field("name"), s.Name)
		}
		seen[s.Name] = true
		u, err := url.Parse(s.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return errs.Field(errs.Invalid, field("url"), "%s is not an http(s) URL without credentials", field("url"))
		}
		for h, env := range s.HeadersEnv {
			if !headerName.MatchString(h) {
				return errs.Field(errs.Invalid, field("headers_env"), "%s: %q is not a header name", field("headers_env"), h)
			}
			if !envVarName.MatchString(env) {
				return errs.Field(errs.Invalid, field("headers_env."+h), "%s %q is not an environment variable name", field("headers_env."+h), env)
			}
		}
		if s.Timeout < 0 || time.Duration(s.Timeout) > 10*time.Minute {
			return errs.Field(errs.Invalid, field("timeout"), "%s must be between 0 (30s) and 10m", field("timeout"))
		}
	}
	return nil
}

// Headers reads the server's header values from the environment. A
// variable that is unset or empty is an error naming the field, never the
// value.
func (s MCPServer) Headers(i int, getenv func(string) string) (map[string]string, error) {
	out := make(map[string]string, len(s.HeadersEnv))
	for h, env := range s.HeadersEnv {
		v := getenv(env)
		if v == "" {
			field := fmt.Sprintf("mcp_servers[%d].headers_env.%s", i, h)
			return nil, errs.Field(errs.Invalid, field, "%s: the environment variable %s is unset or empty", field, env)
		}
		out[h] = v
	}
	return out, nil
}

// RequestTimeout is the server's timeout, or DefaultMCPTimeout.
func (s MCPServer) RequestTimeout() time.Duration {
	if s.Timeout > 0 {
		return time.Duration(s.Timeout)
	}
	return DefaultMCPTimeout
}
