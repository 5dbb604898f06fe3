package run

import (
	"slices"
	"testing"
)

// The expected chunks are what LangChain's CharacterTextSplitter and
// RecursiveCharacterTextSplitter give for the same text and settings (with
// LangFlow's length function, len, and whitespace stripped).
func TestTextSplitter(t *testing.T) {
	defaults := []string{"\n\n", "\n", " ", ""}
	tests := []struct {
		name          string
		text          string
		recursive     bool
		sep           string // character mode
		keep          string
		size, overlap int
		want          []string
	}{
		{"lines merged up to the size", "one\ntwo\nthree\nfour\nfive", false, "\n", "", 10, 0,
			[]string{"one\ntwo", "three\nfour", "five"}},
		{"overlap carries the previous chunk's end", "one\ntwo\nthree\nfour\nfive", false, "\n", "", 10, 5,
			[]string{"one\ntwo", "two\nthree", "three\nfour", "four\nfive"}},
		{"words with overlap", "aaaa bbbb cccc dddd", false, " ", "", 9, 4,
			[]string{"aaaa bbbb", "bbbb cccc", "cccc dddd"}},
		{"a piece longer than a chunk stays whole", "a longwordthatexceeds b", false, " ", "", 5, 0,
			[]string{"a", "longwordthatexceeds", "b"}},
		{"separator kept at the start", "one. two. three.", false, ".", "start", 8, 0,
			[]string{"one. two", ". three."}},
		{"empty separator: characters", "abcdefg", false, "", "", 3, 1,
			[]string{"abc", "cde", "efg"}},
		{"lengths count characters, not bytes", "héllo wörld ça va", false, " ", "", 11, 0,
			[]string{"héllo wörld", "ça va"}},
		{"blank pieces dropped, chunks stripped", "  \n\nfirst\n\n\n\nsecond  \n\n", false, "\n\n", "", 6, 0,
			[]string{"first", "second"}},
		{"recursive: paragraphs, then lines, then words", "Para one is here.\n\nPara two is a bit longer than the first.\nIt has two lines.", true, "", "start", 20, 5,
			[]string{"Para one is here.", "Para two is a bit", "bit longer than the", "the first.", "It has two lines."}},
		{"recursive: down to characters", "abcdefghij klmnop", true, "", "start", 4, 0,
			[]string{"abcd", "efgh", "ij", "klm", "nop"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := textSplitter{size: tt.size, overlap: tt.overlap, keep: tt.keep}
			var got []string
			if tt.recursive {
				got = sp.recursive(tt.text, defaults)
			} else {
				got = sp.character(tt.text, tt.sep)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("chunks: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSplitKeeping(t *testing.T) {
	tests := []struct {
		text, sep, keep string
		want            []string
	}{
		{"a,b,,c", ",", "", []string{"a", "b", "c"}},
		{"a,b,c", ",", "start", []string{"a", ",b", ",c"}},
		{"a,b,c", ",", "end", []string{"a,", "b,", "c"}},
		{",a,", ",", "start", []string{",a", ","}},
		{"ab", "", "start", []string{"a", "b"}},
	}
	for _, tt := range tests {
		if got := splitKeeping(tt.text, tt.sep, tt.keep); !slices.Equal(got, tt.want) {
			t.Errorf("splitKeeping(%q, %q, %q): got %q, want %q", tt.text, tt.sep, tt.keep, got, tt.want)
		}
	}
}
