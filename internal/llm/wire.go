package llm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Helpers shared by the HTTP providers.

// maxResponseBody bounds a non-streamed answer; maxLine bounds one SSE or
// NDJSON line (a long tool-call argument fits; a runaway upstream does not
// exhaust memory).
const (
	maxResponseBody = 32 << 20
	maxLine         = 8 << 20
)

// postJSON sends body to url and returns the answer when it is 2xx. A
// non-2xx answer becomes a *ProviderError (body closed); a failure to get
// an answer becomes a connection *ProviderError, or the context's error.
func postJSON(ctx context.Context, client *http.Client, provider, url string, key Secret, body any, stream bool) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("%s: encode request: %w", provider, err)
	}
	return postBody(ctx, client, provider, url, key, b, stream)
}

// postBody is postJSON with the body already encoded.
func postBody(ctx context.Context, client *http.Client, provider, url string, key Secret, b []byte, stream bool) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return nil, &ProviderError{Provider: provider, Message: "bad base URL", Err: errors.New(redact(err.Error(), key))}
	}
	req.Header.Set("Content-Type", "application/json")
	if stream {
		req.Header.Set("Accept", "text/event-stream, application/x-ndjson")
	} else {
		req.Header.Set("Accept", "application/json")
	}
	req.Header.Set("User-Agent", "sluice")
	if k := key.Reveal(); k != "" {
		req.Header.Set("Authorization", "Bearer "+k)
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctxError(provider, ctx.Err())
		}
		return nil, connError(provider, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		return nil, errorFromResponse(provider, resp, key)
	}
	return resp, nil
}

// readBody reads a whole 2xx answer.
func readBody(ctx context.Context, provider string, resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctxError(provider, ctx.Err())
		}
		return nil, cutError(provider, err)
	}
	if len(b) > maxResponseBody {
		return nil, &ProviderError{Provider: provider, Status: resp.StatusCode, Message: "response too large"}
	}
	return b, nil
}

// malformed reports a 2xx answer Sluice cannot read.
func malformed(provider string, status int, err error) *ProviderError {
	return &ProviderError{Provider: provider, Status: status, Message: "malformed response", Err: err}
}

// lineReader reads lines of an SSE or NDJSON stream.
type lineReader struct {
	br  *bufio.Reader
	buf []byte
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 16<<10)}
}

// next returns the next line without its line ending. The slice is valid
// until the next call. A last line without a newline is returned with
// io.ErrUnexpectedEOF: in both stream formats every complete line ends with
// one, so it was cut.
func (l *lineReader) next() ([]byte, error) {
	l.buf = l.buf[:0]
	for {
		chunk, err := l.br.ReadSlice('\n')
		l.buf = append(l.buf, chunk...)
		if len(l.buf) > maxLine {
			return nil, errors.New("stream line too long")
		}
		switch {
		case err == nil:
			return bytes.TrimRight(l.buf, "\r\n"), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(l.buf) > 0:
			return l.buf, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// nextSSEData returns the data of the next server-sent event, skipping
// comments and other fields. Several data lines of one event are joined
// with newlines, as the SSE specification says.
func (l *lineReader) nextSSEData() ([]byte, error) {
	var data []byte
	have := false
	for {
		line, err := l.next()
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			if have {
				return data, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		if string(field) != "data" {
			continue
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		if have {
			data = append(data, '\n')
		}
		data = append(data, value...)
		have = true
	}
}

// SSEReader reads the data of server-sent events, one event at a time:
// what the gateway relays from an OpenAI-compatible provider.
type SSEReader struct{ lr *lineReader }

// NewSSEReader reads events from r; an event's data may be up to 8 MiB.
func NewSSEReader(r io.Reader) *SSEReader { return &SSEReader{lr: newLineReader(r)} }

// Next returns the data of the next event (several data lines joined with
// newlines), skipping comments and other fields. The slice is valid until
// the next call. A stream that ends, cleanly or not, is an error
// (io.EOF, io.ErrUnexpectedEOF): a complete stream says [DONE] first.
func (s *SSEReader) Next() ([]byte, error) { return s.lr.nextSSEData() }

// streamState collects a streamed answer so that whatever arrived can be
// returned if the stream breaks.
type streamState struct {
	text   strings.Builder
	calls  []ToolCall
	finish string
	model  string
	usage  *Usage
}

// call returns the tool call at index i, growing the list as needed.
func (s *streamState) call(i int) *ToolCall {
	if i < 0 {
		i = len(s.calls)
	}
	for len(s.calls) <= i {
		s.calls = append(s.calls, ToolCall{})
	}
	return &s.calls[i]
}

// response builds the Response from what arrived. Usage is the provider's
// when it reported one, else estimated from r and the text received.
func (s *streamState) response(r Request) Response {
	resp := Response{Text: s.text.String(), FinishReason: s.finish, Model: s.model}
	for _, c := range s.calls {
		if c.Name != "" || c.Arguments != "" {
			resp.ToolCalls = append(resp.ToolCalls, c)
		}
	}
	if resp.Model == "" {
		resp.Model = r.Model
	}
	if s.usage != nil {
		resp.Usage = *s.usage
	} else {
		resp.Usage = estimateUsage(r, resp.Text, resp.ToolCalls)
	}
	return resp
}

// estimateUsage counts what a call consumed when the provider did not say.
func estimateUsage(r Request, text string, calls []ToolCall) Usage {
	e, exact := encoderFor(r.Model)
	out := e.count(text)
	for _, c := range calls {
		out += tokensPerCall + e.count(c.Name) + e.count(c.Arguments)
	}
	return Usage{
		InputTokens:  CountRequest(r),
		OutputTokens: scaleUnless(exact, out),
		Estimated:    true,
	}
}

// failed returns the usage to settle for a call that got no usable answer:
// none when the provider refused it or could not be reached, the estimated
// input when the caller gave up after the request was sent (the provider
// may have processed the prompt).
func failed(ctx context.Context, r Request, err error) (Response, error) {
	resp := Response{Model: r.Model}
	if ctx.Err() != nil {
		resp.Usage = estimateUsage(r, "", nil)
	}
	return resp, err
}

// interrupted reports a stream that stopped early: the context's error if
// the caller cancelled, else a cut-off error.
func interrupted(ctx context.Context, provider string, err error) error {
	if ctx.Err() != nil {
		return ctxError(provider, ctx.Err())
	}
	var pe *ProviderError
	if errors.As(err, &pe) {
		return err
	}
	return cutError(provider, err)
}

func emit(onDelta func(string), s string) {
	if onDelta != nil && s != "" {
		onDelta(s)
	}
}

func trimBase(base, def string) string {
	if base == "" {
		base = def
	}
	return strings.TrimRight(base, "/")
}
