package sqlstore

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/tenancy"
)

var _ tenancy.Store = (*Store)(nil)

// Update runs fn in a read-write transaction and bumps the change counter
// in it, so other instances reload their view of the tree.
func (s *Store) Update(ctx context.Context, fn func(tenancy.Tx) error) error {
	return s.change(ctx, func(c *conn) error { return fn(c) })
}

// change runs fn in a write transaction that also bumps the change counter.
func (s *Store) change(ctx context.Context, fn func(*conn) error) error {
	return s.tx(ctx, s.w, func(tx *sql.Tx) error {
		c := &conn{ctx: ctx, tx: tx, d: s.d}
		if err := fn(c); err != nil {
			return err
		}
		_, err := c.exec(`UPDATE change_counter SET version = version + 1 WHERE id = 1`)
		return err
	})
}

// ChangeVersion returns the change counter: it grows with every committed
// change to the tree, the policy or the platform settings.
func (s *Store) ChangeVersion(ctx context.Context) (int64, error) {
	var v int64
	if err := s.r.QueryRowContext(ctx, `SELECT version FROM change_counter WHERE id = 1`).Scan(&v); err != nil {
		return 0, dbError(err, "read change counter")
	}
	return v, nil
}

// View runs fn in a read-only transaction.
func (s *Store) View(ctx context.Context, fn func(tenancy.Tx) error) error {
	return s.tx(ctx, s.r, func(tx *sql.Tx) error { return fn(&conn{ctx: ctx, tx: tx, d: s.d}) })
}

// ---- value conversion ----

func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

func nullMicros(t *time.Time) sql.NullInt64 {
	if t == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMicro(), Valid: true}
}

func fromNullMicros(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMicros(v.Int64)
	return &t
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

// where builds a WHERE clause from conditions that are added only when their
// value is set.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

func (w *where) eq(col, v string) {
	if v != "" {
		w.add(col+" = ?", v)
	}
}

// page appends the keyset page: ids after f.After, ascending, f.Limit rows.
func (w *where) sql(f tenancy.Filter, idCol string) (string, []any) {
	if f.After != "" {
		w.add(idCol+" > ?", f.After)
	}
	q := ""
	if len(w.conds) > 0 {
		q = " WHERE " + strings.Join(w.conds, " AND ")
	}
	q += " ORDER BY " + idCol
	limit := f.Limit
	if limit <= 0 {
		limit = tenancy.DefaultPageSize
	}
	q += " LIMIT ?"
	return q, append(w.args, limit)
}

func collect[T any](rows *sql.Rows, scan func(*sql.Rows) (*T, error)) ([]*T, error) {
	defer rows.Close()
	out := []*T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, errs.Wrap(err, "scan")
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, errs.Wrap(err, "rows")
	}
	return out, nil
}

func one[T any](row *sql.Row, scan func(scanner) (*T, error), what string) (*T, error) {
	v, err := scan(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errs.E(errs.NotFound, "%s not found", what)
	}
	if err != nil {
		return nil, dbError(err, "read "+what)
	}
	return v, nil
}

type scanner interface{ Scan(dest ...any) error }

// taken rewrites a unique-constraint conflict into a message naming what
// is taken.
func taken(err error, format string, args ...any) error {
	if errs.Is(err, errs.Conflict) {
		return errs.Field(errs.Conflict, "name", format, args...)
	}
	return err
}

// ---- tenants ----

const tenantCols = "id, name, display_name, timezone, created_at, updated_at"

func scanTenant(r scanner) (*tenancy.Tenant, error) {
	var t tenancy.Tenant
	var c, u int64
	if err := r.Scan(&t.ID, &t.Name, &t.DisplayName, &t.Timezone, &c, &u); err != nil {
		return nil, err
	}
	t.CreatedAt, t.UpdatedAt = fromMicros(c), fromMicros(u)
	return &t, nil
}

func (c *conn) InsertTenant(t *tenancy.Tenant) error {
	_, err := c.exec(`INSERT INTO tenants (`+tenantCols+`) VALUES (?, ?, ?, ?, ?, ?)`,
		t.ID, t.Name, t.DisplayName, t.Timezone, micros(t.CreatedAt), micros(t.UpdatedAt))
	return taken(err, "a tenant named %q already exists", t.Name)
}

