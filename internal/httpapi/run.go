package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

func (s *Server) runRoutes(mux *routes) {
	if s.Runs == nil {
		return
	}
	mux.HandleFunc("POST /api/v1/flows", s.createFlow)
	mux.HandleFunc("GET /api/v1/flows", list(s, s.Runs.Flows, func(f *run.Flow) string { return f.ID }))
	mux.HandleFunc("GET /api/v1/flows/{id}", get(s, s.Runs.Flow))
	mux.HandleFunc("PUT /api/v1/flows/{id}", s.updateFlow)
	mux.HandleFunc("DELETE /api/v1/flows/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Runs.DeleteFlow(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /api/v1/run/{flow}", s.runFlow)
	mux.HandleFunc("GET /api/v1/runs/{id}", get(s, s.Runs.RunRecord))
	mux.HandleFunc("POST /api/v1/runs/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		rec, err := s.Runs.Cancel(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusAccepted, rec)
	})
	mux.HandleFunc("GET /api/v1/runs", func(w http.ResponseWriter, r *http.Request) {
		f := tenancy.Filter{}
		for k, v := range r.URL.Query() {
			switch k {
			case "flow_id":
				f.ParentID = v[0]
			case "project_id":
				f.ProjectID = v[0]
			case "user_id":
				f.UserID = v[0]
			case "tenant_id":
				f.TenantID = v[0]
			case "after":
				f.After = v[0]
			case "limit":
				n, err := strconv.Atoi(v[0])
				if err != nil || n < 1 || n > tenancy.MaxPageSize {
					writeError(w, r, s.Log, errs.Field(errs.Invalid, "limit", "limit must be a number from 1 to %d", tenancy.MaxPageSize))
					return
				}
				f.Limit = n
			default:
				writeError(w, r, s.Log, errs.Field(errs.Invalid, k, "unknown query parameter %q", k))
				return
			}
		}
		runs, err := s.Runs.Runs(r.Context(), f)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		resp := listResponse[*run.Record]{Items: runs}
		limit := f.Limit
		if limit == 0 {
			limit = tenancy.DefaultPageSize
		}
		if n := len(runs); n > 0 && n == limit {
			resp.Next = runs[n-1].ID
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

// readFlowBody reads an uploaded flow (a LangFlow export or compact JSON).
func readFlowBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, flow.MaxBytes))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, errs.E(errs.TooLarge, "flow is larger than %d bytes", flow.MaxBytes)
	}
	if err != nil {
		return nil, errs.E(errs.Invalid, "reading the flow: %v", err)
	}
	if len(data) == 0 {
		return nil, errs.E(errs.Invalid, "request body is empty; send the flow's JSON")
	}
	return data, nil
}

func flowInput(r *http.Request, data []byte) (run.FlowInput, error) {
	in := run.FlowInput{Data: data}
	for k, v := range r.URL.Query() {
		switch k {
		case "project_id":
			in.ProjectID = v[0]
		case "name":
			in.Name = v[0]
		case "endpoint_name":
			in.EndpointName = v[0]
		default:
			return in, errs.Field(errs.Invalid, k, "unknown query parameter %q (project_id, name, endpoint_name)", k)
		}
	}
	return in, nil
}

type flowView struct {
	*run.Flow
	Nodes int `json:"nodes,omitempty"`
}

func (s *Server) createFlow(w http.ResponseWriter, r *http.Request) {
	data, err := readFlowBody(w, r)
	if err != nil {
		writeFlowError(w, r, s, err)
		return
	}
	in, err := flowInput(r, data)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	f, err := s.Runs.CreateFlow(r.Context(), in)
	if err != nil {
		writeFlowError(w, r, s, err)
		return
	}
	f.Data = nil
	writeJSON(w, http.StatusCreated, f)
}

func (s *Server) updateFlow(w http.ResponseWriter, r *http.Request) {
	data, err := readFlowBody(w, r)
	if err != nil {
		writeFlowError(w, r, s, err)
		return
	}
	in, err := flowInput(r, data)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	f, err := s.Runs.UpdateFlow(r.Context(), r.PathValue("id"), in)
	if err != nil {
		writeFlowError(w, r, s, err)
		return
	}
	f.Data = nil
	writeJSON(w, http.StatusOK, f)
}

// writeFlowError answers a flow that does not validate with 422 (413 when
// too large) and every problem found, each naming its node and field.
func writeFlowError(w http.ResponseWriter, r *http.Request, s *Server, err error) {
	var ve *flow.ValidationError
	if errors.As(err, &ve) {
		problems := make([]map[string]string, 0, len(ve.Problems))
		for _, p := range ve.Problems {
			problems = append(problems, map[string]string{"kind": string(p.Kind), "node_id": p.NodeID, "field": p.Field, "message": p.Message})
		}
		writeErrorExtra(w, r, s.Log, ve.ErrsError(), map[string]any{"problems": problems})
		return
	}
	writeError(w, r, s.Log, err)
}

// runFields are the top-level JSON fields runBody reads.
var runFields = sync.OnceValue(func() map[string]bool {
	known := map[string]bool{}
	for _, t := range []reflect.Type{reflect.TypeFor[run.RunRequest](), reflect.TypeFor[runBody]()} {
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			known[name] = true
		}
	}
	return known
})

