package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// QuarantineLister lists the usage events the store refused as malformed
// and set aside (sqlstore.Store).
type QuarantineLister interface {
	UsageQuarantine(ctx context.Context, after string, limit int) ([]usage.Quarantined, error)
}

// KindRollupReader reads the usage roll-ups of the scopes of one kind
// (sqlstore.Store): the ledger's sums per scope and period.
type KindRollupReader interface {
	KindRollups(ctx context.Context, kind, tenantID string, periods []string) ([]usage.Rollup, error)
}

func (s *Server) usageAdminRoutes(mux *routes) {
	mux.HandleFunc("GET /api/v1/admin/usage/quarantine", s.usageQuarantine)
	mux.HandleFunc("GET /api/v1/admin/usage/keys", s.keySpend)
}

// rollupReader is the usage store's roll-up reader: the store that keeps
// the quarantine keeps the roll-ups too.
func (s *Server) rollupReader() (KindRollupReader, bool) {
	r, ok := s.Quarantine.(KindRollupReader)
	return r, ok
}

// keySpendItem is one key's use in a period, summed from the usage
// ledger: every event records its chain's scopes, the key's among them.
type keySpendItem struct {
	KeyID      string  `json:"key_id"`
	Scope      string  `json:"scope"`
	Name       string  `json:"name,omitempty"`
	Prefix     string  `json:"prefix,omitempty"`
	UserID     string  `json:"user_id,omitempty"`
	TenantID   string  `json:"tenant_id,omitempty"`
	Requests   int64   `json:"requests"`
	Tokens     int64   `json:"tokens"`
	GPUSeconds float64 `json:"gpu_seconds"`
	CostUSD    float64 `json:"cost_usd"`
}

// keySpend reports spend per API key in one period, by key id:
// ?period=2026-05 (a month, the default being the current one) or
// 2026-05-14 (a day), in the tenant's time zone; ?tenant_id= (platform
// admins: one tenant, else all), ?user_id= (one user's keys), and pages
// with ?after=<key id>&limit=<1..1000>. Tenant admins see their tenant's
// keys, members their own.
func (s *Server) keySpend(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, _ := tenancy.PrincipalFrom(ctx)
	var tenantID, userID, period, after string
	limit := tenancy.DefaultPageSize
	for name, vals := range r.URL.Query() {
		v := vals[len(vals)-1]
		switch name {
		case "tenant_id":
			tenantID = v
		case "user_id":
			userID = v
		case "period":
			period = v
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
	if !p.IsPlatformAdmin() {
		if tenantID != "" && tenantID != p.TenantID {
			writeError(w, r, s.Log, errs.Field(errs.NotFound, "tenant_id", "tenant %s not found", tenantID))
			return
		}
		tenantID = p.TenantID
		if !p.AdminOf(tenantID) {
			if userID != "" && userID != p.UserID {
				writeError(w, r, s.Log, errs.Field(errs.NotFound, "user_id", "user %s not found", userID))
				return
			}
			userID = p.UserID
		}
	}
	snap := s.Meter.Policy().Current()
	if period == "" {
		period = usage.MonthPeriod(time.Now(), snap.Location(tenantID))
	} else if _, _, err := usage.PeriodStart(period, time.UTC); err != nil || (len(period) != len("2006-01") && len(period) != len("2006-01-02")) {
		writeError(w, r, s.Log, errs.Field(errs.Invalid, "period", "period %q is not a month such as 2026-05 or a day such as 2026-05-14", period))
		return
	}
	reader, ok := s.rollupReader()
	if !ok {
		writeError(w, r, s.Log, errs.E(errs.NotFound, "this server keeps no usage ledger"))
		return
	}
	// A user's keys, when the report is of one user: found first, so that
	// a user of another tenant is not found rather than merely empty.
	var mine map[string]*tenancy.Key
	if userID != "" {
		if _, err := s.Tenancy.User(ctx, userID); err != nil {
			writeError(w, r, s.Log, errs.Field(errs.NotFound, "user_id", "user %s not found", userID))
			return
		}
		mine = map[string]*tenancy.Key{}
		f := tenancy.Filter{TenantID: tenantID, UserID: userID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}}
		for {
			page, err := s.Tenancy.Keys(ctx, f)
			if err != nil {
				writeError(w, r, s.Log, err)
				return
			}
			for _, k := range page {
				mine[k.ID] = k
			}
			if len(page) < f.Limit {
				break
			}
			f.After = page[len(page)-1].ID
		}
	}
	rows, err := reader.KindRollups(ctx, policy.KindKey, tenantID, []string{period})
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	items := []keySpendItem{}
	for _, ru := range rows {
		if len(items) == limit {
			break
		}
		id := strings.TrimPrefix(ru.Scope, policy.KindKey+"/")
		if id <= after {
			continue
		}
		it := keySpendItem{KeyID: id, Scope: ru.Scope, TenantID: ru.TenantID, Requests: ru.Requests, Tokens: ru.Tokens,
			GPUSeconds: float64(ru.GPUMillis) / 1000, CostUSD: float64(ru.CostMicros) / 1e6}
		k, ok := mine[id]
		if mine != nil && !ok {
			continue
		}
		if !ok {
			// The key's record, when it still exists and the caller may see it.
			k, _ = s.Tenancy.Key(ctx, id)
		}
		if k != nil {
			it.Name, it.Prefix, it.UserID = k.Name, k.Prefix, k.UserID
		}
		items = append(items, it)
	}
	resp := struct {
		Period string         `json:"period"`
		Items  []keySpendItem `json:"items"`
		Next   string         `json:"next,omitempty"`
	}{Period: period, Items: items}
	if n := len(items); n > 0 && n == limit {
		resp.Next = items[n-1].KeyID
	}
	writeJSON(w, http.StatusOK, resp)
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
