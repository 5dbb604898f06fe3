package llm

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
)

func TestRedactForms(t *testing.T) {
	// A key with characters that URL escaping and base64 padding change.
	const key = "sk-proj-Ab12/Cd+34=ef_GH"
	b64 := func(enc *base64.Encoding) string { return enc.EncodeToString([]byte(key)) }
	tests := []struct {
		name string
		echo string
	}{
		{"as given", key},
		{"upper-cased", strings.ToUpper(key)},
		{"lower-cased", strings.ToLower(key)},
		{"query-escaped", url.QueryEscape(key)},
		{"query-escaped, lower-case hex", strings.ToLower(url.QueryEscape(key))},
		{"query-escaped, upper-cased", strings.ToUpper(url.QueryEscape(key))},
		{"path-escaped", url.PathEscape(key)},
		{"base64", b64(base64.StdEncoding)},
		{"base64 unpadded", b64(base64.RawStdEncoding)},
		{"base64 URL alphabet", b64(base64.URLEncoding)},
		{"base64 URL alphabet unpadded", b64(base64.RawURLEncoding)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := "upstream said: key " + tt.echo + " is invalid (" + tt.echo + ")"
			got := redact(text, NewSecret(key))
			if want := "upstream said: key <redacted> is invalid (<redacted>)"; got != want {
				t.Errorf("redact(%q) = %q, want %q", text, got, want)
			}
		})
	}
}

func TestRedactLeavesOtherTextAlone(t *testing.T) {
	tests := []struct {
		name, key, text string
	}{
		{"no key", "", "nothing to hide"},
		{"short key is not looked for", "abc", "abc ABC"},
		{"unrelated text", "sk-live-123456", "rate limited, try later"},
		{"non-ASCII text keeps its bytes", "sk-live-123456", "ÄÖÜ \xff straße"},
	}
	for _, tt := range tests {
		if got := redact(tt.text, NewSecret(tt.key)); got != tt.text {
			t.Errorf("%s: redact(%q) = %q, want it unchanged", tt.name, tt.text, got)
		}
	}
	// Offsets survive non-ASCII text before the key.
	if got, want := redact("ÄÖ\xff SK-LIVE-123456 ß", NewSecret("sk-live-123456")), "ÄÖ\xff <redacted> ß"; got != want {
		t.Errorf("redact after non-ASCII = %q, want %q", got, want)
	}
}
