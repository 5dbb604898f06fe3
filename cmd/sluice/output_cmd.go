package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// output is stdout as a command prints to it: JSON (the API's answer,
// indented) or a table for people, with names in place of ids where the
// names can be found.
type output struct {
	io.Writer
	ctx    context.Context
	format string
	view   *view
	names  *resolver
}

// view is how a command's answer reads as a table.
type view struct {
	columns []column                                // of a list's items
	object  func(o *output, v map[string]any) error // a single object; nil: field by field
}

type column struct {
	head string
	get  func(o *output, item map[string]any) string
}

// idKinds are the fields that hold another object's id, shown by name.
var idKinds = map[string]string{"tenant_id": "tenant", "department_id": "department", "parent_id": "department",
	"project_id": "project", "user_id": "user", "flow_id": "flow", "created_by": "user", "actor_user_id": "user", "key_id": "key",
	"updated_by": "user", "redeemed_by": "user"}

// render prints an answer as a table.
func (o *output) render(raw json.RawMessage) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		_, err = o.Write(raw)
		return err
	}
	m, ok := v.(map[string]any)
	if !ok {
		if items, ok := v.([]any); ok {
			var cols []column
			if o.view != nil {
				cols = o.view.columns
			}
			return o.table(items, cols)
		}
		_, err := fmt.Fprintln(o, text(v))
		return err
	}
	if items, ok := m["items"].([]any); ok {
		var cols []column
		if o.view != nil {
			cols = o.view.columns
		}
		if err := o.table(items, cols); err != nil {
			return err
		}
		if next, _ := m["next"].(string); next != "" {
			fmt.Fprintf(o, "(more: --after %s)\n", next)
		}
		return nil
	}
	if o.view != nil && o.view.object != nil {
		return o.view.object(o, m)
	}
	return o.object(m)
}

// table prints items in columns; without columns, one per field the
// items have (scalars only), id first.
func (o *output) table(items []any, cols []column) error {
	if len(items) == 0 {
		_, err := fmt.Fprintln(o, "(none)")
		return err
	}
	if cols == nil {
		cols = genericColumns(items)
	}
	tw := tabwriter.NewWriter(o, 0, 4, 2, ' ', 0)
	heads := make([]string, len(cols))
	for i, c := range cols {
		heads[i] = c.head
	}
	fmt.Fprintln(tw, strings.Join(heads, "\t"))
	for _, it := range items {
		m, _ := it.(map[string]any)
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = oneLine(c.get(o, m))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func genericColumns(items []any) []column {
	seen := map[string]bool{}
	var keys []string
	for _, it := range items {
		m, _ := it.(map[string]any)
		for k, v := range m {
			switch v.(type) {
			case map[string]any, []any:
				continue
			}
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	slices.SortFunc(keys, func(a, b string) int {
		rank := func(k string) int {
			switch k {
			case "name":
				return 0
			case "id":
				return 2
			}
			return 1
		}
		if r := rank(a) - rank(b); r != 0 {
			return r
		}
		return strings.Compare(a, b)
	})
	var cols []column
	for _, k := range keys {
		if kind, ok := idKinds[k]; ok {
			cols = append(cols, ref(strings.ToUpper(strings.TrimSuffix(k, "_id")), k, kind))
			continue
		}
		cols = append(cols, field(strings.ToUpper(strings.ReplaceAll(k, "_", " ")), k))
	}
	return cols
}

// object prints an object field by field: ids of other objects by name,
// nested objects as a.b, lists of objects as tables after the fields.
func (o *output) object(m map[string]any) error {
	tw := tabwriter.NewWriter(o, 0, 4, 2, ' ', 0)
	var tables []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for _, k := range sortedKeys(m) {
			v := m[k]
			switch t := v.(type) {
			case map[string]any:
				if len(t) == 0 {
					fmt.Fprintf(tw, "%s%s\t(none)\n", prefix, k)
					continue
				}
				walk(prefix+k+".", t)
				continue
			case []any:
				if len(t) > 0 {
					if _, isObj := t[0].(map[string]any); isObj {
						tables = append(tables, prefix+k)
						continue
					}
				}
			}
			val := text(v)
			if kind, ok := idKinds[k]; ok && val != "" {
				if name := o.names.nameOf(kind, val); name != val {
					val = name + " (" + val + ")"
				}
			}
			if k == "scope" {
				if s := o.names.scopeName(val); s != val {
					val = s + " (" + val + ")"
				}
			}
			fmt.Fprintf(tw, "%s%s\t%s\n", prefix, k, oneLine(val))
		}
	}
	walk("", m)
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, path := range tables {
		var v any = m
		for _, p := range strings.Split(path, ".") {
			v = v.(map[string]any)[p]
		}
		fmt.Fprintf(o, "\n%s:\n", strings.ToUpper(path))
		if err := o.table(v.([]any), nil); err != nil {
			return err
		}
	}
	return nil
}

// text is a JSON value as a person reads it.
func text(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		if ts, err := time.Parse(time.RFC3339Nano, t); err == nil {
			return ts.UTC().Format("2006-01-02 15:04:05 UTC")
		}
		return t
	case json.Number:
		return t.String()
	case bool:
		return fmt.Sprint(t)
	case []any:
		parts := make([]string, len(t))
		for i, e := range t {
			parts[i] = text(e)
		}
		return strings.Join(parts, ", ")
	case map[string]any:
		return summary(t)
	}
	return fmt.Sprint(v)
}

// summary is a limits object on one line: requests=10/min tokens=100000/day.
func summary(m map[string]any) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range sortedKeys(m) {
		v := m[k]
		if l, ok := v.([]any); ok {
			for _, e := range l {
				parts = append(parts, k+"="+text(e))
			}
			continue
		}
		parts = append(parts, k+"="+text(v))
	}
	return strings.Join(parts, " ")
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "\t", " ")
	if r := []rune(s); len(r) > 80 {
		s = string(r[:79]) + "…"
	}
	return s
}

