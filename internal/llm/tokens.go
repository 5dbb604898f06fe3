package llm

import (
	"path"
	"strings"
	"sync"
	"unicode/utf8"

	tiktoken "github.com/pkoukk/tiktoken-go"
	tiktoken_loader "github.com/pkoukk/tiktoken-go-loader"
)

// Token counting.
//
// OpenAI-family models are counted exactly as OpenAI's tokenizer does, with
// tiktoken-go and the BPE tables compiled into the binary (the offline
// loader: nothing is downloaded, ever): o200k_base for gpt-4o, gpt-4.1,
// gpt-4.5, gpt-5, o1, o3, o4 (and chatgpt-4o); cl100k_base for gpt-4,
// gpt-3.5 and text-embedding-*. A provider prefix such as "openai/" is
// ignored. Chat messages add the overhead OpenAI documents: 3 tokens per
// message, 1 more per name, and 3 for priming the reply.
//
// Every other model (Llama, Mistral, Qwen, … on Ollama or Hugging Face) is
// estimated as the cl100k_base count × 1.1, rounded up. Why that and not
// bytes/4: it follows the content (code, numbers, whitespace and non-Latin
// scripts, where bytes/4 is off by 2× either way), modern open tokenizers
// (Llama 3, Qwen, Mistral Nemo) land within a few percent of cl100k_base,
// and the older 32k-vocabulary SentencePiece ones (Llama 2, Mistral 7B) run
// 10–25% above it; the 10% margin errs towards over-reserving, which
// settlement corrects, rather than under-charging.
//
// ASCII text, most prompts, takes a fast path (bpe.go) that splits and
// merges without tiktoken-go's regular expressions, about 20–40 times
// faster and without allocating; other text goes through tiktoken-go. Tests
// check the two agree token for token.
//
// The encoders are built once, on first use (≈0.1 s for cl100k_base, 0.2 s
// for o200k_base, some tens of MB of tables); call WarmTokenizers at
// start-up to pay that before the first request. Counting is safe for
// concurrent use.

func init() {
	// Set before any encoder exists; tiktoken-go otherwise fetches its
	// tables over the network.
	tiktoken.SetBpeLoader(tables)
}

// tables loads the BPE rank tables from the binary (the offline loader)
// and keeps them, so the ASCII fast path (bpe.go) shares tiktoken-go's
// maps instead of holding second copies.
var tables = &rankTables{offline: tiktoken_loader.NewOfflineLoader(), byFile: map[string]map[string]int{}}

type rankTables struct {
	offline tiktoken.BpeLoader
	mu      sync.Mutex
	byFile  map[string]map[string]int
}

func (t *rankTables) LoadTiktokenBpe(file string) (map[string]int, error) {
	ranks, err := t.offline.LoadTiktokenBpe(file)
	if err == nil {
		t.mu.Lock()
		t.byFile[path.Base(file)] = ranks
		t.mu.Unlock()
	}
	return ranks, err
}

func (t *rankTables) get(encoding string) map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byFile[encoding+".tiktoken"]
}

// Encoding names.
const (
	encO200k  = "o200k_base"
	encCL100k = "cl100k_base"
)

// Per OpenAI's cookbook ("How to count tokens with tiktoken").
const (
	tokensPerMessage = 3
	tokensPerName    = 1
	tokensReply      = 3
	tokensPerTool    = 8 // approximation for each offered function definition
	tokensPerCall    = 3 // approximation for each tool call's framing
)

type encoder struct {
	once  sync.Once
	name  string
	next  func(s string, i int) int // the ASCII splitter
	tk    *tiktoken.Tiktoken
	ranks map[string]int
}

var encoders = map[string]*encoder{
	encO200k:  {name: encO200k, next: nextO200k},
	encCL100k: {name: encCL100k, next: nextCL100k},
}

// get returns the tiktoken encoder, or nil if it could not be built (the
// tables are embedded, so that means a broken build; callers fall back to a
// byte estimate rather than fail a request over it).
func (e *encoder) get() *tiktoken.Tiktoken {
	e.once.Do(func() {
		tk, err := tiktoken.GetEncoding(e.name)
		if err == nil {
			e.tk = tk
			e.ranks = tables.get(e.name)
		}
	})
	return e.tk
}

func (e *encoder) count(s string) int {
	if s == "" {
		return 0
	}
	tk := e.get()
	switch {
	case tk == nil:
		return (len(s) + 3) / 4
	case e.ranks != nil && isASCII(s):
		return countASCII(s, e.next, e.ranks)
	default:
		return len(tk.EncodeOrdinary(s))
	}
}

