// Package policydoc is the declarative policy file of `sluice apply` and
// `sluice export`: plans, the tenancy tree, memberships and limits (API
// keys' included) in one YAML (or JSON) document. Apply brings the server to the document through
// the same services as the API (so the same rules, roles and audit apply)
// and only ever creates or updates: nothing absent from the document is
// deleted. Export writes the current state in the same shape, so exporting
// and applying again changes nothing.
package policydoc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// Document is a policy file.
type Document struct {
	Plans   map[string]Plan `json:"plans,omitempty"`
	Global  *Limited        `json:"global,omitempty"`
	Tenants []Tenant        `json:"tenants,omitempty"`
}

// Plan is a plan in a document.
type Plan struct {
	Priority    policy.Priority `json:"priority,omitempty"`
	Description string          `json:"description,omitempty"`
	Limits      policy.Spec     `json:"limits"`
}

// Limited is the part every scope has: an optional plan and limits. When
// both are absent the scope's limits are left as they are.
type Limited struct {
	Plan   string       `json:"plan,omitempty"`
	Limits *policy.Spec `json:"limits,omitempty"`
}

// Tenant is a tenant and everything under it.
type Tenant struct {
	Name        string       `json:"name"`
	DisplayName string       `json:"display_name,omitempty"`
	Timezone    string       `json:"timezone,omitempty"`
	Plan        string       `json:"plan,omitempty"`
	Limits      *policy.Spec `json:"limits,omitempty"`
	Departments []Department `json:"departments,omitempty"`
	Projects    []Project    `json:"projects,omitempty"`
	Users       []User       `json:"users,omitempty"`
}

// Department is a department and what it holds.
type Department struct {
	Name        string       `json:"name"`
	DisplayName string       `json:"display_name,omitempty"`
	Plan        string       `json:"plan,omitempty"`
	Limits      *policy.Spec `json:"limits,omitempty"`
	// Guaranteed is the department's share of its parent's limits.
	Guaranteed  *policy.Spec `json:"guaranteed,omitempty"`
	Departments []Department `json:"departments,omitempty"`
	Projects    []Project    `json:"projects,omitempty"`
}

// Project is a project.
type Project struct {
	Name        string       `json:"name"`
	DisplayName string       `json:"display_name,omitempty"`
	Plan        string       `json:"plan,omitempty"`
	Limits      *policy.Spec `json:"limits,omitempty"`
	// Guaranteed is the project's share of its parent's limits.
	Guaranteed *policy.Spec `json:"guaranteed,omitempty"`
}

// User is a user, the projects they belong to, and their limits.
type User struct {
	Name        string       `json:"name"`
	DisplayName string       `json:"display_name,omitempty"`
	Email       string       `json:"email,omitempty"`
	Role        string       `json:"role,omitempty"`
	Plan        string       `json:"plan,omitempty"`
	Limits      *policy.Spec `json:"limits,omitempty"`
	Projects    []string     `json:"projects,omitempty"`
	Keys        []Key        `json:"keys,omitempty"`
}

// Key sets the limits of one of its user's API keys, named by exactly one
// of its id, its name (when no other unrevoked key of the user bears it)
// or its visible prefix ("slk_AbCdEfGh"). A document never creates keys:
// a key's secret is shown once, to whoever creates it.
type Key struct {
	ID     string       `json:"id,omitempty"`
	Name   string       `json:"name,omitempty"`
	Prefix string       `json:"prefix,omitempty"`
	Plan   string       `json:"plan,omitempty"`
	Limits *policy.Spec `json:"limits,omitempty"`
}

// label is how the key is named in the document.
func (k Key) label() string {
	switch {
	case k.ID != "":
		return k.ID
	case k.Name != "":
		return k.Name
	}
	return k.Prefix
}

// MaxSize bounds a policy document.
const MaxSize = 4 << 20

// Parse reads a document from YAML or JSON (JSON is YAML). Unknown fields
// are errors naming the path (e.g. tenants[0].users[1].limits.tokns).
func Parse(data []byte) (*Document, error) {
	if len(data) > MaxSize {
		return nil, errs.E(errs.TooLarge, "policy document is larger than %d bytes", MaxSize)
	}
	var raw any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, errs.E(errs.Invalid, "policy document is not valid YAML: %v", err)
	}
	if raw == nil {
		return &Document{}, nil
	}
	norm, err := normalize(raw, "")
	if err != nil {
		return nil, err
	}
	j, err := json.Marshal(norm)
	if err != nil {
		return nil, errs.E(errs.Invalid, "policy document: %v", err)
	}
	d, err := Decode(j)
	if err != nil {
		return nil, locateError(norm, err)
	}
	return d, nil
}

