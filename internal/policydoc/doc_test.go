package policydoc_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/policydoc"
	"github.com/sluicehq/sluice/internal/quota"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("read testdata: %v", err)
	}
	return b
}

func parse(t *testing.T, data []byte) *policydoc.Document {
	t.Helper()
	d, err := policydoc.Parse(data)
	if err != nil {
		t.Fatalf("Parse = %v, want nil\n%s", err, data)
	}
	return d
}

// fieldOf returns err's code and field; it fails unless err is an *errs.Error.
func fieldOf(t *testing.T, err error) (errs.Code, string) {
	t.Helper()
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v, want an *errs.Error", err)
	}
	return e.Code, e.Field
}

func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if code, f := fieldOf(t, err); code != errs.Invalid || f != field {
		t.Fatalf("got %s on field %q (%v), want invalid on field %q", code, f, err, field)
	}
}

// universityDoc is the document of testdata/university.yaml.
func universityDoc() *policydoc.Document {
	i := func(v int64) *int64 { return &v }
	return &policydoc.Document{
		Plans: map[string]policydoc.Plan{
			"free": {Priority: policy.PriorityLow, Limits: policy.Spec{
				Requests:    &policy.RateSpec{Limit: 10, Period: time.Minute},
				Tokens:      policy.Budgets{{Amount: 100_000, Window: quota.WindowDay}},
				Concurrency: i(1),
				GPUSeconds:  &policy.Budget{Amount: 0, Window: quota.WindowMonth},
			}},
		},
		Tenants: []policydoc.Tenant{{
			Name:     "university",
			Timezone: "Asia/Shanghai",
			Departments: []policydoc.Department{{
				Name:     "cs101",
				Limits:   &policy.Spec{Tokens: policy.Budgets{{Amount: 500_000, Window: quota.WindowDay}}},
				Projects: []policydoc.Project{{Name: "group-1"}, {Name: "group-2"}},
			}},
			Users: []policydoc.User{{
				Name: "alice", Plan: "free", Projects: []string{"group-1"},
				Limits: &policy.Spec{Concurrency: i(2)},
			}},
		}},
	}
}

func TestParseExample(t *testing.T) {
	want := universityDoc()
	for _, file := range []string{"university.yaml", "university.json"} {
		t.Run(file, func(t *testing.T) {
			got := parse(t, readTestdata(t, file))
			if !reflect.DeepEqual(got, want) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(want)
				t.Fatalf("got %s\nwant %s", g, w)
			}
		})
	}
	// JSON is read strictly by Decode too.
	d, err := policydoc.Decode(readTestdata(t, "university.json"))
	if err != nil || !reflect.DeepEqual(d, want) {
		t.Fatalf("Decode(university.json) = %+v, %v, want the example", d, err)
	}
}

func TestParseEverything(t *testing.T) {
	d := parse(t, readTestdata(t, "everything.yaml"))
	if got := len(d.Plans); got != 2 {
		t.Fatalf("plans: got %d, want 2", got)
	}
	pro := d.Plans["pro"].Limits
	if pro.Requests == nil || pro.Requests.Burst != 10 || pro.Cost == nil || pro.Cost.Amount != 50_000_000 ||
		pro.MemoryPerRun == nil || *pro.MemoryPerRun != 2<<30 || pro.RunTimeout == nil || time.Duration(*pro.RunTimeout) != 10*time.Minute ||
		len(pro.Tokens) != 2 || pro.OnOutage != quota.OutageDeny || len(pro.Models) != 2 {
		b, _ := json.Marshal(pro)
		t.Fatalf("plan pro limits: got %s, want every field set as written", b)
	}
	if d.Global == nil || d.Global.Limits == nil || d.Global.Limits.Concurrency == nil || *d.Global.Limits.Concurrency != 500 {
		t.Fatalf("global: got %+v, want concurrency 500", d.Global)
	}
	uni := d.Tenants[0]
	if uni.DisplayName != "The University" || uni.Plan != "pro" || len(uni.Departments) != 2 || len(uni.Departments[0].Departments) != 1 {
		t.Fatalf("tenant university: got %+v", uni)
	}
	cs := uni.Departments[0].Departments[0]
	if cs.Name != "cs101" || len(cs.Projects) != 2 || cs.Projects[1].DisplayName != "Group Two" {
		t.Fatalf("nested department: got %+v, want cs101 with two projects", cs)
	}
	bob := uni.Users[1]
	if bob.Role != "tenant_admin" || bob.Email != "bob@example.org" || bob.DisplayName != "Bob" {
		t.Fatalf("user bob: got %+v", bob)
	}
	if got := d.Tenants[1]; got.Name != "acme" || len(got.Users) != 1 || got.Users[0].Name != "eve" {
		t.Fatalf("tenant acme: got %+v", got)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "\n", "# nothing yet\n", "null", "{}", "---\n"} {
		d, err := policydoc.Parse([]byte(in))
		if err != nil || !reflect.DeepEqual(d, &policydoc.Document{}) {
			t.Errorf("Parse(%q) = %+v, %v, want an empty document", in, d, err)
		}
	}
}