func (c *conn) Tenant(id string) (*tenancy.Tenant, error) {
	return one(c.queryRow(`SELECT `+tenantCols+` FROM tenants WHERE id = ?`, id), scanTenant, "tenant")
}

func (c *conn) TenantByName(name string) (*tenancy.Tenant, error) {
	return one(c.queryRow(`SELECT `+tenantCols+` FROM tenants WHERE name = ?`, name), scanTenant, "tenant")
}

func (c *conn) Tenants(f tenancy.Filter) ([]*tenancy.Tenant, error) {
	var w where
	w.eq("id", f.TenantID)
	q, args := w.sql(f, "id")
	rows, err := c.query(`SELECT `+tenantCols+` FROM tenants`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.Tenant, error) { return scanTenant(r) })
}

func (c *conn) UpdateTenant(t *tenancy.Tenant) error {
	res, err := c.exec(`UPDATE tenants SET name = ?, display_name = ?, timezone = ?, updated_at = ? WHERE id = ?`,
		t.Name, t.DisplayName, t.Timezone, micros(t.UpdatedAt), t.ID)
	if err != nil {
		return taken(err, "a tenant named %q already exists", t.Name)
	}
	return affected(res, "tenant")
}

func (c *conn) DeleteTenant(id string) error {
	if err := c.dropScope("tenant/" + id); err != nil {
		return err
	}
	res, err := c.exec(`DELETE FROM tenants WHERE id = ?`, id)
	if err != nil {
		return err
	}
	return affected(res, "tenant")
}

// ---- departments ----

const departmentCols = "id, tenant_id, parent_id, name, display_name, created_at, updated_at"

func scanDepartment(r scanner) (*tenancy.Department, error) {
	var d tenancy.Department
	var parent sql.NullString
	var c, u int64
	if err := r.Scan(&d.ID, &d.TenantID, &parent, &d.Name, &d.DisplayName, &c, &u); err != nil {
		return nil, err
	}
	d.ParentID = parent.String
	d.CreatedAt, d.UpdatedAt = fromMicros(c), fromMicros(u)
	return &d, nil
}

func (c *conn) InsertDepartment(d *tenancy.Department) error {
	_, err := c.exec(`INSERT INTO departments (`+departmentCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		d.ID, d.TenantID, nullString(d.ParentID), d.Name, d.DisplayName, micros(d.CreatedAt), micros(d.UpdatedAt))
	return taken(err, "a department named %q already exists in this parent", d.Name)
}

func (c *conn) Department(id string) (*tenancy.Department, error) {
	return one(c.queryRow(`SELECT `+departmentCols+` FROM departments WHERE id = ?`, id), scanDepartment, "department")
}

func (c *conn) Departments(f tenancy.Filter) ([]*tenancy.Department, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("parent_id", f.ParentID)
	if f.Root {
		w.add("parent_id IS NULL")
	}
	q, args := w.sql(f, "id")
	rows, err := c.query(`SELECT `+departmentCols+` FROM departments`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.Department, error) { return scanDepartment(r) })
}

func (c *conn) UpdateDepartment(d *tenancy.Department) error {
	res, err := c.exec(`UPDATE departments SET parent_id = ?, name = ?, display_name = ?, updated_at = ? WHERE id = ?`,
		nullString(d.ParentID), d.Name, d.DisplayName, micros(d.UpdatedAt), d.ID)
	if err != nil {
		return taken(err, "a department named %q already exists in this parent", d.Name)
	}
	return affected(res, "department")
}

func (c *conn) DeleteDepartment(id string) error {
	if err := c.dropScope("department/" + id); err != nil {
		return err
	}
	res, err := c.exec(`DELETE FROM departments WHERE id = ?`, id)
	if err != nil {
		return err
	}
	return affected(res, "department")
}

// ---- projects ----

const projectCols = "id, tenant_id, department_id, name, display_name, created_at, updated_at"

func scanProject(r scanner) (*tenancy.Project, error) {
	var p tenancy.Project
	var dept sql.NullString
	var c, u int64
	if err := r.Scan(&p.ID, &p.TenantID, &dept, &p.Name, &p.DisplayName, &c, &u); err != nil {
		return nil, err
	}
	p.DepartmentID = dept.String
	p.CreatedAt, p.UpdatedAt = fromMicros(c), fromMicros(u)
	return &p, nil
}

