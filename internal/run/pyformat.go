package run

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// LangFlow's Parser fills its template with Python's str.format, so a
// template written for LangFlow must come out the same here. This file is
// that subset of Python: replacement fields {name}, {name[key]}, {name!r},
// {name:spec} with the common format specs, {{ and }} for braces, and
// values written as Python's str() writes them.

// formatError is a template the formatter cannot apply. The caller adds
// the node.
type formatError struct{ msg string }

func (e *formatError) Error() string { return e.msg }

func formatErrorf(format string, args ...any) error {
	return &formatError{fmt.Sprintf(format, args...)}
}

// pyFormat renders pattern as Python's pattern.format_map(m) would, where
// lookup answers m[name]: ok false is a missing key (Python's KeyError).
func pyFormat(pattern string, lookup func(name string) (any, bool)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(pattern); {
		c := pattern[i]
		switch {
		case c == '{' && strings.HasPrefix(pattern[i:], "{{"):
			b.WriteByte('{')
			i += 2
		case c == '}' && strings.HasPrefix(pattern[i:], "}}"):
			b.WriteByte('}')
			i += 2
		case c == '}':
			return "", formatErrorf("single '}' encountered in format string (write '}}' for a literal brace)")
		case c == '{':
			end, err := fieldEnd(pattern, i)
			if err != nil {
				return "", err
			}
			s, err := replaceField(pattern[i+1:end], lookup)
			if err != nil {
				return "", err
			}
			b.WriteString(s)
			i = end + 1
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), nil
}

// fieldEnd returns the index of the '}' closing the field opened at start.
func fieldEnd(p string, start int) (int, error) {
	brackets := false
	for j := start + 1; j < len(p); j++ {
		switch p[j] {
		case '[':
			brackets = true
		case ']':
			brackets = false
		case '{':
			if !brackets {
				return 0, formatErrorf("nested replacement fields ({ inside a field) are not supported (write '{{' for a literal brace)")
			}
		case '}':
			if !brackets {
				return j, nil
			}
		}
	}
	return 0, formatErrorf("expected '}' before end of string (write '{{' for a literal brace)")
}

// replaceField renders one field: name, then [key] or [index] lookups, then
// !conversion, then :spec.
func replaceField(f string, lookup func(string) (any, bool)) (string, error) {
	name, rest := f, ""
	brackets := false
	for j := 0; j < len(f); j++ {
		if f[j] == '[' {
			brackets = true
		} else if f[j] == ']' {
			brackets = false
		} else if !brackets && (f[j] == '!' || f[j] == ':') {
			name, rest = f[:j], f[j:]
			break
		}
	}
	conv, spec := "", ""
	if strings.HasPrefix(rest, "!") {
		conv, rest = rest[1:], ""
		if i := strings.IndexByte(conv, ':'); i >= 0 {
			conv, rest = conv[:i], conv[i:]
		}
		if conv != "s" && conv != "r" && conv != "a" {
			return "", formatErrorf("unknown conversion specifier %q in {%s}", conv, f)
		}
	}
	spec = strings.TrimPrefix(rest, ":")

	arg := name
	if i := strings.IndexAny(name, ".["); i >= 0 {
		arg = name[:i]
	}
	if arg == "" || strings.Trim(arg, "0123456789") == "" {
		return "", formatErrorf("{%s}: positional fields are not supported; name a field, e.g. {text}", f)
	}
	v, ok := lookup(arg)
	if !ok {
		return "", &missingKey{name: arg}
	}
	for path := name[len(arg):]; path != ""; {
		if path[0] == '.' {
			return "", formatErrorf("{%s}: attribute access is not supported; use [key]", f)
		}
		end := strings.IndexByte(path, ']')
		if path[0] != '[' || end < 0 {
			return "", formatErrorf("{%s}: expected ']'", f)
		}
		key := path[1:end]
		path = path[end+1:]
		if path != "" && path[0] != '[' && path[0] != '.' {
			return "", formatErrorf("{%s}: only '.' or '[' may follow ']'", f)
		}
		var err error
		if v, err = index(v, key); err != nil {
			return "", formatErrorf("{%s}: %v", f, err)
		}
	}
	switch conv {
	case "r":
		v = pyRepr(v)
	case "a":
		v = asciiRepr(pyRepr(v))
	case "s":
		v = pyStr(v)
	}
	return pyFormatValue(v, spec)
}

// missingKey is Python's KeyError for a field the values lack.
type missingKey struct{ name string }

func (e *missingKey) Error() string { return fmt.Sprintf("KeyError: %s", pyRepr(e.name)) }

// index is Python's v[key] in a format field: a digit key indexes a list
// (or a dict by the number), any other key a dict by the string.
func index(v any, key string) (any, error) {
	n, err := strconv.Atoi(key)
	isInt := err == nil && key != "" && strings.Trim(key, "0123456789") == ""
	switch v := v.(type) {
	case map[string]any:
		if e, ok := v[key]; ok {
			return e, nil
		}
		return nil, fmt.Errorf("KeyError: %s", pyRepr(key))
	case []any:
		if !isInt {
			return nil, fmt.Errorf("list indices must be integers, not %s", pyRepr(key))
		}
		if n >= len(v) {
			return nil, fmt.Errorf("list index %d out of range", n)
		}
		return v[n], nil
	case string:
		if !isInt {
			return nil, fmt.Errorf("string indices must be integers")
		}
		r := []rune(v)
		if n >= len(r) {
			return nil, fmt.Errorf("string index %d out of range", n)
		}
		return string(r[n]), nil
	}
	return nil, fmt.Errorf("%s object is not subscriptable", pyTypeName(v))
}

func pyTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "'NoneType'"
	case bool:
		return "'bool'"
	case float64:
		return "'float'"
	case string:
		return "'str'"
	case []any:
		return "'list'"
	case map[string]any:
		return "'dict'"
	}
	return fmt.Sprintf("'%T'", v)
}

