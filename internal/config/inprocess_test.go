package config_test

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

func TestInProcessSizes(t *testing.T) {
	tests := []struct {
		name, file string
		env        map[string]string
		want       [3]config.Bytes // max_tool_response_bytes, inprocess_run_memory, inprocess_run_reserve
	}{
		{"defaults", "", nil, [3]config.Bytes{10 << 20, 512 << 20, 4 << 20}},
		{"units in the file", "max_tool_response_bytes: 2MiB\ninprocess_run_memory: 1GiB\ninprocess_run_reserve: 512KiB\n", nil,
			[3]config.Bytes{2 << 20, 1 << 30, 512 << 10}},
		{"plain bytes", "max_tool_response_bytes: 65536\n", nil, [3]config.Bytes{65536, 512 << 20, 4 << 20}},
		{"environment over the file", "inprocess_run_memory: 1GiB\n",
			map[string]string{"SLUICE_INPROCESS_RUN_MEMORY": "256MiB", "SLUICE_MAX_TOOL_RESPONSE_BYTES": "1MiB", "SLUICE_INPROCESS_RUN_RESERVE": "1MiB"},
			[3]config.Bytes{1 << 20, 256 << 20, 1 << 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if err := c.Parse(strings.NewReader(tt.file)); err != nil {
				t.Fatalf("Parse = %v, want nil", err)
			}
			if err := c.Env(env(tt.env)); err != nil {
				t.Fatalf("Env = %v, want nil", err)
			}
			if got := [3]config.Bytes{c.MaxToolResponseBytes, c.InProcessRunMemory, c.InProcessRunReserve}; got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestInProcessSizesInvalid(t *testing.T) {
	tests := []struct {
		name, file, field string
	}{
		{"cap too small", "max_tool_response_bytes: 100\n", "max_tool_response_bytes"},
		{"cap too large", "max_tool_response_bytes: 2GiB\n", "max_tool_response_bytes"},
		{"reserve too small", "inprocess_run_reserve: 1KiB\n", "inprocess_run_reserve"},
		{"ceiling below one run with one tool", "inprocess_run_memory: 12MiB\n", "inprocess_run_memory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if err := c.Parse(strings.NewReader(tt.file)); err != nil {
				t.Fatalf("Parse = %v, want nil", err)
			}
			if got := fieldOf(t, c.Validate()); got != tt.field {
				t.Errorf("Validate() names field %q, want %q", got, tt.field)
			}
		})
	}
	c := config.Default()
	if err := c.Parse(strings.NewReader("inprocess_run_memory: lots\n")); err == nil {
		t.Error(`Parse("inprocess_run_memory: lots") = nil, want an error`)
	}
	if got := fieldOf(t, c.Env(env(map[string]string{"SLUICE_INPROCESS_RUN_MEMORY": "lots"}))); got != "SLUICE_INPROCESS_RUN_MEMORY" {
		t.Errorf("Env error names field %q, want SLUICE_INPROCESS_RUN_MEMORY", got)
	}
}