func (c *conn) InsertProject(p *tenancy.Project) error {
	_, err := c.exec(`INSERT INTO projects (`+projectCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		p.ID, p.TenantID, nullString(p.DepartmentID), p.Name, p.DisplayName, micros(p.CreatedAt), micros(p.UpdatedAt))
	return taken(err, "a project named %q already exists in this tenant", p.Name)
}

func (c *conn) Project(id string) (*tenancy.Project, error) {
	return one(c.queryRow(`SELECT `+projectCols+` FROM projects WHERE id = ?`, id), scanProject, "project")
}

func (c *conn) Projects(f tenancy.Filter) ([]*tenancy.Project, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("department_id", f.DepartmentID)
	if f.Root {
		w.add("department_id IS NULL")
	}
	if f.UserID != "" {
		w.add("id IN (SELECT project_id FROM memberships WHERE user_id = ?)", f.UserID)
	}
	q, args := w.sql(f, "id")
	rows, err := c.query(`SELECT `+projectCols+` FROM projects`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.Project, error) { return scanProject(r) })
}

func (c *conn) UpdateProject(p *tenancy.Project) error {
	res, err := c.exec(`UPDATE projects SET department_id = ?, name = ?, display_name = ?, updated_at = ? WHERE id = ?`,
		nullString(p.DepartmentID), p.Name, p.DisplayName, micros(p.UpdatedAt), p.ID)
	if err != nil {
		return taken(err, "a project named %q already exists in this tenant", p.Name)
	}
	return affected(res, "project")
}

func (c *conn) DeleteProject(id string) error {
	if err := c.dropScope("project/" + id); err != nil {
		return err
	}
	// Revoked and expired keys may still name the project as their default;
	// they keep their audit record without it.
	if _, err := c.exec(`UPDATE api_keys SET project_id = NULL WHERE project_id = ?`, id); err != nil {
		return err
	}
	res, err := c.exec(`DELETE FROM projects WHERE id = ?`, id)
	if err != nil {
		return err
	}
	return affected(res, "project")
}

// ---- users ----

const userCols = "id, tenant_id, name, display_name, email, role, created_at, updated_at"

func scanUser(r scanner) (*tenancy.User, error) {
	var u tenancy.User
	var tenant sql.NullString
	var c, up int64
	if err := r.Scan(&u.ID, &tenant, &u.Name, &u.DisplayName, &u.Email, &u.Role, &c, &up); err != nil {
		return nil, err
	}
	u.TenantID = tenant.String
	u.CreatedAt, u.UpdatedAt = fromMicros(c), fromMicros(up)
	return &u, nil
}

func (c *conn) InsertUser(u *tenancy.User) error {
	_, err := c.exec(`INSERT INTO users (`+userCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		u.ID, nullString(u.TenantID), u.Name, u.DisplayName, u.Email, string(u.Role), micros(u.CreatedAt), micros(u.UpdatedAt))
	return taken(err, "a user named %q already exists in this tenant", u.Name)
}

func (c *conn) User(id string) (*tenancy.User, error) {
	return one(c.queryRow(`SELECT `+userCols+` FROM users WHERE id = ?`, id), scanUser, "user")
}

func (c *conn) Users(f tenancy.Filter) ([]*tenancy.User, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("id", f.UserID)
	if f.Root {
		w.add("tenant_id IS NULL")
	}
	if f.ProjectID != "" {
		w.add("id IN (SELECT user_id FROM memberships WHERE project_id = ?)", f.ProjectID)
	}
	q, args := w.sql(f, "id")
	rows, err := c.query(`SELECT `+userCols+` FROM users`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.User, error) { return scanUser(r) })
}

func (c *conn) UpdateUser(u *tenancy.User) error {
	res, err := c.exec(`UPDATE users SET name = ?, display_name = ?, email = ?, role = ?, updated_at = ? WHERE id = ?`,
		u.Name, u.DisplayName, u.Email, string(u.Role), micros(u.UpdatedAt), u.ID)
	if err != nil {
		return taken(err, "a user named %q already exists in this tenant", u.Name)
	}
	return affected(res, "user")
}

