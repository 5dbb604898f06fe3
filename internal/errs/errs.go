// Package errs owns Sluice's domain error: a machine-readable code, a message
// fit to show the caller, and optionally the request field at fault. Every
// layer returns these; the HTTP adapter maps them to status codes and the one
// error body in exactly one place.
package errs

import (
	"errors"
	"fmt"
	"time"
)

// Code classifies an error for callers and for the HTTP mapping.
type Code string

// The codes Sluice uses. They appear verbatim in API error bodies.
const (
	Invalid         Code = "invalid"
	NotFound        Code = "not_found"
	Conflict        Code = "conflict"
	Unauthorized    Code = "unauthorized"
	Forbidden       Code = "forbidden"
	QuotaExceeded   Code = "quota_exceeded"
	RateLimited     Code = "rate_limited"
	ModelNotAllowed Code = "model_not_allowed"
	TooLarge        Code = "too_large"
	Unprocessable   Code = "unprocessable"
	Unavailable     Code = "unavailable"
	Internal        Code = "internal"
)

// Error is a domain error. Message is safe to show to the caller; Field names
// the request field at fault when there is one.
type Error struct {
	Code    Code
	Message string
	Field   string
	Err     error // underlying cause, for logs only
	// RetryAfter, when positive, tells the caller when trying again may
	// succeed (HTTP Retry-After), e.g. for a store that is behind.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	msg := string(e.Code) + ": " + e.Message
	if e.Field != "" {
		msg += " (field " + e.Field + ")"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// E builds an error with a formatted message.
func E(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Field builds an error about one request field.
func Field(code Code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an internal error carrying err for the logs.
func Wrap(err error, format string, args ...any) *Error {
	return &Error{Code: Internal, Message: fmt.Sprintf(format, args...), Err: err}
}

// CodeOf returns the code of the first *Error in err's chain, Internal for any
// other non-nil error, and "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// Is reports whether err carries code.
func Is(err error, code Code) bool { return CodeOf(err) == code }
