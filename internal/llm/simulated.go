package llm

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"time"
	"unicode"
)

// SimulatedLoopModel is a model name that makes the simulated provider
// request a tool on every call, to exercise agents that never stop.
const SimulatedLoopModel = "simulated-loop"

// SimulatedOptions tune the simulated provider.
type SimulatedOptions struct {
	// Latency is waited once per call, before the first output (time to
	// first token). Zero for benchmarks.
	Latency time.Duration
	// TokenLatency is waited per output token. Zero for benchmarks.
	TokenLatency time.Duration
	// AlwaysCallTool requests a tool on every call in which tools are
	// offered, even after tool results (as does the model name
	// SimulatedLoopModel).
	AlwaysCallTool bool
}

// Simulated is a model that needs nothing: the default when no model is
// configured, so demos and load tests work offline. Its answers are
// deterministic (the same request gets the same answer) and marked
// Simulated:
//
//   - A plain conversation gets a short, plausible answer quoting the start
//     of the last user message.
//   - When tools are offered, no tool result is in the conversation yet, and
//     the last user message holds an arithmetic expression (see
//     FindExpression), it calls the first tool whose name contains "calc"
//     (else the first tool) with {"expression": "<the expression>"}.
//   - When the conversation ends with a tool result, it answers "The result
//     is <result>."
//   - A request with a Schema gets a JSON value conforming to it (see
//     simulatedJSON).
//   - With AlwaysCallTool, or the model SimulatedLoopModel, it calls a tool
//     on every call where tools are offered ("1+1" when there is no
//     expression).
//
// Usage is counted like an OpenAI model (o200k_base, with the chat
// overhead), so token budgets behave realistically. MaxTokens truncates the
// answer at that many tokens with FinishReason "length". Stream delivers
// the answer a word at a time, paced by the latency options.
type Simulated struct {
	opts SimulatedOptions
}

var _ Provider = (*Simulated)(nil)

// NewSimulated returns a simulated provider.
func NewSimulated(opts SimulatedOptions) *Simulated { return &Simulated{opts: opts} }

// String names the provider.
func (p *Simulated) String() string { return "simulated" }

// Chat answers after Latency plus TokenLatency per output token.
func (p *Simulated) Chat(ctx context.Context, r Request) (Response, error) {
	resp := p.answer(r)
	wait := p.opts.Latency + time.Duration(resp.Usage.OutputTokens)*p.opts.TokenLatency
	if err := sleep(ctx, wait); err != nil {
		return Response{Model: resp.Model, Simulated: true,
			Usage: Usage{InputTokens: resp.Usage.InputTokens, Estimated: true}}, ctxError(ProviderSimulated, err)
	}
	return resp, nil
}

// Stream delivers the answer a word at a time.
func (p *Simulated) Stream(ctx context.Context, r Request, onDelta func(string)) (Response, error) {
	full := p.answer(r)
	if err := sleep(ctx, p.opts.Latency); err != nil {
		return Response{Model: full.Model, Simulated: true,
			Usage: Usage{InputTokens: full.Usage.InputTokens, Estimated: true}}, ctxError(ProviderSimulated, err)
	}
	enc := encoders[encO200k]
	sent := 0
	for _, w := range words(full.Text) {
		if err := sleep(ctx, time.Duration(enc.count(w))*p.opts.TokenLatency); err != nil {
			part := full
			part.Text = full.Text[:sent]
			part.FinishReason = ""
			part.Usage.OutputTokens = enc.count(part.Text)
			part.Usage.Estimated = true
			return part, ctxError(ProviderSimulated, err)
		}
		emit(onDelta, w)
		sent += len(w)
	}
	if len(full.ToolCalls) > 0 {
		// A tool call is one piece of output; pace it like its tokens.
		if err := sleep(ctx, time.Duration(full.Usage.OutputTokens)*p.opts.TokenLatency); err != nil {
			part := full
			part.ToolCalls, part.FinishReason = nil, ""
			part.Usage.OutputTokens, part.Usage.Estimated = 0, true
			return part, ctxError(ProviderSimulated, err)
		}
	}
	return full, nil
}

// answer computes the whole response, usage included.
func (p *Simulated) answer(r Request) Response {
	enc := encoders[encO200k]
	resp := Response{Simulated: true, Model: r.Model, FinishReason: FinishStop}
	if resp.Model == "" {
		resp.Model = ProviderSimulated
	}
	resp.Usage.InputTokens = countMessages(enc, r.Messages) + countTools(enc, r.Tools)

	if call, ok := p.toolCall(r); ok {
		resp.ToolCalls = []ToolCall{call}
		resp.FinishReason = FinishToolCalls
		resp.Usage.OutputTokens = tokensPerCall + enc.count(call.Name) + enc.count(call.Arguments)
		return resp
	}
	text := simulatedText(r)
	if r.Schema != nil {
		text = simulatedJSON(r)
	}
	if r.MaxTokens > 0 {
		if cut, ok := truncateTokens(enc, text, r.MaxTokens); ok {
			text = cut
			resp.FinishReason = FinishLength
		}
	}
	resp.Text = text
	resp.Usage.OutputTokens = enc.count(text)
	if r.MaxTokens > 0 && resp.Usage.OutputTokens > r.MaxTokens {
		resp.Usage.OutputTokens = r.MaxTokens
	}
	return resp
}