func (c *conn) DeleteUser(id string) error {
	if err := c.dropScope("user/" + id); err != nil {
		return err
	}
	res, err := c.exec(`DELETE FROM users WHERE id = ?`, id)
	if err != nil {
		return err
	}
	return affected(res, "user")
}

// ---- memberships ----

const membershipCols = "user_id, project_id, tenant_id, created_at"

func scanMembership(r scanner) (*tenancy.Membership, error) {
	var m tenancy.Membership
	var c int64
	if err := r.Scan(&m.UserID, &m.ProjectID, &m.TenantID, &c); err != nil {
		return nil, err
	}
	m.CreatedAt = fromMicros(c)
	return &m, nil
}

func (c *conn) InsertMembership(m *tenancy.Membership) error {
	_, err := c.exec(`INSERT INTO memberships (`+membershipCols+`) VALUES (?, ?, ?, ?)`,
		m.UserID, m.ProjectID, m.TenantID, micros(m.CreatedAt))
	if errs.Is(err, errs.Conflict) {
		return errs.Field(errs.Conflict, "user_id", "user %s is already a member of project %s", m.UserID, m.ProjectID)
	}
	return err
}

func (c *conn) Membership(userID, projectID string) (*tenancy.Membership, error) {
	return one(c.queryRow(`SELECT `+membershipCols+` FROM memberships WHERE user_id = ? AND project_id = ?`, userID, projectID),
		scanMembership, "membership")
}

func (c *conn) Memberships(f tenancy.Filter) ([]*tenancy.Membership, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("user_id", f.UserID)
	w.eq("project_id", f.ProjectID)
	// Memberships have no id of their own; page on the composite key text.
	q, args := w.sql(f, "user_id || '@' || project_id")
	rows, err := c.query(`SELECT `+membershipCols+` FROM memberships`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.Membership, error) { return scanMembership(r) })
}

func (c *conn) DeleteMembership(userID, projectID string) error {
	if err := c.dropScope("membership/" + userID + "@" + projectID); err != nil {
		return err
	}
	res, err := c.exec(`DELETE FROM memberships WHERE user_id = ? AND project_id = ?`, userID, projectID)
	if err != nil {
		return err
	}
	return affected(res, "membership")
}

func (c *conn) DeleteMemberships(f tenancy.Filter) error {
	// The memberships' limits go with them.
	// Ids hold '_', a LIKE wildcard: escape it.
	esc := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	var scopes []string
	switch {
	case f.UserID != "":
		scopes = append(scopes, esc.Replace("membership/"+f.UserID+"@")+"%")
	case f.ProjectID != "":
		scopes = append(scopes, "membership/%@"+esc.Replace(f.ProjectID))
	}
	for _, pat := range scopes {
		if _, err := c.exec(`DELETE FROM scope_limits WHERE scope LIKE ? ESCAPE '\'`, pat); err != nil {
			return err
		}
		if _, err := c.exec(`DELETE FROM grants WHERE scope LIKE ? ESCAPE '\'`, pat); err != nil {
			return err
		}
	}
	var w where
	w.eq("user_id", f.UserID)
	w.eq("project_id", f.ProjectID)
	if len(w.conds) == 0 {
		return errs.E(errs.Internal, "refusing to delete all memberships")
	}
	_, err := c.exec(`DELETE FROM memberships WHERE `+strings.Join(w.conds, " AND "), w.args...)
	return err
}

// dropScope removes the limits and grants of a scope whose object is being
// deleted, so they cannot come back to life with a reused id.
func (c *conn) dropScope(scope string) error {
	if _, err := c.exec(`DELETE FROM scope_limits WHERE scope = ?`, scope); err != nil {
		return err
	}
	if _, err := c.exec(`DELETE FROM grants WHERE scope = ?`, scope); err != nil {
		return err
	}
	// The upstream keys held for it: a tenant's all, else the scope's own.
	if tenant, ok := strings.CutPrefix(scope, "tenant/"); ok {
		_, err := c.exec(`DELETE FROM upstream_keys WHERE tenant_id = ?`, tenant)
		return err
	}
	_, err := c.exec(`DELETE FROM upstream_keys WHERE scope = ?`, scope)
	return err
}

// ---- keys ----

const keyCols = "id, prefix, name, user_id, tenant_id, project_id, hash, created_at, expires_at, revoked_at"

