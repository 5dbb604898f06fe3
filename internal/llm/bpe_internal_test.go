package llm

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// The ASCII fast path must count exactly what tiktoken-go counts.

var asciiCorpus = []string{
	"hello world", "Hello, World!", "HELLO WORLD", "hElLo wOrLd",
	"don't", "DON'T", "I'm sure they'll've", "we'Re 'S 's 'st 'r 'll 'l 'VE 'd",
	"it's John's", "rock 'n' roll", "''''", "' s", "'",
	"12345678901", "3.14159", "1,000,000", "v1.2.3-rc4", "x=1+2*3/4",
	"  leading", "trailing  ", "a  b   c", "a\tb\t\tc", "line1\nline2\r\nline3\n\n\nend",
	" \n \n x", "\n", "\r\n", " ", "   ", "\t\n\t\nx", "a \n", "a\v\fb",
	"path/to/file.go", "http://example.com/a/b?c=d&e=f#g", "<|endoftext|>", "</s>",
	"func main() {\n\tfmt.Println(\"hi\")\n}\n", "if (a && b) || !c { return -1; }",
	"...hello", "!!!", "?!.", " .", "  .", ".\n/", "a./\n/b", "--flag=value", "#include <stdio.h>",
	"CamelCaseWord and snake_case_word and SCREAMING_CASE", "McDonald's iPhone XMLHttpRequest",
	"\x00\x01\x1f\x7f control", "tab\there", "ALLCAPS'S", "Aa'sB",
	"The quick brown fox jumps over the lazy dog. " + strings.Repeat("na", 40) + " Batman!",
	"antidisestablishmentarianism", "supercalifragilisticexpialidocious",
	"    indented code\n        more", "a1b2c3", "1a2b3c", "$100.00 (USD)", "50%", "@user #tag",
}

func checkSame(t *testing.T, s string) {
	t.Helper()
	for _, e := range []*encoder{encoders[encCL100k], encoders[encO200k]} {
		tk := e.get()
		want := len(tk.EncodeOrdinary(s))
		if got := countASCII(s, e.next, e.ranks); got != want {
			t.Errorf("%s(%q) = %d, tiktoken-go says %d", e.name, s, got, want)
		}
	}
}

func TestASCIIFastPathMatchesTiktoken(t *testing.T) {
	for _, s := range asciiCorpus {
		checkSame(t, s)
	}
}

func TestASCIIFastPathRandom(t *testing.T) {
	fragments := []string{"'s", "'T", "'re", "'VE", "'m", "'ll", "'D", "'", " ", "  ", "\t", "\n", "\r\n", "\r", "\v", "\f",
		"the", "The", "THE", "tHe", "I", "a", "Z", "42", "1234", "7", ".", ",", "!", "?", "/", "//", "-", "_", "(", ")", "\"", "{", "}",
		"<", ">", "=", "+", "*", "&", "#", "@", "$", "%", "^", "~", "`", "|", "\\", ";", ":", "\x00", "\x1b", "\x7f"}
	rng := rand.New(rand.NewPCG(1, 2))
	n := 1500
	if testing.Short() {
		n = 200
	}
	for i := 0; i < n; i++ {
		var b strings.Builder
		for k := rng.IntN(12); k >= 0; k-- {
			if rng.IntN(4) == 0 {
				b.WriteByte(byte(rng.IntN(128)))
			} else {
				b.WriteString(fragments[rng.IntN(len(fragments))])
			}
		}
		checkSame(t, b.String())
		if t.Failed() {
			return
		}
	}
}

func FuzzASCIIFastPath(f *testing.F) {
	for _, s := range asciiCorpus {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !isASCII(s) {
			t.Skip()
		}
		checkSame(t, s)
	})
}

func TestNonASCIIUsesTiktoken(t *testing.T) {
	// Mixed text goes through tiktoken-go; the public count agrees with it.
	for _, s := range []string{"café au lait", "naïve résumé", "日本語のテキスト", "emoji 🎉 party", "Ünïcödé'S"} {
		for _, e := range []*encoder{encoders[encCL100k], encoders[encO200k]} {
			if got, want := e.count(s), len(e.get().EncodeOrdinary(s)); got != want {
				t.Errorf("%s(%q) = %d, want %d", e.name, s, got, want)
			}
		}
	}
}
