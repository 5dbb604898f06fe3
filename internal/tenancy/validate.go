package tenancy

import (
	"net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
)

// Limits on names. Names are identifiers used in URLs, policy files and
// quota scope keys, so they are short slugs; display names are free text.
const (
	MaxNameLen        = 63
	MaxDisplayNameLen = 200
	MaxEmailLen       = 254
)

// ValidName checks an identifier: 1–63 characters of letters, digits, '.',
// '_' and '-', starting with a letter or digit.
func ValidName(field, name string) error {
	if name == "" {
		return errs.Field(errs.Invalid, field, "%s is required", field)
	}
	if len(name) > MaxNameLen {
		return errs.Field(errs.Invalid, field, "%s is %d characters long; the maximum is %d", field, len(name), MaxNameLen)
	}
	for i, r := range name {
		ok := r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || (i > 0 && (r == '-' || r == '_' || r == '.')))
		if !ok {
			return errs.Field(errs.Invalid, field, "%s %q may hold only letters, digits, '-', '_' and '.', and must start with a letter or digit", field, name)
		}
	}
	return nil
}

func validDisplayName(s string) error {
	if utf8.RuneCountInString(s) > MaxDisplayNameLen {
		return errs.Field(errs.Invalid, "display_name", "display_name is longer than %d characters", MaxDisplayNameLen)
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return errs.Field(errs.Invalid, "display_name", "display_name holds control characters or invalid UTF-8")
	}
	return nil
}

// ValidTimezone checks an IANA time zone name ("UTC", "Asia/Shanghai").
func ValidTimezone(field, tz string) error {
	if tz == "" || tz == "Local" {
		return errs.Field(errs.Invalid, field, "%s must be an IANA time zone such as UTC or Europe/Berlin", field)
	}
	if _, err := time.LoadLocation(tz); err != nil {
		return errs.Field(errs.Invalid, field, "%s %q is not a known IANA time zone", field, tz)
	}
	return nil
}

func validEmail(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > MaxEmailLen {
		return errs.Field(errs.Invalid, "email", "email is longer than %d characters", MaxEmailLen)
	}
	if a, err := mail.ParseAddress(s); err != nil || a.Address != s {
		return errs.Field(errs.Invalid, "email", "email %q is not an address such as ada@example.org", s)
	}
	return nil
}
