package llm

import (
	"math"
)

// A fast path for counting ASCII text.
//
// tiktoken-go splits text with a backtracking regular expression engine
// (regexp2), which costs about 1.5 µs and a dozen allocations per token:
// 25 µs for a two-message request, too much for a gateway that aims at
// well under 100 µs of CPU per request. Most prompts are ASCII, and for
// ASCII the two patterns reduce to a few character classes, so this file
// splits ASCII text by hand exactly as the patterns do and merges byte
// pairs over the same rank tables tiktoken-go loaded. Text with any other
// byte goes to tiktoken-go. The two paths are checked against each other,
// token for token, by tests and a fuzz target (bpe_internal_test.go).

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }
func isUpper(c byte) bool  { return c >= 'A' && c <= 'Z' }
func isLower(c byte) bool  { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
func isNL(c byte) bool     { return c == '\r' || c == '\n' }

// isSpace is \s (unicode.IsSpace) restricted to ASCII.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// isPrefix is [^\r\n\p{L}\p{N}].
func isPrefix(c byte) bool { return !isNL(c) && !isLetter(c) && !isDigit(c) }

// isOther is [^\s\p{L}\p{N}].
func isOther(c byte) bool { return !isSpace(c) && !isLetter(c) && !isDigit(c) }

// contraction is the length of (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i:], or 0.
func contraction(s string, i int) int {
	if i+1 >= len(s) || s[i] != '\'' {
		return 0
	}
	switch s[i+1] | 0x20 {
	case 's', 't', 'm', 'd':
		return 2
	case 'r', 'v':
		if i+2 < len(s) && s[i+2]|0x20 == 'e' {
			return 3
		}
	case 'l':
		if i+2 < len(s) && s[i+2]|0x20 == 'l' {
			return 3
		}
	}
	return 0
}

// nextCL100k returns the end of the piece starting at s[i], for
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//	 ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func nextCL100k(s string, i int) int {
	n := len(s)
	if k := contraction(s, i); k > 0 {
		return i + k
	}
	j := i
	if isPrefix(s[j]) {
		j++
	}
	if j < n && isLetter(s[j]) {
		for j < n && isLetter(s[j]) {
			j++
		}
		return j
	}
	if isDigit(s[i]) {
		j = i + 1
		for j < n && j-i < 3 && isDigit(s[j]) {
			j++
		}
		return j
	}
	if end := punctuation(s, i, false); end > 0 {
		return end
	}
	return whitespace(s, i)
}

// nextO200k returns the end of the piece starting at s[i], for
//
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|…)?|
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|…)?|
//	\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// In ASCII the upper class is [A-Z] and the lower class [a-z], which do not
// overlap, so neither quantifier ever gives back a character.
func nextO200k(s string, i int) int {
	n := len(s)
	j := i
	if isPrefix(s[j]) {
		j++
	}
	u := j
	for u < n && isUpper(s[u]) {
		u++
	}
	l := u
	for l < n && isLower(s[l]) {
		l++
	}
	if l > j { // first alternative if l > u, else the second (u > j)
		return l + contraction(s, l)
	}
	if isDigit(s[i]) {
		j = i + 1
		for j < n && j-i < 3 && isDigit(s[j]) {
			j++
		}
		return j
	}
	if end := punctuation(s, i, true); end > 0 {
		return end
	}
	return whitespace(s, i)
}

// punctuation matches " ?[^\s\p{L}\p{N}]+[\r\n]*" ("[\r\n/]*" when slash)
// at s[i:], returning its end or 0.
func punctuation(s string, i int, slash bool) int {
	n := len(s)
	j := i
	if s[j] == ' ' {
		j++
	}
	if j >= n || !isOther(s[j]) {
		return 0
	}
	for j < n && isOther(s[j]) {
		j++
	}
	for j < n && (isNL(s[j]) || (slash && s[j] == '/')) {
		j++
	}
	return j
}

// whitespace matches \s*[\r\n]+|\s+(?!\S)|\s+ at s[i:], where s[i] is
// whitespace (every other character was taken by an earlier alternative).
func whitespace(s string, i int) int {
	n := len(s)
	j := i
	for j < n && isSpace(s[j]) {
		j++
	}
	// \s*[\r\n]+: \s* gives back characters until a newline follows.
	for k := j - 1; k >= i; k-- {
		if isNL(s[k]) {
			return k + 1
		}
	}
	// \s+(?!\S): the run, less its last character if text follows it.
	if j == n || j-1 == i {
		return j // at the end; or \s+ alone
	}
	return j - 1
}

// countASCII counts the tokens of ASCII text s.
func countASCII(s string, next func(string, int) int, ranks map[string]int) int {
	n := 0
	for i := 0; i < len(s); {
		end := next(s, i)
		if end <= i { // cannot happen; never loop forever over it
			end = i + 1
		}
		n += bpeCount(s[i:end], ranks)
		i = end
	}
	return n
}

type bpePart struct{ start, rank int }

// bpeCount is the number of tokens byte-pair merging gives piece: the
// algorithm of tiktoken's byte_pair_merge, merging the lowest-ranked
// adjacent pair (the leftmost on ties) until no pair has a rank.
func bpeCount(piece string, ranks map[string]int) int {
	if len(piece) <= 1 {
		return len(piece)
	}
	if _, ok := ranks[piece]; ok {
		return 1
	}
	var buf [48]bpePart
	parts := buf[:0]
	if len(piece)+1 > len(buf) {
		parts = make([]bpePart, 0, len(piece)+1)
	}
	for i := 0; i <= len(piece); i++ {
		parts = append(parts, bpePart{i, math.MaxInt})
	}
	rank := func(i, skip int) int {
		if i+skip+2 < len(parts) {
			if r, ok := ranks[piece[parts[i].start:parts[i+skip+2].start]]; ok {
				return r
			}
		}
		return math.MaxInt
	}
	for i := 0; i < len(parts)-2; i++ {
		parts[i].rank = rank(i, 0)
	}
	for len(parts) > 1 {
		minRank, minIdx := math.MaxInt, -1
		for i := 0; i < len(parts)-1; i++ {
			if parts[i].rank < minRank {
				minRank, minIdx = parts[i].rank, i
			}
		}
		if minIdx < 0 {
			break
		}
		i := minIdx
		parts[i].rank = rank(i, 1)
		if i > 0 {
			parts[i-1].rank = rank(i-1, 1)
		}
		parts = append(parts[:i+1], parts[i+2:]...)
	}
	return len(parts) - 1
}
