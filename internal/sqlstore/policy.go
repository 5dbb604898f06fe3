package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
)

var _ policy.Store = (*Store)(nil)

// UpdatePolicy runs fn in a read-write transaction that bumps the change
// counter.
func (s *Store) UpdatePolicy(ctx context.Context, fn func(policy.Tx) error) error {
	return s.change(ctx, func(c *conn) error { return fn(c) })
}

// ViewPolicy runs fn in a read-only transaction.
func (s *Store) ViewPolicy(ctx context.Context, fn func(policy.Tx) error) error {
	return s.tx(ctx, s.r, func(tx *sql.Tx) error { return fn(&conn{ctx: ctx, tx: tx, d: s.d}) })
}

func specJSON(sp policy.Spec) (string, error) {
	b, err := json.Marshal(sp)
	if err != nil {
		return "", errs.Wrap(err, "encode limits")
	}
	return string(b), nil
}

func parseSpec(s string) (policy.Spec, error) {
	var sp policy.Spec
	if err := json.Unmarshal([]byte(s), &sp); err != nil {
		return sp, errs.Wrap(err, "decode stored limits")
	}
	return sp, nil
}

// ---- plans ----

const planCols = "name, description, priority, limits_json, created_at, updated_at"

func scanPlan(r scanner) (*policy.Plan, error) {
	var p policy.Plan
	var limits string
	var c, u int64
	if err := r.Scan(&p.Name, &p.Description, &p.Priority, &limits, &c, &u); err != nil {
		return nil, err
	}
	sp, err := parseSpec(limits)
	if err != nil {
		return nil, err
	}
	p.Limits, p.CreatedAt, p.UpdatedAt = sp, fromMicros(c), fromMicros(u)
	return &p, nil
}

func (c *conn) Plans() ([]*policy.Plan, error) {
	rows, err := c.query(`SELECT ` + planCols + ` FROM plans ORDER BY name`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.Plan, error) { return scanPlan(r) })
}

func (c *conn) Plan(name string) (*policy.Plan, error) {
	return one(c.queryRow(`SELECT `+planCols+` FROM plans WHERE name = ?`, name), scanPlan, "plan")
}

func (c *conn) PutPlan(p *policy.Plan) error {
	limits, err := specJSON(p.Limits)
	if err != nil {
		return err
	}
	_, err = c.exec(`INSERT INTO plans (`+planCols+`) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET description = excluded.description, priority = excluded.priority,
		limits_json = excluded.limits_json, updated_at = excluded.updated_at`,
		p.Name, p.Description, string(p.Priority), limits, micros(p.CreatedAt), micros(p.UpdatedAt))
	return err
}

func (c *conn) DeletePlan(name string) error {
	res, err := c.exec(`DELETE FROM plans WHERE name = ?`, name)
	if err != nil {
		return err
	}
	return affected(res, "plan")
}

func (c *conn) PlanUsers(name string) (int, error) {
	var n int
	if err := c.queryRow(`SELECT COUNT(*) FROM scope_limits WHERE plan = ?`, name).Scan(&n); err != nil {
		return 0, c.wrap(err)
	}
	return n, nil
}

// ---- scope limits ----

const scopeCols = "scope, tenant_id, plan, limits_json, updated_at"

func scanScope(r scanner) (*policy.ScopeLimits, error) {
	var sl policy.ScopeLimits
	var limits string
	var u int64
	if err := r.Scan(&sl.Scope, &sl.TenantID, &sl.Plan, &limits, &u); err != nil {
		return nil, err
	}
	sp, g, err := parseScopeSpec(limits)
	if err != nil {
		return nil, err
	}
	sl.Limits, sl.Guaranteed, sl.UpdatedAt = sp, g, fromMicros(u)
	return &sl, nil
}

// guaranteedKey holds a scope's guarantee inside its limits_json (no
// column of its own: the limits' keys are the spec's fields, never this).
const guaranteedKey = "guaranteed"

