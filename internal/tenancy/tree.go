package tenancy

import (
	"context"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
)

// MaxDepartmentDepth bounds how deeply departments nest, which bounds every
// request's scope chain.
const MaxDepartmentDepth = 8

// ---- departments ----

// DepartmentInput creates a department. ParentID empty puts it directly under
// the tenant.
type DepartmentInput struct {
	TenantID    string `json:"tenant_id"`
	ParentID    string `json:"parent_id"`
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
}

// DepartmentPatch changes a department; setting ParentID moves it ("" moves
// it to the tenant root).
type DepartmentPatch struct {
	ParentID    *string `json:"parent_id"`
	Name        *string `json:"name"`
	DisplayName *string `json:"display_name"`
}

// departmentPath returns the ancestors of deptID from the department itself
// up to the tenant root.
func departmentPath(tx Tx, deptID string) ([]*Department, error) {
	var path []*Department
	for cur := deptID; cur != ""; {
		d, err := tx.Department(cur)
		if err != nil {
			return nil, err
		}
		path = append(path, d)
		if len(path) > MaxDepartmentDepth+1 {
			return nil, errs.E(errs.Internal, "department tree deeper than %d at %s", MaxDepartmentDepth, deptID)
		}
		cur = d.ParentID
	}
	return path, nil
}

// checkParent validates that parentID is a department of tenantID that can
// hold a subtree of the given height (1 for a leaf), and that it is not the
// moved department itself or one of its descendants.
func checkParent(tx Tx, tenantID, parentID, movingID string, height int) error {
	if parentID == "" {
		return nil
	}
	parent, err := tx.Department(parentID)
	if errs.Is(err, errs.NotFound) || (err == nil && parent.TenantID != tenantID) {
		return errs.Field(errs.Invalid, "parent_id", "parent department %s not found in this tenant", parentID)
	}
	if err != nil {
		return err
	}
	path, err := departmentPath(tx, parentID)
	if err != nil {
		return err
	}
	for _, d := range path {
		if movingID != "" && d.ID == movingID {
			return errs.Field(errs.Invalid, "parent_id", "moving department %s under %s would make a cycle", movingID, parentID)
		}
	}
	if len(path)+height > MaxDepartmentDepth {
		return errs.Field(errs.Invalid, "parent_id", "departments may nest at most %d deep", MaxDepartmentDepth)
	}
	return nil
}

// subtreeHeight is the number of department levels from d down (1 for a leaf).
func subtreeHeight(tx Tx, deptID string, depth int) (int, error) {
	if depth > MaxDepartmentDepth {
		return depth, nil
	}
	children, err := tx.Departments(Filter{ParentID: deptID, Page: Page{Limit: MaxPageSize}})
	if err != nil {
		return 0, err
	}
	h := 1
	for _, c := range children {
		ch, err := subtreeHeight(tx, c.ID, depth+1)
		if err != nil {
			return 0, err
		}
		h = max(h, ch+1)
	}
	return h, nil
}

func (d *Department) check() error {
	if d.TenantID == "" {
		return errs.Field(errs.Invalid, "tenant_id", "tenant_id is required")
	}
	if err := ValidName("name", d.Name); err != nil {
		return err
	}
	return validDisplayName(d.DisplayName)
}

// tenantFor resolves the tenant a new object goes into: the given one, else
// the caller's own.
func tenantFor(p Principal, tenantID string) string {
	if tenantID == "" && !p.IsPlatformAdmin() {
		return p.TenantID
	}
	return tenantID
}

func requireTenant(tx Tx, tenantID string) error {
	if _, err := tx.Tenant(tenantID); errs.Is(err, errs.NotFound) {
		return errs.Field(errs.Invalid, "tenant_id", "tenant %s not found", tenantID)
	} else if err != nil {
		return err
	}
	return nil
}

