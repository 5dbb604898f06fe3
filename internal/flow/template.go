package flow

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
)

// Prompt templates follow Python's f-string rules as LangFlow's Prompt
// component applies them (str.format with named fields only):
//
//   - {name} is replaced by the variable name's value;
//   - {{ and }} are a literal { and };
//   - a name is an identifier: a letter (any script) or _, then letters,
//     digits, _ or combining marks, so {术语} and {user_input} are variables;
//   - anything else inside braces ({}, {0}, {a.b}, {a:>10}, { a }) is an
//     error, as are a lone } and a { that is never closed.
//
// Text outside braces is copied byte for byte, so templates need not be
// valid UTF-8.

// TemplateError is a template that cannot be parsed or rendered.
type TemplateError struct {
	// Offset is the byte offset of the offending brace in the template.
	Offset int
	// Var is the variable at fault, when there is one.
	Var string
	// Reason says what is wrong.
	Reason string
}

func (e *TemplateError) Error() string {
	return fmt.Sprintf("template: %s at byte %d", e.Reason, e.Offset)
}

// Unwrap exposes the error as errs.Unprocessable, so callers that map
// domain errors need not know this type.
func (e *TemplateError) Unwrap() error {
	return &errs.Error{Code: errs.Unprocessable, Message: e.Error()}
}

// Variables returns the template's variables in order of first appearance,
// each once.
func Variables(tmpl string) ([]string, error) {
	var vars []string
	seen := map[string]bool{}
	err := scan(tmpl, func(string) {}, func(name string, _ int) error {
		if !seen[name] {
			seen[name] = true
			vars = append(vars, name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return vars, nil
}

// Render substitutes vars into the template. A variable missing from vars
// is an error (an empty string is a value).
func Render(tmpl string, vars map[string]string) (string, error) {
	var b strings.Builder
	b.Grow(len(tmpl))
	err := scan(tmpl, func(s string) { b.WriteString(s) }, func(name string, off int) error {
		v, ok := vars[name]
		if !ok {
			return &TemplateError{Offset: off, Var: name, Reason: fmt.Sprintf("variable {%s} has no value", name)}
		}
		b.WriteString(v)
		return nil
	})
	if err != nil {
		return "", err
	}
	return b.String(), nil
}

// Escape returns s with every brace doubled, so that Render(Escape(s), nil)
// is s and Escape(s) has no variables.
func Escape(s string) string {
	if !strings.ContainsAny(s, "{}") {
		return s
	}
	s = strings.ReplaceAll(s, "{", "{{")
	return strings.ReplaceAll(s, "}", "}}")
}

// scan walks tmpl, passing literal text to text and each variable (with the
// offset of its opening brace) to field.
func scan(tmpl string, text func(string), field func(name string, off int) error) error {
	start := 0 // start of pending literal text
	for i := 0; i < len(tmpl); {
		switch tmpl[i] {
		case '{':
			if i+1 < len(tmpl) && tmpl[i+1] == '{' {
				text(tmpl[start : i+1])
				i += 2
				start = i
				continue
			}
			text(tmpl[start:i])
			end := strings.IndexAny(tmpl[i+1:], "{}")
			if end < 0 {
				return &TemplateError{Offset: i, Reason: "unclosed '{' (write '{{' for a literal brace)"}
			}
			end += i + 1
			if tmpl[end] == '{' {
				return &TemplateError{Offset: i, Reason: "unexpected '{' inside a variable (write '{{' for a literal brace)"}
			}
			name := tmpl[i+1 : end]
			if name == "" {
				return &TemplateError{Offset: i, Reason: "empty variable name '{}' (write '{{}}' for literal braces)"}
			}
			if !isIdentifier(name) {
				return &TemplateError{Offset: i, Var: name, Reason: fmt.Sprintf("invalid variable name %q: names are identifiers (letters, digits, _)", name)}
			}
			if err := field(name, i); err != nil {
				return err
			}
			i = end + 1
			start = i
		case '}':
			if i+1 < len(tmpl) && tmpl[i+1] == '}' {
				text(tmpl[start : i+1])
				i += 2
				start = i
				continue
			}
			return &TemplateError{Offset: i, Reason: "single '}' (write '}}' for a literal brace)"}
		default:
			i++
		}
	}
	text(tmpl[start:])
	return nil
}

// isIdentifier reports whether s is a Python-style identifier.
func isIdentifier(s string) bool {
	for i, r := range s {
		if r == utf8.RuneError {
			return false // invalid UTF-8 (a literal U+FFFD is not a letter either)
		}
		if r == '_' || unicode.IsLetter(r) {
			continue
		}
		if i > 0 && (unicode.IsDigit(r) || unicode.In(r, unicode.Mn, unicode.Mc, unicode.Pc)) {
			continue
		}
		return false
	}
	return s != ""
}