// locateError rewrites a decoding error's field ("timezon", "limits.tokns",
// "tenants.name") into its full path in the document
// ("tenants[0].timezon"), found by walking the document for the first key
// path that ends that way.
func locateError(doc any, err error) error {
	var e *errs.Error
	if !errors.As(err, &e) || e.Field == "" || strings.ContainsAny(e.Field, "[]") {
		return err
	}
	want := strings.Split(e.Field, ".")
	if path := find(doc, nil, "", want); path != "" && path != e.Field {
		return &errs.Error{Code: e.Code, Field: path, Message: path + ": " + e.Message, Err: e.Err}
	}
	return err
}

// find returns the first path in v whose keys (indices aside) end with want.
func find(v any, keys []string, path string, want []string) string {
	if len(keys) >= len(want) && slices.Equal(keys[len(keys)-len(want):], want) {
		return path
	}
	switch t := v.(type) {
	case map[string]any:
		names := make([]string, 0, len(t))
		for k := range t {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if p := find(t[k], append(keys[:len(keys):len(keys)], k), join(path, k), want); p != "" {
				return p
			}
		}
	case []any:
		for i, x := range t {
			if p := find(x, keys, fmt.Sprintf("%s[%d]", path, i), want); p != "" {
				return p
			}
		}
	}
	return ""
}

