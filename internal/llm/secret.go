package llm

import (
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
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
// key they were given in error messages), in the forms an echo takes: the
// key in any letter case, URL-encoded (query or path escaping, hex digits in
// either case), and base64 in the standard and URL alphabets with or
// without padding; as well as OpenAI's masked form ("sk-abc1****wxyz"),
// which still gives away part of the key.
func redact(text string, key Secret) string {
	if k := key.Reveal(); len(k) >= 4 {
		for _, f := range keyForms(k) {
			text = f.replace(text)
		}
	}
	return maskedKey(text)
}

// keyForm is one way a key may be written.
type keyForm struct {
	s    string
	fold bool // match in any ASCII letter case
}

func (f keyForm) replace(text string) string {
	if !f.fold {
		return strings.ReplaceAll(text, f.s, "<redacted>")
	}
	return replaceFold(text, f.s, "<redacted>")
}

// keyForms lists the forms of k, longest first so that a padded base64 form
// goes whole before its unpadded prefix is looked for.
func keyForms(k string) []keyForm {
	forms := []keyForm{{k, true}, {url.QueryEscape(k), true}, {url.PathEscape(k), true}}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		forms = append(forms, keyForm{enc.EncodeToString([]byte(k)), false}) // base64 is case-sensitive
	}
	slices.SortStableFunc(forms, func(a, b keyForm) int { return len(b.s) - len(a.s) })
	return slices.CompactFunc(forms, func(a, b keyForm) bool { return a == b })
}

// replaceFold replaces every match of old in s, ignoring ASCII letter case.
// Only ASCII letters are folded, so byte offsets in the folded copy are
// offsets in s.
func replaceFold(s, old, repl string) string {
	ls, lo := asciiLower(s), asciiLower(old)
	if !strings.Contains(ls, lo) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(ls, lo)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(repl)
		s, ls = s[i+len(old):], ls[i+len(old):]
	}
}

// asciiLower lowers ASCII letters byte by byte (strings.ToLower and
// strings.Map would change the length of non-ASCII or invalid text).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
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
