package run

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
)

// Evaluate computes an arithmetic expression safely: numbers, + - * / % **
// (and ^ as power), unary minus and parentheses. Nothing else is accepted,
// so a tool call can never execute code.
func Evaluate(expr string) (float64, error) {
	if len(expr) > 1000 {
		return 0, fmt.Errorf("expression longer than 1000 characters")
	}
	p := &calcParser{src: expr}
	v, err := p.expr(0)
	if err != nil {
		return 0, err
	}
	p.skip()
	if p.pos < len(p.src) {
		return 0, fmt.Errorf("unexpected %q at position %d", p.src[p.pos:], p.pos)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("the result is not a finite number")
	}
	return v, nil
}

// FormatNumber prints a result the way a person expects: integers without
// a fraction, others with up to 10 significant decimals.
func FormatNumber(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 12, 64)
}

type calcParser struct {
	src   string
	pos   int
	depth int
}

func (p *calcParser) skip() {
	for p.pos < len(p.src) && unicode.IsSpace(rune(p.src[p.pos])) {
		p.pos++
	}
}

func (p *calcParser) peek(s string) bool {
	p.skip()
	return strings.HasPrefix(p.src[p.pos:], s)
}

// expr parses a sum: term (('+'|'-') term)*.
func (p *calcParser) expr(depth int) (float64, error) {
	if depth > 100 {
		return 0, fmt.Errorf("expression nested too deeply")
	}
	v, err := p.term(depth)
	if err != nil {
		return 0, err
	}
	for {
		switch {
		case p.peek("+"):
			p.pos++
			r, err := p.term(depth)
			if err != nil {
				return 0, err
			}
			v += r
		case p.peek("-"):
			p.pos++
			r, err := p.term(depth)
			if err != nil {
				return 0, err
			}
			v -= r
		default:
			return v, nil
		}
	}
}

// term parses a product: power (('*'|'/'|'%') power)*.
func (p *calcParser) term(depth int) (float64, error) {
	v, err := p.power(depth)
	if err != nil {
		return 0, err
	}
	for {
		switch {
		case p.peek("**"):
			return v, nil // handled by power
		case p.peek("*"):
			p.pos++
			r, err := p.power(depth)
			if err != nil {
				return 0, err
			}
			v *= r
		case p.peek("/"):
			p.pos++
			r, err := p.power(depth)
			if err != nil {
				return 0, err
			}
			if r == 0 {
				return 0, fmt.Errorf("division by zero")
			}
			v /= r
		case p.peek("%"):
			p.pos++
			r, err := p.power(depth)
			if err != nil {
				return 0, err
			}
			if r == 0 {
				return 0, fmt.Errorf("modulo by zero")
			}
			v = math.Mod(v, r)
		default:
			return v, nil
		}
	}
}

// power parses unary ('**'|'^' power)?, right-associative.
func (p *calcParser) power(depth int) (float64, error) {
	base, err := p.unary(depth)
	if err != nil {
		return 0, err
	}
	if p.peek("**") || p.peek("^") {
		if p.peek("**") {
			p.pos += 2
		} else {
			p.pos++
		}
		exp, err := p.power(depth + 1)
		if err != nil {
			return 0, err
		}
		return math.Pow(base, exp), nil
	}
	return base, nil
}

func (p *calcParser) unary(depth int) (float64, error) {
	switch {
	case p.peek("-"):
		p.pos++
		v, err := p.unary(depth + 1)
		return -v, err
	case p.peek("+"):
		p.pos++
		return p.unary(depth + 1)
	case p.peek("("):
		p.pos++
		v, err := p.expr(depth + 1)
		if err != nil {
			return 0, err
		}
		if !p.peek(")") {
			return 0, fmt.Errorf("missing ) at position %d", p.pos)
		}
		p.pos++
		return v, nil
	}
	p.skip()
	start := p.pos
	for p.pos < len(p.src) && (p.src[p.pos] >= '0' && p.src[p.pos] <= '9' || p.src[p.pos] == '.' || p.src[p.pos] == '_') {
		p.pos++
	}
	// Scientific notation: 1e6, 2.5E-3.
	if p.pos < len(p.src) && p.pos > start && (p.src[p.pos] == 'e' || p.src[p.pos] == 'E') {
		q := p.pos + 1
		if q < len(p.src) && (p.src[q] == '+' || p.src[q] == '-') {
			q++
		}
		if q < len(p.src) && p.src[q] >= '0' && p.src[q] <= '9' {
			for q < len(p.src) && p.src[q] >= '0' && p.src[q] <= '9' {
				q++
			}
			p.pos = q
		}
	}
	if start == p.pos {
		if p.pos >= len(p.src) {
			return 0, fmt.Errorf("expression ends where a number was expected")
		}
		return 0, fmt.Errorf("unexpected %q at position %d: only numbers, + - * / %% ** and parentheses are allowed", p.src[p.pos:p.pos+1], p.pos)
	}
	v, err := strconv.ParseFloat(strings.ReplaceAll(p.src[start:p.pos], "_", ""), 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", p.src[start:p.pos])
	}
	return v, nil
}
