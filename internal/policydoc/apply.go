package policydoc

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Change is one thing Apply did, or would do in a dry run.
type Change struct {
	Action string `json:"action"` // create, update, set-limits, add-member
	Kind   string `json:"kind"`   // plan, tenant, department, project, user, membership, limits
	Path   string `json:"path"`   // university/cs101/group-1
	Detail string `json:"detail,omitempty"`
}

func (c Change) String() string {
	sym := map[string]string{"create": "+", "update": "~", "set-limits": "~", "add-member": "+"}[c.Action]
	s := fmt.Sprintf("%s %s %s", sym, c.Kind, c.Path)
	if c.Detail != "" {
		s += ": " + c.Detail
	}
	return s
}

// Applier applies documents through the services, as the calling principal.
type Applier struct {
	Tenancy *tenancy.Service
	Policy  *policy.Service
}

// applyRun is one Apply call's state.
type applyRun struct {
	a       *Applier
	ctx     context.Context
	dry     bool
	changes []Change
}

func (r *applyRun) note(action, kind, path, detail string) {
	r.changes = append(r.changes, Change{Action: action, Kind: kind, Path: path, Detail: detail})
}

// Apply brings the server to d. With dryRun it changes nothing and returns
// what it would do. It stops at the first error; what was applied before it
// stays applied (each step is its own audited change) and is listed.
func (a *Applier) Apply(ctx context.Context, d *Document, dryRun bool) ([]Change, error) {
	r := &applyRun{a: a, ctx: ctx, dry: dryRun}
	err := r.apply(d)
	return r.changes, err
}

func (r *applyRun) apply(d *Document) error {
	names := make([]string, 0, len(d.Plans))
	for n := range d.Plans {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := r.plan(n, d.Plans[n]); err != nil {
			return fmt.Errorf("plans.%s: %w", n, err)
		}
	}
	if d.Global != nil {
		if err := r.limits(policy.GlobalScope, "global", d.Global.Plan, d.Global.Limits, nil); err != nil {
			return fmt.Errorf("global: %w", err)
		}
	}
	tenants, err := all(func(f tenancy.Filter) ([]*tenancy.Tenant, error) { return r.a.Tenancy.Tenants(r.ctx, f) },
		func(t *tenancy.Tenant) string { return t.ID })
	if err != nil {
		return err
	}
	byName := map[string]*tenancy.Tenant{}
	for _, t := range tenants {
		byName[t.Name] = t
	}
	for i, t := range d.Tenants {
		if err := r.tenant(t, byName[t.Name]); err != nil {
			return fmt.Errorf("tenants[%d] (%s): %w", i, t.Name, err)
		}
	}
	return nil
}

func guaranteeEqual(a, b *policy.Spec) bool {
	if a == nil || b == nil {
		return a == b
	}
	return specEqual(*a, *b)
}

func specEqual(a, b policy.Spec) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func (r *applyRun) plan(name string, p Plan) error {
	cur, err := r.a.Policy.Plan(r.ctx, name)
	if err != nil && !errs.Is(err, errs.NotFound) {
		return err
	}
	prio := p.Priority
	if prio == "" {
		prio = policy.PriorityNormal
	}
	switch {
	case cur == nil:
		r.note("create", "plan", name, "")
	case cur.Priority != prio || cur.Description != p.Description || !specEqual(cur.Limits, p.Limits):
		r.note("update", "plan", name, "")
	default:
		return nil
	}
	if r.dry {
		return nil
	}
	_, err = r.a.Policy.PutPlan(r.ctx, name, policy.PlanInput{Priority: prio, Description: p.Description, Limits: p.Limits})
	return err
}

