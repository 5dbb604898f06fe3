package httpapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
)

// statusOf maps a domain error code to its HTTP status. This table is the
// only place where codes meet status codes.
var statusOf = map[errs.Code]int{
	errs.Invalid:         http.StatusBadRequest,
	errs.NotFound:        http.StatusNotFound,
	errs.Conflict:        http.StatusConflict,
	errs.Unauthorized:    http.StatusUnauthorized,
	errs.Forbidden:       http.StatusForbidden,
	errs.QuotaExceeded:   http.StatusTooManyRequests,
	errs.RateLimited:     http.StatusTooManyRequests,
	errs.ModelNotAllowed: http.StatusForbidden,
	errs.TooLarge:        http.StatusRequestEntityTooLarge,
	errs.Unprocessable:   http.StatusUnprocessableEntity,
	errs.Unavailable:     http.StatusServiceUnavailable,
	errs.Internal:        http.StatusInternalServerError,
}

// Status is the HTTP status of an error with code c, from the same table
// the API answers with (the web console shows its errors as pages).
func Status(c errs.Code) int {
	if status, ok := statusOf[c]; ok {
		return status
	}
	return http.StatusInternalServerError
}

// errorBody is the one error shape of the API.
type errorBody struct {
	Error errorDetail `json:"error"`
	// Detail repeats the message on LangFlow's routes, where LangFlow's
	// clients read {"detail": …}.
	Detail string `json:"detail,omitempty"`
}

// langflowRoutes are the path prefixes of LangFlow's API that Sluice
// serves: their errors carry LangFlow's detail beside Sluice's error.
var langflowRoutes = []string{"/api/v1/run/", "/api/v1/webhook/", "/api/v1/flows", "/api/v1/build/", "/api/v1/files/", "/api/v2/files"}

func langflowRoute(path string) bool {
	for _, p := range langflowRoutes {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

type errorDetail struct {
	Code      errs.Code `json:"code"`
	Message   string    `json:"message"`
	Field     string    `json:"field,omitempty"`
	RequestID string    `json:"request_id"`
	// Extra carries code-specific details (quota denials), merged into the
	// object.
	Extra map[string]any `json:"-"`
}

func (d errorDetail) MarshalJSON() ([]byte, error) {
	m := map[string]any{"code": d.Code, "message": d.Message, "request_id": d.RequestID}
	if d.Field != "" {
		m["field"] = d.Field
	}
	for k, v := range d.Extra {
		if _, taken := m[k]; !taken {
			m[k] = v
		}
	}
	return json.Marshal(m)
}

// writeError answers with err in the API's error shape. Internal errors are
// logged in full and shown to the caller only as "internal error".
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	writeErrorExtra(w, r, log, err, nil)
}

// writeErrorExtra is writeError with code-specific fields in the body.
func writeErrorExtra(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error, extra map[string]any) {
	rid := requestID(r.Context())
	var e *errs.Error
	if !errors.As(err, &e) {
		e = errs.Wrap(err, "internal error")
	}
	status, ok := statusOf[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	detail := errorDetail{Code: e.Code, Message: e.Message, Field: e.Field, RequestID: rid, Extra: extra}
	if status >= 500 {
		log.LogAttrs(r.Context(), slog.LevelError, "request failed", slog.String("request_id", rid), slog.String("error", err.Error()))
		if e.Code == errs.Internal {
			detail.Message = "internal error"
			detail.Field = ""
		}
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(e.RetryAfter.Seconds())), 10))
		if detail.Extra == nil {
			detail.Extra = map[string]any{}
		}
		detail.Extra["retry_after_seconds"] = int64(math.Ceil(e.RetryAfter.Seconds()))
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
	}
	body := errorBody{Error: detail}
	if langflowRoute(r.URL.Path) {
		body.Detail = detail.Message
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