// toolCall decides whether to call a tool, and which.
func (p *Simulated) toolCall(r Request) (ToolCall, bool) {
	if len(r.Tools) == 0 {
		return ToolCall{}, false
	}
	expr := FindExpression(lastContent(r.Messages, RoleUser))
	loop := p.opts.AlwaysCallTool || strings.EqualFold(r.Model, SimulatedLoopModel)
	if !loop {
		if expr == "" {
			return ToolCall{}, false
		}
		for _, m := range r.Messages {
			if m.Role == RoleTool {
				return ToolCall{}, false
			}
		}
	}
	if expr == "" {
		expr = "1+1"
	}
	tool := r.Tools[0]
	for _, t := range r.Tools {
		if strings.Contains(strings.ToLower(t.Name), "calc") {
			tool = t
			break
		}
	}
	args, _ := json.Marshal(map[string]string{"expression": expr})
	h := fnv.New64a()
	hashRequest(h, r)
	return ToolCall{ID: fmt.Sprintf("call_%016x", h.Sum64()), Name: tool.Name, Arguments: string(args)}, true
}

var simulatedAnswers = []string{
	"You asked: \"%s\". In short: start with the simplest approach that works, measure it, and refine from there. I can go into more detail if that helps.",
	"Good question about \"%s\". The short answer is that it depends on your constraints, but a small, well-tested first step is usually the right call.",
	"Regarding \"%s\": first, be clear about the goal; second, keep the solution simple; third, check the result against real data before you scale it up.",
	"Here is a brief answer to \"%s\": the main trade-off is between speed and accuracy, and most teams do well by choosing clarity first and optimising later.",
}

// simulatedText is the deterministic answer to a conversation without a
// tool call.
func simulatedText(r Request) string {
	if n := len(r.Messages); n > 0 && r.Messages[n-1].Role == RoleTool {
		result := strings.TrimSpace(r.Messages[n-1].Content)
		return "The result is " + strings.TrimRight(result, ".") + "."
	}
	quote := quoteStart(lastContent(r.Messages, RoleUser), 12)
	if quote == "" {
		return "Hello! I am a simulated model. Ask me anything and I will answer quickly, deterministically and without using a real model."
	}
	h := fnv.New64a()
	hashRequest(h, r)
	return fmt.Sprintf(simulatedAnswers[h.Sum64()%uint64(len(simulatedAnswers))], quote)
}

func hashRequest(h interface{ Write([]byte) (int, error) }, r Request) {
	for _, m := range r.Messages {
		_, _ = h.Write([]byte(m.Role))
		_, _ = h.Write([]byte{0})
		_, _ = h.Write([]byte(m.Content))
		_, _ = h.Write([]byte{0})
	}
}

// quoteStart returns the first n words of s, with "…" if it had more.
func quoteStart(s string, n int) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	if len(f) <= n {
		return strings.TrimRightFunc(strings.Join(f, " "), unicode.IsPunct)
	}
	return strings.Join(f[:n], " ") + "…"
}

func lastContent(msgs []Message, role string) string {
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Role == role {
			return msgs[i].Content
		}
	}
	return ""
}

// words splits s into chunks that each start with their leading
// whitespace, so that concatenating them gives s back.
func words(s string) []string {
	var out []string
	start := 0
	inWord := false
	for i, c := range s {
		space := unicode.IsSpace(c)
		if inWord && space {
			out = append(out, s[start:i])
			start = i
		}
		inWord = !space
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

var (
	exprRun        = regexp.MustCompile(`[0-9+\-*/().^% \t]+`)
	exprArithmetic = regexp.MustCompile(`[0-9.][)]*[-+*/^%]+[(]*-?[(]*[0-9.]`)
)

// FindExpression returns the longest arithmetic expression in s (digits
// joined by + - * / ^ %, with parentheses and decimal points), or "".
func FindExpression(s string) string {
	best := ""
	for _, run := range exprRun.FindAllString(s, -1) {
		e := cleanExpression(run)
		if len(e) > len(best) && exprArithmetic.MatchString(strings.NewReplacer(" ", "", "\t", "").Replace(e)) {
			best = e
		}
	}
	return best
}

// cleanExpression trims what cannot start or end an expression, and
// parentheses that the sentence rather than the expression opened.
func cleanExpression(e string) string {
	for {
		before := e
		e = strings.TrimSpace(e)
		e = strings.TrimLeft(e, "+*/^%)")
		e = strings.TrimRightFunc(e, func(r rune) bool { return !(r >= '0' && r <= '9') && r != ')' })
		opens, closes := strings.Count(e, "("), strings.Count(e, ")")
		if closes > opens && strings.HasSuffix(e, ")") {
			e = e[:len(e)-1]
		}
		if opens > closes && strings.HasPrefix(e, "(") {
			e = e[1:]
		}
		if e == before {
			break
		}
	}
	if strings.Count(e, "(") != strings.Count(e, ")") {
		return ""
	}
	return e
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