// limits sets a scope's plan and limits when the document says something
// different from what is there. In a dry run a scope whose object does not
// exist yet is simply reported.
//
// A department's or project's guarantee goes with its limits: setting
// either without guaranteed removes a guarantee the scope had (the
// document says all of a scope's settings, and export writes them all).
func (r *applyRun) limits(scope, path, plan string, spec, guaranteed *policy.Spec) error {
	if plan == "" && spec == nil && guaranteed == nil {
		return nil
	}
	want := policy.LimitsInput{Plan: plan, Guaranteed: guaranteed}
	if spec != nil {
		want.Limits = *spec
	}
	if scope != "" {
		cur, err := r.a.Policy.Limits(r.ctx, scope)
		if err != nil && !errs.Is(err, errs.NotFound) {
			return err
		}
		if cur != nil && cur.Plan == want.Plan && specEqual(cur.Limits, want.Limits) && guaranteeEqual(cur.Guaranteed, want.Guaranteed) && cur.UpdatedAt != nil {
			return nil
		}
	}
	detail := describe(want)
	r.note("set-limits", "limits", path, detail)
	if r.dry {
		return nil
	}
	_, err := r.a.Policy.SetLimits(r.ctx, scope, want)
	return err
}

func describe(in policy.LimitsInput) string {
	b, _ := json.Marshal(in.Limits)
	s := string(b)
	if in.Plan != "" {
		s = "plan " + in.Plan + ", limits " + s
	}
	if in.Guaranteed != nil {
		g, _ := json.Marshal(in.Guaranteed)
		s += ", guaranteed " + string(g)
	}
	return s
}

func (r *applyRun) tenant(t Tenant, cur *tenancy.Tenant) error {
	id := ""
	if cur == nil {
		r.note("create", "tenant", t.Name, "")
		if !r.dry {
			created, err := r.a.Tenancy.CreateTenant(r.ctx, tenancy.TenantInput{Name: t.Name, DisplayName: t.DisplayName, Timezone: t.Timezone})
			if err != nil {
				return err
			}
			id = created.ID
		}
	} else {
		id = cur.ID
		var patch tenancy.TenantPatch
		if t.Timezone != "" && t.Timezone != cur.Timezone {
			patch.Timezone = &t.Timezone
		}
		if t.DisplayName != "" && t.DisplayName != cur.DisplayName {
			patch.DisplayName = &t.DisplayName
		}
		if patch != (tenancy.TenantPatch{}) {
			r.note("update", "tenant", t.Name, "")
			if !r.dry {
				if _, err := r.a.Tenancy.UpdateTenant(r.ctx, id, patch); err != nil {
					return err
				}
			}
		}
	}
	if err := r.limits(scopeOf(policy.KindTenant, id), t.Name, t.Plan, t.Limits, nil); err != nil {
		return err
	}

	// Departments and projects.
	depts, projects := []*tenancy.Department{}, []*tenancy.Project{}
	if id != "" {
		var err error
		if depts, err = all(func(f tenancy.Filter) ([]*tenancy.Department, error) {
			f.TenantID = id
			return r.a.Tenancy.Departments(r.ctx, f)
		}, func(d *tenancy.Department) string { return d.ID }); err != nil {
			return err
		}
		if projects, err = all(func(f tenancy.Filter) ([]*tenancy.Project, error) {
			f.TenantID = id
			return r.a.Tenancy.Projects(r.ctx, f)
		}, func(p *tenancy.Project) string { return p.ID }); err != nil {
			return err
		}
	}
	projByName := map[string]*tenancy.Project{}
	for _, p := range projects {
		projByName[p.Name] = p
	}
	projectIDs := map[string]string{}
	if err := r.departments(id, t.Name, "", t.Departments, depts, projByName, projectIDs); err != nil {
		return err
	}
	if err := r.projects(id, t.Name, "", t.Projects, projByName, projectIDs); err != nil {
		return err
	}
	return r.users(id, t.Name, t.Users, projectIDs)
}

func scopeOf(kind, id string) string {
	if id == "" {
		return ""
	}
	return policy.ScopeName(kind, id)
}

