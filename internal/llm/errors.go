package llm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
)

// Provider names, as used in ModelConfig.Provider and ProviderError.Provider.
const (
	ProviderOpenAI      = "openai"
	ProviderOllama      = "ollama"
	ProviderHuggingFace = "huggingface"
	ProviderSimulated   = "simulated"
)

// ProviderError is a failure reported by, or on the way to, a model
// provider. It never contains the API key: messages from the provider are
// scrubbed of it.
//
// It unwraps to an *errs.Error, so errs.CodeOf maps it for the API:
// 400/404/422 → invalid (with the provider's message, e.g. a context-length
// complaint), 413 → too_large, 429 → rate_limited (except OpenAI's
// insufficient_quota → unavailable), anything else → unavailable with a
// generic message (the detail is for logs). It also unwraps to Err, the
// underlying cause when there is one (io.ErrUnexpectedEOF for a stream cut
// off, a *url.Error for a failed connection).
type ProviderError struct {
	Provider string // ProviderOpenAI, ProviderOllama, ProviderHuggingFace
	Status   int    // HTTP status; 0 when no answer came (connection failed)
	Type     string // provider's error type, e.g. "invalid_request_error"
	Code     string // provider's error code, e.g. "rate_limit_exceeded"
	Message  string // provider's message, key removed
	// Retryable says whether the same request may succeed later: rate
	// limits, overload, a model still loading, 5xx, a broken connection.
	Retryable bool
	// RetryAfter is the provider's hint (Retry-After header, or Hugging
	// Face's estimated_time), 0 if none.
	RetryAfter time.Duration
	Err        error
}

func (e *ProviderError) Error() string {
	var b strings.Builder
	b.WriteString(e.Provider)
	if e.Status != 0 {
		b.WriteString(": http ")
		b.WriteString(strconv.Itoa(e.Status))
	}
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	} else if e.Type != "" {
		b.WriteString(" " + e.Type)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

// Unwrap exposes the domain error (for errs.CodeOf) and the cause.
func (e *ProviderError) Unwrap() []error {
	if e.Err != nil {
		return []error{e.domain(), e.Err}
	}
	return []error{e.domain()}
}

func (e *ProviderError) domain() *errs.Error {
	switch {
	case e.Status == http.StatusBadRequest || e.Status == http.StatusNotFound || e.Status == http.StatusUnprocessableEntity:
		return errs.E(errs.Invalid, "model provider %s rejected the request: %s", e.Provider, e.Message)
	case e.Status == http.StatusRequestEntityTooLarge:
		return errs.E(errs.TooLarge, "model provider %s: request too large", e.Provider)
	case e.Status == http.StatusTooManyRequests && e.Retryable:
		return errs.E(errs.RateLimited, "model provider %s is rate limiting; retry later", e.Provider)
	default:
		return errs.E(errs.Unavailable, "model provider %s is unavailable", e.Provider)
	}
}

// retryableStatus is true for answers that may change on a later try.
func retryableStatus(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusConflict, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable,
		http.StatusGatewayTimeout:
		return true
	}
	return status >= 520 && status <= 529 // proxies' "origin unreachable" family
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// errorFromResponse turns a non-2xx answer into a *ProviderError. Each
// provider's body shape is tried: OpenAI {"error":{"message","type","code"}},
// Ollama {"error":"..."}, Hugging Face {"error":"..."|[...], "error_type",
// "estimated_time"}; anything else (an HTML page from a proxy) becomes a
// short text message.
func errorFromResponse(provider string, resp *http.Response, key Secret) *ProviderError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &ProviderError{
		Provider:   provider,
		Status:     resp.StatusCode,
		Retryable:  retryableStatus(resp.StatusCode),
		RetryAfter: retryAfter(resp.Header, time.Now()),
	}
	parseErrorBody(e, body)
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	e.Message = redact(e.Message, key)
	e.Code = redact(e.Code, key)
	e.Type = redact(e.Type, key)
	return e
}

// parseErrorBody fills e from a JSON error body and reports whether body
// was one. It serves HTTP error answers and errors sent inside a stream.
func parseErrorBody(e *ProviderError, body []byte) bool {
	var v struct {
		Error         json.RawMessage `json:"error"`
		ErrorType     string          `json:"error_type"`
		EstimatedTime *float64        `json:"estimated_time"`
	}
	if json.Unmarshal(body, &v) != nil || len(v.Error) == 0 || string(v.Error) == "null" {
		if text := strings.TrimSpace(string(body)); text != "" && !json.Valid(body) {
			e.Message = shorten(text, 300)
		}
		return false
	}
	var obj struct {
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Code    json.RawMessage `json:"code"`
	}
	var str string
	var list []string
	switch {
	case json.Unmarshal(v.Error, &obj) == nil:
		e.Message, e.Type = obj.Message, obj.Type
		e.Code = rawString(obj.Code)
	case json.Unmarshal(v.Error, &str) == nil:
		e.Message = str
	case json.Unmarshal(v.Error, &list) == nil:
		e.Message = strings.Join(list, "; ")
	}
	if v.ErrorType != "" {
		e.Type = v.ErrorType
	}
	if v.EstimatedTime != nil && *v.EstimatedTime > 0 {
		e.RetryAfter = time.Duration(*v.EstimatedTime * float64(time.Second))
		e.Retryable = true
	}
	// Out of credit is a 429 at OpenAI, but waiting will not help.
	if e.Code == "insufficient_quota" || e.Type == "insufficient_quota" {
		e.Retryable = false
	}
	e.Message = shorten(e.Message, 1000)
	return true
}

// rawString reads a JSON string or number (OpenAI's code is either, or null).
func rawString(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// connError wraps a failure to get an answer at all.
func connError(provider string, err error) *ProviderError {
	return &ProviderError{Provider: provider, Message: "request failed", Retryable: true, Err: err}
}

// cutError reports a stream that ended before the provider said it was done.
func cutError(provider string, err error) *ProviderError {
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return &ProviderError{Provider: provider, Status: http.StatusOK, Message: "stream ended before completion", Retryable: true, Err: err}
}

// ctxError wraps a cancellation so errors.Is finds context.Canceled or
// DeadlineExceeded.
func ctxError(provider string, cause error) error {
	return fmt.Errorf("%s: %w", provider, cause)
}
