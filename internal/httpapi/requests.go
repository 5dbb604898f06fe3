package httpapi

import (
	"net/http"
	"strconv"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// requestRoutes serve quota requests: a user asks for more of a dimension,
// an admin approves (a temporary grant) or denies it (docs/quota-requests.md).
func (s *Server) requestRoutes(mux *routes) {
	if s.Requests == nil {
		return
	}
	rq := s.Requests
	mux.HandleFunc("POST /api/v1/quota-requests", create(s, rq.Create))
	mux.HandleFunc("GET /api/v1/quota-requests", s.listRequests)
	mux.HandleFunc("GET /api/v1/quota-requests/{id}", get(s, rq.Get))
	mux.HandleFunc("POST /api/v1/quota-requests/{id}/approve", func(w http.ResponseWriter, r *http.Request) {
		var in policy.ApproveInput
		// Approving as asked needs no body.
		if r.ContentLength != 0 {
			if err := decode(r, s.MaxBodyBytes, &in); err != nil {
				writeError(w, r, s.Log, err)
				return
			}
		}
		out, err := rq.Approve(r.Context(), r.PathValue("id"), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /api/v1/quota-requests/{id}/deny", update(s, rq.Deny))
	mux.HandleFunc("POST /api/v1/quota-requests/{id}/cancel", get(s, rq.Cancel))
}

// listRequests lists quota requests: ?status=, ?tenant_id= (platform
// admins), ?user_id= (the requester), ?scope=, ?after=, ?limit=.
func (s *Server) listRequests(w http.ResponseWriter, r *http.Request) {
	var f policy.RequestFilter
	for name, vals := range r.URL.Query() {
		v := vals[len(vals)-1]
		switch name {
		case "status":
			f.Status = v
		case "tenant_id":
			f.TenantID = v
		case "user_id":
			f.RequestedBy = v
		case "scope":
			f.Scope = v
		case "after":
			f.After = v
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > tenancy.MaxPageSize {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "limit", "limit must be a number from 1 to %d", tenancy.MaxPageSize))
				return
			}
			f.Limit = n
		default:
			writeError(w, r, s.Log, errs.Field(errs.Invalid, name, "unknown query parameter %q", name))
			return
		}
	}
	items, err := s.Requests.List(r.Context(), f)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	resp := listResponse[*policy.QuotaRequest]{Items: items}
	limit := f.Limit
	if limit == 0 {
		limit = tenancy.DefaultPageSize
	}
	if n := len(items); n > 0 && n == limit {
		resp.Next = items[n-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}
