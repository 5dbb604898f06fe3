package errs_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
)

func TestCodeOf(t *testing.T) {
	notFound := errs.E(errs.NotFound, "tenant %s not found", "ten_1")
	tests := []struct {
		name string
		err  error
		want errs.Code
	}{
		{"nil", nil, ""},
		{"plain error", errors.New("boom"), errs.Internal},
		{"io.EOF", io.EOF, errs.Internal},
		{"domain error", notFound, errs.NotFound},
		{"field error", errs.Field(errs.Invalid, "name", "bad"), errs.Invalid},
		{"wrap", errs.Wrap(io.EOF, "read"), errs.Internal},
		{"wrapped once", fmt.Errorf("load: %w", notFound), errs.NotFound},
		{"wrapped twice", fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", errs.E(errs.Conflict, "taken"))), errs.Conflict},
		{"joined", errors.Join(errors.New("first"), errs.E(errs.Forbidden, "no")), errs.Forbidden},
		{"first domain error wins", &errs.Error{Code: errs.Unavailable, Message: "down", Err: errs.E(errs.NotFound, "gone")}, errs.Unavailable},
		{"formatted with %v loses the code", fmt.Errorf("load: %v", notFound), errs.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errs.CodeOf(tt.err); got != tt.want {
				t.Errorf("CodeOf(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestIs(t *testing.T) {
	wrapped := fmt.Errorf("get: %w", errs.E(errs.NotFound, "missing"))
	tests := []struct {
		name string
		err  error
		code errs.Code
		want bool
	}{
		{"same code", wrapped, errs.NotFound, true},
		{"other code", wrapped, errs.Conflict, false},
		{"plain error is internal", errors.New("boom"), errs.Internal, true},
		{"plain error is not not_found", errors.New("boom"), errs.NotFound, false},
		{"nil is not internal", nil, errs.Internal, false},
		{"nil has the empty code", nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errs.Is(tt.err, tt.code); got != tt.want {
				t.Errorf("Is(%v, %q) = %v, want %v", tt.err, tt.code, got, tt.want)
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		name string
		err  *errs.Error
		want string
	}{
		{"message only", errs.E(errs.NotFound, "tenant %q not found", "acme"), `not_found: tenant "acme" not found`},
		{"with field", errs.Field(errs.Invalid, "name", "name must not be empty"), "invalid: name must not be empty (field name)"},
		{"with cause", errs.Wrap(io.ErrUnexpectedEOF, "read body"), "internal: read body: unexpected EOF"},
		{
			"field and cause",
			&errs.Error{Code: errs.Conflict, Message: "taken", Field: "name", Err: errors.New("unique")},
			"conflict: taken (field name): unique",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFieldNamesField(t *testing.T) {
	err := fmt.Errorf("validate: %w", errs.Field(errs.Invalid, "log_level", "log_level %q is wrong", "loud"))
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("errors.As(%v, *errs.Error) = false, want true", err)
	}
	if e.Field != "log_level" {
		t.Errorf("Field = %q, want %q", e.Field, "log_level")
	}
	if e.Message != `log_level "loud" is wrong` {
		t.Errorf("Message = %q, want %q", e.Message, `log_level "loud" is wrong`)
	}
	if !strings.Contains(err.Error(), "(field log_level)") {
		t.Errorf("Error() = %q, want it to contain %q", err.Error(), "(field log_level)")
	}
}

func TestWrapUnwraps(t *testing.T) {
	err := errs.Wrap(io.EOF, "read %s", "config")
	if !errors.Is(err, io.EOF) {
		t.Errorf("errors.Is(Wrap(io.EOF), io.EOF) = false, want true")
	}
	if got := errs.CodeOf(err); got != errs.Internal {
		t.Errorf("CodeOf(Wrap(...)) = %q, want %q", got, errs.Internal)
	}
	if err.Message != "read config" {
		t.Errorf("Message = %q, want %q", err.Message, "read config")
	}
	if got := errs.E(errs.Invalid, "x").Unwrap(); got != nil {
		t.Errorf("E(...).Unwrap() = %v, want nil", got)
	}
}