func (r *applyRun) departments(tenantID, path, parentID string, want []Department, existing []*tenancy.Department,
	projByName map[string]*tenancy.Project, projectIDs map[string]string) error {
	for _, d := range want {
		dpath := path + "/" + d.Name
		var cur *tenancy.Department
		if tenantID != "" {
			for _, e := range existing {
				if e.Name == d.Name && e.ParentID == parentID && (parentID != "" || e.ParentID == "") {
					cur = e
				}
			}
		}
		id := ""
		if cur == nil {
			r.note("create", "department", dpath, "")
			if !r.dry {
				created, err := r.a.Tenancy.CreateDepartment(r.ctx, tenancy.DepartmentInput{TenantID: tenantID, ParentID: parentID, Name: d.Name, DisplayName: d.DisplayName})
				if err != nil {
					return fmt.Errorf("department %s: %w", dpath, err)
				}
				id = created.ID
			}
		} else {
			id = cur.ID
			if d.DisplayName != "" && d.DisplayName != cur.DisplayName {
				r.note("update", "department", dpath, "")
				if !r.dry {
					if _, err := r.a.Tenancy.UpdateDepartment(r.ctx, id, tenancy.DepartmentPatch{DisplayName: &d.DisplayName}); err != nil {
						return err
					}
				}
			}
		}
		if err := r.limits(scopeOf(policy.KindDepartment, id), dpath, d.Plan, d.Limits, d.Guaranteed); err != nil {
			return fmt.Errorf("department %s: %w", dpath, err)
		}
		if err := r.departments(tenantID, dpath, id, d.Departments, existing, projByName, projectIDs); err != nil {
			return err
		}
		if err := r.projects(tenantID, dpath, id, d.Projects, projByName, projectIDs); err != nil {
			return err
		}
	}
	return nil
}

func (r *applyRun) projects(tenantID, path, deptID string, want []Project, byName map[string]*tenancy.Project, ids map[string]string) error {
	for _, p := range want {
		ppath := path + "/" + p.Name
		cur := byName[p.Name]
		id := ""
		if cur == nil {
			r.note("create", "project", ppath, "")
			if !r.dry {
				created, err := r.a.Tenancy.CreateProject(r.ctx, tenancy.ProjectInput{TenantID: tenantID, DepartmentID: deptID, Name: p.Name, DisplayName: p.DisplayName})
				if err != nil {
					return fmt.Errorf("project %s: %w", ppath, err)
				}
				id = created.ID
			}
		} else {
			id = cur.ID
			var patch tenancy.ProjectPatch
			if cur.DepartmentID != deptID && (deptID != "" || !r.dry) {
				patch.DepartmentID = &deptID
			}
			if p.DisplayName != "" && p.DisplayName != cur.DisplayName {
				patch.DisplayName = &p.DisplayName
			}
			if patch != (tenancy.ProjectPatch{}) {
				r.note("update", "project", ppath, "")
				if !r.dry {
					if _, err := r.a.Tenancy.UpdateProject(r.ctx, id, patch); err != nil {
						return err
					}
				}
			}
		}
		ids[p.Name] = id
		if err := r.limits(scopeOf(policy.KindProject, id), ppath, p.Plan, p.Limits, p.Guaranteed); err != nil {
			return fmt.Errorf("project %s: %w", ppath, err)
		}
	}
	return nil
}

