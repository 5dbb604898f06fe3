package httpapi

import (
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/policydoc"
)

func (s *Server) policyRoutes(mux *routes) {
	p := s.Policy
	mux.HandleFunc("GET /api/v1/admin/plans", func(w http.ResponseWriter, r *http.Request) {
		plans, err := p.Plans(r.Context())
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, listResponse[*policy.Plan]{Items: plans})
	})
	mux.HandleFunc("GET /api/v1/admin/plans/{name}", func(w http.ResponseWriter, r *http.Request) {
		plan, err := p.Plan(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, plan)
	})
	mux.HandleFunc("PUT /api/v1/admin/plans/{name}", func(w http.ResponseWriter, r *http.Request) {
		var in policy.PlanInput
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		plan, err := p.PutPlan(r.Context(), r.PathValue("name"), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, plan)
	})
	mux.HandleFunc("DELETE /api/v1/admin/plans/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := p.DeletePlan(r.Context(), r.PathValue("name")); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})

	// Limits are addressed by scope name: global, tenant/ID, department/ID,
	// project/ID, user/ID, membership/USER@PROJECT.
	mux.HandleFunc("GET /api/v1/admin/limits", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		for k := range q {
			if k != "tenant_id" {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, k, "unknown query parameter %q", k))
				return
			}
		}
		out, err := p.ListLimits(r.Context(), q.Get("tenant_id"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, listResponse[*policy.ScopeLimits]{Items: out})
	})
	mux.HandleFunc("GET /api/v1/admin/limits/{scope...}", func(w http.ResponseWriter, r *http.Request) {
		v, err := p.Limits(r.Context(), r.PathValue("scope"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("PUT /api/v1/admin/limits/{scope...}", func(w http.ResponseWriter, r *http.Request) {
		var in policy.LimitsInput
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		v, err := p.SetLimits(r.Context(), r.PathValue("scope"), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("DELETE /api/v1/admin/limits/{scope...}", func(w http.ResponseWriter, r *http.Request) {
		if err := p.ClearLimits(r.Context(), r.PathValue("scope")); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})

	mux.HandleFunc("POST /api/v1/admin/grants", func(w http.ResponseWriter, r *http.Request) {
		var in policy.GrantInput
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		g, err := p.CreateGrant(r.Context(), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusCreated, g)
	})
	mux.HandleFunc("GET /api/v1/admin/grants", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		active := false
		for k, v := range q {
			switch k {
			case "tenant_id", "scope":
			case "active":
				b, err := strconv.ParseBool(v[0])
				if err != nil {
					writeError(w, r, s.Log, errs.Field(errs.Invalid, "active", "active must be true or false"))
					return
				}
				active = b
			default:
				writeError(w, r, s.Log, errs.Field(errs.Invalid, k, "unknown query parameter %q", k))
				return
			}
		}
		out, err := p.Grants(r.Context(), q.Get("tenant_id"), q.Get("scope"), active)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, listResponse[*policy.Grant]{Items: out})
	})
	mux.HandleFunc("DELETE /api/v1/admin/grants/{id}", get(s, p.RevokeGrant))

	mux.HandleFunc("GET /api/v1/admin/platform", func(w http.ResponseWriter, r *http.Request) {
		pf, err := p.Platform(r.Context())
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, pf)
	})
	mux.HandleFunc("PUT /api/v1/admin/platform", func(w http.ResponseWriter, r *http.Request) {
		var in policy.Platform
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		pf, err := p.SetPlatform(r.Context(), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, pf)
	})
}

// policyDocRoutes serve `sluice apply` and `sluice export`.
func (s *Server) policyDocRoutes(mux *routes) {
	ap := &policydoc.Applier{Tenancy: s.Tenancy, Policy: s.Policy}
	mux.HandleFunc("POST /api/v1/admin/policy", func(w http.ResponseWriter, r *http.Request) {
		dry := false
		for k, v := range r.URL.Query() {
			if k != "dry_run" {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, k, "unknown query parameter %q", k))
				return
			}
			b, err := strconv.ParseBool(v[0])
			if err != nil {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "dry_run", "dry_run must be true or false"))
				return
			}
			dry = b
		}
		doc, err := readPolicyDoc(w, r)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		changes, err := ap.Apply(r.Context(), doc, dry)
		if err != nil {
			var e *errs.Error
			if !errors.As(err, &e) {
				writeError(w, r, s.Log, err)
				return
			}
			// Name the document path in the message; keep the code and field.
			writeErrorExtra(w, r, s.Log, &errs.Error{Code: e.Code, Field: e.Field, Message: err.Error(), Err: e.Err},
				map[string]any{"applied": changes})
			return
		}
		if changes == nil {
			changes = []policydoc.Change{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"dry_run": dry, "changes": changes})
	})
	mux.HandleFunc("GET /api/v1/admin/policy", func(w http.ResponseWriter, r *http.Request) {
		format := r.URL.Query().Get("format")
		if format != "" && format != "json" && format != "yaml" {
			writeError(w, r, s.Log, errs.Field(errs.Invalid, "format", "format must be json or yaml"))
			return
		}
		doc, err := ap.Export(r.Context())
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		if format == "yaml" {
			y, err := doc.YAML()
			if err != nil {
				writeError(w, r, s.Log, err)
				return
			}
			w.Header().Set("Content-Type", "application/yaml")
			w.Write(y)
			return
		}
		writeJSON(w, http.StatusOK, doc)
	})
}

// readPolicyDoc reads a policy document (YAML or JSON) from r's body,
// bounded by policydoc.MaxSize.
func readPolicyDoc(w http.ResponseWriter, r *http.Request) (*policydoc.Document, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, policydoc.MaxSize))
	if err != nil {
		return nil, errs.E(errs.TooLarge, "policy document is larger than %d bytes", policydoc.MaxSize)
	}
	return policydoc.Parse(body)
}
