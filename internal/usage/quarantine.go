package usage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Quarantined is an event the store refused as malformed (a data error such
// as a NUL byte PostgreSQL cannot hold, or a field longer than the store
// allows, never an outage). It is set aside, so that it cannot block the
// events behind it, and listed to platform admins.
type Quarantined struct {
	ID string `json:"id"` // "uq_…", ordered by the time it was set aside
	// EventKey identifies the event whatever its id holds (the SHA-256 of
	// the id, hex): an event replayed after quarantine is set aside once.
	EventKey string    `json:"-"`
	EventID  string    `json:"event_id"` // escaped as by Storable
	TenantID string    `json:"tenant_id"`
	Event    string    `json:"event"` // the event as JSON, see EventJSON
	Error    string    `json:"error"` // why the store refused it
	At       time.Time `json:"at"`
}

// QuarantineStore is a Store that can set aside the events it refuses. The
// recorder uses it when the store implements it; otherwise a refused event
// is logged in full and its waiters get the store's error.
type QuarantineStore interface {
	// QuarantineUsage stores q; an event already quarantined (same
	// EventKey) is skipped. Every text in q is already storable.
	QuarantineUsage(ctx context.Context, q []Quarantined) error
}

// maxQuarantineText bounds each text of a quarantined event, so that an
// event refused for its size cannot make its quarantine record fail too.
const maxQuarantineText = 1024

// Storable returns s as every store can hold it and a person can read it:
// unchanged if it is valid UTF-8 without NUL and at most max bytes;
// otherwise Go-quoted (NUL becomes \x00, an invalid byte \xff) and, past
// max bytes, cut with a note of the original length.
func Storable(s string, max int) string {
	clean := utf8.ValidString(s) && !strings.ContainsRune(s, 0)
	if clean && len(s) <= max {
		return s
	}
	q := s
	if !clean {
		q = strconv.Quote(s) // valid UTF-8 and NUL-free
	}
	if len(q) <= max {
		return q
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(q[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", q[:cut], len(s))
}

// EventJSON returns e as JSON with every text made storable, so that the
// quarantine record of an event cannot itself be refused.
func EventJSON(e Event) string {
	text := func(s string) string { return Storable(s, maxQuarantineText) }
	scopes := make([]string, len(e.Scopes))
	for i, s := range e.Scopes {
		scopes[i] = text(s)
	}
	loc := ""
	if e.Loc != nil {
		loc = e.Loc.String()
	}
	b, err := json.Marshal(struct {
		ID           string    `json:"id"`
		At           time.Time `json:"at"`
		TenantID     string    `json:"tenant_id"`
		UserID       string    `json:"user_id"`
		ProjectID    string    `json:"project_id"`
		Kind         string    `json:"kind"`
		Model        string    `json:"model"`
		Requests     int64     `json:"requests"`
		InputTokens  int64     `json:"input_tokens"`
		OutputTokens int64     `json:"output_tokens"`
		GPUMillis    int64     `json:"gpu_ms"`
		CostMicros   int64     `json:"cost_micros"`
		PeakMemory   int64     `json:"peak_memory"`
		CPUMillis    int64     `json:"cpu_ms"`
		Scopes       []string  `json:"scopes"`
		Loc          string    `json:"time_zone,omitempty"`
	}{text(e.ID), e.At.UTC(), text(e.TenantID), text(e.UserID), text(e.ProjectID), text(e.Kind), text(e.Model),
		e.Requests, e.InputTokens, e.OutputTokens, e.GPUMillis, e.CostMicros, e.PeakMemory, e.CPUMillis, scopes, loc})
	if err != nil { // cannot happen: every field marshals
		return fmt.Sprintf(`{"id":%q,"error":%q}`, text(e.ID), err.Error())
	}
	return string(b)
}

// EventKey is the key that makes quarantining an event idempotent.
func EventKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}
