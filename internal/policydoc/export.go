package policydoc

import (
	"context"
	"sort"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Export writes the state the caller may see as a document: all of it for
// a platform admin, its tenant for a tenant admin.
func (a *Applier) Export(ctx context.Context) (*Document, error) {
	p, ok := tenancy.PrincipalFrom(ctx)
	if !ok {
		return nil, errs.E(errs.Unauthorized, "an API key is required")
	}
	if !p.IsPlatformAdmin() && p.Role != tenancy.RoleTenantAdmin {
		return nil, errs.E(errs.Forbidden, "only admins export policy")
	}
	d := &Document{}
	settings, err := a.Policy.ListLimits(ctx, "")
	if err != nil {
		return nil, err
	}
	limits := map[string]*policy.ScopeLimits{}
	for _, sl := range settings {
		limits[sl.Scope] = sl
	}
	limited := func(scope string) (string, *policy.Spec) {
		sl, ok := limits[scope]
		if !ok {
			return "", nil
		}
		spec := sl.Limits
		return sl.Plan, &spec
	}
	guaranteed := func(scope string) *policy.Spec {
		if sl, ok := limits[scope]; ok {
			return sl.Guaranteed
		}
		return nil
	}
	if p.IsPlatformAdmin() {
		plans, err := a.Policy.Plans(ctx)
		if err != nil {
			return nil, err
		}
		d.Plans = map[string]Plan{}
		for _, pl := range plans {
			d.Plans[pl.Name] = Plan{Priority: pl.Priority, Description: pl.Description, Limits: pl.Limits}
		}
		if plan, spec := limited(policy.GlobalScope); spec != nil {
			d.Global = &Limited{Plan: plan, Limits: spec}
		}
	}
	tenants, err := all(func(f tenancy.Filter) ([]*tenancy.Tenant, error) { return a.Tenancy.Tenants(ctx, f) },
		func(t *tenancy.Tenant) string { return t.ID })
	if err != nil {
		return nil, err
	}
	for _, t := range tenants {
		dt := Tenant{Name: t.Name, DisplayName: t.DisplayName, Timezone: t.Timezone}
		dt.Plan, dt.Limits = limited(policy.ScopeName(policy.KindTenant, t.ID))
		depts, err := all(func(f tenancy.Filter) ([]*tenancy.Department, error) {
			f.TenantID = t.ID
			return a.Tenancy.Departments(ctx, f)
		}, func(x *tenancy.Department) string { return x.ID })
		if err != nil {
			return nil, err
		}
		projects, err := all(func(f tenancy.Filter) ([]*tenancy.Project, error) {
			f.TenantID = t.ID
			return a.Tenancy.Projects(ctx, f)
		}, func(x *tenancy.Project) string { return x.ID })
		if err != nil {
			return nil, err
		}
		projectName := map[string]string{}
		projectsIn := map[string][]Project{} // department id ("" = tenant) → projects
		for _, pr := range projects {
			projectName[pr.ID] = pr.Name
			dp := Project{Name: pr.Name, DisplayName: pr.DisplayName}
			dp.Plan, dp.Limits = limited(policy.ScopeName(policy.KindProject, pr.ID))
			dp.Guaranteed = guaranteed(policy.ScopeName(policy.KindProject, pr.ID))
			projectsIn[pr.DepartmentID] = append(projectsIn[pr.DepartmentID], dp)
		}
		children := map[string][]*tenancy.Department{}
		for _, dp := range depts {
			children[dp.ParentID] = append(children[dp.ParentID], dp)
		}
		var build func(parent string) []Department
		build = func(parent string) []Department {
			var out []Department
			for _, dp := range children[parent] {
				dd := Department{Name: dp.Name, DisplayName: dp.DisplayName, Projects: projectsIn[dp.ID], Departments: build(dp.ID)}
				dd.Plan, dd.Limits = limited(policy.ScopeName(policy.KindDepartment, dp.ID))
				dd.Guaranteed = guaranteed(policy.ScopeName(policy.KindDepartment, dp.ID))
				out = append(out, dd)
			}
			return out
		}
		dt.Departments = build("")
		dt.Projects = projectsIn[""]
		users, err := all(func(f tenancy.Filter) ([]*tenancy.User, error) {
			f.TenantID = t.ID
			return a.Tenancy.Users(ctx, f)
		}, func(x *tenancy.User) string { return x.ID })
		if err != nil {
			return nil, err
		}
		members, err := all(func(f tenancy.Filter) ([]*tenancy.Membership, error) {
			f.TenantID = t.ID
			return a.Tenancy.Memberships(ctx, f)
		}, func(x *tenancy.Membership) string { return x.UserID + "@" + x.ProjectID })
		if err != nil {
			return nil, err
		}
		memberOf := map[string][]string{}
		for _, m := range members {
			memberOf[m.UserID] = append(memberOf[m.UserID], projectName[m.ProjectID])
		}
		keys, err := all(func(f tenancy.Filter) ([]*tenancy.Key, error) {
			f.TenantID = t.ID
			return a.Tenancy.Keys(ctx, f)
		}, func(x *tenancy.Key) string { return x.ID })
		if err != nil {
			return nil, err
		}
		keysOf := map[string][]*tenancy.Key{}
		for _, k := range keys {
			keysOf[k.UserID] = append(keysOf[k.UserID], k)
		}
		for _, u := range users {
			du := User{Name: u.Name, DisplayName: u.DisplayName, Email: u.Email, Role: string(u.Role), Projects: memberOf[u.ID]}
			sort.Strings(du.Projects)
			du.Plan, du.Limits = limited(policy.ScopeName(policy.KindUser, u.ID))
			for _, k := range keysOf[u.ID] {
				if k.RevokedAt != nil {
					continue // its limits no longer matter
				}
				dk := docKey(keysOf[u.ID], k)
				dk.Plan, dk.Limits = limited(policy.ScopeName(policy.KindKey, k.ID))
				if dk.Plan != "" || dk.Limits != nil {
					du.Keys = append(du.Keys, dk)
				}
			}
			dt.Users = append(dt.Users, du)
		}
		d.Tenants = append(d.Tenants, dt)
	}
	return d, nil
}

// docKey names k as a document does: by its name when that is its own
// among the user's unrevoked keys, else by id.
func docKey(userKeys []*tenancy.Key, k *tenancy.Key) Key {
	if k.Name == "" {
		return Key{ID: k.ID}
	}
	for _, o := range userKeys {
		if o != k && o.RevokedAt == nil && o.Name == k.Name {
			return Key{ID: k.ID}
		}
	}
	return Key{Name: k.Name}
}