func scanKey(r scanner) (*tenancy.Key, error) {
	var k tenancy.Key
	var tenant, project sql.NullString
	var hash string
	var c int64
	var exp, rev sql.NullInt64
	if err := r.Scan(&k.ID, &k.Prefix, &k.Name, &k.UserID, &tenant, &project, &hash, &c, &exp, &rev); err != nil {
		return nil, err
	}
	k.TenantID, k.ProjectID = tenant.String, project.String
	h, err := hex.DecodeString(hash)
	if err != nil {
		return nil, err
	}
	k.Hash = h
	k.CreatedAt = fromMicros(c)
	k.ExpiresAt, k.RevokedAt = fromNullMicros(exp), fromNullMicros(rev)
	return &k, nil
}

func (c *conn) InsertKey(k *tenancy.Key) error {
	_, err := c.exec(`INSERT INTO api_keys (`+keyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Prefix, k.Name, k.UserID, nullString(k.TenantID), nullString(k.ProjectID), hex.EncodeToString(k.Hash),
		micros(k.CreatedAt), nullMicros(k.ExpiresAt), nullMicros(k.RevokedAt))
	if errs.Is(err, errs.Conflict) {
		return errs.E(errs.Conflict, "this key is already registered")
	}
	return err
}

func (c *conn) Key(id string) (*tenancy.Key, error) {
	return one(c.queryRow(`SELECT `+keyCols+` FROM api_keys WHERE id = ?`, id), scanKey, "key")
}

func (c *conn) KeyByHash(hash []byte) (*tenancy.Key, error) {
	return one(c.queryRow(`SELECT `+keyCols+` FROM api_keys WHERE hash = ?`, hex.EncodeToString(hash)), scanKey, "key")
}

func (c *conn) Keys(f tenancy.Filter) ([]*tenancy.Key, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	w.eq("user_id", f.UserID)
	w.eq("project_id", f.ProjectID)
	q, args := w.sql(f, "id")
	rows, err := c.query(`SELECT `+keyCols+` FROM api_keys`+q, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.Key, error) { return scanKey(r) })
}

func (c *conn) UpdateKey(k *tenancy.Key) error {
	res, err := c.exec(`UPDATE api_keys SET name = ?, project_id = ?, expires_at = ?, revoked_at = ? WHERE id = ?`,
		k.Name, nullString(k.ProjectID), nullMicros(k.ExpiresAt), nullMicros(k.RevokedAt), k.ID)
	if err != nil {
		return err
	}
	return affected(res, "key")
}

func (c *conn) DeleteRevokedKeys(userID string) error {
	now := time.Now().UnixMicro()
	// The keys' limits and grants go with them (see dropScope).
	const gone = `SELECT 'key/' || id FROM api_keys WHERE user_id = ? AND (revoked_at IS NOT NULL OR expires_at <= ?)`
	for _, table := range []string{"scope_limits", "grants"} {
		if _, err := c.exec(`DELETE FROM `+table+` WHERE scope IN (`+gone+`)`, userID, now); err != nil {
			return err
		}
	}
	_, err := c.exec(`DELETE FROM api_keys WHERE user_id = ? AND (revoked_at IS NOT NULL OR expires_at <= ?)`, userID, now)
	return err
}

func (c *conn) CountActiveKeys(f tenancy.Filter) (int, error) {
	var w where
	w.eq("user_id", f.UserID)
	w.eq("project_id", f.ProjectID)
	w.add("revoked_at IS NULL")
	w.add("(expires_at IS NULL OR expires_at > ?)", time.Now().UnixMicro())
	var n int
	if err := c.queryRow(`SELECT COUNT(*) FROM api_keys WHERE `+strings.Join(w.conds, " AND "), w.args...).Scan(&n); err != nil {
		return 0, c.wrap(err)
	}
	return n, nil
}

// ---- audit ----

const auditCols = "id, at, actor_user, actor_key, tenant_id, action, object_kind, object_id, before_json, after_json"

func (c *conn) InsertAudit(e *tenancy.AuditEntry) error {
	_, err := c.exec(`INSERT INTO audit_log (`+auditCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, micros(e.At), e.ActorUser, e.ActorKey, e.TenantID, e.Action, e.ObjectKind, e.ObjectID,
		nullString(string(e.Before)), nullString(string(e.After)))
	return err
}

