package whatif

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/policydoc"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Draft is the policy as it would stand once a document is applied: the
// live plans, tree, settings and active grants, with what the document
// sets laid over them as `sluice apply` would set it. Nothing is written.
type Draft struct {
	Snapshot *policy.Snapshot
	// Notes say what of the document the replay cannot show (a tenant
	// that does not exist yet has no history).
	Notes []string
}

// NewDraft builds the draft of doc over the live policy in store, at now.
// defaultGlobal and platform are the live policy's (policy.Manager
// DefaultGlobal, Snapshot Platform). A plan the draft names must exist in
// the document or on the server, as apply requires.
func NewDraft(ctx context.Context, store policy.Store, doc *policydoc.Document, defaultGlobal policy.Spec,
	platform policy.Platform, now time.Time) (*Draft, error) {
	var d *policy.Data
	b := &drafter{doc: doc, scopes: map[string]*policy.ScopeLimits{}}
	err := store.ViewPolicy(ctx, func(tx policy.Tx) (err error) {
		if d, err = policy.LoadData(tx, now); err != nil {
			return err
		}
		d.Platform, b.data = platform, d
		b.tx = tx
		return b.overlay()
	})
	if err != nil {
		return nil, err
	}
	return &Draft{Snapshot: policy.NewSnapshot(d, defaultGlobal, 0, now), Notes: b.notes}, nil
}

// drafter lays a document over loaded policy data.
type drafter struct {
	doc    *policydoc.Document
	data   *policy.Data
	tx     policy.Tx
	scopes map[string]*policy.ScopeLimits
	notes  []string
	fresh  int // departments the document creates
	planOK map[string]bool
}

func (b *drafter) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *drafter) overlay() error {
	d := b.data
	for _, sl := range d.Scopes {
		b.scopes[sl.Scope] = sl
	}
	plans := map[string]bool{}
	for _, p := range d.Plans {
		plans[p.Name] = true
	}
	for name, p := range b.doc.Plans {
		prio := p.Priority
		if prio == "" {
			prio = policy.PriorityNormal
		}
		np := &policy.Plan{Name: name, Description: p.Description, Priority: prio, Limits: p.Limits}
		if i := slices.IndexFunc(d.Plans, func(x *policy.Plan) bool { return x.Name == name }); i >= 0 {
			d.Plans[i] = np
		} else {
			d.Plans = append(d.Plans, np)
		}
		plans[name] = true
	}
	b.planOK = plans
	if g := b.doc.Global; g != nil {
		if err := b.set("global", policy.GlobalScope, "", g.Plan, g.Limits, nil); err != nil {
			return err
		}
	}
	for i, t := range b.doc.Tenants {
		if err := b.tenant(fmt.Sprintf("tenants[%d]", i), t); err != nil {
			return err
		}
	}
	d.Scopes = d.Scopes[:0]
	for _, sl := range b.scopes {
		d.Scopes = append(d.Scopes, sl)
	}
	return nil
}

// set gives scope the settings the document writes, as apply does: a
// scope the document names without plan, limits or guarantee keeps its
// own; otherwise they replace what it had.
func (b *drafter) set(at, scope, tenantID, plan string, limits, guaranteed *policy.Spec) error {
	if plan == "" && limits == nil && guaranteed == nil {
		return nil
	}
	if plan != "" && !b.planOK[plan] {
		return errs.Field(errs.Invalid, at+".plan", "%s.plan %q is no plan on the server or in the document", at, plan)
	}
	sl := &policy.ScopeLimits{Scope: scope, TenantID: tenantID, Plan: plan, Guaranteed: guaranteed}
	if limits != nil {
		sl.Limits = *limits
	}
	b.scopes[scope] = sl
	return nil
}

func (b *drafter) tenant(at string, t policydoc.Tenant) error {
	tree := &b.data.Tree
	i := slices.IndexFunc(tree.Tenants, func(x policy.TreeTenant) bool { return x.Name == t.Name })
	if i < 0 {
		b.note("tenant %s does not exist yet: it has no history to replay", t.Name)
		return nil
	}
	if t.Timezone != "" {
		tree.Tenants[i].Timezone = t.Timezone // its day and month windows move with it
	}
	id := tree.Tenants[i].ID
	if err := b.set(at, policy.ScopeName(policy.KindTenant, id), id, t.Plan, t.Limits, nil); err != nil {
		return err
	}
	projects := map[string]string{}
	if err := b.departments(at, id, "", t.Departments, projects); err != nil {
		return err
	}
	if err := b.projects(at, id, "", t.Projects, projects); err != nil {
		return err
	}
	return b.users(at, id, t.Users)
}