// WarmTokenizers builds both encoders now, so the first request does not
// wait for them.
func WarmTokenizers() {
	var wg sync.WaitGroup
	for _, e := range encoders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.get()
		}()
	}
	wg.Wait()
}

// encodingFor names the tiktoken encoding of an OpenAI-family model, or ""
// for models that are estimated.
func encodingFor(model string) string {
	m := strings.ToLower(strings.TrimSpace(model))
	if i := strings.LastIndexByte(m, '/'); i >= 0 {
		m = m[i+1:]
	}
	for _, p := range []string{"gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5"} {
		if strings.HasPrefix(m, p) {
			return encO200k
		}
	}
	for _, p := range []string{"o1", "o3", "o4"} {
		if m == p || strings.HasPrefix(m, p+"-") {
			return encO200k
		}
	}
	for _, p := range []string{"gpt-4", "gpt-3.5", "text-embedding-"} {
		if strings.HasPrefix(m, p) {
			return encCL100k
		}
	}
	return ""
}

// encoderFor returns the encoder for model and whether its counts are
// exact; models without one are counted with cl100k_base and scaled.
func encoderFor(model string) (*encoder, bool) {
	if enc := encodingFor(model); enc != "" {
		return encoders[enc], true
	}
	return encoders[encCL100k], false
}

// IsExactTokenizer reports whether CountTokens counts model's tokens
// exactly (an OpenAI-family model) rather than estimating them.
func IsExactTokenizer(model string) bool { return encodingFor(model) != "" }

// CountTokens counts the input tokens msgs cost on model, including the
// per-message overhead of the chat format. Exact for OpenAI-family models,
// an estimate (cl100k_base × 1.1, rounded up) for the rest.
func CountTokens(model string, msgs []Message) int {
	e, exact := encoderFor(model)
	return scaleUnless(exact, countMessages(e, msgs))
}

// CountRequest is CountTokens plus the tool definitions r offers, which
// providers also bill as input (approximated: the tokens of each tool's
// name, description and schema, plus a few for framing).
func CountRequest(r Request) int {
	e, exact := encoderFor(r.Model)
	n := countMessages(e, r.Messages) + countTools(e, r.Tools)
	if r.Schema != nil {
		n += e.count(string(r.Schema.Schema)) // the schema is part of the prompt
	}
	return scaleUnless(exact, n)
}

// CountText counts the tokens of s on model, with no message overhead.
func CountText(model string, s string) int {
	e, exact := encoderFor(model)
	return scaleUnless(exact, e.count(s))
}

// EstimateText estimates the tokens of s for a model whose tokenizer is
// unknown: the cl100k_base count × 1.1, rounded up.
func EstimateText(s string) int {
	return scale(encoders[encCL100k].count(s))
}

func scale(n int) int {
	// Integer arithmetic: 11/10 rounded up, without float surprises.
	return (n*11 + 9) / 10
}

func scaleUnless(exact bool, n int) int {
	if exact {
		return n
	}
	return scale(n)
}

func countMessages(e *encoder, msgs []Message) int {
	if len(msgs) == 0 {
		return 0
	}
	n := tokensReply
	for _, m := range msgs {
		n += tokensPerMessage + e.count(m.Role) + e.count(m.Content)
		if m.Name != "" {
			n += tokensPerName + e.count(m.Name)
		}
		if m.ToolCallID != "" {
			n += e.count(m.ToolCallID)
		}
		for _, c := range m.ToolCalls {
			n += tokensPerCall + e.count(c.Name) + e.count(c.Arguments)
		}
	}
	return n
}

func countTools(e *encoder, tools []Tool) int {
	n := 0
	for _, t := range tools {
		n += tokensPerTool + e.count(t.Name) + e.count(t.Description) + e.count(string(t.Parameters))
	}
	return n
}

// truncateTokens returns the first max tokens of s under e and whether it
// cut anything.
func truncateTokens(e *encoder, s string, max int) (string, bool) {
	tk := e.get()
	if tk == nil {
		if len(s) <= max*4 {
			return s, false
		}
		return trimPartialRune(s[:max*4]), true
	}
	if e.count(s) <= max { // the fast path, for the common case
		return s, false
	}
	ids := tk.EncodeOrdinary(s)
	if len(ids) <= max {
		return s, false
	}
	return trimPartialRune(tk.Decode(ids[:max])), true
}

// trimPartialRune drops a rune cut in half at the end of s (a token
// boundary may fall inside a multi-byte character).
func trimPartialRune(s string) string {
	for i := 0; i < utf8.UTFMax && len(s) > 0; i++ {
		r, size := utf8.DecodeLastRuneInString(s)
		if r != utf8.RuneError || size > 1 {
			return s
		}
		s = s[:len(s)-1]
	}
	return s
}