func str(m map[string]any, k string) string { return text(m[k]) }

// field is a column of one field as written.
func field(head, key string) column {
	return column{head, func(_ *output, m map[string]any) string { return str(m, key) }}
}

// ref is a column of another object's id, shown by its name.
func ref(head, key, kind string) column {
	return column{head, func(o *output, m map[string]any) string { return o.names.nameOf(kind, str(m, key)) }}
}

// scopeCol is a scope, with names.
func scopeCol(key string) column {
	return column{"SCOPE", func(o *output, m map[string]any) string { return o.names.scopeName(str(m, key)) }}
}

// views are the tables of the commands whose answer is a list worth a
// chosen set of columns; the others print every field.
var views = map[string]*view{
	"tenants list":     {columns: []column{field("NAME", "name"), field("DISPLAY NAME", "display_name"), field("TIME ZONE", "timezone"), field("ID", "id")}},
	"departments list": {columns: []column{field("NAME", "name"), ref("PARENT", "parent_id", "department"), ref("TENANT", "tenant_id", "tenant"), field("ID", "id")}},
	"projects list":    {columns: []column{field("NAME", "name"), ref("DEPARTMENT", "department_id", "department"), ref("TENANT", "tenant_id", "tenant"), field("ID", "id")}},
	"users list":       {columns: []column{field("NAME", "name"), field("ROLE", "role"), field("EMAIL", "email"), ref("TENANT", "tenant_id", "tenant"), field("ID", "id")}},
	"keys list": {columns: []column{field("NAME", "name"), field("PREFIX", "prefix"), ref("USER", "user_id", "user"), ref("PROJECT", "project_id", "project"),
		field("EXPIRES", "expires_at"), {"STATUS", keyStatus}, field("ID", "id")}},
	"memberships list": {columns: []column{ref("USER", "user_id", "user"), ref("PROJECT", "project_id", "project"), ref("TENANT", "tenant_id", "tenant"), field("SINCE", "created_at")}},
	"audit list": {columns: []column{field("AT", "at"), field("ACTION", "action"), field("KIND", "object_kind"), field("OBJECT", "object_id"),
		ref("ACTOR", "actor_user_id", "user")}},
	"plans list":  {columns: []column{field("NAME", "name"), field("PRIORITY", "priority"), field("LIMITS", "limits"), field("DESCRIPTION", "description")}},
	"limits list": {columns: []column{scopeCol("scope"), field("PLAN", "plan"), field("LIMITS", "limits"), field("GUARANTEED", "guaranteed")}},
	"grants list": {columns: []column{scopeCol("scope"), field("LIMITS", "limits"), field("EXPIRES", "expires_at"), {"STATUS", grantStatus},
		field("REASON", "reason"), field("ID", "id")}},
	"flows list": {columns: []column{field("NAME", "name"), field("ENDPOINT", "endpoint_name"), ref("PROJECT", "project_id", "project"),
		field("UPDATED", "updated_at"), field("ID", "id")}},
	"runs list": {columns: []column{field("ID", "id"), ref("FLOW", "flow_id", "flow"), field("STATUS", "status"), field("STARTED", "started_at"),
		{"TOKENS", runTokens}, {"COST USD", runCost}, ref("USER", "user_id", "user")}},
	"requests list": {columns: []column{field("ID", "id"), field("STATUS", "status"), scopeCol("scope"), field("DIMENSION", "dimension"),
		field("AMOUNT", "amount"), field("REASON", "reason")}},
	"usage": {object: usageTable},
	"flows get": {object: func(o *output, m map[string]any) error {
		delete(m, "data") // the graph: -o json has it
		return o.object(m)
	}},
	"runs show": {object: runTable},
}