func (b *drafter) departments(at, tenantID, parentID string, want []policydoc.Department, projects map[string]string) error {
	tree := &b.data.Tree
	for j, dp := range want {
		dat := fmt.Sprintf("%s.departments[%d]", at, j)
		k := slices.IndexFunc(tree.Departments, func(x policy.TreeDepartment) bool {
			return x.TenantID == tenantID && x.ParentID == parentID && x.Name == dp.Name
		})
		var id string
		if k >= 0 {
			id = tree.Departments[k].ID
		} else {
			// A department the document creates: it has no history of
			// its own, but projects moved into it are governed by it.
			b.fresh++
			id = fmt.Sprintf("draft_%d", b.fresh)
			tree.Departments = append(tree.Departments, policy.TreeDepartment{ID: id, TenantID: tenantID, ParentID: parentID, Name: dp.Name})
		}
		if err := b.set(dat, policy.ScopeName(policy.KindDepartment, id), tenantID, dp.Plan, dp.Limits, dp.Guaranteed); err != nil {
			return err
		}
		if err := b.departments(dat, tenantID, id, dp.Departments, projects); err != nil {
			return err
		}
		if err := b.projects(dat, tenantID, id, dp.Projects, projects); err != nil {
			return err
		}
	}
	return nil
}

func (b *drafter) projects(at, tenantID, deptID string, want []policydoc.Project, ids map[string]string) error {
	tree := &b.data.Tree
	for j, p := range want {
		pat := fmt.Sprintf("%s.projects[%d]", at, j)
		k := slices.IndexFunc(tree.Projects, func(x policy.TreeProject) bool { return x.TenantID == tenantID && x.Name == p.Name })
		if k < 0 {
			continue // new: no history
		}
		tree.Projects[k].DepartmentID = deptID // apply moves it where the document puts it
		id := tree.Projects[k].ID
		ids[p.Name] = id
		if err := b.set(pat, policy.ScopeName(policy.KindProject, id), tenantID, p.Plan, p.Limits, p.Guaranteed); err != nil {
			return err
		}
	}
	return nil
}

func (b *drafter) users(at, tenantID string, want []policydoc.User) error {
	if len(want) == 0 {
		return nil
	}
	byName := map[string]*tenancy.User{}
	f := tenancy.Filter{TenantID: tenantID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}}
	for {
		page, err := b.tx.Users(f)
		if err != nil {
			return err
		}
		for _, u := range page {
			byName[u.Name] = u
		}
		if len(page) < f.Limit {
			break
		}
		f.After = page[len(page)-1].ID
	}
	for j, u := range want {
		uat := fmt.Sprintf("%s.users[%d]", at, j)
		cur := byName[u.Name]
		if cur == nil {
			continue // new: no history
		}
		if err := b.set(uat, policy.ScopeName(policy.KindUser, cur.ID), tenantID, u.Plan, u.Limits, nil); err != nil {
			return err
		}
		if len(u.Keys) == 0 {
			continue
		}
		keys, err := b.tx.Keys(tenancy.Filter{TenantID: tenantID, UserID: cur.ID, Page: tenancy.Page{Limit: tenancy.MaxPageSize}})
		if err != nil {
			return err
		}
		for k, key := range u.Keys {
			kat := fmt.Sprintf("%s.keys[%d]", uat, k)
			found, err := policydoc.FindKey(keys, key)
			if err != nil {
				return errs.Field(errs.CodeOf(err), kat, "%s: %v", kat, err)
			}
			if err := b.set(kat, policy.ScopeName(policy.KindKey, found.ID), tenantID, key.Plan, key.Limits, nil); err != nil {
				return err
			}
			b.data.Tree.Keys = append(b.data.Tree.Keys, policy.TreeKey{ID: found.ID, UserID: cur.ID, TenantID: tenantID})
		}
	}
	return nil
}

// Label names the walls' user, membership and key scopes for people
// ("user ann", "user ann in project web", "key ci of ann"); the tree's
// scopes were named by the replay. A scope whose object is gone keeps its
// id.
func (rep *Report) Label(ctx context.Context, store policy.Store, snap *policy.Snapshot) error {
	return store.ViewPolicy(ctx, func(tx policy.Tx) error {
		users := map[string]string{}
		userName := func(id string) (string, error) {
			if n, ok := users[id]; ok {
				return n, nil
			}
			u, err := tx.User(id)
			switch {
			case errs.Is(err, errs.NotFound):
				users[id] = id
			case err != nil:
				return "", err
			default:
				users[id] = u.Name
			}
			return users[id], nil
		}
		for i := range rep.Walls {
			w := &rep.Walls[i]
			kind, id, err := policy.ParseScope("scope", w.Scope)
			if err != nil {
				continue
			}
			switch kind {
			case policy.KindUser:
				n, err := userName(id)
				if err != nil {
					return err
				}
				w.Name = "user " + n
			case policy.KindMembership:
				uid, pid, _ := strings.Cut(id, "@")
				n, err := userName(uid)
				if err != nil {
					return err
				}
				w.Name = "user " + n + " in " + snap.ScopeLabel(policy.ScopeName(policy.KindProject, pid))
			case policy.KindKey:
				k, err := tx.Key(id)
				if errs.Is(err, errs.NotFound) {
					continue
				}
				if err != nil {
					return err
				}
				n, err := userName(k.UserID)
				if err != nil {
					return err
				}
				label := k.Name
				if label == "" {
					label = k.Prefix
				}
				w.Name = "key " + label + " of " + n
			}
		}
		return nil
	})
}
