package main

import (
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/run"
)

// mcpServers are the configured MCP servers for the flow runtime, their
// header values read from the environment (an unset variable stops the
// start, naming the field, never a value).
func mcpServers(cfg config.Config, getenv func(string) string) ([]run.MCPServer, error) {
	out := make([]run.MCPServer, 0, len(cfg.MCPServers))
	for i, s := range cfg.MCPServers {
		headers, err := s.Headers(i, getenv)
		if err != nil {
			return nil, err
		}
		out = append(out, run.MCPServer{Name: s.Name, URL: s.URL, Headers: headers, Timeout: s.RequestTimeout()})
	}
	return out, nil
}