func (c *conn) Audit(f tenancy.Filter) ([]*tenancy.AuditEntry, error) {
	var w where
	w.eq("tenant_id", f.TenantID)
	if f.After != "" {
		w.add("id < ?", f.After) // newest first: page backwards
	}
	a := f.Audit
	if a.Actor != "" {
		w.add("(actor_user = ? OR actor_key = ?)", a.Actor, a.Actor)
	}
	if prefix, ok := strings.CutSuffix(a.Action, "*"); ok || strings.HasSuffix(a.Action, ".") {
		if !ok {
			prefix = a.Action
		}
		esc := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(prefix)
		w.add(`action LIKE ? ESCAPE '\'`, esc+"%")
	} else {
		w.eq("action", a.Action)
	}
	w.eq("object_kind", a.ObjectKind)
	w.eq("object_id", a.ObjectID)
	if !a.Since.IsZero() {
		w.add("at >= ?", micros(a.Since))
	}
	if !a.Until.IsZero() {
		w.add("at < ?", micros(a.Until))
	}
	q := ""
	if len(w.conds) > 0 {
		q = " WHERE " + strings.Join(w.conds, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = tenancy.DefaultPageSize
	}
	rows, err := c.query(`SELECT `+auditCols+` FROM audit_log`+q+` ORDER BY id DESC LIMIT ?`, append(w.args, limit)...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.AuditEntry, error) {
		var e tenancy.AuditEntry
		var at int64
		var before, after sql.NullString
		if err := r.Scan(&e.ID, &at, &e.ActorUser, &e.ActorKey, &e.TenantID, &e.Action, &e.ObjectKind, &e.ObjectID, &before, &after); err != nil {
			return nil, err
		}
		e.At = fromMicros(at)
		if before.Valid {
			e.Before = []byte(before.String)
		}
		if after.Valid {
			e.After = []byte(after.String)
		}
		return &e, nil
	})
}

// ---- upstream keys ----

const upstreamKeyCols = "tenant_id, service, scope, sealed, hint, updated_by, updated_at"

func scanUpstreamKey(r scanner) (*tenancy.UpstreamKey, error) {
	var k tenancy.UpstreamKey
	var at int64
	if err := r.Scan(&k.TenantID, &k.Service, &k.Scope, &k.Sealed, &k.Hint, &k.UpdatedBy, &at); err != nil {
		return nil, err
	}
	k.UpdatedAt = fromMicros(at)
	return &k, nil
}

func (c *conn) PutUpstreamKey(k *tenancy.UpstreamKey) error {
	_, err := c.exec(`INSERT INTO upstream_keys (`+upstreamKeyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, service, scope) DO UPDATE SET sealed = excluded.sealed, hint = excluded.hint,
		updated_by = excluded.updated_by, updated_at = excluded.updated_at`,
		k.TenantID, k.Service, k.Scope, k.Sealed, k.Hint, k.UpdatedBy, micros(k.UpdatedAt))
	return err
}

func (c *conn) UpstreamKey(tenantID, service, scope string) (*tenancy.UpstreamKey, error) {
	return one(c.queryRow(`SELECT `+upstreamKeyCols+` FROM upstream_keys WHERE tenant_id = ? AND service = ? AND scope = ?`,
		tenantID, service, scope), scanUpstreamKey, "upstream key")
}

func (c *conn) UpstreamKeys(tenantID, service string) ([]*tenancy.UpstreamKey, error) {
	var w where
	w.eq("tenant_id", tenantID) // "" lists every tenant's
	w.eq("service", service)
	rows, err := c.query(`SELECT `+upstreamKeyCols+` FROM upstream_keys WHERE `+strings.Join(w.conds, " AND ")+` ORDER BY tenant_id, scope`, w.args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*tenancy.UpstreamKey, error) { return scanUpstreamKey(r) })
}

func (c *conn) DeleteUpstreamKey(tenantID, service, scope string) error {
	res, err := c.exec(`DELETE FROM upstream_keys WHERE tenant_id = ? AND service = ? AND scope = ?`, tenantID, service, scope)
	if err != nil {
		return err
	}
	return affected(res, "upstream key")
}
