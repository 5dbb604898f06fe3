package httpapi

import (
	"context"
	"net/http"
	"strconv"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// QuarantineLister lists the usage events the store refused as malformed
// and set aside (sqlstore.Store).
type QuarantineLister interface {
	UsageQuarantine(ctx context.Context, after string, limit int) ([]usage.Quarantined, error)
}

func (s *Server) usageAdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/admin/usage/quarantine", s.usageQuarantine)
}

// usageQuarantine lists quarantined usage events, oldest first, to
// platform admins: ?after=<id of the last one seen>&limit=<1..1000>.
func (s *Server) usageQuarantine(w http.ResponseWriter, r *http.Request) {
	p, _ := tenancy.PrincipalFrom(r.Context())
	if !p.IsPlatformAdmin() {
		writeError(w, r, s.Log, errs.E(errs.Forbidden, "only platform admins may read the usage quarantine"))
		return
	}
	if s.Quarantine == nil {
		writeError(w, r, s.Log, errs.E(errs.NotFound, "this server keeps no usage quarantine"))
		return
	}
	after, limit := "", tenancy.DefaultPageSize
	for name, vals := range r.URL.Query() {
		v := vals[len(vals)-1]
		switch name {
		case "after":
			after = v
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > tenancy.MaxPageSize {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "limit", "limit must be a whole number from 1 to %d", tenancy.MaxPageSize))
				return
			}
			limit = n
		default:
			writeError(w, r, s.Log, errs.Field(errs.Invalid, name, "unknown query parameter %q", name))
			return
		}
	}
	items, err := s.Quarantine.UsageQuarantine(r.Context(), after, limit)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	resp := listResponse[usage.Quarantined]{Items: items}
	if n := len(items); n > 0 && n == limit {
		resp.Next = items[n-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}
