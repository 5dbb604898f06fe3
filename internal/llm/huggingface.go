package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
)

// DefaultHuggingFaceBaseURL is used when a model of provider "huggingface"
// names no base URL.
const DefaultHuggingFaceBaseURL = "https://api-inference.huggingface.co"

// hfStop ends the answer where a base model would start writing the
// user's next turn.
const hfStop = "\nUser:"

// HuggingFace talks to the Hugging Face inference API's text generation
// task (also served by text-generation-inference): POST
// {base}/models/{model} with {"inputs": prompt, "parameters": {...}},
// answered by [{"generated_text": "..."}].
//
// The API takes one prompt, so messages are rendered as a transcript, each
// turn a labelled paragraph, ending with the cue for the answer:
//
//	System: You are terse.
//
//	User: What is Go?
//
//	Assistant: A programming language.
//
//	Tool result (calc): 42
//
//	User: And Rust?
//
//	Assistant:
//
// with "\nUser:" added as a stop sequence (and trimmed from the answer), so
// the model does not go on to write the user's next turn. Tools are not
// offered: the task has no tool calling. A temperature of 0 is sent as
// "do_sample": false, because the API rejects a temperature that is not
// strictly positive.
//
// The API reports no usage: input and output tokens are estimated
// (EstimateText on the prompt and the answer) and Usage.Estimated is set.
// FinishReason is "length" when the estimate reaches MaxTokens, else "stop".
// A 503 while the model loads is a retryable *ProviderError whose
// RetryAfter is the API's estimated_time.
//
// Stream makes the same single call and delivers the answer as one delta.
type HuggingFace struct {
	base   string
	key    Secret
	client *http.Client
}

var _ Provider = (*HuggingFace)(nil)

// NewHuggingFace returns a provider for the API at baseURL
// (DefaultHuggingFaceBaseURL if empty), sending key as a Bearer token.
func NewHuggingFace(baseURL string, key Secret, client *http.Client) *HuggingFace {
	return &HuggingFace{base: trimBase(baseURL, DefaultHuggingFaceBaseURL), key: key, client: clientOr(client)}
}

// String names the provider without its key.
func (p *HuggingFace) String() string { return "huggingface(" + p.base + ")" }

// Chat renders the conversation into a prompt and generates its answer.
func (p *HuggingFace) Chat(ctx context.Context, r Request) (Response, error) {
	// Text generation has no structured-output mode: ask for the JSON.
	prompt := RenderPrompt(SchemaInstruction(r.Messages, r.Schema))
	resp, err := postJSON(ctx, p.client, ProviderHuggingFace, p.modelURL(r.Model), p.key, hfRequestBody(r, prompt), false)
	if err != nil {
		return failed(ctx, r, err)
	}
	status := resp.StatusCode
	input := CountText(r.Model, prompt)
	body, err := readBody(ctx, ProviderHuggingFace, resp)
	if err != nil {
		return Response{Model: r.Model, Usage: Usage{InputTokens: input, Estimated: true}}, err
	}
	gen, err := parseHFAnswer(body)
	if err != nil {
		pe := &ProviderError{Provider: ProviderHuggingFace, Status: status}
		if !parseErrorBody(pe, body) {
			pe = malformed(ProviderHuggingFace, status, err)
		}
		return Response{Model: r.Model, Usage: Usage{InputTokens: input, Estimated: true}}, pe
	}
	text := *gen.GeneratedText
	for _, s := range append([]string{hfStop}, r.Stop...) {
		text = strings.TrimSuffix(text, s)
	}
	out := Response{
		Text:  text,
		Model: r.Model,
		Usage: Usage{InputTokens: input, OutputTokens: CountText(r.Model, text), Estimated: true},
	}
	if d := gen.Details; d != nil && d.GeneratedTokens > 0 {
		out.Usage.OutputTokens = d.GeneratedTokens
	}
	switch {
	case gen.Details != nil && gen.Details.FinishReason == "length":
		out.FinishReason = FinishLength
	case gen.Details == nil && r.MaxTokens > 0 && out.Usage.OutputTokens >= r.MaxTokens:
		out.FinishReason = FinishLength
	default:
		out.FinishReason = FinishStop
	}
	return out, nil
}

// Stream is Chat with the whole answer delivered as one delta: the text
// generation task is not streamed here.
func (p *HuggingFace) Stream(ctx context.Context, r Request, onDelta func(string)) (Response, error) {
	resp, err := p.Chat(ctx, r)
	if err == nil {
		emit(onDelta, resp.Text)
	}
	return resp, err
}

func (p *HuggingFace) modelURL(model string) string {
	parts := strings.Split(model, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return p.base + "/models/" + strings.Join(parts, "/")
}

// RenderPrompt renders messages as the transcript HuggingFace sends (see
// HuggingFace).
func RenderPrompt(msgs []Message) string {
	var b strings.Builder
	for _, m := range msgs {
		switch m.Role {
		case RoleSystem:
			b.WriteString("System: ")
		case RoleUser:
			b.WriteString("User: ")
		case RoleAssistant:
			b.WriteString("Assistant: ")
		case RoleTool:
			b.WriteString("Tool result")
			if m.Name != "" {
				b.WriteString(" (" + m.Name + ")")
			}
			b.WriteString(": ")
		default:
			b.WriteString(m.Role + ": ")
		}
		b.WriteString(strings.TrimSpace(m.Content))
		for _, c := range m.ToolCalls {
			b.WriteString("\n[call " + c.Name + " " + c.Arguments + "]")
		}
		b.WriteString("\n\n")
	}
	b.WriteString("Assistant:")
	return b.String()
}

type hfParameters struct {
	MaxNewTokens   int      `json:"max_new_tokens,omitempty"`
	Temperature    *float64 `json:"temperature,omitempty"`
	DoSample       *bool    `json:"do_sample,omitempty"`
	ReturnFullText bool     `json:"return_full_text"`
	Stop           []string `json:"stop,omitempty"`
}

type hfRequest struct {
	Inputs     string       `json:"inputs"`
	Parameters hfParameters `json:"parameters"`
}

type hfGeneration struct {
	GeneratedText *string `json:"generated_text"`
	Details       *struct {
		FinishReason    string `json:"finish_reason"`
		GeneratedTokens int    `json:"generated_tokens"`
	} `json:"details"`
}

func hfRequestBody(r Request, prompt string) hfRequest {
	params := hfParameters{MaxNewTokens: r.MaxTokens, ReturnFullText: false}
	if t := r.Temperature; t != nil {
		if *t > 0 {
			params.Temperature = t
		} else {
			greedy := false
			params.DoSample = &greedy
		}
	}
	params.Stop = append(params.Stop, r.Stop...)
	if len(params.Stop) < 4 { // the API's default limit on stop sequences
		params.Stop = append(params.Stop, hfStop)
	}
	return hfRequest{Inputs: prompt, Parameters: params}
}

// parseHFAnswer reads [{"generated_text": ...}] or, from a
// text-generation-inference server, {"generated_text": ...}.
func parseHFAnswer(body []byte) (hfGeneration, error) {
	trimmed := bytes.TrimSpace(body)
	var gen hfGeneration
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var list []hfGeneration
		if err := json.Unmarshal(trimmed, &list); err != nil {
			return gen, err
		}
		if len(list) > 0 {
			gen = list[0]
		}
	} else if err := json.Unmarshal(trimmed, &gen); err != nil {
		return gen, err
	}
	if gen.GeneratedText == nil {
		return gen, errors.New("no generated_text in answer")
	}
	return gen, nil
}
