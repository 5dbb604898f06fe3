package usage

import (
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
)

// MaxTextBytes bounds the free-text fields of an event (model, kind) that
// callers supply, so that every store can hold them.
const MaxTextBytes = 256

// CheckText refuses a caller-supplied string that some store cannot hold
// as is: invalid UTF-8, a NUL or other control byte, or more than max bytes
// (MaxTextBytes when max is 0). The error names field, so the API can
// answer 400 before anything is charged or recorded.
func CheckText(field, s string, max int) error {
	if max <= 0 {
		max = MaxTextBytes
	}
	switch {
	case len(s) > max:
		return errs.Field(errs.Invalid, field, "%s is %d bytes long; at most %d are allowed", field, len(s), max)
	case !utf8.ValidString(s):
		return errs.Field(errs.Invalid, field, "%s is not valid UTF-8", field)
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errs.Field(errs.Invalid, field, "%s contains a control character (such as NUL)", field)
	}
	return nil
}