// unknownFields are documents with one misspelt field each, and the path
// of that field.
var unknownFields = []struct{ name, doc, path string }{
	{"top level", `plan: {}`, "plan"},
	{"plan", `plans: {free: {prio: low, limits: {}}}`, "plans.free.prio"},
	{"plan limits", `plans: {free: {limits: {tokns: 5/day}}}`, "plans.free.limits.tokns"},
	{"global", `global: {limit: {concurrency: 1}}`, "global.limit"},
	{"tenant", `tenants: [{name: a, timezon: UTC}]`, "tenants[0].timezon"},
	{"nested project", `tenants: [{name: a, departments: [{name: d, projects: [{name: p, owner: x}]}]}]`, "tenants[0].departments[0].projects[0].owner"},
	{"user limits", `tenants: [{name: a, users: [{name: u, limits: {tokns: 5/day}}]}]`, "tenants[0].users[0].limits.tokns"},
	{"rate object", `tenants: [{name: a, users: [{name: u, limits: {requests: {rate: 10/min, bust: 5}}}]}]`, "tenants[0].users[0].limits.requests"},
}

func TestParseUnknownField(t *testing.T) {
	for _, c := range unknownFields {
		t.Run(c.name, func(t *testing.T) {
			_, err := policydoc.Parse([]byte(c.doc))
			code, field := fieldOf(t, err)
			if code != errs.Invalid {
				t.Fatalf("got code %s (%v), want invalid", code, err)
			}
			// The field named is at least the misspelt key (inside a rate,
			// the limit holding it).
			last := c.path[strings.LastIndex(c.path, ".")+1:]
			if !strings.HasSuffix(field, last) {
				t.Fatalf("got field %q (%v), want one naming %q", field, err, last)
			}
		})
	}
}

func TestParseUnknownFieldPath(t *testing.T) {
	for _, c := range unknownFields {
		t.Run(c.name, func(t *testing.T) {
			_, err := policydoc.Parse([]byte(c.doc))
			wantInvalid(t, err, c.path)
		})
	}
}