// spec is a parsed format spec: [[fill]align][sign][0][width][,_][.precision][type].
type spec struct {
	fill      rune
	align     byte // '<', '>', '^', '=' or 0
	sign      byte // '+', '-', ' ' or 0
	width     int
	grouping  byte // ',' or '_' or 0
	precision int  // -1 when absent
	typ       byte
}

// maxSpecWidth bounds a format spec's width and precision.
const maxSpecWidth = 1000

func parseSpec(s string) (spec, error) {
	sp := spec{fill: ' ', precision: -1}
	orig := s
	if r, n := utf8.DecodeRuneInString(s); n > 0 && n < len(s) && strings.IndexByte("<>^=", s[n]) >= 0 {
		sp.fill, sp.align, s = r, s[n], s[n+1:]
	} else if s != "" && strings.IndexByte("<>^=", s[0]) >= 0 {
		sp.align, s = s[0], s[1:]
	}
	if s != "" && strings.IndexByte("+- ", s[0]) >= 0 {
		sp.sign, s = s[0], s[1:]
	}
	if strings.HasPrefix(s, "0") {
		if sp.align == 0 {
			sp.fill, sp.align = '0', '='
		}
		s = s[1:]
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i > 0 {
		var err error
		if sp.width, err = strconv.Atoi(s[:i]); err != nil {
			sp.width = maxSpecWidth + 1
		}
		s = s[i:]
	}
	if s != "" && (s[0] == ',' || s[0] == '_') {
		sp.grouping, s = s[0], s[1:]
	}
	if strings.HasPrefix(s, ".") {
		i = 1
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 1 {
			return sp, formatErrorf("format specifier %q is missing its precision", orig)
		}
		var err error
		if sp.precision, err = strconv.Atoi(s[1:i]); err != nil {
			sp.precision = maxSpecWidth + 1
		}
		s = s[i:]
	}
	if len(s) > 1 {
		return sp, formatErrorf("invalid format specifier %q", orig)
	}
	// Python would pad to any width; a template must not make the server
	// build gigabytes of padding.
	if sp.width > maxSpecWidth || sp.precision > maxSpecWidth {
		return sp, formatErrorf("format specifier %q: width and precision are limited to %d", orig, maxSpecWidth)
	}
	if s != "" {
		sp.typ = s[0]
	}
	return sp, nil
}

// pyFormatValue is Python's format(v, spec).
func pyFormatValue(v any, s string) (string, error) {
	if s == "" {
		return pyStr(v), nil
	}
	sp, err := parseSpec(s)
	if err != nil {
		return "", err
	}
	var body string
	numeric := false
	switch v := v.(type) {
	case string:
		if sp.typ != 0 && sp.typ != 's' || sp.sign != 0 || sp.grouping != 0 || sp.align == '=' {
			return "", formatErrorf("format specifier %q does not apply to text", s)
		}
		body = v
		if sp.precision >= 0 && utf8.RuneCountInString(v) > sp.precision {
			body = string([]rune(v)[:sp.precision])
		}
	case float64, bool:
		numeric = true
		f, _ := v.(float64)
		if b, ok := v.(bool); ok && b {
			f = 1 // with a spec, a bool formats as the int it is
		}
		if body, err = formatNumber(f, sp, s); err != nil {
			return "", err
		}
	default:
		return "", formatErrorf("unsupported format string %q passed to %s", s, pyTypeName(v))
	}
	n := sp.width - utf8.RuneCountInString(body)
	if n <= 0 {
		return body, nil
	}
	fill := strings.Repeat(string(sp.fill), n)
	align := sp.align
	if align == 0 {
		align = '<'
		if numeric {
			align = '>'
		}
	}
	switch align {
	case '>':
		return fill + body, nil
	case '^':
		left := strings.Repeat(string(sp.fill), n/2)
		return left + body + strings.Repeat(string(sp.fill), n-n/2), nil
	case '=':
		if body != "" && strings.IndexByte("+- ", body[0]) >= 0 {
			return body[:1] + fill + body[1:], nil
		}
		return fill + body, nil
	}
	return body + fill, nil
}

// formatNumber formats a number for a spec with a number type.
func formatNumber(f float64, sp spec, s string) (string, error) {
	whole := f == math.Trunc(f) && !math.IsInf(f, 0)
	var body string
	switch sp.typ {
	case 'd', 'n':
		if !whole {
			return "", formatErrorf("format code 'd' needs a whole number, not %s", pyStr(f))
		}
		body = strconv.FormatFloat(math.Abs(f), 'f', 0, 64)
	case 'f', 'F', 'e', 'E', 'g', 'G', '%':
		body = pyFormatFloat(math.Abs(f), sp.typ, sp.precision, false)
	case 0:
		if sp.precision >= 0 {
			body = pyFormatFloat(math.Abs(f), 'g', sp.precision, true)
		} else {
			body = pyStr(math.Abs(f))
		}
	default:
		return "", formatErrorf("unknown format code '%c' in %q", sp.typ, s)
	}
	if sp.grouping != 0 {
		body = group(body, sp.grouping)
	}
	switch {
	case math.Signbit(f) && !math.IsNaN(f):
		body = "-" + body
	case sp.sign == '+':
		body = "+" + body
	case sp.sign == ' ':
		body = " " + body
	}
	return body, nil
}

// group inserts a separator every three digits of the integer part.
func group(s string, sep byte) string {
	end := strings.IndexAny(s, ".eE%")
	if end < 0 {
		end = len(s)
	}
	digits := s[:end]
	if len(digits) <= 3 || strings.Trim(digits, "0123456789") != "" {
		return s
	}
	var b strings.Builder
	for i, d := range digits {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b.WriteByte(sep)
		}
		b.WriteRune(d)
	}
	return b.String() + s[end:]
}