// unknownRunFields lists the top-level fields of a run body that runBody
// does not read.
func unknownRunFields(raw []byte) []string {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	var out []string
	for k := range m {
		if !runFields()[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// runBody is LangFlow's run request, plus its body-level stream flag.
type runBody struct {
	run.RunRequest
	Stream *bool `json:"stream"`
}

func (s *Server) runFlow(w http.ResponseWriter, r *http.Request) {
	var body runBody
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.MaxBodyBytes))
	if err != nil {
		writeError(w, r, s.Log, errs.E(errs.TooLarge, "request body is larger than %d bytes", s.MaxBodyBytes))
		return
	}
	if len(bytes.TrimSpace(raw)) > 0 {
		// As LangFlow, fields it does not know are ignored (and logged, so
		// a misspelt one can be found); a known field of the wrong type is
		// still refused, naming it.
		if err := json.Unmarshal(raw, &body); err != nil {
			writeError(w, r, s.Log, decodeError(err, s.MaxBodyBytes))
			return
		}
		if unknown := unknownRunFields(raw); len(unknown) > 0 {
			s.Log.LogAttrs(r.Context(), slog.LevelInfo, "run request: fields ignored", slog.String("request_id", requestID(r.Context())),
				slog.Any("fields", unknown))
		}
	}
	stream := false
	for k, v := range r.URL.Query() {
		switch k {
		case "stream":
			b, err := strconv.ParseBool(v[0])
			if err != nil {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "stream", "stream must be true or false"))
				return
			}
			stream = b
		default:
			// LangFlow ignores query parameters it does not know (a
			// caller's ?x-api-key= among them).
		}
	}
	if body.Stream != nil {
		stream = stream || *body.Stream
	}
	if !stream {
		out, err := s.Runs.Run(r.Context(), r.PathValue("flow"), body.RunRequest, nil)
		if err != nil {
			writeRunError(w, r, s, err, nil)
			return
		}
		if out.Ticket != nil {
			setRateHeaders(w, out.Ticket)
		}
		out.Waited.SetHeaders(w.Header())
		if out.Err != nil {
			writeRunError(w, r, s, out.Err, out.Record)
			return
		}
		writeJSON(w, http.StatusOK, out.Response(body.RunRequest))
		return
	}
	s.streamRun(w, r, body.RunRequest)
}

// streamRun answers with LangFlow's event stream: JSON objects
// {"event": …, "data": …} separated by blank lines.
func (s *Server) streamRun(w http.ResponseWriter, r *http.Request, req run.RunRequest) {
	flusher, _ := w.(http.Flusher)
	var mu sync.Mutex
	started := false
	send := func(event string, data any) {
		mu.Lock()
		defer mu.Unlock()
		if !started {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		b, _ := json.Marshal(map[string]any{"event": event, "data": data})
		w.Write(b)
		w.Write([]byte("\n\n"))
		if flusher != nil {
			flusher.Flush()
		}
	}
	out, err := s.Runs.Run(r.Context(), r.PathValue("flow"), req, send)
	if err != nil && !started {
		// Refused before anything ran (admission, bad flow): a plain error.
		writeRunError(w, r, s, err, nil)
		return
	}
	if err != nil {
		send("error", map[string]any{"error": err.Error()})
		return
	}
	if out.Err != nil {
		send("error", map[string]any{"error": out.Err.Error(), "run_id": out.Record.ID, "status": out.Record.Status})
		return
	}
	send("end", map[string]any{"result": out.Response(req)})
}

// writeRunError answers a refused or failed run. A quota denial keeps its
// 429 shape; a failure after admission says which run and node.
func writeRunError(w http.ResponseWriter, r *http.Request, s *Server, err error, rec *run.Record) {
	var ve *flow.ValidationError
	if errors.As(err, &ve) {
		writeFlowError(w, r, s, err)
		return
	}
	if rec == nil {
		writeQuotaError(w, r, s, err)
		return
	}
	extra := map[string]any{"run_id": rec.ID, "status": rec.Status}
	// A provider's own rate limit keeps its retry hint.
	var pe *llm.ProviderError
	if errors.As(err, &pe) && pe.RetryAfter > 0 {
		secs := int64(math.Ceil(pe.RetryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		extra["retry_after_seconds"] = secs
	}
	var re *run.RunError
	if errors.As(err, &re) && re.NodeID != "" {
		extra["node_id"] = re.NodeID
	}
	var e *errs.Error
	if !errors.As(err, &e) {
		e = &errs.Error{Code: errs.Internal, Message: err.Error(), Err: err}
	} else {
		// Say which node failed, once, before the domain message.
		msg := e.Message
		if re != nil && re.NodeID != "" && !strings.Contains(msg, re.NodeID) {
			msg = "node " + re.NodeID + ": " + msg
		}
		e = &errs.Error{Code: e.Code, Field: e.Field, Message: msg, Err: e.Err}
	}
	switch rec.Status {
	case run.StatusQuotaExceeded, run.StatusRateLimited:
		writeQuotaErrorExtra(w, r, s, err, extra)
		return
	case run.StatusTimeout:
		e = &errs.Error{Code: errs.Unavailable, Message: e.Message}
	case run.StatusStepLimitExceeded:
		e = &errs.Error{Code: errs.QuotaExceeded, Message: e.Message}
	default:
		if e.Code == errs.Internal {
			e = &errs.Error{Code: errs.Unprocessable, Message: err.Error(), Err: err}
		}
	}
	writeErrorExtra(w, r, s.Log, e, extra)
}