// CreateDepartment creates a department.
func (s *Service) CreateDepartment(ctx context.Context, in DepartmentInput) (*Department, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	d := &Department{ID: id.NewAt("dep", now), TenantID: tenantFor(p, in.TenantID), ParentID: in.ParentID, Name: in.Name, DisplayName: in.DisplayName, CreatedAt: now, UpdatedAt: now}
	if err := d.check(); err != nil {
		return nil, err
	}
	if err := mayAdmin(p, d.TenantID, "tenant"); err != nil {
		return nil, err
	}
	err = s.update(ctx, func(tx Tx) error {
		if err := requireTenant(tx, d.TenantID); err != nil {
			return err
		}
		if err := checkParent(tx, d.TenantID, d.ParentID, "", 1); err != nil {
			return err
		}
		if err := tx.InsertDepartment(d); err != nil {
			return err
		}
		return s.audit(tx, p, d.TenantID, "department.create", "department", d.ID, nil, d)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Department returns one department.
func (s *Service) Department(ctx context.Context, deptID string) (*Department, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var d *Department
	err = s.store.View(ctx, func(tx Tx) (err error) {
		if d, err = tx.Department(deptID); err != nil {
			return err
		}
		return mayAdmin(p, d.TenantID, "department")
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Departments lists departments.
func (s *Service) Departments(ctx context.Context, f Filter) ([]*Department, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if f, err = pageOf(f); err != nil {
		return nil, err
	}
	if f, err = scopeToTenant(p, f); err != nil {
		return nil, err
	}
	if !p.IsPlatformAdmin() {
		if err := mayAdmin(p, f.TenantID, "departments"); err != nil {
			return nil, err
		}
	}
	var out []*Department
	err = s.store.View(ctx, func(tx Tx) (err error) {
		out, err = tx.Departments(f)
		return err
	})
	return out, err
}

// UpdateDepartment renames or moves a department.
func (s *Service) UpdateDepartment(ctx context.Context, deptID string, in DepartmentPatch) (*Department, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var d *Department
	err = s.update(ctx, func(tx Tx) error {
		before, err := tx.Department(deptID)
		if err != nil {
			return err
		}
		if err := mayAdmin(p, before.TenantID, "department"); err != nil {
			return err
		}
		after := *before
		setIf(&after.Name, in.Name)
		setIf(&after.DisplayName, in.DisplayName)
		setIf(&after.ParentID, in.ParentID)
		if err := after.check(); err != nil {
			return err
		}
		if after.ParentID != before.ParentID {
			h, err := subtreeHeight(tx, deptID, 1)
			if err != nil {
				return err
			}
			if err := checkParent(tx, after.TenantID, after.ParentID, deptID, h); err != nil {
				return err
			}
		}
		after.UpdatedAt = s.now().UTC()
		if err := tx.UpdateDepartment(&after); err != nil {
			return err
		}
		d = &after
		return s.audit(tx, p, d.TenantID, "department.update", "department", d.ID, before, d)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// DeleteDepartment deletes a department that holds no departments or projects.
func (s *Service) DeleteDepartment(ctx context.Context, deptID string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx Tx) error {
		d, err := tx.Department(deptID)
		if err != nil {
			return err
		}
		if err := mayAdmin(p, d.TenantID, "department"); err != nil {
			return err
		}
		if cs, err := tx.Departments(Filter{ParentID: deptID, Page: Page{Limit: 1}}); err != nil {
			return err
		} else if len(cs) > 0 {
			return errs.Field(errs.Conflict, "departments", "department %s still has departments; delete or move them first", d.Name)
		}
		if ps, err := tx.Projects(Filter{DepartmentID: deptID, Page: Page{Limit: 1}}); err != nil {
			return err
		} else if len(ps) > 0 {
			return errs.Field(errs.Conflict, "projects", "department %s still has projects; delete or move them first", d.Name)
		}
		if err := tx.DeleteDepartment(deptID); err != nil {
			return err
		}
		return s.audit(tx, p, d.TenantID, "department.delete", "department", deptID, d, nil)
	})
}

// ---- projects ----

// ProjectInput creates a project. DepartmentID empty puts it directly under
// the tenant.
type ProjectInput struct {
	TenantID     string `json:"tenant_id"`
	DepartmentID string `json:"department_id"`
	Name         string `json:"name"`
	DisplayName  string `json:"display_name"`
}

// ProjectPatch changes a project; setting DepartmentID moves it.
type ProjectPatch struct {
	DepartmentID *string `json:"department_id"`
	Name         *string `json:"name"`
	DisplayName  *string `json:"display_name"`
}

func (pr *Project) check() error {
	if pr.TenantID == "" {
		return errs.Field(errs.Invalid, "tenant_id", "tenant_id is required")
	}
	if err := ValidName("name", pr.Name); err != nil {
		return err
	}
	return validDisplayName(pr.DisplayName)
}

func checkProjectDepartment(tx Tx, tenantID, deptID string) error {
	if deptID == "" {
		return nil
	}
	d, err := tx.Department(deptID)
	if errs.Is(err, errs.NotFound) || (err == nil && d.TenantID != tenantID) {
		return errs.Field(errs.Invalid, "department_id", "department %s not found in this tenant", deptID)
	}
	return err
}

// CreateProject creates a project.
func (s *Service) CreateProject(ctx context.Context, in ProjectInput) (*Project, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	pr := &Project{ID: id.NewAt("prj", now), TenantID: tenantFor(p, in.TenantID), DepartmentID: in.DepartmentID, Name: in.Name, DisplayName: in.DisplayName, CreatedAt: now, UpdatedAt: now}
	if err := pr.check(); err != nil {
		return nil, err
	}
	if err := mayAdmin(p, pr.TenantID, "tenant"); err != nil {
		return nil, err
	}
	err = s.update(ctx, func(tx Tx) error {
		if err := requireTenant(tx, pr.TenantID); err != nil {
			return err
		}
		if err := checkProjectDepartment(tx, pr.TenantID, pr.DepartmentID); err != nil {
			return err
		}
		if err := tx.InsertProject(pr); err != nil {
			return err
		}
		return s.audit(tx, p, pr.TenantID, "project.create", "project", pr.ID, nil, pr)
	})
	if err != nil {
		return nil, err
	}
	return pr, nil
}

// Project returns one project. Members see the projects they belong to.
func (s *Service) Project(ctx context.Context, projectID string) (*Project, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var pr *Project
	err = s.store.View(ctx, func(tx Tx) (err error) {
		if pr, err = tx.Project(projectID); err != nil {
			return err
		}
		if p.AdminOf(pr.TenantID) {
			return nil
		}
		if _, err := tx.Membership(p.UserID, projectID); err == nil {
			return nil
		}
		return errs.E(errs.NotFound, "project not found")
	})
	if err != nil {
		return nil, err
	}
	return pr, nil
}

// Projects lists projects: all of a tenant for its admins, a member's own
// projects for a member.
func (s *Service) Projects(ctx context.Context, f Filter) ([]*Project, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if f, err = pageOf(f); err != nil {
		return nil, err
	}
	if f, err = scopeToTenant(p, f); err != nil {
		return nil, err
	}
	if !p.AdminOf(f.TenantID) {
		f.UserID = p.UserID // the store joins memberships
	}
	var out []*Project
	err = s.store.View(ctx, func(tx Tx) (err error) {
		out, err = tx.Projects(f)
		return err
	})
	return out, err
}

// UpdateProject renames or moves a project.
func (s *Service) UpdateProject(ctx context.Context, projectID string, in ProjectPatch) (*Project, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var pr *Project
	err = s.update(ctx, func(tx Tx) error {
		before, err := tx.Project(projectID)
		if err != nil {
			return err
		}
		if err := mayAdmin(p, before.TenantID, "project"); err != nil {
			return err
		}
		after := *before
		setIf(&after.Name, in.Name)
		setIf(&after.DisplayName, in.DisplayName)
		setIf(&after.DepartmentID, in.DepartmentID)
		if err := after.check(); err != nil {
			return err
		}
		if err := checkProjectDepartment(tx, after.TenantID, after.DepartmentID); err != nil {
			return err
		}
		after.UpdatedAt = s.now().UTC()
		if err := tx.UpdateProject(&after); err != nil {
			return err
		}
		pr = &after
		return s.audit(tx, p, pr.TenantID, "project.update", "project", pr.ID, before, pr)
	})
	if err != nil {
		return nil, err
	}
	return pr, nil
}

// DeleteProject deletes a project with no active keys bound to it. Its
// memberships go with it.
func (s *Service) DeleteProject(ctx context.Context, projectID string) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx Tx) error {
		pr, err := tx.Project(projectID)
		if err != nil {
			return err
		}
		if err := mayAdmin(p, pr.TenantID, "project"); err != nil {
			return err
		}
		if n, err := tx.CountActiveKeys(Filter{ProjectID: projectID}); err != nil {
			return err
		} else if n > 0 {
			return errs.Field(errs.Conflict, "keys", "project %s is the default project of %d active keys; revoke them first", pr.Name, n)
		}
		if err := tx.DeleteMemberships(Filter{ProjectID: projectID}); err != nil {
			return err
		}
		if err := tx.DeleteProject(projectID); err != nil {
			return err
		}
		return s.audit(tx, p, pr.TenantID, "project.delete", "project", projectID, pr, nil)
	})
}
