// Package run owns stored flows and their runs: uploading and versioning a
// flow in a project, admitting a run through the metering door, executing
// its graph node by node with every model call reserved and settled, and
// recording the run with a per-node trace. Execution of each component is
// native Go; LangFlow's Python sources in exports are never executed.
package run

import (
	"context"
	"encoding/json"
	"time"

	"github.com/sluicehq/sluice/internal/tenancy"
)

// Flow is a stored flow.
type Flow struct {
	ID           string          `json:"id"`
	TenantID     string          `json:"tenant_id"`
	ProjectID    string          `json:"project_id"`
	Name         string          `json:"name"`
	EndpointName string          `json:"endpoint_name"`
	Description  string          `json:"description,omitempty"`
	Format       string          `json:"format"`
	Data         json.RawMessage `json:"data,omitempty"`
	CreatedBy    string          `json:"created_by,omitempty"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
}

// Status is how a run ended (or that it has not yet).
type Status string

// Run statuses.
const (
	StatusRunning             Status = "running"
	StatusSucceeded           Status = "succeeded"
	StatusFailed              Status = "failed"
	StatusQuotaExceeded       Status = "quota_exceeded"
	StatusRateLimited         Status = "rate_limited"
	StatusTimeout             Status = "timeout"
	StatusStepLimitExceeded   Status = "step_limit_exceeded"
	StatusMemoryLimitExceeded Status = "memory_limit_exceeded"
	StatusCancelled           Status = "cancelled"
	// StatusCancelling marks a running run whose cancel was asked on
	// another instance than the one executing it.
	StatusCancelling Status = "cancelling"
	// StatusInterrupted marks a run whose instance stopped before the run
	// ended (killed, crashed): found still running past its deadline.
	StatusInterrupted Status = "interrupted"
)

// Usage is what a run or a node used.
type Usage struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
	GPUMillis    int64 `json:"gpu_ms"`
	CostMicros   int64 `json:"cost_micros"`
}

// Add adds o to u.
func (u *Usage) Add(o Usage) {
	u.InputTokens += o.InputTokens
	u.OutputTokens += o.OutputTokens
	u.GPUMillis += o.GPUMillis
	u.CostMicros += o.CostMicros
}

// Record is a run as stored and shown.
type Record struct {
	ID           string     `json:"id"`
	FlowID       string     `json:"flow_id"`
	TenantID     string     `json:"tenant_id"`
	ProjectID    string     `json:"project_id,omitempty"`
	UserID       string     `json:"user_id,omitempty"`
	SessionID    string     `json:"session_id,omitempty"`
	Status       Status     `json:"status"`
	ErrorCode    string     `json:"error_code,omitempty"`
	ErrorMessage string     `json:"error_message,omitempty"`
	StartedAt    time.Time  `json:"started_at"`
	EndedAt      *time.Time `json:"ended_at,omitempty"`
	// DeadlineAt is when the run's timeout stops it: a run still running
	// well after it was executed by an instance that died
	// (Service.ReconcileLost).
	DeadlineAt     *time.Time  `json:"deadline_at,omitempty"`
	Usage          Usage       `json:"usage"`
	Steps          int64       `json:"steps"`
	MemoryEnforced bool        `json:"memory_enforced"`
	PeakMemory     int64       `json:"peak_memory_bytes,omitempty"`
	CPUMillis      int64       `json:"cpu_ms,omitempty"`
	OutputPreview  string      `json:"output_preview,omitempty"`
	Trace          []NodeTrace `json:"trace"`
}

// NodeTrace is one node's part of a run.
type NodeTrace struct {
	NodeID        string    `json:"node_id"`
	Type          string    `json:"type"`
	Status        string    `json:"status"` // succeeded, failed, skipped
	StartedAt     time.Time `json:"started_at"`
	DurationMS    float64   `json:"duration_ms"`
	Model         string    `json:"model,omitempty"`
	Calls         int       `json:"calls,omitempty"` // model calls made by the node
	Usage         Usage     `json:"usage"`
	OutputPreview string    `json:"output_preview,omitempty"`
	Error         string    `json:"error,omitempty"`
}

// Message is one chat message of a session, kept for Memory components.
type Message struct {
	ID         string    `json:"id"`
	TenantID   string    `json:"-"`
	UserID     string    `json:"-"`
	FlowID     string    `json:"flow_id,omitempty"`
	SessionID  string    `json:"session_id"`
	Sender     string    `json:"sender"` // "User" or "Machine", as LangFlow
	SenderName string    `json:"sender_name,omitempty"`
	Text       string    `json:"text"`
	RunID      string    `json:"run_id,omitempty"`
	CreatedAt  time.Time `json:"timestamp"`
}

// Store persists flows, runs and messages.
type Store interface {
	InsertFlow(ctx context.Context, f *Flow) error
	Flow(ctx context.Context, id string) (*Flow, error)
	FlowByEndpoint(ctx context.Context, tenantID, endpoint string) (*Flow, error)
	Flows(ctx context.Context, f tenancy.Filter) ([]*Flow, error)
	UpdateFlow(ctx context.Context, f *Flow) error
	DeleteFlow(ctx context.Context, id string) error

	InsertRun(ctx context.Context, r *Record) error
	FinishRun(ctx context.Context, r *Record) error
	Run(ctx context.Context, id string) (*Record, error)
	Runs(ctx context.Context, f tenancy.Filter) ([]*Record, error)
	// RequestCancel marks a running run for its instance to stop.
	RequestCancel(ctx context.Context, id string) error
	// CancelRequested returns which of the given running runs are marked.
	CancelRequested(ctx context.Context, ids []string) ([]string, error)
	// InterruptRuns ends as interrupted the runs still running (or
	// cancelling) whose deadline passed before t (those recorded without
	// one: started before t less legacyLife), and returns how many.
	InterruptRuns(ctx context.Context, t time.Time, legacyLife time.Duration, message string) (int, error)

	AppendMessage(ctx context.Context, m *Message) error
	// Messages returns a session's last n messages, oldest first.
	Messages(ctx context.Context, tenantID, userID, sessionID string, n int) ([]*Message, error)
}
