package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
)

// maxAnswer bounds a non-streamed answer read from a provider.
const (
	maxAnswer = 32 << 20
)

// editBody returns the caller's request as the deployment must see it:
// the provider's name for the model, the output capped at what was
// admitted (in the field the caller used, or the one the model takes),
// and on a stream the usage chunk asked for. Every other field is kept.
func editBody(body []byte, m *llm.Model, maxTokens int, req chatRequest, stream bool) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, err
	}
	up, _ := json.Marshal(upstreamOf(m))
	fields["model"] = up
	if maxTokens > 0 {
		field := llm.MaxTokensField(upstreamOf(m))
		switch {
		case req.MaxCompletionTokens != nil:
			field = "max_completion_tokens"
		case req.MaxTokens != nil:
			field = "max_tokens"
		}
		fields[field] = json.RawMessage(itoa(maxTokens))
	}
	if stream {
		opts := map[string]json.RawMessage{}
		if raw, ok := fields["stream_options"]; ok && string(raw) != "null" {
			_ = json.Unmarshal(raw, &opts)
		}
		opts["include_usage"] = json.RawMessage("true")
		fields["stream_options"], _ = json.Marshal(opts)
	}
	return json.Marshal(fields)
}

// upstreamOf is the name the deployment's provider knows the model by.
func upstreamOf(m *llm.Model) string { return m.Upstream() }

// pass relays one attempt's answer from a provider that speaks the OpenAI
// API to the caller, and measures what it used.
type pass struct {
	w     http.ResponseWriter
	model *llm.Model
	// input is the prompt as counted before the call: the input charged
	// when the provider reports no usage.
	input        int
	includeUsage bool
	started      func()
	// noOutput: embeddings.
	noOutput bool
}

// failed is the usage of an attempt that got no answer: none when the
// provider refused or could not be reached, the prompt when the caller
// gave up after it was sent (the provider may have processed it).
func (p *pass) failed(ctx context.Context, err error) (gate.Outcome, error) {
	var o gate.Outcome
	if ctx.Err() != nil {
		o.Response.Usage = llm.Usage{InputTokens: p.input, Estimated: true}
	}
	return o, err
}

