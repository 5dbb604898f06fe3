package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

func (s *Server) tenancyRoutes(mux *routes) {
	t := s.Tenancy
	crud(s, mux, "/api/v1/admin/tenants", t.CreateTenant, t.Tenant, t.Tenants, t.UpdateTenant, t.DeleteTenant,
		func(v *tenancy.Tenant) string { return v.ID })
	crud(s, mux, "/api/v1/admin/departments", t.CreateDepartment, t.Department, t.Departments, t.UpdateDepartment, t.DeleteDepartment,
		func(v *tenancy.Department) string { return v.ID })
	crud(s, mux, "/api/v1/admin/projects", t.CreateProject, t.Project, t.Projects, t.UpdateProject, t.DeleteProject,
		func(v *tenancy.Project) string { return v.ID })
	crud(s, mux, "/api/v1/admin/users", t.CreateUser, t.User, t.Users, t.UpdateUser, t.DeleteUser,
		func(v *tenancy.User) string { return v.ID })

	mux.HandleFunc("POST /api/v1/admin/keys", s.createKey)
	mux.HandleFunc("GET /api/v1/admin/keys", list(s, t.Keys, func(v *tenancy.Key) string { return v.ID }))
	mux.HandleFunc("GET /api/v1/admin/keys/{id}", get(s, t.Key))
	mux.HandleFunc("PATCH /api/v1/admin/keys/{id}", update(s, t.UpdateKey))
	// Deleting a key revokes it; the record stays for the audit trail.
	mux.HandleFunc("DELETE /api/v1/admin/keys/{id}", get(s, t.RevokeKey))
	mux.HandleFunc("POST /api/v1/admin/keys/{id}/revoke", get(s, t.RevokeKey))

	mux.HandleFunc("POST /api/v1/admin/memberships", create(s, t.AddMember))
	mux.HandleFunc("GET /api/v1/admin/memberships", list(s, t.Memberships, func(v *tenancy.Membership) string { return v.UserID + "@" + v.ProjectID }))
	mux.HandleFunc("GET /api/v1/admin/memberships/{user_id}/{project_id}", func(w http.ResponseWriter, r *http.Request) {
		m, err := t.Membership(r.Context(), r.PathValue("user_id"), r.PathValue("project_id"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, m)
	})
	mux.HandleFunc("DELETE /api/v1/admin/memberships/{user_id}/{project_id}", func(w http.ResponseWriter, r *http.Request) {
		if err := t.RemoveMember(r.Context(), r.PathValue("user_id"), r.PathValue("project_id")); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})

	mux.HandleFunc("GET /api/v1/admin/audit", list(s, t.Audit, func(v *tenancy.AuditEntry) string { return v.ID }, auditParam))

	// The keys Sluice forwards with to an upstream service (the LangFlow it
	// fronts) per user or project, sealed at rest; answers show hints only.
	mux.HandleFunc("GET /api/v1/admin/upstream-keys/{service}", func(w http.ResponseWriter, r *http.Request) {
		ks, err := t.UpstreamKeys(r.Context(), r.PathValue("service"), r.URL.Query().Get("tenant_id"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": ks})
	})
	mux.HandleFunc("PUT /api/v1/admin/upstream-keys/{service}/{kind}/{id}", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			APIKey string `json:"api_key"`
		}
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		k, err := t.SetUpstreamKey(r.Context(), r.PathValue("service"), r.PathValue("kind")+"/"+r.PathValue("id"), in.APIKey)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, k)
	})
	mux.HandleFunc("DELETE /api/v1/admin/upstream-keys/{service}/{kind}/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := t.DeleteUpstreamKey(r.Context(), r.PathValue("service"), r.PathValue("kind")+"/"+r.PathValue("id")); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// createKeyResponse is a new key with its secret, shown this once, and
// the limits of its scope when it was created with some.
type createKeyResponse struct {
	*tenancy.Key
	Secret string            `json:"secret"`
	Limits *policy.ScopeView `json:"limits,omitempty"`
}

// createKey creates a key; with "plan" or "limits" (a limits object, as
// PUT /api/v1/admin/limits/key/ID takes) its scope gets them in the same
// commit, so the key never works unlimited.
func (s *Server) createKey(w http.ResponseWriter, r *http.Request) {
	var in policy.KeyInput
	if err := decode(r, s.MaxBodyBytes, &in); err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	var out createKeyResponse
	var err error
	if in.Plan == "" && in.Limits == nil {
		out.Key, out.Secret, err = s.Tenancy.CreateKey(r.Context(), in.KeyInput)
	} else {
		out.Key, out.Secret, out.Limits, err = s.Policy.CreateKey(r.Context(), in)
	}
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, out)
}

// crud registers the five routes of a collection.
func crud[In, Patch any, T any](s *Server, mux *routes, base string,
	c func(context.Context, In) (T, error),
	g func(context.Context, string) (T, error),
	l func(context.Context, tenancy.Filter) ([]T, error),
	u func(context.Context, string, Patch) (T, error),
	d func(context.Context, string) error,
	idOf func(T) string,
) {
	mux.HandleFunc("POST "+base, create(s, c))
	mux.HandleFunc("GET "+base, list(s, l, idOf))
	mux.HandleFunc("GET "+base+"/{id}", get(s, g))
	mux.HandleFunc("PATCH "+base+"/{id}", update(s, u))
	mux.HandleFunc("DELETE "+base+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := d(r.Context(), r.PathValue("id")); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func create[In, T any](s *Server, fn func(context.Context, In) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in In
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		out, err := fn(r.Context(), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusCreated, out)
	}
}

func get[T any](s *Server, fn func(context.Context, string) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out, err := fn(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func update[Patch, T any](s *Server, fn func(context.Context, string, Patch) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in Patch
		if err := decode(r, s.MaxBodyBytes, &in); err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		out, err := fn(r.Context(), r.PathValue("id"), in)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// listResponse is one page of a list; Next, when set, is the `after` value
// for the following page.
type listResponse[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next,omitempty"`
}

func list[T any](s *Server, fn func(context.Context, tenancy.Filter) ([]T, error), idOf func(T) string, extra ...queryParam) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f, err := filterFromQuery(r, extra...)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		items, err := fn(r.Context(), f)
		if err != nil {
			writeError(w, r, s.Log, err)
			return
		}
		resp := listResponse[T]{Items: items}
		limit := f.Limit
		if limit == 0 {
			limit = tenancy.DefaultPageSize
		}
		if n := len(items); n > 0 && n == limit {
			resp.Next = idOf(items[n-1])
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

// queryParam reads a parameter one list has beyond the common filters
// into f; false when it does not know name.
type queryParam func(name, v string, f *tenancy.Filter) (bool, error)

// auditParam reads the audit log's filters: actor (a user or key id),
// action (exact, or a prefix ending in "." or "*"), object_kind,
// object_id, since and until (RFC 3339).
func auditParam(name, v string, f *tenancy.Filter) (bool, error) {
	a := &f.Audit
	switch name {
	case "actor":
		a.Actor = v
	case "action":
		a.Action = v
	case "object_kind":
		a.ObjectKind = v
	case "object_id":
		a.ObjectID = v
	case "since", "until":
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return true, errs.Field(errs.Invalid, name, "%s must be a time such as 2026-12-01T00:00:00Z", name)
		}
		if name == "since" {
			a.Since = t
		} else {
			a.Until = t
		}
	default:
		return false, nil
	}
	return true, nil
}

// filterFromQuery reads list filters (the common ones and the list's
// extra ones); unknown parameters are errors, so a typo never silently
// lists everything.
func filterFromQuery(r *http.Request, extra ...queryParam) (tenancy.Filter, error) {
	var f tenancy.Filter
	for name, vals := range r.URL.Query() {
		v := vals[len(vals)-1]
		switch name {
		case "tenant_id":
			f.TenantID = v
		case "parent_id":
			f.ParentID = v
		case "department_id":
			f.DepartmentID = v
		case "project_id":
			f.ProjectID = v
		case "user_id":
			f.UserID = v
		case "after":
			f.After = v
		case "root":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return f, errs.Field(errs.Invalid, "root", "root must be true or false")
			}
			f.Root = b
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > tenancy.MaxPageSize {
				return f, errs.Field(errs.Invalid, "limit", "limit must be a number from 1 to %d", tenancy.MaxPageSize)
			}
			f.Limit = n
		default:
			known := false
			for _, x := range extra {
				ok, err := x(name, v, &f)
				if err != nil {
					return f, err
				}
				known = known || ok
			}
			if !known {
				return f, errs.Field(errs.Invalid, name, "unknown query parameter %q", name)
			}
		}
	}
	return f, nil
}