func (r *applyRun) users(tenantID, path string, want []User, projectIDs map[string]string) error {
	existing := []*tenancy.User{}
	if tenantID != "" {
		var err error
		if existing, err = all(func(f tenancy.Filter) ([]*tenancy.User, error) {
			f.TenantID = tenantID
			return r.a.Tenancy.Users(r.ctx, f)
		}, func(u *tenancy.User) string { return u.ID }); err != nil {
			return err
		}
	}
	byName := map[string]*tenancy.User{}
	for _, u := range existing {
		byName[u.Name] = u
	}
	for _, u := range want {
		upath := path + "/users/" + u.Name
		cur := byName[u.Name]
		id := ""
		if cur == nil {
			r.note("create", "user", upath, "")
			if !r.dry {
				created, err := r.a.Tenancy.CreateUser(r.ctx, tenancy.UserInput{TenantID: tenantID, Name: u.Name, DisplayName: u.DisplayName,
					Email: u.Email, Role: tenancy.Role(u.Role)})
				if err != nil {
					return fmt.Errorf("user %s: %w", u.Name, err)
				}
				id = created.ID
			}
		} else {
			id = cur.ID
			var patch tenancy.UserPatch
			if u.DisplayName != "" && u.DisplayName != cur.DisplayName {
				patch.DisplayName = &u.DisplayName
			}
			if u.Email != "" && u.Email != cur.Email {
				patch.Email = &u.Email
			}
			if u.Role != "" && tenancy.Role(u.Role) != cur.Role {
				role := tenancy.Role(u.Role)
				patch.Role = &role
			}
			if !reflect.DeepEqual(patch, tenancy.UserPatch{}) {
				r.note("update", "user", upath, "")
				if !r.dry {
					if _, err := r.a.Tenancy.UpdateUser(r.ctx, id, patch); err != nil {
						return fmt.Errorf("user %s: %w", u.Name, err)
					}
				}
			}
		}
		if err := r.limits(scopeOf(policy.KindUser, id), upath, u.Plan, u.Limits, nil); err != nil {
			return fmt.Errorf("user %s: %w", u.Name, err)
		}
		for _, pname := range u.Projects {
			pid := projectIDs[pname]
			if id != "" && pid != "" {
				if _, err := r.a.Tenancy.Membership(r.ctx, id, pid); err == nil {
					continue
				} else if !errs.Is(err, errs.NotFound) {
					return err
				}
			}
			r.note("add-member", "membership", upath+"@"+pname, "")
			if !r.dry {
				if _, err := r.a.Tenancy.AddMember(r.ctx, tenancy.MembershipInput{UserID: id, ProjectID: pid}); err != nil {
					return fmt.Errorf("user %s in project %s: %w", u.Name, pname, err)
				}
			}
		}
		if err := r.keys(tenantID, id, upath, u.Keys); err != nil {
			return fmt.Errorf("user %s: %w", u.Name, err)
		}
	}
	return nil
}

// keys sets the limits of a user's existing keys.
func (r *applyRun) keys(tenantID, userID, path string, want []Key) error {
	if len(want) == 0 {
		return nil
	}
	var have []*tenancy.Key
	if userID != "" {
		var err error
		if have, err = all(func(f tenancy.Filter) ([]*tenancy.Key, error) {
			f.TenantID, f.UserID = tenantID, userID
			return r.a.Tenancy.Keys(r.ctx, f)
		}, func(k *tenancy.Key) string { return k.ID }); err != nil {
			return err
		}
	}
	for i, k := range want {
		key, err := FindKey(have, k)
		if err != nil {
			return fmt.Errorf("keys[%d]: %w", i, err)
		}
		if err := r.limits(policy.ScopeName(policy.KindKey, key.ID), path+"/keys/"+k.label(), k.Plan, k.Limits, nil); err != nil {
			return fmt.Errorf("key %s: %w", k.label(), err)
		}
	}
	return nil
}

// FindKey finds the key k names among a user's keys: by id, or by name or
// prefix among the unrevoked ones, where exactly one matches.
func FindKey(have []*tenancy.Key, k Key) (*tenancy.Key, error) {
	var found []*tenancy.Key
	for _, h := range have {
		switch {
		case k.ID != "" && h.ID == k.ID,
			k.Name != "" && h.RevokedAt == nil && h.Name == k.Name,
			k.Prefix != "" && h.RevokedAt == nil && h.Prefix == k.Prefix:
			found = append(found, h)
		}
	}
	switch len(found) {
	case 0:
		return nil, errs.Field(errs.NotFound, "keys", "the user has no key %q (a policy file sets keys' limits; create keys with the API or sluice keys create)", k.label())
	case 1:
		return found[0], nil
	}
	return nil, errs.Field(errs.Invalid, "keys", "%d keys of the user match %q: name the key by id", len(found), k.label())
}

// all pages through a list.
func all[T any](list func(tenancy.Filter) ([]T, error), idOf func(T) string) ([]T, error) {
	var out []T
	f := tenancy.Filter{Page: tenancy.Page{Limit: tenancy.MaxPageSize}}
	for {
		page, err := list(f)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if len(page) < f.Limit {
			return out, nil
		}
		f.After = idOf(page[len(page)-1])
	}
}