func keyStatus(_ *output, m map[string]any) string {
	if m["revoked_at"] != nil {
		return "revoked"
	}
	if e, err := time.Parse(time.RFC3339Nano, str(m, "expires_at")); err == nil && !e.After(time.Now()) {
		return "expired"
	}
	return "active"
}

func grantStatus(_ *output, m map[string]any) string {
	if m["revoked_at"] != nil {
		return "revoked"
	}
	if e, err := time.Parse(time.RFC3339Nano, str(m, "expires_at")); err == nil && !e.After(time.Now()) {
		return "expired"
	}
	return "active"
}

func runTokens(_ *output, m map[string]any) string {
	u, _ := m["usage"].(map[string]any)
	return fmt.Sprint(integer(u, "input_tokens") + integer(u, "output_tokens"))
}

func runCost(_ *output, m map[string]any) string {
	u, _ := m["usage"].(map[string]any)
	return fmt.Sprintf("%.6f", float64(integer(u, "cost_micros"))/1e6)
}

// integer is a whole number field, 0 when absent.
func integer(m map[string]any, k string) int64 {
	n, _ := m[k].(json.Number)
	v, _ := n.Int64()
	return v
}

// usageTable is sluice usage for people: each meter of each scope of the
// caller's chain, by name, with used / limit, percent and reset.
func usageTable(o *output, m map[string]any) error {
	scopes, _ := m["scopes"].([]any)
	tw := tabwriter.NewWriter(o, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCOPE\tPLAN\tDIMENSION\tWINDOW\tUSED\tLIMIT\tPERCENT\tRESETS")
	for _, s := range scopes {
		sm, _ := s.(map[string]any)
		name := o.names.scopeName(str(sm, "scope"))
		if k := str(sm, "kind"); k != "" {
			name += " (" + k + ")"
		}
		dims, _ := sm["dimensions"].([]any)
		if len(dims) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t\t\t\t\t\n", name, str(sm, "plan"))
		}
		for _, d := range dims {
			dm, _ := d.(map[string]any)
			window := str(dm, "window")
			if window == "" {
				window = str(dm, "period")
				if window != "" {
					window = "per " + strings.TrimSuffix(strings.TrimSuffix(window, "0s"), "0m")
				}
			}
			limit, pct := str(dm, "limit"), str(dm, "percent")
			if limit == "" {
				limit = "no limit"
			} else {
				limit += " " + str(dm, "unit")
			}
			if pct != "" {
				pct += " %"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, str(sm, "plan"), str(dm, "dimension"), window, str(dm, "used"), limit, pct, str(dm, "reset_at"))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if q, _ := m["queues"].([]any); len(q) > 0 {
		fmt.Fprintln(o, "\nQUEUES:")
		return o.table(q, nil)
	}
	return nil
}

// runTable is sluice runs show for people: the run, then its nodes.
func runTable(o *output, m map[string]any) error {
	trace, _ := m["trace"].([]any)
	head := map[string]any{}
	for k, v := range m {
		if k != "trace" {
			head[k] = v
		}
	}
	if err := o.object(head); err != nil {
		return err
	}
	if len(trace) == 0 {
		return nil
	}
	fmt.Fprintln(o, "\nNODES:")
	return o.table(trace, []column{field("NODE", "node_id"), field("TYPE", "type"), field("STATUS", "status"), field("MS", "duration_ms"),
		field("MODEL", "model"), {"TOKENS", runTokens}, {"COST USD", runCost}, field("ERROR", "error")})
}
