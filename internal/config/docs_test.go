package config_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/internal/config"
)

// The tests in this file keep docs/configuration.md true to the binary: its
// table has a row for every YAML field of Config, names the SLUICE_*
// variable that sets it (and no other), and gives the default that
// `sluice serve --print-config` prints. (Flags are checked in cmd/sluice,
// where they are defined.)

// configRow is one row of the table in docs/configuration.md.
type configRow struct {
	field, env, flag, def string
}

// configTable reads the table of docs/configuration.md, keyed by YAML
// field, and the whole text.
func configTable(t *testing.T) (map[string]configRow, string) {
	t.Helper()
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]configRow{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) < 5 {
			t.Fatalf("docs/configuration.md: a table row with %d cells, want 5: %s", len(cells), line)
		}
		r := configRow{field: unquote(cells[0]), env: unquote(cells[1]), flag: unquote(cells[2]), def: strings.TrimSpace(cells[3])}
		if _, dup := rows[r.field]; dup {
			t.Errorf("docs/configuration.md: %s has two rows", r.field)
		}
		rows[r.field] = r
	}
	if len(rows) == 0 {
		t.Fatal("docs/configuration.md: no table rows found")
	}
	return rows, string(b)
}

// unquote returns a cell's content without its backquotes; "—" is "".
func unquote(cell string) string {
	cell = strings.TrimSpace(cell)
	if cell == "—" {
		return ""
	}
	return strings.Trim(cell, "`")
}

// yamlFields lists the YAML fields of a struct type, nested structs as
// dotted paths ("sandbox.workers"), with their Go types. Slices (the model
// table) are one field each.
func yamlFields(prefix string, typ reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			for k, v := range yamlFields(prefix+name+".", ft) {
				out[k] = v
			}
			continue
		}
		out[prefix+name] = f.Type
	}
	return out
}

// printed is c as `sluice serve --print-config` prints it, flattened to
// dotted paths; an absent path printed nothing.
func printed(t *testing.T, c config.Config) map[string]string {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(c.String()), &m); err != nil {
		t.Fatalf("the printed config is not YAML: %v\n%s", err, c.String())
	}
	out := map[string]string{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			switch v := v.(type) {
			case map[string]any:
				walk(prefix+k+".", v)
			case []any:
				if len(v) > 0 {
					out[prefix+k] = "[…]"
				}
			case nil:
			default:
				if s := yamlScalar(t, v); s != "" {
					out[prefix+k] = s
				}
			}
		}
	}
	walk("", m)
	return out
}

func yamlScalar(t *testing.T, v any) string {
	t.Helper()
	if v == "" {
		return ""
	}
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// sameValue compares a documented and a printed default; numbers compare
// by value, so that 10000000 is 1e+07.
func sameValue(doc, got string) bool {
	if doc == got {
		return true
	}
	a, err1 := strconv.ParseFloat(doc, 64)
	b, err2 := strconv.ParseFloat(got, 64)
	return err1 == nil && err2 == nil && a == b
}

var firstCode = regexp.MustCompile("`([^`]*)`")

func TestDocsListEveryField(t *testing.T) {
	rows, _ := configTable(t)
	fields := yamlFields("", reflect.TypeFor[config.Config]())
	for name := range fields {
		if _, ok := rows[name]; !ok {
			t.Errorf("docs/configuration.md has no row for the YAML field %s", name)
		}
	}
	for name := range rows {
		if _, ok := fields[name]; !ok {
			t.Errorf("docs/configuration.md documents %s, which is no field of the config", name)
		}
	}
}

// TestDocsDefaultsArePrinted: the default column starts with the value
// --print-config prints, or with "—" where it prints nothing (the meaning of
// nothing follows in words).
func TestDocsDefaultsArePrinted(t *testing.T) {
	rows, _ := configTable(t)
	got := printed(t, config.Default())
	for name, r := range rows {
		p, ok := got[name]
		switch {
		case !ok && !strings.HasPrefix(r.def, "—"):
			t.Errorf("docs/configuration.md: %s default %q, but --print-config prints it empty: start the cell with —", name, r.def)
		case ok:
			m := firstCode.FindStringSubmatch(r.def)
			if m == nil || !strings.HasPrefix(r.def, "`") || !sameValue(m[1], p) {
				t.Errorf("docs/configuration.md: %s default %q, want it to start with `%s` (what --print-config prints)", name, r.def, p)
			}
		}
	}
}

// envSample is a value of a variable that sets a field of type typ, other
// than the default.
func envSample(typ reflect.Type) string {
	switch typ {
	case reflect.TypeFor[config.Duration]():
		return "7s"
	case reflect.TypeFor[config.Bytes]():
		return "3KiB"
	}
	switch typ.Kind() {
	case reflect.Int, reflect.Int64:
		return "7"
	case reflect.Bool:
		return "true"
	}
	return "sample"
}

// TestDocsEnvVariables: each variable of the table sets its row's field and
// nothing else, and every variable Config.Env reads has a row.
func TestDocsEnvVariables(t *testing.T) {
	rows, _ := configTable(t)
	fields := yamlFields("", reflect.TypeFor[config.Config]())
	read := map[string]bool{}
	c := config.Default()
	if err := c.Env(func(k string) string { read[k] = true; return "" }); err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{}
	for name, r := range rows {
		if r.env != "" {
			documented[r.env] = name
		}
	}
	for v := range read {
		if _, ok := documented[v]; !ok {
			t.Errorf("Config.Env reads %s, which docs/configuration.md's table does not list", v)
		}
	}
	before := printed(t, config.Default())
	for v, name := range documented {
		if !read[v] {
			t.Errorf("docs/configuration.md lists %s for %s, which Config.Env does not read", v, name)
			continue
		}
		typ, ok := fields[name]
		if !ok {
			continue // TestDocsListEveryField says so
		}
		c := config.Default()
		val := envSample(typ)
		if err := c.Env(func(k string) string {
			if k == v {
				return val
			}
			return ""
		}); err != nil {
			t.Errorf("%s=%s: %v", v, val, err)
			continue
		}
		var changed []string
		for k, s := range printed(t, c) {
			if before[k] != s {
				changed = append(changed, k)
			}
		}
		if !slices.Equal(changed, []string{name}) {
			t.Errorf("%s=%s changed %v, want %s as docs/configuration.md says", v, val, changed, name)
		}
	}
}

var envName = regexp.MustCompile(`"(SLUICE_[A-Z0-9_]+)"`)

// TestDocsEveryVariableTheCodeReads: every SLUICE_* name in the server's
// code (not its tests) appears in docs/configuration.md.
func TestDocsEveryVariableTheCodeReads(t *testing.T) {
	_, text := configTable(t)
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, m := range envName.FindAllStringSubmatch(string(b), -1) {
			if !seen[m[1]] && !strings.Contains(text, "`"+m[1]+"`") {
				t.Errorf("%s reads %s, which docs/configuration.md does not mention", path, m[1])
			}
			seen[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