func TestParseInvalid(t *testing.T) {
	for _, c := range []struct {
		name, doc string
		field     string // "-": any field
	}{
		{"tenant twice", `tenants: [{name: a}, {name: a}]`, "tenants[1].name"},
		{"tenant without a name", `tenants: [{timezone: UTC}]`, "tenants[0].name"},
		{"department twice", `tenants: [{name: a, departments: [{name: d}, {name: d}]}]`, "tenants[0].departments[1].name"},
		{"nested department twice", `tenants: [{name: a, departments: [{name: d, departments: [{name: e}, {name: e}]}]}]`, "tenants[0].departments[0].departments[1].name"},
		{"department without a name", `tenants: [{name: a, departments: [{projects: [{name: p}]}]}]`, "tenants[0].departments[0].name"},
		{"project in two departments", `tenants: [{name: a, departments: [{name: d1, projects: [{name: p}]}, {name: d2, projects: [{name: p}]}]}]`,
			"tenants[0].departments[1].projects[0].name"},
		{"project in a department and the tenant", `tenants: [{name: a, departments: [{name: d, projects: [{name: p}]}], projects: [{name: p}]}]`,
			"tenants[0].projects[0].name"},
		{"project without a name", `tenants: [{name: a, projects: [{display_name: P}]}]`, "tenants[0].projects[0].name"},
		{"user twice", `tenants: [{name: a, users: [{name: u}, {name: u}]}]`, "tenants[0].users[1].name"},
		{"user in an undefined project", `tenants: [{name: a, projects: [{name: group-1}], users: [{name: alice, projects: [group-2]}]}]`,
			"tenants[0].users[0].projects[0]"},
		{"user in another tenant's project", `tenants: [{name: a, projects: [{name: p}]}, {name: b, users: [{name: u, projects: [p]}]}]`,
			"tenants[1].users[0].projects[0]"},
		{"user's second project undefined", `tenants: [{name: a, projects: [{name: p}], users: [{name: u, projects: [p, q]}]}]`,
			"tenants[0].users[0].projects[1]"},
		{"plan limits", `plans: {free: {limits: {cost: $5/day}}}`, "plans.free.limits.cost"},
		{"tenant limits", `tenants: [{name: a, limits: {concurrency: -1}}]`, "tenants[0].limits.concurrency"},
		{"nested department limits", `tenants: [{name: a, departments: [{name: d, departments: [{name: e, limits: {gpu_seconds: 5/day}}]}]}]`,
			"tenants[0].departments[0].departments[0].limits.gpu_seconds"},
		{"project limits", `tenants: [{name: a, projects: [{name: p, limits: {tokens: [1/day, 2/day]}}]}]`, "tenants[0].projects[0].limits.tokens"},
		{"user limits", `tenants: [{name: a, users: [{name: u, limits: {on_outage: open}}]}]`, "tenants[0].users[0].limits.on_outage"},
		{"bad rate", `tenants: [{name: a, limits: {requests: 10/fortnight}}]`, "-"},
		{"bad budget window", `tenants: [{name: a, limits: {tokens: 5/week}}]`, "-"},
		{"wrong type", `tenants: [{name: [a]}]`, "-"},
		{"tenants not a list", `tenants: {name: a}`, "-"},
		{"a list at the top", `- a`, "-"},
		{"not YAML", `tenants: [`, "-"},
		{"duplicate key", "tenants: []\ntenants: []", "-"},
		{"key that is not text", `tenants: [{name: a, 1: b}]`, "tenants[0]"},
		{"API key named two ways", `tenants: [{name: a, users: [{name: u, keys: [{id: key_1, name: ci}]}]}]`, "tenants[0].users[0].keys[0]"},
		{"API key not named", `tenants: [{name: a, users: [{name: u, keys: [{limits: {requests: 1/s}}]}]}]`, "tenants[0].users[0].keys[0]"},
		{"API key twice", `tenants: [{name: a, users: [{name: u, keys: [{name: ci}, {name: ci}]}]}]`, "tenants[0].users[0].keys[1]"},
		{"API key prefix", `tenants: [{name: a, users: [{name: u, keys: [{prefix: sk-123}]}]}]`, "tenants[0].users[0].keys[0].prefix"},
		{"API key limits", `tenants: [{name: a, users: [{name: u, keys: [{name: ci, limits: {concurrency: -1}}]}]}]`, "tenants[0].users[0].keys[0].limits.concurrency"},
		{"API key field", `tenants: [{name: a, users: [{name: u, keys: [{name: ci, secret: x}]}]}]`, "tenants[0].users[0].keys[0].secret"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := policydoc.Parse([]byte(c.doc))
			if err == nil {
				t.Fatalf("Parse = %+v, nil, want an error", d)
			}
			if c.field == "-" {
				if !errs.Is(err, errs.Invalid) {
					t.Fatalf("got %v, want invalid", err)
				}
				return
			}
			wantInvalid(t, err, c.field)
		})
	}
	// Names may repeat where they do not clash.
	for _, doc := range []string{
		`tenants: [{name: a, departments: [{name: d, departments: [{name: d}]}]}]`,
		`tenants: [{name: a, projects: [{name: p}], users: [{name: u}]}, {name: b, projects: [{name: p}], users: [{name: u, projects: [p]}]}]`,
		`tenants: [{name: a, departments: [{name: d}], projects: [{name: d}], users: [{name: d}]}]`,
	} {
		if _, err := policydoc.Parse([]byte(doc)); err != nil {
			t.Errorf("Parse(%s) = %v, want nil", doc, err)
		}
	}
}

func TestParseValidatesGlobal(t *testing.T) {
	_, err := policydoc.Parse([]byte(`global: {limits: {gpu_seconds: 5/day}}`))
	wantInvalid(t, err, "global.limits.gpu_seconds")
}

func TestParseValidatesNames(t *testing.T) {
	for _, c := range []struct{ doc, field string }{
		{`tenants: [{name: "Bad Name"}]`, "tenants[0].name"},
		{`tenants: [{name: a, timezone: Mars/Olympus}]`, "tenants[0].timezone"},
		{`tenants: [{name: a, users: [{name: u, role: owner}]}]`, "tenants[0].users[0].role"},
		{`plans: {"no spaces": {limits: {}}}`, "plans.no spaces"},
	} {
		_, err := policydoc.Parse([]byte(c.doc))
		wantInvalid(t, err, c.field)
	}
}

func TestParseTooLarge(t *testing.T) {
	big := bytes.Repeat([]byte("#"), policydoc.MaxSize+1)
	if _, err := policydoc.Parse(big); !errs.Is(err, errs.TooLarge) {
		t.Fatalf("Parse(%d bytes): got %v, want too_large", len(big), err)
	}
}

