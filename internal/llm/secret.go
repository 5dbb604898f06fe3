package llm

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Secret holds an API key. It prints as "<redacted>" (or "" when empty)
// under every fmt verb, in JSON, YAML and slog, and Reveal is the only way
// to read it. The key sits behind a pointer so that even a struct holding a
// Secret in an unexported field, printed with %+v or %#v (where fmt cannot
// call methods), shows an address rather than the key.
type Secret struct{ p *string }

// NewSecret wraps s.
func NewSecret(s string) Secret {
	if s == "" {
		return Secret{}
	}
	return Secret{p: &s}
}

// Reveal returns the key, for the one place that puts it in a request header.
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return *s.p
}

// IsZero reports whether no key is set (also used by YAML and JSON omitzero).
func (s Secret) IsZero() bool { return s.Reveal() == "" }

func (s Secret) String() string {
	if s.IsZero() {
		return ""
	}
	return "<redacted>"
}

// GoString keeps the key out of %#v.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// Format keeps the key out of every fmt verb.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = io.WriteString(f, s.GoString())
		return
	}
	_, _ = io.WriteString(f, s.String())
}

// MarshalJSON keeps the key out of JSON.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// MarshalYAML keeps the key out of printed configs.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// UnmarshalText reads a key from a config file (YAML or JSON string).
func (s *Secret) UnmarshalText(b []byte) error {
	*s = NewSecret(string(b))
	return nil
}

// LogValue keeps the key out of structured logs.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// redact removes key from text an upstream sent back (some proxies echo the
// key they were given in error messages), as well as OpenAI's masked form
// ("sk-abc1****wxyz"), which still gives away part of the key.
func redact(text string, key Secret) string {
	if k := key.Reveal(); len(k) >= 4 && strings.Contains(text, k) {
		text = strings.ReplaceAll(text, k, "<redacted>")
	}
	return maskedKey(text)
}

// maskedKey replaces words such as "sk-proj-ab12************wxyz".
func maskedKey(text string) string {
	if !strings.Contains(text, "*") {
		return text
	}
	words := strings.Fields(text)
	changed := false
	for i, w := range words {
		core := strings.TrimRight(w, ".,;:)\"'")
		if strings.Contains(core, "***") && len(core) >= 8 {
			words[i] = "<redacted>" + w[len(core):]
			changed = true
		}
	}
	if !changed {
		return text
	}
	return strings.Join(words, " ")
}
