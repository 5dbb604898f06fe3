package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/sluicehq/sluice/internal/errs"
)

// decode reads exactly one JSON object from r's body into dst: unknown
// fields, wrong types, trailing data and oversize bodies are errors naming
// what is wrong.
func decode(r *http.Request, maxBytes int64, dst any) error {
	// The body is read as JSON whatever its Content-Type says: curl -d sends
	// a form type, and keys travel in headers, so there is no CSRF to guard.
	body := http.MaxBytesReader(nil, r.Body, maxBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err, maxBytes)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return decodeError(err, maxBytes)
		}
		return errs.E(errs.Invalid, "request body holds more than one JSON value")
	}
	return nil
}

func decodeError(err error, maxBytes int64) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	var timeErr *time.ParseError
	var domain *errs.Error
	switch {
	case errors.As(err, &domain):
		return domain // a value's own decoder named the field
	case errors.As(err, &tooBig):
		return errs.E(errs.TooLarge, "request body is larger than %d bytes", maxBytes)
	case errors.Is(err, io.EOF):
		return errs.E(errs.Invalid, "request body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errs.E(errs.Invalid, "request body is truncated JSON")
	case errors.As(err, &syntax):
		return errs.E(errs.Invalid, "malformed JSON at byte %d: %v", syntax.Offset, syntax)
	case errors.As(err, &typ):
		// encoding/json names an embedded struct's fields through the
		// struct's Go name (RunRequest.input_value): callers know JSON
		// names only.
		var parts []string
		for _, p := range strings.Split(typ.Field, ".") {
			if p != "" && !unicode.IsUpper(rune(p[0])) {
				parts = append(parts, p)
			}
		}
		field := strings.Join(parts, ".")
		if field == "" {
			return errs.E(errs.Invalid, "request body must be a JSON object, not %s", typ.Value)
		}
		return errs.Field(errs.Invalid, field, "%s must be %s, not %s", field, jsonKind(typ.Type.Kind().String()), typ.Value)
	case errors.As(err, &timeErr):
		// Times are the only values with their own parser in request bodies.
		return errs.Field(errs.Invalid, "expires_at", "%q is not an RFC 3339 time such as 2027-01-31T00:00:00Z", timeErr.Value)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return errs.Field(errs.Invalid, name, "unknown field %q", name)
	}
	return errs.E(errs.Invalid, "invalid request body: %v", err)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "a number"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	}
	return fmt.Sprintf("a %s", goKind)
}