func TestDocumentYAML(t *testing.T) {
	for _, file := range []string{"university.yaml", "university.json", "everything.yaml"} {
		t.Run(file, func(t *testing.T) {
			d := parse(t, readTestdata(t, file))
			y, err := d.YAML()
			if err != nil {
				t.Fatalf("YAML = %v, want nil", err)
			}
			if bytes.Contains(y, []byte("{\n")) || bytes.HasPrefix(y, []byte("{")) {
				t.Errorf("YAML is not block style:\n%s", y)
			}
			again := parse(t, y)
			if !reflect.DeepEqual(again, d) {
				g, _ := json.Marshal(again)
				w, _ := json.Marshal(d)
				t.Fatalf("Parse(YAML()) differs:\ngot  %s\nwant %s\nyaml:\n%s", g, w, y)
			}
		})
	}
}

// negativeCaps names a limit the parsers should never have produced: a
// negative size or duration (see policy's TestParseBytesNaN and
// TestDurationJSONOverflow).
func negativeCaps(d *policydoc.Document) string {
	check := func(s *policy.Spec) string {
		if s == nil {
			return ""
		}
		if s.MemoryPerRun != nil && *s.MemoryPerRun < 0 {
			return "memory_per_run " + s.MemoryPerRun.String()
		}
		if s.RunTimeout != nil && *s.RunTimeout < 0 {
			return "run_timeout " + time.Duration(*s.RunTimeout).String()
		}
		return ""
	}
	var specs []*policy.Spec
	for _, p := range d.Plans {
		specs = append(specs, &p.Limits)
	}
	if d.Global != nil {
		specs = append(specs, d.Global.Limits)
	}
	var walk func(ds []policydoc.Department)
	walk = func(ds []policydoc.Department) {
		for _, dp := range ds {
			specs = append(specs, dp.Limits)
			for _, p := range dp.Projects {
				specs = append(specs, p.Limits)
			}
			walk(dp.Departments)
		}
	}
	for _, t := range d.Tenants {
		specs = append(specs, t.Limits)
		walk(t.Departments)
		for _, p := range t.Projects {
			specs = append(specs, p.Limits)
		}
		for _, u := range t.Users {
			specs = append(specs, u.Limits)
		}
	}
	for _, s := range specs {
		if r := check(s); r != "" {
			return r
		}
	}
	return ""
}

// FuzzParse checks that Parse never panics, fails only with invalid or
// too_large, and that a document it accepts survives JSON and YAML: its
// JSON decodes again to the same JSON, and so does its YAML.
func FuzzParse(f *testing.F) {
	for _, file := range []string{"university.yaml", "university.json", "everything.yaml"} {
		f.Add(readTestdata(f, file))
	}
	for _, seed := range []string{
		"",
		"tenants: [{name: a, users: [{name: u, projects: [p]}]}]",
		"plans: {x: {limits: {requests: {rate: 1/s, burst: 2}, tokens: [5/day, 9/mo]}}}",
		"global: {plan: free, limits: {memory_per_run: 512MB, run_timeout: 90, cost: $0.5/month}}",
		"tenants: [{name: a, departments: [{name: d, departments: [{name: e, projects: [{name: p, limits: {max_steps: 3}}]}]}]}]",
		`{"tenants":[{"name":"a","limits":{"tokens_rate":"10/30s","models":["m"]}}]}`,
		"tenants: [{name: a, users: [{name: u, keys: [{name: ci, limits: {requests: {limit: 10, period: 1m}}}, {prefix: slk_x, plan: free}, {id: key_1}]}]}]",
		"a: &x [1, 2]\nb: *x",
		// Known bugs: NaN and overflowing sizes and durations (skipped below).
		"global: {limits: {memory_per_run: NaN}}",
		"global: {limits: {run_timeout: 1e300}}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := policydoc.Parse(data)
		if err != nil {
			if c := errs.CodeOf(err); c != errs.Invalid && c != errs.TooLarge {
				t.Fatalf("Parse error code: got %s (%v), want invalid or too_large", c, err)
			}
			return
		}
		if bad := negativeCaps(d); bad != "" {
			t.Fatalf("Parse accepted a negative %s", bad)
		}
		j, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("json.Marshal of an accepted document = %v", err)
		}
		d2, err := policydoc.Decode(j)
		if err != nil {
			t.Fatalf("Decode of an accepted document's JSON = %v\n%s", err, j)
		}
		j2, err := json.Marshal(d2)
		if err != nil || !bytes.Equal(j, j2) {
			t.Fatalf("JSON round trip changed the document (%v):\n%s\n%s", err, j, j2)
		}
		y, err := d.YAML()
		if err != nil {
			t.Fatalf("YAML of an accepted document = %v", err)
		}
		d3, err := policydoc.Parse(y)
		if err != nil {
			t.Fatalf("Parse of an accepted document's YAML = %v\n%s", err, y)
		}
		if j3, _ := json.Marshal(d3); !bytes.Equal(j, j3) {
			t.Fatalf("YAML round trip changed the document:\n%s\n%s\nyaml:\n%s", j, j3, y)
		}
	})
}
