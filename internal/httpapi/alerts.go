package httpapi

import (
	"net/http"
	"strconv"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// alertRoutes serves the tenants' alert webhooks and the delivery log
// (docs/alerts.md).
func (s *Server) alertRoutes(mux *routes) {
	mux.HandleFunc("PUT /api/v1/admin/alerts/webhook", s.putAlertWebhook)
	mux.HandleFunc("GET /api/v1/admin/alerts/webhook", s.getAlertWebhook)
	mux.HandleFunc("DELETE /api/v1/admin/alerts/webhook", s.deleteAlertWebhook)
	mux.HandleFunc("GET /api/v1/admin/alerts/deliveries", s.alertDeliveries)
}

// alertsOff answers when the server runs no alerts.
func (s *Server) alertsOff(w http.ResponseWriter, r *http.Request) bool {
	if s.Alerts == nil {
		writeError(w, r, s.Log, errs.E(errs.NotFound, "threshold alerts are off on this server (alerts.enabled)"))
		return true
	}
	return false
}

// tenantQuery reads the only query parameter the webhook routes take.
func tenantQuery(r *http.Request) (string, error) {
	tenantID := ""
	for name, vals := range r.URL.Query() {
		if name != "tenant_id" {
			return "", errs.Field(errs.Invalid, name, "unknown query parameter %q", name)
		}
		tenantID = vals[len(vals)-1]
	}
	return tenantID, nil
}

func (s *Server) putAlertWebhook(w http.ResponseWriter, r *http.Request) {
	if s.alertsOff(w, r) {
		return
	}
	var in struct {
		TenantID string `json:"tenant_id"`
		URL      string `json:"url"`
		Secret   string `json:"secret"`
	}
	if err := decode(r, s.MaxBodyBytes, &in); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	out, err := s.Alerts.SetWebhook(r.Context(), in.TenantID, in.URL, in.Secret)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store") // a generated secret is in it
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getAlertWebhook(w http.ResponseWriter, r *http.Request) {
	if s.alertsOff(w, r) {
		return
	}
	tenantID, err := tenantQuery(r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	hook, err := s.Alerts.Webhook(r.Context(), tenantID)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, hook)
}

func (s *Server) deleteAlertWebhook(w http.ResponseWriter, r *http.Request) {
	if s.alertsOff(w, r) {
		return
	}
	tenantID, err := tenantQuery(r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	if err := s.Alerts.DeleteWebhook(r.Context(), tenantID); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// alertDeliveries lists the delivery log, newest first: ?tenant_id=
// (platform admins), ?target=tenant|global, ?status=pending|delivered|failed,
// ?after=<the last id seen>&limit=<1..1000>.
func (s *Server) alertDeliveries(w http.ResponseWriter, r *http.Request) {
	if s.alertsOff(w, r) {
		return
	}
	f := alerts.DeliveryFilter{Limit: tenancy.DefaultPageSize}
	for name, vals := range r.URL.Query() {
		v := vals[len(vals)-1]
		switch name {
		case "tenant_id":
			f.TenantID = v
		case "target":
			f.Target = v
		case "status":
			f.Status = v
		case "after":
			f.Before = v // newest first: the page after is older
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > tenancy.MaxPageSize {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "limit", "limit must be a whole number from 1 to %d", tenancy.MaxPageSize))
				return
			}
			f.Limit = n
		default:
			writeError(w, r, s.Log, errs.Field(errs.Invalid, name, "unknown query parameter %q", name))
			return
		}
	}
	items, err := s.Alerts.Deliveries(r.Context(), f)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	resp := listResponse[*alerts.Delivery]{Items: items}
	if n := len(items); n > 0 && n == f.Limit {
		resp.Next = items[n-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}
