package httpapi

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// creditRoutes serve prepaid credit: balances and their history, top-ups
// by admins, single-use redeem codes (docs/quota-requests.md).
func (s *Server) creditRoutes(mux *routes) {
	if s.Credits == nil {
		return
	}
	cr := s.Credits
	// POST /api/v1/admin/credits/{scope...}/topup: a scope's name has
	// slashes, so the verb is cut off the end by hand.
	mux.HandleFunc("POST /api/v1/admin/credits/{rest...}", func(w http.ResponseWriter, r *http.Request) {
		scope, ok := strings.CutSuffix(r.PathValue("rest"), "/topup")
		if !ok {
			writeError(w, r, s.Log, errs.E(errs.NotFound, "no such endpoint: %s %s (POST …/credits/SCOPE/topup)", r.Method, r.URL.Path))
			return
		}
		var in policy.CreditAmount
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		e, err := cr.TopUp(r.Context(), scope, in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, e)
	})
	mux.HandleFunc("GET /api/v1/credits", func(w http.ResponseWriter, r *http.Request) {
		var page tenancy.Page
		scope := ""
		for name, vals := range r.URL.Query() {
			v := vals[len(vals)-1]
			switch name {
			case "scope":
				scope = v
			case "after":
				page.After = v
			case "limit":
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 || n > tenancy.MaxPageSize {
					writeError(w, r, s.Log, errs.Field(errs.Invalid, "limit", "limit must be a number from 1 to %d", tenancy.MaxPageSize))
					return
				}
				page.Limit = n
			default:
				writeError(w, r, s.Log, errs.Field(errs.Invalid, name, "unknown query parameter %q", name))
				return
			}
		}
		b, err := cr.Balance(r.Context(), scope, page)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, b)
	})
	mux.HandleFunc("POST /api/v1/credits/redeem", func(w http.ResponseWriter, r *http.Request) {
		var in policy.RedeemInput
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		e, err := cr.Redeem(r.Context(), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, e)
	})
	mux.HandleFunc("POST /api/v1/admin/credit-codes", func(w http.ResponseWriter, r *http.Request) {
		var in policy.CodeInput
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		codes, err := cr.CreateCodes(r.Context(), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusCreated, listResponse[*policy.CreditCode]{Items: codes})
	})
	mux.HandleFunc("GET /api/v1/admin/credit-codes", func(w http.ResponseWriter, r *http.Request) {
		f, err := filterFromQuery(r)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		if f.ParentID != "" || f.DepartmentID != "" || f.ProjectID != "" || f.UserID != "" || f.Root {
			writeError(w, r, s.Log, errs.E(errs.Invalid, "credit codes filter by tenant_id only"))
			return
		}
		codes, err := cr.Codes(r.Context(), f.TenantID, f.Page)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		resp := listResponse[*policy.CreditCode]{Items: codes}
		limit := f.Limit
		if limit == 0 {
			limit = tenancy.DefaultPageSize
		}
		if n := len(codes); n > 0 && n == limit {
			resp.Next = codes[n-1].ID
		}
		writeJSON(w, http.StatusOK, resp)
	})
}
