package httpapi

import (
	"net/http"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/whatif"
)

// whatIfStore is what a what-if reads: the ledger and the live policy
// (sqlstore.Store, the store that keeps the quarantine).
type whatIfStore interface {
	whatif.Ledger
	policy.Store
}

func (s *Server) whatIfRoutes(mux *routes) {
	mux.HandleFunc("POST /api/v1/admin/policy/what-if", s.whatIf)
}

// whatIf replays the ledger of the last ?window= (default 7d) against the
// draft policy document in the body (what POST /api/v1/admin/policy takes)
// and reports what it would have denied, clamped or queued. It changes
// nothing. See docs/what-if.md.
func (s *Server) whatIf(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, _ := tenancy.PrincipalFrom(ctx)
	if p.Role != tenancy.RolePlatformAdmin && p.Role != tenancy.RoleTenantAdmin {
		writeError(w, r, s.Log, errs.E(errs.Forbidden, "a policy what-if is for admins"))
		return
	}
	store, ok := s.Quarantine.(whatIfStore)
	if !ok {
		writeError(w, r, s.Log, errs.E(errs.Unavailable, "this server keeps no usage ledger to replay"))
		return
	}
	windowText, tenantID := "7d", ""
	for name, vals := range r.URL.Query() {
		switch v := vals[len(vals)-1]; name {
		case "window":
			windowText = v
		case "tenant_id":
			tenantID = v
		default:
			writeError(w, r, s.Log, errs.Field(errs.Invalid, name, "unknown query parameter %q", name))
			return
		}
	}
	window, err := whatif.ParseWindow("window", windowText)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	doc, err := readPolicyDoc(w, r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	mgr := s.Policy.Manager()
	live := mgr.Current()
	if tenantID, err = whatif.TenantFor(p, tenantID, doc, live); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	now := time.Now()
	draft, err := whatif.NewDraft(ctx, store, doc, mgr.DefaultGlobal(), live.Platform(), now)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	rep, err := whatif.Replay(ctx, store, draft, tenantID, window, now, s.WhatIf)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	if err := rep.Label(ctx, store, draft.Snapshot); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	if rep.Walls == nil {
		rep.Walls = []whatif.Wall{}
	}
	if rep.Notes == nil {
		rep.Notes = []string{}
	}
	writeJSON(w, http.StatusOK, rep)
}