// answerUsage is the usage and text of a whole answer, for settling.
type answerUsage struct {
	Choices []struct {
		Text    string `json:"text"`
		Message struct {
			Content   *string `json:"content"`
			ToolCalls []struct {
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"message"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

// whole relays a non-streamed answer.
func (p *pass) whole(ctx context.Context, f llm.Forwarder, path string, body []byte) (gate.Outcome, error) {
	resp, err := f.Forward(ctx, path, body, false)
	if err != nil {
		return p.failed(ctx, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil || len(b) > maxAnswer {
		if ctx.Err() != nil {
			return p.failed(ctx, ctx.Err())
		}
		if err == nil {
			err = errors.New("answer larger than 32 MiB")
		}
		o, _ := p.failed(ctx, nil)
		o.Response.Usage = llm.Usage{InputTokens: p.input, Estimated: true}
		return o, &llm.ProviderError{Provider: llm.ProviderOpenAI, Status: resp.StatusCode, Message: "could not read the answer", Retryable: true, Err: err}
	}
	p.started()
	var au answerUsage
	_ = json.Unmarshal(b, &au) // an answer Sluice cannot read is still the caller's
	var o gate.Outcome
	o.Response.Usage = p.usageOf(&au)
	h := p.w.Header()
	h.Set("Content-Type", "application/json")
	p.w.WriteHeader(resp.StatusCode)
	o.Committed = true
	_, _ = p.w.Write(b)
	return o, nil
}

// usageOf is the provider's reported usage, or Sluice's count of the
// answer when it reported none.
func (p *pass) usageOf(au *answerUsage) llm.Usage {
	if au.Usage != nil {
		return llm.Usage{InputTokens: au.Usage.PromptTokens, OutputTokens: au.Usage.CompletionTokens}
	}
	u := llm.Usage{InputTokens: p.input, Estimated: true}
	if p.noOutput {
		return u
	}
	for _, c := range au.Choices {
		text := c.Text
		if c.Message.Content != nil {
			text += *c.Message.Content
		}
		for _, tc := range c.Message.ToolCalls {
			text += tc.Function.Name + tc.Function.Arguments
		}
		u.OutputTokens += p.model.CountText(text)
	}
	return u
}

// chunk is what Sluice reads of a streamed chunk.
type chunk struct {
	Choices []struct {
		Text         string  `json:"text"`
		FinishReason *string `json:"finish_reason"`
		Delta        struct {
			Content   string `json:"content"`
			Refusal   string `json:"refusal"`
			ToolCalls []struct {
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// stream relays a streamed answer event by event as it arrives, and
// settles from the provider's usage chunk, or, when the stream is cut
// (the caller left, the provider failed), from what was produced.
func (p *pass) stream(ctx context.Context, f llm.Forwarder, path string, body []byte) (gate.Outcome, error) {
	resp, err := f.Forward(ctx, path, body, true)
	if err != nil {
		return p.failed(ctx, err)
	}
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		// A server that does not stream answers with one body: relay it.
		return p.whole(ctx, staticForwarder{resp}, path, body)
	}
	rc := http.NewResponseController(p.w)
	events := llm.NewSSEReader(resp.Body)
	var o gate.Outcome
	var text strings.Builder
	var usage *llm.Usage
	finished := false
	for {
		data, err := events.Next()
		if err != nil {
			u := p.produced(usage, &text)
			o.Response.Usage = u
			if ctx.Err() != nil {
				return o, ctx.Err()
			}
			if finished && errors.Is(err, io.EOF) && o.Committed {
				// The answer was complete; only [DONE] was left out, as some
				// compatible servers do.
				p.writeEvent(rc, []byte("[DONE]"))
				return o, nil
			}
			cut := &llm.ProviderError{Provider: llm.ProviderOpenAI, Status: http.StatusOK, Message: "stream ended before completion", Retryable: true, Err: err}
			if o.Committed {
				p.writeEvent(rc, streamError("the model provider's stream broke off: the answer is incomplete"))
			}
			return o, cut
		}
		if bytes.Equal(data, []byte("[DONE]")) {
			if !o.Committed { // an empty stream: nothing to relay
				o.Response.Usage = p.produced(usage, &text)
				return o, &llm.ProviderError{Provider: llm.ProviderOpenAI, Status: http.StatusOK, Message: "empty stream", Retryable: true}
			}
			p.writeEvent(rc, data)
			o.Response.Usage = p.produced(usage, &text)
			return o, nil
		}
		var ch chunk
		if json.Unmarshal(data, &ch) == nil {
			if len(ch.Error) > 0 && string(ch.Error) != "null" && !o.Committed {
				pe := &llm.ProviderError{Provider: llm.ProviderOpenAI, Status: http.StatusOK, Message: "error in stream", Retryable: true}
				o.Response.Usage = p.produced(usage, &text)
				return o, pe
			}
			for _, c := range ch.Choices {
				finished = finished || (c.FinishReason != nil && *c.FinishReason != "")
				text.WriteString(c.Text)
				text.WriteString(c.Delta.Content)
				text.WriteString(c.Delta.Refusal)
				for _, tc := range c.Delta.ToolCalls {
					text.WriteString(tc.Function.Name)
					text.WriteString(tc.Function.Arguments)
				}
			}
			if ch.Usage != nil {
				usage = &llm.Usage{InputTokens: ch.Usage.PromptTokens, OutputTokens: ch.Usage.CompletionTokens}
				if len(ch.Choices) == 0 && !p.includeUsage {
					continue // the usage chunk Sluice asked for, not the caller
				}
			}
		}
		if !o.Committed {
			p.started()
			h := p.w.Header()
			h.Set("Content-Type", "text/event-stream")
			h.Set("Cache-Control", "no-cache")
			h.Set("X-Accel-Buffering", "no")
			p.w.WriteHeader(http.StatusOK)
			o.Committed = true
		}
		if !p.writeEvent(rc, data) {
			// The caller is gone: stop the provider and settle what was
			// produced so far.
			o.Response.Usage = p.produced(usage, &text)
			return o, context.Canceled
		}
	}
}

// produced is the stream's usage: the provider's report, or the prompt
// and Sluice's count of the text that arrived.
func (p *pass) produced(usage *llm.Usage, text *strings.Builder) llm.Usage {
	if usage != nil {
		return *usage
	}
	return llm.Usage{InputTokens: p.input, OutputTokens: p.model.CountText(text.String()), Estimated: true}
}

// writeEvent sends one server-sent event and flushes it; false when the
// caller is gone.
func (p *pass) writeEvent(rc *http.ResponseController, data []byte) bool {
	buf := make([]byte, 0, len(data)+8)
	buf = append(append(append(buf, "data: "...), data...), "\n\n"...)
	if _, err := p.w.Write(buf); err != nil {
		return false
	}
	return rc.Flush() == nil
}

// streamError is an OpenAI error object sent inside a stream.
func streamError(msg string) []byte {
	var b errorBody
	b.Error.Message, b.Error.Type = msg, "server_error"
	out, _ := json.Marshal(b)
	return out
}

// staticForwarder hands back an answer already received.
type staticForwarder struct{ resp *http.Response }

func (s staticForwarder) Forward(context.Context, string, []byte, bool) (*http.Response, error) {
	return s.resp, nil
}