// scopeSpecJSON encodes a scope's limits and, under guaranteedKey, its
// guarantee.
func scopeSpecJSON(sl *policy.ScopeLimits) (string, error) {
	limits, err := specJSON(sl.Limits)
	if err != nil || sl.Guaranteed == nil {
		return limits, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(limits), &m); err != nil {
		return "", errs.Wrap(err, "encode limits")
	}
	g, err := specJSON(*sl.Guaranteed)
	if err != nil {
		return "", err
	}
	m[guaranteedKey] = json.RawMessage(g)
	b, err := json.Marshal(m)
	if err != nil {
		return "", errs.Wrap(err, "encode limits")
	}
	return string(b), nil
}

// parseScopeSpec decodes what scopeSpecJSON wrote.
func parseScopeSpec(s string) (policy.Spec, *policy.Spec, error) {
	if !strings.Contains(s, `"`+guaranteedKey+`"`) {
		sp, err := parseSpec(s)
		return sp, nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return policy.Spec{}, nil, errs.Wrap(err, "decode stored limits")
	}
	raw, ok := m[guaranteedKey]
	if !ok { // the word was elsewhere, e.g. in a model's name
		sp, err := parseSpec(s)
		return sp, nil, err
	}
	g, err := parseSpec(string(raw))
	if err != nil {
		return policy.Spec{}, nil, err
	}
	delete(m, guaranteedKey)
	rest, _ := json.Marshal(m)
	sp, err := parseSpec(string(rest))
	return sp, &g, err
}

func (c *conn) ScopeLimits(scope string) (*policy.ScopeLimits, error) {
	return one(c.queryRow(`SELECT `+scopeCols+` FROM scope_limits WHERE scope = ?`, scope), scanScope, "limits for scope")
}

func (c *conn) ListScopeLimits(tenantID string) ([]*policy.ScopeLimits, error) {
	var w where
	w.eq("tenant_id", tenantID)
	q := ""
	if len(w.conds) > 0 {
		q = " WHERE " + w.conds[0]
	}
	rows, err := c.query(`SELECT `+scopeCols+` FROM scope_limits`+q+` ORDER BY scope`, w.args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.ScopeLimits, error) { return scanScope(r) })
}

func (c *conn) PutScopeLimits(sl *policy.ScopeLimits) error {
	limits, err := scopeSpecJSON(sl)
	if err != nil {
		return err
	}
	_, err = c.exec(`INSERT INTO scope_limits (`+scopeCols+`) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (scope) DO UPDATE SET tenant_id = excluded.tenant_id, plan = excluded.plan,
		limits_json = excluded.limits_json, updated_at = excluded.updated_at`,
		sl.Scope, sl.TenantID, sl.Plan, limits, micros(sl.UpdatedAt))
	return err
}

func (c *conn) DeleteScopeLimits(scope string) error {
	res, err := c.exec(`DELETE FROM scope_limits WHERE scope = ?`, scope)
	if err != nil {
		return err
	}
	return affected(res, "limits for scope")
}

// ---- grants ----

const grantCols = "id, scope, tenant_id, limits_json, reason, created_by, created_at, expires_at, revoked_at"

func scanGrant(r scanner) (*policy.Grant, error) {
	var g policy.Grant
	var limits string
	var c, e int64
	var rev sql.NullInt64
	if err := r.Scan(&g.ID, &g.Scope, &g.TenantID, &limits, &g.Reason, &g.CreatedBy, &c, &e, &rev); err != nil {
		return nil, err
	}
	sp, err := parseSpec(limits)
	if err != nil {
		return nil, err
	}
	g.Limits, g.CreatedAt, g.ExpiresAt, g.RevokedAt = sp, fromMicros(c), fromMicros(e), fromNullMicros(rev)
	return &g, nil
}

func (c *conn) InsertGrant(g *policy.Grant) error {
	limits, err := specJSON(g.Limits)
	if err != nil {
		return err
	}
	_, err = c.exec(`INSERT INTO grants (`+grantCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		g.ID, g.Scope, g.TenantID, limits, g.Reason, g.CreatedBy, micros(g.CreatedAt), micros(g.ExpiresAt), nullMicros(g.RevokedAt))
	return err
}

