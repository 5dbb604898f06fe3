package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/sluicehq/sluice/internal/client"
	"github.com/sluicehq/sluice/internal/errs"
)

// named is an object as the name resolver sees it.
type named struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	TenantID     string `json:"tenant_id"`
	EndpointName string `json:"endpoint_name"` // flows
}

// kinds are the objects the CLI finds by name: where they are listed and
// the prefix of their ids.
var kinds = map[string]struct{ path, prefix string }{
	"tenant":     {"/api/v1/admin/tenants", "ten"},
	"department": {"/api/v1/admin/departments", "dep"},
	"project":    {"/api/v1/admin/projects", "prj"},
	"user":       {"/api/v1/admin/users", "usr"},
	"key":        {"/api/v1/admin/keys", "key"},
	"flow":       {"/api/v1/flows", "flw"},
}

// nameShape is what a name may be (tenancy's rule); anything else is
// sent as written, for the server to judge.
var nameShape = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// idShape is an id as package id makes them: prefix, '_', 26 characters
// of Crockford base32.
var idShape = regexp.MustCompile(`^[a-z]{2,4}_[0-9a-hjkmnp-tv-z]{26}$`)

// resolver turns names into ids through the API's list endpoints, each
// list fetched once per command.
type resolver struct {
	ctx   context.Context
	c     *client.Client
	lists map[string][]named
}

// list returns every object of kind the caller may see (of tenant, when
// set), following the pages.
func (r *resolver) list(kind, tenant string) ([]named, error) {
	key := kind + "|" + tenant
	if l, ok := r.lists[key]; ok {
		return l, nil
	}
	q := url.Values{"limit": {"1000"}}
	if tenant != "" && kind != "tenant" {
		q.Set("tenant_id", tenant)
	}
	var out []named
	for {
		var page struct {
			Items []named `json:"items"`
			Next  string  `json:"next"`
		}
		if err := r.c.Do(r.ctx, http.MethodGet, kinds[kind].path, q, nil, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Items...)
		if page.Next == "" || len(page.Items) == 0 {
			break
		}
		q.Set("after", page.Next)
	}
	r.lists[key] = out
	return out, nil
}

// id resolves value, a name or an id of kind, within tenant when set.
// flag names the command-line flag in errors ("" for an argument).
func (r *resolver) id(kind, tenant, value, flag string) (string, error) {
	if value == "" {
		return "", nil
	}
	if idShape.MatchString(value) && strings.HasPrefix(value, kinds[kind].prefix+"_") || !nameShape.MatchString(value) {
		return value, nil
	}
	items, err := r.list(kind, tenant)
	if err != nil {
		return "", fmt.Errorf("finding %s %q: %w", kind, value, err)
	}
	var hits []named
	for _, it := range items {
		if it.Name == value || it.ID == value {
			hits = append(hits, it)
		}
	}
	field, prefix := flag, ""
	if flag != "" {
		prefix = "--" + flag + ": "
	} else {
		field = kind
	}
	where := ""
	if tenant != "" && kind != "tenant" {
		where = " in tenant " + r.nameOf("tenant", tenant)
	}
	switch len(hits) {
	case 1:
		return hits[0].ID, nil
	case 0:
		var names []string
		for _, it := range items {
			if it.Name != "" && len(names) < 20 {
				names = append(names, it.Name)
			}
		}
		there := "there are none you can see"
		if len(names) > 0 {
			there = "there are: " + strings.Join(names, ", ")
			if len(items) > len(names) {
				there += ", …"
			}
		}
		return "", errs.Field(errs.NotFound, field, "%sno %s named %q%s; %s", prefix, kind, value, where, there)
	}
	var cands []string
	for _, h := range hits {
		c := h.ID
		if h.TenantID != "" {
			c += " in tenant " + r.nameOf("tenant", h.TenantID)
		}
		cands = append(cands, c)
	}
	hint := "give the id"
	if kind != "tenant" && tenant == "" {
		hint = "add --tenant NAME, or give the id"
	}
	return "", errs.Field(errs.Invalid, field, "%s%d %ss are named %q%s: %s; %s", prefix, len(hits), kind, value, where, strings.Join(cands, ", "), hint)
}

// scope resolves the names in a scope: project/group-1 is project/prj_…,
// membership/alice@group-1 is membership/usr_…@prj_…. Scopes it does not
// know are left for the server to judge.
func (r *resolver) scope(tenant, s, flag string) (string, error) {
	kind, val, ok := strings.Cut(s, "/")
	if !ok || val == "" {
		return s, nil
	}
	switch kind {
	case "tenant", "department", "project", "user", "key":
		id, err := r.id(kind, tenant, val, flag)
		if err != nil {
			return "", err
		}
		return kind + "/" + id, nil
	case "membership":
		u, p, ok := strings.Cut(val, "@")
		if !ok {
			return s, nil
		}
		uid, err := r.id("user", tenant, u, flag)
		if err != nil {
			return "", err
		}
		pid, err := r.id("project", tenant, p, flag)
		if err != nil {
			return "", err
		}
		return "membership/" + uid + "@" + pid, nil
	}
	return s, nil
}

// nameOf is the name of the object id of kind, for people: the id itself
// when it cannot be found (another tenant's, or not listable by the
// caller).
func (r *resolver) nameOf(kind, id string) string {
	if id == "" || r == nil {
		return id
	}
	items, err := r.list(kind, "")
	if err != nil {
		return id
	}
	for _, it := range items {
		if it.ID == id && it.Name != "" {
			return it.Name
		}
	}
	return id
}

// scopeName writes a scope with names: project/prj_… is "project group-1".
func (r *resolver) scopeName(s string) string {
	kind, val, ok := strings.Cut(s, "/")
	if !ok {
		return s
	}
	switch kind {
	case "tenant", "department", "project", "user", "key":
		return kind + "/" + r.nameOf(kind, val)
	case "membership":
		if u, p, ok := strings.Cut(val, "@"); ok {
			return kind + "/" + r.nameOf("user", u) + "@" + r.nameOf("project", p)
		}
	}
	return s
}