// Decode reads a document from JSON, strictly.
func Decode(j []byte) (*Document, error) {
	var d Document
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return nil, docError(err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// normalize turns YAML's map[string]any trees into JSON-able values and
// rejects non-string keys.
func normalize(v any, path string) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, vv := range t {
			n, err := normalize(vv, join(path, k))
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, vv := range t {
			ks, ok := k.(string)
			if !ok {
				return nil, errs.Field(errs.Invalid, path, "%s: keys must be text, got %v", path, k)
			}
			n, err := normalize(vv, join(path, ks))
			if err != nil {
				return nil, err
			}
			out[ks] = n
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, vv := range t {
			n, err := normalize(vv, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	}
	return v, nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func docError(err error) error {
	var domain *errs.Error
	if errors.As(err, &domain) {
		return domain
	}
	var typ *json.UnmarshalTypeError
	if e, ok := err.(*json.UnmarshalTypeError); ok {
		typ = e
		return errs.Field(errs.Invalid, typ.Field, "%s: expected %s, got %s", typ.Field, typ.Type, typ.Value)
	}
	msg := err.Error()
	const unknown = "json: unknown field "
	if len(msg) > len(unknown) && msg[:len(unknown)] == unknown {
		name := msg[len(unknown)+1 : len(msg)-1]
		return errs.Field(errs.Invalid, name, "unknown field %q in the policy document", name)
	}
	return errs.E(errs.Invalid, "policy document: %v", err)
}

// Validate checks the document before anything is applied: names, limits,
// plan references, duplicate names and users' project references.
func (d *Document) Validate() error {
	if d.Global != nil && d.Global.Limits != nil {
		if err := d.Global.Limits.Validate("global.limits."); err != nil {
			return err
		}
	}
	for name, p := range d.Plans {
		if err := tenancy.ValidName("plans."+name, name); err != nil {
			return err
		}
		if err := p.Limits.Validate("plans." + name + ".limits."); err != nil {
			return err
		}
	}
	seenTenant := map[string]bool{}
	for i, t := range d.Tenants {
		at := fmt.Sprintf("tenants[%d]", i)
		if t.Name == "" {
			return errs.Field(errs.Invalid, at+".name", "%s.name is required", at)
		}
		if err := tenancy.ValidName(at+".name", t.Name); err != nil {
			return err
		}
		if t.Timezone != "" {
			if err := tenancy.ValidTimezone(at+".timezone", t.Timezone); err != nil {
				return err
			}
		}
		if seenTenant[t.Name] {
			return errs.Field(errs.Invalid, at+".name", "tenant %q appears twice", t.Name)
		}
		seenTenant[t.Name] = true
		if err := checkLimited(at, t.Plan, t.Limits); err != nil {
			return err
		}
		projects := map[string]bool{}
		var walk func(at string, ds []Department) error
		walk = func(at string, ds []Department) error {
			seen := map[string]bool{}
			for j, dp := range ds {
				dat := fmt.Sprintf("%s.departments[%d]", at, j)
				if dp.Name == "" || seen[dp.Name] {
					return errs.Field(errs.Invalid, dat+".name", "%s.name is missing or repeated", dat)
				}
				if err := tenancy.ValidName(dat+".name", dp.Name); err != nil {
					return err
				}
				seen[dp.Name] = true
				if err := checkLimited(dat, dp.Plan, dp.Limits); err != nil {
					return err
				}
				if err := checkGuarantee(dat, dp.Guaranteed); err != nil {
					return err
				}
				if err := addProjects(dat, dp.Projects, projects); err != nil {
					return err
				}
				if err := walk(dat, dp.Departments); err != nil {
					return err
				}
			}
			return nil
		}
		if err := walk(at, t.Departments); err != nil {
			return err
		}
		if err := addProjects(at, t.Projects, projects); err != nil {
			return err
		}
		users := map[string]bool{}
		for j, u := range t.Users {
			uat := fmt.Sprintf("%s.users[%d]", at, j)
			if u.Name == "" || users[u.Name] {
				return errs.Field(errs.Invalid, uat+".name", "%s.name is missing or repeated", uat)
			}
			if err := tenancy.ValidName(uat+".name", u.Name); err != nil {
				return err
			}
			switch tenancy.Role(u.Role) {
			case "", tenancy.RoleMember, tenancy.RoleTenantAdmin:
			default:
				return errs.Field(errs.Invalid, uat+".role", "%s.role %q is not member or tenant_admin", uat, u.Role)
			}
			users[u.Name] = true
			if err := checkLimited(uat, u.Plan, u.Limits); err != nil {
				return err
			}
			for k, p := range u.Projects {
				if !projects[p] {
					return errs.Field(errs.Invalid, fmt.Sprintf("%s.projects[%d]", uat, k), "user %s is listed in project %q, which tenant %s does not define", u.Name, p, t.Name)
				}
			}
			if err := checkKeys(uat, u.Keys); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkKeys validates a user's keys: each named one way, once.
func checkKeys(at string, keys []Key) error {
	seen := map[string]bool{}
	for i, k := range keys {
		kat := fmt.Sprintf("%s.keys[%d]", at, i)
		n := 0
		for _, v := range []string{k.ID, k.Name, k.Prefix} {
			if v != "" {
				n++
			}
		}
		if n != 1 {
			return errs.Field(errs.Invalid, kat, "%s must name its key by exactly one of id, name and prefix", kat)
		}
		if k.Name != "" {
			if err := tenancy.ValidName(kat+".name", k.Name); err != nil {
				return err
			}
		}
		if k.Prefix != "" && !strings.HasPrefix(k.Prefix, tenancy.KeyPrefix) {
			return errs.Field(errs.Invalid, kat+".prefix", "%s.prefix %q is not a key prefix such as %sAbCdEfGh", kat, k.Prefix, tenancy.KeyPrefix)
		}
		if seen[k.label()] {
			return errs.Field(errs.Invalid, kat, "%s names key %q a second time", kat, k.label())
		}
		seen[k.label()] = true
		if err := checkLimited(kat, k.Plan, k.Limits); err != nil {
			return err
		}
	}
	return nil
}

// checkLimited validates a scope's limits; plans are checked on the server,
// where they may already exist.
func checkGuarantee(at string, g *policy.Spec) error {
	if g != nil {
		return policy.ValidateGuarantee(at+".guaranteed", g)
	}
	return nil
}

func checkLimited(at, plan string, limits *policy.Spec) error {
	if limits != nil {
		return limits.Validate(at + ".limits.")
	}
	return nil
}

func addProjects(at string, ps []Project, seen map[string]bool) error {
	for k, p := range ps {
		pat := fmt.Sprintf("%s.projects[%d]", at, k)
		if p.Name == "" || seen[p.Name] {
			return errs.Field(errs.Invalid, pat+".name", "%s.name is missing or repeated in the tenant", pat)
		}
		if err := tenancy.ValidName(pat+".name", p.Name); err != nil {
			return err
		}
		seen[p.Name] = true
		if err := checkLimited(pat, p.Plan, p.Limits); err != nil {
			return err
		}
		if err := checkGuarantee(pat, p.Guaranteed); err != nil {
			return err
		}
	}
	return nil
}

// YAML renders the document as YAML.
func (d *Document) YAML() ([]byte, error) {
	j, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	var v yaml.Node
	if err := yaml.Unmarshal(j, &v); err != nil {
		return nil, err
	}
	setBlockStyle(&v)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// setBlockStyle undoes the flow style that parsing JSON leaves on nodes,
// except for small leaf maps (limits), which read well inline.
func setBlockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
	for _, c := range n.Content {
		setBlockStyle(c)
	}
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		leaf := true
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				leaf = false
			}
		}
		if leaf && len(n.Content) > 0 && len(n.Content) <= 12 {
			n.Style |= yaml.FlowStyle
		}
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		n.Style &^= yaml.DoubleQuotedStyle
	}
}