func (c *conn) Grant(id string) (*policy.Grant, error) {
	return one(c.queryRow(`SELECT `+grantCols+` FROM grants WHERE id = ?`, id), scanGrant, "grant")
}

func (c *conn) Grants(tenantID, scope string, activeAt time.Time) ([]*policy.Grant, error) {
	var w where
	w.eq("tenant_id", tenantID)
	w.eq("scope", scope)
	if !activeAt.IsZero() {
		w.add("revoked_at IS NULL AND expires_at > ?", micros(activeAt))
	}
	q := ""
	for i, cond := range w.conds {
		if i == 0 {
			q = " WHERE " + cond
		} else {
			q += " AND " + cond
		}
	}
	rows, err := c.query(`SELECT `+grantCols+` FROM grants`+q+` ORDER BY id`, w.args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(r *sql.Rows) (*policy.Grant, error) { return scanGrant(r) })
}

func (c *conn) UpdateGrant(g *policy.Grant) error {
	res, err := c.exec(`UPDATE grants SET revoked_at = ?, expires_at = ?, reason = ? WHERE id = ?`,
		nullMicros(g.RevokedAt), micros(g.ExpiresAt), g.Reason, g.ID)
	if err != nil {
		return err
	}
	return affected(res, "grant")
}

// ---- tree ----

func (c *conn) Tree() (*policy.Tree, error) {
	t := &policy.Tree{}
	rows, err := c.query(`SELECT id, name, timezone FROM tenants`)
	if err != nil {
		return nil, err
	}
	tenants, err := collect(rows, func(r *sql.Rows) (*policy.TreeTenant, error) {
		var v policy.TreeTenant
		return &v, r.Scan(&v.ID, &v.Name, &v.Timezone)
	})
	if err != nil {
		return nil, err
	}
	for _, v := range tenants {
		t.Tenants = append(t.Tenants, *v)
	}
	rows, err = c.query(`SELECT id, tenant_id, COALESCE(parent_id, ''), name FROM departments`)
	if err != nil {
		return nil, err
	}
	depts, err := collect(rows, func(r *sql.Rows) (*policy.TreeDepartment, error) {
		var v policy.TreeDepartment
		return &v, r.Scan(&v.ID, &v.TenantID, &v.ParentID, &v.Name)
	})
	if err != nil {
		return nil, err
	}
	for _, v := range depts {
		t.Departments = append(t.Departments, *v)
	}
	rows, err = c.query(`SELECT id, tenant_id, COALESCE(department_id, ''), name FROM projects`)
	if err != nil {
		return nil, err
	}
	projects, err := collect(rows, func(r *sql.Rows) (*policy.TreeProject, error) {
		var v policy.TreeProject
		return &v, r.Scan(&v.ID, &v.TenantID, &v.DepartmentID, &v.Name)
	})
	if err != nil {
		return nil, err
	}
	for _, v := range projects {
		t.Projects = append(t.Projects, *v)
	}
	// Only keys whose scopes have settings: driven by scope_limits, which
	// holds a few of the keys at most.
	rows, err = c.query(`SELECT k.id, k.user_id, COALESCE(k.tenant_id, '') FROM scope_limits s
		JOIN api_keys k ON k.id = substr(s.scope, 5) WHERE s.scope LIKE 'key/%'`)
	if err != nil {
		return nil, err
	}
	keys, err := collect(rows, func(r *sql.Rows) (*policy.TreeKey, error) {
		var v policy.TreeKey
		return &v, r.Scan(&v.ID, &v.UserID, &v.TenantID)
	})
	if err != nil {
		return nil, err
	}
	for _, v := range keys {
		t.Keys = append(t.Keys, *v)
	}
	return t, nil
}

// ---- settings ----

func (c *conn) Setting(name string) (string, error) {
	var v string
	err := c.queryRow(`SELECT value FROM settings WHERE name = ?`, name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", c.wrap(err)
	}
	return v, nil
}

func (c *conn) PutSetting(name, value string) error {
	_, err := c.exec(`INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, name, value, micros(time.Now()))
	return err
}