// pyFormatFloat formats a float with a Python float presentation type.
// precision -1 is Python's default (6). repr marks the spec without a type,
// which keeps at least one digit after the point.
func pyFormatFloat(f float64, typ byte, precision int, repr bool) string {
	switch {
	case math.IsNaN(f):
		if typ == 'F' || typ == 'E' || typ == 'G' {
			return "NAN"
		}
		return "nan"
	case math.IsInf(f, 0):
		s := "inf"
		if typ == 'F' || typ == 'E' || typ == 'G' {
			s = "INF"
		}
		if f < 0 {
			return "-" + s
		}
		return s
	}
	if precision < 0 {
		precision = 6
	}
	switch typ {
	case 'f', 'F':
		return strconv.FormatFloat(f, 'f', precision, 64)
	case 'e', 'E':
		s := strconv.FormatFloat(f, 'e', precision, 64)
		if typ == 'E' {
			s = strings.ToUpper(s)
		}
		return s
	case '%':
		return strconv.FormatFloat(f*100, 'f', precision, 64) + "%"
	}
	// 'g': precision significant digits, trailing zeros dropped, scientific
	// when the exponent is below -4 or at least the precision.
	p := max(precision, 1)
	exp := 0
	if f != 0 {
		e, _ := strconv.Atoi(strings.SplitN(strconv.FormatFloat(f, 'e', p-1, 64), "e", 2)[1])
		exp = e
	}
	var s string
	if exp < -4 || exp >= p {
		s = strconv.FormatFloat(f, 'e', p-1, 64)
		mant, e, _ := strings.Cut(s, "e")
		if strings.Contains(mant, ".") {
			mant = strings.TrimRight(strings.TrimRight(mant, "0"), ".")
		}
		s = mant + "e" + e
	} else {
		s = strconv.FormatFloat(f, 'f', max(p-1-exp, 0), 64)
		if strings.Contains(s, ".") {
			s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
		}
		if repr && !strings.Contains(s, ".") {
			s += ".0"
		}
	}
	if typ == 'G' {
		s = strings.ToUpper(s)
	}
	return s
}

// pyStr is Python's str() of a JSON value. A whole number prints as an
// integer: JSON does not say whether 2 was int or float, and the exports'
// numbers are ints.
func pyStr(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case string:
		return v
	case bool:
		if v {
			return "True"
		}
		return "False"
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return pyFormatFloat(v, 'g', -1, false)
		}
		if v == math.Trunc(v) && math.Abs(v) < 1e16 {
			return strconv.FormatFloat(v, 'f', 0, 64)
		}
		if a := math.Abs(v); a >= 1e-4 && a < 1e16 {
			return strconv.FormatFloat(v, 'f', -1, 64)
		}
		return strconv.FormatFloat(v, 'e', -1, 64)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = pyRepr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		parts := make([]string, 0, len(v))
		for _, k := range sortedKeys(v) {
			parts = append(parts, pyRepr(k)+": "+pyRepr(v[k]))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprint(v)
}

// pyRepr is Python's repr() of a JSON value.
func pyRepr(v any) string {
	s, ok := v.(string)
	if !ok {
		return pyStr(v)
	}
	q := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == rune(q):
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
}

// asciiRepr escapes what is not ASCII, as Python's ascii() does.
func asciiRepr(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r < 0x80:
			b.WriteRune(r)
		case r <= 0xff:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	return b.String()
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
